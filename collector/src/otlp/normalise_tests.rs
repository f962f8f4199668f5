use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{Span, Status};

use super::*;

pub fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

pub fn s(key: &str, v: &str) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

pub fn i(key: &str, v: i64) -> KeyValue {
    kv(key, Value::IntValue(v))
}

/// A span of a call that ended a second after 2026-11-23T10:00:00Z.
pub fn span(attrs: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "chat gpt-4o".into(),
        kind: 3,
        start_time_unix_nano: 1_795_428_000_000_000_000,
        end_time_unix_nano: 1_795_428_001_250_000_000,
        attributes: attrs,
        ..Default::default()
    }
}

fn limits() -> wire::Limits {
    // Far enough from the span's day either way.
    wire::Limits::now(Some(100_000))
}

fn call(resource: &[KeyValue], sp: &Span) -> CallRow {
    match normalise(resource, sp, &PriceTable::shipped(), &limits(), "hdr") {
        Verdict::Call(c) => c.row,
        other => panic!("not a call: {other:?}"),
    }
}

#[test]
fn current_conventions_map_to_the_record() {
    let res = [
        s("service.name", "checkout"),
        s("k8s.pod.name", "checkout-7d9f"),
        s("k8s.namespace.name", "shop"),
        s("k8s.deployment.name", "checkout"),
        s("container.id", "abc123"),
        i("process.pid", 4242),
        s("process.executable.path", "/usr/bin/python3"),
        s("host.name", "node-1"),
        s("k8s.cluster.name", "prod"),
    ];
    let sp = span(vec![
        s("gen_ai.provider.name", "openai"),
        s("gen_ai.operation.name", "chat"),
        s("gen_ai.request.model", "gpt-4o"),
        s("gen_ai.response.model", "gpt-4o-2024-08-06"),
        s("gen_ai.response.id", "chatcmpl-1"),
        kv("gen_ai.request.stream", Value::BoolValue(true)),
        i("gen_ai.usage.input_tokens", 1000),
        i("gen_ai.usage.output_tokens", 200),
        i("gen_ai.usage.cache_read.input_tokens", 400),
        i("gen_ai.usage.reasoning.output_tokens", 50),
        s("gen_ai.conversation.id", "conv-9"),
        s("server.address", "api.openai.com"),
        i("http.response.status_code", 200),
    ]);
    let r = call(&res, &sp);
    assert_eq!((r.provider.as_str(), r.operation.as_str(), r.model.as_str()), ("openai", "chat", "gpt-4o-2024-08-06"));
    assert_eq!(r.ts, 1_795_428_000_000_000);
    assert_eq!(r.duration_ms, Some(1250.0));
    assert_eq!((r.input_tokens, r.output_tokens), (Some(1000), Some(200)));
    assert_eq!((r.cached_input_tokens, r.reasoning_tokens, r.cache_write_tokens), (Some(400), Some(50), None));
    assert_eq!(r.usage_source.as_deref(), Some("otel"));
    assert!(r.stream);
    assert_eq!(r.status, Some(200));
    assert_eq!((r.service.as_str(), r.namespace.as_str(), r.workload.as_str()), ("checkout", "shop", "checkout"));
    assert_eq!(r.workload_kind.as_deref(), Some("Deployment"));
    assert_eq!(
        (r.pod.as_deref(), r.container_id.as_deref(), r.pid),
        (Some("checkout-7d9f"), Some("abc123"), Some(4242))
    );
    assert_eq!(r.exe.as_deref(), Some("/usr/bin/python3"));
    assert_eq!(r.cluster, "prod", "the resource's cluster wins over the header");
    assert_eq!(r.server.as_deref(), Some("api.openai.com"));
    assert!(r.labels.contains(&("gen_ai.conversation.id".into(), "conv-9".into())));
    assert!(r.labels.contains(&("host.name".into(), "node-1".into())));
    // Priced as the agent prices: the same table, the same formula.
    let p = PriceTable::shipped();
    let want = p.lookup("gpt-4o-2024-08-06").unwrap().cost_of(&tokentap_event::cost::Use {
        input: 1000,
        output: 200,
        cached: 400,
        reasoning: 50,
        ..Default::default()
    });
    assert!((r.cost_usd.unwrap() - want).abs() < 1e-12);
    // The same span gives the same event id; another span id another.
    assert_eq!(call(&res, &sp).event_id, r.event_id);
    let mut other = sp.clone();
    other.span_id = vec![3; 8];
    assert_ne!(call(&res, &other).event_id, r.event_id);
}

