//! Which processes and fds the socket hooks ([`crate::sockets`]) watch: the
//! filter every read, write and close of the host passes before any lookup.
//!
//! Why two array reads: the hooks run on every system call of the host, and
//! most calls are not on a watched socket. A process that never `connect`ed
//! a socket while the agent ran stops at its slot in [`PROC_SLOTS`]; one
//! that did at its slot in [`SLOT_FDS`], which counts per fd the slot's
//! processes watching it, so its writes to files and pipes stop there too.
//! Each process's own record ([`SOCK_PROCS`]) is read only at a connect (or
//! an adoption) and at its exit, which takes its counts away. Every count is conservative:
//! one left high costs a lookup in `SOCKETS`, never a call.
//!
//! What it falls back to: nothing is needed; an entry the LRU evicts leaves
//! its counts high, so its process's sockets stay watched.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, LruHashMap},
};

use crate::slots::{add, atomic_add, slot_empty, SLOTS};
use crate::words;

/// Processes with at least one watched socket ([`ProcFds`]), each byte set
/// counted (at least once) in the process's [`SLOT_FDS`] slot, and uncounted
/// by the exit that removes the entry. Bytes are only ever set (closed
/// sockets leave theirs: a lookup more, never a call missed). Not on the
/// read/write/close hooks' path: they read [`SLOT_FDS`]. 16,384 entries of 72
/// bytes: ~2 MiB of kernel memory, preallocated (LRU maps always are).
#[map]
static SOCK_PROCS: LruHashMap<u32, ProcFds> = LruHashMap::with_max_entries(16384, 0);

const FD_SLOTS: usize = 64;

/// A [`SOCK_PROCS`] entry: byte `fd` set for every fd below 63 that was ever
/// a watched socket, byte 63 for fds 63 and up; and whose entry it is. An LRU
/// map hands an evicted entry's memory to its next insert at once, even while
/// another program holds a pointer to it: the owner tells such a pointer
/// from one to the process's own entry.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct ProcFds {
    tgid: u64,
    fds: [u8; FD_SLOTS],
}

/// Slots of processes (tgid modulo [`FD_SLOT_PROCS`]): for each fd (as
/// [`fd_slot`] places it), how many of the slot's processes set its byte in
/// their [`SOCK_PROCS`] entry, never fewer. The hooks' test after
/// [`PROC_SLOTS`]: a call on an fd no process of the slot watches (a file,
/// a pipe, the server side of a socket) needs no lookup at all. An array
/// read: the process's own entry, looked up on every read and write of a
/// process with a client socket (curl's every write to its output), made
/// such a write cost ~28 ns more than in a process without sockets, now ~10
/// (docs/performance.md, the syscalls bench). Atomic adds, up when a process
/// sets a byte and down at its exit; a count left high (two threads setting
/// one byte at once, an entry the LRU evicted) costs a
/// [`SOCKETS`](crate::sockets::SOCKETS) lookup, never a call. 4,096 slots of
/// 64 counters: 2 MiB.
#[map]
static SLOT_FDS: Array<[u64; FD_SLOTS]> = Array::with_max_entries(FD_SLOT_PROCS, 0);

const FD_SLOT_PROCS: u32 = 4096;

/// Slots of processes (tgid modulo the size): how many entries of the slot's
/// processes [`SOCK_PROCS`] has, never fewer (see [`crate::slots::add`]). The first test on
/// every read, write and close of the host: a process without client sockets
/// (a build, a database doing file I/O) pays an array read, not a lookup. An
/// entry the LRU evicts leaves its count high: a lookup more, never a call.
#[map]
static PROC_SLOTS: Array<u64> = Array::with_max_entries(SLOTS, 0);

/// Process `tgid`'s slot in [`SLOT_FDS`].
#[inline(always)]
fn slot_fds_index(tgid: u32) -> u32 {
    tgid & (FD_SLOT_PROCS - 1)
}

/// The fd's byte in a [`SOCK_PROCS`] entry. An fd is a C int: a register's
/// upper half is not part of it (as `SockKey` keeps only the lower).
fn fd_slot(fd: u64) -> usize {
    let fd = fd as u32 as usize;
    if fd < FD_SLOTS - 1 {
        fd
    } else {
        FD_SLOTS - 1
    }
}

