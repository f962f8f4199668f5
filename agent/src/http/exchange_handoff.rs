//! A connection's decoding state handed on during an upgrade, whatever its
//! protocol: the leaving agent writes it ([`HttpConnection::hand_off`]), the
//! agent taking the connection over reads it back ([`HttpConnection::resume`])
//! and decodes on from the very byte the other stopped at.
use super::{HttpConnection, Ignored, State};
use crate::http::h1;
use crate::http::h2::{self, H2Connection};
use crate::http::message::Head;
use crate::http::mute::Muting;
use crate::http::ws_session::{WsCalls, WsSession};

impl<E: WsCalls> HttpConnection<E> {
    /// What the agent taking this connection over needs (an upgrade): an
    /// HTTP/2 connection's decoding state (`h2::handoff`, after `h`), a
    /// WebSocket session's (`ws_handoff`, after `w`), an HTTP/1.1 client's
    /// amid an exchange (`h1::handoff`, after `c`: its calls in flight are
    /// the successor's from here), or that it is ignored and why (`i`, one
    /// byte), so it is not decoded or counted again. None for the rest:
    /// HTTP/1.1 between exchanges changes hands at its next request and
    /// needs nothing; or the state can't be handed on.
    pub fn hand_off(&mut self, max: usize) -> Option<Vec<u8>> {
        match &mut self.state {
            State::Client => {
                if self.muting.may_skip() {
                    self.finish_muted()?;
                }
                let pending = self.pending.iter().map(|(m, _)| m);
                let state = h1::handoff::hand_off(&self.req, &self.resp, pending, max.saturating_sub(1))?;
                // Nothing of it is this agent's any more: not recorded, not
                // counted at its end, not parsed on should a byte come.
                self.pending.clear();
                self.heads.clear();
                self.req = h1::Parser::new(h1::Kind::Request, self.max_body);
                self.resp = h1::Parser::new(h1::Kind::Response, self.max_body);
                self.state = State::Resync { calls: 0 };
                Some([&b"c"[..], &state].concat())
            }
            State::Http2(c) => {
                if let Some(base) = self.muting.base() {
                    c.counted_from(base);
                }
                Some([&b"h"[..], &c.hand_off(max.saturating_sub(1))?].concat())
            }
            State::WebSocket(ws) => Some([&b"w"[..], &ws.hand_off(max.saturating_sub(1))?].concat()),
            State::Ignored(why) => Some(vec![b'i', Ignored::ALL.iter().position(|w| w == why)? as u8]),
            _ => None,
        }
    }

    /// A connection taken over from the agent before, from where it
    /// stopped; `classify` tags its calls in flight again.
    pub fn resume(
        state: &[u8],
        max_body: usize,
        classify: &mut dyn FnMut(&Head) -> Option<E>,
    ) -> Result<Self, h2::H2Error> {
        let mut c = Self::new(max_body);
        c.muting = Muting::resumed();
        c.state = match state.split_first() {
            Some((b'h', rest)) => State::Http2(Box::new(H2Connection::resume(rest, max_body, classify)?)),
            Some((b'w', rest)) => State::WebSocket(Box::new(WsSession::resume(rest, max_body, classify)?)),
            Some((b'c', rest)) => {
                let (req, resp, pending) = h1::handoff::resume(rest, max_body)?;
                // Tagged by this agent's rules, among the calls the agent
                // before kept the bodies of (a call it did not keep can't be
                // recorded here either).
                let mut tag = |m: &h1::Message| classify(&m.head).filter(|_| m.body_captured);
                c.heads.extend(req.current().map(&mut tag));
                c.pending = pending
                    .into_iter()
                    .map(|m| {
                        let endpoint = tag(&m);
                        (m, endpoint)
                    })
                    .collect();
                (c.req, c.resp) = (req, resp);
                c.taken_over = true;
                State::Client
            }
            Some((b'i', [why])) => State::Ignored(
                *Ignored::ALL.get(*why as usize).ok_or(h2::H2Error::Frame("handoff state: unknown reason"))?,
            ),
            _ => return Err(h2::H2Error::Frame("handoff state of another kind")),
        };
        Ok(c)
    }

    /// Is this connection handed on with a state? (HTTP/2, a WebSocket
    /// session, ignored, HTTP/1.1 amid an exchange.) Not HTTP/1.1 amid a
    /// response body nobody keeps that this agent's kernel was asked to skip
    /// (muted): it may have skipped the rest unbeknown to the parser yet, so
    /// the position handed on could be stale; the connection changes agents
    /// at its next request.
    pub fn hands_off(&self) -> bool {
        match self.state {
            State::Http2(_) | State::WebSocket(_) | State::Ignored(_) => true,
            State::Client => {
                let amid = !self.pending.is_empty() || self.req.in_message() || self.resp.in_message();
                amid && (!self.muting.may_skip() || self.muted_read_whole().is_some())
            }
            State::Sniffing { .. } | State::Resync { .. } => false,
        }
    }

    /// A muted body (by content length) the client has read whole, as its
    /// writing a later request since shows (a keep-alive client reads an
    /// answer before it asks again): its bytes still to come as the parser
    /// counts them. The kernel skipped that body's last reads, which the
    /// parser learns of only with the next chunk copied: an answer begun
    /// after this agent left.
    fn muted_read_whole(&self) -> Option<u64> {
        // The front request is the muted answer's own (none: an answer
        // before its request was whole, which the client may not have read).
        let asked_again = !self.pending.is_empty() && (self.pending.len() > 1 || self.req.in_message());
        let rest = self.resp.unkept_body().filter(|&n| n != u64::MAX)?;
        (asked_again && self.resp.body_by_length()).then_some(rest)
    }

    /// Before handing on: the muted body read whole ends here, so the
    /// position handed on is the next answer's start. None when the body
    /// may still be read (the state would be stale: nothing is handed on).
    fn finish_muted(&mut self) -> Option<()> {
        let rest = self.muted_read_whole()?;
        let mut done = Vec::new();
        if !self.resp.skip_body(rest, &mut done) {
            return None;
        }
        self.pair(done, &mut Vec::new());
        self.muting.forget();
        Some(())
    }

    /// The LLM calls in flight a state handed on carries, which are cut if
    /// it cannot be stored.
    pub fn calls_handed(&self) -> u64 {
        match &self.state {
            State::Client => self.calls_in_flight() as u64,
            State::Http2(c) => c.calls_held() as u64,
            State::WebSocket(ws) => ws.calls_in_flight() as u64,
            _ => 0,
        }
    }
}
