//! Why a connection is not parsed (any more): the reasons the exchange
//! ([`super::exchange`]) gives a connection up with, which the stats, the
//! coverage and the blind-spot report count apart.

/// Why a connection is not parsed (any more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// The first bytes are not HTTP/1.x.
    NotHttp,
    /// HTTP/2 frames without the preface: capture joined an open connection
    /// whose HPACK state is unknown, so nothing on it can be decoded safely.
    Http2Joined,
    /// We are the server end of this connection (its client is captured elsewhere, or
    /// not at all); counting it would double count.
    ServerSide,
    /// Parsing failed after a good start, or bytes were lost.
    Desync,
    /// 101 Switching Protocols to something other than a WebSocket of an LLM
    /// API (a WebSocket to anything else, another protocol).
    Upgraded,
    /// A WebSocket of an LLM API whose framing or compression broke.
    WebSocket,
}

impl Ignored {
    /// Every reason, in the order a handed-on state numbers them.
    pub(super) const ALL: [Self; 6] =
        [Self::NotHttp, Self::Http2Joined, Self::ServerSide, Self::Desync, Self::Upgraded, Self::WebSocket];

    /// Connections that are nothing to decode (a database, a server end) are
    /// normal; the rest hide calls from the agent.
    pub fn is_blind_spot(self) -> bool {
        !matches!(self, Ignored::NotHttp | Ignored::ServerSide)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::NotHttp => "not_http",
            Ignored::Http2Joined => "http2_joined",
            Ignored::ServerSide => "server_side",
            Ignored::Desync => "desync",
            Ignored::Upgraded => "upgraded",
            Ignored::WebSocket => "websocket_malformed",
        }
    }
}
