//! Client sockets open before the agent started, adopted: user space finds
//! them in `/proc` at start (`agent/src/open_sockets.rs`) and hands each to
//! [`adopt_socket`]; the socket programs (`crate::sockets`) then decide at
//! each call of an adopted socket ([`SOCK_ADOPTED`]) whether it is copied
//! from there ([`adopted`]).
//!
//! Why: the socket programs watch only the sockets they see `connect`.
//! During an upgrade (`--handover-dir`) the old agent hands each plaintext
//! HTTP keep-alive connection to the new one at its next request; unwatched,
//! every later call on it would be lost until the client reconnects.
//!
//! Why a program run by user space (`BPF_PROG_TEST_RUN`), after the socket
//! programs are attached, rather than user space writing the maps: the maps'
//! per-process fd bytes and slot counts are updated by the programs in place
//! (the counts atomically), which a write of whole values from user space
//! would race; and a socket connected between
//! a scan and an attach would be missed. What it falls back to: a socket
//! whose `connect` since the attach gave it an entry keeps that entry
//! (`BPF_NOEXIST`); one no agent copied is given up at its first call.
use aya_ebpf::{bindings::BPF_NOEXIST, macros::raw_tracepoint, programs::RawTracePointContext};
use tokentap_agent_common::{SockKey, SockState, SslKey, SOCKET_CONN, SOCK_ADOPTED, SOCK_HTTP, SOCK_OTHER};

use crate::handover::{holder, Holder};
use crate::sockets::SOCKETS;
use crate::watched::watch_fd;

/// Never attached: user space runs it (`BPF_PROG_TEST_RUN`) once for each
/// client socket it found open at start (`agent/src/open_sockets.rs`), after
/// the programs above are attached, so that its updates are the programs'
/// own (atomic where they are). Arguments: tgid, fd, the socket's id. The
/// socket is watched as adopted, unless a `connect` since the attach gave the
/// fd an entry (returns 1). A closed socket's fd taken meanwhile by a file or
/// an accepted socket is adopted too, and given up at its first call.
#[raw_tracepoint(tracepoint = "adopt")]
pub fn adopt_socket(ctx: RawTracePointContext) -> i32 {
    let (tgid, fd, id): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let (tgid, fd) = (tgid as u32, fd as i32);
    watch_fd(tgid, fd);
    let adopted = SockState { id, sent: 0, received: 0, state: SOCK_ADOPTED, _pad: 0 };
    match SOCKETS.insert(SockKey { tgid, fd }, adopted, BPF_NOEXIST as u64) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// A socket found open at start ([`SOCK_ADOPTED`]) made a call that does not
/// start a request: which state it goes on in, by who copies it. While
/// another agent that runs copies it, nothing changes: that agent hands it
/// over at a request's start (or, having left, at any call: then it is
/// this agent's, and copied from here, as one that exited mid-exchange
/// handing on its decoding state: the chunk says it was taken over, and user
/// space resumes from the state). One that exited at an exchange's end: the
/// next request decides. One that has left but not yet handed on its state
/// looks the same; its own program, which the kernel runs before this one on
/// the syscalls (the older first), moves the connection here on the same
/// call. Run after it instead (hooks placed apart by two versions), that
/// call is skipped, and the next one resumes from the state with a hole. No agent ever copied it: not HTTP (a database, a
/// TLS connection nobody greeted, a file that took a closed socket's fd),
/// unless it is reading a response (`reply`): an HTTP connection older than
/// every agent, copied from its next request. A function of its own, as
/// `crate::sockets`' `connected`: its locals stay out of the copy path's frames.
#[inline(never)]
pub(crate) fn adopted(pid_tgid: u64, fd: i32, reply: bool) -> u32 {
    match holder(SslKey { tgid: pid_tgid >> 32, ssl: SOCKET_CONN | fd as u32 as u64 }) {
        Holder::Nobody if !reply => SOCK_OTHER,
        Holder::Nobody | Holder::Running | Holder::Exited(false) => SOCK_ADOPTED,
        Holder::Mine | Holder::Exited(true) => SOCK_HTTP,
    }
}

/// A TLS record's header: content type 20-23 (change cipher spec, alert,
/// handshake, application data), version 3.x, a length no record exceeds
/// (2^14 + 2048). A response body read on a plaintext connection (JSON, an
/// event stream, text) never starts so; random bytes (audio) once in ~10^7.
#[inline(always)]
pub(crate) fn is_tls_record(b: &[u8; 8]) -> bool {
    let len = (b[3] as u16) << 8 | b[4] as u16;
    (20..=23).contains(&b[0]) && b[1] == 3 && b[2] <= 4 && len <= 18432
}
