//! The socket syscalls' shared types: a call saved at `sys_enter` for
//! `sys_exit`, a watched socket's state and identity, and the records of a TLS
//! client's first write (its ClientHello) and of a socket's end.
/// Socket syscall kinds saved at `sys_enter` for `sys_exit`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockCall {
    /// `write`/`send`/`sendto`: one buffer.
    Write = 1,
    Read = 2,
    /// `writev`/`sendmsg`: an iovec array.
    WriteV = 3,
    ReadV = 4,
    /// `connect` on an AF_INET/AF_INET6 socket.
    Connect = 5,
}

/// Arguments of an in-flight socket syscall.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockArgs {
    /// Buffer, or iovec array for the vector calls.
    pub buf: u64,
    /// Buffer length, or iovec count.
    pub len: u64,
    pub fd: i32,
    /// [`SockCall`] as u32, or [`found_read`]'s for a read found blocked.
    pub call: u32,
}

/// [`SockArgs::call`]: a read user space found blocked at the agent's start
/// (in `/proc/PID/task/TID/syscall`), not saved by `sys_enter`.
pub const SOCK_CALL_FOUND: u32 = 1 << 31;

/// [`SockArgs::call`] of a read found blocked in syscall `nr`: flagged
/// [`SOCK_CALL_FOUND`], the number in bits 16-30, which the exit taking it
/// must match ([`found_nr`]).
pub const fn found_read(call: SockCall, nr: u32) -> u32 {
    call as u32 | (nr & 0x7fff) << 16 | SOCK_CALL_FOUND
}

/// For a [`found_read`] call: the syscall it was found in, and the
/// [`SockCall`] it is.
pub const fn found_nr(call: u32) -> (u32, u32) {
    ((call >> 16) & 0x7fff, call & 0xffff)
}

/// A socket in the kernel's table: (tgid, fd).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub tgid: u32,
    pub fd: i32,
}

/// What the kernel keeps per watched client socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockState {
    /// `bpf_ktime_get_ns()` at `connect`: tells this socket from a later one
    /// on the same fd.
    pub id: u64,
    /// Bytes the process wrote to and read from it (syscall results), counted
    /// while its state is [`SOCK_HTTP`], [`SOCK_TLS`] or [`SOCK_TLS_LLM`].
    pub sent: u64,
    pub received: u64,
    /// `SOCK_*`.
    pub state: u32,
    pub _pad: u32,
}

/// One socket's life: (tgid, fd, id). User space names a TLS socket this way
/// when it tells the kernel whether to keep counting it (`SOCK_VERDICTS`), so
/// a verdict never applies to a later socket that reuses the fd.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockId {
    pub tgid: u32,
    pub fd: i32,
    pub id: u64,
}

/// Connected, nothing sent yet.
pub const SOCK_NEW: u32 = 0;
/// Its first bytes were an HTTP request: copied, and its bytes counted.
pub const SOCK_HTTP: u32 = 1;
/// Not HTTP nor a TLS handshake (a database protocol, DNS, …), or a TLS
/// connection to a host user space does not account for: never copied.
pub const SOCK_OTHER: u32 = 2;
/// Its first bytes were a TLS handshake: the hello went to user space, bytes
/// are counted (never copied) until user space's verdict arrives.
pub const SOCK_TLS: u32 = 3;
/// A TLS connection to an LLM API host (user space said so): counted.
pub const SOCK_TLS_LLM: u32 = 4;
/// Open before this agent started, found by user space at its start (with
/// `--handover-dir`, so that an upgrade's keep-alive connections are watched
/// by the agent they move to): copied from its next request's start, or
/// from where the agent before it left off (its state handed on); never, once
/// a call shows no agent copies it (not HTTP). Nothing is counted meanwhile.
/// An HTTP/2 or WebSocket connection whose owner exited without handing on
/// its state (killed) has no request to wait for: it stays adopted, never
/// copied, as its decoding could not resume anyway.
pub const SOCK_ADOPTED: u32 = 5;

/// `SOCK_VERDICTS` values: keep counting (an LLM host) or stop (anything else).
pub const VERDICT_COUNT: u32 = 1;
pub const VERDICT_STOP: u32 = 2;

/// Bytes of a ClientHello copied, at most: one TLS record (2^14) and its
/// 5-byte header, rounded up to 8 (a hello continuing in a second record is
/// cut; its server name is usually in the first).
pub const MAX_HELLO: usize = 16392;

/// Header of a [`crate::EventKind::TlsHello`] record, followed by `len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HelloHeader {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub ts_ns: u64,
    /// The socket's [`SockState::id`].
    pub id: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// Bytes following the header.
    pub len: u32,
    /// Bytes the first write moved (more than `len` when cut).
    pub call_len: u32,
}

pub const HELLO_HEADER_LEN: usize = core::mem::size_of::<HelloHeader>();

/// A hello as laid out in the per-CPU scratch map.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HelloEvent {
    pub header: HelloHeader,
    pub data: [u8; MAX_HELLO],
}

/// [`crate::EventKind::SockClosed`]: a watched socket's end and the bytes it moved.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockClosedEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub ts_ns: u64,
    pub id: u64,
    pub sent: u64,
    pub received: u64,
    /// The socket's `SOCK_*` state when it closed.
    pub state: u32,
    pub _pad: u32,
}

/// iovec entries copied per vector call; a call with more data beyond them
/// gives its connection up (counted) rather than deliver a stream with a hole.
pub const MAX_IOV: u32 = 8;
