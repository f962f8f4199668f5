//! A WebSocket session handed from one agent to the next during an upgrade.
//!
//! Why: a session (a Codex CLI conversation, a realtime call) lives as long as
//! its user does, so the agent leaving can't wait for it to end, and an agent
//! joining it midway reads nothing of it: its frames continue a message, and
//! its compressed messages refer back into everything inflated before
//! (permessage-deflate keeps one context per direction). So the agent leaving
//! writes down what the next one needs to go on from the very byte it stopped
//! at: the upgrade's heads (the new agent classifies the request again, with
//! its own rules), each direction's frame and message in progress and last
//! 32 KiB inflated ([`WsDecoder::hand_off`]), the session messages kept, and
//! the call in flight with its events so far and the one waiting.
//!
//! The format (version 1), in `handoff_codec`'s terms: a version byte; the
//! request and response heads; the client's then the server's direction; the
//! client's and the server's session message (flag, bytes); the call in
//! flight (flag; its request, first time, events, marks, first event time,
//! last time, flags); the request waiting (flag; request, time); the time of
//! the switch while untouched (flag, u64).
use super::{Kept, Open, WsCalls, WsSession, MAX_MARKS};
use crate::http::h2::H2Error;
use crate::http::handoff_codec::{put_bytes, put_head, put_u32, put_u64, Reader};
use crate::http::message::Head;
use crate::http::websocket::WsDecoder;

const VERSION: u8 = 1;

fn put_kept(out: &mut Vec<u8>, k: Option<&Kept>) -> Option<()> {
    match k {
        None => out.push(0),
        Some(Kept::Dropped) => out.push(2),
        Some(Kept::Json(b)) => {
            out.push(1);
            put_bytes(out, b)?;
        }
    }
    Some(())
}

fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    out.push(u8::from(v.is_some()));
    put_u64(out, v.unwrap_or(0));
}

fn kept(r: &mut Reader<'_>, max: usize) -> Result<Option<Kept>, H2Error> {
    Ok(match r.u8()? {
        0 => None,
        2 => Some(Kept::Dropped),
        1 => {
            let b = r.bytes()?;
            if b.len() > max {
                return Err(H2Error::TooLarge);
            }
            Some(Kept::Json(b.to_vec()))
        }
        _ => return Err(H2Error::Frame("websocket state: kept request")),
    })
}

fn opt_u64(r: &mut Reader<'_>) -> Result<Option<u64>, H2Error> {
    let some = r.u8()? == 1;
    let v = r.u64()?;
    Ok(some.then_some(v))
}

impl<E: WsCalls> WsSession<E> {
    /// What the next agent needs to go on decoding this session, at most
    /// `max` bytes; None when it does not fit. The calls handed on leave this
    /// session (the next agent completes them).
    pub fn hand_off(&mut self, max: usize) -> Option<Vec<u8>> {
        let mut out = vec![VERSION];
        put_head(&mut out, &self.request)?;
        put_head(&mut out, &self.response)?;
        self.up.hand_off(&mut out)?;
        self.down.hand_off(&mut out)?;
        for s in &self.session {
            out.push(u8::from(s.is_some()));
            put_bytes(&mut out, s.as_deref().unwrap_or_default())?;
        }
        out.push(u8::from(self.open.is_some()));
        if let Some(o) = &self.open {
            put_kept(&mut out, o.request.as_ref())?;
            put_u64(&mut out, o.first_ts);
            put_bytes(&mut out, &o.events)?;
            put_u32(&mut out, o.marks.len())?;
            for &(end, ts) in &o.marks {
                put_u64(&mut out, end as u64);
                put_u64(&mut out, ts);
            }
            put_opt_u64(&mut out, o.first_event_ts);
            put_u64(&mut out, o.last_ts);
            out.push(u8::from(o.content_seen) | u8::from(o.truncated) << 1);
        }
        put_kept(&mut out, self.waiting.as_ref().map(|(k, _)| k))?;
        put_u64(&mut out, self.waiting.as_ref().map_or(0, |(_, ts)| *ts));
        put_opt_u64(&mut out, self.untouched_since);
        if out.len() > max {
            return None;
        }
        (self.open, self.waiting) = (None, None);
        Some(out)
    }

    /// A session decoded on from where the agent before stopped (see
    /// [`hand_off`](Self::hand_off)); `classify` tells its endpoint from the
    /// upgrade request again (a session it does not tag is not resumed).
    pub fn resume(
        state: &[u8],
        max_body: usize,
        classify: &mut dyn FnMut(&Head) -> Option<E>,
    ) -> Result<Self, H2Error> {
        let mut r = Reader::of_version(state, VERSION)?;
        let (request, response) = (r.head()?, r.head()?);
        let endpoint = classify(&request).ok_or(H2Error::Frame("websocket state: not an LLM API here"))?;
        let (up, down) = (WsDecoder::resume(&mut r, max_body)?, WsDecoder::resume(&mut r, max_body)?);
        let mut s = WsSession::new(endpoint, request, response, max_body, 0);
        (s.up, s.down) = (up, down);
        for slot in &mut s.session {
            let some = r.u8()? == 1;
            let b = r.bytes()?;
            if b.len() > max_body {
                return Err(H2Error::TooLarge);
            }
            *slot = some.then(|| b.to_vec());
        }
        if r.u8()? == 1 {
            let request = kept(&mut r, max_body)?;
            let first_ts = r.u64()?;
            let events = r.bytes()?;
            if events.len() > max_body {
                return Err(H2Error::TooLarge);
            }
            let mut marks = Vec::new();
            for _ in 0..r.u32()?.min(MAX_MARKS) {
                let end = r.u64()? as usize;
                marks.push((end.min(events.len()), r.u64()?));
            }
            let (first_event_ts, last_ts, flags) = (opt_u64(&mut r)?, r.u64()?, r.u8()?);
            s.open = Some(Open {
                request,
                first_ts,
                events: events.to_vec(),
                marks,
                first_event_ts,
                last_ts,
                content_seen: flags & 1 != 0,
                truncated: flags & 2 != 0,
            });
        }
        let waiting = kept(&mut r, max_body)?;
        let ts = r.u64()?;
        s.waiting = waiting.map(|k| (k, ts));
        s.untouched_since = opt_u64(&mut r)?;
        Ok(s)
    }
}
