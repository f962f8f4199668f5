//! Upgrades without a gap: the old and the new agent overlap, and each
//! connection is copied by exactly one of them (the kernel side and why:
//! `agent-ebpf/src/handover.rs`). This module keeps the maps they share,
//! pinned in a bpffs directory (`--handover-dir`):
//! - `AGENTS`: the agents running now (tgid -> start time);
//! - `CURRENT_AGENT`: the one new connections go to;
//! - `CONN_OWNERS`: who copies each connection (only the kernel writes it);
//! - `CALL_TURNS`: per CPU, the last decision on a call, for the other
//!   agent's program on the same call, and `CALL_SEQS`, each thread's call
//!   count that tells its calls apart (only the kernel writes them), kept
//!   while `OVERLAP` says agents may overlap ([`Handover::tick`]);
//! - `CONN_STATES`: the HTTP/2 decoding states a leaving agent hands on
//!   (`handoffs.rs`, `pipeline/handoff.rs`);
//! - `H2_WALKS`, `H2_MUTED`, `H2_RECORDED`: where the kernel stands in each
//!   HTTP/2 connection's frames, the streams whose DATA it skips, and where
//!   its last copied read ended (`agent-ebpf/src/h2_walk.rs`), so the agent
//!   taking one over mutes on;
//! - `GO_CALLS`: Go's TLS calls in flight, by goroutine, so that a read begun
//!   under the old agent (the one Go's HTTP client keeps pending on every
//!   idle keep-alive connection) is copied by the new one when it returns
//!   after the old one left (`agent-ebpf/src/go_tls.rs`);
//! - `CALL_ARGS`: the OpenSSL-ABI calls in flight, in each thread's storage,
//!   so that a read a client began under the old agent and is still blocked
//!   in when it leaves is copied by the new one (`return_probes.rs`).
//!
//! - `ring-f<format>-<pid>-<start>`: each agent's ring buffer, read by the
//!   agent after it if it is killed (`orphan_rings`).
//!
//! An agent registers at start and becomes current once its probes are
//! attached; the one before it then gets no new connection and loses its
//! keep-alive ones one by one at their next request. When it is stopped it
//! waits for its calls in flight (`--handover-drain-secs`), leaves, and only
//! then detaches. The last agent to leave removes the pins;
//! `tokentap-agent uninstall` removes them after a crash.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData};
use aya::Ebpf;
use thiserror::Error;
use tokentap_agent_common::{CallArgs, GoCallKey};

/// The pinned maps, by their names in the eBPF object (and as files in the directory).
pub const PINNED: [&str; 12] = [
    "AGENTS",
    "CURRENT_AGENT",
    "CONN_OWNERS",
    "OVERLAP",
    "CALL_TURNS",
    "CALL_SEQS",
    "CONN_STATES",
    "H2_WALKS",
    "H2_MUTED",
    "H2_RECORDED",
    // Go's calls in flight: a read pending on an idle keep-alive connection
    // across the upgrade is the next agent's to copy (agent-ebpf/src/go_tls.rs).
    "GO_CALLS",
    // The OpenSSL-ABI calls in flight, by thread, for the same reason: a
    // client blocked in `SSL_read` across the upgrade (`return_probes.rs`).
    "CALL_ARGS",
];

/// How long `make_current` lets probe hits under way as the probes attached finish.
const SETTLE_BEFORE_CURRENT: Duration = Duration::from_millis(20);

/// `statfs` magic of a bpf filesystem.
pub(crate) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum HandoverError {
    #[error(
        "--handover-dir {0}: not on a bpf filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`; in a pod, mount the \
         host's /sys/fs/bpf)"
    )]
    NotBpfFs(PathBuf),
    #[error("--handover-dir {0}: not a directory")]
    NotADirectory(PathBuf),
    // Said in the text, not chained: printed alone it still names the cause.
    #[error("--handover-dir {dir}: {cause}")]
    Io { dir: PathBuf, cause: std::io::Error },
    #[error(
        "--handover-dir: this process's start time cannot be read from /proc/{0}/stat (the agents tell each other \
         apart by pid and start time: run it with the host's /proc, hostPID in a pod)"
    )]
    NoStartTime(u32),
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("handover map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
}

