//! HTTP/2 response bodies no one records, not copied.
//!
//! Why the kernel follows frames: on an HTTP/2 connection a download's DATA
//! frames interleave with every other stream's on one stream of bytes, so a
//! body is not one range of it (HTTP/1.1's muting, [`crate::chunks`]), and a
//! frame's length is known only from its header. User space lags the kernel
//! by megabytes at download rates: by the time it has read a frame header,
//! the kernel is long past it. So the kernel reads each frame header itself,
//! from the connection's first ingress byte on: a connection becomes walked
//! when its first write (before anything was read) starts with the client
//! preface. User space names the streams it will not record ([`H2_MUTED`],
//! after their first DATA frame); of their later DATA frames the kernel skips
//! the payload, and of those of at least [`MIN_DROPPED_FRAME`] bytes without
//! END_STREAM the 9-byte header too. A read is then copied as the segments
//! it keeps, each at its stream position; when it ends inside skipped bytes,
//! the call length of its last segment spans to its end. A read that keeps
//! nothing is not copied at all: the agent learns of the bytes skipped from
//! the next record's position (every skip that goes past a frame's end ends at
//! a frame boundary, where the next kept bytes begin).
//!
//! Why so few records: a ring record costs ~250-300 ns however small, and a
//! download's every read held one (a frame header, or an empty call at its
//! end): over half of curl's time in the probes (docs/performance.md). A
//! frame header is kept where the agent needs it: a muted stream's END_STREAM
//! (it forgets the stream), a header split across reads (its first bytes are
//! copied before the kernel knows its frame), a small frame (a slow stream's:
//! its records also keep the connection from looking idle to the agent). And a
//! read that crosses a [`MARK_EVERY`] boundary of the stream is copied, if
//! empty, so that a long muted download still shows the connection alive.
//!
//! An upgrade: the maps are pinned with the handover maps, so the agent
//! taking a connection over goes on with the walk, from its first read of it
//! (where the agent before stopped), and the streams named stay named (the
//! agent before hands them on with the connection's decoding state). The
//! state handed on is as of the last read the agent before copied; reads it
//! walked after that without a record are skipped bytes the next agent must
//! know of. [`H2_RECORDED`] tells where that last copied read ended, and the
//! next agent's count of the connection starts that far on (`plan_read`), so
//! its decoder meets them as a skip in its first record's position.
//!
//! What it falls back to: a read it can't place (its position is not where the
//! walk stands), more frames in one read than [`MAX_STEPS`] follows (a plain
//! HTTP/2 socket's read of over 18 KB of empty frames), or a
//! connection whose preface was not seen (open before the agent) is not
//! walked, and all its bytes are copied, as before muting (counted in
//! `H2WalkStopped` when a walk ends early). More kept segments in one read
//! than [`MAX_KEPT`] copy that read whole. User space checks that every skip
//! begins inside a DATA frame of a stream it named, or at a frame's start
//! while it has streams named, and the bytes after it are parsed as frames
//! (HPACK state included), so a walk gone wrong costs that connection's
//! decoding (counted); a skip that ends past a frame's end can't be checked
//! byte by byte: its frames were never seen, only that the walk placed every
//! read where it stood.
use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_user as raw_probe_read_user},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use tokentap_agent_common::{H2Stream, H2Walk, LossCounter, SslKey, SCRATCH_SLOTS};

use crate::ring::count_loss;
use crate::words;

const DATA: u64 = 0;
const END_STREAM: u64 = 0x1;
const FRAME_HEADER: u64 = 9;
/// Steps followed in one read, one a frame (and one more for a header split
/// across reads): a TLS record's 16 KiB of the smallest frames (9 bytes,
/// empty) is 1,821. The verifier checks a step once, whatever the count.
const MAX_STEPS: u32 = 2048;
/// A muted DATA frame this long or longer (without END_STREAM) is skipped
/// with its header; a shorter one keeps its header (see the module's prose).
pub(crate) const MIN_DROPPED_FRAME: u64 = 4096;
/// A walked read that crosses a multiple of this in its stream is copied even
/// when it keeps nothing (an empty call): 256 KiB, one read in 16 of a
/// download's 16 KiB reads.
const MARK_EVERY: u64 = 1 << 18;
/// Kept segments of one read copied apart; more copy the read whole.
pub(crate) const MAX_KEPT: usize = 4;

