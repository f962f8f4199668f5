//! Spans made by the real Python OpenTelemetry SDK (exported with its OTLP/HTTP
//! protobuf exporter) -> collector `/v1/traces` -> ClickHouse: each GenAI span
//! is one `llm_calls` row equal to the span (tokens normalised, provider and
//! operation in tokentap's names, cost from the shipped price table, service
//! and Kubernetes attribution from the resource); spans that are not LLM calls
//! are skipped and counted. A call an agent also captured is stored once (the
//! agent's record), whichever arrives first. Malformed OTLP gets a 4xx and
//! writes nothing.
use std::time::Duration;

use serde_json::Value;
use tokentap_e2e::*;
use tokentap_event::cost::Use;
use tokentap_event::PriceTable;

/// The collector's match hold in these tests: long enough for an agent's
/// record on a loaded two-core machine; a held span is answered as soon as
/// the agent's record claims its call, so no test with an agent waits it out.
const HOLD_MS: &str = "10000";
/// With no agent, every span with a response id is held this long before it
/// is stored: short, so that the test does not wait out the hold above.
const HOLD_MS_NO_AGENT: &str = "500";

fn otel_spans(c: &Collector, mode: &[&str]) -> Vec<String> {
    let mut args = vec![
        workspace_root().join("tests/clients/otel_spans.py").display().to_string(),
        "--endpoint".into(),
        format!("{}/v1/traces", c.url),
        "--token".into(),
        c.token.clone(),
    ];
    args.extend(mode.iter().map(|s| s.to_string()));
    args
}

fn run_json(cmd: std::process::Command) -> (u32, Value) {
    let (pid, out) = run_client(cmd);
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output {out:?}: {e}"));
    assert_eq!(v["flushed"], true, "the SDK exported every span: {v}");
    (pid, v)
}

