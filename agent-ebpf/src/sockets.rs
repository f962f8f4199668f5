//! Client sockets at the syscalls: plaintext HTTP (self-hosted models,
//! sidecars that terminate TLS) is copied, and every TLS connection is named
//! and counted, so a connection whose plaintext no TLS probe reads is still
//! accounted for.
//!
//! Why these hooks: the raw `sys_enter`/`sys_exit` tracepoints (the
//! default) see every `read`/`write`/`readv`/`writev`/`sendto`/`recvfrom`/
//! `sendmsg`/`recvmsg`/`close`/`connect`, whatever library made the call, and
//! need no tracefs; but they run a program on every syscall of the host
//! (~45 ns each). With `--syscall-hooks tracepoints` the same code runs
//! behind the syscalls' own tracepoints (`syscalls/sys_enter_read`, ...):
//! only those ten calls run a program, each 20-30 ns dearer, every other
//! syscall ~10 ns (user space mounts tracefs for their ids, and falls back to
//! the raw pair when it cannot: agent/src/socket_hooks.rs).
//! Only client sockets `connect`ed to AF_INET/AF_INET6 while we run are
//! watched, and only in processes that have one. The hooks run on every read,
//! write and close of the host, so what most of them see costs array reads,
//! not a hash lookup: a process's slot in `PROC_SLOTS` says whether it may
//! have watched sockets, its slot in `SLOT_FDS` which fds may be one
//! ([`crate::watched`]), a thread's slot in [`CALL_SLOTS`] whether it may
//! have a call in flight ([`SOCK_CALLS`]).
//! The first bytes a client sends decide, here, what a connection is:
//! - an HTTP request or the HTTP/2 preface: copied to user space, and its bytes
//!   counted;
//! - a TLS handshake record: the first write (the ClientHello, with the server
//!   name in clear) goes to user space ([`crate::hello`]); from then on only the
//!   syscalls' results are added up in the socket's [`SockState`], nothing is
//!   copied (the TLS probes read the plaintext, if any does). User space
//!   answers per socket in [`SOCK_VERDICTS`]: keep counting (an LLM API host)
//!   or stop (anything else), after which the socket costs one lookup per call;
//! - anything else (databases, DNS): one lookup per call from then on.
//!
//! A socket's totals reach user space when it closes or reconnects (a
//! `SockClosed` record); user space reads them from [`SOCKETS`] while it is
//! open (long-lived connections) and when its process exits (exit closes
//! files without `close(2)`).
//!
//! What they fall back to (user space may not load these programs at all):
//! sockets connected before the agent started are not seen, but with
//! `--handover-dir`, where user space adopts the client sockets it finds open
//! at start (`crate::adopted`), so that the keep-alive connections an
//! upgrade's old agent hands over are copied by the new one. A vectored call with
//! more than `MAX_IOV` buffers gives its plaintext connection up (counted, and
//! user space is told it closed) rather than leave a hole in the stream; user
//! space then reads the bytes it moved so far from [`SOCKETS`].
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, generated::bpf_loop,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use tokentap_agent_common::{
    EventKind, LossCounter, SockArgs, SockCall, SockId, SockKey, SockState, Source, SslKey, DIR_EGRESS, DIR_INGRESS,
    MAX_IOV, SCRATCH_SLOTS, SOCKET_CONN, SOCK_ADOPTED, SOCK_CALL_FOUND, SOCK_HTTP, SOCK_NEW, SOCK_OTHER, SOCK_TLS,
    SOCK_TLS_LLM, VERDICT_STOP,
};

use crate::adopted::{adopted, found_exits, is_tls_record};
use crate::chunks::{emit_data, forget_conn, ignored, nested, Emit};
use crate::handover::{owns, tells_end, Owned};
use crate::hello::emit_hello;
use crate::ring::{count_loss, emit_control_for, emit_sock_closed};
use crate::slots::{add, slot_empty, SLOTS};
use crate::syscall_args::Syscall;
use crate::watched::{fd_watched, may_watch, watch_fd};

/// Client sockets opened with `connect` while we watch: what their first
/// bytes said (`SOCK_*`) and the bytes they moved. User space reads entries
/// (never writes them).
#[map]
pub(crate) static SOCKETS: LruHashMap<SockKey, SockState> = LruHashMap::with_max_entries(65536, 0);

