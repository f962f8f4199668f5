//! An HTTP/1.1 client connection's decoding state, handed on during an
//! upgrade (`exchange.rs`): the call a leaving agent still has in flight when
//! its drain runs out (a stream longer than `--handover-drain-secs`, a slow
//! answer) is decoded on by the agent taking the connection over, from the
//! very byte the old one stopped at, instead of being cut.
//!
//! What it holds: each direction's parser (where it is in a message's
//! framing, the bytes it has not consumed, the message in progress, what the
//! responses to come expect) and the requests waiting for their response.
//! Classifications are not carried: the agent taking over classifies the
//! heads again with its own rules, as it does for HTTP/2's calls.
use std::collections::VecDeque;

use super::{Body, Expect, Kind, Parser, State, MAX_EXPECT, MAX_HEAD_BYTES};
use crate::http::exchange::MAX_PENDING;
use crate::http::h2::H2Error;
use crate::http::handoff_codec::{put_bytes, put_message, put_u16, put_u64, Reader};
use crate::http::message::Message;

/// The format's version: the first byte of a state.
const VERSION: u8 = 1;

/// A connection's state: its two parsers and the requests still waiting for
/// their response, oldest first. None when it can't be handed on (a parser
/// that switched protocols or gave up) or is over `max` bytes.
pub fn hand_off<'a>(
    req: &Parser,
    resp: &Parser,
    pending: impl ExactSizeIterator<Item = &'a Message>,
    max: usize,
) -> Option<Vec<u8>> {
    let mut out = vec![VERSION];
    req.put(&mut out)?;
    resp.put(&mut out)?;
    put_u16(&mut out, pending.len())?;
    for m in pending {
        put_message(&mut out, m)?;
    }
    (out.len() <= max).then_some(out)
}

/// The parsers and the waiting requests a state holds, every length and
/// count checked: a state is another process's input.
pub fn resume(state: &[u8], max_body: usize) -> Result<(Parser, Parser, VecDeque<Message>), H2Error> {
    let mut r = Reader::of_version(state, VERSION)?;
    let req = Parser::read(&mut r, Kind::Request, max_body)?;
    let resp = Parser::read(&mut r, Kind::Response, max_body)?;
    let n = r.u16()?;
    if n > MAX_PENDING {
        return Err(H2Error::TooLarge);
    }
    let pending = (0..n).map(|_| r.message(max_body)).collect::<Result<VecDeque<_>, _>>()?;
    if pending.iter().any(|m| !m.complete) {
        return Err(H2Error::Frame("handoff state: a request waiting for its answer not whole"));
    }
    if !r.0.is_empty() {
        return Err(H2Error::Frame("handoff state: bytes after its end"));
    }
    Ok((req, resp, pending))
}

fn expect_bits(e: Expect) -> u8 {
    u8::from(e.head_request) | u8::from(e.capture) << 1
}

fn expect_of(bits: u8) -> Result<Expect, H2Error> {
    if bits > 3 {
        return Err(H2Error::Frame("handoff state: unknown expectation"));
    }
    Ok(Expect { head_request: bits & 1 != 0, capture: bits & 2 != 0 })
}

impl Parser {
    fn put(&self, out: &mut Vec<u8>) -> Option<()> {
        match &self.state {
            State::Head => out.push(0),
            State::Body(b) => {
                let (kind, n) = match *b {
                    Body::Length(n) => (0, n),
                    Body::ChunkSize => (1, 0),
                    Body::ChunkData(n) => (2, n),
                    Body::ChunkDataEnd => (3, 0),
                    Body::Trailers => (4, 0),
                    Body::UntilClose => (5, 0),
                };
                out.extend_from_slice(&[1, kind]);
                put_u64(out, n);
            }
            // Another protocol's bytes follow, or nothing can be parsed.
            State::Dead | State::Upgraded => return None,
        }
        put_bytes(out, &self.buf)?;
        out.push(u8::from(self.cur.is_some()));
        if let Some(m) = &self.cur {
            put_message(out, m)?;
        }
        put_u16(out, self.expect.len())?;
        out.extend(self.expect.iter().map(|&e| expect_bits(e)));
        out.push(expect_bits(self.cur_expect));
        Some(())
    }

