//! Types shared by the eBPF programs and the user-space agent.
//!
//! Every record the kernel writes to the `EVENTS` ring buffer starts with a `u32`
//! kind tag ([`EventKind`]) so that user space can tell records apart before it
//! decodes them. All structs are `#[repr(C)]`, `Copy`, and use `u32` instead of
//! `bool` so they carry no padding bytes (required for `aya::Pod`).
#![no_std]

pub mod ownership;
pub use ownership::{ConnOwner, Turn, HANDED_OVER, TAKEN_FROM_EXITED};
mod sockets;
pub use sockets::*;

/// Bytes of plaintext carried by one [`DataEvent`]. A TLS call that moves more
/// than this is split into several ordered chunks (`offset` tells where each
/// belongs) instead of being truncated.
pub const CHUNK_SIZE: usize = 16 * 1024;
/// Chunks one call may produce: `CHUNK_SIZE * MAX_CHUNKS` (64 MiB) per `SSL_write`
/// or `SSL_read`. Beyond that the last chunk carries [`FLAG_TRUNCATED`] and the
/// loss is counted in [`LossCounter::TruncatedCall`].
pub const MAX_CHUNKS: u32 = 4096;
/// The layout of every record on the ring buffer. An agent reads a ring
/// buffer another agent left (killed during an upgrade) only when it carries
/// this same number: raise it with any change to a record's layout.
pub const RING_FORMAT: u32 = 1;
/// Per-CPU scratch slots, one per nesting level of programs on one CPU.
pub const SCRATCH_SLOTS: u32 = 4;

/// Record kinds on the ring buffer; fixed numbers, never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A chunk of plaintext that crossed a TLS library call ([`DataEvent`]).
    Data = 1,
    /// A TLS connection object was freed (`SSL_free`) ([`ControlEvent`]).
    ConnClosed = 2,
    /// A process called exec ([`ControlEvent`]); user space looks for new TLS libraries.
    Exec = 3,
    /// A process (thread group leader) exited ([`ControlEvent`]).
    Exit = 4,
    /// The dynamic loader mapped or unmapped libraries in a process
    /// (`_dl_debug_state`, the debuggers' rendezvous hook) ([`ControlEvent`]).
    LibsChanged = 5,
    /// The first write on a client socket was a TLS handshake record: its bytes
    /// (at most one record, [`MAX_HELLO`]) follow a [`HelloHeader`].
    TlsHello = 6,
    /// A watched client socket closed (or was reconnected) ([`SockClosedEvent`]):
    /// the bytes it moved, for plaintext HTTP and TLS sockets.
    SockClosed = 7,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Data),
            2 => Some(Self::ConnClosed),
            3 => Some(Self::Exec),
            4 => Some(Self::Exit),
            5 => Some(Self::LibsChanged),
            6 => Some(Self::TlsHello),
            7 => Some(Self::SockClosed),
            _ => None,
        }
    }
}

/// Plaintext written by the process (towards the peer).
pub const DIR_EGRESS: u32 = 0;
/// Plaintext read by the process (from the peer).
pub const DIR_INGRESS: u32 = 1;

/// This chunk is the last one of its call.
pub const FLAG_LAST: u32 = 1;
/// The call moved more than `CHUNK_SIZE * MAX_CHUNKS` bytes; the rest was not copied.
pub const FLAG_TRUNCATED: u32 = 2;
/// Copying user memory failed for this chunk; its bytes are missing.
pub const FLAG_READ_FAILED: u32 = 4;
/// Bytes of this connection were lost (ring buffer full) before this chunk,
/// which itself is whole: the first chunk of the next call after the loss.
pub const FLAG_GAP_BEFORE: u32 = 8;
/// The first chunk copied since this agent took the connection from an agent
/// that left (an upgrade): its decoding state may have been handed over
/// ([`HandoffPart`]).
pub const FLAG_TAKEN_OVER: u32 = 16;

/// Which hook produced a [`DataEvent`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    OpenSsl = 1,
    /// Go's `crypto/tls` (`(*Conn).Write` / `.Read`).
    GoTls = 2,
    /// Plaintext socket syscalls (`write`, `sendto`, `recvmsg`, …).
    Socket = 3,
    /// BoringSSL (`SSL_write` / `SSL_read`, the OpenSSL ABI), found by symbol
    /// or, in stripped binaries such as Bun, by analysing the machine code.
    BoringSsl = 4,
    /// rustls (`CommonState::send_appdata_encrypt` /
    /// `CommonState::take_received_plaintext`), found by symbol.
    Rustls = 5,
    /// Java's JSSE, through tokentap's Java agent: the plaintext handed to
    /// `tokentap_java_data` in the agent's native library.
    Java = 6,
}

