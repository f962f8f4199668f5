//! The copy path every capture method shares: once a hook knows a call moved
//! `len` bytes at `buf` on a connection, [`emit_data`] copies exactly those bytes
//! into the ring buffer as ordered chunks of at most `CHUNK_SIZE`
//! (`{conn, direction, offset, len, flags}` in each header), so large payloads
//! are split, not truncated.
//!
//! Why this shape: a chunk is built in per-CPU scratch (too big for the stack),
//! with one slot per preemption nesting level, so two programs on one CPU never
//! share a slot; `bpf_loop` (5.17+) lets the verifier check the per-chunk body
//! once, however many chunks a call needs. What it falls back to: with every
//! slot busy the call is dropped and counted; a call beyond `MAX_CHUNKS` chunks
//! is cut and its last chunk flagged truncated; a chunk the ring buffer can't
//! take marks the connection so its next chunk carries [`FLAG_GAP_BEFORE`];
//! connections user space asked to skip ([`IGNORED_CONNS`]) are not copied at all,
//! nor are reads inside a response body user space muted ([`MUTED`]), nor
//! calls on a connection another agent owns (an upgrade: [`crate::handover`]).
//!
//! Muting, and why by stream position: a keep-alive HTTP/1.1 connection stays
//! a client's, so each of its requests is read, but a non-LLM response (a
//! download) need not be. Each read's position in the connection's ingress
//! stream travels in its header; user space, having parsed a response head
//! and its length, names the body's remaining range and the kernel skips the
//! reads that fall wholly inside it. User space lags, so a mute by time ("until
//! the next request") could silence a later call's response; a range can't:
//! bytes after the body are never in it. Each connection's positions start at a
//! base taken from the clock, so a range left from an earlier connection under a
//! reused key lies below the new one's positions and never applies.
//!
//! Ignoring, and why by the same base: user space decides to ignore a
//! connection after the kernel copied its first calls, and by then the
//! connection may have ended and its key (an `SSL*` the allocator hands out
//! again at once) may name the next one: a gateway's server-side connection
//! ends and its upstream LLM call gets the same `SSL*`. So an ignore names
//! the base the connection's count started from (taken at its first copied
//! call, read or write); under another base it is an earlier connection's,
//! and goes.
use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_loop, bpf_probe_read_user as raw_probe_read_user,
        },
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use tokentap_agent_common::{
    DataEvent, EventKind, LossCounter, MuteRange, Source, SslKey, CHUNK_SIZE, DATA_HEADER_LEN, DIR_INGRESS,
    FLAG_GAP_BEFORE, FLAG_LAST, FLAG_READ_FAILED, FLAG_TAKEN_OVER, FLAG_TRUNCATED, MAX_CHUNKS, SCRATCH_SLOTS,
};

use crate::h2_walk;
use crate::handover::Owned;
use crate::ring::{count_loss, wakeup_flags, BPF_RB_FORCE_WAKEUP, EVENTS};
use crate::words;

/// Connections user space has classified as not worth copying (not HTTP, HTTP/2,
/// server side, desynchronised): their calls are skipped here, so a busy TLS
/// database or a download costs a map lookup, not a copy. Cleared on `SSL_free`.
/// The value: the connection's stream base when user space decided (see the
/// module's prose), or 0 for "whatever connection has the key".
#[map]
pub(crate) static IGNORED_CONNS: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(65536, 0);

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
/// user space (see `copy_calls`). Cleared at exec and exit.
#[map]
pub(crate) static PROCS_SEEN: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// Response bodies user space will not record, as ranges of their
/// connection's ingress stream (see the module's prose). One per connection:
/// a new range replaces the last, which lies before it.
#[map]
pub(crate) static MUTED: LruHashMap<SslKey, MuteRange> = LruHashMap::with_max_entries(16384, 0);

/// Where a connection's ingress stream stands: `base` (nanoseconds since boot
/// times 16 when a call of the connection was first copied: it names this
/// connection, not the next under its key) plus the bytes read since.
#[repr(C)]
#[derive(Clone, Copy)]
struct InPos {
    base: u64,
    next: u64,
}

#[map]
static IN_POS: LruHashMap<SslKey, InPos> = LruHashMap::with_max_entries(65536, 0);

