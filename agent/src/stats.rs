//! The agent's counters about itself: what it captured, what it dropped and why.
//! Logged periodically and at exit, and written to `--stats-file` as JSON.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokentap_agent_common::LossCounter;

use crate::capture::decode::DecodeError;
use crate::capture::streams::ConnDrop;
use crate::http::exchange::Ignored;
use crate::http::message::HttpDrop;
use crate::providers::ProviderError;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Counters other parts own (each sink's): see [`CounterSet`].
            groups: Groups,
            /// LLM traffic by host, process name and verdict, for /metrics'
            /// labelled series (bounded; docs/operations.md).
            pub traffic: crate::blind_spots::Series,
        }

        #[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
        pub struct Snapshot {
            $(pub $name: u64,)*
            /// The groups' counters, by name (flat beside the others in JSON).
            #[serde(flatten, deserialize_with = "numbers_only")]
            pub groups: BTreeMap<String, u64>,
        }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* groups: self.groups.values() }
            }
        }

        impl Snapshot {
            /// Every counter with its name.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Ring-buffer records read.
    events,
    /// Plaintext bytes received from the kernel.
    bytes,
    /// Records that failed to decode.
    decode_errors,
    /// Connections seen.
    connections,
    /// Connections ignored, by reason.
    ignored_not_http,
    /// HTTP/2 connections opened before capture began (HPACK state unknown).
    ignored_http2_joined,
    ignored_server_side,
    /// Connections whose capture began mid-exchange (that exchange skipped):
    /// bytes skipped on a connection that then proved HTTP. Bytes that never
    /// do count in `ignored_not_http`.
    joined_mid_stream,
    /// HTTP/1.1 connections that lost bytes (full ring buffer, unreadable
    /// memory, a read no agent copied in an upgrade) and resumed at their
    /// next request; the calls in flight count in `dropped_unanswered` (in
    /// `dropped_at_handover` for the upgrade's).
    resynced_after_gap,
    ignored_desync,
    /// Switched protocols to something other than an LLM API's WebSocket.
    ignored_upgraded,
    /// LLM API WebSockets whose framing or compression broke (garbage, a
    /// message over the body cap, a deflate stream that does not inflate),
    /// over HTTP/1.1 connections and HTTP/2 streams.
    ignored_websocket_malformed,
    /// WebSocket session or request messages not kept for the calls that
    /// follow: over the body cap together with those kept.
    websocket_messages_dropped,
    /// Connections evicted because the table was full.
    connections_evicted,
    /// Connections expired after the idle timeout.
    connections_expired,
    /// Connections dropped for holding too much memory (per-connection or
    /// `max_buffered_bytes` limit); their pending calls count as unanswered.
    connections_shed,
    /// LLM records written.
    records,
    /// Of those, Bedrock InvokeModel calls whose response body the client never
    /// read (whole): recorded from the response headers' token counts
    /// (`usage_source = headers`).
    records_body_unread,
    /// Of those, calls from a container the node's pods do not name, with
    /// Kubernetes metadata on (no pod, namespace or workload): the pod list
    /// not read (the API server unreachable, RBAC), a container started
    /// moments before its call, or one no pod runs.
    records_pod_unknown,
    /// Spend of those records, in millionths of a USD.
    cost_micro_usd,
    /// LLM calls dropped: no complete response (client died, connection reset, bytes lost).
    dropped_unanswered,
    /// LLM calls dropped: in flight when the agent stopped (its probes were
    /// detached before the response was complete).
    dropped_at_exit,
    /// LLM calls dropped in an upgrade (`--handover-dir`): in flight in a
    /// decoding state the agent before handed on, their answer read where no
    /// agent copied it (inside a TLS library's read blocked across the whole
    /// upgrade, by a client with no timeout), or on a connection that ended
    /// before this agent read any of it.
    dropped_at_handover,
    /// An upgrade (`--handover-dir`), leaving: HTTP/2 connections and
    /// WebSocket sessions whose decoding state (and ignored connections whose
    /// verdict) was handed to the next agent, and those it could not hand on
    /// (a header block half read, too large).
    handoff_states_sent,
    handoff_states_not_sent,
    /// An upgrade, taking over: connections decoded on from the state the
    /// agent before handed on, taken with none (it exited without one, or
    /// the wait passed 30 s), or with one that could not be used.
    handoff_states_received,
    handoff_states_missing,
    handoff_states_unusable,
    /// An upgrade, after an agent was killed (or died): the ring buffers it
    /// left pinned that this agent read, the records in them it decoded as
    /// its own (copied by that agent, never read by it), and those of
    /// another record layout, counted and dropped.
    handover_orphan_rings,
    handover_orphan_records,
    handover_orphan_records_unreadable,
    /// LLM calls dropped: response body larger than the cap.
    dropped_truncated_body,
    /// LLM calls dropped: response body could not be decoded (bad gzip, bomb, ...).
    dropped_body_decode,
    /// LLM calls dropped: response was not the provider's format.
    dropped_parse_error,
    /// An output's failures to take a record (or traffic row) or to keep a
    /// batch, each logged with the output; the records a lost batch held
    /// count in the output's own counters (`collector_spool_dropped_records`).
    sink_errors,
    /// TLS library files (by device and inode) with probes attached.
    targets_attached,
    /// Attach attempts that failed, and by reason: the kernel refused
    /// (`permission_denied`: a capability, an LSM, seccomp), the file or its
    /// process went away (`gone`), anything else (`other`).
    attach_failures,
    attach_failures_permission_denied,
    attach_failures_gone,
    attach_failures_other,
    /// Processes whose maps or files the agent was refused (no
    /// `CAP_SYS_PTRACE`, an LSM): their TLS libraries are not probed.
    processes_unreadable,
    /// Process scans skipped for `--exclude-process`.
    processes_excluded,
    /// Files carrying a TLS library that is not probed (a stripped BoringSSL
    /// the code analysis could not verify; a rustls whose functions were not found): their
    /// processes are listed in coverage with the reason.
    files_not_probed,
    /// Process events (exec, libraries mapped) not passed to discovery because
    /// its queue was full: a TLS library they bring may go unprobed.
    process_events_dropped,
    /// Kernel-side losses (from the LOSS map).
    kernel_ring_full,
    kernel_truncated_calls,
    kernel_read_failed,
    kernel_control_ring_full,
    kernel_args_map_full,
    kernel_scratch_busy,
    /// Not a loss: TLS calls the kernel skipped on connections marked ignored.
    kernel_filtered_calls,
    /// Plaintext socket connections given up: a vector call had more buffers than copied.
    kernel_iov_overflow,
    /// Not a loss: plaintext socket connections whose first bytes were not HTTP
    /// (TLS, databases, DNS…), skipped in the kernel.
    kernel_sockets_not_http,
    /// Not a loss: client sockets whose first bytes were a TLS handshake (a
    /// subset of `kernel_sockets_not_http`): named from their hello and counted.
    kernel_sockets_tls,
    /// TLS hellos the kernel could not deliver (ring buffer full, scratch busy):
    /// those connections can't be named, so they are not accounted for.
    kernel_hello_lost,
    /// Not a loss: reads the kernel did not copy, or copied only in part,
    /// because they fell inside a response body no one records
    /// (`responses_muted`).
    kernel_muted_reads,
    /// Not a loss: calls not copied because another agent owns their
    /// connection (two agents overlap during an upgrade, `--handover-dir`).
    kernel_owned_elsewhere,
    /// Not a loss: keep-alive connections received from the previous agent at
    /// an exchange boundary (its next request after a whole response).
    kernel_handover_received,
    /// Connections taken from an agent that exited while owning them, joined
    /// wherever they stood (a cut call counts in `joined_mid_stream` here and
    /// in the old agent's `dropped_at_exit`).
    kernel_handover_from_exited,
    /// Not a loss: HTTP/2 connections whose frames the kernel stopped
    /// following (their bytes are all copied from then on, none muted).
    kernel_h2_walk_stopped,
    /// Not a loss: ignores that arrived after their connection ended, found
    /// under its key reused by the next connection and dropped (that one is
    /// copied, as it should be).
    kernel_ignores_stale,
    /// Not a loss: calls whose two agents' programs straddled an agent's
    /// leaving or becoming current (an upgrade), settled by the second
    /// program deciding from the first's view: one agent copies each.
    kernel_straddled_calls,
    /// Not a loss: HTTP/2 connections taken over past reads the kernel walked
    /// and did not copy (their count moved on by as much).
    kernel_h2_walk_moved_on,
    /// Not a loss by itself: Go reads and writes whose call the kernel did
    /// not find (begun before the probes attached, or evicted from its map).
    kernel_go_calls_unmatched,
    /// Runs of the agent's eBPF programs the kernel skipped because the same
    /// program was already running on that CPU (each may be a call not
    /// copied; `program_misses`), summed over its programs.
    kernel_program_misses,
    /// Not a loss: response bodies no one records whose remaining bytes the
    /// kernel was asked not to copy: non-LLM HTTP/1.1 bodies of at least
    /// 32 KiB, and non-LLM HTTP/2 streams past their first DATA frame.
    responses_muted,
    /// TLS client connections named by their hello's server name, and those
    /// whose hello named none (or was not a ClientHello).
    tls_connections_named,
    tls_connections_unnamed,
    /// Connections to LLM API hosts a capture method read and decoded, and the
    /// socket bytes they moved (both ways).
    llm_connections_decoded,
    llm_decoded_bytes,
    /// Connections to LLM API hosts tokentap could not read (blind spots), and
    /// the socket bytes they sent and received: the stats file's
    /// `blind_spots` says who and why.
    llm_connections_unread,
    llm_unread_bytes_sent,
    llm_unread_bytes_received,
    /// Connections to LLM API hosts not tracked because the table of open ones
    /// was full (8,192): counted here only.
    llm_sockets_untracked,
    /// Blind-spot entries (process x host x reason) dropped to stay within
    /// 1,024; their counts stay in the totals above.
    blind_spot_entries_evicted,
    /// LLM traffic rows (per process, host and verdict) lost because evicted
    /// entries' rows overflowed the 4,096 kept for the next flush.
    llm_traffic_rows_dropped,
    /// Most bytes waiting in the kernel ring buffer during the last second, and
    /// its size (`--ring-buffer-bytes`): when the first nears the second,
    /// records are about to be lost (`kernel_ring_full`).
    ring_buffer_fill_bytes,
    ring_buffer_size_bytes,
    /// 1 when the TLS libraries' return probes are `uprobe_multi` links
    /// (`--handover-dir`, a kernel that has them): a read a client is blocked
    /// in across a whole upgrade is copied by the new agent.
    return_probes_multi,
    /// 1 when socket capture runs on the raw `sys_enter`/`sys_exit`
    /// tracepoints (the default, or the fallback of `--syscall-hooks
    /// tracepoints`): a program on every syscall of the host.
    socket_hooks_every_syscall,
    /// Client sockets found open at start and watched from their next
    /// request (with `--handover-dir`: the keep-alive connections the agent
    /// before this one hands over).
    sockets_adopted_at_start,
    /// With `--handover-dir`: processes whose open sockets could not be
    /// listed at start (refused), whose keep-alive plaintext connections the
    /// agent before this one hands over are then not copied.
    processes_unreadable_at_start,
    /// With `--handover-dir`: reads found blocked on those sockets at start
    /// (a client with no timeout waiting for its answer), handed to the
    /// socket programs so that the answer is copied when it comes.
    reads_adopted_at_start,
    /// With `--handover-dir`: writes found blocked on those sockets at start
    /// (a client with no timeout writing a request body larger than the
    /// sockets' buffers), handed over likewise so that its rest is copied.
    writes_adopted_at_start,
    /// With `--handover-dir`: 1 while the kernel keeps the bookkeeping of two
    /// agents overlapping (another agent is registered, or this one has been
    /// alone for under 5 s), which makes each copied call dearer; 0 once
    /// alone (a gauge).
    handover_overlap,
    /// Other tokentap agents capturing on this host that share no
    /// `--handover-dir` with this one, found so at every look for a minute:
    /// each call both see is recorded by each (a gauge; docs/operations.md).
    other_agents_unshared,
    /// With Kubernetes metadata on: containers the node's pods name, as last
    /// listed or watched (0 until the pod list is read; a gauge).
    kubernetes_containers,
}