/// A ClickHouse JSON number (64-bit integers come as strings).
fn num(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn otel_rows(ch: &ClickHouse) -> Vec<Value> {
    ch.query("SELECT * FROM llm_calls FINAL WHERE service = 'otel-e2e' ORDER BY ts")
}

#[test]
fn sdk_spans_become_rows_equal_to_the_spans() {
    let _g = serial();
    let dir = scratch("otlp-rows");
    let ch = ClickHouse::start(&dir, "otlp-rows");
    let c = Collector::start_args(&dir, &ch, &["--otlp-hold-ms", HOLD_MS_NO_AGENT]);
    let mut cmd = std::process::Command::new("python3");
    cmd.args(otel_spans(&c, &["catalogue"]));
    let (pid, out) = run_json(cmd);
    let spans = out["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 7);
    // The exporter's requests were answered: their rows are stored.
    let rows = wait_for("7 OTLP rows in ClickHouse", Duration::from_secs(60), || {
        let r = otel_rows(&ch);
        (r.len() >= 7).then_some(r)
    });
    assert_eq!(rows.len(), 7, "one row per GenAI call span, none for the HTTP or agent span: {rows:#?}");
    let prices = PriceTable::shipped();
    // (provider, operation, model, input, output, cached, cache_write, reasoning, status), span by span.
    type Want = (
        &'static str,
        &'static str,
        &'static str,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
    );
    let want: [Want; 7] = [
        ("openai", "chat", "gpt-4o-mini-2024-07-18", Some(1200), Some(300), Some(1024), None, None, Some(200)),
        (
            "anthropic",
            "messages",
            "claude-sonnet-4-5-20250929",
            Some(5000),
            Some(400),
            Some(3000),
            Some(1000),
            None,
            Some(200),
        ),
        ("openai", "chat", "gpt-4o-2024-08-06", Some(50), Some(7), None, None, None, Some(200)),
        (
            "bedrock",
            "converse",
            "anthropic.claude-3-haiku-20240307-v1:0",
            Some(90),
            Some(30),
            None,
            None,
            None,
            Some(200),
        ),
        ("google", "generate_content", "gemini-2.5-flash", Some(400), Some(250), None, None, Some(200), Some(200)),
        ("openai", "embeddings", "text-embedding-3-small", Some(16), Some(0), None, None, None, Some(200)),
        ("openai", "chat", "gpt-4o", None, None, None, None, None, Some(429)),
    ];
    for ((row, span), w) in rows.iter().zip(spans).zip(want) {
        let a = &span["attributes"];
        let (provider, operation, model, input, output, cached, cache_write, reasoning, status) = w;
        assert_eq!(row["provider"], provider, "{row}");
        assert_eq!(row["operation"], operation, "{row}");
        assert_eq!(row["model"], model, "{row}");
        assert_eq!(row["request_model"], a["gen_ai.request.model"], "{row}");
        assert_eq!(num(&row["input_tokens"]), input, "{row}");
        assert_eq!(num(&row["output_tokens"]), output, "{row}");
        assert_eq!(num(&row["cached_input_tokens"]), cached, "{row}");
        assert_eq!(num(&row["cache_write_tokens"]), cache_write, "{row}");
        assert_eq!(num(&row["reasoning_tokens"]), reasoning, "{row}");
        assert_eq!(num(&row["status"]), status, "{row}");
        assert_eq!(row["response_id"], a.get("gen_ai.response.id").cloned().unwrap_or(Value::Null), "{row}");
        assert_eq!(row["usage_source"], if input.is_some() { "otel".into() } else { Value::Null }, "{row}");
        // Attribution from the resource.
        assert_eq!(
            (&row["service"], &row["namespace"], &row["workload"], &row["pod"]),
            (&"otel-e2e".into(), &"shop".into(), &"checkout".into(), &"checkout-5d8f7".into()),
        );
        assert_eq!((num(&row["pid"]), &row["container_id"]), (Some(pid as u64), &"c0ffee0123456789".into()));
        assert_eq!(row["labels"]["host.name"], "node-7");
        // Cost from the agents' price table, with the record's formula.
        let expected = match (input, output) {
            (Some(input), Some(output)) => prices.lookup(model).map(|p| {
                p.cost_of(&Use {
                    input,
                    output,
                    cached: cached.unwrap_or(0),
                    cache_write: cache_write.unwrap_or(0),
                    reasoning: reasoning.unwrap_or(0),
                    tier: a["openai.response.service_tier"].as_str(),
                    ..Default::default()
                })
            }),
            _ => None,
        };
        match (row["cost_usd"].as_f64(), expected) {
            (Some(got), Some(want)) => assert!((got - want).abs() < 1e-12, "{model}: cost {got} != {want}"),
            (got, want) => assert_eq!(got, want, "{model}: cost"),
        }
        // Span start and end: ts and duration.
        assert!(row["duration_ms"].as_f64().is_some_and(|d| d >= 10.0), "{row}");
    }
    assert_eq!(rows[0]["labels"]["gen_ai.conversation.id"], "conv-42");
    // Rollups see the same calls.
    let agg =
        ch.query("SELECT sum(calls) AS calls, sum(input_tokens) AS input FROM llm_calls_1m WHERE service = 'otel-e2e'");
    assert_eq!((num(&agg[0]["calls"]), num(&agg[0]["input"])), (Some(7), Some(1200 + 5000 + 50 + 90 + 400 + 16)));
    let m = c.metrics();
    for (series, n) in [
        ("tokentap_collector_otlp_spans_received_total", 9.0),
        ("tokentap_collector_otlp_spans_stored_total", 7.0),
        ("tokentap_collector_otlp_spans_skipped_not_genai_total", 1.0),
        ("tokentap_collector_otlp_spans_skipped_not_call_total", 1.0),
        ("tokentap_collector_otlp_spans_rejected_invalid_total", 0.0),
    ] {
        assert_eq!(metric_value(&m, series), n, "{series}\n{m}");
    }
}

#[test]
fn malformed_otlp_gets_4xx_and_writes_nothing() {
    let _g = serial();
    let dir = scratch("otlp-bad");
    let ch = ClickHouse::start(&dir, "otlp-bad");
    let c = Collector::start_args(&dir, &ch, &["--max-body-bytes", "65536"]);
    let auth = format!("Bearer {}", c.token);
    let post = |ct: &str, body: &[u8]| c.post_to("/v1/traces", body, &[("authorization", &auth), ("content-type", ct)]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let span = |trace_id: &str| {
        serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "otel-e2e"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace_id, "spanId": "eee19b7ec3c1b174", "name": "chat gpt-4o", "kind": 3,
            "startTimeUnixNano": (now - 1_000_000_000).to_string(), "endTimeUnixNano": now.to_string(),
            "attributes": [
                {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
                {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "10"}},
                {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "2"}}
            ]}]}]}]})
        .to_string()
        .into_bytes()
    };
    // A valid OTLP/JSON span, sent twice (a lost answer): one row.
    for _ in 0..2 {
        let (s, body) = post("application/json", &span("5b8efff798038103d269b633813fc60c"));
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    }
    let count = || ch.count("SELECT count() FROM llm_calls");
    assert_eq!(count(), 1);
    let big = vec![b'x'; 100_000];
    let cases: [(&str, &str, &[u8], u16); 6] = [
        ("garbage protobuf", "application/x-protobuf", &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01], 400),
        ("bad JSON", "application/json", b"{\"resourceSpans\": [", 400),
        ("JSON of the wrong shape", "application/json", b"{\"resourceSpans\": {\"a\": 1}}", 400),
        ("a bad hex trace id", "application/json", &span("not-hex-at-all"), 400),
        ("wrong content type", "text/plain", b"hello", 415),
        ("oversized", "application/x-protobuf", &big, 413),
    ];
    for (what, ct, body, want) in cases {
        let (s, answer) = post(ct, body);
        assert_eq!(s, want, "{what}: {}", String::from_utf8_lossy(&answer));
        if ct == "application/json" {
            // OTLP's error body: a google.rpc.Status in the request's encoding.
            let st: Value = serde_json::from_slice(&answer).unwrap_or_else(|_| panic!("{what}: a Status"));
            assert!(st["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {st}");
        }
    }
    // Without the token: 401, nothing read.
    let (s, _) =
        c.post_to("/v1/traces", &span("6b8efff798038103d269b633813fc60c"), &[("content-type", "application/json")]);
    assert_eq!(s, 401);
    c.wait_idle();
    assert_eq!(count(), 1, "nothing written by refused requests");
    let m = c.metrics();
    assert_eq!(metric_value(&m, "tokentap_collector_otlp_spans_stored_total"), 1.0, "{m}");
    assert_eq!(metric_value(&m, "tokentap_collector_otlp_spans_resent_total"), 1.0, "{m}");
    assert_eq!(metric_value(&m, "tokentap_collector_batches_rejected_total{reason=\"malformed\"}"), 4.0, "{m}");
}