impl Source {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::OpenSsl),
            2 => Some(Self::GoTls),
            3 => Some(Self::Socket),
            4 => Some(Self::BoringSsl),
            5 => Some(Self::Rustls),
            6 => Some(Self::Java),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OpenSsl => "openssl",
            Self::GoTls => "go_tls",
            Self::Socket => "socket",
            Self::BoringSsl => "boringssl",
            Self::Rustls => "rustls",
            Self::Java => "java",
        }
    }

    /// Does user space learn when this source's connections end? Not for
    /// BoringSSL found in stripped binaries (no `SSL_free` to probe) nor for
    /// rustls (a Rust value is dropped, no function marks it): a freed address
    /// may carry the next connection, so user space restarts a stream that
    /// begins anew, and the kernel is never told to skip one.
    pub const fn ends_are_seen(self) -> bool {
        !matches!(self, Self::BoringSsl | Self::Rustls)
    }

    /// Can a connection's key change under it? rustls's is the address of a
    /// Rust value, which moves when its owner does (tokio-tungstenite moves
    /// the stream into its WebSocket after the handshake).
    pub const fn key_may_move(self) -> bool {
        matches!(self, Self::Rustls)
    }

    /// The TLS library a record names: none for plaintext socket captures.
    pub const fn tls_library(self) -> Option<&'static str> {
        match self {
            Self::Socket => None,
            s => Some(s.as_str()),
        }
    }
}

/// Connection identity of a plaintext socket: this bit plus the fd (TLS
/// connections are identified by user-space pointers, which never have it set).
pub const SOCKET_CONN: u64 = 1 << 63;

/// Connection identity of a JSSE connection: this bit plus a counter the Java
/// agent keeps per JVM (never reused, never a pointer's value).
pub const JAVA_CONN: u64 = 1 << 62;

/// Header of a chunk of plaintext. On the ring buffer it is followed directly by
/// `len` bytes of data.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataHeader {
    /// [`EventKind::Data`].
    pub kind: u32,
    /// [`DIR_EGRESS`] or [`DIR_INGRESS`].
    pub direction: u32,
    pub tgid: u32,
    pub tid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the call returned.
    pub ts_ns: u64,
    /// Connection identity inside the process: the `SSL*` pointer, Go's
    /// `*tls.Conn`, [`SOCKET_CONN`] | fd, or [`JAVA_CONN`] | the Java agent's id.
    pub conn: u64,
    pub cgroup_id: u64,
    /// Bytes the whole call transferred.
    pub call_len: u64,
    /// Where this chunk starts within the call.
    pub offset: u64,
    /// Ingress: where the call starts in the connection's stream of read bytes,
    /// counted by the kernel from `stream_base` (0: unknown; always 0 on
    /// egress). User space reads a jump as bytes not copied: the ranges it
    /// muted ([`MuteRange`]), or a loss.
    pub stream_pos: u64,
    /// Where the kernel started counting this connection's stream (taken from
    /// the clock at its first copied call, so unique to it; on egress too): a
    /// new base means the count restarted (the kernel forgot the connection,
    /// or its key names another one). An ignore names the connection by it.
    pub stream_base: u64,
    /// Bytes of data following the header.
    pub len: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Socket fd when known, else -1.
    pub fd: i32,
    /// [`Source`] as u32.
    pub source: u32,
    pub comm: [u8; 16],
}

pub const DATA_HEADER_LEN: usize = core::mem::size_of::<DataHeader>();

/// A header and its chunk as laid out in the per-CPU scratch map.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: DataHeader,
    pub data: [u8; CHUNK_SIZE],
}

/// Lifecycle records: connection closed, exec, exit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ControlEvent {
    /// [`EventKind::ConnClosed`], [`EventKind::Exec`] or [`EventKind::Exit`].
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    /// `SSL*` for `ConnClosed`, else 0.
    pub conn: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

