use super::*;
use crate::capture::decode::tests::data_record;
use crate::sinks::Sink;
use std::sync::Mutex;
use tokentap_agent_common::{ControlEvent, EventKind, Source, DIR_EGRESS, DIR_INGRESS, FLAG_GAP_BEFORE, FLAG_LAST};
use tokentap_event::LlmCall;

#[derive(Clone, Default)]
struct Collect(
    Arc<Mutex<Vec<LlmCall>>>,
    Arc<Mutex<Vec<tokentap_event::LlmTraffic>>>,
    /// When `closing` was called.
    Arc<Mutex<Option<std::time::Instant>>>,
);

impl Sink for Collect {
    fn write(&mut self, r: &LlmCall) -> std::io::Result<()> {
        self.0.lock().unwrap().push(r.clone());
        Ok(())
    }
    fn write_traffic(&mut self, r: &tokentap_event::LlmTraffic) -> std::io::Result<()> {
        self.1.lock().unwrap().push(r.clone());
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn closing(&mut self, since: std::time::Instant) {
        *self.2.lock().unwrap() = Some(since);
    }
}

/// The ring-buffer record of process `tgid` exiting.
fn exit_record(tgid: u32) -> Vec<u8> {
    control_record(EventKind::Exit, tgid, 0)
}

/// A control record of `kind` for process `tgid` (and connection `conn`).
fn control_record(kind: EventKind, tgid: u32, conn: u64) -> Vec<u8> {
    let c = ControlEvent { kind: kind as u32, tgid, tid: tgid, _pad: 0, ts_ns: 9, conn, cgroup_id: 0, comm: [0; 16] };
    // SAFETY: plain-old-data to bytes.
    unsafe { std::slice::from_raw_parts((&c as *const ControlEvent).cast::<u8>(), std::mem::size_of::<ControlEvent>()) }
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

/// What the filter was told: (ignore, not forget; tgid, conn, base).
type Told = (bool, u32, u64, u64);

#[derive(Clone, Default)]
struct RecordingFilter(Arc<Mutex<Vec<Told>>>);

impl ConnFilter for RecordingFilter {
    fn ignore(&mut self, tgid: u32, conn: u64, base: u64) {
        self.0.lock().unwrap().push((true, tgid, conn, base));
    }
    fn mute(&mut self, _: u32, _: u64, _: crate::http::mute::Mute) {}
    fn forget(&mut self, tgid: u32, conn: u64) {
        self.0.lock().unwrap().push((false, tgid, conn, 0));
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
    assert_eq!(*f.0.lock().unwrap(), vec![(true, 42, 5, 0)]);
    p.handle(&exit_record(42));
    assert_eq!(f.0.lock().unwrap().last(), Some(&(false, 42, 5, 0)));
    assert_eq!(f.0.lock().unwrap().len(), 2);
}

/// One chunk, a whole call, of connection `conn` whose kernel count began at `base`.
fn call_under(p: &mut Pipeline, conn: u64, dir: u32, bytes: &[u8], base: u64) {
    let mut rec = data_record(42, conn, dir, 0, bytes.len() as u64, bytes, FLAG_LAST);
    let at = std::mem::offset_of!(tokentap_agent_common::DataHeader, stream_base);
    rec[at..at + 8].copy_from_slice(&base.to_ne_bytes());
    p.handle(&rec);
}

#[test]
fn an_ignore_names_the_connection_by_its_stream_base_and_is_told_again_when_the_kernel_s_count_restarts() {
    let (p, _c, stats) = pipeline();
    let f = RecordingFilter::default();
    let mut p = p.with_kernel_filter(Box::new(f.clone()));
    // The kernel drops an ignore whose base is not the connection's under
    // the key (it arrived after its connection ended): so the base goes with it.
    call_under(&mut p, 5, DIR_INGRESS, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1600);
    call_under(&mut p, 5, DIR_EGRESS, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1600);
    assert_eq!(*f.0.lock().unwrap(), vec![(true, 42, 5, 1600)], "told once for its base");
    // Calls copied before the word reached the kernel, then a count restarted
    // under the same (still ignored) connection: told again, under the new base.
    call_under(&mut p, 5, DIR_INGRESS, b"GET /b HTTP/1.1\r\n\r\n", 3200);
    call_under(&mut p, 5, DIR_INGRESS, b"GET /c HTTP/1.1\r\n\r\n", 3200);
    assert_eq!(*f.0.lock().unwrap(), vec![(true, 42, 5, 1600), (true, 42, 5, 3200)]);
    assert_eq!(stats.snapshot().ignored_server_side, 1, "counted once");
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
    // Its request, still being written, is a call lost with it.
    assert_eq!(stats.snapshot().dropped_unanswered, 1, "the shed connection's request being written");
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
    assert_eq!(s.joined_mid_stream, 0, "garbage is not a mid-stream join");
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

/// The kernel's record of a TLS client socket's first write: a hello for `host`.
fn hello_record(tgid: u32, fd: i32, id: u64, host: &str) -> Vec<u8> {
    let data = crate::blind_spots::tests::client_hello(Some(host));
    let h = tokentap_agent_common::HelloHeader {
        kind: EventKind::TlsHello as u32,
        tgid,
        tid: tgid,
        fd,
        ts_ns: 1,
        id,
        cgroup_id: 0,
        comm: *b"client\0\0\0\0\0\0\0\0\0\0",
        len: data.len() as u32,
        call_len: data.len() as u32,
    };
    // SAFETY: plain-old-data to bytes.
    let mut v =
        unsafe { std::slice::from_raw_parts(&h as *const _ as *const u8, tokentap_agent_common::HELLO_HEADER_LEN) }
            .to_vec();
    v.extend(data);
    v
}

/// The kernel's record of a counted TLS socket closing.
fn sock_closed_record(tgid: u32, fd: i32, id: u64, sent: u64, received: u64) -> Vec<u8> {
    let e = tokentap_agent_common::SockClosedEvent {
        kind: EventKind::SockClosed as u32,
        tgid,
        tid: tgid,
        fd,
        ts_ns: 5,
        id,
        sent,
        received,
        state: tokentap_agent_common::SOCK_TLS_LLM,
        _pad: 0,
    };
    // SAFETY: plain-old-data to bytes.
    unsafe { std::slice::from_raw_parts(&e as *const _ as *const u8, std::mem::size_of_val(&e)) }.to_vec()
}

#[test]
fn llm_connections_are_read_or_listed_with_their_bytes_and_rows_reach_the_sinks() {
    let (mut p, c, stats) = pipeline();
    // Process 42 (the one `call` feeds): a socket to api.openai.com whose
    // plaintext OpenSSL reads (no fd known).
    p.handle(&hello_record(42, 7, 70, "api.openai.com"));
    call(&mut p, 0xabc, DIR_EGRESS, REQ, 1 << 20);
    call(&mut p, 0xabc, DIR_INGRESS, &resp(), 1 << 20);
    p.handle(&sock_closed_record(42, 7, 70, 400, 900));
    // Process 60: a socket to api.anthropic.com nobody reads, and one to another host.
    p.handle(&hello_record(60, 3, 80, "api.anthropic.com"));
    p.handle(&hello_record(60, 4, 81, "example.internal"));
    p.handle(&sock_closed_record(60, 3, 80, 111, 222));
    p.handle(&sock_closed_record(60, 4, 81, 5, 5));
    p.handle(&exit_record(60));
    assert_eq!(c.0.lock().unwrap().len(), 1, "one record, from the read connection");
    let spots = p.blind_spots();
    assert_eq!(spots.len(), 1, "{spots:?}");
    let s = &spots[0];
    assert_eq!((s.pid, s.provider_host.as_str(), s.reason.as_str()), (60, "api.anthropic.com", "no_plaintext_seen"));
    assert_eq!((s.connections, s.bytes_sent, s.bytes_received, s.exited), (1, 111, 222, true));
    let snap = stats.snapshot();
    assert_eq!((snap.llm_connections_decoded, snap.llm_decoded_bytes, snap.llm_connections_unread), (1, 1300, 1));
    assert_eq!((snap.tls_connections_named, snap.tls_connections_unnamed), (3, 0));
    // The exited process's row went out at once; the other's at the end.
    let rows = c.1.lock().unwrap().clone();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].pid, rows[0].decoded, rows[0].bytes_sent), (Some(60), false, 111));
    assert!(c.2.lock().unwrap().is_none());
    p.finish();
    assert!(c.2.lock().unwrap().is_some(), "the sinks are told the agent is closing");
    let rows = c.1.lock().unwrap().clone();
    let read = rows.iter().find(|r| r.pid == Some(42)).expect("the read connection's row");
    assert_eq!((read.decoded, read.capture.as_deref(), read.connections), (true, Some("openssl"), 1));
}

#[test]
fn a_reused_connection_object_claims_each_socket_it_reads() {
    // Stripped BoringSSL (Bun): no end is seen, the freed SSL* comes back for
    // the next connection and its HTTP/1.1 goes on as if kept alive. Each of
    // its sockets was read, so neither is a blind spot.
    let (mut p, c, stats) = pipeline();
    let send = |p: &mut Pipeline, dir: u32, bytes: &[u8]| {
        let mut r = data_record(42, 9, dir, 0, bytes.len() as u64, bytes, FLAG_LAST);
        let at = std::mem::offset_of!(tokentap_agent_common::DataHeader, source);
        r[at..at + 4].copy_from_slice(&(Source::BoringSsl as u32).to_ne_bytes());
        p.handle(&r);
    };
    for id in [70, 71] {
        p.handle(&hello_record(42, 7, id, "api.openai.com"));
        send(&mut p, DIR_EGRESS, REQ);
        send(&mut p, DIR_INGRESS, &resp());
        p.handle(&sock_closed_record(42, 7, id, 400, 900));
    }
    assert_eq!(c.0.lock().unwrap().len(), 2);
    let snap = stats.snapshot();
    assert_eq!((snap.llm_connections_decoded, snap.llm_connections_unread), (2, 0), "{:?}", p.blind_spots());
}

mod handoff;
mod handoff_h1;
mod unread;
mod websocket;

#[test]
fn a_call_in_flight_when_the_agent_stops_counts_as_dropped_at_exit() {
    let (mut p, c, stats) = pipeline_with(PipelineConfig::default());
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let mut req =
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    req.extend_from_slice(body);
    // A complete request on each of two connections; one gets its response head only.
    p.handle(&data_record(42, 1, DIR_EGRESS, 0, req.len() as u64, &req, 0));
    p.handle(&data_record(42, 2, DIR_EGRESS, 0, req.len() as u64, &req, 0));
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"id\":";
    p.handle(&data_record(42, 2, DIR_INGRESS, 0, head.len() as u64 + 490, head, 0));
    // A third still being written (its body of megabytes half sent).
    let writing = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 5000000\r\n\r\n{";
    p.handle(&data_record(42, 3, DIR_EGRESS, 0, writing.len() as u64, writing, 0));
    p.finish();
    let s = stats.snapshot();
    assert_eq!((s.dropped_at_exit, s.dropped_unanswered, s.records), (3, 0, 0), "{s:?}");
    assert_eq!(s.dropped_calls(), 3);
    assert!(c.0.lock().unwrap().is_empty());
}

/// Records as the fuzz target reads them (`[u16 length][record]...`), here a
/// crash the fuzzer found: a read skipped past its bytes whose end overflowed
/// a u64 (a stream position near the top, a call longer than the stream).
#[test]
fn a_skip_past_the_end_of_the_positions_is_taken_without_a_panic() {
    let input = include_bytes!("../../../fuzz/seeds/pipeline/skip-after-overflow");
    let (mut p, _c, _stats) = pipeline();
    let mut rest = &input[..];
    while rest.len() >= 2 {
        let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        p.handle(&rest[2..2 + n]);
        rest = &rest[2 + n..];
    }
    p.tick(u64::MAX);
    p.finish();
}
