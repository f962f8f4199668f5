//! Other tokentap agents on this host that this one shares no
//! `--handover-dir` with. Each of them copies every call too, so every call
//! is recorded once per agent: two DaemonSets, a test run beside the
//! deployed one, or a rollout that mixes agents with and without the flag.
//! Found through /proc (the agent runs in the host's PID namespace: it
//! refuses to start in another). Agents
//! that share the directory know each other through its pinned map of agents
//! and split the connections.
//!
//! Looked for every [`LOOK_EVERY`] for as long as the agent runs (a second
//! DaemonSet may come days after this agent started), and an agent counts
//! once it was found unshared at every look for [`SETTLE`]: an agent that
//! starts with this one registers within seconds, and one that handed over
//! and left the map (it takes a while more to exit) is gone by then. The
//! count is the gauge `other_agents_unshared` (stats file, /metrics, the
//! alert `TokentapAgentsRecordingTwice`); each agent counted is also named
//! once in the log.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData};

use crate::stats::Stats;

/// How long an agent is seen unshared before it counts: longer than a
/// stopped agent's exit (its drain, detach, outputs and Java agents: well
/// under the chart's 60 s grace).
const SETTLE: Duration = Duration::from_secs(60);

/// Between two looks (each reads every process's name in /proc).
const LOOK_EVERY: Duration = Duration::from_secs(10);

/// Subcommands that capture nothing.
const NOT_CAPTURING: [&str; 4] = ["report", "inspect", "uninstall", "help"];

