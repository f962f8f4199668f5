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
//!
//! Reads blocked at start ([`adopt_read`]): a thread of a client with no
//! timeout waits for its answer inside `read`/`recvfrom`, begun before this
//! agent's `sys_enter` ran; that answer comes back after the old agent left
//! (a long generation), and without the call's arguments `sys_exit` could not
//! copy it. User space finds such a read in `/proc/PID/task/TID/syscall`
//! (`agent/src/blocked_calls.rs`) and hands its arguments here, flagged
//! ([`SOCK_CALL_FOUND`]) with the syscall's number. Its exit takes it only if
//! it is that syscall (and, on the raw tracepoint, on that fd): one that
//! returned between the look and the entry leaves an entry that a later
//! syscall of the thread would take, which [`found_exits`] refuses and user
//! space, looking again, removes ([`drop_found_read`]). Its own `sys_enter`
//! writes over it at the thread's next call on a watched socket. A write
//! blocked at start (a request body larger than the sockets' buffers) is
//! handed over the same way, its rest copied at its exit.
use aya_ebpf::{bindings::BPF_NOEXIST, macros::raw_tracepoint, programs::RawTracePointContext};
use tokentap_agent_common::{
    found_nr, SockArgs, SockKey, SockState, SslKey, SOCKET_CONN, SOCK_ADOPTED, SOCK_CALL_FOUND, SOCK_HTTP, SOCK_OTHER,
};

use crate::handover::{holder, Holder};
use crate::slots::add;
use crate::sockets::{CALL_SLOTS, SOCKETS, SOCK_CALLS};
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

/// Never attached: user space runs it once for each read (or write: a
/// request body larger than the sockets' buffers) it found blocked on an
/// adopted socket at start (see the module's prose). Arguments: the
/// thread's pid_tgid, the buffer (or iovec array), its length (or count),
/// the fd, and the call ([`tokentap_agent_common::found_read`]). Returns 1
/// when the thread has a call saved already (begun since the attach: its
/// own is kept), 2 when the map is full.
#[raw_tracepoint(tracepoint = "adopt_read")]
pub fn adopt_read(ctx: RawTracePointContext) -> i32 {
    let (pid_tgid, buf, len, fd, call): (u64, u64, u64, u64, u64) =
        (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3), ctx.arg(4));
    let args = SockArgs { buf, len, fd: fd as i32, call: call as u32 | SOCK_CALL_FOUND };
    // Counted before the insert: the thread runs on another CPU, and its
    // exit may take the entry at once (a slot never counts fewer).
    add(&CALL_SLOTS, pid_tgid as u32, 1);
    match SOCK_CALLS.insert(pid_tgid, args, BPF_NOEXIST as u64) {
        Ok(()) => 0,
        Err(_) => {
            add(&CALL_SLOTS, pid_tgid as u32, u64::MAX);
            if unsafe { SOCK_CALLS.get(pid_tgid) }.is_some() {
                1
            } else {
                2
            }
        }
    }
}

/// Never attached: user space runs it for a read it handed over
/// ([`adopt_read`]) that it no longer finds blocked: the thread's entry goes
/// if it is still that read's (not taken, not written over by a call since).
/// Arguments as [`adopt_read`]'s; returns 1 when it removed the entry.
/// Looked up, then removed: should the read return in between and the
/// thread save a call of its own, that call is removed (lost, never
/// copied wrong); a window of instructions, once per read found.
#[raw_tracepoint(tracepoint = "drop_found_read")]
pub fn drop_found_read(ctx: RawTracePointContext) -> i32 {
    let (pid_tgid, buf, len, fd, call): (u64, u64, u64, u64, u64) =
        (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3), ctx.arg(4));
    let Some(a) = (unsafe { SOCK_CALLS.get(pid_tgid) }).copied() else {
        return 0;
    };
    let ours = a.call == call as u32 | SOCK_CALL_FOUND && a.buf == buf && a.len == len && a.fd == fd as i32;
    if ours && SOCK_CALLS.remove(pid_tgid).is_ok() {
        add(&CALL_SLOTS, pid_tgid as u32, u64::MAX);
        return 1;
    }
    0
}

/// A read found blocked ([`adopt_read`]), taken at a syscall's exit: the
/// call as `sys_enter` would have saved it, if the exiting syscall is number
/// `nr` and (where the exit tells it) on `fd`; None for any other syscall of
/// the thread (the read returned before its entry was written).
#[inline(always)]
pub(crate) fn found_exits(args: SockArgs, nr: u64, fd: Option<u64>) -> Option<SockArgs> {
    let (found, call) = found_nr(args.call);
    if found as u64 != nr || fd.is_some_and(|fd| fd as i32 != args.fd) {
        return None;
    }
    Some(SockArgs { call, ..args })
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
