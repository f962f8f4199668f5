//! One captured connection as HTTP: decides whether it is a client speaking
//! HTTP at all and which version (cheaply, on the first bytes: an HTTP/2 client
//! starts with the connection preface, whatever ALPN chose), then pairs each
//! request with its response: in order over HTTP/1.1 keep-alive, by stream over
//! HTTP/2 ([`super::h2`]). Each request is classified once, at its head; the
//! verdict decides whether its bodies are buffered and travels with its exchange.
use std::collections::VecDeque;

use super::h1::{Expect, H1Error, Kind, Parser, MAX_HEAD_BYTES};
use super::h2::{self, H2Connection};
// Re-exported: the stats and coverage name it here.
pub use super::ignored::Ignored;
use super::websocket;
use super::ws_session::{WsCalls, WsSession};
// Re-exported: providers and fuzz targets name them here.
pub use super::message::{Classified, Exchange, Lost};
use super::message::{Head, Message};
use super::mute::{Jump, Mute, Muting, StreamAt};
use super::sniff;
use crate::capture::event::Direction;
use crate::capture::streams::Continuity;

enum State<E> {
    /// Waiting for the first request; `calls` egress calls seen that were not one.
    Sniffing {
        calls: u8,
        /// Bytes were skipped that are not (yet) known to be HTTP: counted as
        /// a mid-stream join once the connection proves HTTP, as not HTTP
        /// when it never does.
        skipped: Skipped,
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
    /// Switched to a WebSocket: its calls, message by message.
    WebSocket(Box<WsSession<E>>),
    Ignored(Ignored),
}

/// What a connection that is still sniffing skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skipped {
    Nothing,
    /// Bytes that may be HTTP's or garbage: not counted yet.
    Unknown,
    /// A message body read ([`sniff::Tail::Body`]): a client's lost response
    /// (counted in `joined_mid_stream` once the connection writes a request
    /// or ends) or a server's request (not counted once it answers).
    Body,
    /// The tail of an HTTP exchange: counted in `joined_mid_stream`.
    Counted,
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
    /// Response bodies the kernel is asked not to copy.
    muting: Muting,
    /// Resumed from the agent before's HTTP/1.1 state, no answer byte read
    /// since: the first may follow a read no agent copied.
    taken_over: bool,
    /// The next egress chunk starts a call ([`Self::chunk_starts_call`]):
    /// the sniffing budget counts calls, not a large call's many chunks.
    call_start: bool,
    /// Joined midway after an upgrade ([`Self::joined_after_upgrade`]): the
    /// sniffing budget also lets a request body pass (`sniffed`), until the
    /// peer says something that is not an HTTP answer's tail.
    patient: bool,
    /// Egress bytes sniffed without a request line.
    sniffed: u64,
}

/// Requests awaiting responses on one connection (HTTP/1.1 clients pipeline
/// little, if at all); a handed-on state carrying more is refused.
pub(crate) const MAX_PENDING: usize = 64;

impl<E: WsCalls> HttpConnection<E> {
    pub fn new(max_body: usize) -> Self {
        Self {
            state: State::Sniffing { calls: 0, skipped: Skipped::Nothing, h2_settings_first: false },
            max_body,
            req: Parser::new(Kind::Request, max_body),
            resp: Parser::new(Kind::Response, max_body),
            pending: VecDeque::new(),
            heads: VecDeque::new(),
            muting: Muting::default(),
            taken_over: false,
            call_start: true,
            patient: false,
            sniffed: 0,
        }
    }

    /// A connection an agent before decoded (taken over in an upgrade) whose
    /// state did not come: joined midway, maybe inside a request body that a
    /// client writes in many calls (Go's HTTP client writes one of 4 KiB at a
    /// time). Declared not HTTP only past its calls budget and two bodies'
    /// worth of bytes without a request line, so that a body of megabytes
    /// does not make every later call on the connection ignored; unless the
    /// peer's bytes are not an HTTP answer's (a connection the agent before
    /// had ignored, a WebSocket session: each byte of them is copied while
    /// it sniffs).
    pub fn joined_after_upgrade(max_body: usize) -> Self {
        Self { patient: true, ..Self::new(max_body) }
    }

