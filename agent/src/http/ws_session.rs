//! Calls over a WebSocket: after a `101 Switching Protocols` answered a
//! request classified as an LLM API, each direction is decoded into messages
//! ([`super::websocket`]) and the messages are grouped into calls, one
//! [`Exchange`] per call, as if each had been an HTTP request answered by a
//! server-sent-event stream. So the providers read a call the same way
//! whatever carried it: the Responses API over a WebSocket is read by the very
//! parser that reads it over SSE.
//!
//! Which message starts, belongs to or ends a call is the API's knowledge: the
//! endpoint says it ([`WsCalls`]); this module only keeps the state. What it
//! keeps is bounded: the last session message per direction and the requests
//! of the call in flight and of one waiting for it to end, as compact JSON
//! (parsed again when a call is handed on) and together within the body cap (a
//! message that does not fit is dropped and counted), and the
//! events of the call in flight up to the body cap, content events past the
//! first dropped (the first one dates the first token; audio deltas are most of
//! a realtime session's bytes and carry no count). A call's events begin with
//! the server's latest session message, so its reader sees what the server
//! said of the session (the model it runs).
use serde_json::Value;

use super::message::{Classified, Exchange, Head, Lost, Message};
use super::websocket::{Deflate, WsDecoder, WsError, WsMessage};
use crate::capture::event::Direction;

/// What one message is to the calls of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsRole {
    /// Not part of any call (audio input, keep-alives, acknowledgements).
    Ignore,
    /// Sets up the session (model, modalities): kept, the latest per direction,
    /// for the requests of the calls that follow.
    Session,
    /// The client asks for a response: starts a call.
    Request,
    /// Part of the response in flight (starts a call if the server began one
    /// by itself, as a realtime server does on voice activity).
    Event,
    /// Generated content: the first one of a call is kept (its time is the
    /// first token's), later ones are dropped.
    Content,
    /// The response's last event (with its usage): the call is complete.
    End,
    /// The call failed with this status; the message is its last event. With
    /// no call open it answers nothing the session knows of: ignored.
    Error(u16),
}

/// What the endpoint of an upgraded request says about its messages.
pub trait WsCalls: Clone {
    /// The role of a message (`from_client`: written by the captured process).
    fn ws_role(&self, _from_client: bool, _msg: &Value) -> WsRole {
        WsRole::Ignore
    }

    /// The request body a call is read as: from the upgrade's path, the
    /// session messages kept (client's, server's) and the message that asked
    /// for the response, if the client asked.
    fn ws_request(&self, _path: &str, _session: [Option<&Value>; 2], request: Option<&Value>) -> Value {
        request.cloned().unwrap_or(Value::Null)
    }
}

impl WsCalls for () {}
impl WsCalls for String {}

/// A request kept for its call.
enum Kept {
    /// Compact JSON.
    Json(Vec<u8>),
    /// Asked, but over the budget of kept messages: the call is read without it.
    Dropped,
}

impl Kept {
    fn len(&self) -> usize {
        match self {
            Kept::Json(b) => b.len(),
            Kept::Dropped => 0,
        }
    }
}

/// Kept bytes as JSON again (they were written from a parsed value).
fn parsed(bytes: Option<&[u8]>) -> Option<Value> {
    serde_json::from_slice(bytes?).ok()
}

/// The call in flight.
struct Open {
    /// None when the server began the call by itself.
    request: Option<Kept>,
    first_ts: u64,
    /// Response events as `data:` lines, and when each arrived.
    events: Vec<u8>,
    marks: Vec<(usize, u64)>,
    first_event_ts: Option<u64>,
    last_ts: u64,
    content_seen: bool,
    truncated: bool,
}

impl Open {
    /// A call; its events start with the server's session message, if any
    /// (what the server says of the session, e.g. the model it runs).
    fn new(request: Option<Kept>, ts: u64, server_session: Option<&[u8]>) -> Self {
        let mut o = Open {
            request,
            first_ts: ts,
            events: Vec::new(),
            marks: Vec::new(),
            first_event_ts: None,
            last_ts: ts,
            content_seen: false,
            truncated: false,
        };
        if let Some(s) = server_session {
            o.push(s, ts, usize::MAX);
        }
        o
    }

    /// One event (compact JSON: one line) as a `data:` line, within `max`
    /// bytes in all.
    fn push(&mut self, json: &[u8], ts: u64, max: usize) {
        let line = [&b"data: "[..], json, b"\n\n"].concat();
        if self.events.len() + line.len() > max {
            self.truncated = true;
            return;
        }
        self.events.extend_from_slice(&line);
        if self.marks.len() < MAX_MARKS {
            self.marks.push((self.events.len(), ts));
        }
    }