/// User space's verdict on a TLS socket ([`tokentap_agent_common::VERDICT_COUNT`]
/// or [`VERDICT_STOP`]), keyed by the socket's whole identity so that a
/// verdict arriving after the fd was reused never applies to the new socket.
/// Consumed by the socket's next call; LRU, so one never consumed ages out.
#[map]
static SOCK_VERDICTS: LruHashMap<SockId, u32> = LruHashMap::with_max_entries(8192, 0);

/// In-flight socket syscalls on watched sockets, by thread (and, with
/// `--handover-dir`, the reads user space found blocked on adopted sockets at
/// start: `crate::adopted`).
#[map]
pub(crate) static SOCK_CALLS: HashMap<u64, SockArgs> = HashMap::with_max_entries(16384, 0);

/// Slots of threads (thread id modulo the size): how many calls of the
/// slot's threads are in [`SOCK_CALLS`], never fewer (see [`add`]).
/// The exit hook, on every syscall of the host (every read and write with
/// the syscalls' tracepoints), reads its slot and looks in `SOCK_CALLS` only when it
/// is not zero. A count left high (an insert that replaced an entry) costs
/// its slot that lookup again, never a call.
#[map]
pub(crate) static CALL_SLOTS: Array<u64> = Array::with_max_entries(SLOTS, 0);

/// Take the thread's call in flight, if any: at its syscall's exit, and at
/// the thread's exit (a call whose syscall exit never ran).
pub(crate) fn take_call(pid_tgid: u64) -> Option<SockArgs> {
    if slot_empty(&CALL_SLOTS, pid_tgid as u32) {
        return None;
    }
    let args = unsafe { SOCK_CALLS.get(pid_tgid) }.copied()?;
    if SOCK_CALLS.remove(pid_tgid).is_ok() {
        add(&CALL_SLOTS, pid_tgid as u32, u64::MAX);
    }
    Some(args)
}

const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_CLOSE: u64 = 3;
const SYS_READV: u64 = 19;
const SYS_WRITEV: u64 = 20;
const SYS_CONNECT: u64 = 42;
const SYS_SENDTO: u64 = 44;
const SYS_RECVFROM: u64 = 45;
const SYS_SENDMSG: u64 = 46;
const SYS_RECVMSG: u64 = 47;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;

fn sock_key(pid_tgid: u64, fd: u64) -> SockKey {
    SockKey { tgid: (pid_tgid >> 32) as u32, fd: fd as i32 }
}

/// The socket is gone or reused: forget it and tell user space what it
/// moved (sockets never copied nor counted need no word).
fn sock_forget(pid_tgid: u64, fd: i32) {
    let key = SockKey { tgid: (pid_tgid >> 32) as u32, fd };
    if let Some(s) = unsafe { SOCKETS.get(key) }.copied() {
        let _ = SOCKETS.remove(key);
        let conn = SslKey { tgid: pid_tgid >> 32, ssl: SOCKET_CONN | fd as u32 as u64 };
        // Said by one agent (two overlap during an upgrade), asked before
        // the connection's entry goes.
        let tell = matches!(s.state, SOCK_HTTP | SOCK_TLS | SOCK_TLS_LLM) && tells_end(conn);
        forget_conn(conn);
        if tell {
            emit_sock_closed(pid_tgid, fd, &s);
        }
    }
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    enter(&ctx)
}

/// Attached to `syscalls/sys_enter_<name>` of each syscall `enter` looks at
/// but `close` ([`sock_close`]).
#[tracepoint]
pub fn sock_enter(ctx: TracePointContext) -> i32 {
    enter(&ctx)
}

/// Attached to `syscalls/sys_enter_close`, whose record holds one argument:
/// the kernel refuses a program that may read past a record's end, and
/// `sock_enter` reads three.
#[tracepoint]
pub fn sock_close(ctx: TracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if may_watch(pid_tgid) {
        let fd = ctx.arg(0);
        if fd_watched(pid_tgid, fd) {
            sock_forget(pid_tgid, fd as i32);
        }
    }
    0
}

