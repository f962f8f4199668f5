//! One captured connection as HTTP: decides whether it is a client speaking
//! HTTP at all and which version (cheaply, on the first bytes: an HTTP/2 client
//! starts with the connection preface, whatever ALPN chose), then pairs each
//! request with its response: in order over HTTP/1.1 keep-alive, by stream over
//! HTTP/2 ([`super::h2`]). Each request is classified once, at its head; the
//! verdict decides whether its bodies are buffered and travels with its exchange.
use std::collections::VecDeque;

use super::h1::{Expect, H1Error, Kind, Parser, MAX_HEAD_BYTES};
use super::h2::{self, H2Connection};
// Re-exported: providers and fuzz targets name them here.
pub use super::message::{Classified, Exchange, Lost};
use super::message::{Head, Message};
use super::sniff;
use crate::capture::event::Direction;
use crate::capture::streams::Continuity;

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
        }
    }
}

enum State<E> {
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
    Http2(Box<H2Connection<E>>),
    Ignored(Ignored),
}

/// Egress calls that may pass without a request line before a connection is
/// declared not HTTP (capture may have started inside a request body).
const MAX_SNIFF_CALLS: u8 = 8;

/// Whether a connection kept what it was given, or held too much and was
/// given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Held {
    Within,
    /// More than two bodies' worth (a request and its response): pipelining or
    /// garbage. Its calls in flight count as lost.
    OverCap,
}

pub struct HttpConnection<E = ()> {
    state: State<E>,
    max_body: usize,
    req: Parser,
    resp: Parser,
    /// Requests waiting for their response, oldest first, with their
    /// classification (none: not worth recording, kept to pair in order).
    pending: VecDeque<(Message, Option<E>)>,
    /// Classifications of request heads the parser has passed but whose
    /// messages it has not finished, oldest first: the parser sees each head
    /// once and finishes messages in order, so each finished message takes the
    /// front one.
    heads: VecDeque<Option<E>>,
}

/// Requests awaiting responses on one connection (HTTP/1.1 clients pipeline
/// little, if at all).
const MAX_PENDING: usize = 64;

impl<E> HttpConnection<E> {
    pub fn new(max_body: usize) -> Self {
        Self {
            state: State::Sniffing { calls: 0, joined_mid_stream: false, h2_settings_first: false },
            max_body,
            req: Parser::new(Kind::Request, max_body),
            resp: Parser::new(Kind::Response, max_body),
            pending: VecDeque::new(),
            heads: VecDeque::new(),
        }
    }

    /// One captured chunk. A hole before it drops what was in flight (HTTP/1.1
    /// resumes at its next request); a chunk with a hole of its own is skipped.
    #[allow(clippy::too_many_arguments)]
    pub fn on_chunk(
        &mut self,
        direction: Direction,
        continuity: Continuity,
        data: &[u8],
        ts: u64,
        classify: &mut dyn FnMut(&Head) -> Option<E>,
        out: &mut Vec<Classified<E>>,
        lost: &mut Lost,
    ) -> Held {
        if continuity != Continuity::InOrder {
            self.gap(lost);
        }
        // A chunk that starts a call after the loss (`GapBefore`) is whole.
        if continuity != Continuity::Gap {
            match direction {
                Direction::Egress => self.on_egress(data, ts, classify, lost),
                Direction::Ingress => self.on_ingress(data, ts, out, lost),
            }
        }
        if self.buffered() > 2 * self.max_body + 2 * MAX_HEAD_BYTES {
            self.lose_sync(lost);
            return Held::OverCap;
        }
        Held::Within
    }

