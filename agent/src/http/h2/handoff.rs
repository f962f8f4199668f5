//! An HTTP/2 connection handed from one agent to the next during an upgrade.
//!
//! Why: an HTTP/2 connection has no point where it can change hands cleanly,
//! as HTTP/1.1 has between exchanges; every header block depends on the HPACK
//! tables built from all the blocks before it. An agent joining one midway can
//! decode none of its requests again (`ignored_http2_joined`) until the client
//! reconnects, which a busy client may never do. So the agent leaving writes
//! down what the next one needs to go on from the very byte it stopped at:
//! both directions' dynamic tables and any partial frame (the new agent's
//! first bytes continue that frame, or follow bytes its kernel skipped: a
//! muted stream's, which its first chunk's position tells), and the calls in
//! flight (their request,
//! and the response so far), whose ends the new agent then reads. So the old
//! agent need not wait for a busy connection to fall quiet, which it may never
//! do. A WebSocket stream inside the connection is not carried over (a
//! WebSocket over HTTP/1.1 is: `ws_handoff.rs`).
//!
//! The format (version 1), integers big-endian: a version byte, then per
//! direction (egress first) the table size the peer allowed (u32), the
//! preface bytes still expected (u32), the dynamic table oldest entry first
//! (u16 count, then u16-length name and value of each), the partial frame
//! (u32 length and bytes); then the streams (u16 count; each its id, its
//! request, and its response if begun); since version 2, the id of the
//! kernel's walk of the connection (u64, 0: none) and the streams named to
//! it (u16 count, u32 ids): the kernel goes on skipping their DATA payloads
//! for the next agent (`agent-ebpf/src/h2_walk.rs`). Version 1 is still read. The tables are read from the decoder
//! by asking it for each dynamic index (an indexed field changes nothing) and
//! written back as literal fields with incremental indexing, which rebuilds
//! the same table. What a stream's request was classified as is not written:
//! the new agent classifies the request head again, with its own rules.
use super::{Direction, H2Connection, H2Error, Stream};
use crate::http::handoff_codec::{put_message, put_u16, put_u32, put_u64, Reader};
use crate::http::message::Head;
use crate::http::ws_session::WsCalls;

/// 2: with the kernel's walk of the connection and the streams named to it.
const VERSION: u8 = 2;
/// The first dynamic table index (after the 61 static entries).
const FIRST_DYNAMIC: usize = 62;
/// More entries than a 64 KiB table can hold (32 bytes each at least).
const MAX_ENTRIES: usize = 2048;

/// An HPACK integer with an `n`-bit prefix under `pattern` (RFC 7541 5.1).
fn hpack_int(out: &mut Vec<u8>, n: u32, pattern: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(pattern | v as u8);
        return;
    }
    out.push(pattern | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 7, 0, s.len());
    out.extend_from_slice(s);
}

/// The dynamic table, newest entry first.
fn table(d: &mut Direction) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut entries = Vec::new();
    for index in FIRST_DYNAMIC..FIRST_DYNAMIC + MAX_ENTRIES {
        let mut field = Vec::new();
        hpack_int(&mut field, 7, 0x80, index);
        match d.hpack.decode(&field) {
            Ok(mut v) if v.len() == 1 => entries.push(v.remove(0)),
            _ => break,
        }
    }
    entries
}

