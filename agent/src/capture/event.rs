//! What a ring-buffer record says, in user-space types: the kernel's raw `u32`
//! tags and bit sets are turned into enums and flags once, by [`super::decode`],
//! and nothing downstream compares raw numbers.
use std::fmt;

pub use tokentap_agent_common::SockId;
use tokentap_agent_common::{
    Source, DIR_EGRESS, DIR_INGRESS, FLAG_GAP_BEFORE, FLAG_LAST, FLAG_READ_FAILED, FLAG_TAKEN_OVER, FLAG_TRUNCATED,
};

/// Which way plaintext crossed the process's TLS (or socket) calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Written by the process (towards the peer).
    Egress,
    /// Read by the process (from the peer).
    Ingress,
}

impl Direction {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            DIR_EGRESS => Some(Self::Egress),
            DIR_INGRESS => Some(Self::Ingress),
            _ => None,
        }
    }
}

/// The kernel's `FLAG_*` bits of a chunk. Unknown bits are ignored: a newer
/// kernel object may add hints an older agent can do without.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkFlags {
    /// The last chunk of its call.
    pub last: bool,
    /// The call was larger than the kernel copies: its tail is missing.
    pub truncated: bool,
    /// The chunk's user memory could not be read: its bytes are missing.
    pub read_failed: bool,
    /// Bytes were lost before this chunk, which is whole and starts a call.
    pub gap_before: bool,
    /// This agent took the connection over from one that left (an upgrade)
    /// with this chunk: its decoding state may wait in the handover maps.
    pub taken_over: bool,
}

impl ChunkFlags {
    pub const fn from_bits(bits: u32) -> Self {
        Self {
            last: bits & FLAG_LAST != 0,
            truncated: bits & FLAG_TRUNCATED != 0,
            read_failed: bits & FLAG_READ_FAILED != 0,
            gap_before: bits & FLAG_GAP_BEFORE != 0,
            taken_over: bits & FLAG_TAKEN_OVER != 0,
        }
    }

    /// The chunk's own bytes are incomplete.
    pub const fn has_hole(self) -> bool {
        self.truncated || self.read_failed
    }
}

/// A process's command name as the kernel keeps it (NUL-padded).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Comm(pub [u8; 16]);

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(self.0.len());
        f.write_str(&String::from_utf8_lossy(&self.0[..end]))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// A connection: (process, TLS connection object or socket).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ConnKey {
    pub tgid: u32,
    pub conn: u64,
}

/// Who owns a connection, as first seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    pub tgid: u32,
    pub cgroup_id: u64,
    pub comm: Comm,
    pub source: Source,
}

/// A piece of plaintext one call moved.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub key: ConnKey,
    pub owner: ConnMeta,
    pub direction: Direction,
    /// Where the chunk starts within its call.
    pub offset: u64,
    /// Ingress: where the chunk starts in the connection's stream of read
    /// bytes as the kernel counts them (0: unknown); see `http::mute`.
    pub stream_pos: u64,
    /// Where the kernel started counting that stream: positions compare only
    /// under one base.
    pub stream_base: u64,
    /// Ingress: bytes of the stream the kernel skipped right after this
    /// chunk, the end of its read (a muted HTTP/2 DATA payload: the call
    /// spans past the bytes it carries).
    pub skip_after: u64,
    pub flags: ChunkFlags,
    /// Monotonic ns when the call returned.
    pub ts_ns: u64,
    /// Socket fd when known, else -1.
    pub fd: i32,
    pub data: &'a [u8],
}

/// The first write of a client socket whose bytes started a TLS handshake
/// record: normally a whole ClientHello.
#[derive(Clone, Copy, Debug)]
pub struct Hello<'a> {
    pub sock: SockId,
    pub cgroup_id: u64,
    pub comm: Comm,
    /// Monotonic ns when the write returned.
    pub ts_ns: u64,
    /// Bytes the write moved (more than `data` when the kernel cut it).
    pub call_len: u32,
    pub data: &'a [u8],
}

/// Bytes a socket moved, as the kernel counted them from syscall results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub sent: u64,
    pub received: u64,
}

/// Lifecycle records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// A TLS connection object was freed.
    ConnClosed { key: ConnKey, ts_ns: u64 },
    /// A watched client socket closed or was reconnected; `tls`: it was a TLS
    /// socket (else plaintext HTTP, whose stream ends here too).
    SockClosed { sock: SockId, ts_ns: u64, totals: Totals, tls: bool },
    /// A process exited.
    Exit { tgid: u32, ts_ns: u64 },
    /// A process exec'd a new program.
    Exec { tgid: u32 },
    /// A process's dynamic loader mapped or unmapped libraries.
    LibsChanged { tgid: u32 },
}

#[derive(Clone, Copy, Debug)]
pub enum RawEvent<'a> {
    Data(Chunk<'a>),
    Hello(Hello<'a>),
    Control(Control),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_comm_decode() {
        let f = ChunkFlags::from_bits(FLAG_LAST | FLAG_GAP_BEFORE | 1 << 20);
        assert_eq!(f, ChunkFlags { last: true, gap_before: true, ..Default::default() });
        assert!(!f.has_hole());
        assert!(ChunkFlags::from_bits(FLAG_READ_FAILED).has_hole());
        assert_eq!(Comm(*b"python3\0\0\0\0\0\0\0\0\0").to_string(), "python3");
        assert_eq!(Comm(*b"exactly16bytes!!").to_string(), "exactly16bytes!!");
        assert_eq!(Direction::from_u32(DIR_INGRESS), Some(Direction::Ingress));
        assert_eq!(Direction::from_u32(7), None);
    }
}