/// Arguments of an in-flight TLS call, saved at entry and used at return.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CallArgs {
    pub ssl: u64,
    pub buf: u64,
    /// `size_t *` out-parameter of the `_ex` variants, else 0.
    pub len_ptr: u64,
    /// Buffer size the caller passed: no call moves more.
    pub num: u64,
    /// [`CallKind`] as u32.
    pub call: u32,
    /// Go's calls, kept in a map agents share during an upgrade: which
    /// agents' copies took the call (0 none, an agent's tgid, or
    /// [`TAKEN_BY_TWO`]). Each agent uses a call once; the agent after one
    /// copies a read the one before saw begin. 0 for the others. The pinned
    /// `GO_CALLS` holds this layout with this meaning for every release that
    /// shares it: a change to either needs a map of another name.
    pub taken_by: u32,
}

/// [`CallArgs::taken_by`]: two agents took the call.
pub const TAKEN_BY_TWO: u32 = u32::MAX;

/// The TLS call whose arguments are saved; a return probe only consumes its own kind,
/// so a library whose `SSL_write` calls `SSL_write_ex` internally is not counted twice.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Write = 1,
    Read = 2,
    WriteEx = 3,
    ReadEx = 4,
    /// Go `crypto/tls.(*Conn).Write` / `.Read` (register ABI).
    GoWrite = 5,
    GoRead = 6,
}

/// A goroutine's in-flight Go TLS call: (tgid, `g` pointer from R14). Goroutines
/// move between threads, so the thread id cannot key them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoCallKey {
    pub tgid: u64,
    pub goroutine: u64,
}

/// Index into the `LOSS` array map: what the kernel side could not deliver.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossCounter {
    /// Data chunks lost because the ring buffer was full.
    RingFull = 0,
    /// Calls larger than the per-call limit (tail not copied).
    TruncatedCall = 1,
    /// Chunks whose user memory could not be read.
    ReadFailed = 2,
    /// Control events lost because the ring buffer was full.
    ControlRingFull = 3,
    /// Calls not tracked because their arguments could not be saved: the
    /// in-flight argument map was full (socket calls, Go), or the kernel gave
    /// the thread no task storage (TLS libraries' calls, rustls's sends).
    ArgsMapFull = 4,
    /// Calls not copied because every scratch slot of the CPU was busy.
    ScratchBusy = 5,
    /// Not a loss: calls not copied because user space marked their connection
    /// ignored (`IGNORED_CONNS`).
    FilteredIgnored = 6,
    /// Socket connections given up: a vector call carried more than [`MAX_IOV`] buffers.
    IovOverflow = 7,
    /// Not a loss: plaintext socket connections the kernel classified as not HTTP.
    SocketsNotHttp = 8,
    /// Not a loss: client sockets whose first bytes were a TLS handshake (their
    /// hello went to user space; a subset of `SocketsNotHttp`).
    SocketsTls = 9,
    /// TLS hellos not delivered: the ring buffer was full or every scratch
    /// slot busy (the socket then counts bytes no one reads).
    HelloLost = 10,
    /// Not a loss: reads not copied because they fell inside a response body
    /// user space muted ([`MuteRange`]).
    MutedReads = 11,
    /// Not a loss: calls not copied because another agent owns their
    /// connection (two agents overlap during an upgrade: see [`ConnOwner`]).
    OwnedElsewhere = 12,
    /// Not a loss: keep-alive connections this agent received from the agent
    /// before it at an exchange boundary (a new request after a whole response).
    HandoverReceived = 13,
    /// Connections this agent took from an agent that exited while owning
    /// them: joined wherever they stood (what was cut is counted by the
    /// parsers, `joined_mid_stream`, and by the old agent, `dropped_at_exit`).
    HandoverFromExited = 14,
    /// Not a loss: HTTP/2 connections whose frames the kernel stopped
    /// following (a read it could not place, or more frames in one read than
    /// it follows): their bytes are all copied from then on ([`H2Stream`]).
    H2WalkStopped = 15,
    /// Not a loss: ignores user space asked for a connection that had ended
    /// by then, found under its key reused by another one and dropped, so
    /// that one is copied (`IGNORED_CONNS`).
    IgnoreStale = 16,
    /// Not a loss: calls whose two agents' programs straddled an agent's
    /// leaving (or becoming current), settled by the second deciding from the
    /// first's view (`ownership::view_changed`).
    StraddledCalls = 17,
    /// Not a loss: HTTP/2 connections this agent's kernel walk took over
    /// (from another agent, or after its count restarted) past reads walked
    /// and not copied: its count moved on by as much, which the decoding
    /// state handed on meets as a skip (`h2_walk::plan_read`).
    H2WalkMovedOn = 18,
    /// Not a loss by itself: Go `Read` copies and `RET`s that found no call
    /// of their goroutine in flight: the call began before the probes
    /// attached (the agent starting, or another agent's upgrade: each agent
    /// has its own calls), its entry was evicted from the map of calls, or
    /// an outer TLS read on the same goroutine took it (TLS inside TLS). Its
    /// bytes are not copied, and the decoder is not told (the copy does not
    /// know the connection).
    GoCallsUnmatched = 19,
}