    /// Whether the next chunk starts its call (a chunk at offset 0) or goes
    /// on with one. Unsaid, every chunk counts as a call.
    pub fn chunk_starts_call(&mut self, starts: bool) {
        self.call_start = starts;
    }

    /// One captured chunk. A hole before it drops what was in flight (HTTP/1.1
    /// resumes at its next request); a chunk with a hole of its own is skipped.
    /// `at`: where an ingress chunk sits in the kernel's count of the
    /// connection's read bytes, which shows the bytes it muted.
    #[allow(clippy::too_many_arguments)]
    pub fn on_chunk(
        &mut self,
        direction: Direction,
        continuity: Continuity,
        at: StreamAt,
        data: &[u8],
        ts: u64,
        classify: &mut dyn FnMut(&Head) -> Option<E>,
        out: &mut Vec<Classified<E>>,
        lost: &mut Lost,
    ) -> Held {
        if direction == Direction::Ingress {
            match (self.muting.arrive(at, data.len()), continuity, &mut self.state) {
                (Jump::Muted(n), Continuity::InOrder, _) => self.skip_muted(n, out, lost),
                // The kernel skipped a muted stream's DATA payload.
                (Jump::Unexplained(n), Continuity::InOrder, State::Http2(c)) => {
                    if let Err(e) = c.skip_ingress(n) {
                        self.give_up_h2(e, lost);
                    }
                }
                _ => {}
            }
        }
        if continuity != Continuity::InOrder {
            if direction == Direction::Egress {
                // Lost in this agent's capture (its ring full), not an
                // answer the upgrade left unseen.
                self.taken_over = false;
            }
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
            // A client's frame never starts like a request: its first byte
            // would be an unknown opcode or a reserved bit (`G`, `P`, ...).
            State::WebSocket(_) => sniff::looks_like_request(data) || sniff::starts_like_preface(data),
            _ => false,
        }
    }

    /// A WebSocket both peers closed: nothing more will come on it.
    pub fn finished(&self) -> bool {
        matches!(&self.state, State::WebSocket(ws) if ws.is_done())
    }

    /// Given up or finished, and `data` could be a moved WebSocket's next
    /// bytes (a 101, a frame): a moved connection may take this key over.
    /// The cheap check on the bytes first spares the search for one on every
    /// call of a connection given up.
    pub fn replaceable_by(&self, direction: Direction, data: &[u8]) -> bool {
        let switching = data.starts_with(b"HTTP/1.1 101 ") || data.starts_with(b"HTTP/1.0 101 ");
        let moved = (direction == Direction::Ingress && switching)
            || websocket::looks_like_frame(data, direction == Direction::Egress);
        moved && (matches!(self.state, State::Ignored(_)) || self.finished())
    }

    /// Could `data`, the first bytes seen under a new key of the same
    /// process, be this connection's next ones (its object moved: see
    /// `Source::key_may_move`)? Only at the quiet points of a WebSocket
    /// upgrade: its request sent and the response awaited, or the switch made
    /// and no frame since. Returns when that point was reached.
    pub fn continues_with(&self, direction: Direction, data: &[u8]) -> Option<u64> {
        match (&self.state, direction) {
            (State::WebSocket(ws), _) => {
                ws.untouched_since().filter(|_| websocket::looks_like_frame(data, direction == Direction::Egress))
            }
            (State::Client, Direction::Ingress) => {
                let [(upgrade, _)] = self.pending.as_slices().0 else { return None };
                let switching = data.starts_with(b"HTTP/1.1 101 ") || data.starts_with(b"HTTP/1.0 101 ");
                (switching && upgrade.head.has_token("upgrade", "websocket") && !self.resp.in_message())
                    .then_some(upgrade.last_ts)
            }
            _ => None,
        }
    }

    /// What the kernel should not copy (a response body's range, an HTTP/2
    /// stream's DATA), each once.
    pub fn take_mute(&mut self) -> Option<Mute> {
        if let Some((from, to)) = self.muting.take_request() {
            return Some(Mute::Range { from, to });
        }
        let State::Http2(c) = &mut self.state else { return None };
        let (walk, stream) = c.take_mute(self.muting.base()?)?;
        Some(Mute::H2Stream { walk, stream })
    }

