//! Passive HTTP/2 for one captured client connection: frames in both directions,
//! HPACK with one dynamic table per direction, and many concurrent streams, each
//! becoming its own request/response [`Exchange`], tagged with what its request
//! was classified as.
//!
//! Every header block is decoded, captured stream or not, because HPACK state is
//! shared by the whole connection: skipping one block would corrupt every later
//! one. A decoding error therefore ends the connection's capture (counted), never
//! guesses. Connections already open when capture began are not decodable (their
//! HPACK tables are unknown): [`looks_like_frames`] lets the caller recognise and
//! skip them.
//!
//! A stream opened by an extended CONNECT (RFC 8441, `:protocol` websocket)
//! and accepted (2xx) carries a WebSocket: its DATA frames both ways are that
//! session's bytes ([`WsSession`], as after an HTTP/1.1 upgrade), and its
//! calls are handed on as they complete. Its framing breaking ends that
//! stream's decoding only (counted), not the connection's.
//!
//! Muting: a stream nothing records whose response goes on past its first
//! DATA frame is named to the kernel ([`take_mute`](H2Connection::take_mute)),
//! which then skips the payloads of its later DATA frames, and the headers of
//! its large ones that do not end it (`agent-ebpf/src/h2_walk.rs`). The rest
//! of a payload whose header was seen is given back here as zeros
//! ([`skip_ingress`](H2Connection::skip_ingress)), only inside a DATA frame
//! of a stream nothing records; frames skipped whole leave no trace, and are
//! taken only at a frame's start while streams are named; anywhere else a
//! skip is a lost place.
use std::collections::{HashMap, HashSet};

mod handoff;
mod mute;

use loona_hpack::Decoder;
use thiserror::Error;

