//! One captured connection as HTTP: decides whether it is a client speaking
//! HTTP at all and which version (cheaply, on the first bytes: an HTTP/2 client
//! starts with the connection preface, whatever ALPN chose), then pairs each
//! request with its response: in order over HTTP/1.1 keep-alive, by stream over
//! HTTP/2 ([`super::h2`]).
use std::collections::VecDeque;

use super::h1::{self, Expect, H1Error, Head, Kind, Message, Parser};
use super::h2::{self, H2Connection};

/// A request and the response that answered it.
#[derive(Debug)]
pub struct Exchange {
    pub request: Message,
    pub response: Message,
}

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
    /// 101 Switching Protocols (websocket etc.).
    Upgraded,
}

impl Ignored {
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::NotHttp => "not_http",
            Ignored::Http2Joined => "http2_joined",
            Ignored::ServerSide => "server_side",
            Ignored::Desync => "desync",
            Ignored::Upgraded => "upgraded",
        }
    }
}

enum State {
    /// Waiting for the first request; `calls` egress calls seen that were not one.
    Sniffing {
        calls: u8,
        joined_mid_stream: bool,
        /// The first egress bytes were an HTTP/2 SETTINGS frame: a server's
        /// preface, or a client joined mid-connection; the peer's bytes tell.
        h2_settings_first: bool,
    },
    Client,
    /// An HTTP/1.1 client connection lost bytes: wait for its next request;
    /// `calls` egress calls seen since that were not one.
    Resync {
        calls: u8,
    },
    Http2(Box<H2Connection>),
    Ignored(Ignored),
}

/// Egress calls that may pass without a request line before a connection is
/// declared not HTTP (capture may have started inside a request body).
const MAX_SNIFF_CALLS: u8 = 8;

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
}

pub struct HttpConnection {
    state: State,
    max_body: usize,
    req: Parser,
    resp: Parser,
    /// Requests waiting for their response, oldest first.
    pending: VecDeque<Message>,
}

/// Requests awaiting responses on one connection (HTTP/1.1 clients pipeline
/// little, if at all).
const MAX_PENDING: usize = 64;

impl HttpConnection {
    pub fn new(max_body: usize) -> Self {
        Self {
            state: State::Sniffing { calls: 0, joined_mid_stream: false, h2_settings_first: false },
            max_body,
            req: Parser::new(Kind::Request, max_body),
            resp: Parser::new(Kind::Response, max_body),
            pending: VecDeque::new(),
        }
    }

    pub fn ignored(&self) -> Option<Ignored> {
        match self.state {
            State::Ignored(i) => Some(i),
            _ => None,
        }
    }

    /// Bytes held for this connection.
    pub fn buffered(&self) -> usize {
        let h2 = if let State::Http2(c) = &self.state { c.buffered() } else { 0 };
        h2 + self.req.buffered() + self.resp.buffered() + self.pending.iter().map(|m| m.body.len()).sum::<usize>()
    }

    /// Plaintext the process wrote. `capture` says, per request head, whether the
    /// request is worth buffering (an LLM API call).
    pub fn on_egress(&mut self, data: &[u8], ts: u64, capture: &mut dyn FnMut(&Head) -> bool, lost: &mut Lost) {
        if let State::Sniffing { calls, joined_mid_stream, h2_settings_first } = &mut self.state {
            let n = data.len().min(h2::PREFACE.len());
            if h1::looks_like_request(data) {
                self.state = State::Client;
            } else if n > 0 && data[..n] == h2::PREFACE[..n] {
                self.state = State::Http2(Box::new(H2Connection::new(self.max_body)));
            } else if *calls == 0 && h2::looks_like_server_preface(data) {
                *h2_settings_first = true;
                *calls += 1;
                return;
            } else if h2::looks_like_frames(data) {
                self.state = State::Ignored(Ignored::Http2Joined);
            } else if h1::looks_like_response(data) {
                self.state = State::Ignored(Ignored::ServerSide);
            } else {
                *calls += 1;
                if *calls == 1 && !*joined_mid_stream {
                    *joined_mid_stream = true;
                    lost.joined_mid_stream += 1;
                }
                if *calls >= MAX_SNIFF_CALLS {
                    self.state = State::Ignored(Ignored::NotHttp);
                }
                return;
            }
        }
        if let State::Resync { calls } = &mut self.state {
            if !h1::looks_like_request(data) {
                *calls += 1;
                if *calls >= MAX_SNIFF_CALLS {
                    self.state = State::Ignored(Ignored::Desync);
                }
                return;
            }
            self.state = State::Client;
        }
        if let State::Http2(c) = &mut self.state {
            if let Err(e) = c.on_egress(data, ts, capture, lost) {
                self.give_up_h2(e, lost);
            }
            return;
        }
        if !matches!(self.state, State::Client) {
            return;
        }
        let mut out = Vec::new();
        let r = self.req.push(data, ts, capture, &mut out);
        for m in out {
            if self.pending.len() >= MAX_PENDING {
                // Requests without responses pile up: pairing can't be trusted any more.
                self.lose_sync(lost);
                return;
            }
            self.resp
                .expect(Expect { head_request: m.head.method.as_deref() == Some("HEAD"), capture: m.body_captured });
            self.pending.push_back(m);
        }
        if let Err(e) = r {
            self.give_up(e, lost);
        }
    }

