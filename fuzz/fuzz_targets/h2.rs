//! HTTP/2 frames and HPACK on one captured connection: never panics, and never
//! holds more than it was given (bodies are copies of input bytes).
//! Input: [direction u8][length u16][bytes]... after the client preface.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::http::exchange::Lost;
use tokentap_agent::http::h2::{H2Connection, PREFACE};

fuzz_target!(|data: &[u8]| {
    let mut c = H2Connection::new(1 << 16);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut capture = |_: &tokentap_agent::http::h1::Head| Some(());
    let _ = c.on_egress(PREFACE, 0, &mut capture, &mut lost);
    let mut rest = data;
    let mut ts = 1;
    while rest.len() >= 3 {
        let egress = rest[0] & 1 == 0;
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
        assert!(c.buffered() <= data.len());
    }
    c.close(&mut out, &mut lost);
});
