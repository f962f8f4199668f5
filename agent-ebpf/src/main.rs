//! Kernel side of tokentap: copy plaintext out of TLS library calls, nothing more.
//!
//! Why these hooks: `SSL_write`/`SSL_read` (and their `_ex` twins) see the
//! plaintext of every TLS connection made through OpenSSL, BoringSSL and the
//! libraries that export the same ABI (node links it statically). The entry probe
//! saves the arguments per thread; the return probe knows how many bytes really
//! moved and copies exactly those, in `CHUNK_SIZE` chunks, into the ring buffer.
//! `SSL_free` tells user space a connection object is gone (pointers get reused).
//! Go programs carry their own TLS: `crypto/tls.(*Conn).Write`/`.Read` are probed
//! at entry and at each of their return instructions (never with uretprobes: Go
//! moves goroutine stacks, which breaks the return-address trampoline).
//! Plaintext HTTP (self-hosted models) is read at the socket syscalls of
//! connections this process opened with `connect`; the first bytes decide, here,
//! whether a connection is HTTP at all, so TLS and other protocols cost one check.
//! The `sched_process_exec` raw tracepoint prompts user space to look for new TLS libraries and
//! `sched_process_exit` lets it free a process's state. All parsing is in user space.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::pt_regs, helpers::bpf_probe_read_kernel};
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
    CallArgs, CallKind, ControlEvent, DataEvent, EventKind, GoCallKey, LossCounter, SockArgs, SockCall, SockKey,
    Source, SslKey, CHUNK_SIZE, DATA_HEADER_LEN, DIR_EGRESS, DIR_INGRESS, FLAG_GAP_BEFORE, FLAG_LAST, FLAG_READ_FAILED,
    FLAG_TRUNCATED, LOSS_COUNTERS, MAX_CHUNKS, MAX_IOV, SCRATCH_SLOTS, SOCKET_CONN, SOCK_HTTP, SOCK_NEW, SOCK_OTHER,
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

/// In-flight Go TLS calls by goroutine. LRU: a goroutine that dies inside a
/// call (panic) must not leak its entry.
#[map]
static GO_CALLS: LruHashMap<GoCallKey, CallArgs> = LruHashMap::with_max_entries(16384, 0);

/// Client sockets opened with `connect` while we watch, and what their first
/// bytes said ([`SOCK_NEW`], [`SOCK_HTTP`], [`SOCK_OTHER`]).
#[map]
static SOCKETS: LruHashMap<SockKey, u32> = LruHashMap::with_max_entries(65536, 0);

/// Processes with at least one watched socket: the cheap first test on every
/// read/write, so a process without client sockets (a build, a database doing
/// file I/O) pays one lookup per call. Cleared at exit.
#[map]
static SOCK_PROCS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// In-flight socket syscalls on watched sockets, by thread.
#[map]
static SOCK_CALLS: HashMap<u64, SockArgs> = HashMap::with_max_entries(16384, 0);

#[map]
static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// Per-CPU nesting depth: which scratch slot the next program on this CPU uses.
#[map]
static SCRATCH_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Connections that lost a chunk to a full ring buffer: the next chunk copied for
/// them carries [`FLAG_GAP_BEFORE`], so user space knows the stream has a hole
/// even when whole calls were lost (per-call offsets can't show that). LRU: a
/// connection never heard of again ages out.
#[map]
static GAPPED: LruHashMap<SslKey, u32> = LruHashMap::with_max_entries(16384, 0);

/// Processes whose calls were copied since their last exec: the first one wakes
/// user space (see `copy_chunks`). Cleared at exec and exit.
#[map]
static PROCS_SEEN: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// Per CPU, the most bytes seen waiting in `EVENTS` since user space last read
/// (and zeroed) this: the ring buffer's fill level for `/metrics`.
#[map]
static RING_FILL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// Whether this output wakes user space. By default every record written to an
/// empty ring buffer does, which costs the traced thread an interrupt (a VM exit
/// in a guest) per call; user space drains on a short timer instead, and is
/// woken early only when the buffer is an eighth full.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    if let Some(p) = RING_FILL.get_ptr_mut(0) {
        // SAFETY: this CPU's value of a live per-CPU map.
        unsafe {
            if *p < waiting {
                *p = waiting;
            }
        }
    }
    if waiting >= EVENTS.query(BPF_RB_RING_SIZE) / 8 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

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
    let fd = unsafe { SSL_FDS.get(SslKey { tgid: key >> 32, ssl: args.ssl }) }.copied().unwrap_or(-1);
    emit_data(key, &Emit { conn: args.ssl, buf: args.buf, fd, source: Source::OpenSsl }, direction, len);
}

/// Has user space told us to skip this connection?
#[inline(always)]
fn ignored(pid_tgid: u64, conn: u64) -> bool {
    if unsafe { IGNORED_CONNS.get(SslKey { tgid: pid_tgid >> 32, ssl: conn }) }.is_some() {
        count_loss(LossCounter::FilteredIgnored, 1);
        return true;
    }
    false
}

/// What one copied call is: whose connection, which bytes, from which hook.
struct Emit {
    conn: u64,
    buf: u64,
    fd: i32,
    source: Source,
}

