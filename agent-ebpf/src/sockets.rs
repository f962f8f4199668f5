//! Plaintext HTTP (self-hosted models, sidecars that terminate TLS) at the socket
//! syscalls.
//!
//! Why these hooks: raw `sys_enter`/`sys_exit` tracepoints see every
//! `read`/`write`/`readv`/`writev`/`sendto`/`recvfrom`/`sendmsg`/`recvmsg`/
//! `close`, whatever library made the call, and need no tracefs mount. Only
//! client sockets `connect`ed to AF_INET/AF_INET6 while we run are watched, and
//! only in processes that have one ([`SOCK_PROCS`]), so a write or read on any
//! other fd costs a map lookup. The first bytes a client sends decide, here,
//! whether a connection is HTTP at all, so TLS and other protocols cost one check.
//!
//! What they fall back to: sockets connected before the agent started are not
//! seen (user space may not load these programs at all). A vectored call with
//! more than `MAX_IOV` buffers gives its connection up (counted, and user space
//! is told it closed) rather than leave a hole in the stream.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::{map, raw_tracepoint},
    maps::{HashMap, LruHashMap},
    programs::RawTracePointContext,
};
use tokentap_agent_common::{
    EventKind, LossCounter, SockArgs, SockCall, SockKey, Source, SslKey, DIR_EGRESS, DIR_INGRESS, MAX_IOV, SOCKET_CONN,
    SOCK_HTTP, SOCK_NEW, SOCK_OTHER,
};

use crate::chunks::{emit_data, ignored, Emit, IGNORED_CONNS};
use crate::ring::{count_loss, emit_control_for};

/// Client sockets opened with `connect` while we watch, and what their first
/// bytes said ([`SOCK_NEW`], [`SOCK_HTTP`], [`SOCK_OTHER`]).
#[map]
static SOCKETS: LruHashMap<SockKey, u32> = LruHashMap::with_max_entries(65536, 0);

/// Processes with at least one watched socket: the cheap first test on every
/// read/write, so a process without client sockets (a build, a database doing
/// file I/O) pays one lookup per call. Cleared at exit.
#[map]
pub(crate) static SOCK_PROCS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// In-flight socket syscalls on watched sockets, by thread.
#[map]
static SOCK_CALLS: HashMap<u64, SockArgs> = HashMap::with_max_entries(16384, 0);

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

/// The syscall's first three arguments (rdi, rsi, rdx), read one by one: the
/// whole `pt_regs` would cost a 168-byte copy per call.
fn sys_arg(ctx: &RawTracePointContext, n: u32) -> u64 {
    let p: *const pt_regs = ctx.arg(0);
    // SAFETY: only the field's address is computed; the kernel read checks it.
    let field = unsafe {
        match n {
            0 => core::ptr::addr_of!((*p).rdi),
            1 => core::ptr::addr_of!((*p).rsi),
            _ => core::ptr::addr_of!((*p).rdx),
        }
    };
    unsafe { bpf_probe_read_kernel(field) }.unwrap_or(0)
}

fn sock_key(pid_tgid: u64, fd: u64) -> SockKey {
    SockKey { tgid: (pid_tgid >> 32) as u32, fd: fd as i32 }
}

/// The socket is gone or reused: forget it and tell user space.
fn sock_forget(pid_tgid: u64, fd: i32) {
    let key = SockKey { tgid: (pid_tgid >> 32) as u32, fd };
    if unsafe { SOCKETS.get(key) }.is_some() {
        let _ = SOCKETS.remove(key);
        let conn = SOCKET_CONN | fd as u32 as u64;
        let _ = IGNORED_CONNS.remove(SslKey { tgid: pid_tgid >> 32, ssl: conn });
        emit_control_for(pid_tgid, EventKind::ConnClosed, conn);
    }
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
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
    if call != SockCall::Connect && unsafe { SOCK_PROCS.get((pid_tgid >> 32) as u32) }.is_none() {
        return 0;
    }
    let fd = sys_arg(&ctx, 0);
    if id == SYS_CLOSE {
        sock_forget(pid_tgid, fd as i32);
        return 0;
    }
    let (mut buf, mut len) = (sys_arg(&ctx, 1), sys_arg(&ctx, 2));
    if call == SockCall::Connect {
        let family: u16 = unsafe { bpf_probe_read_user(buf as *const u16) }.unwrap_or(0);
        if family != AF_INET && family != AF_INET6 {
            return 0;
        }
    } else {
        match unsafe { SOCKETS.get(sock_key(pid_tgid, fd)) } {
            Some(&SOCK_OTHER) | None => return 0,
            Some(_) => {}
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
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = (unsafe { SOCK_CALLS.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = SOCK_CALLS.remove(pid_tgid);
    let ret: i64 = ctx.arg(1);
    if args.call == SockCall::Connect as u32 {
        if ret == 0 || ret == -EINPROGRESS {
            sock_forget(pid_tgid, args.fd);
            let _ = SOCKETS.insert(SockKey { tgid: (pid_tgid >> 32) as u32, fd: args.fd }, SOCK_NEW, 0);
            let _ = SOCK_PROCS.insert((pid_tgid >> 32) as u32, 1, 0);
        }
        return 0;
    }
    if ret <= 0 {
        return 0;
    }
    let key = SockKey { tgid: (pid_tgid >> 32) as u32, fd: args.fd };
    let Some(state) = (unsafe { SOCKETS.get(key) }).copied() else {
        return 0;
    };
    let vector = args.call == SockCall::WriteV as u32 || args.call == SockCall::ReadV as u32;
    let egress = args.call == SockCall::Write as u32 || args.call == SockCall::WriteV as u32;
    if state == SOCK_NEW {
        // A client speaks first; an HTTP client's first bytes are a method.
        let first = if vector { unsafe { bpf_probe_read_user(args.buf as *const u64) }.unwrap_or(0) } else { args.buf };
        let http = egress && unsafe { bpf_probe_read_user(first as *const [u8; 8]) }.is_ok_and(|b| is_http_start(&b));
        let _ = SOCKETS.insert(key, if http { SOCK_HTTP } else { SOCK_OTHER }, 0);
        if !http {
            count_loss(LossCounter::SocketsNotHttp, 1);
            return 0;
        }
    }
    let conn = SOCKET_CONN | args.fd as u32 as u64;
    if ignored(pid_tgid, conn) {
        return 0;
    }
    let direction = if egress { DIR_EGRESS } else { DIR_INGRESS };
    let mut e = Emit { conn, buf: args.buf, fd: args.fd, source: Source::Socket };
    if !vector {
        if ret as u64 <= args.len {
            emit_data(pid_tgid, &e, direction, ret as u64);
        }
        return 0;
    }
    // Each iovec is copied as its own call, in order.
    let mut left = ret as u64;
    let mut i = 0u32;
    while i < MAX_IOV && (i as u64) < args.len && left > 0 {
        let iov = args.buf + 16 * i as u64;
        let base: u64 = unsafe { bpf_probe_read_user(iov as *const u64) }.unwrap_or(0);
        let len: u64 = unsafe { bpf_probe_read_user((iov + 8) as *const u64) }.unwrap_or(0);
        let n = if len < left { len } else { left };
        if n > 0 {
            e.buf = base;
            emit_data(pid_tgid, &e, direction, n);
        }
        left -= n;
        i += 1;
    }
    if left > 0 {
        // Bytes we could not copy: give the connection up rather than leave a hole.
        count_loss(LossCounter::IovOverflow, 1);
        let _ = SOCKETS.insert(key, SOCK_OTHER, 0);
        emit_control_for(pid_tgid, EventKind::ConnClosed, conn);
    }
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
