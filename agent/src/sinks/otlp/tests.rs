//! The OTLP sink: its requests decoded back with prost (what a receiver
//! reads), and the whole sink against a stand-in OTLP/HTTP receiver that
//! answers as a script says (the real SDK path is tests/tests/e2e_otlp.rs).
//! Tests wait for facts with deadlines, never for fixed times.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as V, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use prost::Message;
use tokentap_event::{LlmCall, PromptFeatures, UsageSource};

use super::semconv::Host;
use super::{metrics, traces, OtlpSettings, OtlpSink};
use crate::sinks::spool::counters::get;
use crate::sinks::Sink;
use crate::stats::Stats;

fn record(i: u64) -> LlmCall {
    LlmCall {
        event_id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + u128::from(i)).to_string(),
        ts: format!("2026-01-02T03:04:{:02}.000250Z", i % 60),
        duration_ms: Some(1200.5),
        ttft_ms: (i % 2 == 1).then_some(250.0),
        provider: if i.is_multiple_of(3) { "anthropic".into() } else { "openai".into() },
        operation: if i.is_multiple_of(3) { "messages".into() } else { "chat".into() },
        request_model: Some("m-req".into()),
        response_model: Some("m-resp".into()),
        stream: i % 2 == 1,
        status: Some(200),
        input_tokens: Some(100 + i),
        output_tokens: Some(10 + i),
        cached_input_tokens: Some(40),
        cache_write_tokens: Some(5),
        reasoning_tokens: Some(3),
        usage_source: Some(UsageSource::Reported),
        cost_usd: Some(0.00125),
        response_id: Some(format!("resp-{i}")),
        server: Some("api.openai.com".into()),
        pid: Some(1000 + (i % 2) as u32),
        service: Some("checkout".into()),
        pod: Some("checkout-7d9".into()),
        namespace: Some("shop".into()),
        workload: Some("checkout".into()),
        workload_kind: Some("Deployment".into()),
        api_key_id: Some("k_0123".into()),
        features: Some(PromptFeatures { conversation_hash: Some("conv-1".into()), ..Default::default() }),
        ..Default::default()
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, V> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value).expect("a value"))).collect()
}

