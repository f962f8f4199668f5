//! Decoding of raw ring-buffer records. The kernel is trusted to write well-formed
//! records, but every length is still checked: a bad record is an error, never a
//! panic or an out-of-bounds read.
use thiserror::Error;
use tokentap_agent_common::{ControlEvent, DataHeader, EventKind, CHUNK_SIZE, DATA_HEADER_LEN};

#[derive(Debug)]
pub enum RawEvent<'a> {
    Data(DataHeader, &'a [u8]),
    Control(EventKind, ControlEvent),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("chunk length {0} exceeds the record")]
    BadLength(u32),
}

pub fn decode(buf: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Short(buf.len()));
    }
    let kind = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    match EventKind::from_u32(kind) {
        Some(EventKind::Data) => {
            if buf.len() < DATA_HEADER_LEN {
                return Err(DecodeError::Short(buf.len()));
            }
            // SAFETY: length checked; DataHeader is plain-old-data, read unaligned.
            let h: DataHeader = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
            let len = h.len as usize;
            if len > CHUNK_SIZE || buf.len() < DATA_HEADER_LEN + len {
                return Err(DecodeError::BadLength(h.len));
            }
            Ok(RawEvent::Data(h, &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len]))
        }
        Some(k) => {
            if buf.len() < std::mem::size_of::<ControlEvent>() {
                return Err(DecodeError::Short(buf.len()));
            }
            // SAFETY: length checked; ControlEvent is plain-old-data.
            let c: ControlEvent = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
            Ok(RawEvent::Control(k, c))
        }
        None => Err(DecodeError::UnknownKind(kind)),
    }
}

/// `comm` as text (NUL-terminated in the kernel).
pub fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokentap_agent_common::{DIR_EGRESS, FLAG_LAST};

    pub fn data_record(tgid: u32, conn: u64, dir: u32, offset: u64, call_len: u64, data: &[u8], flags: u32) -> Vec<u8> {
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
            len: data.len() as u32,
            flags,
            fd: -1,
            source: 1,
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
            RawEvent::Data(h, d) => {
                assert_eq!(h.tgid, 7);
                assert_eq!(d, b"hello");
                assert_eq!(comm_str(&h.comm), "python3");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decode(&rec[..rec.len() - 1]).unwrap_err(), DecodeError::BadLength(5));
        assert_eq!(decode(&rec[..10]).unwrap_err(), DecodeError::Short(10));
        assert_eq!(decode(&[9, 0, 0, 0, 0]).unwrap_err(), DecodeError::UnknownKind(9));
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Short(0));
        assert_eq!(decode(&[2, 0, 0, 0, 1, 2]).unwrap_err(), DecodeError::Short(6));
    }
}
