//! Decoding of raw ring-buffer records. The kernel is trusted to write well-formed
//! records, but every length is still checked: a bad record is an error, never a
//! panic or an out-of-bounds read.
use thiserror::Error;
use tokentap_agent_common::{
    ControlEvent, DataHeader, EventKind, HelloHeader, SockClosedEvent, SockId, Source, CHUNK_SIZE, DATA_HEADER_LEN,
    HELLO_HEADER_LEN, MAX_HELLO, SOCKET_CONN, SOCK_HTTP, SOCK_TLS, SOCK_TLS_LLM,
};

use super::event::{Chunk, ChunkFlags, Comm, ConnKey, ConnMeta, Control, Direction, Hello, RawEvent, Totals};

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("chunk length {0} exceeds the record")]
    BadLength(u32),
    #[error("unknown chunk direction {0}")]
    BadDirection(u32),
    #[error("unknown capture source {0}")]
    UnknownSource(u32),
    #[error("unknown socket state {0}")]
    UnknownSockState(u32),
}

pub fn decode(buf: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Short(buf.len()));
    }
    let tag = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let control: fn(&ControlEvent) -> Control = match EventKind::from_u32(tag) {
        None => return Err(DecodeError::UnknownKind(tag)),
        Some(EventKind::Data) => return data(buf).map(RawEvent::Data),
        Some(EventKind::TlsHello) => return hello(buf).map(RawEvent::Hello),
        Some(EventKind::SockClosed) => return sock_closed(buf).map(RawEvent::Control),
        Some(EventKind::ConnClosed) => {
            |c| Control::ConnClosed { key: ConnKey { tgid: c.tgid, conn: c.conn }, ts_ns: c.ts_ns }
        }
        Some(EventKind::Exit) => |c| Control::Exit { tgid: c.tgid, ts_ns: c.ts_ns },
        Some(EventKind::Exec) => |c| Control::Exec { tgid: c.tgid },
        Some(EventKind::LibsChanged) => |c| Control::LibsChanged { tgid: c.tgid },
    };
    if buf.len() < std::mem::size_of::<ControlEvent>() {
        return Err(DecodeError::Short(buf.len()));
    }
    // SAFETY: length checked; ControlEvent is plain-old-data.
    let c: ControlEvent = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    Ok(RawEvent::Control(control(&c)))
}

fn data(buf: &[u8]) -> Result<Chunk<'_>, DecodeError> {
    if buf.len() < DATA_HEADER_LEN {
        return Err(DecodeError::Short(buf.len()));
    }
    // SAFETY: length checked; DataHeader is plain-old-data, read unaligned.
    let h: DataHeader = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    let len = h.len as usize;
    if len > CHUNK_SIZE || buf.len() < DATA_HEADER_LEN + len {
        return Err(DecodeError::BadLength(h.len));
    }
    chunk(&h, &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len])
}

fn hello(buf: &[u8]) -> Result<Hello<'_>, DecodeError> {
    if buf.len() < HELLO_HEADER_LEN {
        return Err(DecodeError::Short(buf.len()));
    }
    // SAFETY: length checked; HelloHeader is plain-old-data, read unaligned.
    let h: HelloHeader = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    let len = h.len as usize;
    if len > MAX_HELLO || buf.len() < HELLO_HEADER_LEN + len {
        return Err(DecodeError::BadLength(h.len));
    }
    Ok(Hello {
        sock: SockId { tgid: h.tgid, fd: h.fd, id: h.id },
        cgroup_id: h.cgroup_id,
        comm: Comm(h.comm),
        ts_ns: h.ts_ns,
        call_len: h.call_len,
        data: &buf[HELLO_HEADER_LEN..HELLO_HEADER_LEN + len],
    })
}

fn sock_closed(buf: &[u8]) -> Result<Control, DecodeError> {
    if buf.len() < std::mem::size_of::<SockClosedEvent>() {
        return Err(DecodeError::Short(buf.len()));
    }
    // SAFETY: length checked; SockClosedEvent is plain-old-data.
    let e: SockClosedEvent = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    let tls = match e.state {
        SOCK_HTTP => false,
        SOCK_TLS | SOCK_TLS_LLM => true,
        other => return Err(DecodeError::UnknownSockState(other)),
    };
    Ok(Control::SockClosed {
        sock: SockId { tgid: e.tgid, fd: e.fd, id: e.id },
        ts_ns: e.ts_ns,
        totals: Totals { sent: e.sent, received: e.received },
        tls,
    })
}

