//! Kernel side of tokentap: copy plaintext out of TLS library calls, nothing more.
//!
//! Why these hooks: `SSL_write`/`SSL_read` (and their `_ex` twins) see the
//! plaintext of every TLS connection made through OpenSSL, BoringSSL and the
//! libraries that export the same ABI (node links it statically). The entry probe
//! saves the arguments per thread; the return probe knows how many bytes really
//! moved and copies exactly those, in `CHUNK_SIZE` chunks, into the ring buffer.
//! `SSL_free` tells user space a connection object is gone (pointers get reused).
//! The `sched_process_exec` raw tracepoint prompts user space to look for new TLS libraries and
//! `sched_process_exit` lets it free a process's state. All parsing is in user space.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_get_current_cgroup_id, bpf_loop, bpf_probe_read_user as raw_probe_read_user},
    },
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use tokentap_agent_common::{
    CallArgs, CallKind, ControlEvent, DataEvent, EventKind, LossCounter, Source, SslKey, CHUNK_SIZE, DATA_HEADER_LEN,
    DIR_EGRESS, DIR_INGRESS, FLAG_LAST, FLAG_READ_FAILED, FLAG_TRUNCATED, LOSS_COUNTERS, MAX_CHUNKS, SCRATCH_SLOTS,
};

/// Size is set by the loader (`--ring-buffer-bytes`); this is the default.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

#[map]
static ACTIVE_CALLS: HashMap<u64, CallArgs> = HashMap::with_max_entries(16384, 0);

/// (tgid, SSL*) -> socket fd, learned from `SSL_set_fd`. LRU: connections whose
/// `SSL_free` we never see age out instead of filling the map.
#[map]
static SSL_FDS: LruHashMap<SslKey, i32> = LruHashMap::with_max_entries(65536, 0);

/// Connections user space has classified as not worth copying (not HTTP, HTTP/2,
/// server side, desynchronised): their calls are skipped here, so a busy TLS
/// database or a download costs a map lookup, not a copy. Cleared on `SSL_free`.
#[map]
static IGNORED_CONNS: LruHashMap<SslKey, u32> = LruHashMap::with_max_entries(65536, 0);

#[map]
static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// Per-CPU nesting depth: which scratch slot the next program on this CPU uses.
#[map]
static SCRATCH_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU loss counters (no atomics needed); user space sums the CPUs.
#[map]
static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_COUNTERS, 0);

#[inline(always)]
fn count_loss(counter: LossCounter, n: u64) {
    if let Some(p) = LOSS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's value of a live per-CPU map.
        unsafe { *p += n };
    }
}

fn save_args(ctx: &ProbeContext, call: CallKind, has_len_ptr: bool) {
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    // `int num` for SSL_write/SSL_read, `size_t num` for the _ex variants.
    let num: u64 =
        if has_len_ptr { ctx.arg(2).unwrap_or(0) } else { ctx.arg::<u64>(2).unwrap_or(0) as u32 as i32 as i64 as u64 };
    let len_ptr: u64 = if has_len_ptr { ctx.arg(3).unwrap_or(0) } else { 0 };
    let key = bpf_get_current_pid_tgid();
    // The latest call wins: a stale entry (a return probe that never fired) must
    // not block the thread, and when one entry point calls another (BoringSSL's
    // SSL_write_ex -> SSL_write) the inner call emits and the outer finds nothing.
    let args = CallArgs { ssl, buf, len_ptr, num, call: call as u32, _pad: 0 };
    if ACTIVE_CALLS.insert(key, args, 0).is_err() {
        count_loss(LossCounter::ArgsMapFull, 1);
    }
}