/// Counters a part of the agent owns (a sink's), shown beside the core ones
/// in the stats file, the snapshot and /metrics, under their own names.
pub trait CounterSet: std::any::Any + Send + Sync {
    /// Every counter with its name.
    fn fields(&self) -> Vec<(&'static str, u64)>;
    /// Those of `fields` that are levels, not totals.
    fn gauges(&self) -> &'static [&'static str] {
        &[]
    }
}

/// The counter groups of a [`Stats`], one per type.
#[derive(Default)]
struct Groups(Mutex<Vec<Arc<dyn CounterSet>>>);

impl Groups {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Arc<dyn CounterSet>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn values(&self) -> BTreeMap<String, u64> {
        self.list().iter().flat_map(|g| g.fields()).map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

/// Only the numbers of a stats file's extra keys (not `coverage`).
fn numbers_only<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Number(u64),
        Other(serde::de::IgnoredAny),
    }
    let all = BTreeMap::<String, Value>::deserialize(d)?;
    Ok(all.into_iter().filter_map(|(k, v)| if let Value::Number(n) = v { Some((k, n)) } else { None }).collect())
}

impl Stats {
    /// The group of counters of type `T`, created on first use (and shown
    /// from then on, zeros included).
    pub fn group<T: CounterSet + Default>(&self) -> Arc<T> {
        let mut groups = self.groups.list();
        for g in groups.iter() {
            let any: Arc<dyn std::any::Any + Send + Sync> = g.clone();
            if let Ok(t) = any.downcast::<T>() {
                return t;
            }
        }
        let t = Arc::new(T::default());
        groups.push(t.clone());
        t
    }

