//! What an HTTP/2 connection tells the kernel's walk of its frames, and
//! what the walk's skips mean to its decoding (the muting in the parent
//! module's prose; the kernel side: `agent-ebpf/src/h2_walk.rs`).
use super::{H2Connection, H2Error, DATA, FRAME_HEADER};
use crate::http::ws_session::WsCalls;

impl<E: WsCalls> H2Connection<E> {
    /// This agent's count of the connection's bytes began at `base`: if the
    /// connection began with this agent, so did the kernel's walk of it (its
    /// id, handed on so the next agent names streams under it).
    pub fn counted_from(&mut self, base: u64) {
        if !self.resumed {
            self.walk.get_or_insert(base);
        }
    }

    /// A stream whose later DATA frames the kernel need not copy, once each,
    /// with the id of the kernel's walk it is named under: the one handed on
    /// with the connection, else `base` (the walk began with this agent's
    /// count of the connection's bytes, whose base it is).
    pub fn take_mute(&mut self, base: u64) -> Option<(u64, u32)> {
        let stream = self.to_mute.pop()?;
        Some((*self.walk.get_or_insert(base), stream))
    }

    /// The kernel skipped `n` bytes of the ingress stream: the rest of the
    /// DATA frame begun last, on a stream nothing records, given back as zeros
    /// (which that stream's decoding drops); and past it (or from a frame's
    /// start) whole DATA frames of streams named to the kernel, headers and
    /// all, which leave no trace: the next bytes start a frame.
    pub fn skip_ingress(&mut self, n: u64) -> Result<(), H2Error> {
        if self.ingress.block.is_some() {
            return Err(H2Error::Frame("bytes skipped inside a header block"));
        }
        let buf = &self.ingress.buf;
        let mut whole = n;
        if !buf.is_empty() {
            if buf.len() < FRAME_HEADER {
                return Err(H2Error::Frame("bytes skipped inside a frame header"));
            }
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            if buf[3] != DATA || !self.muted.contains(&stream) {
                return Err(H2Error::Frame("bytes skipped outside a muted stream's DATA"));
            }
            let room = (FRAME_HEADER + len).saturating_sub(buf.len()) as u64;
            let pad = n.min(room);
            let to = buf.len() + pad as usize;
            self.ingress.buf.resize(to, 0);
            whole = n - pad;
        }
        if whole > 0 && self.muted.is_empty() {
            return Err(H2Error::Frame("frames skipped with no stream named to the kernel"));
        }
        Ok(())
    }
}
