//! The server name and ALPN offer in a TLS ClientHello: the first bytes a
//! client writes on a TLS connection, in clear whatever the library. A
//! connection whose plaintext no capture method reads can still be named by
//! it (which provider host a process talks to), so it can be counted instead
//! of disappearing.
//!
//! Parsed from a copy of the first write, which may be cut short: `Incomplete`
//! says how many bytes the record needs (bounded by one TLS record, 16 KiB and
//! its header), so the caller can wait for more or give up. Everything is
//! length-checked; a malformed hello is `NotHello`, never a guess.

/// What the first bytes of a connection say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello: the host it names (SNI), if any, and the application
    /// protocols it offers (ALPN: `h2`, `http/1.1`).
    Client { server_name: Option<String>, alpn: Vec<String> },
    /// A TLS handshake record cut short: it is this many bytes long in all.
    Incomplete(usize),
    /// Not a ClientHello (another protocol, or malformed).
    NotHello,
}

/// Largest TLS record (2^14) plus its header: more is never waited for.
pub const MAX_RECORD: usize = 5 + (1 << 14);

const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_ALPN: u16 = 0x0010;

/// Parse the first bytes a client wrote.
pub fn parse(data: &[u8]) -> Hello {
    if data.len() < 5 {
        // Too short to tell; only a handshake record's start is worth waiting for.
        return if data.first().is_none_or(|&b| b == HANDSHAKE) && data.get(1).is_none_or(|&b| b == 3) {
            Hello::Incomplete(5)
        } else {
            Hello::NotHello
        };
    }
    if data[0] != HANDSHAKE || data[1] != 3 || data[2] > 4 {
        return Hello::NotHello;
    }
    let len = u16::from_be_bytes([data[3], data[4]]) as usize;
    if len == 0 || len > 1 << 14 {
        return Hello::NotHello;
    }
    if data.len() < 5 + len {
        return Hello::Incomplete(5 + len);
    }
    client_hello(&data[5..5 + len]).unwrap_or(Hello::NotHello)
}

/// A cursor over length-prefixed fields; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    /// A field prefixed by its length in `width` bytes (1 or 2).
    fn vec(&mut self, width: usize) -> Option<Reader<'a>> {
        let n = if width == 1 { self.u8()? } else { self.u16()? };
        self.take(n).map(Reader)
    }
}

