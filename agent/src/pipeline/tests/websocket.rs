//! WebSocket sessions through the whole pipeline.
use super::*;

/// The three WebSocket APIs through the whole pipeline, each message a kernel
/// call: Responses (compressed, context kept, with Codex's warm-up), Realtime
/// (audio, model from the URL) and Gemini Live (model from the setup).
#[test]
fn websocket_sessions_become_one_record_per_response() {
    use crate::http::ws_session::tests::Sender;
    use serde_json::json;
    let (mut p, c, stats) = pipeline();
    let upgrade = |path: &str, host: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer sk-x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    };
    let switched = |ext: &str| format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n{ext}\r\n");
    // Responses, as Codex CLI speaks it.
    call(&mut p, 1, DIR_EGRESS, upgrade("/v1/responses", "api.openai.com").as_bytes(), 1000);
    call(&mut p, 1, DIR_INGRESS, switched("Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes(), 1000);
    let (mut up, mut down) = (Sender::new(true, Some(false)), Sender::new(false, Some(false)));
    let usage = |i: u64, o: u64| json!({"input_tokens":i,"output_tokens":o,"input_tokens_details":{"cached_tokens":0}});
    for (generate, input, output) in [(false, 900, 0), (true, 950, 12)] {
        let create =
            json!({"type":"response.create","model":"gpt-5-codex","stream":true,"generate":generate,"input":[]});
        call(&mut p, 1, DIR_EGRESS, &up.send(&create, 1 << 20), 1000);
        let r = json!({"id":format!("resp_{input}"),"model":"gpt-5-codex"});
        call(&mut p, 1, DIR_INGRESS, &down.send(&json!({"type":"response.created","response":r}), 1 << 20), 1000);
        if generate {
            let delta = json!({"type":"response.output_text.delta","delta":"hi"});
            call(&mut p, 1, DIR_INGRESS, &down.send(&delta, 1 << 20), 1000);
        }
        let done =
            json!({"type":"response.completed","response":{"id":format!("resp_{input}"),"usage":usage(input, output)}});
        call(&mut p, 1, DIR_INGRESS, &down.send(&done, 1 << 20), 1000);
    }
    // Realtime, audio out.
    call(&mut p, 2, DIR_EGRESS, upgrade("/v1/realtime?model=gpt-realtime", "api.openai.com").as_bytes(), 1000);
    call(&mut p, 2, DIR_INGRESS, switched("").as_bytes(), 1000);
    let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
    call(
        &mut p,
        2,
        DIR_INGRESS,
        &down.send(&json!({"type":"session.created","session":{"model":"gpt-realtime-2025-08-28"}}), 1 << 20),
        1000,
    );
    call(&mut p, 2, DIR_EGRESS, &up.send(&json!({"type":"response.create"}), 1 << 20), 1000);
    call(&mut p, 2, DIR_INGRESS, &down.send(&json!({"type":"response.created","response":{"id":"rt_1"}}), 99), 1000);
    for _ in 0..3 {
        let audio = json!({"type":"response.output_audio.delta","delta":"A".repeat(20_000)});
        call(&mut p, 2, DIR_INGRESS, &down.send(&audio, 4096), 1000);
    }
    let done = json!({"type":"response.done","response":{"id":"rt_1","usage":{"input_tokens":70,"output_tokens":300,
        "input_token_details":{"cached_tokens":10,"audio_tokens":60,"text_tokens":10},
        "output_token_details":{"audio_tokens":280,"text_tokens":20}}}});
    call(&mut p, 2, DIR_INGRESS, &down.send(&done, 1 << 20), 1000);
    // Gemini Live.
    let live = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
    call(&mut p, 3, DIR_EGRESS, upgrade(live, "generativelanguage.googleapis.com").as_bytes(), 1000);
    call(&mut p, 3, DIR_INGRESS, switched("").as_bytes(), 1000);
    let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
    call(&mut p, 3, DIR_EGRESS, &up.send(&json!({"setup":{"model":"models/gemini-live-2.5-flash"}}), 1 << 20), 1000);
    call(&mut p, 3, DIR_INGRESS, &down.send(&json!({"setupComplete":{}}), 1 << 20), 1000);
    call(&mut p, 3, DIR_EGRESS, &up.send(&json!({"clientContent":{"turns":[],"turnComplete":true}}), 1 << 20), 1000);
    let part = json!({"serverContent":{"modelTurn":{"parts":[{"text":"Hi"}]}}});
    call(&mut p, 3, DIR_INGRESS, &down.send(&part, 1 << 20), 1000);
    let end =
        json!({"serverContent":{"turnComplete":true},"usageMetadata":{"promptTokenCount":33,"responseTokenCount":4}});
    call(&mut p, 3, DIR_INGRESS, &down.send(&end, 1 << 20), 1000);

    let recs = c.0.lock().unwrap().clone();
    let got: Vec<_> = recs
        .iter()
        .map(|r| {
            (
                r.provider.as_str(),
                r.operation.as_str(),
                r.request_model.as_deref(),
                r.input_tokens,
                r.output_tokens,
                r.stream,
                r.path.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("openai", "responses", Some("gpt-5-codex"), Some(900), Some(0), true, Some("/v1/responses")),
            ("openai", "responses", Some("gpt-5-codex"), Some(950), Some(12), true, Some("/v1/responses")),
            ("openai", "realtime", Some("gpt-realtime"), Some(70), Some(300), true, Some("/v1/realtime")),
            ("google", "live", Some("gemini-live-2.5-flash"), Some(33), Some(4), true, Some(live)),
        ]
    );
    assert_eq!(recs[2].cached_input_tokens, Some(10));
    assert_eq!(recs[2].response_model.as_deref(), Some("gpt-realtime-2025-08-28"), "the server's session model");
    assert_eq!((recs[2].input_audio_tokens, recs[2].output_audio_tokens), (Some(60), Some(280)));
    // gpt-realtime: audio at audio prices, the cached text at the cache price.
    let want = 60.0 * 3.2e-5 + 10.0 * 4e-7 + 20.0 * 1.6e-5 + 280.0 * 6.4e-5;
    assert!((recs[2].cost_usd.unwrap() - want).abs() < 1e-12, "{:?}", recs[2].cost_usd);
    assert_eq!(recs[0].input_audio_tokens, None);
    assert_eq!(recs[1].response_id.as_deref(), Some("resp_950"));
    assert!(recs.iter().all(|r| r.status == Some(200) && r.http_version.as_deref() == Some("1.1")));
    assert!(recs[1].ttft_ms.is_some() && recs[2].ttft_ms.is_some() && recs[3].ttft_ms.is_some());
    let s = stats.snapshot();
    assert_eq!((s.records, s.dropped_unanswered, s.ignored_websocket_malformed), (4, 0, 0));
}

/// rustls keys a connection by its object's address, which moves while
/// tungstenite's handshake runs and when tokio-tungstenite takes the stream
/// over (Codex CLI): the connection goes on under each new key. A new key whose first bytes are
/// not frames, or from a source whose keys do not move, starts afresh.
#[test]
fn a_websocket_whose_rustls_object_moved_goes_on_under_its_new_key() {
    use crate::capture::decode::tests::data_record_of;
    use crate::http::ws_session::tests::Sender;
    use serde_json::json;
    let (mut p, c, stats) = pipeline();
    let rustls = tokentap_agent_common::Source::Rustls as u32;
    let send = |p: &mut Pipeline, source: u32, conn: u64, dir: u32, bytes: &[u8]| {
        p.handle(&data_record_of(source, 42, conn, dir, 0, bytes.len() as u64, bytes, FLAG_LAST));
    };
    let upgrade = b"GET /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\n\r\n";
    let switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
    let create = json!({"type":"response.create","model":"gpt-4.1","stream":true});
    let done = json!({"type":"response.completed","response":{"id":"r","usage":{"input_tokens":5,"output_tokens":1}}});
    // Records so far: the OpenSSL one (keys never move) adds none.
    for (source, moved_to, records) in [(rustls, 2, 1), (1, 12, 1)] {
        let base = moved_to * 100;
        send(&mut p, source, base, DIR_EGRESS, upgrade);
        // Moved between the request and its response, and again after.
        send(&mut p, source, base + 50, DIR_INGRESS, switched);
        // A connection opened meanwhile that is not a WebSocket is left alone.
        send(&mut p, source, base + 1, DIR_EGRESS, b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
        send(&mut p, source, moved_to, DIR_EGRESS, &up.send(&create, 1 << 20));
        send(&mut p, source, moved_to, DIR_INGRESS, &down.send(&done, 1 << 20));
        assert_eq!(c.0.lock().unwrap().len(), records, "source {source}");
    }
    assert_eq!(c.0.lock().unwrap()[0].input_tokens, Some(5));
    // The moved session is one connection, not three.
    assert_eq!(stats.snapshot().connections, 2 + 4);
}

/// rustls sees no connection end: a freed object's address carries the next
/// connection. A WebSocket closed both ways is gone at once; one left open
/// (its close not seen) gives way to a request, which a client frame never
/// looks like. Each session's response is one record.
#[test]
fn a_reused_rustls_key_starts_a_new_session_after_a_websocket() {
    use crate::capture::decode::tests::data_record_of;
    use crate::http::ws_session::tests::Sender;
    use serde_json::json;
    let (mut p, c, stats) = pipeline();
    let rustls = tokentap_agent_common::Source::Rustls as u32;
    let send = |p: &mut Pipeline, dir: u32, bytes: &[u8]| {
        p.handle(&data_record_of(rustls, 42, 7, dir, 0, bytes.len() as u64, bytes, FLAG_LAST));
    };
    let upgrade = b"GET /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\n\r\n";
    let switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
    let create = json!({"type":"response.create","model":"gpt-4.1","stream":true});
    // Close frames, status 1000: the client's masked with 1, 2, 3, 4.
    let (client_close, server_close) = ([0x88, 0x82, 1, 2, 3, 4, 0x02, 0xea], [0x88, 0x02, 0x03, 0xe8]);
    for (i, closed) in [(1u64, true), (2, false), (3, false)] {
        send(&mut p, DIR_EGRESS, upgrade);
        send(&mut p, DIR_INGRESS, switched);
        let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
        let done =
            json!({"type":"response.completed","response":{"id":"r","usage":{"input_tokens":i,"output_tokens":1}}});
        send(&mut p, DIR_EGRESS, &up.send(&create, 1 << 20));
        send(&mut p, DIR_INGRESS, &down.send(&done, 1 << 20));
        if closed {
            send(&mut p, DIR_EGRESS, &client_close);
            send(&mut p, DIR_INGRESS, &server_close);
            assert_eq!(p.connections(), 0, "a WebSocket closed both ways is gone");
        }
    }
    // A session that moves onto the address of a connection given up (a freed
    // object's) takes it over.
    let send_to = |p: &mut Pipeline, conn: u64, dir: u32, bytes: &[u8]| {
        p.handle(&data_record_of(rustls, 42, conn, dir, 0, bytes.len() as u64, bytes, FLAG_LAST));
    };
    for _ in 0..8 {
        send_to(&mut p, 9, DIR_EGRESS, b"\x16\x03\x01 not http");
    }
    send_to(&mut p, 8, DIR_EGRESS, upgrade);
    send_to(&mut p, 9, DIR_INGRESS, switched);
    let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
    let done = json!({"type":"response.completed","response":{"id":"r","usage":{"input_tokens":4,"output_tokens":1}}});
    send_to(&mut p, 9, DIR_EGRESS, &up.send(&create, 1 << 20));
    send_to(&mut p, 9, DIR_INGRESS, &down.send(&done, 1 << 20));
    let inputs: Vec<_> = c.0.lock().unwrap().iter().map(|r| r.input_tokens).collect();
    assert_eq!(inputs, [Some(1), Some(2), Some(3), Some(4)]);
    let s = stats.snapshot();
    assert_eq!((s.connections, s.ignored_websocket_malformed, s.dropped_unanswered), (5, 0, 0));
}

/// The Responses API over a WebSocket with `error` events outside any call
/// (a client message that asks for no response, refused) and a
/// `response.create` refused while another response streams: one record per
/// response asked for, each with its own request, none lost.
#[test]
fn responses_errors_outside_calls_and_refused_overlaps() {
    use crate::http::ws_session::tests::Sender;
    use serde_json::{json, Value};
    let (mut p, c, stats) = pipeline();
    let upgrade =
        b"GET /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    call(&mut p, 1, DIR_EGRESS, upgrade, 1000);
    call(&mut p, 1, DIR_INGRESS, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", 1000);
    let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
    let mut send = |p: &mut Pipeline, client: bool, v: Value| {
        let (dir, bytes) =
            if client { (DIR_EGRESS, up.send(&v, 1 << 20)) } else { (DIR_INGRESS, down.send(&v, 1 << 20)) };
        call(p, 1, dir, &bytes, 1 << 20);
    };
    let error = |code: &str| json!({"type":"error","status":400,"error":{"type":"invalid_request_error","code":code}});
    let create = |model: &str| json!({"type":"response.create","model":model,"input":"hi"});
    let created = |id: &str| json!({"type":"response.created","response":{"id":id,"model":"gpt-4.1"}});
    let completed = |id: &str, i: u64| json!({"type":"response.completed","response":{"id":id,"usage":{"input_tokens":i,"output_tokens":2}}});
    send(&mut p, true, json!({"type":"response.cancel"}));
    send(&mut p, false, error("unknown_event_type"));
    send(&mut p, true, create("gpt-4.1"));
    send(&mut p, false, created("resp_1"));
    send(&mut p, true, create("gpt-4.1-mini"));
    send(&mut p, false, error("response_already_in_flight"));
    send(&mut p, false, json!({"type":"response.output_text.delta","delta":"hi"}));
    send(&mut p, false, completed("resp_1", 10));
    send(&mut p, false, error("late"));
    send(&mut p, true, create("gpt-4.1-mini"));
    send(&mut p, false, created("resp_2"));
    send(&mut p, false, completed("resp_2", 20));
    let recs = c.0.lock().unwrap().clone();
    let got: Vec<_> =
        recs.iter().map(|r| (r.request_model.as_deref(), r.status, r.input_tokens, r.response_id.as_deref())).collect();
    assert_eq!(
        got,
        [
            (Some("gpt-4.1-mini"), Some(400), None, None),
            (Some("gpt-4.1"), Some(200), Some(10), Some("resp_1")),
            (Some("gpt-4.1-mini"), Some(200), Some(20), Some("resp_2")),
        ]
    );
    let s = stats.snapshot();
    assert_eq!((s.records, s.dropped_unanswered, s.dropped_parse_error), (3, 0, 0));
}

/// A WebSocket over an HTTP/2 stream (RFC 8441's extended CONNECT) beside an
/// ordinary call on the same connection: each response is one record. A
/// stream whose frames are garbage ends alone, counted.
#[test]
fn a_websocket_over_an_http2_extended_connect_is_read_beside_other_streams() {
    use crate::http::h2::encode::{frame, headers};
    use crate::http::h2::PREFACE;
    use crate::http::ws_session::tests::Sender;
    use loona_hpack::Encoder;
    use serde_json::json;
    let (mut p, c, stats) = pipeline();
    let (mut up_hpack, mut down_hpack) = (Encoder::new(), Encoder::new());
    let connect = |enc: &mut Encoder<'_>, stream: u32| {
        let h = headers(
            enc,
            &[
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "https"),
                (":path", "/v1/responses"),
                (":authority", "api.openai.com"),
            ],
        );
        frame(1, 0x4, stream, &h)
    };
    // Client preface, settings, two extended CONNECTs (streams 1 and 5) and a chat call (3).
    let mut up = PREFACE.to_vec();
    up.extend(frame(4, 0, 0, &[]));
    up.extend(connect(&mut up_hpack, 1));
    let chat = headers(
        &mut up_hpack,
        &[(":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "api.openai.com")],
    );
    up.extend(frame(1, 0x4, 3, &chat));
    let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    up.extend(frame(0, 0x1, 3, body));
    up.extend(connect(&mut up_hpack, 5));
    call(&mut p, 1, DIR_EGRESS, &up, 1 << 20);
    // The server enables extended CONNECT and accepts both.
    let mut down = frame(4, 0, 0, &[0, 8, 0, 0, 0, 1]);
    for stream in [1, 5] {
        let accepted = [(":status", "200"), ("sec-websocket-extensions", "permessage-deflate")];
        down.extend(frame(1, 0x4, stream, &headers(&mut down_hpack, &accepted)));
    }
    call(&mut p, 1, DIR_INGRESS, &down, 1 << 20);
    // Stream 1: two responses, compressed both ways with context kept.
    let (mut ws_up, mut ws_down) = (Sender::new(true, Some(false)), Sender::new(false, Some(false)));
    for (i, n) in [(1u64, 30u64), (2, 40)] {
        let create = json!({"type":"response.create","model":"gpt-4.1","stream":true,"input":[]});
        call(&mut p, 1, DIR_EGRESS, &frame(0, 0, 1, &ws_up.send(&create, 1 << 20)), 1 << 20);
        let done = json!({"type":"response.completed","response":{"id":format!("resp_{i}"),"model":"gpt-4.1",
            "usage":{"input_tokens":n,"output_tokens":i}}});
        call(&mut p, 1, DIR_INGRESS, &frame(0, 0, 1, &ws_down.send(&done, 100)), 1 << 20);
    }
    // Stream 5: garbage where frames should be.
    call(&mut p, 1, DIR_INGRESS, &frame(0, 0, 5, b"\x7f\x7f not a frame"), 1 << 20);
    // Stream 3's answer, then the server ends stream 1.
    let answer = headers(&mut down_hpack, &[(":status", "200"), ("content-type", "application/json")]);
    let mut down = frame(1, 0x4, 3, &answer);
    let usage = br#"{"id":"chatcmpl-9","model":"gpt-4o","usage":{"prompt_tokens":11,"completion_tokens":2}}"#;
    down.extend(frame(0, 0x1, 3, usage));
    down.extend(frame(0, 0x1, 1, &[]));
    call(&mut p, 1, DIR_INGRESS, &down, 1 << 20);

    let mut got: Vec<_> =
        c.0.lock()
            .unwrap()
            .iter()
            .map(|r| (r.operation.clone(), r.input_tokens, r.output_tokens, r.http_version.clone()))
            .collect();
    got.sort();
    let h2 = |op: &str, i: u64, o: u64| (op.to_owned(), Some(i), Some(o), Some("2".to_owned()));
    assert_eq!(got, [h2("chat", 11, 2), h2("responses", 30, 1), h2("responses", 40, 2)]);
    let s = stats.snapshot();
    assert_eq!((s.ignored_websocket_malformed, s.dropped_unanswered, s.ignored_desync), (1, 0, 0));
    assert_eq!(p.connections(), 1, "the connection goes on");
}
