//! Go programs carry their own TLS (`crypto/tls`), which no OpenSSL probe sees.
//!
//! Why these hooks: Go's return addresses cannot be hooked (uretprobes): Go
//! moves goroutine stacks, which breaks the return-address trampoline. A probe
//! on a `RET` is a single-step (~16 µs in a VM), so both directions are copied
//! at a point inside the function the kernel emulates instead, where user
//! space finds one (discovery/go.rs):
//! - `Write` on the way in (`go_tls_write_once`), at the prologue's
//!   stack-check `jbe`, when the flags say the jump to grow the stack is not
//!   taken (taken, the function restarts and passes the probe again): Write
//!   sends all of its buffer or fails the connection, so its bytes are final.
//! - `Read` at its one call of `runtime.memmove` (`go_tls_read_copy`), which
//!   copies the record's plaintext into the caller's buffer: the source and
//!   the count are the call's arguments. The entry probe (`go_tls_read`) notes
//!   which connection the goroutine reads.
//!
//! Where no such point is found, the function is probed at entry and at each
//! of its `RET`s. In-flight calls are keyed by goroutine, not thread, since a
//! goroutine may move between threads. `(*Conn).Close` ends a connection.
//!
//! Why the calls in flight are shared in an upgrade ([`GO_CALLS`] is pinned
//! with `--handover-dir`): Go's HTTP client keeps a `Read` pending on every
//! idle keep-alive connection, begun when the last response ended. Across an
//! upgrade that read began under the old agent, before the new one's probes
//! were attached, and returns with the next response, after the old agent
//! left: with a map of its own the new agent found no call and that response
//! was lost. Each agent marks the calls its copies took ([`CallArgs::taken_by`]),
//! so each agent uses a call once and either may use one the other saw begin;
//! which of them copies it is the ownership rule's, as for every call.
//!
//! What they fall back to: the socket fd is read through the `net.Conn` behind
//! the `*tls.Conn`; a conn that is not a `*net.TCPConn` gives nonsense, caught by
//! a range check, and the fd is then -1. Each goroutine that made a call keeps
//! an entry (its call in flight, or its last one, taken), which ages out of
//! the LRU map once the goroutine or its process is gone. A copy that finds no
//! call (begun before the probes attached, or its entry evicted) is counted
//! (`GoCallsUnmatched`).
//!
//! Register ABI (Go >= 1.17, amd64): receiver and arguments in RAX, RBX, RCX,
//! RDI, …; results in RAX, RBX, …; the current goroutine `g` in R14.
//! `func (c *Conn) Write(b []byte) (int, error)`: RAX = c, RBX = b.ptr, RCX = b.len.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use tokentap_agent_common::{
    CallArgs, CallKind, EventKind, GoCallKey, LossCounter, Source, SslKey, DIR_EGRESS, DIR_INGRESS, TAKEN_BY_TWO,
};

use crate::chunks::{emit_data, forget_conn, ignored, Emit};
use crate::ring::{count_loss, emit_control};

/// Go TLS calls by goroutine: the call in flight, or the goroutine's last one,
/// marked taken by the agents whose copies used it. LRU: a goroutine that
/// ends (or dies inside a call) must not leak its entry. Pinned with
/// `--handover-dir` (see the module's prose).
#[map]
static GO_CALLS: LruHashMap<GoCallKey, CallArgs> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn regs(ctx: &ProbeContext) -> Option<&pt_regs> {
    // SAFETY: a uprobe's context is the trapped task's registers.
    unsafe { ctx.regs.as_ref() }
}

fn go_enter(ctx: &ProbeContext, call: CallKind) {
    let Some(r) = regs(ctx) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = GoCallKey { tgid: pid_tgid >> 32, goroutine: r.r14 };
    let args = CallArgs { ssl: r.rax, buf: r.rbx, len_ptr: 0, num: r.rcx, call: call as u32, taken_by: 0 };
    // The goroutine's entry stays from call to call ([`take_go_call`]), so a
    // call rewrites it in place: an insert and a removal of an LRU entry per
    // call cost about as much as the rest of a muted read.
    match GO_CALLS.get_ptr_mut(key) {
        // SAFETY: a live map value; one goroutine runs on one CPU at a time.
        // An LRU element is reused as soon as it is evicted: with the map
        // full, another CPU may give this one to another goroutine's key
        // between the lookup and the store, and that goroutine's next copy
        // could take this call. It needs a full map and a window of a few
        // instructions (an insert replaced the element whole).
        Some(p) => unsafe { *p = args },
        None => {
            if GO_CALLS.insert(key, args, 0).is_err() {
                count_loss(LossCounter::ArgsMapFull, 1);
            }
        }
    }
}

/// The goroutine's call in flight if it is a `call` this agent has not taken
/// yet (nor two agents, nor one that has left since), marked taken by it so
/// that it uses it once: a `Read` that fails never reaches its copy and
/// leaves its call for the goroutine's next one to rewrite. The entry itself
/// stays for the next call; the LRU ages out a dead goroutine's. None,
/// counted, when there is no such call.
fn take_go_call(key: GoCallKey, call: CallKind) -> Option<CallArgs> {
    let me = crate::handover::me();
    let taken = GO_CALLS.get_ptr_mut(key).and_then(|p| {
        // SAFETY: a live map value; one goroutine runs on one CPU at a time
        // (two agents' programs on one call run one after the other).
        unsafe {
            let by = (*p).taken_by;
            if (*p).call != call as u32 || by == me || by == TAKEN_BY_TWO {
                return None;
            }
            // Taken by an agent gone since: the goroutine's last call, not
            // one in flight (this one began where no agent's probe saw it).
            if by != 0 && !crate::handover::live(by) {
                return None;
            }
            // An agent that has left (its probes still attached for a while)
            // copies nothing of it (the ownership rule's); marked by it, the
            // call would look stale to the agent that copies it.
            if !crate::handover::left() {
                (*p).taken_by = if by == 0 { me } else { TAKEN_BY_TWO };
            }
            Some(*p)
        }
    });
    if taken.is_none() {
        count_loss(LossCounter::GoCallsUnmatched, 1);
    }
    taken
}

