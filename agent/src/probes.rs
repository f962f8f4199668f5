//! Loading the eBPF object and attaching its programs: uprobes/uretprobes on the
//! TLS functions of each discovered file, placed by each capture method's entry
//! in [`METHODS`] (Go's at entry and at every return instruction), the exec/exit
//! tracepoints, and the socket syscall tracepoints.
//! Dropping [`Probes`] detaches everything; [`Probes::detach`] does it in the
//! order that cuts fewest calls.
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use aya::maps::{MapData, PerCpuArray, PerCpuValues, RingBuf};
use aya::programs::uprobe::UProbeScope;
use aya::programs::{RawTracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use thiserror::Error;
use tokentap_agent_common::{
    H2Stream, LossCounter, MuteRange, SockId, SockKey, SockState, SslKey, VERDICT_COUNT, VERDICT_STOP,
};

pub use crate::attach_failure::AttachFailure;
use crate::blind_spots::SocketTable;
use crate::capture::event::Totals;
use crate::discovery::{FileKey, Target, TlsLibrary, TlsSymbols};
use crate::handoffs::Handoffs;
use crate::handover::Handover;
use crate::http::mute::Mute;
use crate::pipeline::Handed;
use crate::socket_hooks::SyscallHooks;
use crate::stats::{Counted, Stats};

/// The eBPF object built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tokentap-agent-ebpf"));

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(
        "this agent was built with AYA_BUILD_SKIP=1 and contains no eBPF object; rebuild with `cargo xtask build`"
    )]
    NoObject,
    // The cause is the source, said after this (`error_text`), not in it.
    #[error("loading eBPF failed (the agent needs {needs}, and Linux 5.17+ with BTF)", needs = crate::caps::needs())]
    Load(#[source] aya::EbpfError),
    #[error(
        "--handover-dir {dir}: pinning the map {map} there failed (the agent's user must be able to create files \
         there: the directory's owner and mode, a read-only mount)"
    )]
    Pin { dir: PathBuf, map: String, source: aya::pin::PinError },
    #[error("eBPF program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("eBPF map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("ring buffer size {0} must be a power of two and a multiple of the page size")]
    BadRingSize(u32),
    #[error(transparent)]
    Handover(#[from] crate::handover::HandoverError),
    #[error(transparent)]
    Return(#[from] crate::return_probes::ReturnProbeError),
    #[error("socket capture on the syscalls' tracepoints: {0}")]
    Tracefs(String),
}

/// One capture method as user space sees it: the eBPF programs it brings (all
/// loaded at start) and where in a discovered file each one attaches. How its
/// files are found is in `discovery` (one module per method); its kernel side
/// is one module of `agent-ebpf`; the `tls_library` its records name is its
/// `Source`. Adding a method: one kernel module, one discovery module, one
/// entry here.
pub struct CaptureMethod {
    pub name: &'static str,
    pub programs: &'static [&'static str],
    /// (program, file offset) pairs for one file; empty when the file is not
    /// this method's.
    pub points: fn(&TlsSymbols) -> Vec<(&'static str, u64)>,
}

fn each(pairs: &[(&'static str, Option<u64>)]) -> Vec<(&'static str, u64)> {
    pairs.iter().filter_map(|&(name, at)| at.map(|a| (name, a))).collect()
}

/// OpenSSL's probes, also for BoringSSL's `SSL_free`/`SSL_set_fd` when exported.
fn openssl_points(s: &TlsSymbols) -> Vec<(&'static str, u64)> {
    let boring = s.library == TlsLibrary::BoringSsl;
    let (w, r) = if boring { (None, None) } else { (s.ssl_write, s.ssl_read) };
    each(&[
        ("ssl_write", w),
        ("ssl_write_ret", w),
        ("ssl_read", r),
        ("ssl_read_ret", r),
        ("ssl_write_ex", s.ssl_write_ex.filter(|_| !boring)),
        ("ssl_write_ex_ret", s.ssl_write_ex.filter(|_| !boring)),
        ("ssl_read_ex", s.ssl_read_ex.filter(|_| !boring)),
        ("ssl_read_ex_ret", s.ssl_read_ex.filter(|_| !boring)),
        ("ssl_free", s.ssl_free),
        ("ssl_set_fd", s.ssl_set_fd),
    ])
}

/// BoringSSL: exported symbols, or found by analysis in a stripped binary.
/// Its `_ex` functions call `SSL_write`/`SSL_read`, so those two suffice.
fn boringssl_points(s: &TlsSymbols) -> Vec<(&'static str, u64)> {
    let (w, r, end) = match (s.library, s.boringssl) {
        (_, Some(b)) => (Some(b.ssl_write), Some(b.ssl_read), b.ssl_shutdown),
        (TlsLibrary::BoringSsl, None) => (s.ssl_write, s.ssl_read, None),
        _ => (None, None, None),
    };
    each(&[
        ("boringssl_write", w),
        ("boringssl_write_ret", w),
        ("boringssl_read", r),
        ("boringssl_read_ret", r),
        ("boringssl_shutdown", end),
    ])
}

/// Go: `Write` once on the way in when its prologue allows, `Read` at entry
/// and at its copy into the caller's buffer when found; else at entry and at
/// every return instruction (no uretprobes on Go stacks).
fn go_points(s: &TlsSymbols) -> Vec<(&'static str, u64)> {
    let Some(g) = &s.go else { return Vec::new() };
    let write = if g.write_once { "go_tls_write_once" } else { "go_tls_write" };
    let mut out = vec![(write, g.write), ("go_tls_read", g.read)];
    out.extend(g.read_copy.map(|o| ("go_tls_read_copy", o)));
    out.extend(g.write_rets.iter().map(|&o| ("go_tls_write_ret", o)));
    out.extend(g.read_rets.iter().map(|&o| ("go_tls_read_ret", o)));
    out.extend(g.close.map(|o| ("go_tls_close", o)));
    out
}

/// rustls: the send function's program by its argument shape (0.23's
/// `OutboundChunks` or an older `&[u8]`), one return probe, the receive probe.
fn rustls_points(s: &TlsSymbols) -> Vec<(&'static str, u64)> {
    let Some(r) = &s.rustls else { return Vec::new() };
    let send = if r.chunks { "rustls_send_chunks" } else { "rustls_send_slice" };
    let mut out: Vec<_> = r.send.iter().flat_map(|&o| [(send, o), ("rustls_send_ret", o)]).collect();
    out.extend(r.recv.iter().map(|&o| ("rustls_recv", o)));
    out
}

/// Java: the two functions of the Java agent's native library.
fn java_points(s: &TlsSymbols) -> Vec<(&'static str, u64)> {
    s.java.map_or_else(Vec::new, |j| vec![("java_data", j.data), ("java_close", j.close)])
}

/// The dynamic loader's rendezvous hook: libraries loaded after exec.
fn loader_points(s: &TlsSymbols) -> Vec<(&'static str, u64)> {
    each(&[("dl_debug_state", s.dl_debug_state)])
}

pub const METHODS: &[CaptureMethod] = &[
    CaptureMethod {
        name: "openssl",
        programs: &[
            "ssl_write",
            "ssl_write_ret",
            "ssl_read",
            "ssl_read_ret",
            "ssl_write_ex",
            "ssl_write_ex_ret",
            "ssl_read_ex",
            "ssl_read_ex_ret",
            "ssl_free",
            "ssl_set_fd",
        ],
        points: openssl_points,
    },
    CaptureMethod {
        name: "boringssl",
        programs: &[
            "boringssl_write",
            "boringssl_write_ret",
            "boringssl_read",
            "boringssl_read_ret",
            "boringssl_shutdown",
        ],
        points: boringssl_points,
    },
    CaptureMethod {
        name: "go_tls",
        programs: &[
            "go_tls_write",
            "go_tls_write_once",
            "go_tls_write_ret",
            "go_tls_read",
            "go_tls_read_copy",
            "go_tls_read_ret",
            "go_tls_close",
        ],
        points: go_points,
    },
    CaptureMethod {
        name: "rustls",
        programs: &["rustls_send_slice", "rustls_send_chunks", "rustls_send_ret", "rustls_recv"],
        points: rustls_points,
    },
    CaptureMethod { name: "java", programs: &["java_data", "java_close"], points: java_points },
    CaptureMethod { name: "loader", programs: &["dl_debug_state"], points: loader_points },
];

/// (program, raw tracepoint).
const TRACEPOINTS: &[(&str, &str)] =
    &[("sched_process_exec", "sched_process_exec"), ("sched_process_exit", "sched_process_exit")];

/// Every (program, file offset) to attach for a target.
pub fn attach_points(s: &TlsSymbols) -> Vec<(&'static str, u64)> {
    METHODS.iter().flat_map(|m| (m.points)(s)).collect()
}

pub struct Probes {
    ebpf: Ebpf,
    attached: HashMap<FileKey, PathBuf>,
    /// The return probes placed as `uprobe_multi` links (`return_probes`).
    returns: Option<crate::return_probes::MultiReturns>,
    /// What socket capture runs on (none: `--no-socket-capture`).
    pub socket_hooks: Option<SyscallHooks>,
    /// Client sockets found open at start and watched, processes whose
    /// sockets could not be listed, reads found blocked (`open_sockets`).
    pub at_start: crate::open_sockets::AtStart,
}

/// Maps user space reads (and the ones it writes).
pub struct Channels {
    pub events: RingBuf<MapData>,
    /// Where `events` is pinned (with `--handover-dir`), see `orphan_rings`.
    pub ring_pin: Option<crate::orphan_rings::OwnRing>,
    pub loss: LossReader,
    pub ignored: IgnoreMap,
    pub sockets: SocketMaps,
}

/// `SOCKETS` (read: a socket's id and byte counts) and `SOCK_VERDICTS`
/// (written: keep counting a TLS socket or not).
pub struct SocketMaps {
    sockets: aya::maps::HashMap<MapData, SockKey, SockState>,
    verdicts: aya::maps::HashMap<MapData, SockId, u32>,
}

impl SocketTable for SocketMaps {
    fn verdict(&mut self, sock: SockId, count: bool) {
        // Best effort: a full LRU map evicts its oldest entry; a socket without
        // a verdict stays counted, which costs a lookup, not a loss.
        let _ = self.verdicts.insert(sock, if count { VERDICT_COUNT } else { VERDICT_STOP }, 0);
    }

    fn totals(&mut self, tgid: u32, fd: i32, remove: bool) -> Option<(u64, Totals)> {
        let key = SockKey { tgid, fd };
        let s = self.sockets.get(&key, 0).ok()?;
        if remove {
            let _ = self.sockets.remove(&key);
        }
        Some((s.id, Totals { sent: s.sent, received: s.received }))
    }
}

/// `IGNORED_CONNS`: connections whose calls the kernel should stop copying;
/// `MUTED` and `H2_MUTED`: the response bodies it should not copy; with `--handover-dir`,
/// `CONN_STATES`: the decoding states agents hand on during an upgrade.
pub struct IgnoreMap {
    map: aya::maps::HashMap<MapData, SslKey, u64>,
    muted: aya::maps::HashMap<MapData, SslKey, MuteRange>,
    h2_muted: aya::maps::HashMap<MapData, H2Stream, u32>,
    handoff: Option<Handoffs>,
}

impl IgnoreMap {
    /// `base`: the stream base of the connection meant (see `ConnFilter::ignore`).
    pub fn ignore(&mut self, tgid: u32, conn: u64, base: u64) {
        // Best effort: a full LRU map evicts its oldest entry.
        let _ = self.map.insert(SslKey { tgid: tgid as u64, ssl: conn }, base, 0);
    }

    pub fn mute(&mut self, tgid: u32, conn: u64, what: Mute) {
        // Best effort: a mute lost is bytes copied, nothing more.
        let _ = match what {
            Mute::Range { from, to } => {
                self.muted.insert(SslKey { tgid: tgid as u64, ssl: conn }, MuteRange { from, to }, 0)
            }
            Mute::H2Stream { walk, stream } => {
                let key = H2Stream { tgid: tgid as u64, conn, base: walk, stream: stream as u64 };
                self.h2_muted.insert(key, 1, 0)
            }
        };
    }

    pub fn forget(&mut self, tgid: u32, conn: u64) {
        let _ = self.map.remove(&SslKey { tgid: tgid as u64, ssl: conn });
    }

    pub fn hand_off(&mut self, tgid: u32, conn: u64, state: &[u8]) -> bool {
        self.handoff.as_mut().is_some_and(|h| h.put(tgid, conn, state))
    }

    pub fn handed(&mut self, tgid: u32, conn: u64) -> Handed {
        self.handoff.as_mut().map_or(Handed::Never, |h| h.take(tgid, conn))
    }

    pub fn handover_pending(&mut self) -> bool {
        self.handoff.as_mut().is_some_and(|h| h.pending())
    }

    pub fn tidy(&mut self) {
        if let Some(h) = self.handoff.as_mut() {
            h.tidy();
        }
    }
}

pub struct LossReader {
    map: PerCpuArray<MapData, u64>,
    fill: PerCpuArray<MapData, u64>,
    ring_bytes: u32,
    misses: crate::program_misses::ProgramMisses,
}

impl LossReader {
    /// Copy the kernel's loss counters (summed over CPUs) into `stats`.
    pub fn counters(&mut self, stats: &Stats) {
        for c in LossCounter::ALL {
            let n = self.map.get(&(c as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
            Stats::set(c.counter(stats), n);
        }
        Stats::set(&stats.ring_buffer_size_bytes, self.ring_bytes as u64);
        self.misses.update(stats);
    }

    /// The counters, and the ring buffer's fill: its high-water mark since
    /// the last call, which starts a new interval (once a second).
    pub fn update(&mut self, stats: &Stats) {
        self.counters(stats);
        if let Ok(v) = self.fill.get(&0, 0) {
            Stats::set(&stats.ring_buffer_fill_bytes, v.iter().copied().max().unwrap_or(0));
            if let Ok(zero) = PerCpuValues::try_from(vec![0u64; v.len()]) {
                let _ = self.fill.set(0, zero, 0);
            }
        }
    }
}

impl Probes {
    /// Load the object into the kernel, load every program, attach the
    /// tracepoints, and hand out the maps user space reads.
    /// With `handover` (a directory on bpffs), the maps two agents share
    /// during an upgrade are pinned there (see `handover`).
    pub fn load(
        ring_buffer_bytes: u32,
        sockets: Option<SyscallHooks>,
        handover: Option<&std::path::Path>,
        return_probes: crate::return_probes::ReturnProbes,
    ) -> Result<(Self, Channels, Option<Handover>), ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let page = page_size();
        if !ring_buffer_bytes.is_power_of_two() || ring_buffer_bytes < page {
            return Err(ProbeError::BadRingSize(ring_buffer_bytes));
        }
        raise_memlock_limit();
        let me = crate::handover::me();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries("EVENTS", ring_buffer_bytes).override_global("AGENT_TGID", &me, true);
        // Task storage (`CALL_ARGS`, `RUSTLS_CALLS`: agent-ebpf/src/call_args.rs),
        // which aya creates and the programs use but has no Rust type for.
        loader.allow_unsupported_maps();
        if let Some(dir) = handover {
            crate::handover::prepare(dir)?;
            for name in crate::handover::PINNED {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| match (e, handover) {
            // Not the capabilities or the kernel: the directory.
            (aya::EbpfError::MapError(aya::maps::MapError::PinError { name, error }), Some(dir)) => {
                ProbeError::Pin { dir: dir.into(), map: name.unwrap_or_default(), source: error }
            }
            (e, _) => ProbeError::Load(e),
        })?;
        // Before any map is taken out of `ebpf`: they use them all.
        let returns =
            handover.is_some().then(|| crate::return_probes::load_for(&mut ebpf, EBPF_OBJECT, return_probes)).flatten();
        // Registered at once: from here on this agent's probes see the others'.
        let handover = handover.map(|dir| Handover::open(&mut ebpf, dir)).transpose()?;
        for m in METHODS {
            for &name in m.programs.iter().filter(|&&n| !returns.as_ref().is_some_and(|r| r.has(n))) {
                let p: &mut UProbe = ebpf
                    .program_mut(name)
                    .ok_or(ProbeError::MissingProgram(name))?
                    .try_into()
                    .map_err(|source| ProbeError::Program { name, source })?;
                p.load().map_err(|source| ProbeError::Program { name, source })?;
                log_verified(name, || p.info().ok());
            }
            tracing::debug!(method = m.name, programs = m.programs.len(), "capture method loaded");
        }
        for (name, tp) in TRACEPOINTS {
            let p: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(ProbeError::MissingProgram(name))?
                .try_into()
                .map_err(|source| ProbeError::Program { name, source })?;
            p.load().map_err(|source| ProbeError::Program { name, source })?;
            log_verified(name, || p.info().ok());
            p.attach(tp).map_err(|source| ProbeError::Program { name, source })?;
        }
        let socket_hooks = sockets.map(|want| crate::socket_hooks::attach(&mut ebpf, want)).transpose()?;
        // Once the socket programs run: see `open_sockets`.
        let at_start = match (&handover, socket_hooks) {
            (Some(_), Some(_)) => crate::open_sockets::adopt_open(&mut ebpf, me),
            _ => Default::default(),
        };
        let events = ebpf.take_map("EVENTS").ok_or(ProbeError::MissingMap("EVENTS"))?;
        let ring_pin = handover.as_ref().map(|h| h.pin_ring(&events)).transpose()?;
        let events = RingBuf::try_from(events).map_err(|source| ProbeError::Map { name: "EVENTS", source })?;
        let loss = ebpf.take_map("LOSS").ok_or(ProbeError::MissingMap("LOSS"))?;
        let loss = PerCpuArray::try_from(loss).map_err(|source| ProbeError::Map { name: "LOSS", source })?;
        let handoff = match &handover {
            Some(h) => Some(Handoffs::new(hash_map(&mut ebpf, "CONN_STATES")?, h.others())),
            None => None,
        };
        let ignored = IgnoreMap {
            map: hash_map(&mut ebpf, "IGNORED_CONNS")?,
            muted: hash_map(&mut ebpf, "MUTED")?,
            h2_muted: hash_map(&mut ebpf, "H2_MUTED")?,
            handoff,
        };
        let fill = ebpf.take_map("RING_FILL").ok_or(ProbeError::MissingMap("RING_FILL"))?;
        let fill = PerCpuArray::try_from(fill).map_err(|source| ProbeError::Map { name: "RING_FILL", source })?;
        // Every program is loaded by now (the socket hooks' too).
        let more = returns.as_ref().map(|r| r.program_fds()).unwrap_or_default();
        let misses = crate::program_misses::ProgramMisses::of(&ebpf, more);
        tracing::debug!(programs = misses.len(), "reading the kernel's skipped runs of");
        let loss = LossReader { map: loss, fill, ring_bytes: ring_buffer_bytes, misses };
        let sockets =
            SocketMaps { sockets: hash_map(&mut ebpf, "SOCKETS")?, verdicts: hash_map(&mut ebpf, "SOCK_VERDICTS")? };
        let channels = Channels { events, ring_pin, loss, ignored, sockets };
        let probes = Self { ebpf, attached: HashMap::new(), returns, socket_hooks, at_start };
        Ok((probes, channels, handover))
    }

    /// Whether the return probes are `uprobe_multi` links (`return_probes`).
    pub fn returns_multi(&self) -> bool {
        self.returns.is_some()
    }

    pub fn attached(&self) -> usize {
        self.attached.len()
    }

    /// Detach every program, those that copy what a client sends first
    /// (`*write*`, `*send*`): no new call starts while the rest detach, and a
    /// call whose request went out still has its response read, so the exit
    /// cuts as few calls as it can (`dropped_at_exit`). Dropping the object
    /// detaches the rest in no particular order.
    pub fn detach(mut self) {
        let is_egress = |n: &str| n.contains("write") || n.contains("send");
        if let Some(returns) = self.returns.as_mut() {
            returns.detach_programs(is_egress);
        }
        let egress: Vec<String> =
            self.ebpf.programs().map(|(name, _)| name.to_owned()).filter(|n| is_egress(n)).collect();
        for name in egress {
            if let Some(aya::programs::Program::UProbe(p)) = self.ebpf.program_mut(&name) {
                if let Err(e) = p.unload() {
                    tracing::debug!(program = name, error = %e, "unloading");
                }
            }
        }
    }

    /// Attach every probe `target` has symbols for. Returns false when it was
    /// attached before. All or nothing: on failure what was attached is detached
    /// again, so a retry can't attach a probe twice (which would double count).
    pub fn attach(&mut self, target: &Target) -> Result<bool, ProbeError> {
        if self.attached.contains_key(&target.key) {
            return Ok(false);
        }
        // Through our own descriptor: the path it was found by may die with its process.
        let path = PathBuf::from(format!("/proc/self/fd/{}", target.file.as_raw_fd()));
        let mut links = Vec::new();
        let mut result = Ok(());
        for (name, offset) in attach_points(&target.symbols) {
            if let Some(returns) = self.returns.as_mut().filter(|r| r.has(name)) {
                if let Err(e) = returns.attach(target.key, name, &path, offset) {
                    result = Err(ProbeError::Return(e));
                    break;
                }
                continue;
            }
            match self.uprobe(name).and_then(|p| {
                let ret = matches!(p.kind(), aya::programs::ProbeKind::Return);
                let link = p
                    .attach(offset, &path, UProbeScope::AllProcesses)
                    .map_err(|source| ProbeError::Program { name, source })?;
                // The kernel names the file by our descriptor: say which it is.
                let (_, inode, mtime_ns) = target.key;
                tracing::debug!(path = %target.path.display(), inode, mtime_ns, offset, ret, program = name, "uprobe attached");
                Ok(link)
            }) {
                Ok(link) => links.push((name, link)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result {
            if let Some(returns) = self.returns.as_mut() {
                returns.detach_file(&target.key);
            }
            for (name, link) in links {
                if let Ok(p) = self.uprobe(name) {
                    let _ = p.detach(link);
                }
            }
            return Err(e);
        }
        self.attached.insert(target.key, target.path.clone());
        Ok(true)
    }

    fn uprobe(&mut self, name: &'static str) -> Result<&mut UProbe, ProbeError> {
        self.ebpf
            .program_mut(name)
            .ok_or(ProbeError::MissingProgram(name))?
            .try_into()
            .map_err(|source| ProbeError::Program { name, source })
    }
}

/// A hash map of the object, taken out for user space.
fn hash_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<aya::maps::HashMap<MapData, K, V>, ProbeError> {
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    aya::maps::HashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// How much of the verifier's budget (1M instructions a program) a program
/// took: the margin a kernel's stricter verifier eats into first.
/// Asked of the kernel only when debug logging is on here (a syscall a program).
pub(crate) fn log_verified(name: &str, info: impl FnOnce() -> Option<aya::programs::ProgramInfo>) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let verified = info().and_then(|i| i.verified_instruction_count());
    tracing::debug!(program = name, verified_insns = verified, "eBPF program loaded");
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u32
    } else {
        4096
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

#[cfg(test)]
#[path = "probes_object_tests.rs"]
mod object_tests;