    /// The groups' gauges.
    pub fn group_gauges(&self) -> Vec<&'static str> {
        self.groups.list().iter().flat_map(|g| g.gauges().iter().copied()).collect()
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set(c: &AtomicU64, n: u64) {
        c.store(n, Ordering::Relaxed);
    }

    /// Count one drop a stage reported.
    pub fn count(&self, what: impl Counted) {
        Self::inc(what.counter(self));
    }

    /// Count `n` drops of one kind.
    pub fn count_n(&self, what: impl Counted, n: u64) {
        Self::add(what.counter(self), n);
    }
}

/// What a stage reports it dropped, and the counter that counts it. The
/// mappings live here, so stages name their drops without knowing `Stats`.
pub trait Counted {
    fn counter(self, stats: &Stats) -> &AtomicU64;
}

impl Counted for DecodeError {
    /// One counter for every kind of bad record (the log says which).
    fn counter(self, s: &Stats) -> &AtomicU64 {
        &s.decode_errors
    }
}

impl Counted for ConnDrop {
    fn counter(self, s: &Stats) -> &AtomicU64 {
        match self {
            ConnDrop::Evicted => &s.connections_evicted,
            ConnDrop::Expired => &s.connections_expired,
            ConnDrop::Shed => &s.connections_shed,
        }
    }
}

