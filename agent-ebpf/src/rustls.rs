//! rustls (Rust services using reqwest or hyper-rustls, tokio-rustls, ureq;
//! Python extensions written in Rust).
//!
//! Why these hooks: rustls's public I/O (`Writer::write`, `Reader::read`) is
//! small, generic glue that the compiler inlines into the caller, so it has no
//! address of its own in an optimised build. Two private functions of
//! `CommonState` do survive optimisation in rustls 0.23, fat LTO included, and
//! have kept their shape from rustls 0.21 to 0.23 (in 0.21/0.22 the receive
//! function is a one-line append that release builds inline: such a build is
//! listed as not probed):
//! - `send_appdata_encrypt(&mut self, payload, limit) -> usize`: every byte of
//!   application data on its way to encryption (data written before the
//!   handshake finished is buffered and passes here later). The payload is a
//!   `&[u8]` (0.21, 0.22: two registers) or an `OutboundChunks` (0.23: a pointer
//!   to either one slice or a list of slices with a start and end offset, read
//!   at entry); the return value is how many bytes were taken, so the copy is
//!   at the return (the bytes are the caller's, unchanged).
//! - `take_received_plaintext(&mut self, bytes: Payload)`: every decrypted
//!   application-data record, as a `Vec<u8>` or a borrowed slice (the
//!   pointer at +8, the length at +16 of the argument, in both shapes): copied
//!   at entry, the bytes are final.
//!   Both receive the same `CommonState`, so its address names the connection in
//!   both directions.
//!
//! Where the compiler inlined `send_appdata_encrypt` into its caller
//! `buffer_plaintext(&mut self, payload: OutboundChunks, sendable: &mut _) ->
//! usize` (litellm's Rust core), the same send program goes on that caller:
//! same registers, same result (bytes accepted; bytes buffered before the
//! handshake count here, once).
//!
//! User space finds them by symbol (the agent's discovery/rustls.rs), or in a
//! stripped 0.23 by their code (discovery/rustls_stripped.rs), and picks the
//! send program by the rustls version. What they fall back to: a file where
//! neither finds them is listed as not probed, with the reason. No function marks the
//! end of a connection (the value is dropped): user space restarts a stream
//! that begins anew at a reused address. An `OutboundChunks` with more slices
//! than we walk gives its connection up (counted) rather than leave a hole.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_loop},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tokentap_agent_common::{EventKind, LossCounter, Source, DIR_EGRESS, DIR_INGRESS};

use crate::call_args::TaskStorage;
use crate::chunks::{emit_data, ignored, Emit};
use crate::ring::{count_loss, emit_control};

/// One `send_appdata_encrypt` call, saved at entry: the `OutboundChunks`
/// argument is read there, as the callee owns that copy and may reuse it.
#[repr(C)]
#[derive(Clone, Copy)]
struct SendArgs {
    state: u64,
    /// `&[u8]`: (pointer, length, 0, 0); `OutboundChunks`: its four words.
    words: [u64; 4],
    chunks: u64,
}

/// The `send_appdata_encrypt` call in flight on each thread, in its task
/// storage ([`crate::call_args`]): `state` 0 when none (a `&mut CommonState`
/// is never null).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "RUSTLS_CALLS")]
static RUSTLS_CALLS: TaskStorage<SendArgs> = TaskStorage::new();

/// More than any real call moves: a larger length means we misread the call.
const MAX_CALL: u64 = 1 << 30;

/// Slices of one `OutboundChunks` walked (hyper hands a request's head and
/// body as two; `bpf_loop` makes a larger bound free for the verifier).
const MAX_SLICES: u32 = 64;

fn save(ctx: &ProbeContext, chunks: bool) {
    let state: u64 = ctx.arg(0).unwrap_or(0);
    let arg: u64 = ctx.arg(1).unwrap_or(0);
    let words = if chunks {
        let mut w = [0u64; 4];
        let Ok(v) = (unsafe { bpf_probe_read_user(arg as *const [u64; 4]) }) else { return };
        w.copy_from_slice(&v);
        w
    } else {
        [arg, ctx.arg(2).unwrap_or(0), 0, 0]
    };
    let args = SendArgs { state, words, chunks: chunks as u64 };
    match RUSTLS_CALLS.current(true) {
        // SAFETY: the current thread's live storage; only its own probes touch it.
        Some(p) => unsafe { *p = args },
        None => count_loss(LossCounter::ArgsMapFull, 1),
    }
    crate::handover::call_begins(bpf_get_current_pid_tgid(), true);
}

