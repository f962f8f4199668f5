//! WebSocket (RFC 6455) messages from one direction of an upgraded connection,
//! with permessage-deflate (RFC 7692).
//!
//! A passive tap sees each direction as a byte stream cut anywhere, so the
//! decoder keeps only a frame header being assembled (at most 14 bytes), the
//! position inside the current frame's payload (unmasked as it arrives) and the
//! message being assembled, capped: memory per direction is bounded by the cap
//! whatever the peer sends. Text and binary messages are handed on whole
//! (fragments joined, inflated); pings and pongs are dropped; a close frame is
//! handed on and ends the direction. Anything a conforming endpoint would not
//! send (reserved bits, unknown opcodes, fragmented or oversized control
//! frames, a continuation with no message, a message over the cap, a deflate
//! stream that does not inflate) is an error: the caller stops decoding the
//! connection and counts it; nothing is guessed.
//!
//! permessage-deflate: a compressed message has RSV1 on its first frame; its
//! payload, with the four bytes `00 00 ff ff` the sender removed put back, is
//! raw deflate. Without `no_context_takeover` the sender keeps its window
//! across messages, so one inflater lives as long as the direction; with it,
//! each message starts afresh. Window-bit parameters need no handling here: an
//! inflater with the largest window reads any smaller one.
use thiserror::Error;

use super::h2::H2Error;
use super::handoff_codec::{put_bytes, put_u64, Reader};

/// A message handed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsMessage {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    /// The peer's close frame: its status code, when it gave one.
    Close(Option<u16>),
}

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum WsError {
    #[error("reserved bits set")]
    Reserved,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("control frame fragmented or longer than 125 bytes")]
    Control,
    #[error("frame length over 2^63")]
    Length,
    #[error("continuation frame with no message open, or a new message inside one")]
    Sequence,
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("compressed message does not inflate")]
    Inflate,
}

/// The permessage-deflate parameters a 101 response accepted, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deflate {
    /// The client resets its compressor for each message (egress).
    pub client_no_context_takeover: bool,
    /// The server does (ingress).
    pub server_no_context_takeover: bool,
}

impl Deflate {
    /// From a 101 response's `Sec-WebSocket-Extensions` value: the
    /// permessage-deflate the server accepted, if any.
    pub fn negotiated(extensions: &str) -> Option<Deflate> {
        extensions.split(',').find_map(|ext| {
            let mut params = ext.split(';').map(str::trim);
            if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
                return None;
            }
            let mut d = Deflate::default();
            for p in params {
                let name = p.split('=').next().unwrap_or("").trim();
                if name.eq_ignore_ascii_case("client_no_context_takeover") {
                    d.client_no_context_takeover = true;
                } else if name.eq_ignore_ascii_case("server_no_context_takeover") {
                    d.server_no_context_takeover = true;
                }
            }
            Some(d)
        })
    }
}

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// The frame being read: its header fields and how much payload is left.
#[derive(Clone, Copy, Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    remaining: u64,
    /// Payload bytes already read (the mask's phase).
    done: u64,
}

/// One direction of a WebSocket connection.
pub struct WsDecoder {
    cap: usize,
    /// A frame header not yet whole.
    header: Vec<u8>,
    frame: Option<Frame>,
    /// The data message being assembled: its opcode, compressed or not.
    open: Option<(u8, bool)>,
    msg: Vec<u8>,
    /// A control frame's payload (at most 125 bytes).
    control: Vec<u8>,
    /// `Some` when permessage-deflate was negotiated; `reset` per message
    /// when the sender does not keep its context.
    inflater: Option<flate2::Decompress>,
    reset: bool,
    /// The last `WINDOW` bytes inflated, while the sender keeps its context:
    /// what the next agent primes its inflater with (`hand_off`).
    window: Vec<u8>,
    closed: bool,
    failed: bool,
}

/// The deflate window: back-references reach at most this far.
const WINDOW: usize = 32 << 10;