impl Counted for Ignored {
    fn counter(self, s: &Stats) -> &AtomicU64 {
        match self {
            Ignored::NotHttp => &s.ignored_not_http,
            Ignored::Http2Joined => &s.ignored_http2_joined,
            Ignored::ServerSide => &s.ignored_server_side,
            Ignored::Desync => &s.ignored_desync,
            Ignored::Upgraded => &s.ignored_upgraded,
            Ignored::WebSocket => &s.ignored_websocket_malformed,
        }
    }
}

impl Counted for HttpDrop {
    fn counter(self, s: &Stats) -> &AtomicU64 {
        match self {
            HttpDrop::Unanswered => &s.dropped_unanswered,
            HttpDrop::AtHandover => &s.dropped_at_handover,
            HttpDrop::JoinedMidStream => &s.joined_mid_stream,
            HttpDrop::Resynced => &s.resynced_after_gap,
            HttpDrop::WsMessageDropped => &s.websocket_messages_dropped,
            HttpDrop::WsMalformed => &s.ignored_websocket_malformed,
            HttpDrop::NotHttp => &s.ignored_not_http,
        }
    }
}

impl Counted for &ProviderError {
    fn counter(self, s: &Stats) -> &AtomicU64 {
        match self {
            ProviderError::TruncatedBody => &s.dropped_truncated_body,
            ProviderError::Incomplete => &s.dropped_unanswered,
            ProviderError::Body(_) => &s.dropped_body_decode,
            ProviderError::BadJson(_) => &s.dropped_parse_error,
        }
    }
}