type Walk = H2Walk;

/// Walks of HTTP/2 connections; pinned with the handover maps (`--handover-dir`).
#[map]
static H2_WALKS: LruHashMap<SslKey, Walk> = LruHashMap::with_max_entries(16384, 0);

/// Streams user space will not record (see the module's prose). The kernel
/// removes one at its END_STREAM; the rest age out (a stream id is never
/// reused on its connection, and the walk's id is unique to it). The walk
/// keeps the stream of its last muted frame (`H2Walk::muted`), so one aged
/// out stays muted while its frames follow each other. Pinned with the
/// handover maps.
#[map]
pub(crate) static H2_MUTED: LruHashMap<H2Stream, u32> = LruHashMap::with_max_entries(16384, 0);

/// Where the last copied read of each walked connection ended: the base of
/// the agent that copied it and the position (see the module's prose).
/// Pinned with the handover maps.
#[map]
static H2_RECORDED: LruHashMap<SslKey, [u64; 2]> = LruHashMap::with_max_entries(16384, 0);

/// One read's walk and what to copy of it: `kept` segments as `[from, to)`
/// offsets in the read. In a per-CPU map, not on the stack: the copy that
/// follows needs most of the 512 bytes a program's calls may share.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    w: Walk,
    key: SslKey,
    buf: u64,
    pos: u64,
    end: u64,
    pub(crate) kept: [[u64; 2]; MAX_KEPT],
    pub(crate) n: u64,
    /// More segments than `kept` holds: copy the read whole.
    pub(crate) overflow: u64,
    /// Bytes skipped in this read.
    pub(crate) skipped: u64,
}

/// One plan per nesting slot, as the chunk scratch (`chunks::nested`).
#[map]
static PLANS: PerCpuArray<Plan> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// An egress call of `len` bytes at `buf` on a connection (`read_yet`: has
/// anything been read on it): a connection's first write starting with the
/// client preface starts its walk; the preface again under a walked key (a
/// new connection on a reused object whose end was not seen) stops it.
#[inline(always)]
pub(crate) fn on_egress(key: SslKey, buf: u64, len: u64, read_yet: bool) {
    if len < 24 {
        return;
    }
    let walked = unsafe { H2_WALKS.get(key) }.is_some();
    if !walked && read_yet {
        return;
    }
    // A word, not a byte array: zeroing one is a memset call (`words`).
    let mut start = 0u64;
    let src = buf as *const core::ffi::c_void;
    let read = unsafe { raw_probe_read_user((&mut start as *mut u64).cast(), 8, src) };
    if read != 0 || start != u64::from_ne_bytes(*b"PRI * HT") {
        return;
    }
    if walked {
        let _ = H2_WALKS.remove(key);
        count_loss(LossCounter::H2WalkStopped, 1);
    } else {
        let mut w = core::mem::MaybeUninit::<Walk>::uninit();
        // SAFETY: a walk is eight u64 words, all zero at its start.
        let w = unsafe {
            words::zero_words(w.as_mut_ptr());
            &*w.as_ptr()
        };
        let _ = H2_WALKS.insert(key, w, 0);
    }
}

/// The connection's key may be reused: forget its walk.
pub(crate) fn forget(key: SslKey) {
    let _ = H2_WALKS.remove(key);
    let _ = H2_RECORDED.remove(key);
}

/// A walked read that ended at `end` of the count from `base` was copied.
#[inline(always)]
pub(crate) fn recorded(key: SslKey, base: u64, end: u64) {
    match H2_RECORDED.get_ptr_mut(key) {
        // SAFETY: a live map value; reads of one connection are serialised.
        Some(r) => unsafe {
            (*r)[0] = base;
            (*r)[1] = end;
        },
        None => {
            let _ = H2_RECORDED.insert(key, [base, end], 0);
        }
    }
}

/// Must a walked read at `[pos, pos + len)` that keeps nothing be copied
/// anyway (an empty call): it crosses a [`MARK_EVERY`] boundary.
#[inline(always)]
pub(crate) fn marks(pos: u64, len: u64) -> bool {
    (pos / MARK_EVERY) != (pos.wrapping_add(len) / MARK_EVERY)
}

