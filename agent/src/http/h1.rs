//! Passive HTTP/1.1 message parser for one direction of a captured connection.
//!
//! Bytes arrive in arbitrary pieces (TLS records split anywhere); the parser keeps
//! only what it has not consumed yet, frames bodies by Content-Length, chunked
//! transfer coding or connection close, and hands out whole messages. Bodies are
//! buffered only when the caller asks for them and only up to a cap; framing is
//! tracked either way so keep-alive connections stay in sync.
use std::collections::VecDeque;

use thiserror::Error;

// Re-exported: providers, attribution, fuzz targets and benches name them here.
pub use super::message::{Head, Message};

/// Largest head (request/status line + headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// Largest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// Responses a parser expects at most: a client pipelining more than this
/// is not an LLM SDK (a handed-on state carrying more is refused too).
pub(crate) const MAX_EXPECT: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum H1Error {
    #[error("not HTTP/1.x: {0}")]
    Malformed(&'static str),
    #[error("message head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("bad chunked encoding")]
    BadChunk,
}

/// Body marks kept per message (see [`Message::body_marks`]).
const MAX_MARKS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// What the response parser needs to know about the request it answers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect {
    /// The request was HEAD: the response has no body whatever its headers say.
    pub head_request: bool,
    /// Buffer the response body.
    pub capture: bool,
}

#[derive(Debug)]
enum State {
    Head,
    Body(Body),
    /// After an error: nothing more is parsed.
    Dead,
    /// After a `101 Switching Protocols`: what follows is another protocol's,
    /// held for [`Parser::take_upgraded`].
    Upgraded,
}

#[derive(Debug)]
enum Body {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    UntilClose,
}

pub struct Parser {
    kind: Kind,
    state: State,
    buf: Vec<u8>,
    cur: Option<Message>,
    max_body: usize,
    expect: VecDeque<Expect>,
    cur_expect: Expect,
}

enum Step {
    /// Progress made; loop again.
    Continue,
    /// Need more bytes.
    NeedMore,
}

impl Parser {
    pub fn new(kind: Kind, max_body: usize) -> Self {
        Self {
            kind,
            state: State::Head,
            buf: Vec::new(),
            cur: None,
            max_body,
            expect: VecDeque::new(),
            cur_expect: Expect::default(),
        }
    }

    /// Responses: register what the next unanswered request expects.
    pub fn expect(&mut self, e: Expect) {
        if self.expect.len() < MAX_EXPECT {
            self.expect.push_back(e);
        }
    }