/// Make `dir` (on a bpf filesystem) ready to hold the pins.
pub fn prepare(dir: &Path) -> Result<(), HandoverError> {
    let io = |cause| HandoverError::Io { dir: dir.into(), cause };
    // Judged on the part of the path that exists: a directory made on any
    // other filesystem would not hold pins either (and sysfs, where
    // /sys/fs/bpf is when no bpffs is mounted, refuses to make one at all).
    let abs = std::path::absolute(dir).map_err(io)?;
    let existing = abs.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    if existing == abs && !abs.is_dir() {
        return Err(HandoverError::NotADirectory(dir.into()));
    }
    if fs_magic(existing).map_err(io)? != BPF_FS_MAGIC {
        return Err(HandoverError::NotBpfFs(dir.into()));
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    Ok(())
}

/// The magic number of the filesystem `dir` is on (`statfs`).
pub(crate) fn fs_magic(dir: &Path) -> std::io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid C string and a zeroed statfs the call fills in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// This agent's identity in the maps: its process id (the chart runs the
/// agent in the host's PID namespace, where the kernel names it so too).
pub fn me() -> u32 {
    std::process::id()
}

/// Is there still a process `pid` that started at `since` (running, exiting, or a
/// zombie not yet reaped)?
pub fn alive(pid: u32, since: u64) -> bool {
    started(Path::new("/proc"), pid) == Some(since)
}

/// When a process started (clock ticks since boot, `/proc/PID/stat` field
/// 22): with the pid, it tells a live agent from a new process under a reused pid.
fn started(proc_root: &Path, pid: u32) -> Option<u64> {
    stat(proc_root, pid).map(|s| s.start)
}

/// When process `pid` started (clock ticks since boot), if it runs.
pub fn start_time(pid: u32) -> Option<u64> {
    started(Path::new("/proc"), pid)
}

/// Is the process `pid` that started at `since` running, and not on its way
/// out: not a zombie, and its main thread not exiting (`PF_EXITING`, set
/// before the kernel's exit tracepoint removes an agent from `AGENTS`).
pub fn running(proc_root: &Path, pid: u32, since: u64) -> bool {
    const PF_EXITING: u64 = 0x4;
    stat(proc_root, pid)
        .is_some_and(|s| s.start == since && !matches!(s.state, 'Z' | 'X' | 'x') && s.flags & PF_EXITING == 0)
}

struct Stat {
    state: char,
    flags: u64,
    start: u64,
}

/// `/proc/PID/stat`: fields 3 (state), 9 (flags) and 22 (start time).
fn stat(proc_root: &Path, pid: u32) -> Option<Stat> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name may hold spaces and parentheses: count after the last ')'.
    let mut f = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = f.next()?.chars().next()?;
    let flags = f.nth(5)?.parse().ok()?;
    let start = f.nth(12)?.parse().ok()?;
    Some(Stat { state, flags, start })
}

pub struct Handover {
    dir: PathBuf,
    agents: HashMap<MapData, u32, u64>,
    current: Array<MapData, u32>,
    /// 1 while agents may overlap: the kernel keeps turns and call counts
    /// (agent-ebpf's `handover::overlapping`) only then.
    overlap: Array<MapData, u32>,
    /// Since when this agent has seen no other (for [`Handover::tick`]).
    alone_since: Option<Instant>,
    me: u32,
    /// When this agent started (clock ticks since boot).
    since: u64,
    /// The kernel's id of the map of agents this agent registered in: the
    /// pins in `dir` are still the ones it shares only while the pinned
    /// `AGENTS` is this map (see [`Handover::leave`]).
    agents_id: Option<u32>,
}

/// Alone at start, before its probes attach, no agent's programs run: every Go
/// call in the shared map is an agent's that ended without a successor
/// beside it (killed, or a rollback's older agent left the pin), and a
/// goroutine's read begun since (no probe saw it) must not take its stale
/// connection. Cleared; such a pending read's bytes are then unmatched, as
/// with a map of its own.
fn clear_go_calls(ebpf: &mut Ebpf) -> Result<usize, HandoverError> {
    let map = ebpf.map_mut("GO_CALLS").ok_or(HandoverError::MissingMap("GO_CALLS"))?;
    let mut calls: HashMap<&mut MapData, GoCallKey, CallArgs> =
        HashMap::try_from(map).map_err(|source| HandoverError::Map { name: "GO_CALLS", source })?;
    let keys: Vec<GoCallKey> = calls.keys().filter_map(Result::ok).collect();
    for k in &keys {
        let _ = calls.remove(k);
    }
    Ok(keys.len())
}