    /// The kernel skipped `n` bytes of the body being read, as asked.
    fn skip_muted(&mut self, n: u64, out: &mut Vec<Classified<E>>, lost: &mut Lost) {
        if !matches!(self.state, State::Client) {
            return;
        }
        let mut done = Vec::new();
        if self.resp.skip_body(n, &mut done) {
            if self.pair(done, out) {
                self.gap(lost);
            }
        } else {
            // The parser is not where the range said: resume at the next request.
            self.gap(lost);
        }
    }

    /// LLM calls begun and not yet complete: a request being written or
    /// waiting for (the rest of) its response. A handover waits for these.
    pub fn calls_in_flight(&self) -> usize {
        match &self.state {
            State::Client | State::Resync { .. } => {
                let waiting = self.pending.iter().filter(|(_, e)| e.is_some()).count();
                waiting + self.heads.iter().filter(|e| e.is_some()).count()
            }
            // Handed on with the connection's state (see `h2::handoff`,
            // `ws_handoff`), but for WebSocket streams of HTTP/2.
            State::Http2(c) => c.websocket_calls_in_flight(),
            State::WebSocket(_) => 0,
            State::Sniffing { .. } | State::Ignored(_) => 0,
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
        let h2 = match &self.state {
            State::Http2(c) => c.buffered(),
            State::WebSocket(ws) => ws.buffered(),
            _ => 0,
        };
        let pending: usize = self.pending.iter().map(|(m, _)| m.body.len()).sum();
        h2 + self.req.buffered() + self.resp.buffered() + pending
    }

    /// Plaintext the process wrote. `classify` runs once per request head; the
    /// requests it tags (LLM API calls) are buffered and paired.
    pub fn on_egress(&mut self, data: &[u8], ts: u64, classify: &mut dyn FnMut(&Head) -> Option<E>, lost: &mut Lost) {
        // A call of megabytes joined midway (a request body) is one call of
        // the budget, not one per chunk.
        let starts = u8::from(self.call_start);
        if let State::Sniffing { calls, skipped, h2_settings_first } = &mut self.state {
            let request = sniff::looks_like_request(data);
            if request || sniff::starts_like_preface(data) {
                // HTTP after all, a client's: what was skipped was the tail of an exchange.
                if matches!(*skipped, Skipped::Unknown | Skipped::Body) {
                    lost.joined_mid_stream += 1;
                }
                self.state =
                    if request { State::Client } else { State::Http2(Box::new(H2Connection::new(self.max_body))) };
            } else if *calls == 0 && h2::looks_like_server_preface(data) {
                *h2_settings_first = true;
                *calls += 1;
                return;
            } else if h2::looks_like_frames(data) {
                self.state = State::Ignored(Ignored::Http2Joined);
            } else if sniff::looks_like_response(data) {
                self.state = State::Ignored(Ignored::ServerSide);
            } else {
                *calls = calls.saturating_add(starts);
                self.sniffed = self.sniffed.saturating_add(data.len() as u64);
                if *skipped == Skipped::Nothing {
                    *skipped = Skipped::Unknown;
                }
                let body_may_pass = self.patient && self.sniffed < (self.max_body as u64).saturating_mul(2);
                // Counted in `ignored_not_http` (unless already a join).
                if *calls >= MAX_SNIFF_CALLS && !body_may_pass {
                    self.state = State::Ignored(Ignored::NotHttp);
                }
                return;
            }
        }
        if let State::Resync { calls } = &mut self.state {
            if !sniff::looks_like_request(data) {
                *calls += starts;
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
        if let State::WebSocket(_) = self.state {
            return self.on_websocket(Direction::Egress, data, ts, &mut Vec::new(), lost);
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
            State::Sniffing { skipped, h2_settings_first, .. } => {
                // The peer spoke first: either we serve HTTP, or capture began
                // between a request and its response (skip it; the next request
                // on this connection starts a clean exchange), or it is not HTTP.
                if sniff::looks_like_request(data) || data.starts_with(&h2::PREFACE[..4]) {
                    self.state = State::Ignored(Ignored::ServerSide);
                } else if *h2_settings_first {
                    self.state = State::Ignored(Ignored::Http2Joined);
                } else if let Some(tail) = (*skipped != Skipped::Counted).then(|| sniff::tail(data)).flatten() {
                    if tail == sniff::Tail::Response {
                        *skipped = Skipped::Counted;
                        lost.joined_mid_stream += 1;
                    } else {
                        *skipped = Skipped::Body;
                    }
                } else {
                    // Not an answer's tail: no upload waiting for its answer
                    // (a database's results, a WebSocket's frames), so the
                    // budget of calls applies, not two bodies' worth.
                    self.patient = false;
                    if *skipped == Skipped::Nothing {
                        *skipped = Skipped::Unknown;
                    }
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
            State::WebSocket(_) => return self.on_websocket(Direction::Ingress, data, ts, out, lost),
            State::Client => {}
        }
        let mut responses = Vec::new();
        let mut never = |_: &Head| false;
        let r = self.resp.push(data, ts, &mut never, &mut responses);
        let upgrade = responses.iter().position(|m| m.head.status == Some(101));
        let switched = upgrade.map(|i| responses.split_off(i));
        if self.pair(responses, out) {
            // Answered while its request is still being written, none
            // waiting: the rest of that request was written unseen (a write
            // no agent copied across an upgrade, or lost in capture); the
            // bytes written next would be read as its body. A gap: the call
            // is counted, the connection resumes at its next request.
            tracing::debug!("HTTP/1 answer to a request not yet whole; resuming at its next request");
            return self.gap(lost);
        }
        if let Err(e) = r {
            if self.taken_over {
                // Taken over with the agent before's state, and the first
                // bytes read since do not go on from it: they follow a read
                // no agent copied (one blocked in the library across the
                // whole upgrade), a gap like any other, the upgrade's.
                tracing::debug!(error = %e, "HTTP/1 parse failed on a connection taken over; resuming at its next request");
                return self.gap(lost);
            }
            self.give_up(e, lost);
        } else if let Some(mut switched) = switched {
            self.upgrade(switched.swap_remove(0), ts, out, lost);
        } else if let Some(rest) = self.resp.unkept_body() {
            self.muting.unkept_body(rest);
        }
        // The first bytes read since the state went on from it.
        self.taken_over = false;
    }

    /// A `101` answered the oldest pending request. A WebSocket asked for by a
    /// request classified as an LLM API is decoded from here on; any other
    /// protocol is not ours.
    fn upgrade(&mut self, response: Message, ts: u64, out: &mut Vec<Classified<E>>, lost: &mut Lost) {
        let Some((request, endpoint)) = self.pending.pop_front() else {
            return self.stop(Ignored::Upgraded, lost);
        };
        let rest = self.resp.take_upgraded().unwrap_or_default();
        let websocket =
            request.head.has_token("upgrade", "websocket") && response.head.has_token("upgrade", "websocket");
        match endpoint.filter(|_| websocket && self.pending.is_empty()) {
            Some(endpoint) => {
                let ws = WsSession::new(endpoint, request.head, response.head, self.max_body, ts);
                self.state = State::WebSocket(Box::new(ws));
                if !rest.is_empty() {
                    self.on_websocket(Direction::Ingress, &rest, ts, out, lost);
                }
            }
            None => self.stop(Ignored::Upgraded, lost),
        }
    }

    fn on_websocket(
        &mut self,
        direction: Direction,
        data: &[u8],
        ts: u64,
        out: &mut Vec<Classified<E>>,
        lost: &mut Lost,
    ) {
        let State::WebSocket(ws) = &mut self.state else { return };
        if let Err(e) = ws.on_bytes(direction, data, ts, out, lost) {
            tracing::debug!(error = %e, "WebSocket decoding failed; ignoring connection");
            self.stop(Ignored::WebSocket, lost);
        }
    }

    /// The connection is gone (closed, freed, process exited, idle timeout).
    pub fn close(&mut self, ts: u64, out: &mut Vec<Classified<E>>, lost: &mut Lost) {
        // Bytes never shown to be HTTP's.
        match self.state {
            State::Sniffing { skipped: Skipped::Unknown, .. } => lost.not_http += 1,
            // A client that read the rest of a response and wrote nothing more.
            State::Sniffing { skipped: Skipped::Body, .. } => lost.joined_mid_stream += 1,
            _ => {}
        }
        if let State::Http2(c) = &mut self.state {
            c.close(out, lost);
        }
        if let State::WebSocket(ws) = &mut self.state {
            ws.close(lost);
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
        // A request still being written too: its client gave up, or its
        // server or the network ended the connection mid-upload.
        lost.unanswered += self.unanswered() + self.being_written();
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
        self.muting.forget();
        // Before this agent read any answer of a state handed on: the calls
        // in flight are the upgrade's loss.
        let handover = std::mem::take(&mut self.taken_over);
        match self.state {
            State::Client => {
                let in_flight = self.unanswered() + self.being_written();
                *(if handover { &mut lost.at_handover } else { &mut lost.unanswered }) += in_flight;
                self.pending.clear();
                self.heads.clear();
                self.req = Parser::new(Kind::Request, self.max_body);
                self.resp = Parser::new(Kind::Response, self.max_body);
                lost.resynced += 1;
                self.state = State::Resync { calls: 0 };
            }
            // Not decoding yet, or already waiting: the sniffing budget applies.
            State::Sniffing { .. } | State::Resync { .. } | State::Ignored(_) => {}
            // A hole in a frame stream (and in a compressor's window): lost.
            State::Http2(_) | State::WebSocket(_) => self.lose_sync(lost),
        }
    }

    /// Nothing after can be trusted: stop decoding this connection.
    pub fn lose_sync(&mut self, lost: &mut Lost) {
        self.taken_over = false;
        if let State::Http2(c) = &mut self.state {
            c.lose_sync(lost);
        }
        if let State::WebSocket(ws) = &mut self.state {
            ws.close(lost);
        }
        if let State::Client = self.state {
            lost.unanswered += self.unanswered() + self.being_written();
        }
        self.pending.clear();
        self.heads.clear();
        self.state = State::Ignored(Ignored::Desync);
    }

    /// Pending requests worth recording.
    fn unanswered(&self) -> u64 {
        self.pending.iter().filter(|(m, e)| m.body_captured && e.is_some()).count() as u64
    }

    /// Requests worth recording whose head was read and whose body is still
    /// being written: counted with the requests waiting for their answer at
    /// a gap, a lost sync (a connection shed for memory included) and an
    /// end (the connection's, the agent's, a state's nobody took).
    pub(crate) fn being_written(&self) -> u64 {
        self.heads.iter().filter(|e| e.is_some()).count() as u64
    }

    /// Pair responses with the requests waiting, in order. True when a
    /// response came with none waiting while a request is being written.
    fn pair(&mut self, responses: Vec<Message>, out: &mut Vec<Classified<E>>) -> bool {
        for response in responses {
            // A response with no request is from before capture began: drop
            // it, unless a request's body is being written (see
            // `on_ingress`; not a next request's head split across writes).
            let Some((request, endpoint)) = self.pending.pop_front() else {
                if self.req.current().is_some() {
                    return true;
                }
                continue;
            };
            if let Some(endpoint) = endpoint {
                out.push(Classified { endpoint, exchange: Exchange { request, response } });
            }
        }
        false
    }

    fn give_up_h2(&mut self, e: h2::H2Error, lost: &mut Lost) {
        tracing::debug!(error = %e, "HTTP/2 decoding failed; ignoring connection");
        self.lose_sync(lost);
    }

    fn give_up(&mut self, e: H1Error, lost: &mut Lost) {
        tracing::debug!(error = %e, "HTTP/1 parse failed; ignoring connection");
        self.stop(Ignored::Desync, lost);
    }

    /// Stop decoding, for this reason (what was in flight is counted lost).
    fn stop(&mut self, why: Ignored, lost: &mut Lost) {
        self.lose_sync(lost);
        self.state = State::Ignored(why);
    }
}

/// Handing a connection's decoding state on during an upgrade.
#[path = "exchange_handoff.rs"]
mod handoff;

#[cfg(test)]
#[path = "exchange_handoff_tests.rs"]
mod handoff_tests;
#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "h2_mute_tests.rs"]
pub(crate) mod h2_mute_tests;
