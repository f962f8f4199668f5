use std::collections::HashSet;
use std::sync::Mutex;

use axum::body::Body;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokentap_event::LlmCall;

use super::*;
use crate::dedup::RecentIds;
use crate::server::{NoTraffic, ServerConfig};
use crate::writer::{Failed, Store};

/// A stand-in for ClickHouse that keeps what it is given.
#[derive(Default)]
struct Kept(Mutex<Vec<CallRow>>);

impl Store<CallRow> for Arc<Kept> {
    async fn insert(&self, rows: &[CallRow]) -> Result<(), Failed> {
        self.0.lock().unwrap().extend(rows.iter().cloned());
        Ok(())
    }

    async fn existing(&self, _: &[CallRow]) -> Result<HashSet<u128>, Failed> {
        Ok(HashSet::new())
    }
}

fn start(hold: Duration) -> (Arc<Shared>, Arc<Kept>) {
    let kept = Arc::new(Kept::default());
    let cfg = ServerConfig { otlp_hold: hold, ..Default::default() };
    let (_, writer, shared) = server::build(cfg, kept.clone(), NoTraffic, RecentIds::new(1000), RecentIds::new(10));
    tokio::spawn(writer);
    (shared, kept)
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A chat span of `response_id` that ended now; `n` makes its span id.
fn chat_span(n: u8, response_id: &str) -> Span {
    let end = now_nanos();
    Span {
        trace_id: vec![7; 16],
        span_id: vec![n; 8],
        name: "chat gpt-4o-mini".into(),
        start_time_unix_nano: end - 800_000_000,
        end_time_unix_nano: end,
        attributes: vec![
            kv("gen_ai.provider.name", Value::StringValue("openai".into())),
            kv("gen_ai.operation.name", Value::StringValue("chat".into())),
            kv("gen_ai.request.model", Value::StringValue("gpt-4o-mini".into())),
            kv("gen_ai.response.id", Value::StringValue(response_id.into())),
            kv("gen_ai.usage.input_tokens", Value::IntValue(12)),
            kv("gen_ai.usage.output_tokens", Value::IntValue(3)),
        ],
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::StringValue("svc".into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

async fn post(shared: &Arc<Shared>, content_type: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method("POST")
        .uri(super::super::PATH)
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap();
    let resp = traces(State(shared.clone()), req).await;
    let status = resp.status();
    (status, axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec())
}

async fn post_pb(shared: &Arc<Shared>, spans: Vec<Span>) -> ExportTraceServiceResponse {
    let (status, body) = post(shared, "application/x-protobuf", request(spans).encode_to_vec()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    ExportTraceServiceResponse::decode(&body[..]).unwrap()
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[tokio::test]
async fn protobuf_spans_become_rows_others_are_counted_and_named() {
    let (shared, kept) = start(Duration::ZERO);
    let plain =
        Span { attributes: vec![kv("http.request.method", Value::StringValue("GET".into()))], ..chat_span(2, "x") };
    let mut bad = chat_span(3, "chatcmpl-bad");
    bad.attributes.push(kv("gen_ai.usage.cache_read.input_tokens", Value::StringValue("lots".into())));
    let r = post_pb(&shared, vec![chat_span(1, "chatcmpl-1"), plain, bad]).await;
    let p = r.partial_success.expect("partial success");
    assert_eq!(p.rejected_spans, 2);
    assert!(p.error_message.contains("1 GenAI spans invalid") && p.error_message.contains("cache_read"), "{p:?}");
    assert!(p.error_message.contains("1 spans without gen_ai.*"), "{p:?}");
    let rows = kept.0.lock().unwrap().clone();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].usage_source.as_deref(), rows[0].service.as_str()), (Some("otel"), "svc"));
    assert!(rows[0].cost_usd.is_some_and(|c| c > 0.0));
    let m = &shared.metrics.otlp;
    assert_eq!((count(&m.spans_received), count(&m.spans_stored)), (3, 1));
    assert_eq!((count(&m.spans_skipped_not_genai), count(&m.spans_rejected_invalid)), (1, 1));
    assert!(shared.metrics.render().contains("tokentap_collector_otlp_spans_stored_total 1\n"));
    // Sent again (a lost answer): stored once, answered the same.
    let again = post_pb(&shared, vec![chat_span(1, "chatcmpl-1")]).await;
    assert!(again.partial_success.is_none());
    assert_eq!(kept.0.lock().unwrap().len(), 1);
    assert_eq!(count(&m.spans_resent), 1);
}

#[tokio::test]
async fn otlp_json_with_hex_ids_and_string_integers() {
    let (shared, kept) = start(Duration::ZERO);
    let end = now_nanos();
    let json = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}},
                                     {"key": "process.pid", "value": {"intValue": "321"}}]},
        "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.anthropic"}, "spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "name": "chat claude-sonnet-4-5",
            "kind": 3,
            "startTimeUnixNano": (end - 2_000_000_000).to_string(),
            "endTimeUnixNano": end.to_string(),
            "unknownFieldsAreIgnored": true,
            "attributes": [
                {"key": "gen_ai.system", "value": {"stringValue": "anthropic"}},
                {"key": "gen_ai.request.model", "value": {"stringValue": "claude-sonnet-4-5"}},
                {"key": "gen_ai.response.id", "value": {"stringValue": "msg_01"}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1200"}},
                {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 80}},
                {"key": "gen_ai.usage.cache_read.input_tokens", "value": {"intValue": "1000"}},
                {"key": "gen_ai.request.stream", "value": {"boolValue": true}}
            ],
            "status": {"code": 1}
        }]}]
    }]});
    let (status, body) = post(&shared, "application/json", serde_json::to_vec(&json).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(answer.get("partialSuccess").is_none_or(|p| p.is_null()), "{answer}");
    let rows = kept.0.lock().unwrap().clone();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!((r.provider.as_str(), r.operation.as_str(), r.pid), ("anthropic", "messages", Some(321)));
    assert_eq!((r.input_tokens, r.output_tokens, r.cached_input_tokens), (Some(1200), Some(80), Some(1000)));
    assert!(r.stream);
    assert_eq!(r.duration_ms, Some(2000.0));
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_write_nothing() {
    let (shared, kept) = start(Duration::ZERO);
    let (s, body) = post(&shared, "application/x-protobuf", vec![0x0a, 0xff, 0xff, 0xff, 0x0f, 1]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let st = answer::RpcStatus::decode(&body[..]).expect("a Status in protobuf");
    assert!(st.message.contains("protobuf"), "{st:?}");
    let (s, body) = post(&shared, "application/json", b"{\"resourceSpans\": [{\"scopeSpans\": 5}]}".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("a Status in JSON");
    assert_eq!(v["code"], 3);
    let (s, _) = post(&shared, "text/plain", b"hello".to_vec()).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // One bad span id in JSON: the whole request is refused, its good span too.
    let bad_hex = serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "zz", "spanId": "eee19b7ec3c1b174"}]}]}]});
    let (s, _) = post(&shared, "application/json", serde_json::to_vec(&bad_hex).unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(kept.0.lock().unwrap().is_empty());
    assert!(shared.metrics.render().contains("batches_rejected_total{reason=\"malformed\"} 3"));
}

