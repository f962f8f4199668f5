//! Real probes -> agent -> `--output otlp:URL` -> a local OTLP/HTTP receiver
//! (tests/server/otlp_receiver.py, on the official `opentelemetry-proto`
//! package: it decodes the protobuf itself). Every call the real SDKs make
//! arrives as exactly one span whose attributes equal the record (and the
//! record equals what the server served), the GenAI metrics agree with the
//! records, and a receiver that is away for a while loses nothing and counts
//! nothing twice once it is back, even when it stored a request whose answer
//! was lost (the resend is the same spans and the same points). Needs root
//! (fails, never skips, without it).
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;
use tokentap_e2e::*;
use tokentap_event::PriceTable;

/// The receiver process; what it wrote is in `out`.
struct Receiver {
    child: Child,
    port: u16,
    dir: PathBuf,
    out: PathBuf,
}

impl Receiver {
    /// `lose_answers`: the first requests of each signal are stored and left
    /// unanswered (see the script).
    fn start(dir: &Path, port: u16, lose_answers: u32) -> Self {
        require_tool("python3");
        let port_file = dir.join(format!("otlp.port.{port}"));
        let out = dir.join("otlp.jsonl");
        let _ = std::fs::remove_file(&port_file);
        let child = Command::new("python3")
            .arg(workspace_root().join("tests/server/otlp_receiver.py"))
            .args(["--port", &port.to_string(), "--port-file"])
            .arg(&port_file)
            .arg("--out")
            .arg(&out)
            .args(["--lose-answers", &lose_answers.to_string()])
            .stderr(std::fs::File::create(dir.join("otlp.stderr")).expect("receiver log"))
            .spawn()
            .expect("start otlp_receiver.py");
        let port = wait_for("the OTLP receiver's port file", Duration::from_secs(20), || {
            std::fs::read_to_string(&port_file).ok()?.trim().parse().ok()
        });
        Self { child, port, dir: dir.to_owned(), out }
    }

    /// Killed (SIGKILL): requests in flight get no answer.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Back on the same port, losing the answers to its first requests.
    fn restart(&mut self, lose_answers: u32) {
        self.kill();
        *self = Self::start(&self.dir.clone(), self.port, lose_answers);
    }

    fn lines(&self, signal: &str) -> Vec<Value> {
        read_jsonl(&self.out).into_iter().filter(|l| l["signal"] == signal).collect()
    }

    /// Spans by span id; a span received twice must be the same span.
    fn spans(&self) -> BTreeMap<String, Value> {
        let mut by_id = BTreeMap::new();
        for s in self.lines("span") {
            let id = s["span_id"].as_str().expect("span id").to_owned();
            if let Some(prev) = by_id.insert(id, s.clone()) {
                assert_eq!(prev, s, "a resent span is the same span");
            }
        }
        by_id
    }