#[test]
fn a_call_seen_by_the_agent_and_the_sdk_is_stored_once() {
    let _g = serial();
    let dir = scratch("otlp-once");
    let ch = ClickHouse::start(&dir, "otlp-once");
    let c = Collector::start_args(&dir, &ch, &["--otlp-hold-ms", HOLD_MS]);
    let token_file = dir.join("agent-token");
    std::fs::write(&token_file, &c.token).expect("token");
    let spool = dir.join("spool");
    let args = [
        "--output".to_string(),
        format!("collector:{}", c.url),
        "--collector-token-file".into(),
        token_file.display().to_string(),
        "--spool-dir".into(),
        spool.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = Env::start("otlp-once-agent", Transport::Https, &args);
    // The openai SDK under the agent, two chat calls. The first call's span is
    // exported as it ends, before the agent's record: held, then dropped when
    // the record arrives.
    let base = env.openai_base();
    let mut a = otel_spans(&c, &["--openai-base", &base, "--ca"]);
    a.extend([env.certs.ca.display().to_string(), "--key".into(), SECRET_KEY.into(), "sdk_call".into()]);
    let (pid, out) = run_json(with_provider_hosts(&env.dir, "python3", &a));
    let calls = out["calls"].as_array().expect("calls").clone();
    let ids: Vec<String> =
        calls.iter().map(|c| c["attributes"]["gen_ai.response.id"].as_str().unwrap().to_owned()).collect();
    let agent_rows = |ch: &ClickHouse| ch.count(&format!("SELECT count() FROM llm_calls WHERE pid = {pid}"));
    wait_for("the agent's 2 records in ClickHouse", Duration::from_secs(60), || (agent_rows(&ch) >= 2).then_some(()));
    env.agent.wait_delivered(pid);
    // The second call's span arrives after the agent's record is stored.
    let second = &calls[1]["attributes"];
    let mut cmd = std::process::Command::new("python3");
    cmd.args(otel_spans(
        &c,
        &[
            "span_for",
            &ids[1],
            &second["gen_ai.usage.input_tokens"].to_string(),
            &second["gen_ai.usage.output_tokens"].to_string(),
            second["gen_ai.response.model"].as_str().unwrap(),
        ],
    ));
    run_json(cmd);
    let list = format!("'{}', '{}'", ids[0], ids[1]);
    let rows = ch.query(&format!(
        "SELECT response_id, usage_source, pid FROM llm_calls WHERE response_id IN ({list}) ORDER BY ts"
    ));
    assert_eq!(rows.len(), 2, "each call once: {rows:#?}");
    for r in &rows {
        assert_eq!(r["usage_source"], "reported", "the agent's record is the one stored: {r}");
        assert_eq!(num(&r["pid"]), Some(pid as u64));
    }
    let fin = ch.count(&format!("SELECT count() FROM llm_calls FINAL WHERE response_id IN ({list})"));
    assert_eq!(fin, 2);
    assert_eq!(ch.count("SELECT count() FROM llm_calls WHERE usage_source = 'otel'"), 0);
    let m = c.metrics();
    assert_eq!(metric_value(&m, "tokentap_collector_otlp_spans_duplicate_of_ebpf_total"), 2.0, "{m}");
    assert_eq!(metric_value(&m, "tokentap_collector_otlp_spans_stored_total"), 0.0, "{m}");
    assert_eq!(metric_value(&m, "tokentap_collector_otlp_held_spans"), 0.0, "{m}");
    env.finish();
}

/// An SDK span of `response_id` (OTLP/JSON) that ended now, from service `replicas-e2e`.
fn span_json(n: u32, response_id: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    serde_json::json!({"resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "replicas-e2e"}}]},
    "scopeSpans": [{"spans": [{
        "traceId": format!("{n:032x}"), "spanId": format!("{n:016x}"), "name": "chat gpt-4o", "kind": 3,
        "startTimeUnixNano": (now - 800_000_000).to_string(), "endTimeUnixNano": now.to_string(),
        "attributes": [
            {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
            {"key": "gen_ai.response.id", "value": {"stringValue": response_id}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "10"}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "2"}}
        ]}]}]}]})
    .to_string()
    .into_bytes()
}