impl<E: WsCalls> H2Connection<E> {
    /// What the next agent needs to go on decoding this connection, at most
    /// `max` bytes; None when it can't be handed on (a header block half
    /// read, or the state too large). The calls handed on leave this
    /// connection (the next agent completes them); WebSocket streams stay.
    pub fn hand_off(&mut self, max: usize) -> Option<Vec<u8>> {
        if self.egress.block.is_some() || self.ingress.block.is_some() {
            return None;
        }
        let mut out = vec![VERSION];
        for d in [&mut self.egress, &mut self.ingress] {
            put_u32(&mut out, d.allowed)?;
            put_u32(&mut out, d.preface_left)?;
            let entries = table(d);
            put_u16(&mut out, entries.len())?;
            // Oldest first: inserted in this order, they end where they were.
            for (name, value) in entries.iter().rev() {
                put_u16(&mut out, name.len())?;
                out.extend_from_slice(name);
                put_u16(&mut out, value.len())?;
                out.extend_from_slice(value);
            }
            put_u32(&mut out, d.buf.len())?;
            out.extend_from_slice(&d.buf);
        }
        let mut calls: Vec<u32> = self.streams.iter().filter(|(_, s)| s.ws.is_none()).map(|(id, _)| *id).collect();
        calls.sort_unstable();
        put_u16(&mut out, calls.len())?;
        for id in &calls {
            let s = &self.streams[id];
            put_u32(&mut out, *id as usize)?;
            put_message(&mut out, &s.request)?;
            out.push(u8::from(s.response.is_some()));
            if let Some(r) = &s.response {
                put_message(&mut out, r)?;
            }
        }
        put_u64(&mut out, self.walk.unwrap_or(0));
        let mut muted: Vec<u32> = self.muted.iter().copied().collect();
        muted.sort_unstable();
        put_u16(&mut out, muted.len())?;
        for id in muted {
            put_u32(&mut out, id as usize)?;
        }
        if out.len() > max {
            return None;
        }
        for id in calls {
            self.streams.remove(&id);
        }
        Some(out)
    }

