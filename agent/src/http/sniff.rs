//! Cheap checks on the first bytes of a stream, used to tell HTTP/1.x clients
//! from servers and from other protocols before any parsing (HTTP/2 frame
//! shapes are [`super::h2`]'s).
use super::h2::PREFACE;

/// Does the stream start like an HTTP/1.x request?
pub fn looks_like_request(prefix: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] =
        [b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"CONNECT ", b"TRACE "];
    METHODS.iter().any(|m| {
        let n = m.len().min(prefix.len());
        n > 0 && prefix[..n] == m[..n]
    })
}

/// Does the stream start like an HTTP/1.x response (a server-side connection when
/// seen in the egress direction)?
pub fn looks_like_response(prefix: &[u8]) -> bool {
    let m = b"HTTP/1.";
    let n = m.len().min(prefix.len());
    n > 0 && prefix[..n] == m[..n]
}

/// Does the stream start with (a prefix of) the HTTP/2 client connection preface?
pub fn starts_like_preface(prefix: &[u8]) -> bool {
    let n = prefix.len().min(PREFACE.len());
    n > 0 && prefix[..n] == PREFACE[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_sniffing() {
        assert!(looks_like_request(b"PO"));
        assert!(looks_like_request(b"POST /v1"));
        assert!(!looks_like_request(b"PRI * HTTP/2.0"));
        assert!(!looks_like_request(b"\x16\x03"));
        assert!(looks_like_response(b"HTTP/1.1 200"));
        assert!(!looks_like_response(b"HTTP/2"));
        assert!(starts_like_preface(b"PRI * HT"));
        assert!(starts_like_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"));
        assert!(!starts_like_preface(b""));
        assert!(!starts_like_preface(b"POST"));
    }
}