/// A connection's key may be reused: forget what the kernel holds for it.
pub(crate) fn forget_conn(key: SslKey) {
    crate::handover::forget(key);
    let _ = IGNORED_CONNS.remove(key);
    let _ = IN_POS.remove(key);
    let _ = MUTED.remove(key);
    h2_walk::forget(key);
}

/// Place a read of `len` bytes in its connection's ingress stream: its
/// base and position, and whether it lies wholly inside the muted range (not copied).
#[inline(always)]
fn place_read(key: SslKey, len: u64) -> (u64, u64, bool) {
    let (base, pos) = match IN_POS.get_ptr_mut(key) {
        // SAFETY: a live map value. Reads on one connection don't overlap
        // (a TLS library serialises them); a race only misplaces positions,
        // which user space sees as a jump it can't explain.
        Some(p) => unsafe {
            let at = (*p).next;
            (*p).next = at.wrapping_add(len);
            ((*p).base, at)
        },
        None => {
            // x16: a connection would have to read 16 bytes every nanosecond of
            // its life for its positions to reach the next one's base.
            let base = unsafe { bpf_ktime_get_ns() }.wrapping_mul(16).max(1);
            let _ = IN_POS.insert(key, InPos { base, next: base.wrapping_add(len) }, 0);
            (base, base)
        }
    };
    let Some(m) = (unsafe { MUTED.get(key) }).copied() else {
        return (base, pos, false);
    };
    let end = pos.wrapping_add(len);
    // A range below the base is an earlier connection's under a reused key.
    let current = m.from >= base;
    if current && pos >= m.from && end <= m.to && end >= pos {
        return (base, pos, true);
    }
    if !current || end > m.to {
        let _ = MUTED.remove(key);
    }
    (base, pos, false)
}

/// Has user space told us to skip this connection? Not when it told so of
/// an earlier connection under the same key (see the module's prose): that
/// word goes, and this connection is copied.
#[inline(always)]
pub(crate) fn ignored(pid_tgid: u64, conn: u64) -> bool {
    let key = SslKey { tgid: pid_tgid >> 32, ssl: conn };
    let Some(of) = (unsafe { IGNORED_CONNS.get(key) }).copied() else {
        return false;
    };
    if of != 0 && unsafe { IN_POS.get(key) }.map(|p| p.base) != Some(of) {
        let _ = IGNORED_CONNS.remove(key);
        count_loss(LossCounter::IgnoreStale, 1);
        return false;
    }
    count_loss(LossCounter::FilteredIgnored, 1);
    true
}

/// A write's place: the connection's base (created at its first copied
/// call) and whether anything has been read on it.
#[inline(always)]
fn place_write(key: SslKey) -> (u64, bool) {
    // SAFETY: a live map value, read once.
    if let Some(p) = unsafe { IN_POS.get(key) } {
        return (p.base, p.next != p.base);
    }
    let base = unsafe { bpf_ktime_get_ns() }.wrapping_mul(16).max(1);
    let _ = IN_POS.insert(key, InPos { base, next: base }, 0);
    (base, false)
}

/// What one copied call is: whose connection, which bytes, from which hook.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Emit {
    pub(crate) conn: u64,
    pub(crate) buf: u64,
    pub(crate) fd: i32,
    pub(crate) source: Source,
}

/// Copy `len` bytes at `e.buf` into the ring buffer as ordered chunks.
#[inline(always)]
pub(crate) fn emit_data(pid_tgid: u64, e: &Emit, direction: u32, len: u64) {
    let meta = u64::from(e.fd as u32) | (u64::from(e.source as u32) << 32) | (u64::from(direction) << 40);
    tokentap_emit(pid_tgid, e.conn, e.buf, len, meta);
}