    /// Metric points, as a receiver that keys them by series and time keeps
    /// them: a resent point (same series, same window) replaces itself.
    fn points(&self) -> Vec<Value> {
        let mut by_key = BTreeMap::new();
        for p in self.lines("point") {
            let key = (
                p["name"].to_string(),
                p["resource"].to_string(),
                p["attributes"].to_string(),
                p["start"].to_string(),
                p["time"].to_string(),
            );
            if let Some(prev) = by_key.insert(key, p.clone()) {
                assert_eq!(prev, p, "a resent point is identical");
            }
        }
        by_key.into_values().collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}

fn world(name: &str) -> (Env, Receiver) {
    require_root();
    let rx = Receiver::start(&scratch(&format!("{name}-rx")), 0, 0);
    let spool = std::env::temp_dir().join(format!("tt-otlp-spool-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let args = [
        "--output".to_string(),
        format!("otlp:http://127.0.0.1:{}", rx.port),
        "--otlp-spool-dir".into(),
        spool.display().to_string(),
        "--otlp-batch-age-ms".into(),
        "200".into(),
        "--otlp-header".into(),
        "x-tenant=e2e".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Env::start(name, Transport::Https, &args), rx)
}

/// The agent handled the exit of `pids` and has nothing left to send over
/// OTLP, retries included: a duplicate would be at the receiver now.
fn wait_otlp_settled(agent: &Agent, pids: &[u32]) -> Value {
    agent.wait_stats("every record sent as a span and as metrics", |s| {
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        pids.iter().all(|p| process_exited(s, *p))
            && n("otlp_spans_sent") >= n("records")
            && n("otlp_metric_records_sent") >= n("records")
            && n("otlp_span_spool_batches") + n("otlp_metric_spool_batches") == 0
            && n("otlp_span_in_flight") + n("otlp_metric_in_flight") == 0
    })
}

fn py(env: &Env, scenario: &str) -> u32 {
    run_client(py_client(&env.dir, &env.certs, &env.openai_base(), &env.anthropic_base(), scenario)).0
}

/// Every record has exactly one span, whose attributes are the record's.
fn check_spans(records: &[Value], spans: &BTreeMap<String, Value>) {
    assert_eq!(spans.len(), records.len(), "one span per call, nothing twice");
    let by_event: HashMap<&str, &Value> =
        spans.values().map(|s| (s["attributes"]["tokentap.event_id"].as_str().expect("event id"), s)).collect();
    for r in records {
        let id = r["event_id"].as_str().unwrap();
        let s = by_event.get(id).unwrap_or_else(|| panic!("no span for {r}"));
        let (trace, span) = tokentap_agent::sinks::otlp::semconv::ids(id);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!((s["trace_id"].as_str(), s["span_id"].as_str()), (Some(&*hex(&trace)), Some(&*hex(&span))));
        let a = &s["attributes"];
        let ctx = || format!("\nrecord: {r}\nspan: {s}");
        for (attr, field) in [
            ("gen_ai.usage.input_tokens", "input_tokens"),
            ("gen_ai.usage.output_tokens", "output_tokens"),
            ("gen_ai.usage.cache_read.input_tokens", "cached_input_tokens"),
            ("gen_ai.usage.cache_creation.input_tokens", "cache_write_tokens"),
            ("gen_ai.usage.reasoning.output_tokens", "reasoning_tokens"),
            ("gen_ai.request.model", "request_model"),
            ("gen_ai.response.model", "response_model"),
            ("gen_ai.response.id", "response_id"),
            ("gen_ai.request.stream", "stream"),
            ("http.response.status_code", "status"),
            ("server.address", "server"),
            ("tokentap.usage_source", "usage_source"),
            ("tokentap.tls_library", "tls_library"),
        ] {
            assert_eq!(a.get(attr).unwrap_or(&Value::Null), &r[field], "{attr} = {field}{}", ctx());
        }
        // The cost crosses two JSON writers (the receiver's Python, the agent's
        // JSONL) and a parser: equal to the last bit but one.
        let (span_cost, record_cost) = (a["tokentap.cost.usd"].as_f64(), r["cost_usd"].as_f64());
        assert_eq!(span_cost.is_some(), record_cost.is_some(), "tokentap.cost.usd = cost_usd{}", ctx());
        if let (Some(x), Some(y)) = (span_cost, record_cost) {
            assert!(
                (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()),
                "tokentap.cost.usd = cost_usd{}",
                ctx()
            );
        }
        let provider = match r["provider"].as_str().unwrap() {
            "google" => "gcp.gemini",
            "bedrock" => "aws.bedrock",
            other => other,
        };
        assert_eq!(a["gen_ai.provider.name"], provider, "{}", ctx());
        let op = match r["operation"].as_str().unwrap() {
            "messages" | "responses" | "converse" | "invoke" => "chat",
            "completions" => "text_completion",
            other => other,
        };
        assert_eq!(a["gen_ai.operation.name"], op, "{}", ctx());
        assert_eq!(s["name"], format!("{op} {}", r["request_model"].as_str().unwrap()), "{}", ctx());
        assert_eq!(s["kind"], 3, "SPAN_KIND_CLIENT{}", ctx());
        let start = chrono_nanos(r["ts"].as_str().unwrap());
        assert_eq!(s["start"].as_u64(), Some(start), "start = ts{}", ctx());
        let dur = (r["duration_ms"].as_f64().unwrap() * 1e6).round() as u64;
        assert_eq!(s["end"].as_u64(), Some(start + dur), "end = ts + duration_ms{}", ctx());
        let res = &s["resource"];
        assert_eq!((&res["service.name"], &res["process.pid"]), (&r["service"], &r["pid"]), "{}", ctx());
        assert_eq!(res["process.executable.path"], r["exe"], "{}", ctx());
        assert!(res["host.name"].as_str().is_some_and(|h| !h.is_empty()), "{}", ctx());
    }
}

fn chrono_nanos(ts: &str) -> u64 {
    let r = tokentap_event::LlmCall { ts: ts.into(), ..Default::default() };
    tokentap_agent::sinks::otlp::semconv::times(&r).0
}

/// The metrics agree with the records: counts and sums per instrument.
fn check_metrics(records: &[Value], points: &[Value]) {
    let total = |name: &str, token_type: Option<&str>| {
        points
            .iter()
            .filter(|p| p["name"] == name && token_type.is_none_or(|t| p["attributes"]["gen_ai.token.type"] == t))
            .fold((0u64, 0f64), |(c, s), p| (c + p["count"].as_u64().unwrap(), s + p["sum"].as_f64().unwrap()))
    };
    let sum = |k: &str| records.iter().filter_map(|r| r[k].as_u64()).sum::<u64>();
    let count = |k: &str| records.iter().filter(|r| r[k].as_u64().is_some()).count() as u64;
    let (c, s) = total("gen_ai.client.token.usage", Some("input"));
    assert_eq!((c, s as u64), (count("input_tokens"), sum("input_tokens")), "input tokens");
    let (c, s) = total("gen_ai.client.token.usage", Some("output"));
    assert_eq!((c, s as u64), (count("output_tokens"), sum("output_tokens")), "output tokens");
    let (c, s) = total("gen_ai.client.operation.duration", None);
    let want: f64 = records.iter().filter_map(|r| r["duration_ms"].as_f64()).sum::<f64>() / 1000.0;
    assert_eq!(c, records.len() as u64, "one duration per call");
    assert!((s - want).abs() < 1e-6, "duration sum {s} != {want}");
    let streams: Vec<&Value> = records.iter().filter(|r| r["stream"] == true && r["ttft_ms"].is_number()).collect();
    let (c, s) = total("gen_ai.client.operation.time_to_first_chunk", None);
    let want: f64 = streams.iter().filter_map(|r| r["ttft_ms"].as_f64()).sum::<f64>() / 1000.0;
    assert_eq!(c, streams.len() as u64, "one time to first chunk per stream");
    assert!((s - want).abs() < 1e-6, "ttfc sum {s} != {want}");
    for p in points {
        assert_eq!(p["temporality"], 1, "delta: {p}");
        let buckets: u64 = p["bucket_counts"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).sum();
        assert_eq!(buckets, p["count"].as_u64().unwrap(), "{p}");
        let unit = if p["name"] == "gen_ai.client.token.usage" { "{token}" } else { "s" };
        assert_eq!(p["unit"], unit, "{p}");
    }
}

#[test]
fn sdk_calls_arrive_as_exact_spans_and_metrics() {
    let _g = serial();
    let (env, rx) = world("otlp-exact");
    let mut pids = vec![py(&env, "all_ops")];
    let gemini = format!("{}/", env.origin("generativelanguage.googleapis.com"));
    pids.push(run_client(py_breadth(&env.dir, &env.certs, &gemini, "gemini")).0);
    let bedrock = env.origin("bedrock-runtime.us-east-1.amazonaws.com");
    pids.push(run_client(py_breadth(&env.dir, &env.certs, &bedrock, "bedrock")).0);
    env.agent.wait_records(&pids, 9 + 2 + 4);
    let stats = wait_otlp_settled(&env.agent, &pids);
    let records = env.agent.records_of(&pids);
    assert_eq!(records.len(), 15, "{records:#?}");
    // The records are exact (what the server served), and the spans are the records.
    let served = env.server.served();
    let prices = PriceTable::shipped();
    for (r, s) in pair_with_served(&records, &served) {
        assert_matches_served(r, s, &prices);
    }
    let spans: BTreeMap<String, Value> = rx
        .spans()
        .into_iter()
        .filter(|(_, s)| records.iter().any(|r| r["event_id"] == s["attributes"]["tokentap.event_id"]))
        .collect();
    check_spans(&records, &spans);
    let mine: Vec<Value> =
        rx.points().into_iter().filter(|p| pids.iter().any(|pid| p["resource"]["process.pid"] == *pid)).collect();
    check_metrics(&records, &mine);
    assert_eq!(stats["otlp_span_send_errors"], 0, "{stats}");
    let text = std::fs::read_to_string(&rx.out).unwrap();
    assert!(!text.contains(SECRET_KEY) && !text.contains("Bearer"), "no credential leaves the agent");
    env.finish();
}

#[test]
fn receiver_away_then_back_loses_nothing_and_counts_nothing_twice() {
    let _g = serial();
    let (env, mut rx) = world("otlp-outage");
    let first = py(&env, "all_ops");
    wait_otlp_settled(&env.agent, &[first]);
    // Away (killed: a request in flight gets no answer) while calls are made.
    rx.kill();
    let during = py(&env, "concurrent");
    env.agent.wait_process_done(during);
    env.agent.wait_stats("the agent to fail to send and keep the batches", |s| {
        s["otlp_span_send_errors"].as_u64() >= Some(1)
            && s["otlp_metric_send_errors"].as_u64() >= Some(1)
            && s["otlp_span_spool_batches"].as_u64() >= Some(1)
    });
    // Back, but the answers to its first request of each signal are lost:
    // stored, yet resent by the agent.
    rx.restart(1);
    let after = py(&env, "chat");
    let pids = [first, during, after];
    let stats = wait_otlp_settled(&env.agent, &pids);
    let records = env.agent.records_of(&pids);
    assert_eq!(records.len(), 9 + 40 + 1, "{stats}");
    let spans: BTreeMap<String, Value> = rx
        .spans()
        .into_iter()
        .filter(|(_, s)| records.iter().any(|r| r["event_id"] == s["attributes"]["tokentap.event_id"]))
        .collect();
    // The first run's spans are in the same file (the receiver appends): all
    // of them, once by span id, although some arrived twice.
    check_spans(&records, &spans);
    assert!(rx.lines("span").len() > rx.spans().len(), "the spans of the unanswered request were resent");
    let mine: Vec<Value> =
        rx.points().into_iter().filter(|p| pids.iter().any(|pid| p["resource"]["process.pid"] == *pid)).collect();
    check_metrics(&records, &mine);
    assert!(rx.lines("point").len() > rx.points().len(), "the points of the unanswered request were resent");
    assert_eq!(stats["otlp_span_spool_dropped_records"], 0, "{stats}");
    assert_eq!(stats["otlp_span_batches_rejected"], 0, "{stats}");
    env.finish();
}