    /// A connection decoded from where the previous agent stopped (see
    /// [`hand_off`](Self::hand_off)); `classify` tags the calls in flight
    /// again (those it does not tag are dropped: not worth recording here).
    pub fn resume(
        state: &[u8],
        max_body: usize,
        classify: &mut dyn FnMut(&Head) -> Option<E>,
    ) -> Result<Self, H2Error> {
        let (mut r, version) = Reader::of_versions(state, VERSION)?;
        let mut c = Self::new(max_body);
        c.resumed = true;
        for d in [&mut c.egress, &mut c.ingress] {
            let allowed = r.u32()?.clamp(4096, super::MAX_TABLE_SIZE);
            d.preface_left = r.u32()?.min(super::PREFACE.len());
            d.allowed = allowed;
            d.hpack.set_max_allowed_table_size(allowed);
            let n = r.u16()?;
            let mut block = Vec::new();
            let mut size = 0;
            for _ in 0..n.min(MAX_ENTRIES) {
                let n = r.u16()?;
                let name = r.take(n)?;
                let n = r.u16()?;
                let value = r.take(n)?;
                size += name.len() + value.len() + 32;
                block.push(0x40);
                hpack_string(&mut block, name);
                hpack_string(&mut block, value);
            }
            if size > allowed {
                return Err(H2Error::TooLarge);
            }
            // The encoder's table was at least this large: keep every entry.
            if size > 4096 {
                d.hpack.set_max_table_size(allowed);
            }
            d.hpack.decode(&block).map_err(|_| H2Error::Hpack)?;
            let partial = r.u32()?;
            d.buf = r.take(partial)?.to_vec();
        }
        for _ in 0..r.u16()?.min(super::MAX_STREAMS) {
            let id = r.u32()? as u32;
            let request = r.message(max_body)?;
            let response = if r.u8()? == 1 { Some(r.message(max_body)?) } else { None };
            if let Some(endpoint) = classify(&request.head) {
                c.streams.insert(id, Stream { request, endpoint, response, ws: None });
            }
        }
        if version >= 2 {
            c.walk = Some(r.u64()?).filter(|w| *w != 0);
            for _ in 0..r.u16()? {
                let id = r.u32()? as u32;
                if c.muted.len() < super::MAX_MUTED {
                    c.muted.insert(id);
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::super::encode::{frame, headers};
    use super::super::{CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, PREFACE, SETTINGS};
    use super::*;
    use crate::http::message::{Classified, Head, Lost};
    use loona_hpack::Encoder;

    fn llm(h: &Head) -> Option<()> {
        h.path.as_deref().is_some_and(|p| p.starts_with("/v1/")).then_some(())
    }

    fn request(enc: &mut Encoder<'_>, id: u32, path: &str) -> Vec<u8> {
        let h = headers(
            enc,
            &[(":method", "POST"), (":authority", "api.openai.com"), (":path", path), ("x-client-lang", "python")],
        );
        let mut f = frame(HEADERS, END_HEADERS, id, &h);
        f.extend(frame(DATA, END_STREAM, id, b"{\"model\":\"m\"}"));
        f
    }

    fn response(enc: &mut Encoder<'_>, id: u32) -> Vec<u8> {
        let h = headers(enc, &[(":status", "200"), ("content-type", "application/json"), ("x-request-id", "r")]);
        let mut f = frame(HEADERS, END_HEADERS, id, &h);
        f.extend(frame(DATA, END_STREAM, id, b"{}"));
        f
    }

    #[test]
    fn the_next_agent_decodes_blocks_that_refer_to_tables_built_before_it() {
        let (mut c, mut s) = (Encoder::new(), Encoder::new());
        let mut old = H2Connection::<()>::new(1 << 20);
        let (mut lost, mut out) = (Lost::default(), Vec::<Classified<()>>::new());
        let mut first = PREFACE.to_vec();
        first.extend(frame(SETTINGS, 0, 0, &[]));
        first.extend(request(&mut c, 1, "/v1/chat/completions"));
        old.on_egress(&first, 1, &mut llm, &mut lost).unwrap();
        old.on_ingress(&response(&mut s, 1), 2, &mut out, &mut lost).unwrap();
        assert_eq!(out.len(), 1);
        // The next request's first bytes reached the old agent, the rest will
        // reach the new one: the frame is cut in the middle.
        let next = request(&mut c, 3, "/v1/chat/completions");
        old.on_egress(&next[..5], 3, &mut llm, &mut lost).unwrap();
        let state = old.hand_off(16380).expect("handed off");
        let mut new = H2Connection::<()>::resume(&state, 1 << 20, &mut llm).unwrap();
        // A fresh decoder can't read the new block: it refers to the table.
        let mut blind = H2Connection::<()>::new(1 << 20);
        blind.egress.preface_left = 0;
        assert_eq!(blind.on_egress(&next, 3, &mut llm, &mut Lost::default()), Err(H2Error::Hpack));
        new.on_egress(&next[5..], 4, &mut llm, &mut lost).unwrap();
        out.clear();
        new.on_ingress(&response(&mut s, 3), 5, &mut out, &mut lost).unwrap();
        assert_eq!(out.len(), 1, "the call across the handoff is recorded");
        assert_eq!(out[0].exchange.request.head.path.as_deref(), Some("/v1/chat/completions"));
        assert_eq!(out[0].exchange.response.head.header("x-request-id"), Some("r"));
        assert_eq!(lost, Lost::default());
    }

    #[test]
    fn a_call_in_flight_is_handed_on_and_completed_by_the_next_agent() {
        let (mut c, mut s) = (Encoder::new(), Encoder::new());
        let mut old = H2Connection::<()>::new(1 << 20);
        let (mut lost, mut out) = (Lost::default(), Vec::<Classified<()>>::new());
        let mut bytes = PREFACE.to_vec();
        bytes.extend(request(&mut c, 1, "/v1/chat/completions"));
        old.on_egress(&bytes, 1, &mut llm, &mut lost).unwrap();
        // Its response begun: the head and part of the body.
        let resp = response(&mut s, 1);
        let cut = resp.len() - 4;
        old.on_ingress(&resp[..cut], 2, &mut out, &mut lost).unwrap();
        let state = old.hand_off(1 << 20).unwrap();
        assert_eq!(old.streams.len(), 0, "handed on, no longer the old agent's");
        let mut never = |_: &Head| None;
        let skipped = H2Connection::<()>::resume(&state, 1 << 20, &mut never).unwrap();
        assert!(skipped.streams.is_empty(), "a call the new rules don't tag is not kept");
        let mut new = H2Connection::<()>::resume(&state, 1 << 20, &mut llm).unwrap();
        new.on_ingress(&resp[cut..], 3, &mut out, &mut lost).unwrap();
        assert_eq!(out.len(), 1);
        let e = &out[0].exchange;
        assert_eq!((e.request.body.as_slice(), e.response.body.as_slice()), (&b"{\"model\":\"m\"}"[..], &b"{}"[..]));
        assert_eq!((e.request.first_ts, e.response.first_ts, e.response.last_ts), (1, 2, 3), "timing kept");
        assert!(e.response.complete);
        assert_eq!(e.response.head.header("x-request-id"), Some("r"));
    }

    #[test]
    fn a_half_read_header_block_or_a_bad_state_is_not_handed_on() {
        let mut c = Encoder::new();
        let mut old = H2Connection::<()>::new(1 << 20);
        let mut lost = Lost::default();
        let h = headers(&mut c, &[(":method", "POST"), (":path", "/v1/x")]);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, 0, 1, &h));
        old.on_egress(&bytes, 1, &mut llm, &mut lost).unwrap();
        assert!(old.hand_off(16380).is_none(), "a CONTINUATION is awaited");
        old.on_egress(&frame(CONTINUATION, END_HEADERS, 1, &[]), 2, &mut llm, &mut lost).unwrap();
        let state = old.hand_off(16380).unwrap();
        assert!(old.hand_off(4).is_none(), "larger than allowed");
        for cut in 0..state.len() {
            assert!(H2Connection::<()>::resume(&state[..cut], 1 << 20, &mut llm).is_err(), "cut at {cut}");
        }
        let mut other = state.clone();
        other[0] = 9;
        assert!(H2Connection::<()>::resume(&other, 1 << 20, &mut llm).is_err());
    }

    #[test]
    fn the_kernels_walk_and_the_streams_named_to_it_are_handed_on() {
        let (mut enc, mut srv) = (Encoder::new(), Encoder::new());
        let get = |enc: &mut Encoder<'_>, id| {
            let h = headers(enc, &[(":method", "GET"), (":authority", "example.com"), (":path", "/big")]);
            frame(HEADERS, END_HEADERS | END_STREAM, id, &h)
        };
        let mut c = H2Connection::<()>::new(1 << 20);
        let (mut lost, mut out) = (Lost::default(), Vec::new());
        c.on_egress(&[PREFACE, &get(&mut enc, 1)].concat(), 1, &mut llm, &mut lost).unwrap();
        let mut i = frame(HEADERS, END_HEADERS, 1, &headers(&mut srv, &[(":status", "200")]));
        i.extend(frame(DATA, 0, 1, &[7; 100]));
        // The next frame's header; the switch falls inside its payload.
        i.extend_from_slice(&frame(DATA, 0, 1, &[0; 300])[..9]);
        c.on_ingress(&i, 1, &mut out, &mut lost).unwrap();
        assert_eq!(c.take_mute(42), Some((42, 1)));
        c.skip_ingress(100).unwrap();
        let state = c.hand_off(1 << 20).unwrap();

        let mut d = H2Connection::<()>::resume(&state, 1 << 20, &mut llm).unwrap();
        // The next agent's kernel goes on skipping that payload, and names
        // a new stream under the same walk.
        d.skip_ingress(200).unwrap();
        d.on_egress(&get(&mut enc, 3), 2, &mut llm, &mut lost).unwrap();
        let mut i = frame(HEADERS, END_HEADERS, 3, &headers(&mut srv, &[(":status", "200")]));
        i.extend(frame(DATA, 0, 3, &[7; 100]));
        d.on_ingress(&i, 2, &mut out, &mut lost).unwrap();
        assert_eq!(d.take_mute(7), Some((42, 3)), "named under the walk handed on");
        assert_eq!((out.len(), &lost, d.buffered()), (0, &Lost::default(), 0));

        // A state of version 1 (an agent before muting): nothing named, so
        // no skip is taken.
        let mut v1 = state.clone();
        v1[0] = 1;
        v1.truncate(state.len() - (8 + 2 + 4));
        let mut e = H2Connection::<()>::resume(&v1, 1 << 20, &mut llm).unwrap();
        assert!(e.skip_ingress(200).is_err());
        v1[0] = 3;
        assert!(H2Connection::<()>::resume(&v1, 1 << 20, &mut llm).is_err(), "a version after this agent's");

        // Nothing named before the switch: the walk is the one that began
        // with the old agent's count, not the new agent's.
        let (mut enc, mut srv) = (Encoder::new(), Encoder::new());
        let mut c = H2Connection::<()>::new(1 << 20);
        c.on_egress(&[PREFACE, &get(&mut enc, 1)].concat(), 1, &mut llm, &mut lost).unwrap();
        c.counted_from(42);
        let mut d = H2Connection::<()>::resume(&c.hand_off(1 << 20).unwrap(), 1 << 20, &mut llm).unwrap();
        d.counted_from(7);
        let mut i = frame(HEADERS, END_HEADERS, 1, &headers(&mut srv, &[(":status", "200")]));
        i.extend(frame(DATA, 0, 1, &[7; 100]));
        d.on_ingress(&i, 2, &mut out, &mut lost).unwrap();
        assert_eq!(d.take_mute(7), Some((42, 1)));
    }
}