fn finish_call(ctx: &RetProbeContext, call: CallKind, direction: u32) {
    let key = bpf_get_current_pid_tgid();
    let Some(args) = (unsafe { ACTIVE_CALLS.get(key) }).copied() else {
        return;
    };
    if args.call != call as u32 {
        return;
    }
    let _ = ACTIVE_CALLS.remove(key);
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
        CallKind::WriteEx | CallKind::ReadEx => {
            if ret != 1 || args.len_ptr == 0 {
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
    if unsafe { IGNORED_CONNS.get(SslKey { tgid: key >> 32, ssl: args.ssl }) }.is_some() {
        count_loss(LossCounter::FilteredIgnored, 1);
        return;
    }
    emit_data(key, &args, direction, len);
}

/// Copy `len` bytes at `args.buf` into the ring buffer as ordered chunks.
fn emit_data(pid_tgid: u64, args: &CallArgs, direction: u32, len: u64) {
    let Some(depth_ptr) = SCRATCH_DEPTH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's value of a live per-CPU map. A program preempted on this
    // CPU by another one sees the incremented depth and takes the next slot.
    let slot = unsafe { *depth_ptr };
    unsafe { *depth_ptr = slot.wrapping_add(1) };
    if slot < SCRATCH_SLOTS {
        copy_chunks(pid_tgid, args, direction, len, slot);
    } else {
        count_loss(LossCounter::ScratchBusy, 1);
    }
    unsafe { *depth_ptr = slot };
}

/// State shared with the per-chunk callback of `bpf_loop` (lives on the stack).
#[repr(C)]
struct CopyCtx {
    buf: u64,
    len: u64,
    slot: u32,
    _pad: u32,
}

fn copy_chunks(pid_tgid: u64, args: &CallArgs, direction: u32, len: u64, slot: u32) {
    let Some(ev) = SCRATCH.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: per-CPU scratch slot owned by this nesting level.
    let h = unsafe { &mut (*ev).header };
    h.kind = EventKind::Data as u32;
    h.direction = direction;
    h.tgid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.ts_ns = unsafe { bpf_ktime_get_ns() };
    h.conn = args.ssl;
    h.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    h.call_len = len;
    let key = SslKey { tgid: pid_tgid >> 32, ssl: args.ssl };
    h.fd = unsafe { SSL_FDS.get(key) }.copied().unwrap_or(-1);
    h.source = Source::OpenSsl as u32;
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let mut ctx = CopyCtx { buf: args.buf, len, slot, _pad: 0 };
    // bpf_loop (5.17+) lets the verifier check the body once, however many
    // chunks a call needs; an unrolled bounded loop exceeds its budget.
    unsafe { bpf_loop(MAX_CHUNKS, copy_one_chunk as *mut core::ffi::c_void, (&mut ctx as *mut CopyCtx).cast(), 0) };
}

/// `bpf_loop` callback: copy chunk `index`; returns 1 to stop.
#[inline(never)]
extern "C" fn copy_one_chunk(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the CopyCtx on copy_chunks' stack.
    let ctx = unsafe { &*(ctx as *const CopyCtx) };
    let Some(ev) = SCRATCH.get_ptr_mut(ctx.slot) else {
        return 1;
    };
    // SAFETY: per-CPU scratch slot owned by this nesting level.
    let ev = unsafe { &mut *ev };
    let len = ctx.len;
    let offset = index * (CHUNK_SIZE as u64);
    if offset >= len {
        return 1;
    }
    let limit = (CHUNK_SIZE as u64) * (MAX_CHUNKS as u64);
    let remaining = len - offset;
    let mut n = if remaining > CHUNK_SIZE as u64 { CHUNK_SIZE as u64 } else { remaining };
    // Keep the verifier sure that n is within the scratch buffer.
    n &= (2 * CHUNK_SIZE as u64) - 1;
    if n > CHUNK_SIZE as u64 {
        n = CHUNK_SIZE as u64;
    }
    let last = offset + n >= len || offset + n >= limit;
    let mut flags = if last { FLAG_LAST } else { 0 };
    if last && len > limit {
        flags |= FLAG_TRUNCATED;
        count_loss(LossCounter::TruncatedCall, 1);
    }
    let src = (ctx.buf + offset) as *const core::ffi::c_void;
    let rc = unsafe { raw_probe_read_user(ev.data.as_mut_ptr().cast(), n as u32, src) };
    if rc != 0 {
        flags |= FLAG_READ_FAILED;
        count_loss(LossCounter::ReadFailed, 1);
    }
    ev.header.offset = offset;
    ev.header.len = n as u32;
    ev.header.flags = flags;
    let total = DATA_HEADER_LEN + n as usize;
    // SAFETY: `total` <= size_of::<DataEvent>() and `ev` is a live map value.
    let bytes = unsafe { core::slice::from_raw_parts((ev as *const DataEvent).cast::<u8>(), total) };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count_loss(LossCounter::RingFull, 1);
    }
    if last {
        1
    } else {
        0
    }
}

fn emit_control(kind: EventKind, conn: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let ev = ControlEvent {
        kind: kind as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        _pad: 0,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        conn,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if EVENTS.output::<ControlEvent>(&ev, 0).is_err() {
        count_loss(LossCounter::ControlRingFull, 1);
    }
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    save_args(&ctx, CallKind::Write, false);
    0
}

#[uretprobe]
pub fn ssl_write_ret(ctx: RetProbeContext) -> u32 {
    finish_call(&ctx, CallKind::Write, DIR_EGRESS);
    0
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    save_args(&ctx, CallKind::Read, false);
    0
}

#[uretprobe]
pub fn ssl_read_ret(ctx: RetProbeContext) -> u32 {
    finish_call(&ctx, CallKind::Read, DIR_INGRESS);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    save_args(&ctx, CallKind::WriteEx, true);
    0
}

#[uretprobe]
pub fn ssl_write_ex_ret(ctx: RetProbeContext) -> u32 {
    finish_call(&ctx, CallKind::WriteEx, DIR_EGRESS);
    0
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    save_args(&ctx, CallKind::ReadEx, true);
    0
}

#[uretprobe]
pub fn ssl_read_ex_ret(ctx: RetProbeContext) -> u32 {
    finish_call(&ctx, CallKind::ReadEx, DIR_INGRESS);
    0
}

#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    if ssl != 0 {
        let k = SslKey { tgid: bpf_get_current_pid_tgid() >> 32, ssl };
        let _ = SSL_FDS.remove(k);
        let _ = IGNORED_CONNS.remove(k);
        emit_control(EventKind::ConnClosed, ssl);
    }
    0
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

/// `_dl_debug_state` in the dynamic loader runs after every library load or
/// unload (dlopen, and startup): user space looks for a new TLS library at once
/// instead of waiting for a rescan, so the process's first TLS call is not missed.
#[uprobe]
pub fn dl_debug_state(_ctx: ProbeContext) -> u32 {
    emit_control(EventKind::LibsChanged, 0);
    0
}

// Raw tracepoints need no tracefs mount (often absent in containers).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    emit_control(EventKind::Exec, 0);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Only the thread group leader's exit ends the process's connections.
    if (pid_tgid >> 32) as u32 == pid_tgid as u32 {
        emit_control(EventKind::Exit, 0);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
