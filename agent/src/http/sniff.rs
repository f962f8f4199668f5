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

/// What the first bytes read on a connection say of an exchange that
/// capture joined in the middle of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// A status line or server-sent events: only a client reads these.
    Response,
    /// A JSON body or a chunk-size line: a response's (a client) or a
    /// request's (a server), which the connection's next bytes tell.
    Body,
}

/// Do the first bytes read look like the rest of an HTTP/1.x message (capture
/// began mid-exchange), and of which kind? Other bytes (a database's, a
/// binary protocol's) are not taken for a lost exchange.
pub fn tail(data: &[u8]) -> Option<Tail> {
    let sse = [&b"data:"[..], b"event:", b"id:", b"retry:", b": "];
    if looks_like_response(data) || sse.iter().any(|p| data.starts_with(p)) {
        return Some(Tail::Response);
    }
    let body = if matches!(data.first(), Some(b'{' | b'[')) {
        data.iter().take(64).all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace() || b >= 0x80)
    } else {
        // `1a2b\r\n` (with an optional `;ext`), or the CRLF ending a chunk.
        let hex = data.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let rest = &data[hex..];
        (data.starts_with(b"\r\n") && hex == 0)
            || (1..=8).contains(&hex) && (rest.starts_with(b"\r\n") || rest.starts_with(b";"))
    };
    body.then_some(Tail::Body)
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
        for (bytes, kind) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], Tail::Response),
            (b"data: {\"x\":1}\n\n", Tail::Response),
            (b"1a4\r\n{\"id\"", Tail::Body),
            (b"\r\n0\r\n\r\n", Tail::Body),
            (b"{\"id\": 1}", Tail::Body),
            (b"event: ping\n", Tail::Response),
        ] {
            assert_eq!(tail(bytes), Some(kind), "{bytes:?}");
        }
        // A PostgreSQL server's answer to an SSL request, and a TLS record.
        for other in
            [&b"R\x00\x00\x00\x08\x00\x00\x00\x00"[..], b"\x17\x03\x03\x00\x20", b"+OK\r\n", b"xyz\r\n", b"{\x00\x01"]
        {
            assert_eq!(tail(other), None, "{other:?}");
        }
    }
}