/// Follow a read of `len` bytes at `buf`, placed at `pos` of the stream
/// counted from `base`, on a walked connection: how far the read (and the
/// count after it) moves on, nonzero at this agent's first read of a
/// connection taken over (whether or not the walk goes on), and the plan in
/// this slot's [`PLANS`] entry, or None (not walked, or the walk stopped:
/// copy it whole).
#[inline(always)]
pub(crate) fn plan_read(key: SslKey, base: u64, pos: u64, len: u64, buf: u64, slot: u32) -> (u64, Option<*mut Plan>) {
    let Some(wp) = H2_WALKS.get_ptr_mut(key) else {
        return (0, None);
    };
    let Some(plan) = PLANS.get_ptr_mut(slot) else {
        return (0, None);
    };
    // SAFETY: this CPU's plan for this nesting slot, and a live map value
    // (reads on one connection are serialised by its TLS library; a race
    // only stops the walk at the next check). The walk is copied map to map:
    // a copy on the stack would cost the deep copy path 64 bytes of its 512.
    let p = unsafe { &mut *plan };
    unsafe { words::copy(&mut p.w, wp) };
    let w = &mut p.w;
    let mut shift = 0;
    if w.base == 0 {
        w.id = base;
        w.base = base;
        w.at = pos;
        w.payload_end = pos;
    } else if w.base != base && pos == base {
        // This agent's first read of a connection another agent walked (an
        // upgrade: it took the connection over where that one stopped), or
        // of one whose count restarted: it goes on from the same byte. The
        // reads walked after the last copied one are a skip to whoever
        // decodes next: the count moves on by as much. A last record of
        // another count (an agent that keeps no such mark copies every read
        // it walks) or none moves nothing.
        if let Some(r) = unsafe { H2_RECORDED.get(key) } {
            if r[0] == w.base && r[1] < w.at {
                shift = w.at - r[1];
                count_loss(LossCounter::H2WalkMovedOn, 1);
            }
        }
        let left = w.payload_end.saturating_sub(w.at);
        w.base = base;
        w.at = pos + shift;
        w.payload_end = w.at + left;
        // This agent's decoder stands where the one before stopped, which its
        // moved count puts at the base: what the next agent's shift counts
        // from, should this one copy nothing before it leaves.
        recorded(key, base, base);
    }
    let pos = pos + shift;
    if w.base != base || w.at != pos {
        // A read the walk never saw (dropped before it, or a race): what the
        // kernel skipped since can't be told from what it lost.
        stop(key);
        crate::chunks::mark_gap(key);
        return (shift, None);
    }
    let end = pos.wrapping_add(len);
    p.key = key;
    p.buf = buf;
    p.pos = pos;
    p.end = end;
    words::zero(&mut p.n);
    words::zero(&mut p.overflow);
    words::zero(&mut p.skipped);
    let mut ctx = slot as u64;
    unsafe { bpf_loop(MAX_STEPS, step as *mut core::ffi::c_void, (&mut ctx as *mut u64).cast(), 0) };
    // SAFETY: as above.
    let p = unsafe { &*plan };
    if p.w.at != end {
        stop(key);
        return (shift, None);
    }
    // SAFETY: as above.
    unsafe { words::copy(wp, &p.w) };
    (shift, Some(plan))
}

/// Segment `index` of the plan [`plan_read`] left in nesting slot `slot`
/// (read in place: the plan is too big for the stack).
#[inline(always)]
pub(crate) fn kept(slot: u32, index: u64) -> Option<[u64; 2]> {
    let p = PLANS.get_ptr(slot)?;
    // SAFETY: this CPU's plan for this nesting slot.
    let p = unsafe { &*p };
    if index < p.n && index < MAX_KEPT as u64 {
        Some(p.kept[index as usize])
    } else {
        None
    }
}

fn stop(key: SslKey) {
    let _ = H2_WALKS.remove(key);
    count_loss(LossCounter::H2WalkStopped, 1);
}

