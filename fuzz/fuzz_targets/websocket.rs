//! WebSocket decoding (framing, masking, fragments, permessage-deflate with and
//! without context takeover): never panics, memory stays within the cap, and
//! after an error or a close nothing more is decoded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::http::websocket::WsDecoder;

const CAP: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let deflate = match mode % 3 {
        0 => None,
        1 => Some(false),
        _ => Some(true),
    };
    let mut d = WsDecoder::new(deflate, CAP);
    let mut out = Vec::new();
    // Cut where the mode says, as captured calls cut a stream anywhere.
    let step = 1 + (mode as usize >> 2);
    for piece in rest.chunks(step) {
        let done_before = d.is_done();
        let n = out.len();
        let r = d.push(piece, &mut out);
        assert!(d.buffered() <= CAP + 14 + 125);
        if done_before {
            assert!(r.is_ok() && out.len() == n);
        }
    }
});