/// The pids of the other capturing tokentap agents under `proc_root`:
/// processes named `tokentap-agent` not running a subcommand that captures
/// nothing.
pub fn capturing_agents(proc_root: &Path, me: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else { return Vec::new() };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let dir = proc_root.join(pid.to_string());
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim_end() != "tokentap-agent" {
                return false;
            }
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let mut args = cmdline.split(|&b| b == 0).skip(1);
            !args.any(|a| NOT_CAPTURING.iter().any(|s| s.as_bytes() == a))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The agents registered in `dir`'s pinned map of agents (pid, start time),
/// running or not; none without the pin.
pub fn registered(dir: &Path) -> Result<Vec<(u32, u64)>, String> {
    let pin = dir.join("AGENTS");
    if !pin.exists() {
        return Ok(Vec::new());
    }
    let map = MapData::from_pin(&pin).map_err(|e| format!("{}: {e}", pin.display()))?;
    let agents = HashMap::<MapData, u32, u64>::try_from(aya::maps::Map::HashMap(map))
        .map_err(|e| format!("{}: {e}", pin.display()))?;
    agents.iter().collect::<Result<_, _>>().map_err(|e| format!("{}: {e}", pin.display()))
}

/// The other capturing agents running now (pid, start time) that are not
/// registered in `dir`; why not known when the map of agents can't be read
/// (then every agent sharing the directory would look unshared).
fn unshared(dir: Option<&Path>) -> Result<Vec<(u32, u64)>, String> {
    let proc_root = Path::new("/proc");
    let shared = match dir.map(registered) {
        Some(r) => r?,
        None => Vec::new(),
    };
    Ok(capturing_agents(proc_root, crate::handover::me())
        .into_iter()
        .filter_map(|pid| Some((pid, crate::handover::start_time(pid)?)))
        // The same process: a dead agent's entry does not cover its pid's next owner.
        .filter(|agent| !shared.contains(agent))
        .filter(|&(pid, since)| crate::handover::running(proc_root, pid, since))
        .collect())
}

/// The agents (pid, start time) seen unshared, since when, and those counted.
#[derive(Default)]
struct Sightings {
    since: BTreeMap<(u32, u64), Instant>,
    counted: BTreeSet<(u32, u64)>,
}

impl Sightings {
    /// Take one look's unshared agents at `now`: an agent missing from a
    /// look starts over. Returns the pids counted from this look on, and
    /// those no longer counted.
    fn look(&mut self, now: Instant, unshared: &[(u32, u64)]) -> (Vec<u32>, Vec<u32>) {
        self.since.retain(|a, _| unshared.contains(a));
        for a in unshared {
            self.since.entry(*a).or_insert(now);
        }
        let due: BTreeSet<(u32, u64)> =
            self.since.iter().filter(|(_, &t)| now.saturating_duration_since(t) >= SETTLE).map(|(a, _)| *a).collect();
        let new = due.difference(&self.counted).map(|a| a.0).collect();
        let gone = self.counted.difference(&due).map(|a| a.0).collect();
        self.counted = due;
        (new, gone)
    }

    /// No look this time: forget the agents not in `alive` (gone), keep the
    /// rest as they stood. Returns the pids no longer counted.
    fn look_again(&mut self, alive: &[(u32, u64)]) -> (Vec<u32>, Vec<u32>) {
        self.since.retain(|a, _| alive.contains(a));
        let gone = self.counted.iter().filter(|a| !alive.contains(a)).map(|a| a.0).collect();
        self.counted.retain(|a| alive.contains(a));
        (Vec::new(), gone)
    }
}

/// In a thread of its own until `stop`: look for unshared agents every
/// [`LOOK_EVERY`], keep `other_agents_unshared` up to date, and name each
/// agent counted (and say when none is left).
pub fn watch(dir: Option<PathBuf>, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let looked = std::thread::Builder::new().name("peers".into()).spawn(move || {
        let mut seen = Sightings::default();
        let mut said_unread = false;
        while !stop.load(Ordering::Relaxed) {
            let (new, gone) = match unshared(dir.as_deref()) {
                Ok(found) => {
                    if std::mem::replace(&mut said_unread, false) {
                        tracing::info!("the pinned map of agents is read again");
                    }
                    seen.look(Instant::now(), &found)
                }
                Err(e) => {
                    // This look is skipped: the sightings stand but for agents gone.
                    if !std::mem::replace(&mut said_unread, true) {
                        tracing::warn!(error = %e, "the pinned map of agents is not read: other agents not looked for");
                    }
                    let alive = |&(pid, since): &(u32, u64)| crate::handover::running(Path::new("/proc"), pid, since);
                    let still: Vec<(u32, u64)> = seen.since.keys().copied().filter(alive).collect();
                    seen.look_again(&still)
                }
            };
            Stats::set(&stats.other_agents_unshared, seen.counted.len() as u64);
            if !new.is_empty() {
                let why = match &dir {
                    None => "this agent has no --handover-dir".to_owned(),
                    Some(d) => format!("they are not registered in this agent's --handover-dir {}", d.display()),
                };
                tracing::warn!(
                    pids = ?new,
                    "other tokentap agents capture on this host and {why}: each of them records every call too (give \
                     every agent on a host the same --handover-dir, or run one)"
                );
            }
            if !gone.is_empty() {
                tracing::info!(pids = ?gone, still = seen.counted.len(), "other tokentap agents no longer capture unshared");
            }
            let next = Instant::now() + LOOK_EVERY;
            while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    });
    if let Err(e) = looked {
        tracing::debug!(error = %e, "no thread to look for other agents");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_capturing_agents_are_found_by_name_and_subcommand() {
        let root = std::env::temp_dir().join(format!("tt-peers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let process = |pid: u32, comm: &str, args: &[&str]| {
            let d = root.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(d.join("cmdline"), args.iter().map(|a| format!("{a}\0")).collect::<String>()).unwrap();
        };
        process(10, "tokentap-agent", &["/usr/bin/tokentap-agent", "-o", "stdout"]);
        process(11, "tokentap-agent", &["tokentap-agent", "inspect", "/bin/x"]);
        process(12, "bash", &["bash", "-c", "tokentap-agent"]);
        process(13, "tokentap-agent", &["tokentap-agent", "--handover-dir", "/sys/fs/bpf/tokentap"]);
        process(14, "tokentap-agent", &["tokentap-agent", "audit", "/tmp/out"]);
        process(15, "tokentap-agent", &["tokentap-agent", "uninstall"]);
        std::fs::create_dir_all(root.join("self")).unwrap();
        assert_eq!(capturing_agents(&root, 13), [10, 14]);
        assert!(capturing_agents(&root.join("none"), 1).is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn an_agent_counts_once_unshared_at_every_look_for_the_settle_time() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (a, b) = ((10, 111), (20, 222));
        let mut seen = Sightings::default();
        assert_eq!(seen.look(at(0), &[a]), (vec![], vec![]));
        assert_eq!(seen.look(at(30), &[a, b]), (vec![], vec![]));
        assert_eq!(seen.look(at(59), &[a, b]), (vec![], vec![]), "not yet a minute");
        assert_eq!(seen.look(at(60), &[a, b]), (vec![10], vec![]));
        assert_eq!(seen.look(at(70), &[a, b]), (vec![], vec![]), "named once");
        assert_eq!(seen.look(at(90), &[a, b]), (vec![20], vec![]));
        assert_eq!(seen.counted.len(), 2);
        // b missed a look (it registered, or left): it starts over.
        assert_eq!(seen.look(at(100), &[a]), (vec![], vec![20]));
        assert_eq!(seen.look(at(110), &[a, b]), (vec![], vec![]));
        assert_eq!(seen.look(at(169), &[a, b]), (vec![], vec![]));
        assert_eq!(seen.look(at(170), &[a, b]), (vec![20], vec![]));
        // Its pid taken by another process (another start time): another agent.
        let b2 = (20, 333);
        assert_eq!(seen.look(at(180), &[a, b2]), (vec![], vec![20]));
        assert_eq!(seen.look(at(240), &[a, b2]), (vec![20], vec![]));
        assert_eq!(seen.look(at(250), &[]), (vec![], vec![10, 20]));
        assert!(seen.counted.is_empty() && seen.since.is_empty());
        // A look skipped: those counted stay, but for one gone.
        let (c, d) = ((30, 1), (40, 2));
        seen.look(at(300), &[c, d]);
        assert_eq!(seen.look(at(360), &[c, d]), (vec![30, 40], vec![]));
        assert_eq!(seen.look_again(&[d]), (vec![], vec![30]));
        assert_eq!(seen.counted.iter().copied().collect::<Vec<_>>(), [d]);
        assert_eq!(seen.look(at(370), &[d]), (vec![], vec![]), "still counted, not named again");
    }
}