#[tokio::test]
async fn an_agents_record_wins_whichever_arrives_first() {
    let (shared, kept) = start(Duration::from_millis(400));
    let record = |response_id: &str| {
        CallRow::from_record(
            LlmCall {
                event_id: LlmCall::new_event_id(),
                ts: LlmCall::format_ts(now_nanos() as i128),
                provider: "openai_compatible".into(),
                operation: "chat".into(),
                response_id: Some(response_id.into()),
                ..Default::default()
            },
            "",
        )
    };
    // The agent's record first: the span is a duplicate, stored never.
    let rows = shared.otlp.screen_records(vec![record("chatcmpl-a")], &shared.metrics);
    server::store(&shared, rows, false).await.unwrap();
    post_pb(&shared, vec![chat_span(1, "chatcmpl-a")]).await;
    // The span first: it waits out the hold; the agent's record arriving
    // meanwhile is stored, the span not.
    let span = tokio::spawn({
        let shared = shared.clone();
        async move { post_pb(&shared, vec![chat_span(2, "chatcmpl-b")]).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rows = shared.otlp.screen_records(vec![record("chatcmpl-b")], &shared.metrics);
    assert_eq!(rows.len(), 1, "the record is stored");
    server::store(&shared, rows, false).await.unwrap();
    span.await.unwrap();
    // Past the hold, a span's row is the call's: a later record is the duplicate.
    post_pb(&shared, vec![chat_span(3, "chatcmpl-c")]).await;
    assert!(shared.otlp.screen_records(vec![record("chatcmpl-c")], &shared.metrics).is_empty());
    let rows = kept.0.lock().unwrap().clone();
    let sources: Vec<_> = rows.iter().map(|r| (r.response_id.clone().unwrap(), r.usage_source.clone())).collect();
    assert_eq!(rows.len(), 3, "{sources:?}");
    for (id, want) in [("chatcmpl-a", None), ("chatcmpl-b", None), ("chatcmpl-c", Some("otel".to_string()))] {
        assert!(sources.contains(&(id.to_string(), want.clone())), "{id}: {sources:?}");
    }
    let m = &shared.metrics.otlp;
    assert_eq!((count(&m.spans_duplicate_of_ebpf), count(&m.records_duplicate_of_otel)), (2, 1));
    assert_eq!(count(&m.held_spans), 0);
}

/// Another replica's rows, as ClickHouse would answer the checks; or away.
#[derive(Default)]
struct OtherReplica {
    rows: Mutex<Vec<(crate::otlp::peers::Side, crate::otlp::peers::Found)>>,
    away: std::sync::atomic::AtomicBool,
    finds: std::sync::atomic::AtomicU64,
    asked: Mutex<Vec<crate::otlp::peers::Lookup>>,
}

impl crate::otlp::peers::Peers for OtherReplica {
    fn find<'a>(
        &'a self,
        q: &'a crate::otlp::peers::Lookup,
    ) -> crate::otlp::peers::BoxFuture<'a, Result<Vec<crate::otlp::peers::Found>, String>> {
        Box::pin(async move {
            self.finds.fetch_add(1, Ordering::Relaxed);
            self.asked.lock().unwrap().push(q.clone());
            if self.away.load(Ordering::Relaxed) {
                return Err("Connection refused".into());
            }
            let rows = self.rows.lock().unwrap();
            Ok(rows
                .iter()
                .filter(|(side, f)| *side == q.side && q.ids.contains(&f.response_id))
                .map(|(_, f)| f.clone())
                .collect())
        })
    }

    fn otel_rows<'a>(&'a self) -> crate::otlp::peers::BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            if self.away.load(Ordering::Relaxed) {
                return Err("Connection refused".into());
            }
            Ok(self.rows.lock().unwrap().iter().any(|r| r.0 == crate::otlp::peers::Side::Spans) as u64)
        })
    }
}