#[test]
fn spans_decode_to_the_records_exactly() {
    let records: Vec<LlmCall> = (0..6).collect::<Vec<u64>>().into_iter().map(record).collect();
    let mut error = record(9);
    (error.status, error.input_tokens, error.output_tokens) = (Some(429), None, None);
    let all = [records.clone(), vec![error.clone()]].concat();
    let host = Host { name: Some("node-a".into()), k8s_node: Some("node-a".into()) };
    let bytes = traces::request(&all, &host).encode_to_vec();
    let req = ExportTraceServiceRequest::decode(&bytes[..]).expect("a receiver decodes it");
    assert_eq!(req.resource_spans.len(), 2, "grouped by resource: two pids");
    let mut seen = 0;
    for rs in &req.resource_spans {
        let res = attrs(&rs.resource.as_ref().unwrap().attributes);
        assert_eq!(res["service.name"], V::StringValue("checkout".into()));
        assert_eq!(res["k8s.pod.name"], V::StringValue("checkout-7d9".into()));
        assert_eq!(res["k8s.namespace.name"], V::StringValue("shop".into()));
        // The workload under the conventions' name for its kind, and tokentap's.
        assert_eq!(res["k8s.deployment.name"], V::StringValue("checkout".into()));
        assert_eq!(res["tokentap.workload"], V::StringValue("checkout".into()));
        assert!(!res.contains_key("k8s.statefulset.name"));
        assert_eq!(res["host.name"], V::StringValue("node-a".into()));
        let pid = match res["process.pid"] {
            V::IntValue(p) => p as u32,
            ref other => panic!("{other:?}"),
        };
        for span in &rs.scope_spans[0].spans {
            seen += 1;
            let a = attrs(&span.attributes);
            let V::StringValue(id) = &a["tokentap.event_id"] else { panic!() };
            let r = all.iter().find(|r| &r.event_id == id).expect("a record's span");
            assert_eq!(r.pid, Some(pid), "under its own process's resource");
            let (t, s) = super::semconv::ids(&r.event_id);
            assert_eq!((span.trace_id.as_slice(), span.span_id.as_slice()), (&t[..], &s[..]));
            assert_eq!(span.kind, SpanKind::Client as i32);
            let (start, end) = super::semconv::times(r);
            assert_eq!((span.start_time_unix_nano, span.end_time_unix_nano), (start, end));
            assert_eq!(end - start, 1_200_500_000, "duration_ms exactly");
            let tokens = |k: &str| match a.get(k) {
                Some(V::IntValue(n)) => Some(*n as u64),
                None => None,
                other => panic!("{k}: {other:?}"),
            };
            assert_eq!(tokens("gen_ai.usage.input_tokens"), r.input_tokens);
            assert_eq!(tokens("gen_ai.usage.output_tokens"), r.output_tokens);
            assert_eq!(tokens("gen_ai.usage.cache_read.input_tokens"), r.cached_input_tokens);
            assert_eq!(tokens("gen_ai.usage.cache_creation.input_tokens"), r.cache_write_tokens);
            assert_eq!(tokens("gen_ai.usage.reasoning.output_tokens"), r.reasoning_tokens);
            assert_eq!(tokens("http.response.status_code"), r.status.map(u64::from));
            assert_eq!(a["gen_ai.request.stream"], V::BoolValue(r.stream));
            assert_eq!(a["gen_ai.conversation.id"], V::StringValue("conv-1".into()));
            assert_eq!(a["tokentap.cost.usd"], V::DoubleValue(0.00125));
            let provider = if r.provider == "anthropic" { "anthropic" } else { "openai" };
            assert_eq!(a["gen_ai.provider.name"], V::StringValue(provider.into()));
            assert_eq!(span.name, "chat m-req");
            let status = span.status.as_ref().unwrap();
            if r.status == Some(429) {
                assert_eq!(
                    (status.code, a["error.type"].clone()),
                    (StatusCode::Error as i32, V::StringValue("429".into()))
                );
            } else {
                assert_eq!(status.code, StatusCode::Unset as i32);
            }
        }
    }
    assert_eq!(seen, all.len(), "one span per record");
}

/// Metric points keyed as a receiver that dedups by series and time keys
/// them: (name, resource, attributes, start, end) -> (count, sum).
type PointKey = (String, String, String, u64, u64);
type Points = BTreeMap<PointKey, (u64, f64)>;

fn points(req: &ExportMetricsServiceRequest) -> Vec<(PointKey, (u64, f64))> {
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        let res = format!("{:?}", attrs(&rm.resource.as_ref().unwrap().attributes));
        for m in &rm.scope_metrics[0].metrics {
            let Some(Data::Histogram(h)) = &m.data else { panic!("{} is a histogram", m.name) };
            assert_eq!(h.aggregation_temporality, 1, "delta");
            for p in &h.data_points {
                assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
                assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
                let key = (
                    m.name.clone(),
                    res.clone(),
                    format!("{:?}", attrs(&p.attributes)),
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                );
                out.push((key, (p.count, p.sum.unwrap())));
            }
        }
    }
    out
}

fn totals(p: &Points, name: &str, attr: &str) -> (u64, f64) {
    p.iter()
        .filter(|((n, _, a, _, _), _)| n == name && a.contains(attr))
        .fold((0, 0.0), |(c, s), (_, (pc, ps))| (c + pc, s + ps))
}

