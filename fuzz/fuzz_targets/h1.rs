//! HTTP/1 framing and request/response pairing on arbitrary bytes split anywhere.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::http::exchange::{HttpConnection, Lost};

fuzz_target!(|data: &[u8]| {
    // First byte picks split points; the rest alternates egress / ingress pieces.
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let step = (seed as usize % 61) + 1;
    let mut conn = HttpConnection::new(1 << 16);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut capture = |_: &tokentap_agent::http::h1::Head| Some(());
    for (i, piece) in rest.chunks(step).enumerate() {
        if i % 3 == 0 {
            conn.on_egress(piece, i as u64, &mut capture, &mut lost);
        } else {
            conn.on_ingress(piece, i as u64, &mut out, &mut lost);
        }
        assert!(conn.buffered() <= rest.len() + (1 << 16));
    }
    conn.close(u64::MAX, &mut out, &mut lost);
});
