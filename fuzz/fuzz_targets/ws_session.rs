//! An LLM API's WebSocket after its upgrade (Responses, Realtime, Gemini
//! Live; deflate negotiated or not), fed arbitrary bytes both ways, and every
//! call it hands on read by its provider: never panics, what the connection
//! holds stays bounded, and a connection that gave up hands on nothing more.
//! Input: [mode] then [direction and length][bytes]...
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::http::exchange::{HttpConnection, Lost};
use tokentap_agent::providers::{self, Rules};

const CAP: usize = 1 << 16;
const PATHS: [&str; 3] = [
    "/v1/responses",
    "/v1/realtime?model=gpt-realtime",
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
];
const EXTENSIONS: [&str; 3] = [
    "",
    "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let rules = Rules::default();
    let mut classify = |h: &_| rules.classify(h);
    let (mut out, mut lost) = (Vec::new(), Lost::default());
    let mut c = HttpConnection::new(CAP);
    let path = PATHS[mode as usize % 3];
    let upgrade = format!("GET {path} HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\n\r\n");
    c.on_egress(upgrade.as_bytes(), 1, &mut classify, &mut lost);
    let switched = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n{}\r\n", EXTENSIONS[(mode as usize / 3) % 3]);
    c.on_ingress(switched.as_bytes(), 2, &mut out, &mut lost);
    assert_eq!(c.ignored(), None);
    let mut ts = 3;
    while let Some((&tag, tail)) = rest.split_first() {
        let n = ((tag >> 1) as usize * 7 + 1).min(tail.len());
        let (piece, tail) = tail.split_at(n);
        let gave_up = c.ignored().is_some();
        let before = out.len();
        if tag & 1 == 0 {
            c.on_egress(piece, ts, &mut classify, &mut lost);
        } else {
            c.on_ingress(piece, ts, &mut out, &mut lost);
        }
        // Each within the cap: the message being read each way, the call's
        // events, the session and request messages kept.
        assert!(c.buffered() <= 4 * CAP + 1024, "{}", c.buffered());
        if gave_up {
            assert_eq!(out.len(), before);
        }
        ts += 1;
        rest = tail;
    }
    c.close(ts, &mut out, &mut lost);
    for call in &out {
        let _ = providers::parse(&call.endpoint, &call.exchange, CAP, &|b: &[u8]| b.len().to_string());
    }
});
