//! OpenSSL-ABI TLS libraries: OpenSSL, BoringSSL and the libraries that export
//! the same ABI (node links it statically).
//!
//! Why these hooks: `SSL_write`/`SSL_read` (and their `_ex` twins) see the
//! plaintext of every TLS connection made through these libraries. The entry
//! probe saves the arguments in the thread's storage ([`crate::call_args`]); the return probe knows how many bytes
//! really moved and copies exactly those, in `CHUNK_SIZE` chunks, into the ring
//! buffer. `SSL_free` tells user space a connection object is gone (pointers get
//! reused); `SSL_set_fd` tells which socket a connection uses.
//!
//! What they fall back to: where a distribution build wraps one internal
//! function, user space may place the `_ex` probes on it instead (same arguments,
//! any positive result; the agent's discovery/placement.rs). A stale entry (a
//! return probe that never fired) is overwritten by the thread's next call.
//! Libraries with a memory BIO never call `SSL_set_fd`: their fd stays -1.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use tokentap_agent_common::{CallArgs, CallKind, EventKind, LossCounter, Source, SslKey, DIR_EGRESS, DIR_INGRESS};

use crate::call_args;
use crate::chunks::{emit_data, forget_conn, ignored, Emit};
use crate::ring::{count_loss, emit_control};

/// (tgid, SSL*) -> socket fd, learned from `SSL_set_fd`. LRU: connections whose
/// `SSL_free` we never see age out instead of filling the map.
#[map]
static SSL_FDS: LruHashMap<SslKey, i32> = LruHashMap::with_max_entries(65536, 0);

pub(crate) fn save_args(ctx: &ProbeContext, call: CallKind, has_len_ptr: bool) {
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    // `int num` for SSL_write/SSL_read, `size_t num` for the _ex variants.
    let num: u64 =
        if has_len_ptr { ctx.arg(2).unwrap_or(0) } else { ctx.arg::<u64>(2).unwrap_or(0) as u32 as i32 as i64 as u64 };
    let len_ptr: u64 = if has_len_ptr { ctx.arg(3).unwrap_or(0) } else { 0 };
    // The latest call wins: a stale entry (a return probe that never fired) must
    // not block the thread, and when one entry point calls another (BoringSSL's
    // SSL_write_ex -> SSL_write) the inner call emits and the outer finds nothing.
    let args = CallArgs { ssl, buf, len_ptr, num, call: call as u32, taken_by: 0 };
    if !call_args::save(args) {
        count_loss(LossCounter::ArgsMapFull, 1);
    }
    crate::handover::call_begins(bpf_get_current_pid_tgid(), true);
}

pub(crate) fn finish_call(ctx: &RetProbeContext, call: CallKind, direction: u32, source: Source) {
    let Some(args) = call_args::take(call as u32) else {
        return;
    };
    let key = bpf_get_current_pid_tgid();
    // The functions return C `int`: only the low 32 bits of the register are
    // defined.
    let ret = ctx.ret::<u64>() as u32 as i32;
    let len: u64 = match call {
        CallKind::Write | CallKind::Read => {
            if ret <= 0 {
                return;
            }
            ret as u64
        }
        CallKind::GoWrite | CallKind::GoRead => return,
        // SSL_*_ex return 1 on success; the internal functions they wrap (where
        // these probes may sit, see the agent's discovery/placement.rs) any
        // positive value.
        CallKind::WriteEx | CallKind::ReadEx => {
            if ret <= 0 || args.len_ptr == 0 {
                return;
            }
            match unsafe { bpf_probe_read_user(args.len_ptr as *const u64) } {
                Ok(n) => n,
                Err(_) => return,
            }
        }
    };
    // A length beyond the caller's buffer means we misread the call: copy nothing.
    if len == 0 || len > args.num {
        return;
    }
    if ignored(key, args.ssl) {
        return;
    }
    // The fd is looked up only for a call that is copied ([`fd_of`]): a muted
    // read of a download copies nothing, and need not pay for the lookup.
    emit_data(key, &Emit { conn: args.ssl, buf: args.buf, fd: FD_OF_SSL, source }, direction, len);
}

/// An [`Emit`]'s fd that the copy looks up in [`SSL_FDS`] by its connection.
pub(crate) const FD_OF_SSL: i32 = i32::MIN;

/// The socket fd of connection object `ssl` of process `tgid`, -1 when unknown.
#[inline(always)]
pub(crate) fn fd_of(tgid: u64, ssl: u64) -> i32 {
    unsafe { SSL_FDS.get(SslKey { tgid, ssl }) }.copied().unwrap_or(-1)
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    save_args(&ctx, CallKind::Write, false);
    0
}

#[uretprobe]
pub fn ssl_write_ret(ctx: RetProbeContext) -> u32 {
    finish_call(&ctx, CallKind::Write, DIR_EGRESS, Source::OpenSsl);
    0
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    save_args(&ctx, CallKind::Read, false);
    0
}

#[uretprobe]
pub fn ssl_read_ret(ctx: RetProbeContext) -> u32 {
    finish_call(&ctx, CallKind::Read, DIR_INGRESS, Source::OpenSsl);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    save_args(&ctx, CallKind::WriteEx, true);
    0
}

#[uretprobe]
pub fn ssl_write_ex_ret(ctx: RetProbeContext) -> u32 {
    finish_call(&ctx, CallKind::WriteEx, DIR_EGRESS, Source::OpenSsl);
    0
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    save_args(&ctx, CallKind::ReadEx, true);
    0
}

#[uretprobe]
pub fn ssl_read_ex_ret(ctx: RetProbeContext) -> u32 {
    finish_call(&ctx, CallKind::ReadEx, DIR_INGRESS, Source::OpenSsl);
    0
}

#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    conn_ended(&ctx);
    0
}

/// The `SSL*` in the first argument is done with: forget it, tell user space.
pub(crate) fn conn_ended(ctx: &ProbeContext) {
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    if ssl != 0 {
        let k = SslKey { tgid: bpf_get_current_pid_tgid() >> 32, ssl };
        let _ = SSL_FDS.remove(k);
        forget_conn(k);
        emit_control(EventKind::ConnClosed, ssl);
    }
}

/// `SSL_set_fd(ssl, fd)`: which socket a connection uses (libraries with a
/// memory BIO, like node's, never call it: their fd stays unknown, -1).
#[uprobe]
pub fn ssl_set_fd(ctx: ProbeContext) -> u32 {
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let fd = ctx.arg::<u64>(1).unwrap_or(u64::MAX) as u32 as i32;
    if ssl != 0 && fd >= 0 {
        let _ = SSL_FDS.insert(SslKey { tgid: bpf_get_current_pid_tgid() >> 32, ssl }, fd, 0);
    }
    0
}