    /// A server event of this call; of its content events only the first is
    /// kept.
    fn record(&mut self, v: &Value, role: WsRole, ts: u64, max: usize) {
        self.last_ts = ts;
        self.first_event_ts.get_or_insert(ts);
        if role != WsRole::Content || !std::mem::replace(&mut self.content_seen, true) {
            self.push(&serde_json::to_vec(v).unwrap_or_default(), ts, max);
        }
    }

    fn answered(&self) -> bool {
        self.first_event_ts.is_some()
    }
}

/// Marks kept per call (as [`Message::body_marks`]).
const MAX_MARKS: usize = 4096;

/// An upgraded connection whose endpoint is an LLM API.
pub struct WsSession<E> {
    endpoint: E,
    request: Head,
    response: Head,
    up: WsDecoder,
    down: WsDecoder,
    /// The latest session message from the client and from the server, as
    /// compact JSON.
    session: [Option<Vec<u8>>; 2],
    open: Option<Open>,
    /// A request made while the call in flight was being answered, and when:
    /// its call begins when that one ends (these APIs answer one at a time).
    waiting: Option<(Kept, u64)>,
    max_body: usize,
    /// When the 101 arrived, while no byte of the new protocol has.
    untouched_since: Option<u64>,
}

impl<E: WsCalls> WsSession<E> {
    /// `request`/`response`: the upgrade's heads; `max_body` caps a message
    /// (compressed and inflated) and a call's kept events.
    pub fn new(endpoint: E, request: Head, response: Head, max_body: usize, ts: u64) -> Self {
        let deflate = response.header("sec-websocket-extensions").and_then(Deflate::negotiated);
        Self {
            up: WsDecoder::new(deflate.map(|d| d.client_no_context_takeover), max_body),
            down: WsDecoder::new(deflate.map(|d| d.server_no_context_takeover), max_body),
            endpoint,
            request,
            response,
            session: [None, None],
            open: None,
            waiting: None,
            max_body,
            untouched_since: Some(ts),
        }
    }

    /// Switched at this time, and no frame since: the session may go on under
    /// another key (see `Source::key_may_move`).
    pub fn untouched_since(&self) -> Option<u64> {
        self.untouched_since
    }

    /// Bytes held.
    pub fn buffered(&self) -> usize {
        let open = self.open.as_ref().map_or(0, |o| o.events.len());
        self.up.buffered() + self.down.buffered() + open + self.kept()
    }

    /// Bytes of the messages kept for calls: sessions and requests.
    fn kept(&self) -> usize {
        let session: usize = self.session.iter().flatten().map(Vec::len).sum();
        let open = self.open.as_ref().and_then(|o| o.request.as_ref()).map_or(0, Kept::len);
        session + open + self.waiting.as_ref().map_or(0, |(r, _)| r.len())
    }

    /// `v` as compact JSON to keep in place of `replaced` bytes, if the kept
    /// messages stay within the body cap (as a call's events do); else dropped
    /// and counted.
    fn keep(&self, v: &Value, replaced: usize, lost: &mut Lost) -> Option<Vec<u8>> {
        let json = serde_json::to_vec(v).unwrap_or_default();
        if self.kept().saturating_sub(replaced) + json.len() > self.max_body {
            lost.ws_messages_dropped += 1;
            return None;
        }
        Some(json)
    }

    /// Both peers closed: nothing more will come.
    pub fn is_done(&self) -> bool {
        self.up.is_done() && self.down.is_done()
    }

    /// Bytes of one direction. Completed calls are appended to `out`; a
    /// framing error ends the session (the caller stops decoding).
    pub fn on_bytes(
        &mut self,
        direction: Direction,
        data: &[u8],
        ts: u64,
        out: &mut Vec<Classified<E>>,
        lost: &mut Lost,
    ) -> Result<(), WsError> {
        self.untouched_since = None;
        let mut msgs = Vec::new();
        let from_client = direction == Direction::Egress;
        let decoder = if from_client { &mut self.up } else { &mut self.down };
        let r = decoder.push(data, &mut msgs);
        for m in msgs {
            let payload = match m {
                WsMessage::Text(b) | WsMessage::Binary(b) => b,
                WsMessage::Close(_) => continue,
            };
            // Not JSON: not an API message (these APIs speak JSON both ways).
            let Ok(v) = serde_json::from_slice::<Value>(&payload) else { continue };
            self.on_message(from_client, v, ts, out, lost);
        }
        r
    }