impl LossCounter {
    /// Every counter, in index order: user space reads the `LOSS` map through this
    /// list, so a new counter is read once it is added here.
    pub const ALL: [Self; LOSS_COUNTERS as usize] = [
        Self::RingFull,
        Self::TruncatedCall,
        Self::ReadFailed,
        Self::ControlRingFull,
        Self::ArgsMapFull,
        Self::ScratchBusy,
        Self::FilteredIgnored,
        Self::IovOverflow,
        Self::SocketsNotHttp,
        Self::SocketsTls,
        Self::HelloLost,
        Self::MutedReads,
        Self::OwnedElsewhere,
        Self::HandoverReceived,
        Self::HandoverFromExited,
        Self::H2WalkStopped,
        Self::IgnoreStale,
        Self::StraddledCalls,
        Self::H2WalkMovedOn,
        Self::GoCallsUnmatched,
    ];

    /// Whether the counter is a loss of data (the others count skipped work
    /// or handovers).
    pub const fn is_loss(self) -> bool {
        !matches!(
            self,
            Self::FilteredIgnored
                | Self::SocketsNotHttp
                | Self::SocketsTls
                | Self::MutedReads
                | Self::OwnedElsewhere
                | Self::HandoverReceived
                | Self::HandoverFromExited
                | Self::H2WalkStopped
                | Self::IgnoreStale
                | Self::StraddledCalls
                | Self::H2WalkMovedOn
                | Self::GoCallsUnmatched
        )
    }
}

pub const LOSS_COUNTERS: u32 = 20;

/// Bytes of one [`HandoffPart`]: small, as each map entry takes a whole
/// part and most states are a verdict or a few KiB of HPACK tables.
pub const HANDOFF_PART: usize = 1020;
/// Most parts one connection's state may take: about 17 MiB, so that a
/// request body up to the default `max_body_bytes` (16 MiB) being written
/// across an upgrade is handed on whole. Agents of earlier releases read at
/// most 1,024 (a larger state is missing to them: counted only where they
/// hold bytes of its connection; the running agent later removes the parts
/// they leave). The map holds 65,536 parts in all: three such states at once.
pub const HANDOFF_MAX_PARTS: u32 = 17 * 1024;

/// Where a part of a handed-on state lies in the pinned `CONN_STATES` map:
/// the connection, and which part (0, written last, says how many follow).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandoffKey {
    pub tgid: u32,
    pub part: u32,
    pub conn: u64,
}

/// A part of what an agent leaving hands the next one for a connection it
/// cannot leave at a clean boundary (HTTP/2: its HPACK tables, a partial
/// frame, the calls in flight). User space writes and reads them; the kernel
/// only drops part 0 when the connection goes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HandoffPart {
    pub len: u32,
    pub data: [u8; HANDOFF_PART],
}

/// Bytes of a connection's ingress stream (`DataHeader::stream_pos`) user
/// space asked the kernel not to copy: `[from, to)`, the rest of a response
/// body no one records. The kernel skips a read only when all of it lies
/// inside, so bytes after the body are always copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MuteRange {
    pub from: u64,
    pub to: u64,
}

/// An HTTP/2 stream whose response DATA frames user space will not record,
/// in the kernel's `H2_MUTED` map: the kernel, which follows the frame headers
/// of each HTTP/2 connection's ingress stream from its first byte
/// ([`H2Walk`]), copies such a frame's header and skips its payload. `base`
/// is the walk's `id` (the `DataHeader::stream_base` of the agent that began
/// it), so a stream id of an earlier connection under a reused key never
/// applies. Pinned with the handover maps: an upgrade carries it over.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct H2Stream {
    pub tgid: u64,
    pub conn: u64,
    pub base: u64,
    pub stream: u64,
}