    fn read(r: &mut Reader<'_>, kind: Kind, max_body: usize) -> Result<Self, H2Error> {
        let state = match r.u8()? {
            0 => State::Head,
            1 => {
                let (body, n) = (r.u8()?, r.u64()?);
                State::Body(match (body, n) {
                    (0, 1..) => Body::Length(n),
                    (1, 0) => Body::ChunkSize,
                    (2, 1..) => Body::ChunkData(n),
                    (3, 0) => Body::ChunkDataEnd,
                    (4, 0) => Body::Trailers,
                    (5, 0) => Body::UntilClose,
                    _ => return Err(H2Error::Frame("handoff state: bad body framing")),
                })
            }
            _ => return Err(H2Error::Frame("handoff state: bad parser state")),
        };
        let buf = r.bytes()?;
        // What a parser holds unconsumed: at most a head in progress.
        if buf.len() > MAX_HEAD_BYTES {
            return Err(H2Error::TooLarge);
        }
        let cur = if r.flag()? { Some(r.message(max_body)?) } else { None };
        // In progress: not complete, and its body kept or marked cut (as
        // `Parser::start_message` makes it), so that a connection's end
        // never passes it on as whole.
        if cur.as_ref().is_some_and(|m| m.complete || !(m.body_captured || m.body_truncated)) {
            return Err(H2Error::Frame("handoff state: a message in progress marked whole"));
        }
        // A body is read into the message in progress only.
        if matches!(state, State::Body(_)) != cur.is_some() {
            return Err(H2Error::Frame("handoff state: a body without its message"));
        }
        let n = r.u16()?;
        if n > MAX_EXPECT {
            return Err(H2Error::TooLarge);
        }
        let expect = r.take(n)?.iter().map(|&b| expect_of(b)).collect::<Result<_, _>>()?;
        let cur_expect = expect_of(r.u8()?)?;
        Ok(Self { kind, state, buf: buf.to_vec(), cur, max_body, expect, cur_expect })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn feed(p: &mut Parser, data: &[u8], out: &mut Vec<Message>) {
        p.push(data, 7, &mut |_| true, out).unwrap();
    }

    /// A parser handed on at every byte of a chunked stream decodes the
    /// same message as one that read it all.
    #[test]
    fn a_parser_handed_on_anywhere_in_a_message_finishes_it_the_same() {
        let resp = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n\
            7\r\ndata: a\r\n8\r\ndata: bc\r\n0\r\n\r\n";
        let mut whole = Parser::new(Kind::Response, MAX);
        whole.expect(Expect { head_request: false, capture: true });
        let mut want = Vec::new();
        feed(&mut whole, resp, &mut want);
        assert_eq!(want.len(), 1);
        for cut in 0..resp.len() {
            let mut p = Parser::new(Kind::Response, MAX);
            p.expect(Expect { head_request: false, capture: true });
            let mut got = Vec::new();
            feed(&mut p, &resp[..cut], &mut got);
            let state = hand_off(&Parser::new(Kind::Request, MAX), &p, std::iter::empty(), MAX).unwrap();
            let (_, mut p, _) = resume(&state, MAX).unwrap();
            feed(&mut p, &resp[cut..], &mut got);
            assert_eq!(got.len(), 1, "cut at {cut}");
            assert_eq!((&got[0].body, &got[0].head), (&want[0].body, &want[0].head), "cut at {cut}");
            assert!(got[0].complete && got[0].body_captured);
        }
    }

    #[test]
    fn a_state_cut_short_or_with_bad_fields_is_refused_never_a_panic() {
        let mut req = Parser::new(Kind::Request, MAX);
        feed(&mut req, b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 10\r\n\r\n{\"a\"", &mut Vec::new());
        let pending = Message { body: b"x".to_vec(), complete: true, ..Default::default() };
        let state = hand_off(&req, &Parser::new(Kind::Response, MAX), [&pending].into_iter(), MAX).unwrap();
        let (req, _, pending) = resume(&state, MAX).unwrap();
        assert!(req.in_message());
        assert_eq!(pending.len(), 1);
        for n in 0..state.len() {
            assert!(resume(&state[..n], MAX).is_err(), "cut at {n}");
        }
        for i in 0..state.len() {
            let mut s = state.clone();
            s[i] ^= 0xff;
            let _ = resume(&s, MAX);
        }
        assert!(resume(&[&state[..], b"x"].concat(), MAX).is_err(), "trailing bytes");
        // A waiting request not whole, a message in progress marked whole.
        let partial = Message { complete: false, ..pending[0].clone() };
        let s = hand_off(&req, &Parser::new(Kind::Response, MAX), [&partial].into_iter(), MAX).unwrap();
        assert!(resume(&s, MAX).is_err(), "a waiting request not whole");
        let mut whole = Parser::new(Kind::Request, MAX);
        feed(&mut whole, b"POST /v1/x HTTP/1.1\r\ncontent-length: 10\r\n\r\n{", &mut Vec::new());
        whole.cur.as_mut().unwrap().complete = true;
        let s = hand_off(&whole, &Parser::new(Kind::Response, MAX), std::iter::empty(), MAX).unwrap();
        assert!(resume(&s, MAX).is_err(), "a message in progress marked whole");
        assert!(resume(&state, 2).is_err(), "a body over this agent's cap");
        assert!(hand_off(&req, &Parser::new(Kind::Response, MAX), std::iter::empty(), 10).is_none(), "over max");
    }
}