impl WsDecoder {
    /// `deflate`: whether permessage-deflate applies to this direction, and
    /// whether its sender resets its context per message. `cap` bounds a
    /// message, compressed and inflated.
    pub fn new(deflate: Option<bool>, cap: usize) -> Self {
        Self {
            cap,
            header: Vec::with_capacity(14),
            frame: None,
            open: None,
            msg: Vec::new(),
            control: Vec::new(),
            inflater: deflate.map(|_| flate2::Decompress::new(false)),
            reset: deflate.unwrap_or(false),
            window: Vec::new(),
            closed: false,
            failed: false,
        }
    }

    /// The peer closed (a close frame passed) or decoding failed: nothing more
    /// is decoded.
    pub fn is_done(&self) -> bool {
        self.closed || self.failed
    }

    /// Bytes held (for the connection's memory accounting).
    pub fn buffered(&self) -> usize {
        self.header.len() + self.msg.len() + self.control.len() + self.window.len()
    }

    /// Bytes of this direction, in order; whole messages are appended to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<WsMessage>) -> Result<(), WsError> {
        while !data.is_empty() && !self.is_done() {
            let used = match self.step(data, out) {
                Ok(n) => n,
                Err(e) => {
                    self.failed = true;
                    (self.msg, self.header, self.control, self.frame) = (Vec::new(), Vec::new(), Vec::new(), None);
                    return Err(e);
                }
            };
            data = &data[used..];
        }
        Ok(())
    }

    /// Consume some of `data`: header bytes, or payload of the current frame.
    fn step(&mut self, data: &[u8], out: &mut Vec<WsMessage>) -> Result<usize, WsError> {
        let Some(mut f) = self.frame else {
            let need = header_len(&self.header, data);
            let take = need.saturating_sub(self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..take]);
            if self.header.len() == need {
                let f = self.parse_header()?;
                self.header.clear();
                self.frame = Some(f);
                if f.remaining == 0 {
                    self.end_frame(out)?;
                }
            }
            return Ok(take);
        };
        let take = (f.remaining.min(data.len() as u64)) as usize;
        let mut chunk = data[..take].to_vec();
        if let Some(m) = f.mask {
            for (i, b) in chunk.iter_mut().enumerate() {
                *b ^= m[((f.done + i as u64) % 4) as usize];
            }
        }
        if f.opcode >= OP_CLOSE {
            self.control.extend_from_slice(&chunk);
        } else {
            if self.msg.len() + chunk.len() > self.cap {
                return Err(WsError::TooLarge(self.cap));
            }
            self.msg.extend_from_slice(&chunk);
        }
        f.remaining -= take as u64;
        f.done += take as u64;
        self.frame = Some(f);
        if f.remaining == 0 {
            self.end_frame(out)?;
        }
        Ok(take)
    }

    fn parse_header(&mut self) -> Result<Frame, WsError> {
        let h = &self.header;
        let (b0, b1) = (h[0], h[1]);
        let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
        if b0 & 0x30 != 0 {
            return Err(WsError::Reserved);
        }
        let masked = b1 & 0x80 != 0;
        let (len, at) = match b1 & 0x7f {
            126 => (u16::from_be_bytes([h[2], h[3]]) as u64, 4),
            127 => (u64::from_be_bytes(h[2..10].try_into().unwrap()), 10),
            n => (n as u64, 2),
        };
        if len >> 63 != 0 {
            return Err(WsError::Length);
        }
        let mask = masked.then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > 125 || rsv1 {
                    return Err(WsError::Control);
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.open.is_some() {
                    return Err(WsError::Sequence);
                }
                // RSV1 marks a compressed message, only where deflate was agreed.
                if rsv1 && self.inflater.is_none() {
                    return Err(WsError::Reserved);
                }
                self.open = Some((opcode, rsv1));
            }
            OP_CONTINUATION => {
                if self.open.is_none() {
                    return Err(WsError::Sequence);
                }
                if rsv1 {
                    return Err(WsError::Reserved);
                }
            }
            other => return Err(WsError::Opcode(other)),
        }
        if opcode < OP_CLOSE && self.msg.len() as u64 + len > self.cap as u64 {
            return Err(WsError::TooLarge(self.cap));
        }
        Ok(Frame { fin, opcode, mask, remaining: len, done: 0 })
    }

    fn end_frame(&mut self, out: &mut Vec<WsMessage>) -> Result<(), WsError> {
        let Some(f) = self.frame.take() else { return Ok(()) };
        match f.opcode {
            OP_CLOSE => {
                let code = (self.control.len() >= 2).then(|| u16::from_be_bytes([self.control[0], self.control[1]]));
                self.control.clear();
                self.closed = true;
                out.push(WsMessage::Close(code));
            }
            OP_PING | OP_PONG => self.control.clear(),
            _ if f.fin => {
                let (opcode, compressed) = self.open.take().unwrap_or((OP_BINARY, false));
                let mut body = std::mem::take(&mut self.msg);
                if compressed {
                    body = self.inflate(&body)?;
                }
                out.push(if opcode == OP_TEXT { WsMessage::Text(body) } else { WsMessage::Binary(body) });
            }
            _ => {}
        }
        Ok(())
    }

    /// Inflate one message, capped: a bomb costs at most `cap` bytes.
    fn inflate(&mut self, compressed: &[u8]) -> Result<Vec<u8>, WsError> {
        const STEP: usize = 64 * 1024;
        let (cap, reset) = (self.cap, self.reset);
        let d = self.inflater.as_mut().ok_or(WsError::Inflate)?;
        if reset {
            d.reset(false);
        }
        let input = [compressed, &[0x00, 0x00, 0xff, 0xff][..]].concat();
        let mut out: Vec<u8> = Vec::new();
        let mut at = 0;
        loop {
            out.reserve(STEP.min(cap + 1 - out.len()));
            let (before_in, before_out) = (d.total_in(), d.total_out());
            let status = d
                .decompress_vec(&input[at..], &mut out, flate2::FlushDecompress::Sync)
                .map_err(|_| WsError::Inflate)?;
            at += (d.total_in() - before_in) as usize;
            if out.len() > cap {
                return Err(WsError::TooLarge(cap));
            }
            if status == flate2::Status::StreamEnd {
                // A final block: the sender's stream ended; the next message
                // starts a new one.
                d.reset(false);
                self.window.clear();
                return Ok(out);
            }
            let progressed = d.total_in() != before_in || d.total_out() != before_out;
            if (at >= input.len() && out.len() < out.capacity()) || (!progressed && at >= input.len()) {
                self.keep_window(&out);
                return Ok(out);
            }
            if !progressed {
                return Err(WsError::Inflate);
            }
        }
    }

    /// Keep the last `WINDOW` bytes inflated, while the context carries over.
    fn keep_window(&mut self, inflated: &[u8]) {
        if self.reset {
            return;
        }
        let from = inflated.len().saturating_sub(WINDOW);
        self.window.extend_from_slice(&inflated[from..]);
        let extra = self.window.len().saturating_sub(WINDOW);
        self.window.drain(..extra);
    }

    /// This direction's state for the agent taking the connection over: the
    /// frame and message in progress and, where the sender keeps its deflate
    /// context, the last 32 KiB inflated (the format of `handoff_codec`).
    pub fn hand_off(&self, out: &mut Vec<u8>) -> Option<()> {
        let deflate = match (&self.inflater, self.reset) {
            (None, _) => 0,
            (Some(_), false) => 1,
            (Some(_), true) => 2,
        };
        out.extend_from_slice(&[deflate, u8::from(self.closed) | u8::from(self.failed) << 1]);
        put_bytes(out, &self.header)?;
        out.push(u8::from(self.frame.is_some()));
        if let Some(f) = &self.frame {
            out.extend_from_slice(&[u8::from(f.fin), f.opcode, u8::from(f.mask.is_some())]);
            out.extend_from_slice(&f.mask.unwrap_or_default());
            put_u64(out, f.remaining);
            put_u64(out, f.done);
        }
        let (opcode, compressed) = self.open.unwrap_or((0xff, false));
        out.extend_from_slice(&[opcode, u8::from(compressed)]);
        put_bytes(out, &self.msg)?;
        put_bytes(out, &self.control)?;
        put_bytes(out, &self.window)
    }

    /// A direction decoded on from where the agent before stopped; `cap` as
    /// in [`new`](Self::new).
    pub fn resume(r: &mut Reader<'_>, cap: usize) -> Result<Self, H2Error> {
        let bad = |what| H2Error::Frame(what);
        let deflate = match r.u8()? {
            0 => None,
            1 => Some(false),
            2 => Some(true),
            _ => return Err(bad("websocket state: deflate mode")),
        };
        let mut d = Self::new(deflate, cap);
        let flags = r.u8()?;
        (d.closed, d.failed) = (flags & 1 != 0, flags & 2 != 0);
        d.header = r.bytes()?.to_vec();
        if d.header.len() >= 14 {
            return Err(bad("websocket state: frame header"));
        }
        if r.u8()? == 1 {
            let (fin, opcode, masked) = (r.u8()? == 1, r.u8()?, r.u8()? == 1);
            let m = r.take(4)?;
            let mask = masked.then(|| [m[0], m[1], m[2], m[3]]);
            d.frame = Some(Frame { fin, opcode, mask, remaining: r.u64()?, done: r.u64()? });
        }
        let (opcode, compressed) = (r.u8()?, r.u8()? == 1);
        d.open = (opcode != 0xff).then_some((opcode, compressed));
        d.msg = r.bytes()?.to_vec();
        d.control = r.bytes()?.to_vec();
        let window = r.bytes()?;
        if d.msg.len() > cap || d.control.len() > 125 || window.len() > WINDOW {
            return Err(H2Error::TooLarge);
        }
        // What `parse_header` would have let through, and no more.
        if let Some(f) = &d.frame {
            let control = f.opcode >= OP_CLOSE;
            let known = matches!(f.opcode, OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG);
            if !known || (control && d.control.len() as u64 + f.remaining > 125) || (!control && d.open.is_none()) {
                return Err(bad("websocket state: frame"));
            }
        }
        if let Some(inflater) = d.inflater.as_mut() {
            prime(inflater, window).map_err(|_| bad("websocket state: deflate window"))?;
            d.window = window.to_vec();
        }
        Ok(d)
    }
}

