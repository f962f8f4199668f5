//! HTTP/1 framing and request/response pairing on arbitrary bytes split anywhere;
//! with odd seeds nothing is an LLM call, and ingress pieces carry stream
//! positions with the pieces inside a muted range skipped, as the kernel does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::capture::event::Direction;
use tokentap_agent::capture::streams::Continuity;
use tokentap_agent::http::exchange::{HttpConnection, Lost};
use tokentap_agent::http::mute::{Mute, StreamAt};

fuzz_target!(|data: &[u8]| {
    // First byte picks split points; the rest alternates egress / ingress pieces.
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let step = (seed as usize % 61) + 1;
    let llm = seed & 0x80 == 0;
    let mut conn = HttpConnection::new(1 << 16);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut capture = |_: &tokentap_agent::http::h1::Head| llm.then_some(());
    let (mut pos, mut muted) = (1u64 << 40, None::<(u64, u64)>);
    for (i, piece) in rest.chunks(step).enumerate() {
        let (direction, at) = if i % 3 == 0 {
            (Direction::Egress, StreamAt::default())
        } else {
            let at = pos;
            pos += piece.len() as u64;
            if muted.is_some_and(|(from, to)| at >= from && pos <= to) {
                continue;
            }
            (Direction::Ingress, StreamAt { base: 1, pos: at })
        };
        let _ = conn.on_chunk(direction, Continuity::InOrder, at, piece, i as u64, &mut capture, &mut out, &mut lost);
        while let Some(m) = conn.take_mute() {
            // An HTTP/2 stream's mute is the kernel's frame walk's to apply.
            if let Mute::Range { from, to } = m {
                assert!(from <= to && from <= pos);
                muted = Some((from, to));
            }
        }
        assert!(conn.buffered() <= rest.len() + (1 << 16));
    }
    conn.close(u64::MAX, &mut out, &mut lost);
});
