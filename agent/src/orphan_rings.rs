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
//! decoded before its newer ones. A ring of another record layout (an
//! agent of another `RING_FORMAT`) is read to count its records, not
//! decoded. Why not one ring for all agents: each agent's parser state is
//! its own, so each needs its own ordered stream (`agent-ebpf/src/handover.rs`).
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

/// The pin name of the ring buffer of the agent `pid` that started at `since`.
pub fn pin_name(pid: u32, since: u64) -> String {
    format!("{PREFIX}{RING_FORMAT}-{pid}-{since}")
}

/// (format, pid, start time) of a ring pin's name; None for any other file.
fn parse(name: &str) -> Option<(u32, u32, u64)> {
    let mut it = name.strip_prefix(PREFIX)?.splitn(3, '-');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?))
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

/// The rings killed agents left in the handover directory, and this agent's own pin.
pub struct OrphanRings {
    dir: PathBuf,
    own: Option<PathBuf>,
    open: Vec<Orphan>,
    /// When the last look began (the kernel's monotonic clock, as chunks carry).
    looked_ns: u64,
}

impl OrphanRings {
    pub fn new(dir: &Path, own: Option<PathBuf>) -> Self {
        Self { dir: dir.into(), own, open: Vec::new(), looked_ns: 0 }
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
        self.find(stats);
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

    fn find(&mut self, stats: &Stats) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            let Some((format, pid, since)) = e.file_name().to_str().and_then(parse) else { continue };
            if self.own.as_ref() == Some(&path)
                || self.open.iter().any(|o| o.path == path)
                || crate::handover::running(Path::new("/proc"), pid, since)
            {
                continue;
            }
            match MapData::from_pin(&path).map(Map::RingBuf).and_then(RingBuf::try_from) {
                Ok(ring) => {
                    let decodable = format == RING_FORMAT;
                    tracing::info!(
                        pid,
                        decodable,
                        "reading the ring buffer an agent that did not finish left (killed, or died)"
                    );
                    Stats::inc(&stats.handover_orphan_rings);
                    let conns = OrphanConns::default();
                    self.open.push(Orphan { path, pid, since, ring, decodable, opened: Instant::now(), conns });
                }
                Err(err) => {
                    // Not a ring buffer, or not ours to open: nothing to read.
                    tracing::warn!(path = %path.display(), error = %err, "a ring pin that cannot be read: removed");
                    let _ = std::fs::remove_file(&path);
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
        assert_eq!(parse(&name), Some((RING_FORMAT, 4242, 987_654)));
        assert_eq!(parse("ring-f9-1-2"), Some((9, 1, 2)));
        for other in ["AGENTS", "CONN_OWNERS", "ring-f1-x-2", "ring-f1-1", "ring-1-2-3", ""] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn only_rings_of_agents_no_longer_running_are_opened_and_one_that_is_no_ring_goes() {
        let dir = std::env::temp_dir().join(format!("tokentap-rings-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        let since = crate::handover::start_time(me).unwrap();
        let own = dir.join(pin_name(me, since + 1));
        // This agent's own pin; a running agent's (this process under another
        // name); a dead one's, which is not a ring buffer (not on bpffs).
        let (running, dead) = (dir.join(pin_name(me, since)), dir.join(pin_name(4_294_967_294, 1)));
        for p in [&own, &running, &dead] {
            std::fs::write(p, b"").unwrap();
        }
        let mut rings = OrphanRings::new(&dir, Some(own.clone()));
        let stats = Stats::default();
        rings.find(&stats);
        assert_eq!((rings.open(), stats.snapshot().handover_orphan_rings), (0, 0));
        assert!(own.exists() && running.exists(), "neither is an orphan");
        assert!(!dead.exists(), "a pin that cannot be read is removed, not tried again");
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