/// The kernel's `LOSS` map, one row per counter: where each lands in [`Stats`]
/// and [`Snapshot`]. Readers and sums go through [`LossCounter::ALL`].
macro_rules! kernel_counters {
    ($($counter:ident => $field:ident),* $(,)?) => {
        impl Counted for LossCounter {
            fn counter(self, s: &Stats) -> &AtomicU64 {
                match self { $(LossCounter::$counter => &s.$field,)* }
            }
        }

        impl Snapshot {
            /// A kernel counter's value.
            pub fn kernel(&self, c: LossCounter) -> u64 {
                match c { $(LossCounter::$counter => self.$field,)* }
            }
        }
    };
}

kernel_counters! {
    RingFull => kernel_ring_full,
    TruncatedCall => kernel_truncated_calls,
    ReadFailed => kernel_read_failed,
    ControlRingFull => kernel_control_ring_full,
    ArgsMapFull => kernel_args_map_full,
    ScratchBusy => kernel_scratch_busy,
    FilteredIgnored => kernel_filtered_calls,
    IovOverflow => kernel_iov_overflow,
    SocketsNotHttp => kernel_sockets_not_http,
    SocketsTls => kernel_sockets_tls,
    HelloLost => kernel_hello_lost,
    MutedReads => kernel_muted_reads,
    OwnedElsewhere => kernel_owned_elsewhere,
    HandoverReceived => kernel_handover_received,
    HandoverFromExited => kernel_handover_from_exited,
    H2WalkStopped => kernel_h2_walk_stopped,
    IgnoreStale => kernel_ignores_stale,
    StraddledCalls => kernel_straddled_calls,
    H2WalkMovedOn => kernel_h2_walk_moved_on,
    GoCallsUnmatched => kernel_go_calls_unmatched,
}

impl Snapshot {
    /// A counter by name, a group's included (0 when there is none).
    pub fn get(&self, name: &str) -> u64 {
        let core = self.fields().into_iter().find(|(k, _)| *k == name).map(|(_, v)| v);
        core.or_else(|| self.groups.get(name).copied()).unwrap_or(0)
    }

    /// Calls that were seen but produced no record.
    pub fn dropped_calls(&self) -> u64 {
        self.dropped_unanswered
            + self.dropped_at_exit
            + self.dropped_at_handover
            + self.dropped_truncated_body
            + self.dropped_body_decode
            + self.dropped_parse_error
    }