fn agent_record(response_id: &str) -> CallRow {
    CallRow::from_record(
        LlmCall {
            event_id: LlmCall::new_event_id(),
            ts: LlmCall::format_ts(now_nanos() as i128),
            provider: "openai_compatible".into(),
            operation: "chat".into(),
            response_id: Some(response_id.into()),
            ..Default::default()
        },
        "",
    )
}

fn found(provider: &str, response_id: &str) -> crate::otlp::peers::Found {
    crate::otlp::peers::Found {
        provider: provider.into(),
        response_id: response_id.into(),
        event_id: uuid::Uuid::from_u128(now_nanos() as u128),
    }
}

#[tokio::test]
async fn a_call_another_replica_stored_is_stored_once() {
    use crate::otlp::peers::Side;
    let (shared, kept) = start(Duration::from_millis(10));
    let other = Arc::new(OtherReplica::default());
    shared.otlp.set_peers(other.clone());
    let finds = || other.finds.load(Ordering::Relaxed);
    // An agent's record of call A went through the other replica: the span
    // (held, then checked once for its flush) is dropped.
    other.rows.lock().unwrap().push((Side::Agents, found("openai_compatible", "chatcmpl-a")));
    post_pb(&shared, vec![chat_span(1, "chatcmpl-a"), chat_span(2, "chatcmpl-x")]).await;
    assert_eq!(finds(), 1, "one query for the flush of two spans");
    let q = other.asked.lock().unwrap()[0].clone();
    assert_eq!((q.side, q.ids.len()), (Side::Agents, 2));
    let rows = kept.0.lock().unwrap().clone();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].response_id.as_deref(), Some("chatcmpl-x"));
    let m = &shared.metrics.otlp;
    assert_eq!(count(&m.spans_duplicate_of_ebpf), 1);
    // This replica stored a span, so agents' batches are checked: a span of
    // call B stored through the other replica makes its record the duplicate.
    other.rows.lock().unwrap().push((Side::Spans, found("openai", "chatcmpl-b")));
    let rows = shared
        .otlp
        .screen_records_across(vec![agent_record("chatcmpl-b"), agent_record("chatcmpl-z")], &shared.metrics)
        .await;
    assert_eq!(rows.iter().map(|r| r.response_id.clone().unwrap()).collect::<Vec<_>>(), ["chatcmpl-z"]);
    assert_eq!(finds(), 2, "one query for the batch");
    assert_eq!(count(&m.records_duplicate_of_otel), 1);
    // Records without a response id, or of calls this replica knows: no query.
    let mut plain = agent_record("");
    plain.response_id = None;
    shared.otlp.screen_records_across(vec![plain, agent_record("chatcmpl-z")], &shared.metrics).await;
    assert_eq!(finds(), 2);
    assert_eq!(count(&m.replica_check_failures), 0);
}