    /// Plaintext the process read. Completed exchanges are appended to `out`.
    pub fn on_ingress(&mut self, data: &[u8], ts: u64, out: &mut Vec<Exchange>, lost: &mut Lost) {
        match &mut self.state {
            State::Sniffing { joined_mid_stream, h2_settings_first, .. } => {
                // The peer spoke first: either we serve HTTP, or capture began
                // between a request and its response (skip it; the next request
                // on this connection starts a clean exchange).
                if h1::looks_like_request(data) || data.starts_with(&h2::PREFACE[..4]) {
                    self.state = State::Ignored(Ignored::ServerSide);
                } else if *h2_settings_first {
                    self.state = State::Ignored(Ignored::Http2Joined);
                } else if !*joined_mid_stream {
                    *joined_mid_stream = true;
                    lost.joined_mid_stream += 1;
                }
                return;
            }
            // The tail of an exchange whose bytes were partly lost.
            State::Ignored(_) | State::Resync { .. } => return,
            State::Http2(c) => {
                if let Err(e) = c.on_ingress(data, ts, out, lost) {
                    self.give_up_h2(e, lost);
                }
                return;
            }
            State::Client => {}
        }
        let mut responses = Vec::new();
        let mut never = |_: &Head| false;
        let r = self.resp.push(data, ts, &mut never, &mut responses);
        self.pair(responses, out);
        if let Err(e) = r {
            self.give_up(e, lost);
        }
    }

    /// The connection is gone (closed, freed, process exited, idle timeout).
    pub fn close(&mut self, ts: u64, out: &mut Vec<Exchange>, lost: &mut Lost) {
        if let State::Http2(c) = &mut self.state {
            c.close(out, lost);
        }
        if let State::Client = self.state {
            if let Some(m) = self.resp.close(ts) {
                self.pair(vec![m], out);
            } else if let Some(m) = self.resp.take_partial() {
                // Handed on marked incomplete: the provider decides whether the
                // content finished (a stream's last event) or the call is lost.
                self.pair(vec![m], out);
            }
        }
        lost.unanswered += self.pending.iter().filter(|m| m.body_captured).count() as u64;
        self.pending.clear();
        self.state = State::Ignored(Ignored::Desync);
    }

    /// Bytes are missing from this connection. HTTP/1.1 exchanges are self-contained:
    /// what was in flight is lost (counted) and the connection resumes at its
    /// next request, so one overflow of the ring buffer does not blind the agent
    /// to a long-lived keep-alive connection. HTTP/2 can't (the HPACK state is
    /// gone): nothing after can be trusted.
    pub fn gap(&mut self, lost: &mut Lost) {
        match self.state {
            State::Client => {
                lost.unanswered += self.pending.iter().filter(|m| m.body_captured).count() as u64;
                self.pending.clear();
                self.req = Parser::new(Kind::Request, self.max_body);
                self.resp = Parser::new(Kind::Response, self.max_body);
                lost.resynced += 1;
                self.state = State::Resync { calls: 0 };
            }
            // Not decoding yet, or already waiting: the sniffing budget applies.
            State::Sniffing { .. } | State::Resync { .. } | State::Ignored(_) => {}
            State::Http2(_) => self.lose_sync(lost),
        }
    }