#[inline(always)]
fn enter(ctx: &impl Syscall) -> i32 {
    let id = ctx.nr();
    let (call, is_msg) = match id {
        SYS_WRITE | SYS_SENDTO => (SockCall::Write, false),
        SYS_READ | SYS_RECVFROM => (SockCall::Read, false),
        SYS_WRITEV => (SockCall::WriteV, false),
        SYS_READV => (SockCall::ReadV, false),
        SYS_SENDMSG => (SockCall::WriteV, true),
        SYS_RECVMSG => (SockCall::ReadV, true),
        SYS_CONNECT => (SockCall::Connect, false),
        SYS_CLOSE => (SockCall::Read, false),
        _ => return 0,
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let connect = call == SockCall::Connect;
    if !connect && !may_watch(pid_tgid) {
        return 0;
    }
    let fd = ctx.arg(0);
    if !connect && !fd_watched(pid_tgid, fd) {
        return 0;
    }
    if id == SYS_CLOSE {
        sock_forget(pid_tgid, fd as i32);
        return 0;
    }
    let (mut buf, mut len) = (ctx.arg(1), ctx.arg(2));
    // Whether the call's bytes may be copied: not a connect's, nor a TLS
    // socket's (its plaintext is the TLS probes' call, begun before it).
    let mut copied = false;
    if call == SockCall::Connect {
        let family: u16 = unsafe { bpf_probe_read_user(buf as *const u16) }.unwrap_or(0);
        if family != AF_INET && family != AF_INET6 {
            return 0;
        }
    } else {
        match unsafe { SOCKETS.get(sock_key(pid_tgid, fd)) } {
            Some(s) if s.state != SOCK_OTHER => copied = s.state != SOCK_TLS && s.state != SOCK_TLS_LLM,
            _ => return 0,
        }
        if is_msg {
            // struct msghdr: msg_iov at +16, msg_iovlen at +24.
            let msg = buf;
            buf = unsafe { bpf_probe_read_user((msg + 16) as *const u64) }.unwrap_or(0);
            len = unsafe { bpf_probe_read_user((msg + 24) as *const u64) }.unwrap_or(0);
        }
    }
    let args = SockArgs { buf, len, fd: fd as i32, call: call as u32 };
    if SOCK_CALLS.insert(pid_tgid, args, 0).is_err() {
        count_loss(LossCounter::ArgsMapFull, 1);
    } else {
        add(&CALL_SLOTS, pid_tgid as u32, 1);
        crate::handover::call_begins(pid_tgid, copied);
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(mut args) = take_call(pid_tgid) else {
        return 0;
    };
    if args.call & SOCK_CALL_FOUND != 0 {
        // The syscall's number and first argument (the fd) are in the
        // task's registers, the raw tracepoint's first argument.
        let regs: *const pt_regs = ctx.arg(0);
        // SAFETY: kernel memory read through the helper, which faults safely.
        let nr = unsafe { bpf_probe_read_kernel(core::ptr::addr_of!((*regs).orig_rax)) }.unwrap_or(u64::MAX);
        let fd = unsafe { bpf_probe_read_kernel(core::ptr::addr_of!((*regs).rdi)) }.unwrap_or(u64::MAX);
        let Some(found) = found_exits(args, nr, Some(fd)) else {
            return 0;
        };
        args = found;
    }
    exit(pid_tgid, args, ctx.arg(1))
}

/// Attached to `syscalls/sys_exit_<name>` of each syscall `enter` may leave a
/// call of (not `close`). `long ret` at 16 (the events' format files).
#[tracepoint]
pub fn sock_exit(ctx: TracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(mut args) = take_call(pid_tgid) else {
        return 0;
    };
    if args.call & SOCK_CALL_FOUND != 0 {
        // `int __syscall_nr` at 8; the record has no arguments, so no fd.
        // SAFETY: as `ret` below.
        let nr = unsafe { *(ctx.as_ptr() as *const u8).add(8).cast::<i32>() };
        let Some(found) = found_exits(args, nr as u64, None) else {
            return 0;
        };
        args = found;
    }
    // SAFETY: a field of the tracepoint's record; the verifier checks the offset.
    let ret = unsafe { *(ctx.as_ptr() as *const u8).add(16).cast::<i64>() };
    exit(pid_tgid, args, ret)
}

/// A watched call returned `ret`.
#[inline(always)]
fn exit(pid_tgid: u64, args: SockArgs, ret: i64) -> i32 {
    if args.call == SockCall::Connect as u32 {
        if ret == 0 || ret == -EINPROGRESS {
            connected(pid_tgid, args.fd);
        }
        return 0;
    }
    if ret <= 0 {
        return 0;
    }
    let key = SockKey { tgid: (pid_tgid >> 32) as u32, fd: args.fd };
    let Some(sp) = SOCKETS.get_ptr_mut(key) else {
        return 0;
    };
    // SAFETY: a live map value (programs on other CPUs may update it too: the
    // state is one aligned word; see the counters below).
    let s = unsafe { &mut *sp };
    let vector = args.call == SockCall::WriteV as u32 || args.call == SockCall::ReadV as u32;
    let egress = args.call == SockCall::Write as u32 || args.call == SockCall::WriteV as u32;
    if s.state == SOCK_NEW || s.state == SOCK_ADOPTED {
        // A client speaks first; an HTTP client's first bytes are a method, a
        // TLS client's a handshake record. A socket adopted midway changes
        // agents at a request's start.
        let (first, first_len) = if vector {
            let base = unsafe { bpf_probe_read_user(args.buf as *const u64) }.unwrap_or(0);
            let len = unsafe { bpf_probe_read_user((args.buf + 8) as *const u64) }.unwrap_or(0);
            (base, if len < ret as u64 { len } else { ret as u64 })
        } else {
            (args.buf, ret as u64)
        };
        let head = unsafe { bpf_probe_read_user(first as *const [u8; 8]) };
        if egress && head.is_ok_and(|b| is_http_start(&b)) {
            s.state = SOCK_HTTP;
        } else if s.state == SOCK_ADOPTED && !(egress && head.is_ok_and(|b| is_tls_start(&b))) {
            // TLS records (a connection greeted before the agent started)
            // are never copied: given up at once, not looked up call after call.
            s.state = if first_len >= 5 && head.is_ok_and(|b| is_tls_record(&b)) {
                SOCK_OTHER
            } else {
                adopted(pid_tgid, args.fd, !egress && head.is_ok_and(|b| b[..7] == *b"HTTP/1."))
            };
            if s.state != SOCK_HTTP {
                return 0;
            }
        } else if egress && head.is_ok_and(|b| is_tls_start(&b)) {
            s.state = SOCK_TLS;
            count_loss(LossCounter::SocketsNotHttp, 1);
            count_loss(LossCounter::SocketsTls, 1);
            let key = SslKey { tgid: pid_tgid >> 32, ssl: SOCKET_CONN | args.fd as u32 as u64 };
            if owns(key, DIR_INGRESS, 0, true) != Owned::No {
                emit_hello(pid_tgid, args.fd, s.id, first, first_len);
            }
        } else {
            s.state = SOCK_OTHER;
            count_loss(LossCounter::SocketsNotHttp, 1);
            return 0;
        }
    } else if s.state == SOCK_TLS {
        let verdict = SockId { tgid: key.tgid, fd: key.fd, id: s.id };
        if let Some(v) = unsafe { SOCK_VERDICTS.get(verdict) }.copied() {
            let _ = SOCK_VERDICTS.remove(verdict);
            if v == VERDICT_STOP {
                s.state = SOCK_OTHER;
                return 0;
            }
            s.state = SOCK_TLS_LLM;
        }
    } else if s.state == SOCK_OTHER {
        // A call that began before the socket was given up.
        return 0;
    }
    // A plain add: core has no atomics for this target. Each direction has its
    // own counter, and a stream socket is written by one thread at a time (and
    // read by one: interleaved calls would garble the stream), so two CPUs
    // adding to one counter at once is a program's bug, not a pattern.
    if egress {
        s.sent += ret as u64;
    } else {
        s.received += ret as u64;
    }
    if s.state != SOCK_HTTP {
        // TLS: counted, never copied.
        return 0;
    }
    let conn = SOCKET_CONN | args.fd as u32 as u64;
    if ignored(pid_tgid, conn) {
        return 0;
    }
    let direction = if egress { DIR_EGRESS } else { DIR_INGRESS };
    let e = Emit { conn, buf: args.buf, fd: args.fd, source: Source::Socket };
    if !vector {
        if ret as u64 <= args.len {
            emit_data(pid_tgid, &e, direction, ret as u64);
        }
        return 0;
    }
    // Each iovec is copied as its own call, in order; `bpf_loop` has the
    // verifier check the copy once, not once per iovec. The walk's state is
    // in a per-CPU slot, not on the stack: the copy below it is deep. `left`:
    // bytes of the result not placed in an iovec. With every scratch slot
    // busy nothing is copied, as for a plain call: counted, no give-up.
    let mut left = 0;
    let ran = nested(|slot| {
        let Some(w) = IOV_WALKS.get_ptr_mut(slot) else {
            return;
        };
        // SAFETY: this CPU's walk for this nesting slot.
        unsafe { *w = IovCtx { pid_tgid, e, iov: args.buf, count: args.len, left: ret as u64, direction, _pad: 0 } };
        let mut ctx = slot as u64;
        unsafe { bpf_loop(MAX_IOV, copy_iov as *mut core::ffi::c_void, (&mut ctx as *mut u64).cast(), 0) };
        // SAFETY: as above.
        left = unsafe { (*w).left };
    });
    if !ran {
        count_loss(LossCounter::ScratchBusy, 1);
        crate::chunks::mark_gap(SslKey { tgid: pid_tgid >> 32, ssl: conn });
    }
    if left > 0 {
        // Bytes we could not copy: give the connection up rather than leave a hole.
        count_loss(LossCounter::IovOverflow, 1);
        s.state = SOCK_OTHER;
        emit_control_for(pid_tgid, EventKind::ConnClosed, conn);
    }
    0
}

/// A client socket connected: watched from now on. A function of its own, so
/// that its locals are not in the exit hooks' frames, which the copy path's
/// frames stack on (the verifier allows 512 bytes in all).
#[inline(never)]
fn connected(pid_tgid: u64, fd: i32) {
    sock_forget(pid_tgid, fd);
    let tgid = (pid_tgid >> 32) as u32;
    // The fd's count first: a close on another thread between the two would
    // otherwise pass by the new entry and leave it for the fd's next file.
    watch_fd(tgid, fd);
    let id = unsafe { bpf_ktime_get_ns() };
    let fresh = SockState { id, sent: 0, received: 0, state: SOCK_NEW, _pad: 0 };
    let _ = SOCKETS.insert(SockKey { tgid, fd }, fresh, 0);
}

/// A vector call's iovecs, for [`copy_iov`].
#[repr(C)]
#[derive(Clone, Copy)]
struct IovCtx {
    pid_tgid: u64,
    e: Emit,
    iov: u64,
    count: u64,
    /// Bytes of the call's result not yet placed in an iovec.
    left: u64,
    direction: u32,
    _pad: u32,
}

/// One vectored call's walk per nesting slot (as the chunk scratch).
#[map]
static IOV_WALKS: PerCpuArray<IovCtx> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// `bpf_loop` callback: copy iovec `i`; returns 1 when none is left.
#[inline(never)]
extern "C" fn copy_iov(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the nesting slot on the caller's stack.
    let slot = unsafe { *(ctx as *const u64) } as u32;
    let Some(c) = IOV_WALKS.get_ptr_mut(slot) else {
        return 1;
    };
    // SAFETY: this CPU's walk for this nesting slot.
    let c = unsafe { &mut *c };
    if i >= c.count || c.left == 0 {
        return 1;
    }
    let iov = c.iov + 16 * i;
    let base: u64 = unsafe { bpf_probe_read_user(iov as *const u64) }.unwrap_or(0);
    let len: u64 = unsafe { bpf_probe_read_user((iov + 8) as *const u64) }.unwrap_or(0);
    let n = if len < c.left { len } else { c.left };
    if n > 0 {
        emit_data(c.pid_tgid, &Emit { buf: base, ..c.e }, c.direction, n);
    }
    c.left -= n;
    0
}

/// `(value, mask)` matching the first `s.len()` bytes of a little-endian u64.
const fn prefix(s: &[u8]) -> (u64, u64) {
    let mut v = 0u64;
    let mut i = 0;
    while i < s.len() {
        v |= (s[i] as u64) << (8 * i);
        i += 1;
    }
    let mask = if s.len() >= 8 { u64::MAX } else { (1u64 << (8 * s.len())) - 1 };
    (v, mask)
}

const HTTP_STARTS: [(u64, u64); 8] = [
    prefix(b"GET "),
    prefix(b"POST "),
    prefix(b"PUT "),
    prefix(b"PATCH "),
    prefix(b"DELETE "),
    prefix(b"HEAD "),
    prefix(b"OPTIONS "),
    prefix(b"PRI * HT"),
];

/// A TLS handshake record (content type 22, version 3.x): a ClientHello.
#[inline(always)]
fn is_tls_start(b: &[u8; 8]) -> bool {
    b[0] == 0x16 && b[1] == 3 && b[2] <= 4
}

/// An HTTP/1.x request line or the HTTP/2 prior-knowledge preface.
#[inline(always)]
fn is_http_start(b: &[u8; 8]) -> bool {
    let v = u64::from_le_bytes(*b);
    let mut i = 0;
    while i < HTTP_STARTS.len() {
        let (p, m) = HTTP_STARTS[i];
        if v & m == p {
            return true;
        }
        i += 1;
    }
    false
}
