//! What a killed agent copied and never read, read by the agent after it.
//!
//! With `--handover-dir`, each agent pins its ring buffer there beside the
//! shared maps (`ring-f<format>-<pid>-<start>`) and removes the pin once it
//! has read it to the end. An agent killed (SIGKILL, the OOM killer, a
//! liveness probe, a grace period run out) leaves in it the records its
//! probes copied since its reader's last pass: at 100 calls/s and a reader
//! held up for 30 ms, three or four whole calls, which no agent would record
//! or count otherwise. The agent running finds such a ring (its owner gone,
//! a zombie, or exiting), reads it on from where its owner stopped (the
//! consumer position lives in the map itself), and decodes the records as
//! its own ([`crate::pipeline::Pipeline::handle_orphan`]).
//!
//! Order: a connection of the killed agent comes to this one at its next
//! call, as a chunk marked taken over, made after the kernel removed that
//! agent from `AGENTS` and so after its main thread began to exit. Before
//! such a chunk this agent looks for orphans again unless it looked after
//! the chunk was made, so a connection's older records, in the orphan, are
//! decoded before its newer ones. One agent reads a ring (it claims the pin:
//! `OrphanRings::find`). A ring of another record layout (an agent of
//! another `RING_FORMAT`) is left a while for an agent of its version, then
//! read to count its records, not decoded. Why not one ring for all agents:
//! each agent's parser state is its own, so each needs its own ordered
//! stream (`agent-ebpf/src/handover.rs`).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{Map, MapData, RingBuf};
use tokentap_agent_common::RING_FORMAT;

use crate::capture::clock::monotonic_ns;
use crate::capture::decode::decode;
use crate::capture::event::RawEvent;
use crate::pipeline::{OrphanConns, Pipeline};
use crate::stats::Stats;

const PREFIX: &str = "ring-f";

/// How long an orphan stays open once found: its owner's probes may still
/// copy for moments while its last threads exit (into connections no longer
/// its own: control records, at most).
const LINGER: Duration = Duration::from_secs(5);

/// How long a ring of another record layout is left for an agent that can
/// decode it (a restarted one of its own version) before it is counted lost.
const FOREIGN_WAIT: Duration = Duration::from_secs(30);

/// How often a pin that could not be opened is tried again.
const RETRY_FAILED: Duration = Duration::from_secs(30);

/// The pin name of the ring buffer of the agent `pid` that started at `since`.
pub fn pin_name(pid: u32, since: u64) -> String {
    format!("{PREFIX}{RING_FORMAT}-{pid}-{since}")
}

/// A ring pin's name: its format, the agent that owned it (pid, start
/// time), and the agent reading it since its owner died, if any.
#[derive(Debug, PartialEq)]
struct Pin {
    format: u32,
    pid: u32,
    since: u64,
    claim: Option<(u32, u64)>,
}

/// The name under which the agent `by` reads a pin left as `pin_name`.
fn claimed_name(format: u32, pid: u32, since: u64, by: (u32, u64)) -> String {
    format!("{PREFIX}{format}-{pid}-{since}{CLAIM}{}-{}", by.0, by.1)
}

const CLAIM: &str = "-by-";

/// Whether `name` is a ring pin's (its agent's or a claim's).
pub fn is_ring_pin(name: &str) -> bool {
    parse(name).is_some()
}

/// A ring pin's name, parsed; None for any other file.
fn parse(name: &str) -> Option<Pin> {
    let rest = name.strip_prefix(PREFIX)?;
    let (owner, claim) = match rest.split_once(CLAIM) {
        Some((owner, by)) => {
            let (pid, since) = by.split_once('-')?;
            (owner, Some((pid.parse().ok()?, since.parse().ok()?)))
        }
        None => (rest, None),
    };
    let mut it = owner.splitn(3, '-');
    let (format, pid, since) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    Some(Pin { format, pid, since, claim })
}