    /// Nothing after can be trusted: stop decoding this connection.
    pub fn lose_sync(&mut self, lost: &mut Lost) {
        if let State::Http2(c) = &mut self.state {
            c.lose_sync(lost);
        }
        if let State::Client = self.state {
            lost.unanswered += self.pending.iter().filter(|m| m.body_captured).count() as u64;
        }
        self.pending.clear();
        self.state = State::Ignored(Ignored::Desync);
    }

    fn pair(&mut self, responses: Vec<Message>, out: &mut Vec<Exchange>) {
        for response in responses {
            // A response with no request is from before capture began: drop it.
            let Some(request) = self.pending.pop_front() else {
                continue;
            };
            if request.body_captured {
                out.push(Exchange { request, response });
            }
        }
    }

    fn give_up_h2(&mut self, e: h2::H2Error, lost: &mut Lost) {
        tracing::debug!(error = %e, "HTTP/2 decoding failed; ignoring connection");
        self.lose_sync(lost);
    }

    fn give_up(&mut self, e: H1Error, lost: &mut Lost) {
        tracing::debug!(error = %e, "HTTP/1 parse failed; ignoring connection");
        let why = if e == H1Error::Upgraded { Ignored::Upgraded } else { Ignored::Desync };
        self.lose_sync(lost);
        self.state = State::Ignored(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llm(h: &Head) -> bool {
        h.path.as_deref().is_some_and(|p| p.starts_with("/v1/"))
    }

    #[test]
    fn pairs_keep_alive_requests_and_skips_non_llm() {
        let mut c = HttpConnection::new(1 << 20);
        let mut lost = Lost::default();
        let mut out = Vec::new();
        let mut cap = llm;
        c.on_egress(b"GET /health HTTP/1.1\r\n\r\n", 1, &mut cap, &mut lost);
        c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 2, &mut cap, &mut lost);
        c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 3, &mut out, &mut lost);
        c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{\"a\"", 4, &mut out, &mut lost);
        assert!(out.is_empty());
        c.on_ingress(b"}", 5, &mut out, &mut lost);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].request.body, b"{}");
        assert_eq!(out[0].response.body, b"{\"a\"}");
        assert_eq!(out[0].response.last_ts, 5);
        assert_eq!(lost, Lost::default());
    }

    #[test]
    fn classifies_first_bytes() {
        let mut lost = Lost::default();
        let mut cap = llm;
        let mut c = HttpConnection::new(1024);
        c.on_egress(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1, &mut cap, &mut lost);
        assert_eq!(c.ignored(), None);
        assert!(matches!(c.state, State::Http2(_)));
        let mut c = HttpConnection::new(1024);
        c.on_egress(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0], 1, &mut cap, &mut lost);
        assert_eq!(c.ignored(), Some(Ignored::Http2Joined));
        // An HTTP/2 server: its SETTINGS first, then the client's preface arrives.
        let mut c = HttpConnection::new(1024);
        c.on_egress(&[0, 0, 0, 4, 0, 0, 0, 0, 0], 1, &mut cap, &mut lost);
        assert_eq!(c.ignored(), None);
        c.on_ingress(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 2, &mut Vec::new(), &mut lost);
        assert_eq!(c.ignored(), Some(Ignored::ServerSide));
        let mut c = HttpConnection::new(1024);
        c.on_egress(b"HTTP/1.1 200 OK\r\n", 1, &mut cap, &mut lost);
        assert_eq!(c.ignored(), Some(Ignored::ServerSide));
        let mut c = HttpConnection::new(1024);
        c.on_ingress(b"POST /v1/x HTTP/1.1\r\n", 1, &mut Vec::new(), &mut lost);
        assert_eq!(c.ignored(), Some(Ignored::ServerSide));
        let mut c = HttpConnection::new(1024);
        for i in 0..MAX_SNIFF_CALLS {
            assert_eq!(c.ignored(), None);
            c.on_egress(b"\x00\x01binary", i as u64, &mut cap, &mut lost);
        }
        assert_eq!(c.ignored(), Some(Ignored::NotHttp));
    }

    #[test]
    fn joins_mid_stream_at_the_next_request() {
        let mut c = HttpConnection::new(1 << 20);
        let mut lost = Lost::default();
        let mut out = Vec::new();
        let mut cap = llm;
        // Capture began after the request was written: its response is skipped...
        c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1, &mut out, &mut lost);
        // ...and the next exchange is captured.
        c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 2, &mut cap, &mut lost);
        c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 3, &mut out, &mut lost);
        assert_eq!(out.len(), 1);
        assert_eq!(lost.joined_mid_stream, 1);
        assert_eq!(c.ignored(), None);
    }

    #[test]
    fn close_mid_response_counts_the_loss() {
        let mut c = HttpConnection::new(1 << 20);
        let mut lost = Lost::default();
        let mut out = Vec::new();
        let mut cap = llm;
        c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1, &mut cap, &mut lost);
        c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", 2, &mut out, &mut lost);
        c.close(3, &mut out, &mut lost);
        // Handed on incomplete; the provider stage rejects it.
        assert_eq!(out.len(), 1);
        assert!(!out[0].response.complete);
        assert_eq!(out[0].response.body, b"partial");
        c.close(4, &mut out, &mut lost);
        assert_eq!(lost.unanswered, 0);
    }

    #[test]
    fn close_completes_a_body_framed_by_close() {
        let mut c = HttpConnection::new(1 << 20);
        let mut lost = Lost::default();
        let mut out = Vec::new();
        let mut cap = llm;
        c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1, &mut cap, &mut lost);
        c.on_ingress(b"HTTP/1.1 200 OK\r\n\r\n{}", 2, &mut out, &mut lost);
        c.close(3, &mut out, &mut lost);
        assert_eq!(out.len(), 1);
        assert_eq!(lost.unanswered, 0);
    }

    #[test]
    fn a_gap_loses_the_exchange_in_flight_and_resumes_at_the_next_request() {
        let mut c = HttpConnection::new(1 << 20);
        let mut lost = Lost::default();
        let mut out = Vec::new();
        let mut cap = llm;
        let req = b"POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        c.on_egress(req, 1, &mut cap, &mut lost);
        c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\"", 2, &mut out, &mut lost);
        // The rest of that response was lost to a full ring buffer.
        c.gap(&mut lost);
        assert_eq!((lost.unanswered, lost.resynced), (1, 1));
        assert_eq!(c.ignored(), None, "still decoded");
        // Its stray tail, and anything not a request, is skipped...
        c.on_ingress(b":1}", 3, &mut out, &mut lost);
        c.on_egress(b"garbage", 4, &mut cap, &mut lost);
        // ...until the next request, which is captured whole.
        c.on_egress(req, 5, &mut cap, &mut lost);
        c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 6, &mut out, &mut lost);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].response.body, b"ok");
        assert_eq!(out[0].request.first_ts, 5);
        // A connection that never sends a request again is given up.
        c.gap(&mut lost);
        for i in 0..MAX_SNIFF_CALLS {
            c.on_egress(b"\x00binary", 10 + i as u64, &mut cap, &mut lost);
        }
        assert_eq!(c.ignored(), Some(Ignored::Desync));
        // HTTP/2 can't resume (HPACK state lost).
        let mut c = HttpConnection::new(1024);
        c.on_egress(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1, &mut cap, &mut lost);
        c.gap(&mut lost);
        assert_eq!(c.ignored(), Some(Ignored::Desync));
    }

    #[test]
    fn malformed_response_desyncs_and_counts() {
        let mut c = HttpConnection::new(1 << 20);
        let mut lost = Lost::default();
        let mut out = Vec::new();
        let mut cap = llm;
        c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1, &mut cap, &mut lost);
        c.on_ingress(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nXYZ\r\n", 2, &mut out, &mut lost);
        assert_eq!(c.ignored(), Some(Ignored::Desync));
        assert_eq!(lost.unanswered, 1);
    }
}