/// The connection identity the plaintext capture gives a socket's stream.
pub fn socket_conn(tgid: u32, fd: i32) -> ConnKey {
    ConnKey { tgid, conn: SOCKET_CONN | fd as u32 as u64 }
}

fn chunk<'a>(h: &DataHeader, data: &'a [u8]) -> Result<Chunk<'a>, DecodeError> {
    let direction = Direction::from_u32(h.direction).ok_or(DecodeError::BadDirection(h.direction))?;
    let source = Source::from_u32(h.source).ok_or(DecodeError::UnknownSource(h.source))?;
    let flags = ChunkFlags::from_bits(h.flags);
    // A call's last chunk ends its bytes; a call that spans further (and was
    // not cut) ended a read whose rest the kernel skipped.
    let end = h.offset.saturating_add(h.len as u64);
    let spans = direction == Direction::Ingress && h.stream_pos != 0 && flags.last && !flags.has_hole();
    Ok(Chunk {
        key: ConnKey { tgid: h.tgid, conn: h.conn },
        owner: ConnMeta { tgid: h.tgid, cgroup_id: h.cgroup_id, comm: Comm(h.comm), source },
        direction,
        offset: h.offset,
        stream_pos: if h.stream_pos == 0 { 0 } else { h.stream_pos.wrapping_add(h.offset) },
        stream_base: h.stream_base,
        skip_after: if spans { h.call_len.saturating_sub(end) } else { 0 },
        flags,
        ts_ns: h.ts_ns,
        fd: h.fd,
        data,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokentap_agent_common::{DIR_EGRESS, FLAG_LAST};

    pub fn data_record(tgid: u32, conn: u64, dir: u32, offset: u64, call_len: u64, data: &[u8], flags: u32) -> Vec<u8> {
        data_record_of(1, tgid, conn, dir, offset, call_len, data, flags)
    }

    /// [`data_record`] from capture source `source` (`Source as u32`).
    #[allow(clippy::too_many_arguments)]
    pub fn data_record_of(
        source: u32,
        tgid: u32,
        conn: u64,
        dir: u32,
        offset: u64,
        call_len: u64,
        data: &[u8],
        flags: u32,
    ) -> Vec<u8> {
        let h = DataHeader {
            kind: EventKind::Data as u32,
            direction: dir,
            tgid,
            tid: tgid,
            ts_ns: 1,
            conn,
            cgroup_id: 0,
            call_len,
            offset,
            stream_pos: 0,
            stream_base: 0,
            len: data.len() as u32,
            flags,
            fd: -1,
            source,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
        };
        // SAFETY: plain-old-data to bytes.
        let mut v =
            unsafe { std::slice::from_raw_parts((&h as *const DataHeader).cast::<u8>(), DATA_HEADER_LEN) }.to_vec();
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decodes_data_and_rejects_bad_lengths() {
        let rec = data_record(7, 0xabc, DIR_EGRESS, 0, 5, b"hello", FLAG_LAST);
        match decode(&rec).unwrap() {
            RawEvent::Data(c) => {
                assert_eq!(c.owner.tgid, 7);
                assert_eq!(c.data, b"hello");
                assert_eq!(c.owner.comm.to_string(), "python3");
                assert_eq!((c.direction, c.owner.source, c.flags.last), (Direction::Egress, Source::OpenSsl, true));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decode(&rec[..rec.len() - 1]).unwrap_err(), DecodeError::BadLength(5));
        assert_eq!(decode(&rec[..10]).unwrap_err(), DecodeError::Short(10));
        assert_eq!(decode(&[9, 0, 0, 0, 0]).unwrap_err(), DecodeError::UnknownKind(9));
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Short(0));
        assert_eq!(decode(&[2, 0, 0, 0, 1, 2]).unwrap_err(), DecodeError::Short(6));
    }

    #[test]
    fn a_last_chunk_whose_call_spans_further_tells_the_bytes_skipped_after_it() {
        use tokentap_agent_common::{DIR_INGRESS, FLAG_TRUNCATED};
        let at = std::mem::offset_of!(DataHeader, stream_pos);
        let record = |dir, flags| {
            let mut rec = data_record(7, 1, dir, 0, 109, b"123456789", flags);
            rec[at..at + 8].copy_from_slice(&1000u64.to_ne_bytes());
            rec
        };
        let skip = |rec: &[u8]| match decode(rec).unwrap() {
            RawEvent::Data(c) => c.skip_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(skip(&record(DIR_INGRESS, FLAG_LAST)), 100);
        // Not the call's last chunk, cut short, egress, or no position: none.
        assert_eq!(skip(&record(DIR_INGRESS, 0)), 0);
        assert_eq!(skip(&record(DIR_INGRESS, FLAG_LAST | FLAG_TRUNCATED)), 0);
        assert_eq!(skip(&record(DIR_EGRESS, FLAG_LAST)), 0);
        assert_eq!(skip(&data_record(7, 1, DIR_INGRESS, 0, 109, b"123456789", FLAG_LAST)), 0);
        // A whole call: nothing skipped.
        let mut whole = data_record(7, 1, DIR_INGRESS, 0, 9, b"123456789", FLAG_LAST);
        whole[at..at + 8].copy_from_slice(&1000u64.to_ne_bytes());
        assert_eq!(skip(&whole), 0);
    }

    #[test]
    fn rejects_unknown_directions_and_sources() {
        let rec = data_record(7, 1, 2, 0, 1, b"x", FLAG_LAST);
        assert_eq!(decode(&rec).unwrap_err(), DecodeError::BadDirection(2));
        let mut rec = data_record(7, 1, DIR_EGRESS, 0, 1, b"x", FLAG_LAST);
        let at = std::mem::offset_of!(DataHeader, source);
        rec[at..at + 4].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(decode(&rec).unwrap_err(), DecodeError::UnknownSource(9));
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: plain-old-data to bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_hellos_and_socket_ends_and_rejects_bad_ones() {
        let h = HelloHeader {
            kind: EventKind::TlsHello as u32,
            tgid: 9,
            tid: 10,
            fd: 5,
            ts_ns: 77,
            id: 1234,
            cgroup_id: 3,
            comm: *b"java\0\0\0\0\0\0\0\0\0\0\0\0",
            len: 4,
            call_len: 600,
        };
        let mut rec = bytes_of(&h);
        rec.extend([0x16, 3, 1, 0]);
        match decode(&rec).unwrap() {
            RawEvent::Hello(x) => {
                assert_eq!(x.sock, SockId { tgid: 9, fd: 5, id: 1234 });
                assert_eq!(
                    (x.data, x.call_len, x.ts_ns, x.comm.to_string()),
                    (&[0x16, 3, 1, 0][..], 600, 77, "java".into())
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decode(&rec[..rec.len() - 1]).unwrap_err(), DecodeError::BadLength(4));
        assert_eq!(decode(&rec[..20]).unwrap_err(), DecodeError::Short(20));
        let huge = HelloHeader { len: MAX_HELLO as u32 + 1, ..h };
        assert!(matches!(decode(&bytes_of(&huge)), Err(DecodeError::BadLength(_))));

        let c = SockClosedEvent {
            kind: EventKind::SockClosed as u32,
            tgid: 9,
            tid: 9,
            fd: 5,
            ts_ns: 80,
            id: 1234,
            sent: 3002,
            received: 8324,
            state: SOCK_TLS_LLM,
            _pad: 0,
        };
        let want = Control::SockClosed {
            sock: SockId { tgid: 9, fd: 5, id: 1234 },
            ts_ns: 80,
            totals: Totals { sent: 3002, received: 8324 },
            tls: true,
        };
        assert!(matches!(decode(&bytes_of(&c)), Ok(RawEvent::Control(x)) if x == want));
        let http = SockClosedEvent { state: SOCK_HTTP, ..c };
        assert!(matches!(decode(&bytes_of(&http)), Ok(RawEvent::Control(Control::SockClosed { tls: false, .. }))));
        let odd = SockClosedEvent { state: 99, ..c };
        assert_eq!(decode(&bytes_of(&odd)).unwrap_err(), DecodeError::UnknownSockState(99));
        assert_eq!(decode(&bytes_of(&c)[..30]).unwrap_err(), DecodeError::Short(30));
    }

    #[test]
    fn decodes_control_records() {
        let c = ControlEvent {
            kind: EventKind::ConnClosed as u32,
            tgid: 3,
            tid: 3,
            _pad: 0,
            ts_ns: 5,
            conn: 0xabc,
            cgroup_id: 0,
            comm: [0; 16],
        };
        // SAFETY: plain-old-data to bytes.
        let raw = unsafe {
            std::slice::from_raw_parts((&c as *const ControlEvent).cast::<u8>(), std::mem::size_of::<ControlEvent>())
        };
        match decode(raw).unwrap() {
            RawEvent::Control(c) => {
                assert_eq!(c, Control::ConnClosed { key: ConnKey { tgid: 3, conn: 0xabc }, ts_ns: 5 })
            }
            other => panic!("{other:?}"),
        }
    }
}