fn read_u64(at: u64) -> Option<u64> {
    unsafe { bpf_probe_read_user(at as *const u64) }.ok()
}

#[uprobe]
pub fn rustls_send_slice(ctx: ProbeContext) -> u32 {
    save(&ctx, false);
    0
}

#[uprobe]
pub fn rustls_send_chunks(ctx: ProbeContext) -> u32 {
    save(&ctx, true);
    0
}

#[uretprobe]
pub fn rustls_send_ret(ctx: RetProbeContext) -> u32 {
    let Some(p) = RUSTLS_CALLS.current(false) else {
        return 0;
    };
    // SAFETY: as in `save`.
    let args = unsafe { *p };
    if args.state == 0 {
        return 0;
    }
    unsafe { (*p).state = 0 };
    let key = bpf_get_current_pid_tgid();
    let taken: u64 = ctx.ret();
    if taken == 0 || taken > MAX_CALL || ignored(key, args.state) {
        return 0;
    }
    let [w0, w1, w2, w3] = args.words;
    let (buf, len) = if args.chunks == 0 {
        (w0, w1)
    } else if w0 == 0 {
        // OutboundChunks::Single(&[u8]): 0 in its first word (the niche of
        // Multiple's non-null slice pointer), then the slice.
        (w1, w2)
    } else {
        // OutboundChunks::Multiple {chunks.ptr, chunks.len, start, end}.
        if w2 <= w3 && taken <= w3 - w2 {
            let walk =
                Walk { pid_tgid: key, conn: args.state, chunks: w0, count: w1, from: w2, to: w2 + taken, pos: 0 };
            send_multiple(walk);
        }
        return 0;
    };
    if taken <= len {
        emit_data(key, &Emit { conn: args.state, buf, fd: -1, source: Source::Rustls }, DIR_EGRESS, taken);
    }
    0
}

/// One walk over an `OutboundChunks::Multiple` (on the stack).
#[repr(C)]
struct Walk {
    pid_tgid: u64,
    conn: u64,
    chunks: u64,
    count: u64,
    /// The bytes taken: `[from, to)` of the slices laid end to end.
    from: u64,
    to: u64,
    /// Where the next slice starts.
    pos: u64,
}

/// Copy each slice's part of the bytes taken, in order. `bpf_loop` keeps the
/// verifier's work to one pass over the body (an unrolled loop with a copy in
/// each iteration exceeds its budget).
fn send_multiple(mut w: Walk) {
    unsafe { bpf_loop(MAX_SLICES, walk_one as *mut core::ffi::c_void, (&mut w as *mut Walk).cast(), 0) };
    if w.pos < w.to {
        // Bytes we could not copy: give the connection up rather than leave a hole.
        count_loss(LossCounter::IovOverflow, 1);
        emit_control(EventKind::ConnClosed, w.conn);
    }
}

/// `bpf_loop` callback: slice `i`; returns 1 to stop.
#[inline(never)]
extern "C" fn walk_one(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the Walk on send_multiple's stack.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    if i >= w.count || w.pos >= w.to {
        return 1;
    }
    let slice = w.chunks + 16 * i;
    let (Some(base), Some(len)) = (read_u64(slice), read_u64(slice + 8)) else {
        return 1;
    };
    if len > MAX_CALL {
        return 1;
    }
    let lo = if w.pos > w.from { w.pos } else { w.from };
    let hi = if w.pos + len < w.to { w.pos + len } else { w.to };
    if lo < hi {
        let e = Emit { conn: w.conn, buf: base + (lo - w.pos), fd: -1, source: Source::Rustls };
        emit_data(w.pid_tgid, &e, DIR_EGRESS, hi - lo);
    }
    w.pos += len;
    0
}

#[uprobe]
pub fn rustls_recv(ctx: ProbeContext) -> u32 {
    let state: u64 = ctx.arg(0).unwrap_or(0);
    let payload: u64 = ctx.arg(1).unwrap_or(0);
    let key = bpf_get_current_pid_tgid();
    let (Some(buf), Some(len)) = (read_u64(payload + 8), read_u64(payload + 16)) else {
        return 0;
    };
    if len == 0 || len > MAX_CALL || ignored(key, state) {
        return 0;
    }
    emit_data(key, &Emit { conn: state, buf, fd: -1, source: Source::Rustls }, DIR_INGRESS, len);
    0
}
