//! AWS event-stream binary framing (`application/vnd.amazon.eventstream`), as
//! Bedrock streams responses: length-prefixed messages with typed headers and
//! CRC32 checksums. A plain function over the body; an incomplete last message
//! (capture cut short) is left out, corruption is an error.
use thiserror::Error;

/// Prelude (total length, headers length, prelude CRC) plus the message CRC.
const OVERHEAD: usize = 16;
/// Messages larger than this are corrupt (AWS caps payloads at 16 MiB).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024 + 128 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EventStreamError {
    #[error("event-stream message length {0} out of range")]
    BadLength(usize),
    #[error("event-stream checksum mismatch")]
    BadCrc,
    #[error("event-stream header malformed")]
    BadHeader,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Int(i64),
    Bytes(Vec<u8>),
    String(String),
    Timestamp(i64),
    Uuid([u8; 16]),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
    /// Body offset just past this message.
    pub end: usize,
}

impl Message {
    /// A string header (`:event-type`, `:message-type`, …).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| match v {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Every complete message in `body`, in order.
pub fn parse(body: &[u8]) -> Result<Vec<Message>, EventStreamError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while body.len() - pos >= 12 {
        let b = &body[pos..];
        let total = be32(b) as usize;
        let headers_len = be32(&b[4..]) as usize;
        if !(OVERHEAD..=MAX_MESSAGE).contains(&total) || headers_len > total - OVERHEAD {
            return Err(EventStreamError::BadLength(total));
        }
        if crc32fast::hash(&b[..8]) != be32(&b[8..]) {
            return Err(EventStreamError::BadCrc);
        }
        if b.len() < total {
            break;
        }
        if crc32fast::hash(&b[..total - 4]) != be32(&b[total - 4..]) {
            return Err(EventStreamError::BadCrc);
        }
        let headers = parse_headers(&b[12..12 + headers_len])?;
        let payload = b[12 + headers_len..total - 4].to_vec();
        pos += total;
        out.push(Message { headers, payload, end: pos });
    }
    Ok(out)
}

fn parse_headers(mut h: &[u8]) -> Result<Vec<(String, HeaderValue)>, EventStreamError> {
    let mut out = Vec::new();
    fn take<'a>(h: &mut &'a [u8], n: usize) -> Result<&'a [u8], EventStreamError> {
        if h.len() < n {
            return Err(EventStreamError::BadHeader);
        }
        let (a, b) = h.split_at(n);
        *h = b;
        Ok(a)
    }
    fn int(b: &[u8]) -> i64 {
        b.iter().fold(0i64, |acc, &x| (acc << 8) | x as i64)
    }
    while !h.is_empty() {
        let n = take(&mut h, 1)?[0] as usize;
        let name = String::from_utf8_lossy(take(&mut h, n)?).into_owned();
        let value = match take(&mut h, 1)?[0] {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Int(take(&mut h, 1)?[0] as i8 as i64),
            3 => HeaderValue::Int(i16::from_be_bytes(take(&mut h, 2)?.try_into().unwrap_or_default()) as i64),
            4 => HeaderValue::Int(i32::from_be_bytes(take(&mut h, 4)?.try_into().unwrap_or_default()) as i64),
            5 => HeaderValue::Int(int(take(&mut h, 8)?)),
            t @ (6 | 7) => {
                let len = u16::from_be_bytes(take(&mut h, 2)?.try_into().unwrap_or_default()) as usize;
                let v = take(&mut h, len)?;
                if t == 6 {
                    HeaderValue::Bytes(v.to_vec())
                } else {
                    HeaderValue::String(String::from_utf8_lossy(v).into_owned())
                }
            }
            8 => HeaderValue::Timestamp(int(take(&mut h, 8)?)),
            9 => HeaderValue::Uuid(take(&mut h, 16)?.try_into().unwrap_or_default()),
            _ => return Err(EventStreamError::BadHeader),
        };
        out.push((name, value));
    }
    Ok(out)
}

/// Frame one message (tests, fixtures, benchmarks): string headers only.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (n, v) in headers {
        h.push(n.len() as u8);
        h.extend_from_slice(n.as_bytes());
        h.push(7);
        h.extend_from_slice(&(v.len() as u16).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    let total = OVERHEAD + h.len() + payload.len();
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_be_bytes());
    m.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let crc = crc32fast::hash(&m);
    m.extend_from_slice(&crc.to_be_bytes());
    m.extend_from_slice(&h);
    m.extend_from_slice(payload);
    let crc = crc32fast::hash(&m);
    m.extend_from_slice(&crc.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_partial_tail() {
        let mut body = encode(&[(":event-type", "chunk"), (":message-type", "event")], b"{\"a\":1}");
        let first = body.len();
        body.extend(encode(&[(":event-type", "metadata")], b"{}"));
        let msgs = parse(&body).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].header(":event-type"), Some("chunk"));
        assert_eq!(msgs[0].payload, b"{\"a\":1}");
        assert_eq!(msgs[0].end, first);
        // Cut anywhere inside the second message: the first still parses.
        for cut in first..body.len() {
            assert_eq!(parse(&body[..cut]).unwrap().len(), 1, "cut at {cut}");
        }
    }

    #[test]
    fn corruption_is_an_error_not_a_panic() {
        let mut body = encode(&[(":event-type", "chunk")], b"payload");
        body[20] ^= 0xff;
        assert_eq!(parse(&body), Err(EventStreamError::BadCrc));
        assert!(matches!(parse(&[0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]), Err(EventStreamError::BadLength(3))));
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(parse(&huge).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&data);
        }

        #[test]
        fn headers_of_any_shape_round_trip(
            headers in proptest::collection::vec(("[a-z:-]{1,20}", "[ -~]{0,40}"), 0..6),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let hs: Vec<(&str, &str)> = headers.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let m = parse(&encode(&hs, &payload)).unwrap();
            prop_assert_eq!(m.len(), 1);
            prop_assert_eq!(&m[0].payload, &payload);
            for (i, (n, v)) in hs.iter().enumerate() {
                prop_assert_eq!(&m[0].headers[i].0, n);
                prop_assert_eq!(m[0].header(n).is_some(), true);
                let _ = v;
            }
        }
    }
}