fn client_hello(body: &[u8]) -> Option<Hello> {
    let mut r = Reader(body);
    if r.u8()? != CLIENT_HELLO as usize {
        return None;
    }
    let len = r.take(3).map(|b| u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize)?;
    // A hello longer than its record would continue in the next one; the
    // extensions may then be cut, so only what is here is read.
    let mut r = Reader(&r.0[..len.min(r.0.len())]);
    r.take(2 + 32)?; // legacy version, random
    r.vec(1)?; // session id
    r.vec(2)?; // cipher suites
    r.vec(1)?; // compression methods
    let (mut server_name, mut alpn) = (None, Vec::new());
    let Some(mut exts) = r.vec(2) else {
        // No extensions (SSLv3-style hello): nothing to name.
        return Some(Hello::Client { server_name, alpn });
    };
    while !exts.0.is_empty() {
        let kind = exts.u16()? as u16;
        let mut data = exts.vec(2)?;
        match kind {
            EXT_SERVER_NAME => server_name = sni(&mut data),
            EXT_ALPN => {
                let mut list = data.vec(2)?;
                while !list.0.is_empty() {
                    let p = list.vec(1)?;
                    if let Ok(s) = std::str::from_utf8(p.0) {
                        alpn.push(s.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Some(Hello::Client { server_name, alpn })
}

/// The host_name entry of a server_name extension, if it is a plausible DNS
/// name (lowercased).
fn sni(data: &mut Reader<'_>) -> Option<String> {
    let mut list = data.vec(2)?;
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec(2)?.0;
        if kind == 0 {
            let ok = !name.is_empty()
                && name.len() <= 253
                && name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            return ok.then(|| String::from_utf8_lossy(name).to_ascii_lowercase());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a client builds it: `exts` are (type, data) pairs.
    fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(32);
        body.extend([1u8; 32]); // session id
        body.extend([0, 4, 0x13, 0x01, 0x13, 0x02]); // two cipher suites
        body.extend([1, 0]); // null compression
        let mut e = Vec::new();
        for (kind, data) in exts {
            e.extend(kind.to_be_bytes());
            e.extend((data.len() as u16).to_be_bytes());
            e.extend(data);
        }
        body.extend((e.len() as u16).to_be_bytes());
        body.extend(e);
        let mut hs = vec![CLIENT_HELLO];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![HANDSHAKE, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    fn sni_ext(host: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![0u8];
        entry.extend((host.len() as u16).to_be_bytes());
        entry.extend(host.as_bytes());
        let mut d = (entry.len() as u16).to_be_bytes().to_vec();
        d.extend(entry);
        (EXT_SERVER_NAME, d)
    }

    fn alpn_ext(protos: &[&str]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for p in protos {
            list.push(p.len() as u8);
            list.extend(p.as_bytes());
        }
        let mut d = (list.len() as u16).to_be_bytes().to_vec();
        d.extend(list);
        (EXT_ALPN, d)
    }

    #[test]
    fn names_the_host_and_the_protocols_offered() {
        let h = hello(&[(0x000a, vec![0, 2, 0, 0x1d]), sni_ext("API.OpenAI.com"), alpn_ext(&["h2", "http/1.1"])]);
        assert_eq!(
            parse(&h),
            Hello::Client { server_name: Some("api.openai.com".into()), alpn: vec!["h2".into(), "http/1.1".into()] }
        );
        // No SNI (a connection to an address), no ALPN.
        assert_eq!(parse(&hello(&[])), Hello::Client { server_name: None, alpn: vec![] });
    }

    #[test]
    fn a_cut_hello_asks_for_its_record_and_more_is_never_asked() {
        let h = hello(&[sni_ext("api.anthropic.com")]);
        for cut in [0, 1, 3, 5, 40, h.len() - 1] {
            let want = if cut < 5 { 5 } else { h.len() };
            assert_eq!(parse(&h[..cut]), Hello::Incomplete(want), "cut at {cut}");
        }
        // A record announcing more than 2^14 bytes is not TLS.
        assert_eq!(parse(&[0x16, 3, 1, 0x40, 0x01]), Hello::NotHello);
    }

    #[test]
    fn other_protocols_and_malformed_hellos_are_not_hellos() {
        for other in [&b"POST /v1/chat HTTP/1.1\r\n"[..], b"PRI * HTTP/2.0", b"\x00\x00\x00\x01", b"G"] {
            assert_eq!(parse(other), Hello::NotHello, "{other:?}");
        }
        // A ServerHello, an alert.
        assert_eq!(parse(&[0x16, 3, 3, 0, 4, 2, 0, 0, 0]), Hello::NotHello);
        assert_eq!(parse(&[0x15, 3, 3, 0, 2, 2, 40]), Hello::NotHello);
        // An extension whose length runs past the hello's end: not a hello.
        let good = hello(&[sni_ext("api.openai.com")]);
        let n = good.len();
        let mut h = good.clone();
        h[n - 21] = 0xff;
        assert_eq!(parse(&h), Hello::NotHello);
        // A name entry whose length runs past its extension: no name.
        let mut h = good.clone();
        h[n - 16] = 0xff;
        assert_eq!(parse(&h), Hello::Client { server_name: None, alpn: vec![] });
        // A server name that is not a DNS name is not reported.
        let h = hello(&[sni_ext("evil\u{7f}host")]);
        assert_eq!(parse(&h), Hello::Client { server_name: None, alpn: vec![] });
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let good = hello(&[sni_ext("generativelanguage.googleapis.com"), alpn_ext(&["h2"])]);
        let mut noise = crate::Noise(0x9e37_79b9_7f4a_7c15);
        let mut x = 0;
        for i in 0..2000 {
            let mut b = good.clone();
            for _ in 0..(1 + i % 4) {
                x = noise.next();
                let at = (x as usize) % b.len();
                b[at] = (x >> 32) as u8;
            }
            let _ = parse(&b);
            let _ = parse(&b[..(x as usize >> 8) % b.len()]);
        }
    }
}
