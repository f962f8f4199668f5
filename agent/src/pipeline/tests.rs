use super::*;
use crate::capture::decode::tests::data_record;
use crate::sinks::Sink;
use std::sync::Mutex;
use tokentap_agent_common::{ControlEvent, EventKind, Source, DIR_EGRESS, DIR_INGRESS, FLAG_GAP_BEFORE, FLAG_LAST};
use tokentap_event::LlmCall;

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<LlmCall>>>);

impl Sink for Collect {
    fn write(&mut self, r: &LlmCall) -> std::io::Result<()> {
        self.0.lock().unwrap().push(r.clone());
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The ring-buffer record of process `tgid` exiting.
fn exit_record(tgid: u32) -> Vec<u8> {
    let exit = ControlEvent {
        kind: EventKind::Exit as u32,
        tgid,
        tid: tgid,
        _pad: 0,
        ts_ns: 9,
        conn: 0,
        cgroup_id: 0,
        comm: [0; 16],
    };
    // SAFETY: plain-old-data to bytes.
    unsafe {
        std::slice::from_raw_parts((&exit as *const ControlEvent).cast::<u8>(), std::mem::size_of::<ControlEvent>())
    }
    .to_vec()
}

fn pipeline() -> (Pipeline, Collect, Arc<Stats>) {
    pipeline_with(PipelineConfig::default())
}

fn pipeline_with(cfg: PipelineConfig) -> (Pipeline, Collect, Arc<Stats>) {
    let c = Collect::default();
    let stats = Arc::new(Stats::default());
    let p = Pipeline::new(cfg, vec![Box::new(c.clone())], stats.clone(), Clock::fixed(0), None);
    (p, c, stats)
}

const REQ: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer sk-secret-123\r\nContent-Length: 68\r\n\r\n{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"x\":1}";

fn resp() -> Vec<u8> {
    let body = br#"{"id":"chatcmpl-1","model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":1117,"completion_tokens":46,"prompt_tokens_details":{"cached_tokens":1024}}}"#;
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_abc\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Feed `bytes` as one call, split into kernel-style chunks of `chunk` bytes.
fn call(p: &mut Pipeline, conn: u64, dir: u32, bytes: &[u8], chunk: usize) {
    let n = bytes.len() as u64;
    let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
    let mut off = 0u64;
    for (i, piece) in pieces.iter().enumerate() {
        let flags = if i + 1 == pieces.len() { FLAG_LAST } else { 0 };
        p.handle(&data_record(42, conn, dir, off, n, piece, flags));
        off += piece.len() as u64;
    }
}

#[test]
fn one_exchange_one_record_with_cost_and_no_secret() {
    let (mut p, c, stats) = pipeline();
    assert_eq!(REQ.len() - REQ.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4, 68);
    call(&mut p, 1, DIR_EGRESS, REQ, 7);
    call(&mut p, 1, DIR_INGRESS, &resp(), 5);
    let recs = c.0.lock().unwrap().clone();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.provider, "openai");
    assert_eq!(r.operation, "chat");
    assert_eq!(r.input_tokens, Some(1117));
    assert_eq!(r.output_tokens, Some(46));
    assert_eq!(r.cached_input_tokens, Some(1024));
    assert_eq!(r.request_model.as_deref(), Some("gpt-4o"));
    assert_eq!(r.request_id.as_deref(), Some("req_abc"));
    assert_eq!(r.pid, Some(42));
    assert_eq!(r.comm.as_deref(), Some("python3"));
    assert_eq!(r.server.as_deref(), Some("api.openai.com"));
    // gpt-4o: 93 x 2.5e-6 + 1024 x 1.25e-6 + 46 x 1e-5
    let want = 93.0 * 2.5e-6 + 1024.0 * 1.25e-6 + 46.0 * 1e-5;
    assert!((r.cost_usd.unwrap() - want).abs() < 1e-9);
    let line = serde_json::to_string(r).unwrap();
    assert!(!line.contains("sk-secret"));
    assert_eq!(stats.snapshot().records, 1);
}

#[test]
fn lost_bytes_drop_the_call_in_flight_count_it_and_resume() {
    let (mut p, c, stats) = pipeline();
    call(&mut p, 1, DIR_EGRESS, REQ, 1000);
    // Response's first chunk missing: second chunk arrives at offset 10.
    let r = resp();
    p.handle(&data_record(42, 1, DIR_INGRESS, 10, r.len() as u64, &r[10..], FLAG_LAST));
    assert!(c.0.lock().unwrap().is_empty());
    let s = stats.snapshot();
    assert_eq!(s.dropped_unanswered, 1);
    assert_eq!((s.resynced_after_gap, s.ignored_desync), (1, 0));
    // The keep-alive connection's next call is captured again.
    call(&mut p, 1, DIR_EGRESS, REQ, 1000);
    call(&mut p, 1, DIR_INGRESS, &r, 1000);
    assert_eq!(c.0.lock().unwrap().len(), 1);
    // Whole calls lost before a request (the kernel flags its first chunk):
    // the exchange in flight is dropped, the flagged one is captured.
    call(&mut p, 1, DIR_EGRESS, REQ, 1000);
    p.handle(&data_record(42, 1, DIR_EGRESS, 0, REQ.len() as u64, REQ, FLAG_LAST | FLAG_GAP_BEFORE));
    call(&mut p, 1, DIR_INGRESS, &r, 1000);
    assert_eq!(c.0.lock().unwrap().len(), 2);
    let s = stats.snapshot();
    assert_eq!((s.dropped_unanswered, s.resynced_after_gap, s.records), (2, 2, 2));
}

#[test]
fn process_exit_mid_response_counts_a_drop() {
    let (mut p, c, stats) = pipeline();
    call(&mut p, 1, DIR_EGRESS, REQ, 1000);
    let r = resp();
    call(&mut p, 1, DIR_INGRESS, &r[..r.len() - 20], 1000);
    p.handle(&exit_record(42));
    assert!(c.0.lock().unwrap().is_empty());
    assert_eq!(stats.snapshot().dropped_unanswered, 1);
    assert_eq!(p.connections(), 0);
    assert!(p.coverage().report()[0].exited, "the exit is in the coverage");
}

#[test]
fn process_events_dropped_on_a_full_discovery_queue_are_counted() {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let stats = Arc::new(Stats::default());
    let mut p = Pipeline::new(PipelineConfig::default(), Vec::new(), stats.clone(), Clock::fixed(0), Some(tx));
    let control = |kind: EventKind| {
        let mut r = exit_record(42);
        r[..4].copy_from_slice(&(kind as u32).to_ne_bytes());
        r
    };
    p.handle(&control(EventKind::Exec));
    p.handle(&control(EventKind::LibsChanged));
    p.handle(&control(EventKind::Exec));
    assert_eq!(rx.try_recv(), Ok(ProcessEvent::Exec(42)));
    assert_eq!(stats.snapshot().process_events_dropped, 2);
    // A discovery thread that has stopped is not a full queue.
    drop(rx);
    p.handle(&control(EventKind::Exec));
    assert_eq!(stats.snapshot().process_events_dropped, 2);
}

#[derive(Clone, Default)]
struct RecordingFilter(Arc<Mutex<Vec<(bool, u32, u64)>>>);

impl ConnFilter for RecordingFilter {
    fn ignore(&mut self, tgid: u32, conn: u64) {
        self.0.lock().unwrap().push((true, tgid, conn));
    }
    fn forget(&mut self, tgid: u32, conn: u64) {
        self.0.lock().unwrap().push((false, tgid, conn));
    }
}

#[test]
fn ignored_connections_are_pushed_to_the_kernel_filter_once() {
    let (p, _c, _stats) = pipeline();
    let f = RecordingFilter::default();
    let mut p = p.with_kernel_filter(Box::new(f.clone()));
    // A server-side connection, and a client that stays HTTP.
    call(&mut p, 5, DIR_EGRESS, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 100);
    call(&mut p, 5, DIR_EGRESS, b"more", 100);
    call(&mut p, 6, DIR_EGRESS, REQ, 100);
    assert_eq!(*f.0.lock().unwrap(), vec![(true, 42, 5)]);
    p.handle(&exit_record(42));
    assert_eq!(f.0.lock().unwrap().last(), Some(&(false, 42, 5)));
    assert_eq!(f.0.lock().unwrap().len(), 2);
}

#[test]
fn memory_budget_sheds_the_biggest_connections() {
    let (mut p, _c, stats) = pipeline_with(PipelineConfig { max_buffered_bytes: 1000, ..Default::default() });
    // Two requests whose bodies are still arriving: 900 and 400 bytes held.
    for (conn, n) in [(1u64, 900usize), (2, 400)] {
        let mut req =
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 5000\r\n\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'x', n));
        p.handle(&data_record(42, conn, DIR_EGRESS, 0, req.len() as u64 + 10, &req, 0));
    }
    assert!(p.buffered_bytes() >= 1300);
    p.tick(1);
    assert_eq!(p.connections(), 1);
    assert!(p.buffered_bytes() <= 1000);
    assert_eq!(stats.snapshot().connections_shed, 1);
    assert_eq!(stats.snapshot().dropped_unanswered, 0, "the request was not complete yet");
}

#[test]
fn one_connection_cannot_hold_more_than_two_bodies() {
    let (mut p, _c, stats) = pipeline_with(PipelineConfig { max_body_bytes: 10_000, ..Default::default() });
    // Pipelined complete requests, never answered: they pile up as pending.
    let body = "y".repeat(10_000);
    let one =
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 10000\r\n\r\n{body}");
    for _ in 0..40 {
        call(&mut p, 1, DIR_EGRESS, one.as_bytes(), 4096);
        assert!(p.buffered_bytes() <= 2 * 10_000 + 2 * crate::http::h1::MAX_HEAD_BYTES + 10_100);
    }
    let s = stats.snapshot();
    assert_eq!(s.connections_shed, 1);
    assert!(s.dropped_unanswered >= 14, "the shed requests count as dropped: {s:?}");
}

#[test]
fn non_llm_and_garbage_make_no_records() {
    let (mut p, c, stats) = pipeline();
    call(&mut p, 1, DIR_EGRESS, b"GET /simple/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n", 100);
    call(&mut p, 1, DIR_INGRESS, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 100);
    for _ in 0..8 {
        call(&mut p, 2, DIR_EGRESS, b"\x00\x01\x02garbage", 100);
    }
    p.handle(b"\x01\x00");
    assert!(c.0.lock().unwrap().is_empty());
    let s = stats.snapshot();
    assert_eq!(s.ignored_not_http, 1);
    assert_eq!(s.joined_mid_stream, 1);
    assert_eq!(s.decode_errors, 1);
    assert_eq!(s.dropped_calls(), 0);
}

/// One HTTP/1.1 message: `head` lines, then the body with its length.
fn http(head: &str, body: &[u8]) -> Vec<u8> {
    [format!("{head}\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(), body.to_vec()].concat()
}

/// The body's end user is read for answered calls only; TTFT is recorded for
/// streams only (an NDJSON body the request did not ask to stream is not one).
#[test]
fn body_end_user_only_when_answered_and_ttft_only_for_streams() {
    let (mut p, c, _) = pipeline();
    let chat = |body: &str| http("POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com", body.as_bytes());
    let req = chat(r#"{"model":"gpt-4o","user":"u-9"}"#);
    call(&mut p, 1, DIR_EGRESS, &req, 1000);
    call(&mut p, 1, DIR_INGRESS, &http("HTTP/1.1 429 Too Many Requests", br#"{"user":"u-9"}"#), 1000);
    call(&mut p, 1, DIR_EGRESS, &req, 1000);
    call(&mut p, 1, DIR_INGRESS, &resp(), 1000);
    call(&mut p, 1, DIR_EGRESS, &chat(r#"{"model":"gpt-4o","stream":true}"#), 1000);
    let sse = fixture("openai/chat_stream_usage.sse");
    call(&mut p, 1, DIR_INGRESS, &http("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream", &sse), 1000);
    let ollama = http("POST /api/chat HTTP/1.1\r\nHost: localhost:11434", br#"{"model":"l","stream":false}"#);
    call(&mut p, 2, DIR_EGRESS, &ollama, 1000);
    let nd = fixture("ollama/chat_stream.ndjson");
    call(&mut p, 2, DIR_INGRESS, &http("HTTP/1.1 200 OK\r\nContent-Type: application/json", &nd), 1000);
    let recs = c.0.lock().unwrap().clone();
    let got: Vec<_> = recs.iter().map(|r| (r.status, r.end_user.as_deref(), r.stream, r.ttft_ms)).collect();
    assert_eq!(
        got,
        [
            (Some(429), None, false, None),
            (Some(200), Some("u-9"), false, None),
            (Some(200), None, true, Some(0.0)),
            (Some(200), None, false, None)
        ]
    );
    assert_eq!(recs[3].input_tokens, Some(26));
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Chunked transfer coding with the body cut into `sizes`-long chunks.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Every fixture, sync (plain and gzip'd) or streamed (chunked), through the
/// whole pipeline with the kernel chunks and TLS reads split at arbitrary
/// sizes: always exactly one record with the fixture's tokens.
mod split_anywhere {
    use super::*;
    use proptest::prelude::*;

    fn exchange(path: &str, host: &str, fixture_name: &str, sse: bool, gz: bool, chunk: usize) -> (Vec<u8>, Vec<u8>) {
        let body = fixture(fixture_name);
        let req_body = format!(r#"{{"model":"gpt-4o","stream":{sse},"messages":[{{"role":"user","content":"hi"}}]}}"#);
        let req_body = req_body.as_bytes();
        let req = [
            format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n", req_body.len()).into_bytes(),
            req_body.to_vec(),
        ]
        .concat();
        let resp = if sse {
            [
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                chunked(&body, chunk),
            ]
            .concat()
        } else {
            let (b, enc) = if gz { (gzip(&body), "Content-Encoding: gzip\r\n") } else { (body, "") };
            [
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{enc}Content-Length: {}\r\n\r\n",
                    b.len()
                )
                .into_bytes(),
                b,
            ]
            .concat()
        };
        (req, resp)
    }

    /// Feed `bytes` as TLS calls of `call_len` bytes, each split into kernel chunks of `k`.
    fn feed(p: &mut Pipeline, conn: u64, dir: u32, bytes: &[u8], call_len: usize, k: usize) {
        for c in bytes.chunks(call_len.max(1)) {
            call(p, conn, dir, c, k.max(1));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn one_record_with_exact_tokens(case in 0usize..6, call_len in 1usize..400, k in 1usize..64, chunk in 1usize..300, gz in any::<bool>()) {
            let cases = [
                ("/v1/chat/completions", "api.openai.com", "openai/chat_sync.json", false, 1117u64, 46u64),
                ("/v1/chat/completions", "api.openai.com", "openai/chat_stream_usage.sse", true, 19, 10),
                ("/v1/responses", "api.openai.com", "openai/responses_sync.json", false, 328, 52),
                ("/v1/responses", "api.openai.com", "openai/responses_stream.sse", true, 37, 11),
                ("/v1/messages", "api.anthropic.com", "anthropic/messages_sync.json", false, 2360, 87),
                ("/v1/messages", "api.anthropic.com", "anthropic/messages_stream.sse", true, 472, 15),
            ];
            let (path, host, name, sse, input, output) = cases[case];
            let (req, resp) = exchange(path, host, name, sse, gz, chunk);
            let (mut p, c, stats) = pipeline();
            feed(&mut p, 9, DIR_EGRESS, &req, call_len, k);
            feed(&mut p, 9, DIR_INGRESS, &resp, call_len, k);
            let recs = c.0.lock().unwrap().clone();
            prop_assert_eq!(recs.len(), 1, "{:?}", stats.snapshot());
            prop_assert_eq!(recs[0].input_tokens, Some(input));
            prop_assert_eq!(recs[0].output_tokens, Some(output));
            prop_assert_eq!(recs[0].stream, sse);
            prop_assert!(recs[0].cost_usd.is_some());
        }
    }
}

#[test]
fn a_source_without_close_events_restarts_a_reused_connection() {
    // Stripped BoringSSL: no SSL_free, so a freed SSL* address may carry the
    // next connection. As BoringSSL, a request after the old one gave up is a
    // new connection; as OpenSSL (whose ends are seen) it stays ignored.
    for (source, want) in [(Source::BoringSsl, 1usize), (Source::OpenSsl, 0)] {
        let (p, c, stats) = pipeline();
        let f = RecordingFilter::default();
        let mut p = p.with_kernel_filter(Box::new(f.clone()));
        let send = |p: &mut Pipeline, dir: u32, bytes: &[u8]| {
            let mut r = data_record(42, 9, dir, 0, bytes.len() as u64, bytes, FLAG_LAST);
            let at = std::mem::offset_of!(tokentap_agent_common::DataHeader, source);
            r[at..at + 4].copy_from_slice(&(source as u32).to_ne_bytes());
            p.handle(&r);
        };
        for _ in 0..8 {
            send(&mut p, DIR_EGRESS, b"\x16\x03\x01 not http");
        }
        assert_eq!(stats.snapshot().ignored_not_http, 1);
        send(&mut p, DIR_EGRESS, REQ);
        send(&mut p, DIR_INGRESS, &resp());
        assert_eq!(c.0.lock().unwrap().len(), want, "{source:?}");
        let told = f.0.lock().unwrap().len();
        assert_eq!(told, usize::from(source.ends_are_seen()), "the kernel skips only connections whose end is seen");
    }
}

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