#[test]
fn older_names_and_providers() {
    // gen_ai.system, prompt/completion tokens, an Anthropic span counting
    // cache apart (before v1.40), tokens sent as strings or doubles.
    let sp = span(vec![
        s("gen_ai.system", "Anthropic"),
        s("gen_ai.request.model", "claude-sonnet-4-5"),
        s("gen_ai.usage.prompt_tokens", "30"),
        kv("gen_ai.usage.completion_tokens", Value::DoubleValue(12.0)),
        i("gen_ai.usage.cache_read_input_tokens", 100),
        i("gen_ai.usage.cache_creation_input_tokens", 20),
    ]);
    let r = call(&[], &sp);
    assert_eq!((r.provider.as_str(), r.operation.as_str()), ("anthropic", "messages"));
    assert_eq!((r.input_tokens, r.output_tokens), (Some(150), Some(12)), "input includes cache reads and writes");
    assert_eq!((r.cached_input_tokens, r.cache_write_tokens), (Some(100), Some(20)));
    assert_eq!(r.cluster, "hdr");
    assert_eq!(r.service, "");
    assert_eq!(r.status, Some(200), "usage means a 2xx answer");
    for (raw, want) in [
        ("aws.bedrock", "bedrock"),
        ("gcp.gemini", "google"),
        ("gcp.vertex_ai", "google"),
        ("azure.ai.openai", "azure_openai"),
        ("az.ai.openai", "azure_openai"),
        ("mistral_ai", "mistral"),
        ("x_ai", "xai"),
        ("ibm.watsonx.ai", "ibm_watsonx_ai"),
    ] {
        assert_eq!(provider(raw), want);
    }
    assert_eq!(operation("chat", "bedrock"), "converse");
    assert_eq!(operation("embeddings", "google"), "embed_content");
    assert_eq!(operation("text_completion", "openai"), "completions");
    // Gemini counting thoughts apart from candidates.
    let sp = span(vec![
        s("gen_ai.provider.name", "gcp.gemini"),
        s("gen_ai.request.model", "gemini-2.5-flash"),
        i("gen_ai.usage.input_tokens", 10),
        i("gen_ai.usage.output_tokens", 5),
        i("gen_ai.usage.reasoning.output_tokens", 40),
    ]);
    let r = call(&[], &sp);
    assert_eq!((r.output_tokens, r.reasoning_tokens, r.operation.as_str()), (Some(45), Some(40), "generate_content"));
}

#[test]
fn embeddings_errors_and_unknown_usage() {
    let sp = span(vec![
        s("gen_ai.provider.name", "openai"),
        s("gen_ai.operation.name", "embeddings"),
        s("gen_ai.request.model", "text-embedding-3-small"),
        i("gen_ai.usage.input_tokens", 8),
    ]);
    let r = call(&[], &sp);
    assert_eq!((r.input_tokens, r.output_tokens), (Some(8), Some(0)));
    assert!(r.cost_usd.unwrap() > 0.0);
    // A failed call: its status, no usage, no cost, no usage source.
    let mut sp =
        span(vec![s("gen_ai.provider.name", "openai"), s("gen_ai.request.model", "gpt-4o"), s("error.type", "429")]);
    sp.status = Some(Status { code: 2, message: "rate limited".into() });
    let r = call(&[], &sp);
    assert_eq!((r.status, r.input_tokens, r.cost_usd, r.usage_source.as_deref()), (Some(429), None, None, None));
    // An error with no code: status unknown, never made up.
    sp.attributes.pop();
    assert_eq!(call(&[], &sp).status, None);
    // An unknown model: cost unknown (null), not 0.
    let sp = span(vec![
        s("gen_ai.provider.name", "openai"),
        s("gen_ai.request.model", "no-such-model"),
        i("gen_ai.usage.input_tokens", 1),
        i("gen_ai.usage.output_tokens", 1),
    ]);
    assert_eq!(call(&[], &sp).cost_usd, None);
}

#[test]
fn not_genai_not_a_call_and_invalid_spans() {
    let v = |sp: &Span| normalise(&[], sp, &PriceTable::empty(), &limits(), "");
    assert!(matches!(v(&span(vec![s("http.request.method", "GET")])), Verdict::NotGenAi));
    assert!(matches!(
        v(&span(vec![s("gen_ai.operation.name", "invoke_agent"), s("gen_ai.provider.name", "openai")])),
        Verdict::NotACall
    ));
    let invalid = |sp: Span, want: &str| match v(&sp) {
        Verdict::Invalid(why) => assert!(why.contains(want), "{why} lacks {want}"),
        other => panic!("{other:?} is not invalid ({want})"),
    };
    invalid(span(vec![s("gen_ai.operation.name", "chat")]), "gen_ai.provider.name");
    let ok = || vec![s("gen_ai.provider.name", "openai"), s("gen_ai.request.model", "gpt-4o")];
    let mut sp = span(ok());
    sp.trace_id = vec![0; 16];
    invalid(sp, "trace_id");
    let mut sp = span(ok());
    sp.span_id = vec![1; 4];
    invalid(sp, "span_id");
    let mut sp = span(ok());
    sp.end_time_unix_nano = sp.start_time_unix_nano - 1;
    invalid(sp, "span times");
    let mut a = ok();
    a.push(i("gen_ai.usage.input_tokens", -5));
    invalid(span(a), "gen_ai.usage.input_tokens is not a non-negative integer");
    let mut a = ok();
    a.push(s("gen_ai.usage.output_tokens", "many"));
    invalid(span(a), "gen_ai.usage.output_tokens");
    let mut a = ok();
    a.push(kv("gen_ai.usage.output_tokens", Value::DoubleValue(1.5)));
    invalid(span(a), "gen_ai.usage.output_tokens");
    let mut a = ok();
    a.push(i("gen_ai.usage.input_tokens", 10));
    a.push(i("gen_ai.usage.output_tokens", 2_000_000_000_000));
    invalid(span(a), "output_tokens is over");
    let mut a = ok();
    a.push(s("gen_ai.request.model", &"m".repeat(300)));
    a.remove(1);
    invalid(span(a), "request_model");
    // Older than retention.
    let mut sp = span(ok());
    sp.start_time_unix_nano = 1_000_000_000;
    sp.end_time_unix_nano = 2_000_000_000;
    match normalise(&[], &sp, &PriceTable::empty(), &wire::Limits::now(Some(30)), "") {
        Verdict::Invalid(_) => {}
        other => panic!("{other:?}"),
    }
}