#[test]
fn metrics_agree_with_the_records_and_a_resend_repeats_the_same_points() {
    let host = Host::default();
    let b1: Vec<LlmCall> = (0..4).map(record).collect();
    let b2: Vec<LlmCall> = (4..7).map(record).collect();
    let once = metrics::request(&[b1.clone(), b2.clone()], &host);
    let bytes = once.encode_to_vec();
    let decoded = ExportMetricsServiceRequest::decode(&bytes[..]).unwrap();
    let mut got: Points = BTreeMap::new();
    for (k, v) in points(&decoded) {
        assert!(got.insert(k, v).is_none(), "no two points of one series and window");
    }
    let all = [b1.clone(), b2.clone()].concat();
    let input: u64 = all.iter().filter_map(|r| r.input_tokens).sum();
    let output: u64 = all.iter().filter_map(|r| r.output_tokens).sum();
    assert_eq!(totals(&got, metrics::TOKEN_USAGE, "\"input\""), (7, input as f64));
    assert_eq!(totals(&got, metrics::TOKEN_USAGE, "\"output\""), (7, output as f64));
    assert_eq!(totals(&got, metrics::DURATION, ""), (7, 7.0 * 1.2005));
    let streams = all.iter().filter(|r| r.stream).count() as u64;
    assert_eq!(totals(&got, metrics::TIME_TO_FIRST_CHUNK, ""), (streams, streams as f64 * 0.25));
    // The same batches sent again, merged differently (alone, then with a
    // third): the points of b1 and b2 are the very same; a receiver keeping
    // points by series and time counts nothing twice.
    let again = [metrics::request(&[b1], &host), metrics::request(&[b2, (7..9).map(record).collect()], &host)];
    let mut union = got.clone();
    for req in &again {
        for (k, v) in points(req) {
            if let Some(prev) = union.insert(k, v) {
                assert_eq!(prev, v, "a resent point is identical");
            }
        }
    }
    let new_input: u64 = (7..9).map(|i| 100 + i).sum();
    assert_eq!(totals(&union, metrics::TOKEN_USAGE, "\"input\""), (9, (input + new_input) as f64));
}

/// A stand-in OTLP/HTTP receiver: decodes each request, answers as `script`
/// says (request number per path, from 0), and keeps what it answered 2xx.
#[derive(Default)]
struct Received {
    spans: Mutex<Vec<(Vec<u8>, Vec<KeyValue>)>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    headers: Mutex<Vec<Vec<(String, String)>>>,
    traces_requests: AtomicUsize,
    metrics_requests: AtomicUsize,
}

type Script = dyn Fn(&str, usize) -> u16 + Send + Sync;

fn receiver(script: impl Fn(&str, usize) -> u16 + Send + Sync + 'static) -> (String, Arc<Received>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let got = Arc::new(Received::default());
    let (got2, script): (_, Arc<Script>) = (got.clone(), Arc::new(script));
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (got, script) = (got2.clone(), script.clone());
            std::thread::spawn(move || serve(s, &got, &*script));
        }
    });
    (url, got)
}

fn serve(s: std::net::TcpStream, got: &Received, script: &Script) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut first = String::new();
    if r.read_line(&mut first).is_err() {
        return;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
    let (mut len, mut headers) = (0, Vec::new());
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
        if k == "content-length" {
            len = v.parse().unwrap_or(0);
        }
        headers.push((k, v));
    }
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    let counter = if path == "/v1/traces" { &got.traces_requests } else { &got.metrics_requests };
    let status = script(&path, counter.fetch_add(1, Ordering::SeqCst));
    if status < 300 {
        got.headers.lock().unwrap().push(headers);
        if path == "/v1/traces" {
            let req = ExportTraceServiceRequest::decode(&body[..]).expect("a valid trace request");
            let mut spans = got.spans.lock().unwrap();
            for s in req.resource_spans.iter().flat_map(|rs| &rs.scope_spans).flat_map(|ss| &ss.spans) {
                spans.push((s.span_id.clone(), s.attributes.clone()));
            }
        } else {
            got.metrics.lock().unwrap().push(ExportMetricsServiceRequest::decode(&body[..]).expect("valid metrics"));
        }
    }
    let mut s = s;
    let _ = s.write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
}