/// At one of the function's `RET` instructions: RAX holds `n`.
fn go_return(ctx: &ProbeContext, call: CallKind, direction: u32) {
    let Some(r) = regs(ctx) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = GoCallKey { tgid: pid_tgid >> 32, goroutine: r.r14 };
    let Some(args) = take_go_call(key, call) else {
        return;
    };
    let n = r.rax as i64;
    if n <= 0 || n as u64 > args.num {
        return;
    }
    if ignored(pid_tgid, args.ssl) {
        return;
    }
    let e = Emit { conn: args.ssl, buf: args.buf, fd: FD_OF_GO_CONN, source: Source::GoTls };
    emit_data(pid_tgid, &e, direction, n as u64);
}

/// An [`Emit`]'s fd that the copy reads through the `*tls.Conn` ([`go_conn_fd`])
/// only for a call it copies: a muted read of a download copies nothing, and
/// need not pay for the three reads of user memory.
pub(crate) const FD_OF_GO_CONN: i32 = i32::MIN + 1;

/// The socket fd under a `*tls.Conn`: `c.conn` (a `net.Conn` interface at offset
/// 0, its data word at +8) -> `*net.TCPConn` -> `conn.fd *netFD` (offset 0) ->
/// `pfd.Sysfd` (after the 16-byte `fdMutex`). Stable across Go releases; a
/// conn that is not a `*net.TCPConn` yields nonsense, caught by the range check.
pub(crate) fn go_conn_fd(conn: u64) -> i32 {
    let read = |addr: u64| unsafe { bpf_probe_read_user(addr as *const u64) }.ok();
    let fd = read(conn + 8).and_then(read).and_then(|netfd| read(netfd + 16));
    match fd {
        Some(fd) if fd < (1 << 24) => fd as i32,
        _ => -1,
    }
}

#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, CallKind::GoWrite);
    0
}

/// `Write` at its prologue's stack-check `jbe`. With CF or ZF set the jump is
/// taken: the stack grows and the function restarts, passing here again, so
/// only the pass that goes on copies. Write sends all of `b` or fails the
/// connection, so its bytes are final here and no probe on its `RET`s (which
/// the kernel would single-step) is needed.
#[uprobe]
pub fn go_tls_write_once(ctx: ProbeContext) -> u32 {
    const CF: u64 = 1;
    const ZF: u64 = 1 << 6;
    let Some(r) = regs(&ctx) else {
        return 0;
    };
    if r.eflags & (CF | ZF) != 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (conn, buf, len) = (r.rax, r.rbx, r.rcx);
    // More than a Go slice on a TLS connection plausibly holds: a misread call.
    if conn == 0 || buf == 0 || len == 0 || len > 1 << 31 || ignored(pid_tgid, conn) {
        return 0;
    }
    let e = Emit { conn, buf, fd: FD_OF_GO_CONN, source: Source::GoTls };
    emit_data(pid_tgid, &e, DIR_EGRESS, len);
    0
}

#[uprobe]
pub fn go_tls_write_ret(ctx: ProbeContext) -> u32 {
    go_return(&ctx, CallKind::GoWrite, DIR_EGRESS);
    0
}

#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, CallKind::GoRead);
    0
}

#[uprobe]
pub fn go_tls_read_ret(ctx: ProbeContext) -> u32 {
    go_return(&ctx, CallKind::GoRead, DIR_INGRESS);
    0
}

/// `Read` at its call `runtime.memmove(to, from, n)`: RAX = the caller's
/// buffer, RBX = the record's plaintext, RCX = n, the count Read returns. The
/// bytes are copied from `from`, where they already are. A Read that fails
/// never gets here and leaves its call for the goroutine's next one to
/// rewrite (or the LRU to age out).
#[uprobe]
pub fn go_tls_read_copy(ctx: ProbeContext) -> u32 {
    let Some(r) = regs(&ctx) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = GoCallKey { tgid: pid_tgid >> 32, goroutine: r.r14 };
    let Some(args) = take_go_call(key, CallKind::GoRead) else {
        return 0;
    };
    let (from, n) = (r.rbx, r.rcx);
    if from == 0 || n == 0 || n > args.num || ignored(pid_tgid, args.ssl) {
        return 0;
    }
    let e = Emit { conn: args.ssl, buf: from, fd: FD_OF_GO_CONN, source: Source::GoTls };
    emit_data(pid_tgid, &e, DIR_INGRESS, n);
    0
}

/// `(*Conn).Close`: the connection object may be reused for another connection.
#[uprobe]
pub fn go_tls_close(ctx: ProbeContext) -> u32 {
    if let Some(r) = regs(&ctx) {
        let conn = r.rax;
        forget_conn(SslKey { tgid: bpf_get_current_pid_tgid() >> 32, ssl: conn });
        emit_control(EventKind::ConnClosed, conn);
    }
    0
}