/// Remove every ring pin in `dir` (`tokentap-agent uninstall`, the last
/// agent's exit); how many.
pub fn remove_all(dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for e in entries.flatten() {
        if e.file_name().to_str().and_then(parse).is_some() {
            match std::fs::remove_file(e.path()) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(n)
}

struct Orphan {
    path: PathBuf,
    pid: u32,
    since: u64,
    ring: RingBuf<MapData>,
    /// Of this agent's record layout: decoded, else only counted.
    decodable: bool,
    opened: Instant,
    conns: OrphanConns,
}

/// This agent's own ring pin, as `Handover::pin_ring` made it.
pub struct OwnRing {
    pub path: PathBuf,
    /// This agent (pid, start time), as the pin names it.
    pub me: (u32, u64),
}

/// The rings killed agents left in the handover directory, and this agent's own pin.
pub struct OrphanRings {
    dir: PathBuf,
    own: Option<PathBuf>,
    /// This agent (pid, start time), as it names the pins it claims.
    me: (u32, u64),
    open: Vec<Orphan>,
    /// Pins that could not be opened, and when: tried again after
    /// [`RETRY_FAILED`] (out of fds passes; not a ring buffer does not,
    /// and is left for the uninstall).
    failed: HashMap<PathBuf, Instant>,
    /// Rings of another record layout, and when first seen orphaned.
    foreign: HashMap<PathBuf, Instant>,
    /// When the last look began (the kernel's monotonic clock, as chunks carry).
    looked_ns: u64,
    /// Handing its connections on to a successor: claims no more rings.
    handing_on: bool,
}

impl OrphanRings {
    pub fn new(dir: &Path, own: OwnRing) -> Self {
        Self::of(dir, Some(own.path), own.me)
    }

    fn of(dir: &Path, own: Option<PathBuf>, me: (u32, u64)) -> Self {
        let (failed, foreign) = (HashMap::new(), HashMap::new());
        Self { dir: dir.into(), own, me, open: Vec::new(), failed, foreign, looked_ns: 0, handing_on: false }
    }

    /// Before this agent decodes `raw` of its own ring: a chunk of a
    /// connection taken from an agent that exited, made after the last
    /// look, sends this one looking (and reading) first.
    pub fn before(&mut self, raw: &[u8], pipeline: &mut Pipeline, stats: &Stats) {
        if let Ok(RawEvent::Data(c)) = decode(raw) {
            if c.flags.taken_over && c.ts_ns >= self.looked_ns {
                self.look(pipeline, stats);
            }
        }
    }

    /// Find rings whose agent no longer runs, read every one open, and let
    /// go of those read to the end whose agent is gone for a while.
    pub fn look(&mut self, pipeline: &mut Pipeline, stats: &Stats) {
        self.looked_ns = monotonic_ns();
        if !self.handing_on {
            self.find(stats);
        }
        self.read(pipeline, stats, false);
    }

    /// This agent hands its connections on now: what the rings it reads
    /// hold is decoded first, so that their connections go too, and it
    /// claims no more (its successor does).
    pub fn hand_on(&mut self, pipeline: &mut Pipeline, stats: &Stats) {
        self.handing_on = true;
        self.read(pipeline, stats, false);
    }

    /// Stopping: read them all once more and remove their pins, and this
    /// agent's own (read to the end by now).
    pub fn finish(&mut self, pipeline: &mut Pipeline, stats: &Stats) {
        self.read(pipeline, stats, true);
        if let Some(own) = self.own.take() {
            let _ = std::fs::remove_file(own);
        }
    }

    /// Claim and open the rings of agents no longer running. A ring is
    /// read by one agent: the first to rename its pin to its own claim
    /// (`-by-<pid>-<start>`; a rename succeeds once) reads it, and a claim
    /// whose agent is gone in turn is taken over from where it stopped
    /// (the consumer position lives in the map). Two readers would each
    /// decode the same records. A ring of another record layout waits
    /// [`FOREIGN_WAIT`] for an agent of its own version (one restarting)
    /// before this one reads it only to count what is lost.
    fn find(&mut self, stats: &Stats) {
        let me = self.me;
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let running = |(pid, since)| crate::handover::running(Path::new("/proc"), pid, since);
        for e in entries.flatten() {
            let path = e.path();
            let Some(pin) = e.file_name().to_str().and_then(parse) else { continue };
            if self.own.as_ref() == Some(&path)
                || self.open.iter().any(|o| o.path == path)
                || self.failed.get(&path).is_some_and(|t| t.elapsed() < RETRY_FAILED)
                || running((pin.pid, pin.since))
                || pin.claim.is_some_and(|c| c != me && running(c))
            {
                continue;
            }
            let decodable = pin.format == RING_FORMAT;
            if !decodable && self.foreign.entry(path.clone()).or_insert_with(Instant::now).elapsed() < FOREIGN_WAIT {
                continue;
            }
            let claimed = self.dir.join(claimed_name(pin.format, pin.pid, pin.since, me));
            if claimed != path && std::fs::rename(&path, &claimed).is_err() {
                // Another agent claimed it first.
                continue;
            }
            self.foreign.remove(&path);
            match MapData::from_pin(&claimed).map(Map::RingBuf).and_then(RingBuf::try_from) {
                Ok(ring) => {
                    tracing::info!(
                        pid = pin.pid,
                        decodable,
                        "reading the ring buffer an agent that did not finish left (killed, or died)"
                    );
                    Stats::inc(&stats.handover_orphan_rings);
                    let (pid, since, conns, opened) = (pin.pid, pin.since, OrphanConns::default(), Instant::now());
                    self.open.push(Orphan { path: claimed, pid, since, ring, decodable, opened, conns });
                }
                Err(err) => {
                    if self.failed.insert(claimed.clone(), Instant::now()).is_none() {
                        tracing::warn!(path = %claimed.display(), error = %err, "a ring pin that cannot be read: left, tried again every 30 s");
                    }
                }
            }
        }
    }

    fn read(&mut self, pipeline: &mut Pipeline, stats: &Stats, all_done: bool) {
        self.open.retain_mut(|o| {
            let mut n = 0u64;
            while let Some(item) = o.ring.next() {
                n += 1;
                if o.decodable {
                    pipeline.handle_orphan(&item, &mut o.conns);
                } else {
                    Stats::inc(&stats.handover_orphan_records_unreadable);
                }
            }
            if n > 0 {
                tracing::info!(pid = o.pid, records = n, "records read from the ring buffer of an agent that left");
            }
            // Gone (reaped, not only exiting) and quiet: nothing will come.
            let gone = !crate::handover::alive(o.pid, o.since);
            let done = all_done || (n == 0 && gone && o.opened.elapsed() >= LINGER);
            if done {
                let _ = std::fs::remove_file(&o.path);
            }
            !done
        });
    }

    /// Rings open now.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_name_says_format_pid_and_start_and_other_files_are_not_pins() {
        let name = pin_name(4242, 987_654);
        let pin = |format, pid, since, claim| Some(Pin { format, pid, since, claim });
        assert_eq!(parse(&name), pin(RING_FORMAT, 4242, 987_654, None));
        assert_eq!(parse("ring-f9-1-2"), pin(9, 1, 2, None));
        assert_eq!(parse(&claimed_name(9, 1, 2, (3, 4))), pin(9, 1, 2, Some((3, 4))));
        for other in ["AGENTS", "CONN_OWNERS", "ring-f1-x-2", "ring-f1-1", "ring-1-2-3", "ring-f1-1-2-by-3", ""] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_dead_agent_s_ring_is_claimed_by_one_agent_and_a_running_agent_s_claim_is_left_alone() {
        let dir = std::env::temp_dir().join(format!("tokentap-rings-find-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        let since = crate::handover::start_time(me).unwrap();
        let (this, other) = ((me, since), (1, crate::handover::start_time(1).unwrap()));
        let own = dir.join(pin_name(this.0, this.1));
        const DEAD: u32 = 4_294_967_294;
        // This agent's own pin; a running agent's (process 1 serves as
        // another agent running); a dead one's claimed by that running
        // agent; a dead one's claimed by a dead one; a dead one's of another
        // record layout; a dead one's (none a ring buffer: not on bpffs).
        let running = dir.join(pin_name(other.0, other.1));
        let claimed_by_running = dir.join(claimed_name(RING_FORMAT, DEAD, 1, other));
        let claimed_by_dead = dir.join(claimed_name(RING_FORMAT, DEAD, 2, (DEAD, 9)));
        let foreign = dir.join(format!("{PREFIX}{}-{DEAD}-3", RING_FORMAT + 1));
        let dead = dir.join(pin_name(DEAD, 4));
        for p in [&own, &running, &claimed_by_running, &claimed_by_dead, &foreign, &dead] {
            std::fs::write(p, b"").unwrap();
        }
        let mut rings = OrphanRings::of(&dir, Some(own.clone()), this);
        let stats = Stats::default();
        rings.find(&stats);
        assert_eq!((rings.open(), stats.snapshot().handover_orphan_rings), (0, 0));
        assert!(own.exists() && running.exists() && claimed_by_running.exists(), "not orphans, or read already");
        assert!(foreign.exists(), "left a while for an agent of its layout");
        let mine = |format, pid, since| dir.join(claimed_name(format, pid, since, this));
        // Claimed (renamed) by this agent, then found not to be rings: left,
        // and not tried again for a while.
        assert!(!dead.exists() && mine(RING_FORMAT, DEAD, 4).exists());
        assert!(!claimed_by_dead.exists() && mine(RING_FORMAT, DEAD, 2).exists());
        assert_eq!(rings.failed.len(), 2);
        // Another agent finds nothing left to claim but the foreign ring.
        let mut second = OrphanRings::of(&dir, None, (DEAD - 1, 5));
        second.find(&stats);
        assert!(second.failed.is_empty() && second.foreign.len() == 1);
        assert_eq!(remove_all(&dir).unwrap(), 6, "claimed pins are pins too");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn removing_every_ring_pin_leaves_the_other_files() {
        let dir = std::env::temp_dir().join(format!("tokentap-rings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in [pin_name(1, 2).as_str(), "ring-f7-3-4", "AGENTS"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        assert_eq!(remove_all(&dir).unwrap(), 2);
        assert!(dir.join("AGENTS").exists());
        assert_eq!(remove_all(&dir.join("nothing")).unwrap(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