/// [`emit_data`] as a global BPF function (exported by the linker, see
/// `agent/build.rs`): the verifier checks it once per program, on its own,
/// and a call of it costs the caller's verification one instruction. As a
/// static function its loops (the h2 walk, the segments, the chunks) were
/// verified again at every call site and, inside the loops of vectored calls
/// (`sockets::copy_iov`, `rustls::walk_one`), again per simulated iteration:
/// past the verifier's million instructions on some kernels. Arguments are
/// scalars, as a global function's must be: `meta` packs the fd (bits 0-31),
/// the source (32-39) and the direction (40-47).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tokentap_emit(pid_tgid: u64, conn: u64, buf: u64, len: u64, meta: u64) -> i64 {
    let source = match (meta >> 32) & 0xff {
        1 => Source::OpenSsl,
        2 => Source::GoTls,
        3 => Source::Socket,
        4 => Source::BoringSsl,
        5 => Source::Rustls,
        6 => Source::Java,
        _ => return 0,
    };
    let e = Emit { conn, buf, fd: meta as u32 as i32, source };
    emit(pid_tgid, &e, ((meta >> 40) & 0xff) as u32, len);
    0
}

#[inline(always)]
fn emit(pid_tgid: u64, e: &Emit, direction: u32, len: u64) {
    if len == 0 {
        return;
    }
    let key = SslKey { tgid: pid_tgid >> 32, ssl: e.conn };
    // Another agent's connection (an upgrade in progress): not ours to copy.
    // Counted: the call began at a program that added to the thread's call
    // count (`handover::call_begins`) on this same thread. Not Go's (a
    // goroutine may end its call on another thread), rustls' reads and
    // Java's (one program, no entry before it).
    let counted = matches!(e.source, Source::OpenSsl | Source::BoringSsl | Source::Socket)
        || (e.source == Source::Rustls && direction != DIR_INGRESS);
    let owned = crate::handover::owns(key, direction, e.buf, counted);
    if owned == Owned::No {
        return;
    }
    let at = if direction == DIR_INGRESS {
        let (base, pos, muted) = place_read(key, len);
        if muted {
            count_loss(LossCounter::MutedReads, 1);
            return;
        }
        (base, pos)
    } else {
        let (base, read_yet) = place_write(key);
        h2_walk::on_egress(key, e.buf, len, read_yet);
        // Egress has no position (0), only the base naming the connection.
        (base, 0)
    };
    let taken = owned == Owned::Taken;
    if !nested(|slot| copy_read(pid_tgid, e, direction, len, at, taken, slot)) {
        count_loss(LossCounter::ScratchBusy, 1);
        // Its place in the stream is taken: the next chunk says a call is missing.
        mark_gap(key);
    }
}

/// The connection lost a call: its next chunk carries [`FLAG_GAP_BEFORE`].
#[inline(always)]
pub(crate) fn mark_gap(key: SslKey) {
    let _ = GAPPED.insert(key, 1, 0);
}

/// Copy a call: whole, or on a walked HTTP/2 connection the segments of a
/// read the walk keeps ([`h2_walk`]), each its own call; when the read ended
/// inside skipped bytes, the last segment's call length spans to its end. A
/// walked read that keeps nothing is not copied, unless it is the first of a
/// connection taken over (its flag must reach user space) or crosses a mark
/// (`h2_walk::marks`): then an empty call sits at its end.
#[inline(always)]
fn copy_read(pid_tgid: u64, e: &Emit, direction: u32, len: u64, (base, pos): (u64, u64), taken: bool, slot: u32) {
    let mut segmented = false;
    let mut pos = pos;
    if direction == DIR_INGRESS {
        let key = SslKey { tgid: pid_tgid >> 32, ssl: e.conn };
        let (shift, plan) = h2_walk::plan_read(key, base, pos, len, e.buf, slot);
        if shift != 0 {
            move_count(key, shift);
            pos = pos.wrapping_add(shift);
        }
        if let Some(plan) = plan {
            // SAFETY: this CPU's plan for this nesting slot, just written.
            let (skipped, overflow, kept) = unsafe { ((*plan).skipped, (*plan).overflow, (*plan).n) };
            if skipped > 0 && overflow == 0 {
                count_loss(LossCounter::MutedReads, 1);
                segmented = true;
                if kept == 0 && !taken && !h2_walk::marks(pos, len) {
                    return;
                }
            }
            h2_walk::recorded(key, base, pos.wrapping_add(len));
        }
    }
    copy_calls(pid_tgid, e, direction, len, (base, pos), taken, segmented, slot);
}

/// This agent's count of a connection's ingress moves on by `by` bytes (see
/// `h2_walk::plan_read`): the read just placed, and every one after it.
#[inline(always)]
fn move_count(key: SslKey, by: u64) {
    if let Some(p) = IN_POS.get_ptr_mut(key) {
        // SAFETY: a live map value; reads of one connection are serialised.
        unsafe { (*p).next = (*p).next.wrapping_add(by) };
    }
}