/// How long an agent alone keeps the kernel's overlap bookkeeping on: the
/// agent before it may still have programs attached for a moment after it
/// left (its detach, its exit).
const ALONE_BEFORE_OVERLAP_ENDS: Duration = Duration::from_secs(5);

impl Handover {
    /// Take the shared maps from a loaded object (pinned in `dir` by the
    /// loader) and register this agent as running.
    pub fn open(ebpf: &mut Ebpf, dir: &Path) -> Result<Self, HandoverError> {
        let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(HandoverError::MissingMap(name));
        let agents = take(ebpf, "AGENTS")?;
        let agents_id = match &agents {
            aya::maps::Map::HashMap(m) => m.info().ok().map(|i| i.id()),
            _ => None,
        };
        let agents = HashMap::try_from(agents).map_err(|source| HandoverError::Map { name: "AGENTS", source })?;
        let current = take(ebpf, "CURRENT_AGENT")?;
        let current =
            Array::try_from(current).map_err(|source| HandoverError::Map { name: "CURRENT_AGENT", source })?;
        let overlap = take(ebpf, "OVERLAP")?;
        let overlap = Array::try_from(overlap).map_err(|source| HandoverError::Map { name: "OVERLAP", source })?;
        // Another agent would take a made-up start time for a dead agent's.
        let since = started(Path::new("/proc"), me()).ok_or(HandoverError::NoStartTime(me()))?;
        let mut h = Self { dir: dir.into(), agents, current, overlap, alone_since: None, me: me(), since, agents_id };
        h.reap();
        h.agents.insert(h.me, since, 0).map_err(|source| HandoverError::Map { name: "AGENTS", source })?;
        let others = h.others();
        if !others.is_empty() {
            tracing::info!(agents = ?others, "another agent runs on this node: it keeps its connections until this one is ready");
        } else {
            let cleared = clear_go_calls(ebpf)?;
            tracing::debug!(cleared, "Go calls an agent before left in the shared map, cleared");
        }
        // Before this agent's probes attach: from their first call on, both
        // agents' programs keep turns.
        h.tick()?;
        Ok(h)
    }

    /// Say whether agents overlap, for the kernel: at start and every
    /// second. On while another agent is registered; off once this one has
    /// been alone for [`ALONE_BEFORE_OVERLAP_ENDS`].
    pub fn tick(&mut self) -> Result<(), HandoverError> {
        let on = if self.others().is_empty() {
            let since = *self.alone_since.get_or_insert_with(Instant::now);
            since.elapsed() < ALONE_BEFORE_OVERLAP_ENDS
        } else {
            self.alone_since = None;
            true
        };
        let set = |h: &mut Self, v: u32| {
            h.overlap.set(0, v, 0).map_err(|source| HandoverError::Map { name: "OVERLAP", source })
        };
        if self.overlap.get(&0, 0).unwrap_or(0) != u32::from(on) {
            set(self, u32::from(on))?;
            // An agent that registered between the look and the clear set
            // the flag itself, and the clear undid it: set it back.
            if !on && !self.others().is_empty() {
                self.alone_since = None;
                set(self, 1)?;
            }
        }
        Ok(())
    }

    /// Whether the kernel keeps the overlap bookkeeping now (the
    /// `handover_overlap` gauge): the flag as the kernel has it, whatever a
    /// failed [`Handover::tick`] left; one it cannot read counts as on.
    pub fn overlapping(&self) -> bool {
        self.overlap.get(&0, 0).map_or(true, |v| v != 0)
    }

    /// The other agents running (pid, start time): when called at start, the
    /// ones this agent may take connections over from.
    pub fn others(&self) -> Vec<(u32, u64)> {
        self.agents.iter().filter_map(Result::ok).filter(|&(a, _)| a != self.me).collect()
    }

    /// Forget agents that died without leaving (killed while no other agent
    /// ran to see their exit): their connections go to the current agent.
    pub fn reap(&mut self) {
        for (pid, since) in self.others() {
            if !alive(pid, since) {
                let _ = self.agents.remove(&pid);
                tracing::info!(agent = pid, "an agent that exited without leaving was forgotten");
            }
        }
    }