    fn on_message(&mut self, from_client: bool, v: Value, ts: u64, out: &mut Vec<Classified<E>>, lost: &mut Lost) {
        let role = self.endpoint.ws_role(from_client, &v);
        match role {
            WsRole::Ignore => {}
            WsRole::Session => {
                let slot = usize::from(!from_client);
                let replaced = self.session[slot].as_ref().map_or(0, Vec::len);
                // Not kept: the session is unknown from here on (the one
                // before is no longer the session).
                self.session[slot] = self.keep(&v, replaced, lost);
            }
            WsRole::Request => {
                // Asked while a response is under way: the request waits for
                // it to end, so neither is lost nor given the other's events.
                // Asked again before any answer (or while one waits): the
                // latest request stands.
                let waits = self.open.as_ref().is_some_and(Open::answered);
                let replaced = if waits {
                    self.waiting.as_ref().map(|(r, _)| r)
                } else {
                    self.open.as_ref().and_then(|o| o.request.as_ref())
                };
                let request = self.keep(&v, replaced.map_or(0, Kept::len), lost).map_or(Kept::Dropped, Kept::Json);
                match &mut self.open {
                    Some(_) if waits => self.waiting = Some((request, ts)),
                    Some(o) => (o.request, o.first_ts) = (Some(request), ts),
                    None => self.open = Some(Open::new(Some(request), ts, self.session[1].as_deref())),
                }
            }
            WsRole::Event | WsRole::Content | WsRole::End | WsRole::Error(_) => {
                if from_client {
                    return;
                }
                let server_session = self.session[1].as_deref();
                if let WsRole::Error(status) = role {
                    // With no call open, an error answers no request (it
                    // refuses a message that asked for no response, or comes
                    // after its call ended): a call of its own would be a
                    // phantom.
                    if self.open.is_none() {
                        return;
                    }
                    // While a request waits behind a response under way, the
                    // error is the waiting one's (refused: one response at a
                    // time); the one under way goes on.
                    if let Some((request, asked)) = self.waiting.take() {
                        let mut o = Open::new(Some(request), asked, server_session);
                        o.record(&v, role, ts, self.max_body);
                        return self.emit(o, status, out);
                    }
                }
                let o = self.open.get_or_insert_with(|| Open::new(None, ts, server_session));
                o.record(&v, role, ts, self.max_body);
                match role {
                    WsRole::End => self.end(200, out),
                    WsRole::Error(status) => self.end(status, out),
                    _ => {}
                }
            }
        }
    }

    /// The call in flight ended with `status`; the request waiting for it,
    /// if any, begins the next.
    fn end(&mut self, status: u16, out: &mut Vec<Classified<E>>) {
        let Some(o) = self.open.take() else { return };
        self.emit(o, status, out);
        if let Some((request, asked)) = self.waiting.take() {
            self.open = Some(Open::new(Some(request), asked, self.session[1].as_deref()));
        }
    }

    /// A call as an exchange: the upgrade's request head with the call's
    /// request as its body, answered with `status` and its events as a
    /// server-sent-event stream.
    fn emit(&self, o: Open, status: u16, out: &mut Vec<Classified<E>>) {
        let path = self.request.path.as_deref().unwrap_or("");
        let [client, server] = [0, 1].map(|i| parsed(self.session[i].as_deref()));
        let asked = match &o.request {
            Some(Kept::Json(b)) => parsed(Some(b)),
            _ => None,
        };
        let body = self.endpoint.ws_request(path, [client.as_ref(), server.as_ref()], asked.as_ref());
        let request = Message {
            head: self.request.clone(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
            // Its message was dropped over the budget, as an HTTP request body
            // over the cap is cut.
            body_truncated: matches!(o.request, Some(Kept::Dropped)),
            body_captured: true,
            complete: true,
            first_ts: o.first_ts,
            last_ts: o.first_ts,
            ..Default::default()
        };
        let mut head = Head { status: Some(status), minor_version: self.response.minor_version, ..Default::default() };
        // The upgrade's response headers (request ids), minus those about its
        // own body; the events are a stream.
        head.headers = self
            .response
            .headers
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "content-type" | "content-encoding" | "content-length"))
            .cloned()
            .collect();
        head.headers.push(("content-type".into(), b"text/event-stream".to_vec()));
        let response = Message {
            head,
            body: o.events,
            body_truncated: o.truncated,
            body_captured: true,
            complete: true,
            first_ts: o.first_event_ts.unwrap_or(o.last_ts),
            last_ts: o.last_ts,
            body_marks: o.marks,
        };
        out.push(Classified { endpoint: self.endpoint.clone(), exchange: Exchange { request, response } });
    }

    /// Calls under way: one open, and a request waiting for it.
    pub fn calls_in_flight(&self) -> usize {
        usize::from(self.open.as_ref().is_some_and(|o| o.answered() || o.request.is_some()))
            + usize::from(self.waiting.is_some())
    }

    /// The connection ended (or decoding stopped): a call under way is lost,
    /// and so is a request waiting for it.
    pub fn close(&mut self, lost: &mut Lost) {
        if self.open.take().is_some_and(|o| o.answered() || o.request.is_some()) {
            lost.unanswered += 1;
        }
        lost.unanswered += u64::from(self.waiting.take().is_some());
    }
}

#[path = "ws_handoff.rs"]
mod handoff;

#[cfg(test)]
#[path = "ws_session_tests.rs"]
pub(crate) mod tests;