/// Give a fresh raw inflater `window` as its history: inflate it as one
/// stored (uncompressed) block that is not the last, and drop the output. The
/// block ends on a byte boundary, where the sender's stream stands after each
/// message (permessage-deflate ends each with a sync flush), so the next
/// message's back-references reach into `window` as they did for the agent
/// before. (miniz_oxide, flate2's backend, has no call to set a dictionary.)
fn prime(d: &mut flate2::Decompress, window: &[u8]) -> Result<(), WsError> {
    if window.is_empty() {
        return Ok(());
    }
    let len = window.len() as u16;
    let mut block = vec![0x00];
    block.extend_from_slice(&len.to_le_bytes());
    block.extend_from_slice(&(!len).to_le_bytes());
    block.extend_from_slice(window);
    let mut out = Vec::with_capacity(window.len() + 64);
    d.decompress_vec(&block, &mut out, flate2::FlushDecompress::Sync).map_err(|_| WsError::Inflate)?;
    if d.total_in() != block.len() as u64 || out.len() != window.len() {
        return Err(WsError::Inflate);
    }
    Ok(())
}

/// Do these first bytes of a stream look like a WebSocket frame, masked (as a
/// client sends them) or not? A cheap check before re-attaching a session.
pub fn looks_like_frame(b: &[u8], masked: bool) -> bool {
    let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else { return false };
    let opcode = b0 & 0x0f;
    b0 & 0x30 == 0
        && matches!(opcode, OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG)
        && (b1 & 0x80 != 0) == masked
}

/// How long the frame header whose first bytes are `have` (then `more`) is: 2,
/// plus the extended length and the mask key once the second byte is known.
fn header_len(have: &[u8], more: &[u8]) -> usize {
    let second = match have.len() {
        0 => more.get(1),
        1 => more.first(),
        _ => have.get(1),
    };
    let Some(&b1) = second else { return 2 };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

#[cfg(test)]
#[path = "websocket_tests.rs"]
pub(crate) mod tests;