/// `bpf_loop` callback: follow one frame of the read (its header, or the
/// rest of one split across reads, and its payload's part in the read);
/// returns 1 at the read's end (or on a failed read of user memory).
#[inline(never)]
extern "C" fn step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the slot number on plan_read's stack.
    let slot = unsafe { *(ctx as *const u64) } as u32;
    let Some(plan) = PLANS.get_ptr_mut(slot) else {
        return 1;
    };
    // SAFETY: this CPU's plan for this nesting slot.
    let c = unsafe { &mut *plan };
    let at = c.w.at;
    if at >= c.end {
        return 1;
    }
    if c.w.payload_end <= at {
        // A header, or the rest of one split across reads.
        let whole = c.w.have == 0;
        let need = FRAME_HEADER - c.w.have;
        let avail = c.end - at;
        let mut n = if need < avail { need } else { avail };
        n &= 15;
        if n == 0 || n > FRAME_HEADER {
            return 1;
        }
        let mut head = [0u64; 2];
        words::zero(&mut head[0]);
        words::zero(&mut head[1]);
        let src = (c.buf + (at - c.pos)) as *const core::ffi::c_void;
        if unsafe { raw_probe_read_user(head.as_mut_ptr().cast(), n as u32, src) } != 0 {
            return 1;
        }
        // SAFETY: the 16 bytes of `head`.
        let b = unsafe { &*head.as_ptr().cast::<[u8; 16]>() };
        let mut i = 0;
        while i < FRAME_HEADER as usize {
            if (i as u64) < n {
                if c.w.have == 0 {
                    c.w.first = b[i] as u64;
                } else {
                    c.w.acc = (c.w.acc << 8) | b[i] as u64;
                }
                c.w.have += 1;
            }
            i += 1;
        }
        c.w.at = at + n;
        if c.w.have < FRAME_HEADER {
            keep(c, at - c.pos, at + n - c.pos);
            return 0;
        }
        // acc holds header bytes 1..9: length's low 16 bits, type, flags, stream.
        let len = (c.w.first << 16) | ((c.w.acc >> 48) & 0xffff);
        let kind = (c.w.acc >> 40) & 0xff;
        let flags = (c.w.acc >> 32) & 0xff;
        let stream = c.w.acc & 0x7fff_ffff;
        words::zero(&mut c.w.have);
        words::zero(&mut c.w.acc);
        words::zero(&mut c.w.first);
        c.w.payload_end = c.w.at + len;
        // The stream of the last muted DATA frame, if the frame before this
        // one was it: a download's next frame is most often its own, and
        // then costs no lookup (user space never unmutes a stream).
        let last = c.w.muted >> 1;
        c.w.muted = 0;
        let mut dropped = false;
        if kind == DATA && len > 0 {
            let s = H2Stream { tgid: c.key.tgid, conn: c.key.ssl, base: c.w.id, stream };
            if (last != 0 && last == stream) || unsafe { H2_MUTED.get(s) }.is_some() {
                if flags & END_STREAM != 0 {
                    let _ = H2_MUTED.remove(s);
                    c.w.muted = 1;
                } else {
                    c.w.muted = (stream << 1) | 1;
                    // Skipped with its payload: whoever decodes goes on at the
                    // next frame's start (see the module's prose).
                    dropped = whole && len >= MIN_DROPPED_FRAME;
                }
            }
        }
        if dropped {
            c.skipped += n;
        } else {
            keep(c, at - c.pos, at + n - c.pos);
        }
    }
    // The payload's part in this read, in the same step as its header: a
    // read of many small frames (a streamed response a client reads late)
    // costs one step a frame.
    let at = c.w.at;
    if c.w.payload_end > at && at < c.end {
        let to = if c.w.payload_end < c.end { c.w.payload_end } else { c.end };
        if c.w.muted != 0 {
            c.skipped += to - at;
        } else {
            keep(c, at - c.pos, to - c.pos);
        }
        c.w.at = to;
    }
    0
}

/// Keep `[from, to)` of the read, joined to the last segment when it follows it.
#[inline(always)]
fn keep(plan: &mut Plan, from: u64, to: u64) {
    let n = plan.n as usize;
    if n > 0 && n <= MAX_KEPT && plan.kept[n - 1][1] == from {
        plan.kept[n - 1][1] = to;
    } else if n < MAX_KEPT {
        plan.kept[n] = [from, to];
        plan.n += 1;
    } else {
        plan.overflow = 1;
    }
}
