//! Other tokentap agents on this host that this one shares no
//! `--handover-dir` with. Each of them copies every call too, so every call
//! is recorded once per agent: two DaemonSets, a test run beside the
//! deployed one, or a rollout that mixes agents with and without the flag.
//! Found through /proc (the agent runs in the host's PID namespace, as the
//! chart deploys it: from a container's own namespace it sees none). Agents
//! that share the directory know each other through its pinned map of agents
//! and split the connections. Looked for twice, [`SETTLE`] apart: an agent
//! that started with this one registers in between, and one that handed over
//! and left the map (it takes a while more to exit) is gone by then.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData};

/// Between the two looks: longer than a stopped agent's exit (its drain,
/// detach, outputs and Java agents: well under the chart's 60 s grace).
const SETTLE: Duration = Duration::from_secs(60);

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
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let mut args = cmdline.split(|&b| b == 0).skip(1);
            comm.trim_end() == "tokentap-agent" && !args.any(|a| NOT_CAPTURING.iter().any(|s| s.as_bytes() == a))
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
/// registered in `dir`.
fn unshared(dir: Option<&Path>) -> Vec<(u32, u64)> {
    let proc_root = Path::new("/proc");
    let shared = match dir.map(registered) {
        Some(Ok(agents)) => agents,
        Some(Err(e)) => {
            tracing::debug!(error = %e, "the pinned map of agents, not read");
            Vec::new()
        }
        None => Vec::new(),
    };
    capturing_agents(proc_root, crate::handover::me())
        .into_iter()
        .filter_map(|pid| Some((pid, crate::handover::start_time(pid)?)))
        // The same process: a dead agent's entry does not cover its pid's next owner.
        .filter(|agent| !shared.contains(agent))
        .filter(|&(pid, since)| crate::handover::running(proc_root, pid, since))
        .collect()
}

/// In a thread of its own: warn about the agents unshared at both looks
/// (the same process each time) until `stop`.
pub fn watch(dir: Option<PathBuf>, stop: Arc<AtomicBool>) {
    let looked = std::thread::Builder::new().name("peers".into()).spawn(move || {
        let first = unshared(dir.as_deref());
        let until = Instant::now() + SETTLE;
        while !first.is_empty() && Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let both: Vec<u32> = unshared(dir.as_deref()).iter().filter(|a| first.contains(a)).map(|a| a.0).collect();
        if !both.is_empty() {
            let why = match &dir {
                None => "this agent has no --handover-dir".to_owned(),
                Some(d) => format!("they are not registered in this agent's --handover-dir {}", d.display()),
            };
            tracing::warn!(
                pids = ?both,
                "other tokentap agents capture on this host and {why}: each of them records every call too (give \
                 every agent on a host the same --handover-dir, or run one)"
            );
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
}