use super::message::{Classified, Exchange, Head, Lost, Message};
use super::ws_session::{WsCalls, WsSession};
use crate::capture::event::Direction as Dir;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
/// Largest frame accepted (SETTINGS_MAX_FRAME_SIZE's ceiling is 16 MiB - 1).
const MAX_FRAME: usize = (1 << 24) - 1;
/// Largest header block (HEADERS + CONTINUATION) accepted.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Largest HPACK dynamic table honoured; peers almost always use the 4 KiB default.
const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Captured streams in flight on one connection.
const MAX_STREAMS: usize = 256;
const MAX_MARKS: usize = 4096;
/// Streams named to the kernel at once on one connection (more are copied;
/// a reset stream stays named).
const MAX_MUTED: usize = 256;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum H2Error {
    #[error("HTTP/2 frame malformed: {0}")]
    Frame(&'static str),
    #[error("HPACK decoding failed")]
    Hpack,
    #[error("HTTP/2 frame or header block too large")]
    TooLarge,
}

/// One direction of the connection.
struct Direction {
    buf: Vec<u8>,
    /// Preface bytes still expected (egress only).
    preface_left: usize,
    hpack: Decoder<'static>,
    /// The table size the peer's SETTINGS allowed this direction's encoder.
    allowed: usize,
    /// Header block being assembled: (stream, fragment, END_STREAM of its HEADERS, is PUSH_PROMISE).
    block: Option<(u32, Vec<u8>, bool, bool)>,
}

impl Direction {
    fn new(preface: bool) -> Self {
        let mut hpack = Decoder::new();
        hpack.set_max_allowed_table_size(4096);
        let preface_left = if preface { PREFACE.len() } else { 0 };
        Self { buf: Vec::new(), preface_left, hpack, allowed: 4096, block: None }
    }
}

struct Stream<E> {
    request: Message,
    /// What the request was classified as, at its head.
    endpoint: E,
    response: Option<Message>,
    /// An extended CONNECT the server accepted: the stream is a WebSocket.
    ws: Option<Box<WsSession<E>>>,
}

pub struct H2Connection<E = ()> {
    egress: Direction,
    ingress: Direction,
    streams: HashMap<u32, Stream<E>>,
    max_body: usize,
    /// Unrecorded streams named to the kernel and not ended yet, and those
    /// still to name.
    muted: HashSet<u32>,
    to_mute: Vec<u32>,
    /// The kernel's walk of this connection, by its id (the stream base of
    /// the agent that began it): what streams are named under. Learnt at the
    /// first stream named, or handed on with the connection.
    walk: Option<u64>,
    /// Taken over from the agent before (its walk, if any, is not this
    /// agent's count of the connection).
    resumed: bool,
}

/// Does `data` start with a server's connection preface (a SETTINGS frame on
/// stream 0)? An HTTP/2 server writes one before anything else.
pub fn looks_like_server_preface(data: &[u8]) -> bool {
    data.len() >= FRAME_HEADER && data[3] == SETTINGS && data[4] & ACK == 0 && data[5..9] == [0, 0, 0, 0]
}

/// Does `data` (a connection's first egress bytes) read as whole HTTP/2 frames?
/// True for a connection joined after its preface: skip it rather than guess.
pub fn looks_like_frames(data: &[u8]) -> bool {
    let mut pos = 0;
    let mut frames = 0;
    while data.len().saturating_sub(pos) >= FRAME_HEADER {
        let h = &data[pos..];
        let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
        if h[3] > CONTINUATION || h[5] & 0x80 != 0 || len > MAX_FRAME {
            return false;
        }
        pos += FRAME_HEADER + len;
        frames += 1;
    }
    frames > 0 && pos == data.len()
}

impl<E: WsCalls> H2Connection<E> {
    pub fn new(max_body: usize) -> Self {
        Self {
            egress: Direction::new(true),
            ingress: Direction::new(false),
            streams: HashMap::new(),
            max_body,
            muted: HashSet::new(),
            to_mute: Vec::new(),
            walk: None,
            resumed: false,
        }
    }

    pub fn buffered(&self) -> usize {
        let bodies: usize = self
            .streams
            .values()
            .map(|s| {
                let ws = s.ws.as_ref().map_or(0, |w| w.buffered());
                s.request.body.len() + s.response.as_ref().map_or(0, |r| r.body.len()) + ws
            })
            .sum();
        self.egress.buf.len() + self.ingress.buf.len() + bodies
    }

    /// Frames the process wrote (requests). `classify` runs once per request
    /// head; only requests it tags (LLM API calls) are kept.
    pub fn on_egress(
        &mut self,
        mut data: &[u8],
        ts: u64,
        classify: &mut dyn FnMut(&Head) -> Option<E>,
        lost: &mut Lost,
    ) -> Result<(), H2Error> {
        if self.egress.preface_left > 0 {
            let done = PREFACE.len() - self.egress.preface_left;
            let n = data.len().min(self.egress.preface_left);
            if data[..n] != PREFACE[done..done + n] {
                return Err(H2Error::Frame("bad connection preface"));
            }
            self.egress.preface_left -= n;
            data = &data[n..];
        }
        self.egress.buf.extend_from_slice(data);
        let mut out = Vec::new();
        self.frames(true, ts, classify, &mut out, lost)
    }

    /// Frames the process read (responses). Completed exchanges go to `out`.
    pub fn on_ingress(
        &mut self,
        data: &[u8],
        ts: u64,
        out: &mut Vec<Classified<E>>,
        lost: &mut Lost,
    ) -> Result<(), H2Error> {
        self.ingress.buf.extend_from_slice(data);
        self.frames(false, ts, &mut |_| None, out, lost)
    }

    /// Calls in flight on WebSocket streams: the ones a handover can't hand
    /// on (see `handoff`).
    pub fn websocket_calls_in_flight(&self) -> usize {
        self.streams.values().filter_map(|s| s.ws.as_ref()).map(|ws| ws.calls_in_flight()).sum()
    }

    /// Calls in flight on request streams: the ones a handover hands on.
    pub fn calls_held(&self) -> usize {
        self.streams.values().filter(|s| s.ws.is_none()).count()
    }

    /// The connection ended: responses cut short are handed on incomplete (the
    /// provider decides whether a stream's final event arrived); streams with
    /// no response are lost.
    pub fn close(&mut self, out: &mut Vec<Classified<E>>, lost: &mut Lost) {
        for (_, s) in self.streams.drain() {
            if let Some(mut ws) = s.ws {
                ws.close(lost);
                continue;
            }
            match s.response {
                Some(mut response) => {
                    // The body is whole when it has its declared length, even if the
                    // client hung up before reading the END_STREAM that followed.
                    let declared = response.head.header("content-length").and_then(|v| v.parse::<usize>().ok());
                    response.complete = declared == Some(response.body.len()) && !response.body_truncated;
                    let exchange = Exchange { request: s.request, response };
                    out.push(Classified { endpoint: s.endpoint, exchange })
                }
                None => lost.unanswered += 1,
            }
        }
    }

    /// Nothing more can be decoded: every captured stream in flight is lost.
    pub fn lose_sync(&mut self, lost: &mut Lost) {
        for (_, s) in self.streams.drain() {
            match s.ws {
                Some(mut ws) => ws.close(lost),
                None => lost.unanswered += 1,
            }
        }
        self.egress.buf = Vec::new();
        self.ingress.buf = Vec::new();
    }

    fn frames(
        &mut self,
        egress: bool,
        ts: u64,
        classify: &mut dyn FnMut(&Head) -> Option<E>,
        out: &mut Vec<Classified<E>>,
        lost: &mut Lost,
    ) -> Result<(), H2Error> {
        // Out of `self` while its frames are read, so that each payload is
        // lent to `frame` rather than copied.
        let buf = std::mem::take(if egress { &mut self.egress.buf } else { &mut self.ingress.buf });
        let mut pos = 0;
        let result = loop {
            let rest = &buf[pos..];
            if rest.len() < FRAME_HEADER {
                break Ok(());
            }
            let len = (rest[0] as usize) << 16 | (rest[1] as usize) << 8 | rest[2] as usize;
            if len > MAX_FRAME {
                break Err(H2Error::TooLarge);
            }
            if rest.len() < FRAME_HEADER + len {
                break Ok(());
            }
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            pos += FRAME_HEADER + len;
            if let Err(e) = self.frame(egress, kind, flags, stream, payload, ts, classify, out, lost) {
                break Err(e);
            }
        };
        let mut buf = buf;
        buf.drain(..pos.min(buf.len()));
        *(if egress { &mut self.egress.buf } else { &mut self.ingress.buf }) = buf;
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn frame(
        &mut self,
        egress: bool,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        ts: u64,
        classify: &mut dyn FnMut(&Head) -> Option<E>,
        out: &mut Vec<Classified<E>>,
        lost: &mut Lost,
    ) -> Result<(), H2Error> {
        let dir = if egress { &mut self.egress } else { &mut self.ingress };
        // A header block must be followed by its CONTINUATIONs and nothing else.
        if dir.block.is_some() && kind != CONTINUATION {
            return Err(H2Error::Frame("header block interrupted"));
        }
        match kind {
            DATA => {
                let data = unpad(flags, payload)?;
                self.data(egress, stream, data, flags & END_STREAM != 0, ts, out, lost);
            }
            HEADERS | PUSH_PROMISE => {
                let mut frag = unpad(flags, payload)?;
                if kind == HEADERS && flags & PRIORITY != 0 {
                    frag = frag.get(5..).ok_or(H2Error::Frame("short PRIORITY fields"))?;
                }
                if kind == PUSH_PROMISE {
                    // The promised stream id; the pushed response is not a call we made.
                    frag = frag.get(4..).ok_or(H2Error::Frame("short PUSH_PROMISE"))?;
                }
                if frag.len() > MAX_HEADER_BLOCK {
                    return Err(H2Error::TooLarge);
                }
                dir.block = Some((stream, frag.to_vec(), flags & END_STREAM != 0, kind == PUSH_PROMISE));
                if flags & END_HEADERS != 0 {
                    self.header_block(egress, ts, classify, out)?;
                }
            }
            CONTINUATION => {
                let Some((s, block, _, _)) = dir.block.as_mut() else {
                    return Err(H2Error::Frame("CONTINUATION without HEADERS"));
                };
                if *s != stream {
                    return Err(H2Error::Frame("CONTINUATION on another stream"));
                }
                if block.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(H2Error::TooLarge);
                }
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    self.header_block(egress, ts, classify, out)?;
                }
            }
            RST_STREAM => match self.streams.remove(&stream) {
                Some(Stream { ws: Some(mut ws), .. }) => ws.close(lost),
                Some(_) => lost.unanswered += 1,
                // A muted stream stays named: DATA sent before the reset may
                // still come, its payload skipped by the kernel.
                None => {}
            },
            SETTINGS if flags & ACK == 0 => {
                if !payload.len().is_multiple_of(6) {
                    return Err(H2Error::Frame("SETTINGS length"));
                }
                for s in payload.chunks_exact(6) {
                    if u16::from_be_bytes([s[0], s[1]]) == 1 {
                        // HEADER_TABLE_SIZE bounds the *peer's* encoder, i.e. the
                        // other direction's decoder.
                        let size = (u32::from_be_bytes([s[2], s[3], s[4], s[5]]) as usize).min(MAX_TABLE_SIZE);
                        let other = if egress { &mut self.ingress } else { &mut self.egress };
                        other.allowed = size.max(4096);
                        other.hpack.set_max_allowed_table_size(other.allowed);
                    }
                }
            }
            GOAWAY if !egress => {
                // Streams above the last one the server processed will never be answered.
                let last =
                    payload.get(..4).map_or(u32::MAX, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])) & 0x7fff_ffff;
                let before = self.streams.len();
                self.streams.retain(|id, _| *id <= last);
                lost.unanswered += (before - self.streams.len()) as u64;
            }
            // PRIORITY, PING, WINDOW_UPDATE, GOAWAY from us, extensions: nothing to record.
            _ => {}
        }
        Ok(())
    }

    fn header_block(
        &mut self,
        egress: bool,
        ts: u64,
        classify: &mut dyn FnMut(&Head) -> Option<E>,
        out: &mut Vec<Classified<E>>,
    ) -> Result<(), H2Error> {
        let dir = if egress { &mut self.egress } else { &mut self.ingress };
        let Some((stream, block, end_stream, push)) = dir.block.take() else {
            return Ok(());
        };
        let mut head = Head { http2: true, ..Default::default() };
        let mut bytes = 0usize;
        dir.hpack
            .decode_with_cb(&block, |name, value| {
                bytes += name.len() + value.len();
                if bytes > MAX_HEADER_BLOCK * 4 {
                    return;
                }
                match &name[..] {
                    b":method" => head.method = Some(String::from_utf8_lossy(&value).into_owned()),
                    b":path" => head.path = Some(String::from_utf8_lossy(&value).into_owned()),
                    b":status" => head.status = std::str::from_utf8(&value).ok().and_then(|s| s.parse().ok()),
                    b":authority" => head.headers.push(("host".into(), value.into_owned())),
                    // Extended CONNECT's protocol (RFC 8441), kept for classifying.
                    b":protocol" => head.headers.push((":protocol".into(), value.into_owned())),
                    n if n.starts_with(b":") => {}
                    n => head.headers.push((String::from_utf8_lossy(n).to_ascii_lowercase(), value.into_owned())),
                }
            })
            .map_err(|_| H2Error::Hpack)?;
        if push {
            return Ok(());
        }
        if egress {
            if head.method.is_none() || self.streams.contains_key(&stream) {
                return Ok(()); // trailers
            }
            if self.streams.len() >= MAX_STREAMS {
                return Ok(());
            }
            if let Some(endpoint) = classify(&head) {
                let request = Message {
                    head,
                    body_captured: true,
                    complete: end_stream,
                    first_ts: ts,
                    last_ts: ts,
                    ..Default::default()
                };
                self.streams.insert(stream, Stream { request, endpoint, response: None, ws: None });
            }
        } else if let Some(s) = self.streams.get_mut(&stream) {
            let accepted = head.status.is_some_and(|c| (200..300).contains(&c));
            if s.ws.is_none() && accepted && s.request.head.opens_websocket() {
                // The WebSocket is open: its calls come from the DATA frames.
                let ws = WsSession::new(s.endpoint.clone(), s.request.head.clone(), head, self.max_body, ts);
                s.ws = Some(Box::new(ws));
                return Ok(());
            }
            let informational = s.response.as_ref().is_some_and(|r| r.head.status.is_some_and(|c| c < 200));
            if head.status.is_some() && (s.response.is_none() || informational) {
                s.response =
                    Some(Message { head, body_captured: true, first_ts: ts, last_ts: ts, ..Default::default() });
            }
            if end_stream {
                self.finish(stream, ts, out);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn data(
        &mut self,
        egress: bool,
        stream: u32,
        data: &[u8],
        end: bool,
        ts: u64,
        out: &mut Vec<Classified<E>>,
        lost: &mut Lost,
    ) {
        let max_body = self.max_body;
        let Some(s) = self.streams.get_mut(&stream) else {
            if !egress && stream != 0 {
                self.unrecorded(stream, end);
            }
            return;
        };
        if let Some(ws) = s.ws.as_mut() {
            let dir = if egress { Dir::Egress } else { Dir::Ingress };
            if ws.on_bytes(dir, data, ts, out, lost).is_err() {
                lost.ws_malformed += 1;
                ws.close(lost);
                self.streams.remove(&stream);
            } else if ws.is_done() || (end && !egress) {
                // Both closes made, or the server ended its side (RFC 8441's
                // FIN): nothing more will be answered.
                ws.close(lost);
                self.streams.remove(&stream);
            }
            return;
        }
        let msg = if egress { Some(&mut s.request) } else { s.response.as_mut() };
        let Some(m) = msg else {
            return;
        };
        m.last_ts = ts;
        let room = max_body.saturating_sub(m.body.len());
        if data.len() > room {
            m.body_truncated = true;
        }
        m.body.extend_from_slice(&data[..data.len().min(room)]);
        if !egress && !data.is_empty() && m.body_marks.len() < MAX_MARKS {
            m.body_marks.push((m.body.len(), ts));
        }
        if end {
            if egress {
                m.complete = true;
            } else {
                self.finish(stream, ts, out);
            }
        }
    }

    /// A DATA frame of a response nothing records: a stream that goes on
    /// past it is named to the kernel (its later frames' payloads are not
    /// copied); one ended is forgotten.
    fn unrecorded(&mut self, stream: u32, end: bool) {
        if end {
            self.muted.remove(&stream);
        } else if self.muted.len() < MAX_MUTED && self.muted.insert(stream) {
            self.to_mute.push(stream);
        }
    }

    fn finish(&mut self, stream: u32, ts: u64, out: &mut Vec<Classified<E>>) {
        if let Some(Stream { request, endpoint, response: Some(mut response), .. }) = self.streams.remove(&stream) {
            response.complete = true;
            response.last_ts = ts;
            out.push(Classified { endpoint, exchange: Exchange { request, response } });
        }
    }
}

fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], H2Error> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let pad = *payload.first().ok_or(H2Error::Frame("missing pad length"))? as usize;
    if pad + 1 > payload.len() {
        return Err(H2Error::Frame("bad padding"));
    }
    Ok(&payload[1..payload.len() - pad])
}

/// Frame a header list and build frames (tests, fuzz seeds, benchmarks).
pub mod encode;

#[cfg(test)]
mod tests;
