//! HTTP/2 frames and HPACK on one captured connection: never panics, and never
//! holds more than it was given (bodies are copies of input bytes), with
//! skips (the kernel's muted DATA payloads, given back as zeros) counted in.
//! Input: [direction u8][length u16][bytes]... after the client preface; a
//! direction with bit 1 set is a skip of `length` ingress bytes instead.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::http::exchange::Lost;
use tokentap_agent::http::h2::{H2Connection, PREFACE};

fuzz_target!(|data: &[u8]| {
    let mut c = H2Connection::new(1 << 16);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    // Requests with an odd-length path are not recorded: their streams may be muted.
    let mut capture =
        |h: &tokentap_agent::http::h1::Head| h.path.as_deref().is_some_and(|p| p.len() % 2 == 0).then_some(());
    let _ = c.on_egress(PREFACE, 0, &mut capture, &mut lost);
    let mut rest = data;
    let mut ts = 1;
    let mut skipped = 0;
    while rest.len() >= 3 {
        let egress = rest[0] & 1 == 0;
        if rest[0] & 2 != 0 {
            let n = u16::from_le_bytes([rest[1], rest[2]]) as usize;
            rest = &rest[3..];
            if c.skip_ingress(n as u64).is_err() {
                break;
            }
            skipped += n;
            while c.take_mute(1).is_some() {}
            continue;
        }
        let n = (u16::from_le_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let piece = &rest[3..3 + n];
        rest = &rest[3 + n..];
        ts += 1;
        let r = if egress {
            c.on_egress(piece, ts, &mut capture, &mut lost)
        } else {
            c.on_ingress(piece, ts, &mut out, &mut lost)
        };
        if r.is_err() {
            break;
        }
        assert!(c.buffered() <= data.len() + skipped);
    }
    c.close(&mut out, &mut lost);
});