/// Run `f` with this CPU's scratch slot for the current nesting level (every
/// per-CPU scratch map has `SCRATCH_SLOTS` of them); false when every slot is
/// taken and `f` did not run.
#[inline(always)]
pub(crate) fn nested(f: impl FnOnce(u32)) -> bool {
    let Some(depth_ptr) = SCRATCH_DEPTH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's value of a live per-CPU map. A program preempted on this
    // CPU by another one sees the incremented depth and takes the next slot.
    let slot = unsafe { *depth_ptr };
    unsafe { *depth_ptr = slot.wrapping_add(1) };
    let ran = slot < SCRATCH_SLOTS;
    if ran {
        f(slot);
    }
    unsafe { *depth_ptr = slot };
    ran
}

/// State shared with the per-chunk callback of `bpf_loop`, in [`COPIES`].
#[repr(C)]
#[derive(Clone, Copy)]
struct CopyCtx {
    buf: u64,
    /// The bytes the hook said the call moved.
    len: u64,
    /// The read's place in its stream (a segment's is `pos` + its start).
    pos: u64,
    /// Offset in the current call (segment) of the chunk to copy next.
    off: u64,
    /// The current call: 0, or the index of the kept segment.
    call: u32,
    /// 1: the calls are the kept segments of an HTTP/2 walk's plan.
    segmented: u32,
    slot: u32,
    /// Wake user space after the last chunk (see [`PROCS_SEEN`]).
    wake: u32,
    /// The connection was just taken over: flag the first chunk.
    taken: u32,
    _pad: u32,
}

/// One copy's state per nesting slot (as [`SCRATCH`]). In a map, not on the
/// stack: the callback's walk from call to call, were it on the stack, is
/// known to the verifier step by step, which then follows every step of the
/// loop (past its limit); read from a map, it checks the body once.
#[map]
static COPIES: PerCpuArray<CopyCtx> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// `(from, to, span)` of call `i` of a copy: bytes `[from, to)` of the hook's
/// buffer, said to span `span` bytes of the stream. Unsegmented: the whole
/// call. Segmented: the kept segments, the last spanning to the read's end
/// (the bytes skipped after it need no chunk), or with nothing kept one empty
/// call at the read's end.
#[inline(always)]
fn call_at(c: &CopyCtx, i: u32) -> Option<(u64, u64, u64)> {
    if c.segmented == 0 {
        return if i == 0 { Some((0, c.len, c.len)) } else { None };
    }
    match h2_walk::kept(c.slot, i as u64) {
        Some([from, to]) if from < to && to <= c.len => {
            let span = if h2_walk::kept(c.slot, i as u64 + 1).is_none() { c.len - from } else { to - from };
            Some((from, to, span))
        }
        Some(_) => None,
        None if i == 0 => Some((c.len, c.len, 0)),
        None => None,
    }
}