    /// Bytes buffered but not yet consumed, plus the body being built.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.cur.as_ref().map_or(0, |m| m.body.len())
    }

    /// The message whose head was parsed and whose body is being read.
    pub fn current(&self) -> Option<&Message> {
        self.cur.as_ref()
    }

    /// A message is partly parsed.
    pub fn in_message(&self) -> bool {
        self.cur.is_some() || !self.buf.is_empty()
    }

    /// Feed bytes that arrived at `ts`. Complete messages are appended to `out`.
    /// `capture` decides, per request head, whether to buffer the body.
    pub fn push(
        &mut self,
        data: &[u8],
        ts: u64,
        capture: &mut dyn FnMut(&Head) -> bool,
        out: &mut Vec<Message>,
    ) -> Result<(), H1Error> {
        if matches!(self.state, State::Dead) {
            return Ok(());
        }
        if matches!(self.state, State::Upgraded) {
            self.buf.extend_from_slice(data);
            return Ok(());
        }
        if let Some(m) = self.cur.as_mut() {
            m.last_ts = ts;
        }
        // Only keep what's not consumed; append the new piece.
        self.buf.extend_from_slice(data);
        let mut pos = 0usize;
        let result = loop {
            match self.step(&mut pos, ts, capture, out) {
                Ok(Step::Continue) => continue,
                Ok(Step::NeedMore) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..pos.min(self.buf.len()));
        if result.is_err() {
            self.state = State::Dead;
            self.buf = Vec::new();
            self.cur = None;
        }
        result
    }

    /// The rest of the body being read when nothing keeps it (a response no
    /// one records): its bytes still to come, `u64::MAX` for a body framed by
    /// the connection's close. What the kernel may skip copying.
    pub fn unkept_body(&self) -> Option<u64> {
        let kept = self.cur.as_ref().is_none_or(|m| m.body_captured);
        if kept || !self.buf.is_empty() {
            return None;
        }
        match self.state {
            State::Body(Body::Length(rem) | Body::ChunkData(rem)) => Some(rem),
            State::Body(Body::UntilClose) => Some(u64::MAX),
            _ => None,
        }
    }

    /// The body being read is framed by a content length.
    pub fn body_by_length(&self) -> bool {
        matches!(self.state, State::Body(Body::Length(_)))
    }

    /// `n` bytes of a body nothing keeps went by unseen (the kernel skipped
    /// them): count them read. False when the body has fewer bytes left, or
    /// none is being read.
    pub fn skip_body(&mut self, n: u64, out: &mut Vec<Message>) -> bool {
        if self.unkept_body().is_none_or(|rem| rem < n) {
            return false;
        }
        match &mut self.state {
            State::Body(Body::Length(rem)) => {
                *rem -= n;
                if *rem == 0 {
                    self.finish(out);
                }
            }
            State::Body(body) => {
                if let Body::ChunkData(rem) = body {
                    *rem -= n;
                    if *rem == 0 {
                        *body = Body::ChunkDataEnd;
                    }
                }
            }
            _ => {}
        }
        true
    }

    /// The connection closed: a body framed by close is complete now.
    pub fn close(&mut self, ts: u64) -> Option<Message> {
        if let State::Body(Body::UntilClose) = self.state {
            self.state = State::Head;
            let mut m = self.cur.take()?;
            m.last_ts = ts.max(m.last_ts);
            m.complete = true;
            return Some(m);
        }
        None
    }

    /// After a `101` response: the bytes that followed its head, once. `None`
    /// if the connection did not switch protocols.
    pub fn take_upgraded(&mut self) -> Option<Vec<u8>> {
        if !matches!(self.state, State::Upgraded) {
            return None;
        }
        self.state = State::Dead;
        Some(std::mem::take(&mut self.buf))
    }

    /// The message cut short when the connection went away (`complete == false`).
    /// A caller may still use it when its content proves it finished (a stream's
    /// final event arrived and the client stopped reading before the last chunk).
    pub fn take_partial(&mut self) -> Option<Message> {
        if !matches!(self.state, State::Body(_)) {
            return None;
        }
        self.state = State::Dead;
        self.cur.take()
    }

    fn step(
        &mut self,
        pos: &mut usize,
        ts: u64,
        capture: &mut dyn FnMut(&Head) -> bool,
        out: &mut Vec<Message>,
    ) -> Result<Step, H1Error> {
        let avail = &self.buf[*pos..];
        match &mut self.state {
            State::Dead | State::Upgraded => Ok(Step::NeedMore),
            State::Head => {
                if avail.is_empty() {
                    return Ok(Step::NeedMore);
                }
                // Tolerate stray CRLF between messages (RFC 9112 §2.2).
                if avail[0] == b'\r' || avail[0] == b'\n' {
                    *pos += 1;
                    return Ok(Step::Continue);
                }
                let parsed = match self.kind {
                    Kind::Request => parse_request(avail)?,
                    Kind::Response => parse_response(avail)?,
                };
                let Some((head, n)) = parsed else {
                    if avail.len() > MAX_HEAD_BYTES {
                        return Err(H1Error::HeadTooLarge);
                    }
                    return Ok(Step::NeedMore);
                };
                *pos += n;
                self.start_message(head, ts, capture, out)?;
                Ok(Step::Continue)
            }
            State::Body(body) => match body {
                Body::Length(rem) => {
                    if avail.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = (*rem).min(avail.len() as u64) as usize;
                    *rem -= take as u64;
                    let done = *rem == 0;
                    let piece = *pos..*pos + take;
                    *pos += take;
                    self.append_body(piece, ts);
                    if done {
                        self.finish(out);
                    }
                    Ok(Step::Continue)
                }
                Body::ChunkSize => {
                    let Some(eol) = find_crlf(avail) else {
                        if avail.len() > MAX_CHUNK_LINE {
                            return Err(H1Error::BadChunk);
                        }
                        return Ok(Step::NeedMore);
                    };
                    let size = parse_chunk_size(&avail[..eol])?;
                    *pos += eol + 2;
                    *body = if size == 0 { Body::Trailers } else { Body::ChunkData(size) };
                    Ok(Step::Continue)
                }
                Body::ChunkData(rem) => {
                    if avail.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = (*rem).min(avail.len() as u64) as usize;
                    *rem -= take as u64;
                    if *rem == 0 {
                        *body = Body::ChunkDataEnd;
                    }
                    let piece = *pos..*pos + take;
                    *pos += take;
                    self.append_body(piece, ts);
                    Ok(Step::Continue)
                }
                Body::ChunkDataEnd => {
                    if avail.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &avail[..2] != b"\r\n" {
                        return Err(H1Error::BadChunk);
                    }
                    *pos += 2;
                    *body = Body::ChunkSize;
                    Ok(Step::Continue)
                }
                Body::Trailers => {
                    let Some(eol) = find_crlf(avail) else {
                        if avail.len() > MAX_HEAD_BYTES {
                            return Err(H1Error::HeadTooLarge);
                        }
                        return Ok(Step::NeedMore);
                    };
                    *pos += eol + 2;
                    if eol == 0 {
                        self.finish(out);
                    }
                    Ok(Step::Continue)
                }
                Body::UntilClose => {
                    if avail.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let piece = *pos..self.buf.len();
                    *pos = self.buf.len();
                    self.append_body(piece, ts);
                    Ok(Step::NeedMore)
                }
            },
        }
    }

    fn start_message(
        &mut self,
        head: Head,
        ts: u64,
        capture: &mut dyn FnMut(&Head) -> bool,
        out: &mut Vec<Message>,
    ) -> Result<(), H1Error> {
        let status = head.status.unwrap_or(0);
        if self.kind == Kind::Response {
            if status == 101 {
                // Handed on (its request decides what comes next); the bytes
                // after it are the new protocol's.
                self.cur_expect = self.expect.pop_front().unwrap_or_default();
                out.push(Message { head, complete: true, first_ts: ts, last_ts: ts, ..Default::default() });
                self.state = State::Upgraded;
                return Ok(());
            }
            if (100..200).contains(&status) {
                // Interim response: the final one still answers the same request.
                return Ok(());
            }
            self.cur_expect = self.expect.pop_front().unwrap_or_default();
        }
        let capture_body = match self.kind {
            Kind::Request => capture(&head),
            Kind::Response => self.cur_expect.capture,
        };
        let body = self.body_framing(&head)?;
        self.cur = Some(Message {
            head,
            body_captured: capture_body,
            body_truncated: !capture_body,
            first_ts: ts,
            last_ts: ts,
            ..Default::default()
        });
        match body {
            None => self.finish(out),
            Some(b) => self.state = State::Body(b),
        }
        Ok(())
    }

    fn body_framing(&self, head: &Head) -> Result<Option<Body>, H1Error> {
        if self.kind == Kind::Response {
            let status = head.status.unwrap_or(0);
            if self.cur_expect.head_request || status == 204 || status == 304 {
                return Ok(None);
            }
        }
        if head.has_token("transfer-encoding", "chunked") {
            return Ok(Some(Body::ChunkSize));
        }
        if let Some(cl) = head.header("content-length") {
            let n: u64 = cl.parse().map_err(|_| H1Error::Malformed("bad content-length"))?;
            return Ok(if n == 0 { None } else { Some(Body::Length(n)) });
        }
        Ok(match self.kind {
            Kind::Request => None,
            Kind::Response => Some(Body::UntilClose),
        })
    }

    fn append_body(&mut self, range: std::ops::Range<usize>, ts: u64) {
        let Some(m) = self.cur.as_mut() else { return };
        m.last_ts = ts;
        if !m.body_captured || range.is_empty() {
            return;
        }
        let room = self.max_body.saturating_sub(m.body.len());
        let piece = &self.buf[range];
        if piece.len() > room {
            m.body_truncated = true;
        }
        m.body.extend_from_slice(&piece[..piece.len().min(room)]);
        let end = m.body.len();
        let n = m.body_marks.len();
        match m.body_marks.last_mut() {
            Some(last) if last.1 == ts => last.0 = end,
            _ if n < MAX_MARKS => m.body_marks.push((end, ts)),
            // Out of marks: stretch the last one (TTFT keeps its first marks).
            Some(last) => last.0 = end,
            None => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<Message>) {
        self.state = State::Head;
        if let Some(mut m) = self.cur.take() {
            m.complete = true;
            out.push(m);
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let hex = line.split(|&c| c == b';').next().unwrap_or_default();
    let hex = std::str::from_utf8(hex).map_err(|_| H1Error::BadChunk)?.trim();
    if hex.is_empty() || hex.len() > 15 {
        return Err(H1Error::BadChunk);
    }
    u64::from_str_radix(hex, 16).map_err(|_| H1Error::BadChunk)
}

fn to_headers(hs: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    hs.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect()
}

fn parse_request(b: &[u8]) -> Result<Option<(Head, usize)>, H1Error> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(b) {
        Ok(httparse::Status::Complete(n)) => Ok(Some((
            Head {
                method: req.method.map(str::to_owned),
                path: req.path.map(str::to_owned),
                status: None,
                minor_version: req.version.unwrap_or(1),
                headers: to_headers(req.headers),
                http2: false,
            },
            n,
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(H1Error::Malformed("bad request head")),
    }
}

fn parse_response(b: &[u8]) -> Result<Option<(Head, usize)>, H1Error> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    match resp.parse(b) {
        Ok(httparse::Status::Complete(n)) => Ok(Some((
            Head {
                method: None,
                path: None,
                status: resp.code,
                minor_version: resp.version.unwrap_or(1),
                headers: to_headers(resp.headers),
                http2: false,
            },
            n,
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(H1Error::Malformed("bad response head")),
    }
}

/// A client connection's parsers handed on during an upgrade.
#[path = "h1_handoff.rs"]
pub mod handoff;

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