    /// Would `data`, written by the process, start a new connection on this
    /// one's identity? A request head or the HTTP/2 preface after this one gave
    /// up, or the preface again on an HTTP/2 connection. Only asked for sources
    /// whose connection ends are not seen.
    pub fn restarts_with(&self, data: &[u8]) -> bool {
        match &self.state {
            State::Ignored(_) => sniff::looks_like_request(data) || sniff::starts_like_preface(data),
            State::Http2(_) => data.starts_with(h2::PREFACE),
            _ => false,
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
        let pending: usize = self.pending.iter().map(|(m, _)| m.body.len()).sum();
        h2 + self.req.buffered() + self.resp.buffered() + pending
    }

    /// Plaintext the process wrote. `classify` runs once per request head; the
    /// requests it tags (LLM API calls) are buffered and paired.
    pub fn on_egress(&mut self, data: &[u8], ts: u64, classify: &mut dyn FnMut(&Head) -> Option<E>, lost: &mut Lost) {
        if let State::Sniffing { calls, joined_mid_stream, h2_settings_first } = &mut self.state {
            if sniff::looks_like_request(data) {
                self.state = State::Client;
            } else if sniff::starts_like_preface(data) {
                self.state = State::Http2(Box::new(H2Connection::new(self.max_body)));
            } else if *calls == 0 && h2::looks_like_server_preface(data) {
                *h2_settings_first = true;
                *calls += 1;
                return;
            } else if h2::looks_like_frames(data) {
                self.state = State::Ignored(Ignored::Http2Joined);
            } else if sniff::looks_like_response(data) {
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
            if !sniff::looks_like_request(data) {
                *calls += 1;
                if *calls >= MAX_SNIFF_CALLS {
                    self.state = State::Ignored(Ignored::Desync);
                }
                return;
            }
            self.state = State::Client;
        }
        if let State::Http2(c) = &mut self.state {
            if let Err(e) = c.on_egress(data, ts, classify, lost) {
                self.give_up_h2(e, lost);
            }
            return;
        }
        if !matches!(self.state, State::Client) {
            return;
        }
        let mut out = Vec::new();
        let heads = &mut self.heads;
        let mut capture = |h: &Head| {
            let endpoint = classify(h);
            let keep = endpoint.is_some();
            heads.push_back(endpoint);
            keep
        };
        let r = self.req.push(data, ts, &mut capture, &mut out);
        for m in out {
            let endpoint = self.heads.pop_front().flatten();
            if self.pending.len() >= MAX_PENDING {
                // Requests without responses pile up: pairing can't be trusted any more.
                self.lose_sync(lost);
                return;
            }
            self.resp
                .expect(Expect { head_request: m.head.method.as_deref() == Some("HEAD"), capture: m.body_captured });
            self.pending.push_back((m, endpoint));
        }
        if let Err(e) = r {
            self.give_up(e, lost);
        }
    }

    /// Plaintext the process read. Completed exchanges are appended to `out`.
    pub fn on_ingress(&mut self, data: &[u8], ts: u64, out: &mut Vec<Classified<E>>, lost: &mut Lost) {
        match &mut self.state {
            State::Sniffing { joined_mid_stream, h2_settings_first, .. } => {
                // The peer spoke first: either we serve HTTP, or capture began
                // between a request and its response (skip it; the next request
                // on this connection starts a clean exchange).
                if sniff::looks_like_request(data) || data.starts_with(&h2::PREFACE[..4]) {
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
    pub fn close(&mut self, ts: u64, out: &mut Vec<Classified<E>>, lost: &mut Lost) {
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
        lost.unanswered += self.unanswered();
        self.pending.clear();
        self.heads.clear();
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
                lost.unanswered += self.unanswered();
                self.pending.clear();
                self.heads.clear();
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
            lost.unanswered += self.unanswered();
        }
        self.pending.clear();
        self.heads.clear();
        self.state = State::Ignored(Ignored::Desync);
    }

    /// Pending requests worth recording.
    fn unanswered(&self) -> u64 {
        self.pending.iter().filter(|(m, _)| m.body_captured).count() as u64
    }

    fn pair(&mut self, responses: Vec<Message>, out: &mut Vec<Classified<E>>) {
        for response in responses {
            // A response with no request is from before capture began: drop it.
            let Some((request, endpoint)) = self.pending.pop_front() else {
                continue;
            };
            if let Some(endpoint) = endpoint {
                out.push(Classified { endpoint, exchange: Exchange { request, response } });
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

    fn llm(h: &Head) -> Option<()> {
        h.path.as_deref().is_some_and(|p| p.starts_with("/v1/")).then_some(())
    }

    #[test]
    fn pairs_keep_alive_requests_and_skips_non_llm() {
        let mut c = HttpConnection::<()>::new(1 << 20);
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
        assert_eq!(out[0].exchange.request.body, b"{}");
        assert_eq!(out[0].exchange.response.body, b"{\"a\"}");
        assert_eq!(out[0].exchange.response.last_ts, 5);
        assert_eq!(lost, Lost::default());
    }

    #[test]
    fn classifies_first_bytes() {
        let mut lost = Lost::default();
        let mut cap = llm;
        let mut c = HttpConnection::<()>::new(1024);
        c.on_egress(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1, &mut cap, &mut lost);
        assert_eq!(c.ignored(), None);
        assert!(matches!(c.state, State::Http2(_)));
        let mut c = HttpConnection::<()>::new(1024);
        c.on_egress(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0], 1, &mut cap, &mut lost);
        assert_eq!(c.ignored(), Some(Ignored::Http2Joined));
        // An HTTP/2 server: its SETTINGS first, then the client's preface arrives.
        let mut c = HttpConnection::<()>::new(1024);
        c.on_egress(&[0, 0, 0, 4, 0, 0, 0, 0, 0], 1, &mut cap, &mut lost);
        assert_eq!(c.ignored(), None);
        c.on_ingress(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 2, &mut Vec::new(), &mut lost);
        assert_eq!(c.ignored(), Some(Ignored::ServerSide));
        let mut c = HttpConnection::<()>::new(1024);
        c.on_egress(b"HTTP/1.1 200 OK\r\n", 1, &mut cap, &mut lost);
        assert_eq!(c.ignored(), Some(Ignored::ServerSide));
        let mut c = HttpConnection::<()>::new(1024);
        c.on_ingress(b"POST /v1/x HTTP/1.1\r\n", 1, &mut Vec::new(), &mut lost);
        assert_eq!(c.ignored(), Some(Ignored::ServerSide));
        let mut c = HttpConnection::<()>::new(1024);
        for i in 0..MAX_SNIFF_CALLS {
            assert_eq!(c.ignored(), None);
            c.on_egress(b"\x00\x01binary", i as u64, &mut cap, &mut lost);
        }
        assert_eq!(c.ignored(), Some(Ignored::NotHttp));
    }

    #[test]
    fn joins_mid_stream_at_the_next_request() {
        let mut c = HttpConnection::<()>::new(1 << 20);
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
        let mut c = HttpConnection::<()>::new(1 << 20);
        let mut lost = Lost::default();
        let mut out = Vec::new();
        let mut cap = llm;
        c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1, &mut cap, &mut lost);
        c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", 2, &mut out, &mut lost);
        c.close(3, &mut out, &mut lost);
        // Handed on incomplete; the provider stage rejects it.
        assert_eq!(out.len(), 1);
        assert!(!out[0].exchange.response.complete);
        assert_eq!(out[0].exchange.response.body, b"partial");
        c.close(4, &mut out, &mut lost);
        assert_eq!(lost.unanswered, 0);
    }

    #[test]
    fn close_completes_a_body_framed_by_close() {
        let mut c = HttpConnection::<()>::new(1 << 20);
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
        let mut c = HttpConnection::<()>::new(1 << 20);
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
        assert_eq!(out[0].exchange.response.body, b"ok");
        assert_eq!(out[0].exchange.request.first_ts, 5);
        // A connection that never sends a request again is given up.
        c.gap(&mut lost);
        for i in 0..MAX_SNIFF_CALLS {
            c.on_egress(b"\x00binary", 10 + i as u64, &mut cap, &mut lost);
        }
        assert_eq!(c.ignored(), Some(Ignored::Desync));
        // HTTP/2 can't resume (HPACK state lost).
        let mut c = HttpConnection::<()>::new(1024);
        c.on_egress(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1, &mut cap, &mut lost);
        c.gap(&mut lost);
        assert_eq!(c.ignored(), Some(Ignored::Desync));
    }

    /// Each exchange carries its own request's classification, across
    /// pipelining, a request not worth recording in between, and a gap.
    #[test]
    fn each_exchange_carries_its_requests_classification() {
        let mut c: HttpConnection<String> = HttpConnection::new(1 << 20);
        let mut lost = Lost::default();
        let mut out = Vec::new();
        let mut path = |h: &Head| h.path.clone().filter(|p| p.starts_with("/v1/"));
        let req = |p: &str| format!("POST {p} HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}");
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        // Pipelined, and split inside the second head.
        let all = [req("/v1/a"), req("/health"), req("/v1/b")].concat();
        let (x, y) = all.as_bytes().split_at(60);
        c.on_egress(x, 1, &mut path, &mut lost);
        c.on_egress(y, 2, &mut path, &mut lost);
        for _ in 0..3 {
            c.on_ingress(ok, 3, &mut out, &mut lost);
        }
        // A head read, then bytes lost before the end of its body.
        c.on_egress(b"POST /v1/lost HTTP/1.1\r\nContent-Length: 9\r\n\r\n{", 4, &mut path, &mut lost);
        c.gap(&mut lost);
        c.on_egress(req("/v1/c").as_bytes(), 5, &mut path, &mut lost);
        c.on_ingress(ok, 6, &mut out, &mut lost);
        let got: Vec<_> = out.iter().map(|x| (x.endpoint.as_str(), x.exchange.request.head.path.as_deref())).collect();
        assert_eq!(got, [("/v1/a", Some("/v1/a")), ("/v1/b", Some("/v1/b")), ("/v1/c", Some("/v1/c"))]);
    }

    #[test]
    fn chunks_dispatch_by_direction_skip_holes_and_cap_what_is_held() {
        let mut c = HttpConnection::<()>::new(10_000);
        let mut lost = Lost::default();
        let mut out = Vec::new();
        let mut cap = llm;
        let req = b"POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut chunk = |c: &mut HttpConnection, d, cont, data: &[u8], out: &mut Vec<_>| {
            c.on_chunk(d, cont, data, 1, &mut cap, out, &mut lost)
        };
        assert_eq!(chunk(&mut c, Direction::Egress, Continuity::InOrder, req, &mut out), Held::Within);
        // A chunk with a hole of its own is not decoded.
        assert_eq!(chunk(&mut c, Direction::Ingress, Continuity::Gap, ok, &mut out), Held::Within);
        assert!(out.is_empty());
        // A whole call after a hole is.
        assert_eq!(chunk(&mut c, Direction::Egress, Continuity::GapBefore, req, &mut out), Held::Within);
        assert_eq!(chunk(&mut c, Direction::Ingress, Continuity::InOrder, ok, &mut out), Held::Within);
        assert_eq!(out.len(), 1);
        // Requests never answered pile up past two bodies' worth.
        let big = [&b"POST /v1/x HTTP/1.1\r\nContent-Length: 10000\r\n\r\n"[..], &[b'y'; 10_000]].concat();
        let held: Vec<Held> =
            (0..40).map(|_| chunk(&mut c, Direction::Egress, Continuity::InOrder, &big, &mut out)).collect();
        assert_eq!(held.iter().filter(|h| **h == Held::OverCap).count(), 1);
        assert_eq!(c.ignored(), Some(Ignored::Desync));
        assert!(lost.unanswered >= 14);
    }

    #[test]
    fn malformed_response_desyncs_and_counts() {
        let mut c = HttpConnection::<()>::new(1 << 20);
        let mut lost = Lost::default();
        let mut out = Vec::new();
        let mut cap = llm;
        c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1, &mut cap, &mut lost);
        c.on_ingress(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nXYZ\r\n", 2, &mut out, &mut lost);
        assert_eq!(c.ignored(), Some(Ignored::Desync));
        assert_eq!(lost.unanswered, 1);
    }
}