/// Copy a hook's call as ordered chunks: whole, or as the kept segments of a
/// walked HTTP/2 read (`segmented`). One `bpf_loop` over every chunk of every
/// segment: a loop per segment inside a loop over them stacked two frames
/// more than the verifier's 512 bytes allow under the socket hooks' iovec loop.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn copy_calls(
    pid_tgid: u64,
    e: &Emit,
    direction: u32,
    len: u64,
    (base, pos): (u64, u64),
    taken: bool,
    segmented: bool,
    slot: u32,
) {
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
    h.stream_base = base;
    h.fd = match e.fd {
        crate::openssl::FD_OF_SSL => crate::openssl::fd_of(pid_tgid >> 32, e.conn),
        crate::go_tls::FD_OF_GO_CONN if e.source == Source::GoTls => crate::go_tls::go_conn_fd(e.conn),
        fd => fd,
    };
    h.source = e.source as u32;
    // Into the scratch itself: a copy on the stack would cost the deep copy
    // path 16 bytes of its 512, and zeroing it a memset the verifier walks.
    let comm = h.comm.as_mut_ptr();
    if unsafe { bpf_get_current_comm(comm.cast(), 16) } != 0 {
        // SAFETY: the 16 bytes of the live map value's name.
        unsafe { words::zero_bytes(comm.cast(), 16) };
    }
    // A process's first captured call wakes user space at once: it reads the
    // process's attribution (/proc/PID: executable, cgroup, environment) while
    // the process still lives — a short-lived client may exit within milliseconds.
    let tgid = (pid_tgid >> 32) as u32;
    let wake = u32::from(unsafe { PROCS_SEEN.get(tgid) }.is_none());
    if wake == 1 {
        let _ = PROCS_SEEN.insert(tgid, 1, 0);
    }
    let Some(c) = COPIES.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: this CPU's copy state for this nesting slot, written in place:
    // a value built first would be on the stack, of which the deep copy path
    // has little to spare.
    unsafe {
        (*c).buf = e.buf;
        (*c).len = len;
        (*c).pos = pos;
        words::zero(&mut (*c).off);
        words::zero(&mut (*c).call);
        (*c).segmented = u32::from(segmented);
        (*c).slot = slot;
        (*c).wake = wake;
        (*c).taken = u32::from(taken);
    }
    // bpf_loop (5.17+) lets the verifier check the body once, however many
    // chunks a call needs; an unrolled bounded loop exceeds its budget.
    let n = MAX_CHUNKS + h2_walk::MAX_KEPT as u32 + 1;
    let mut ctx = slot as u64;
    unsafe { bpf_loop(n, copy_one_chunk as *mut core::ffi::c_void, (&mut ctx as *mut u64).cast(), 0) };
}

/// `bpf_loop` callback: copy the current call's next chunk; returns 1 to stop.
#[inline(never)]
extern "C" fn copy_one_chunk(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the nesting slot on copy_calls' stack.
    let slot = unsafe { *(ctx as *const u64) } as u32;
    let Some(ctx) = COPIES.get_ptr_mut(slot) else {
        return 1;
    };
    // SAFETY: this CPU's copy state for this nesting slot.
    let ctx = unsafe { &mut *ctx };
    let Some((from, to, span)) = call_at(ctx, ctx.call) else {
        return 1;
    };
    let Some(ev) = SCRATCH.get_ptr_mut(ctx.slot) else {
        return 1;
    };
    // SAFETY: per-CPU scratch slot owned by this nesting level.
    let ev = unsafe { &mut *ev };
    let len = to - from;
    let offset = ctx.off;
    // An empty call is one empty chunk: where a read skipped to (`h2_walk`).
    if offset >= len && (offset > 0 || len > 0) {
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
    let src = (ctx.buf + from + offset) as *const core::ffi::c_void;
    let rc = if n > 0 { unsafe { raw_probe_read_user(ev.data.as_mut_ptr().cast(), n as u32, src) } } else { 0 };
    if rc != 0 {
        flags |= FLAG_READ_FAILED;
        count_loss(LossCounter::ReadFailed, 1);
    }
    let key = SslKey { tgid: ev.header.tgid as u64, ssl: ev.header.conn };
    if offset == 0 && unsafe { GAPPED.get(key) }.is_some() {
        flags |= FLAG_GAP_BEFORE;
        let _ = GAPPED.remove(key);
    }
    if offset == 0 && ctx.call == 0 && ctx.taken == 1 {
        flags |= FLAG_TAKEN_OVER;
    }
    ev.header.call_len = span;
    ev.header.stream_pos = ctx.pos + from;
    ev.header.offset = offset;
    ev.header.len = n as u32;
    ev.header.flags = flags;
    let more = !last || call_at(ctx, ctx.call + 1).is_some();
    let total = DATA_HEADER_LEN + n as usize;
    // SAFETY: `total` <= size_of::<DataEvent>() and `ev` is a live map value.
    let bytes = unsafe { core::slice::from_raw_parts((ev as *const DataEvent).cast::<u8>(), total) };
    let wake = if !more && ctx.wake == 1 { BPF_RB_FORCE_WAKEUP } else { wakeup_flags() };
    if EVENTS.output::<[u8]>(bytes, wake).is_err() {
        count_loss(LossCounter::RingFull, 1);
        mark_gap(key);
    }
    if last {
        ctx.call += 1;
        ctx.off = 0;
    } else {
        ctx.off = offset + n;
    }
    if more {
        0
    } else {
        1
    }
}