    /// New connections are this agent's from now on (its probes are attached).
    pub fn make_current(&mut self) -> Result<(), HandoverError> {
        // The view is about to change: the turns must be on first (see `tick`).
        self.tick()?;
        // A probe hit being handled as this agent's last probes attached may
        // have run its entry programs without this agent's: a moment on,
        // practically no such hit is still being handled, so none finds this
        // agent current (a connection moves only at a call that began under
        // the current agent: tokentap_agent_common::ownership).
        std::thread::sleep(SETTLE_BEFORE_CURRENT);
        let before = self.current.get(&0, 0).unwrap_or(0);
        self.current.set(0, self.me, 0).map_err(|source| HandoverError::Map { name: "CURRENT_AGENT", source })?;
        if before != 0 && before != self.me && self.others().iter().any(|&(pid, _)| pid == before) {
            tracing::info!(previous = before, "new connections are this agent's; the previous one hands its over");
        }
        Ok(())
    }

    /// Pin this agent's ring buffer beside the shared maps, so that what its
    /// probes copied and it did not read outlives it if it is killed
    /// (`orphan_rings`).
    pub fn pin_ring(&self, events: &aya::maps::Map) -> Result<crate::orphan_rings::OwnRing, HandoverError> {
        let path = self.dir.join(crate::orphan_rings::pin_name(self.me, self.since));
        // A pin of an earlier process under the same pid and start time
        // cannot exist; one left by a failed start of this one might.
        let _ = std::fs::remove_file(&path);
        // The errno is a cause below the pin error's own text: said in it.
        let io = |e: aya::pin::PinError| std::io::Error::other(crate::error_text(&e));
        events.pin(&path).map_err(|e| HandoverError::Io { dir: self.dir.clone(), cause: io(e) })?;
        Ok(crate::orphan_rings::OwnRing { path, me: (self.me, self.since) })
    }

    /// The running agent new connections go to, when it is not this one.
    pub fn successor(&self) -> Option<u32> {
        let cur = self.current.get(&0, 0).ok()?;
        (cur != 0 && cur != self.me && self.agents.get(&cur, 0).is_ok()).then_some(cur)
    }

    /// Stopped: hand this agent's connections over and leave, within `limit`.
    /// With a successor current, its calls in flight finish first and then
    /// the reader hands on the decoding states ([`Drain::left`]). An agent
    /// started after this one and not yet current is waited for: it is still
    /// attaching, and calls made before its probes are in place while this
    /// one's are going would be copied by neither.
    pub fn stop(mut self, drain: &Drain, limit: Duration) {
        let begun = Instant::now();
        let starting = |h: &Self| h.others().iter().any(|&(_, since)| since >= h.since);
        if self.successor().is_none() && starting(&self) {
            tracing::info!("another agent is starting: waiting until it is ready to take over");
            while self.successor().is_none() && starting(&self) && begun.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(20));
                self.reap();
            }
        }
        match self.successor() {
            Some(next) => {
                // It copies every new call: finish the ones in flight before
                // the probes go, then leave so it takes the rest at once.
                let (left, waited) = drain.wait(limit.saturating_sub(begun.elapsed()));
                let waited_ms = waited.as_millis() as u64;
                tracing::info!(successor = next, calls_in_flight = left, waited_ms, "handing over");
                self.leave();
                // The reader hands on the states now, not after the detach.
                drain.left();
            }
            // Another agent that never became current: it takes what this
            // one leaves, and the states handed on at the end.
            None if !self.others().is_empty() => {
                tracing::warn!(
                    waited_ms = begun.elapsed().as_millis() as u64,
                    "leaving with no agent ready to take over"
                );
                drain.asked.store(true, Ordering::Relaxed);
                self.leave();
            }
            None => self.leave(),
        }
    }

    /// Leave: this agent owns nothing from now on. The last agent to leave
    /// removes the pins (nothing may hold kernel memory after the agent is gone).
    pub fn leave(mut self) {
        let _ = self.agents.remove(&self.me);
        self.reap();
        if self.others().is_empty() {
            // Pins removed under this agent (`uninstall --force`) and made
            // again by an agent started since are that agent's, whose map of
            // agents this one cannot see: left to it.
            // (Agents before this check remove them whatever they are.)
            let pin = self.dir.join("AGENTS");
            if pin.exists() {
                match aya::maps::MapInfo::from_pin(&pin) {
                    Ok(info) if self.agents_id.is_some_and(|own| own != info.id()) => {
                        tracing::info!(dir = %self.dir.display(),
                            "the handover pins are not this agent's any more: left as they are");
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reading the pinned map of agents; removing the pins"),
                }
            }
            match remove_pins(&self.dir) {
                Ok(n) => tracing::info!(dir = %self.dir.display(), pins = n, "last agent: handover pins removed"),
                Err(e) => tracing::warn!(error = %e, "removing the handover pins"),
            }
        }
    }
}