#[tokio::test]
async fn while_no_span_was_stored_lately_records_cost_no_lookup() {
    let (shared, _kept) = start(Duration::from_millis(10));
    let other = Arc::new(OtherReplica::default());
    shared.otlp.set_peers(other.clone());
    for id in ["chatcmpl-1", "chatcmpl-2"] {
        let rows = shared.otlp.screen_records_across(vec![agent_record(id)], &shared.metrics).await;
        assert_eq!(rows.len(), 1);
    }
    assert_eq!(other.finds.load(Ordering::Relaxed), 0, "no OTLP rows in the last day: no look-up");
    // One count for both batches (cached for the refresh period).
    assert_eq!(count(&shared.metrics.otlp.replica_checks), 1);
}

#[tokio::test]
async fn clickhouse_away_falls_back_to_the_in_memory_match() {
    let (shared, kept) = start(Duration::from_millis(10));
    let other = Arc::new(OtherReplica::default());
    other.away.store(true, Ordering::Relaxed);
    shared.otlp.set_peers(other.clone());
    // The span is stored (ingest never fails because of the check), the failure counted.
    post_pb(&shared, vec![chat_span(1, "chatcmpl-a")]).await;
    assert_eq!(kept.0.lock().unwrap().len(), 1);
    let m = &shared.metrics.otlp;
    assert_eq!(count(&m.replica_check_failures), 1);
    // This replica's memory still matches: the record of the same call is the duplicate.
    let rows = shared.otlp.screen_records_across(vec![agent_record("chatcmpl-a")], &shared.metrics).await;
    assert!(rows.is_empty());
    // A record of a call unknown here: stored; the check's failure counted.
    let rows = shared.otlp.screen_records_across(vec![agent_record("chatcmpl-b")], &shared.metrics).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(count(&m.replica_check_failures), 2);
    assert!(shared.metrics.render().contains("tokentap_collector_otlp_replica_check_failures_total 2"));
}
