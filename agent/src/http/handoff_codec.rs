//! The byte format connection states are handed on in during an upgrade
//! (`h2/handoff.rs`, `ws_session.rs`): integers big-endian, byte strings
//! after their u32 length, messages (head, body so far, times) whole. The
//! reader checks every length against what is left: a state is input from
//! another process, never trusted.
use super::h2::H2Error;
use super::message::{Head, Message};

pub fn put_u16(out: &mut Vec<u8>, v: usize) -> Option<()> {
    out.extend_from_slice(&u16::try_from(v).ok()?.to_be_bytes());
    Some(())
}

pub fn put_u32(out: &mut Vec<u8>, v: usize) -> Option<()> {
    out.extend_from_slice(&u32::try_from(v).ok()?.to_be_bytes());
    Some(())
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Option<()> {
    put_u32(out, b.len())?;
    out.extend_from_slice(b);
    Some(())
}

pub fn put_opt(out: &mut Vec<u8>, s: Option<&str>) -> Option<()> {
    out.push(u8::from(s.is_some()));
    put_bytes(out, s.unwrap_or_default().as_bytes())
}

pub fn put_message(out: &mut Vec<u8>, m: &Message) -> Option<()> {
    put_head(out, &m.head)?;
    put_bytes(out, &m.body)?;
    out.push(u8::from(m.body_truncated) | u8::from(m.body_captured) << 1 | u8::from(m.complete) << 2);
    put_u64(out, m.first_ts);
    put_u64(out, m.last_ts);
    put_u16(out, m.body_marks.len())?;
    for &(end, ts) in &m.body_marks {
        put_u64(out, end as u64);
        put_u64(out, ts);
    }
    Some(())
}

pub fn put_head(out: &mut Vec<u8>, h: &Head) -> Option<()> {
    put_opt(out, h.method.as_deref())?;
    put_opt(out, h.path.as_deref())?;
    out.extend_from_slice(&h.status.unwrap_or(0).to_be_bytes());
    out.push(h.minor_version);
    out.push(u8::from(h.http2));
    put_u16(out, h.headers.len())?;
    for (name, value) in &h.headers {
        put_bytes(out, name.as_bytes())?;
        put_bytes(out, value)?;
    }
    Some(())
}

/// Reads the format back, every length checked.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// A state that starts with its format's version byte, `version`.
    pub fn of_version(state: &'a [u8], version: u8) -> Result<Self, H2Error> {
        let mut r = Reader(state);
        if r.take(1)? != [version] {
            return Err(H2Error::Frame("handoff state of another version"));
        }
        Ok(r)
    }

    /// A state of any version from 1 to `latest` (an agent reads the states
    /// of the versions before it): the reader and the version.
    pub fn of_versions(state: &'a [u8], latest: u8) -> Result<(Self, u8), H2Error> {
        let mut r = Reader(state);
        let v = r.u8()?;
        if v == 0 || v > latest {
            return Err(H2Error::Frame("handoff state of another version"));
        }
        Ok((r, v))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], H2Error> {
        if self.0.len() < n {
            return Err(H2Error::Frame("handoff state cut short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    pub fn u16(&mut self) -> Result<usize, H2Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    pub fn u32(&mut self) -> Result<usize, H2Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    pub fn u64(&mut self) -> Result<u64, H2Error> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    pub fn u8(&mut self) -> Result<u8, H2Error> {
        Ok(self.take(1)?[0])
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], H2Error> {
        let n = self.u32()?;
        self.take(n)
    }

    pub fn string(&mut self) -> Result<String, H2Error> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| H2Error::Frame("handoff state: not UTF-8"))
    }

    /// A byte that is 0 or 1: one way to write each state, so a state read
    /// back is handed on again unchanged.
    pub fn flag(&mut self) -> Result<bool, H2Error> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(H2Error::Frame("handoff state: a flag neither 0 nor 1")),
        }
    }

    pub fn opt(&mut self) -> Result<Option<String>, H2Error> {
        let some = self.flag()?;
        let s = self.string()?;
        if !some && !s.is_empty() {
            return Err(H2Error::Frame("handoff state: a value for nothing"));
        }
        Ok(some.then_some(s))
    }

    pub fn message(&mut self, max_body: usize) -> Result<Message, H2Error> {
        let head = self.head()?;
        let body = self.bytes()?;
        if body.len() > max_body {
            return Err(H2Error::TooLarge);
        }
        let flags = self.u8()?;
        if flags > 7 {
            return Err(H2Error::Frame("handoff state: unknown message flags"));
        }
        let (first_ts, last_ts) = (self.u64()?, self.u64()?);
        let mut body_marks = Vec::new();
        for _ in 0..self.u16()? {
            let end = self.u64()? as usize;
            body_marks.push((end, self.u64()?));
        }
        Ok(Message {
            head,
            body: body.to_vec(),
            body_truncated: flags & 1 != 0,
            body_captured: flags & 2 != 0,
            complete: flags & 4 != 0,
            first_ts,
            last_ts,
            body_marks,
        })
    }

    pub fn head(&mut self) -> Result<Head, H2Error> {
        let method = self.opt()?;
        let path = self.opt()?;
        let b = self.take(2)?;
        let status = Some(u16::from_be_bytes([b[0], b[1]])).filter(|&s| s != 0);
        let (minor_version, http2) = (self.u8()?, self.flag()?);
        let mut headers = Vec::new();
        for _ in 0..self.u16()? {
            let name = self.string()?;
            headers.push((name, self.bytes()?.to_vec()));
        }
        Ok(Head { method, path, status, minor_version, http2, headers })
    }
}