/// A handover's drain: the main thread asks, the reader answers with the
/// calls still in flight after each pass over the ring buffer.
#[derive(Default)]
pub struct Drain {
    pub asked: AtomicBool,
    /// Calls in flight at the reader's last pass, and the passes in a row
    /// that found none.
    in_flight: AtomicUsize,
    quiet_passes: AtomicU64,
    /// When this agent left with its successor current.
    left: std::sync::Mutex<Option<Instant>>,
}

/// After leaving, how long the reader waits (and at least two passes) before
/// it hands on: a probe that found the connection still ours just before
/// may still be copying into the ring buffer.
const SETTLE: Duration = Duration::from_millis(20);

impl Drain {
    /// This agent has left and its successor is current: from now on the
    /// kernel gives every call of this agent's connections to the successor,
    /// so their decoding states are final once the ring buffer is read.
    pub fn left(&self) {
        *self.left.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// How long ago the agent left, once it is time to hand on:
    /// `passes_since` reader passes after the one that first saw it leave.
    pub fn settled(&self, passes_since: u32) -> Option<Duration> {
        let at = (*self.left.lock().unwrap_or_else(|p| p.into_inner()))?;
        (passes_since >= 2 && at.elapsed() >= SETTLE).then(|| at.elapsed())
    }

    pub fn has_left(&self) -> bool {
        self.left.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Wait until two passes of the reader in a row found no call in flight
    /// (a request copied just before the first may be read by the second),
    /// or `limit`. Returns the calls left and the time waited.
    pub fn wait(&self, limit: Duration) -> (usize, Duration) {
        let started = Instant::now();
        self.asked.store(true, Ordering::Relaxed);
        loop {
            std::thread::sleep(Duration::from_millis(10));
            // Counted by the reader pass by pass: a pass with calls in
            // flight between two looks here is not missed.
            if self.quiet_passes.load(Ordering::Acquire) >= 2 {
                return (0, started.elapsed());
            }
            if started.elapsed() >= limit {
                return (self.in_flight.load(Ordering::Relaxed), started.elapsed());
            }
        }
    }

    /// After a pass of the reader: the calls in flight (only counted once a
    /// drain was asked for).
    pub fn report(&self, left: impl FnOnce() -> usize) {
        if self.asked.load(Ordering::Relaxed) {
            let left = left();
            self.in_flight.store(left, Ordering::Relaxed);
            if left == 0 {
                self.quiet_passes.fetch_add(1, Ordering::Release);
            } else {
                self.quiet_passes.store(0, Ordering::Release);
            }
        }
    }
}

/// Remove the pins in `dir` (and `dir` when empty): `tokentap-agent uninstall`,
/// and the last agent's exit. Returns how many were removed.
pub fn remove_pins(dir: &Path) -> Result<usize, HandoverError> {
    let mut n = 0;
    for name in PINNED {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(cause) => return Err(HandoverError::Io { dir: dir.into(), cause }),
        }
    }
    n += crate::orphan_rings::remove_all(dir).map_err(|cause| HandoverError::Io { dir: dir.into(), cause })?;
    // Only if nothing else lives there.
    let _ = std::fs::remove_dir(dir);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_ends_after_two_passes_in_a_row_with_no_call_in_flight_whenever_it_looks() {
        let drain = std::sync::Arc::new(Drain::default());
        drain.report(|| panic!("not counted before a drain is asked for"));
        let d = drain.clone();
        let waiter = std::thread::spawn(move || d.wait(Duration::from_secs(20)));
        while !drain.asked.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        // Passes far faster than the waiter looks (every 10 ms), for 20 of
        // its looks: it finds a quiet last pass at half of them, but quiet
        // passes between busy ones never add up to two in a row.
        let busy = Instant::now();
        while busy.elapsed() < Duration::from_millis(200) {
            for left in [0, 3, 0, 1] {
                drain.report(|| left);
            }
        }
        assert!(!waiter.is_finished(), "ended with calls in flight at every other pass");
        drain.report(|| 0);
        drain.report(|| 0);
        let (left, waited) = waiter.join().unwrap();
        assert_eq!(left, 0);
        assert!(waited < Duration::from_secs(20), "ended by the quiet passes, not the limit");
    }

    #[test]
    fn a_drain_that_never_quiets_ends_at_its_limit_with_the_calls_left() {
        let drain = Drain::default();
        drain.asked.store(true, Ordering::Relaxed);
        drain.report(|| 2);
        assert_eq!(drain.wait(Duration::from_millis(30)).0, 2);
    }

    #[test]
    fn a_process_start_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let root = std::env::temp_dir().join(format!("tokentap-handover-{}", std::process::id()));
        std::fs::create_dir_all(root.join("42")).unwrap();
        let fields = (4..=21).map(|i| i.to_string()).collect::<Vec<_>>().join(" ");
        std::fs::write(root.join("42/stat"), format!("42 (a (b) c) S {fields} 987654 1 2\n")).unwrap();
        // Field 22 (starttime) follows the state (3) and fields 4..=21.
        assert_eq!(started(&root, 42), Some(987654));
        assert_eq!(started(&root, 43), None, "no such process");
        std::fs::write(root.join("42/stat"), "42 (x) S 1 2\n").unwrap();
        assert_eq!(started(&root, 42), None, "a short line is no start time");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_zombie_an_exiting_process_or_another_start_time_is_not_running() {
        let root = std::env::temp_dir().join(format!("tokentap-handover-run-{}", std::process::id()));
        std::fs::create_dir_all(root.join("7")).unwrap();
        let line = |state: &str, flags: u64, start: u64| {
            let before = (4..=8).map(|i| i.to_string()).collect::<Vec<_>>().join(" ");
            let after = (10..=21).map(|i| i.to_string()).collect::<Vec<_>>().join(" ");
            format!("7 (tokentap) agent) {state} {before} {flags} {after} {start} 1 2\n")
        };
        let write = |l: String| std::fs::write(root.join("7/stat"), l).unwrap();
        write(line("S", 0x40_0040, 555));
        assert!(running(&root, 7, 555));
        assert!(!running(&root, 7, 556), "a reused pid");
        assert!(!running(&root, 8, 555), "gone");
        write(line("R", 0x40_0044, 555));
        assert!(!running(&root, 7, 555), "PF_EXITING: on its way out");
        write(line("Z", 0x40_0040, 555));
        assert!(!running(&root, 7, 555), "a zombie");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn this_process_has_a_start_time_and_a_directory_not_on_bpffs_is_refused() {
        assert!(started(Path::new("/proc"), me()).is_some());
        let dir = std::env::temp_dir().join(format!("tokentap-handover-nobpf-{}", std::process::id()));
        match prepare(&dir) {
            Err(HandoverError::NotBpfFs(d)) => assert_eq!(d, dir),
            other => panic!("expected NotBpfFs, got {other:?}"),
        }
        assert!(!dir.exists(), "refused before anything is made");
        // Deeper, under a directory that is not there either; on sysfs (no
        // bpffs mounted on /sys/fs/bpf: the default path there).
        assert!(matches!(prepare(&dir.join("a/b")), Err(HandoverError::NotBpfFs(_))));
        let sys = Path::new("/sys/fs/bpf/tokentap-test-nothing-here");
        if fs_magic(Path::new("/sys/fs/bpf")).ok() != Some(BPF_FS_MAGIC) {
            assert!(matches!(prepare(sys), Err(HandoverError::NotBpfFs(_))), "{:?}", prepare(sys));
        }
        // A file in the way.
        std::fs::write(&dir, b"").unwrap();
        assert!(matches!(prepare(&dir), Err(HandoverError::NotADirectory(_))));
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn removing_pins_that_are_not_there_is_not_an_error() {
        let dir = std::env::temp_dir().join(format!("tokentap-handover-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("AGENTS"), b"").unwrap();
        assert_eq!(remove_pins(&dir).unwrap(), 1);
        assert!(!dir.exists(), "the emptied directory goes too");
        assert_eq!(remove_pins(&dir).unwrap(), 0);
    }
}