/// The process exited (its leader did: a leader that left early, or an exec
/// from another thread, may run this again later): its sockets are no longer
/// watched. The fds of the entry this call removed leave their slot's
/// counts, after it is gone: counts stay high meanwhile, never low, and an
/// entry another call removed, or whose memory the LRU gave another process,
/// takes nothing away.
pub(crate) fn forget_process(tgid: u32) {
    if slot_empty(&PROC_SLOTS, tgid) {
        return;
    }
    let Some(p) = SOCK_PROCS.get_ptr(tgid) else {
        return;
    };
    let mut mine = core::mem::MaybeUninit::<ProcFds>::uninit();
    // SAFETY: a live map value and a stack slot of its type, both 8-aligned.
    let mine = unsafe {
        words::copy(mine.as_mut_ptr(), p);
        mine.assume_init()
    };
    if mine.tgid != u64::from(tgid) || SOCK_PROCS.remove(tgid).is_err() {
        return;
    }
    add(&PROC_SLOTS, tgid, u64::MAX);
    let Some(c) = SLOT_FDS.get_ptr_mut(slot_fds_index(tgid)) else {
        return;
    };
    let mut i = 0;
    while i < FD_SLOTS {
        if mine.fds[i] != 0 {
            // SAFETY: a live map value; `i` is below its length.
            atomic_add(unsafe { (*c).as_mut_ptr().add(i) }, u64::MAX);
        }
        i += 1;
    }
}

/// Whether the calling process may have watched sockets (tested before the
/// fd is read: most processes stop here).
#[inline(always)]
pub(crate) fn may_watch(pid_tgid: u64) -> bool {
    !slot_empty(&PROC_SLOTS, (pid_tgid >> 32) as u32)
}

/// Whether `fd` may be a watched socket of the calling process: a process of
/// its [`SLOT_FDS`] slot watched that fd (or, for fds 63 and up, one of them).
#[inline(always)]
pub(crate) fn fd_watched(pid_tgid: u64, fd: u64) -> bool {
    matches!(SLOT_FDS.get(slot_fds_index((pid_tgid >> 32) as u32)), Some(c) if c[fd_slot(fd)] != 0)
}

/// Set the fd's byte in its process's [`SOCK_PROCS`] entry (made if need be,
/// and counted in [`PROC_SLOTS`]), and count a byte newly set in the
/// process's [`SLOT_FDS`] slot, before the hooks can meet a call on it (this
/// runs at `connect`'s exit, or before an adopted socket's first call).
#[inline(always)]
pub(crate) fn watch_fd(tgid: u32, fd: i32) {
    // BPF_NOEXIST: a second thread's insert must not wipe the first's byte.
    let fresh = ProcFds { tgid: u64::from(tgid), fds: [0; FD_SLOTS] };
    if SOCK_PROCS.insert(tgid, fresh, BPF_NOEXIST as u64).is_ok() {
        add(&PROC_SLOTS, tgid, 1);
    }
    let i = fd_slot(fd as u32 as u64);
    match SOCK_PROCS.get_ptr_mut(tgid) {
        // SAFETY: a live map value; a one-byte store, which no other thread's
        // store to this or another byte can undo. Counted before the byte is
        // set, so that an exit never takes away a count that was not added;
        // two threads both finding the byte clear both count it: high, never
        // low.
        Some(p) if unsafe { (*p).tgid } == u64::from(tgid) => unsafe {
            if (*p).fds[i] == 0 {
                count_fd(tgid, i);
                (*p).fds[i] = 1;
            }
        },
        // No entry of its own to record it in (an LRU map full of live
        // processes' entries, or the memory just given to another's): counted
        // for good, left high.
        _ => count_fd(tgid, i),
    }
}

/// One more process of `tgid`'s [`SLOT_FDS`] slot watches fd slot `i`.
#[inline(always)]
fn count_fd(tgid: u32, i: usize) {
    if let Some(c) = SLOT_FDS.get_ptr_mut(slot_fds_index(tgid)) {
        // SAFETY: a live map value; `i` is below its length (`fd_slot`).
        atomic_add(unsafe { (*c).as_mut_ptr().add(i & (FD_SLOTS - 1)) }, 1);
    }
}