fn wait(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn settings(url: &str, name: &str) -> OtlpSettings {
    let dir = std::env::temp_dir().join(format!("tt-otlp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = OtlpSettings::new(url, dir);
    (cfg.batch_records, cfg.batch_age_ms) = (3, 3_600_000);
    cfg.drain_timeout = Duration::from_secs(20);
    cfg
}

#[test]
fn an_outage_loses_nothing_and_resends_the_same_spans_and_points() {
    // Traces: the first two requests fail (503, then 500); metrics: the first one.
    let (url, got) = receiver(|path, n| match (path, n) {
        ("/v1/traces", 0 | 1) => 503,
        ("/v1/traces", 2) => 500,
        ("/v1/metrics", 0) => 503,
        _ => 200,
    });
    let stats = Stats::default();
    let mut cfg = settings(&url, "outage");
    cfg.headers.insert("x-scope".into(), "team-a".into());
    let headers_file = cfg.spool_dir.with_extension("headers");
    std::fs::write(&headers_file, "Authorization: Bearer from-file\nx-scope: overridden\n").unwrap();
    cfg.headers_file = Some(headers_file);
    let mut sink = OtlpSink::named("t", cfg, &stats).unwrap();
    let records: Vec<LlmCall> = (0..10).map(record).collect();
    for r in &records {
        sink.write(r).unwrap();
    }
    drop(sink); // seals the last batch; waits for the spools to drain
    let c = stats.group::<super::OtlpCounters>();
    assert_eq!(get(&c.spans.records_sent), 10, "every span delivered once the receiver answered");
    assert!(get(&c.spans.send_errors) >= 3 && get(&c.metrics.send_errors) >= 1);
    let spans = got.spans.lock().unwrap();
    let ids: BTreeSet<&Vec<u8>> = spans.iter().map(|(id, _)| id).collect();
    assert_eq!((spans.len(), ids.len()), (10, 10), "nothing twice, nothing lost");
    let want: BTreeSet<Vec<u8>> = records.iter().map(|r| super::semconv::ids(&r.event_id).1.to_vec()).collect();
    assert_eq!(ids.into_iter().cloned().collect::<BTreeSet<_>>(), want);
    let mut p: Points = BTreeMap::new();
    for req in got.metrics.lock().unwrap().iter() {
        p.extend(points(req));
    }
    let input: u64 = records.iter().filter_map(|r| r.input_tokens).sum();
    assert_eq!(totals(&p, metrics::TOKEN_USAGE, "\"input\""), (10, input as f64));
    for h in got.headers.lock().unwrap().iter() {
        let get = |k: &str| h.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(get("authorization"), ["Bearer from-file"]);
        assert_eq!(get("x-scope"), ["overridden"], "the headers file wins");
        assert_eq!(get("content-type"), ["application/x-protobuf"]);
    }
}

#[test]
fn refused_data_is_not_retried_and_does_not_hold_spans_back() {
    // Metrics refused for good (400); spans fine.
    let (url, got) = receiver(|path, _| if path == "/v1/metrics" { 400 } else { 200 });
    let stats = Stats::default();
    let mut sink = OtlpSink::named("t", settings(&url, "refused"), &stats).unwrap();
    for r in (0..3).map(record) {
        sink.write(&r).unwrap();
    }
    drop(sink);
    let c = stats.group::<super::OtlpCounters>();
    assert_eq!(get(&c.spans.records_sent), 3);
    assert_eq!((get(&c.metrics.batches_rejected), get(&c.metrics.records_rejected)), (1, 3));
    assert_eq!(got.metrics_requests.load(Ordering::SeqCst), 1, "a refused batch is not sent again");
    assert_eq!(got.spans.lock().unwrap().len(), 3);
}

#[test]
fn metrics_can_be_turned_off() {
    let (url, got) = receiver(|_, _| 200);
    let stats = Stats::default();
    let mut cfg = settings(&url, "nometrics");
    cfg.metrics = false;
    let spool = cfg.spool_dir.clone();
    let mut sink = OtlpSink::named("t", cfg, &stats).unwrap();
    sink.write(&record(1)).unwrap();
    drop(sink);
    wait("the span", || got.spans.lock().unwrap().len() == 1);
    assert_eq!(got.metrics_requests.load(Ordering::SeqCst), 0);
    assert!(!spool.join("metrics").exists(), "no metrics spool");
}