/// Copy `len` bytes at `e.buf` into the ring buffer as ordered chunks.
fn emit_data(pid_tgid: u64, e: &Emit, direction: u32, len: u64) {
    let Some(depth_ptr) = SCRATCH_DEPTH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's value of a live per-CPU map. A program preempted on this
    // CPU by another one sees the incremented depth and takes the next slot.
    let slot = unsafe { *depth_ptr };
    unsafe { *depth_ptr = slot.wrapping_add(1) };
    if slot < SCRATCH_SLOTS {
        copy_chunks(pid_tgid, e, direction, len, slot);
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
    /// Wake user space after this call's last chunk (see [`PROCS_SEEN`]).
    wake: u32,
}

fn copy_chunks(pid_tgid: u64, e: &Emit, direction: u32, len: u64, slot: u32) {
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
    h.conn = e.conn;
    h.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    h.call_len = len;
    h.fd = e.fd;
    h.source = e.source as u32;
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // A process's first captured call wakes user space at once: it reads the
    // process's attribution (/proc/PID: executable, cgroup, environment) while
    // the process still lives — a short-lived client may exit within milliseconds.
    let tgid = (pid_tgid >> 32) as u32;
    let wake = u32::from(unsafe { PROCS_SEEN.get(tgid) }.is_none());
    if wake == 1 {
        let _ = PROCS_SEEN.insert(tgid, 1, 0);
    }
    let mut ctx = CopyCtx { buf: e.buf, len, slot, wake };
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
    let key = SslKey { tgid: ev.header.tgid as u64, ssl: ev.header.conn };
    if index == 0 && unsafe { GAPPED.get(key) }.is_some() {
        flags |= FLAG_GAP_BEFORE;
        let _ = GAPPED.remove(key);
    }
    ev.header.offset = offset;
    ev.header.len = n as u32;
    ev.header.flags = flags;
    let total = DATA_HEADER_LEN + n as usize;
    // SAFETY: `total` <= size_of::<DataEvent>() and `ev` is a live map value.
    let bytes = unsafe { core::slice::from_raw_parts((ev as *const DataEvent).cast::<u8>(), total) };
    let wake = if last && ctx.wake == 1 { BPF_RB_FORCE_WAKEUP } else { wakeup_flags() };
    if EVENTS.output::<[u8]>(bytes, wake).is_err() {
        count_loss(LossCounter::RingFull, 1);
        let _ = GAPPED.insert(key, 1, 0);
    }
    if last {
        1
    } else {
        0
    }
}

fn emit_control(kind: EventKind, conn: u64) {
    emit_control_for(bpf_get_current_pid_tgid(), kind, conn);
}

fn emit_control_for(pid_tgid: u64, kind: EventKind, conn: u64) {
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
    // A new program or library must be inspected while its process still
    // lives (it may exit within milliseconds): wake user space at once.
    let flags =
        if matches!(kind, EventKind::Exec | EventKind::LibsChanged) { BPF_RB_FORCE_WAKEUP } else { wakeup_flags() };
    if EVENTS.output::<ControlEvent>(&ev, flags).is_err() {
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
    let _ = PROCS_SEEN.remove((bpf_get_current_pid_tgid() >> 32) as u32);
    emit_control(EventKind::Exec, 0);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Only the thread group leader's exit ends the process's connections.
    if (pid_tgid >> 32) as u32 == pid_tgid as u32 {
        let _ = SOCK_PROCS.remove((pid_tgid >> 32) as u32);
        let _ = PROCS_SEEN.remove((pid_tgid >> 32) as u32);
        emit_control(EventKind::Exit, 0);
    }
    0
}

// ---- Go crypto/tls -------------------------------------------------------
//
// Register ABI (Go >= 1.17, amd64): receiver and arguments in RAX, RBX, RCX,
// RDI, …; results in RAX, RBX, …; the current goroutine `g` in R14.
// `func (c *Conn) Write(b []byte) (int, error)`: RAX = c, RBX = b.ptr, RCX = b.len.

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
    let args = CallArgs { ssl: r.rax, buf: r.rbx, len_ptr: 0, num: r.rcx, call: call as u32, _pad: 0 };
    if GO_CALLS.insert(key, args, 0).is_err() {
        count_loss(LossCounter::ArgsMapFull, 1);
    }
}

/// At one of the function's `RET` instructions: RAX holds `n`.
fn go_return(ctx: &ProbeContext, call: CallKind, direction: u32) {
    let Some(r) = regs(ctx) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = GoCallKey { tgid: pid_tgid >> 32, goroutine: r.r14 };
    let Some(args) = (unsafe { GO_CALLS.get(key) }).copied() else {
        return;
    };
    if args.call != call as u32 {
        return;
    }
    let _ = GO_CALLS.remove(key);
    let n = r.rax as i64;
    if n <= 0 || n as u64 > args.num {
        return;
    }
    if ignored(pid_tgid, args.ssl) {
        return;
    }
    let e = Emit { conn: args.ssl, buf: args.buf, fd: go_conn_fd(args.ssl), source: Source::GoTls };
    emit_data(pid_tgid, &e, direction, n as u64);
}

/// The socket fd under a `*tls.Conn`: `c.conn` (a `net.Conn` interface at offset
/// 0, its data word at +8) -> `*net.TCPConn` -> `conn.fd *netFD` (offset 0) ->
/// `pfd.Sysfd` (after the 16-byte `fdMutex`). Stable across Go releases; a
/// conn that is not a `*net.TCPConn` yields nonsense, caught by the range check.
fn go_conn_fd(conn: u64) -> i32 {
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

/// `(*Conn).Close`: the connection object may be reused for another connection.
#[uprobe]
pub fn go_tls_close(ctx: ProbeContext) -> u32 {
    if let Some(r) = regs(&ctx) {
        let conn = r.rax;
        let _ = IGNORED_CONNS.remove(SslKey { tgid: bpf_get_current_pid_tgid() >> 32, ssl: conn });
        emit_control(EventKind::ConnClosed, conn);
    }
    0
}

// ---- Plaintext sockets ---------------------------------------------------
//
// Raw `sys_enter`/`sys_exit` tracepoints (no tracefs needed). Only client
// sockets `connect`ed to AF_INET/AF_INET6 while we run are watched; a write or
// read on any other fd costs a map lookup.

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