    pub fn kernel_losses(&self) -> u64 {
        let counted: u64 = LossCounter::ALL.into_iter().filter(|c| c.is_loss()).map(|c| self.kernel(c)).sum();
        counted + self.kernel_program_misses
    }

    /// Write as JSON, atomically (write then rename).
    pub fn write_to(&self, path: &std::path::Path) -> std::io::Result<()> {
        StatsFile { counters: self.clone(), ..Default::default() }.write_to(path)
    }
}

/// What `--stats-file` holds: the counters, per-process coverage, and the
/// LLM traffic tokentap could not read.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatsFile {
    #[serde(flatten)]
    pub counters: Snapshot,
    #[serde(default)]
    pub coverage: Vec<crate::coverage::ProcessCoverage>,
    /// Per process, provider host and reason (docs/coverage.md).
    #[serde(default)]
    pub blind_spots: Vec<tokentap_event::traffic::BlindSpot>,
}

impl StatsFile {
    /// At start: make `path`'s directory if need be and try a temporary file
    /// there, so that a path the agent cannot write is an error then, not a
    /// warning behind a healthy agent. No file is left at `path` (a reader
    /// waiting for counters must not take a file of zeros for them). A file
    /// there already (the agent before's, in an upgrade) is replaced by a
    /// copy of itself, as every write replaces it: a file mounted on its own
    /// (a pod's `subPath`), or another user's in a sticky directory, refuses
    /// that now rather than at the first write.
    pub fn prepare(path: &std::path::Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        if path.is_dir() {
            return Err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "a directory"));
        }
        let tmp = tmp_path(path);
        let before = match std::fs::metadata(path) {
            // Not read, never replaced: a device or a pipe (`/dev/stdout`)
            // could block the start, and every write would put a file in its place.
            Ok(m) if !m.is_file() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file (the stats file is replaced by a rename at every write)",
                ))
            }
            Ok(_) => Some(std::fs::read(path)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let tried = std::fs::write(&tmp, before.as_deref().unwrap_or_default()).and_then(|()| match before {
            Some(_) => std::fs::rename(&tmp, path),
            None => std::fs::remove_file(&tmp),
        });
        let Err(e) = tried else { return Ok(()) };
        let _ = std::fs::remove_file(&tmp);
        let why = match e.raw_os_error() {
            Some(libc::EBUSY) => {
                "a mount point: a file mounted on its own refuses the rename; mount its directory instead"
            }
            Some(libc::EPERM | libc::EACCES) if before.is_some() => {
                "the file there cannot be replaced (another user's, in a sticky directory?)"
            }
            _ => return Err(e),
        };
        Err(std::io::Error::new(e.kind(), format!("{why} (each write renames a new file over it): {e}")))
    }

    /// Replace the file at `path` whole (a reader never sees half of it).
    /// The temporary file is this process's own: two agents overlapping in an
    /// upgrade may be given the same path, and one's rename must not move the
    /// other's half-written file into place. Named by pid and a number drawn
    /// once per process (two agents in different PID namespaces may share a
    /// pid); only a killed agent leaves one behind.
    pub fn write_to(&self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = tmp_path(path);
        let written = serde_json::to_vec_pretty(self)
            .map_err(std::io::Error::from)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

/// This process's temporary file beside `path`: named by pid and a number
/// drawn once per process.
fn tmp_path(path: &std::path::Path) -> std::path::PathBuf {
    static NONCE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let nonce = NONCE.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.subsec_nanos() ^ t.as_secs() as u32
    });
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}-{nonce:08x}.tmp", std::process::id()));
    tmp.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preparing_the_stats_file_makes_its_directory_or_fails_at_start() {
        let dir = std::env::temp_dir().join(format!("tt-stats-prep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("a/b/stats.json");
        StatsFile::prepare(&path).unwrap();
        assert!(path.parent().unwrap().is_dir(), "its directory made");
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 0, "no file of zeros, no temporary");
        std::fs::write(dir.join("file"), b"").unwrap();
        assert!(StatsFile::prepare(&dir.join("file/stats.json")).is_err(), "a file in the way");
        assert!(StatsFile::prepare(&dir.join("a")).is_err(), "a directory at the path");
        assert!(StatsFile::prepare(std::path::Path::new("/proc/tt-nowhere/stats.json")).is_err());
        // Not a regular file: refused, never read (a pipe would block).
        let e = StatsFile::prepare(std::path::Path::new("/dev/null")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(std::path::Path::new("/dev/null").exists() && !std::path::Path::new("/dev/null").is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file there already (the agent before's) is replaced by a copy of
    /// itself: the rename every write makes is tried at start.
    #[test]
    fn preparing_over_a_file_renames_a_copy_of_it_into_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("tt-stats-over-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.json");
        std::fs::write(&path, b"{\"records\": 7}").unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        StatsFile::prepare(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"records\": 7}", "its content kept");
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), inode, "renamed over");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn snapshot_and_file() {
        let s = Stats::default();
        Stats::inc(&s.records);
        Stats::add(&s.dropped_unanswered, 2);
        Stats::add(&s.dropped_parse_error, 1);
        let snap = s.snapshot();
        assert_eq!(snap.records, 1);
        assert_eq!(snap.dropped_calls(), 3);
        let p = std::env::temp_dir().join(format!("tt-stats-{}.json", std::process::id()));
        snap.write_to(&p).unwrap();
        let back: Snapshot = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, snap);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn the_stats_file_is_written_through_a_temporary_file_of_this_process_own() {
        let dir = std::env::temp_dir().join(format!("tt-stats-tmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("stats.json");
        // Another agent given the same path (two overlap in an upgrade), half
        // way through its write: this one's rename must not move that file.
        let theirs = dir.join("stats.json.1.tmp");
        std::fs::write(&theirs, b"{\"half").unwrap();
        Stats::default().snapshot().write_to(&p).unwrap();
        let back: Snapshot = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, Snapshot::default());
        let mut left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        left.sort();
        assert_eq!(left, ["stats.json", "stats.json.1.tmp"], "its own temporary file renamed, theirs untouched");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drops_count_where_their_enums_say() {
        let s = Stats::default();
        s.count(DecodeError::BadDirection(9));
        s.count(ConnDrop::Shed);
        s.count(Ignored::Http2Joined);
        s.count_n(HttpDrop::Resynced, 2);
        s.count(&ProviderError::Incomplete);
        s.count(&ProviderError::BadJson("x".into()));
        for c in LossCounter::ALL {
            Stats::set(c.counter(&s), 1);
        }
        let snap = s.snapshot();
        assert_eq!((snap.decode_errors, snap.connections_shed, snap.ignored_http2_joined), (1, 1, 1));
        assert_eq!(snap.resynced_after_gap, 2);
        assert_eq!((snap.dropped_unanswered, snap.dropped_parse_error), (1, 1));
        assert_eq!((snap.kernel_filtered_calls, snap.kernel_sockets_not_http), (1, 1));
        // Skipped work (filtered calls, non-HTTP sockets) is not a loss.
        assert_eq!(snap.kernel_losses(), 8);
        // Runs the kernel skipped are a loss too.
        Stats::set(&s.kernel_program_misses, 3);
        assert_eq!(s.snapshot().kernel_losses(), 11);
    }

    /// Every counter is in docs/operations.md (its table, or /metrics' list).
    #[test]
    fn every_counter_is_documented() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md")).unwrap();
        for (name, _) in Snapshot::default().fields() {
            let named = docs.contains(&format!("`{name}`")) || docs.contains(&format!("`tokentap_agent_{name}`"));
            assert!(named, "{name} is not in docs/operations.md");
        }
    }
}