/// Where the kernel's walk of one HTTP/2 connection's ingress stream stands
/// (`H2_WALKS`, pinned with the handover maps: the agent taking a connection
/// over goes on with the walk of the one before, from its first read).
/// Positions are in the numbering of the agent walking now (`base`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2Walk {
    /// The walk's identity: the stream base of the agent that began it
    /// (what [`H2Stream::base`] names); 0 until its first read.
    pub id: u64,
    /// The ingress base of the agent walking now; 0 until the first read.
    pub base: u64,
    /// The next position not followed yet.
    pub at: u64,
    /// Where the current frame's payload ends; at or below `at`, a header is next.
    pub payload_end: u64,
    /// Bytes of the next header seen so far (a header split across reads):
    /// how many, the first one, and the next ones, shifted in.
    pub have: u64,
    pub first: u64,
    pub acc: u64,
    /// Nonzero while the current payload is a named stream's DATA: skipped.
    /// Above bit 0, the stream's id (0 once its END_STREAM is seen), which
    /// spares the next frame's lookup in `H2_MUTED` if it is the same
    /// stream's. An agent that keeps only 0 or 1 here reads the same thing
    /// (an upgrade or a rollback hands the walk on either way).
    pub muted: u64,
}

/// A TLS connection in the kernel's maps: (tgid, `SSL*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SslKey {
    pub tgid: u64,
    pub ssl: u64,
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for CallArgs {}
    unsafe impl aya::Pod for DataHeader {}
    unsafe impl aya::Pod for ControlEvent {}
    unsafe impl aya::Pod for SslKey {}
    unsafe impl aya::Pod for MuteRange {}
    unsafe impl aya::Pod for H2Stream {}
    unsafe impl aya::Pod for H2Walk {}
    unsafe impl aya::Pod for ConnOwner {}
    unsafe impl aya::Pod for Turn {}
    unsafe impl aya::Pod for HandoffKey {}
    unsafe impl aya::Pod for HandoffPart {}
    unsafe impl aya::Pod for GoCallKey {}
    unsafe impl aya::Pod for SockArgs {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for SockState {}
    unsafe impl aya::Pod for SockId {}
    unsafe impl aya::Pod for HelloHeader {}
    unsafe impl aya::Pod for SockClosedEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<DataHeader>(), 104);
        assert_eq!(core::mem::size_of::<ControlEvent>(), 56);
        assert_eq!(core::mem::size_of::<CallArgs>(), 40);
        assert_eq!(core::mem::size_of::<SockArgs>(), 24);
        assert_eq!(core::mem::size_of::<SockKey>(), 8);
        assert_eq!(core::mem::size_of::<SockState>(), 32);
        assert_eq!(core::mem::size_of::<SockId>(), 16);
        assert_eq!(HELLO_HEADER_LEN, 64);
        assert_eq!(core::mem::size_of::<HelloEvent>(), HELLO_HEADER_LEN + MAX_HELLO);
        assert_eq!(core::mem::size_of::<SockClosedEvent>(), 56);
        assert_eq!(DATA_HEADER_LEN % 8, 0);
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            EventKind::Data,
            EventKind::ConnClosed,
            EventKind::Exec,
            EventKind::Exit,
            EventKind::LibsChanged,
            EventKind::TlsHello,
            EventKind::SockClosed,
        ] {
            assert_eq!(EventKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(EventKind::from_u32(0), None);
    }

    #[test]
    fn loss_counters_are_listed_in_index_order() {
        for (i, c) in LossCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn sources_name_their_tls_library() {
        assert_eq!(Source::OpenSsl.tls_library(), Some("openssl"));
        assert_eq!(Source::GoTls.tls_library(), Some("go_tls"));
        assert_eq!(Source::Socket.tls_library(), None);
        assert_eq!(Source::BoringSsl.tls_library(), Some("boringssl"));
        assert_eq!(Source::Rustls.tls_library(), Some("rustls"));
        assert_eq!(Source::Java.tls_library(), Some("java"));
        assert!(Source::Java.ends_are_seen());
        for s in [Source::OpenSsl, Source::GoTls, Source::Socket, Source::BoringSsl, Source::Rustls, Source::Java] {
            assert_eq!(Source::from_u32(s as u32), Some(s));
        }
    }
}
