//! What the HTTP stage hands on, whatever the version: message heads and
//! messages, a request paired with its response (tagged with what the request
//! was classified as), and what was lost on the way.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Request method (requests only).
    pub method: Option<String>,
    /// Request target (requests only).
    pub path: Option<String>,
    /// Status code (responses only).
    pub status: Option<u16>,
    /// HTTP/1.x minor version.
    pub minor_version: u8,
    /// Carried over HTTP/2 (pseudo-headers mapped: `:authority` is `host`).
    pub http2: bool,
    /// Header names lower-cased, values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| std::str::from_utf8(v).ok()).map(str::trim)
    }

    /// Whether a comma-separated header (`transfer-encoding`, …) lists `token`.
    /// Does this request open a WebSocket: an HTTP/1.1 `GET` with `Upgrade:
    /// websocket`, or an HTTP/2 extended CONNECT (RFC 8441, `:protocol`
    /// websocket)?
    pub fn opens_websocket(&self) -> bool {
        match self.method.as_deref() {
            Some("GET") => self.has_token("upgrade", "websocket"),
            Some("CONNECT") => self.http2 && self.has_token(":protocol", "websocket"),
            _ => false,
        }
    }

    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .any(|(_, v)| String::from_utf8_lossy(v).split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

/// One complete HTTP message.
#[derive(Clone, Debug, Default)]
pub struct Message {
    pub head: Head,
    /// Body with transfer coding removed (content coding still applied).
    pub body: Vec<u8>,
    /// The body was larger than the cap (or not captured): `body` is incomplete.
    pub body_truncated: bool,
    /// Whether the body was captured at all.
    pub body_captured: bool,
    /// The message ended where its framing says. False for a message cut short by
    /// the connection closing.
    pub complete: bool,
    /// Monotonic ns of the first and last byte seen.
    pub first_ts: u64,
    pub last_ts: u64,
    /// `(body length after a piece arrived, its timestamp)`, at most one mark per
    /// piece and at most a few thousand; maps a body offset to when it arrived.
    pub body_marks: Vec<(usize, u64)>,
}

impl Message {
    /// When the body byte at `offset` arrived.
    pub fn ts_of_body_offset(&self, offset: usize) -> Option<u64> {
        self.body_marks.iter().find(|(end, _)| *end > offset).map(|(_, ts)| *ts)
    }
}

/// A request and the response that answered it.
#[derive(Debug)]
pub struct Exchange {
    pub request: Message,
    pub response: Message,
}

/// An exchange and what its request was classified as (`E`), once, when its
/// head arrived: the same verdict decided whether its bodies were buffered.
#[derive(Debug)]
pub struct Classified<E> {
    pub endpoint: E,
    pub exchange: Exchange,
}

/// What the HTTP stage drops, one kind per counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpDrop {
    /// A request worth recording never got a complete response.
    Unanswered,
    /// Capture began mid-exchange: that exchange is skipped.
    JoinedMidStream,
    /// An HTTP/1.1 connection lost bytes and resumed at its next request.
    Resynced,
    /// A WebSocket session or request message not kept for its calls.
    WsMessageDropped,
    /// A WebSocket over an HTTP/2 stream whose framing broke: that stream's
    /// decoding ends (the connection's other streams go on).
    WsMalformed,
    /// A connection that ended before its bytes were shown to be HTTP.
    NotHttp,
    /// A request in flight in the state an upgrade's old agent handed on,
    /// whose answer was read where no agent copied it.
    AtHandover,
}

/// What was lost when a connection ended or was given up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// LLM requests that never got a complete response.
    pub unanswered: u64,
    /// Connections whose capture began mid-exchange (that exchange is skipped,
    /// the next request on the connection is captured).
    pub joined_mid_stream: u64,
    /// HTTP/1.1 connections that resumed at their next request after a gap.
    pub resynced: u64,
    /// WebSocket session or request messages not kept (over the body cap
    /// with those kept): the calls that follow are read without them.
    pub ws_messages_dropped: u64,
    /// WebSockets over HTTP/2 streams given up (framing or compression broke).
    pub ws_malformed: u64,
    /// Connections that ended before their bytes were shown to be HTTP (those
    /// that go on are given up as not HTTP: the same counter).
    pub not_http: u64,
    /// LLM requests in flight in a state handed on in an upgrade whose answer
    /// went by unseen (the first bytes read after it did not go on from it).
    pub at_handover: u64,
}

impl Lost {
    /// Each kind of drop with its count.
    pub fn counts(&self) -> [(HttpDrop, u64); 7] {
        [
            (HttpDrop::Unanswered, self.unanswered),
            (HttpDrop::AtHandover, self.at_handover),
            (HttpDrop::JoinedMidStream, self.joined_mid_stream),
            (HttpDrop::Resynced, self.resynced),
            (HttpDrop::WsMessageDropped, self.ws_messages_dropped),
            (HttpDrop::WsMalformed, self.ws_malformed),
            (HttpDrop::NotHttp, self.not_http),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_lookups_and_body_marks() {
        let h = Head {
            headers: vec![("transfer-encoding".into(), b"gzip, Chunked".to_vec()), ("host".into(), b" a ".to_vec())],
            ..Default::default()
        };
        assert_eq!(h.header("host"), Some("a"));
        assert!(h.has_token("transfer-encoding", "chunked"));
        assert!(!h.has_token("host", "chunked"));
        let m = Message { body_marks: vec![(2, 10), (5, 20)], ..Default::default() };
        assert_eq!(
            (m.ts_of_body_offset(1), m.ts_of_body_offset(4), m.ts_of_body_offset(5)),
            (Some(10), Some(20), None)
        );
        let lost = Lost {
            unanswered: 1,
            joined_mid_stream: 2,
            resynced: 3,
            ws_messages_dropped: 4,
            ws_malformed: 5,
            not_http: 6,
            at_handover: 7,
        };
        assert_eq!(lost.counts().iter().map(|(_, n)| n).sum::<u64>(), 28);
    }
}