/// The agent's record of the same call (as an agent sends it on `/v1/records`).
fn agent_batch(response_id: &str) -> Vec<u8> {
    use tokentap_event::record::UsageSource;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    tokentap_event::wire::encode(&[tokentap_event::LlmCall {
        event_id: tokentap_event::LlmCall::new_event_id(),
        ts: tokentap_event::LlmCall::format_ts(now as i128 - 800_000_000),
        provider: "openai".into(),
        operation: "chat".into(),
        request_model: Some("gpt-4o".into()),
        response_model: Some("gpt-4o-2024-08-06".into()),
        status: Some(200),
        input_tokens: Some(10),
        output_tokens: Some(2),
        usage_source: Some(UsageSource::Reported),
        response_id: Some(response_id.into()),
        service: Some("replicas-e2e".into()),
        pid: Some(4242),
        ..Default::default()
    }])
}

/// Two collector replicas on one ClickHouse (the Helm chart's default): the
/// agent's record of a call reaches replica A, the SDK's span of the same
/// call replica B. Whichever comes first, the call is one row: the agent's
/// when it was stored before the span's hold ended (before, or during the
/// hold), else the span's (the later record is the duplicate). The rollups
/// count each call once.
#[test]
fn a_call_seen_through_two_replicas_is_stored_once() {
    let _g = serial();
    let dir = scratch("otlp-replicas");
    let ch = ClickHouse::start(&dir, "otlp-replicas");
    let (da, db) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    // The count of recent OTLP rows is asked again at every batch here
    // (`--otlp-peer-refresh-ms 0`), so the test needs no wait for its cache.
    let flags = ["--otlp-hold-ms", "3000", "--otlp-peer-refresh-ms", "0"];
    let a = Collector::start_args(&da, &ch, &flags);
    let b = Collector::start_args(&db, &ch, &flags);
    let record_to_a = |id: &str| {
        let auth = format!("Bearer {}", a.token);
        let h = [
            ("authorization", auth.as_str()),
            ("content-encoding", "zstd"),
            (tokentap_event::wire::HEADER_VERSION, tokentap_event::wire::VERSION),
        ];
        let (status, text) = a.post(&agent_batch(id), &h);
        assert_eq!(status, 200, "{text}");
        text
    };
    let span_to_b = |n: u32, id: &str| {
        let auth = format!("Bearer {}", b.token);
        let (s, body) = b.post_to(
            "/v1/traces",
            &span_json(n, id),
            &[("authorization", &auth), ("content-type", "application/json")],
        );
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    };
    let rows_of = |id: &str| ch.query(&format!("SELECT usage_source, pid FROM llm_calls WHERE response_id = '{id}'"));

    // 1. The record first (stored through A), then the span (through B): B's
    //    check at the end of the hold finds the agent's row; the span is dropped.
    let text = record_to_a("chatcmpl-rep-1");
    assert!(text.contains("\"accepted\":1"), "{text}");
    span_to_b(1, "chatcmpl-rep-1");
    let rows = rows_of("chatcmpl-rep-1");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["usage_source"], "reported");

    // 2. The span first (stored through B past its hold), then the record
    //    (through A): A finds the span's row; the record is the duplicate.
    span_to_b(2, "chatcmpl-rep-2");
    assert_eq!(rows_of("chatcmpl-rep-2").len(), 1);
    let text = record_to_a("chatcmpl-rep-2");
    assert!(text.contains("\"accepted\":0") && text.contains("\"duplicates\":1"), "{text}");
    let rows = rows_of("chatcmpl-rep-2");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["usage_source"], "otel");

    // 3. The span first, the record during its hold: the agent's record wins.
    std::thread::scope(|s| {
        let held = s.spawn(|| span_to_b(3, "chatcmpl-rep-3"));
        wait_for("B holding the span", Duration::from_secs(10), || {
            (b.metric("tokentap_collector_otlp_held_spans") >= 1.0).then_some(())
        });
        let text = record_to_a("chatcmpl-rep-3");
        assert!(text.contains("\"accepted\":1"), "stored while the span is held: {text}");
        held.join().unwrap();
    });
    let rows = rows_of("chatcmpl-rep-3");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["usage_source"], "reported");

    // Each call once in the table and in the rollups.
    assert_eq!(ch.count("SELECT count() FROM llm_calls FINAL WHERE service = 'replicas-e2e'"), 3);
    assert_eq!(ch.count("SELECT sum(calls) FROM llm_calls_1m WHERE service = 'replicas-e2e'"), 3);
    let (ma, mb) = (a.metrics(), b.metrics());
    assert_eq!(metric_value(&mb, "tokentap_collector_otlp_spans_duplicate_of_ebpf_total"), 2.0, "{mb}");
    assert_eq!(metric_value(&mb, "tokentap_collector_otlp_spans_stored_total"), 1.0, "{mb}");
    assert_eq!(metric_value(&ma, "tokentap_collector_otlp_records_duplicate_of_otel_total"), 1.0, "{ma}");
    for m in [&ma, &mb] {
        assert!(metric_value(m, "tokentap_collector_otlp_replica_checks_total") >= 1.0, "{m}");
        assert_eq!(metric_value(m, "tokentap_collector_otlp_replica_check_failures_total"), 0.0, "{m}");
    }
}
