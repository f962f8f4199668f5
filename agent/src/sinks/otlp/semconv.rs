//! A record in OpenTelemetry's terms: the GenAI semantic conventions' names for
//! providers and operations, the resource (who made the call), the span's
//! attributes, ids and times. One place, so that spans and metrics agree and
//! docs/record.md's mapping table has one source.
//!
//! Conventions are those of the GenAI semantic conventions (v1.41):
//! `gen_ai.provider.name` (not the deprecated `gen_ai.system`), cache tokens
//! counted inside `gen_ai.usage.input_tokens` and reasoning inside
//! `gen_ai.usage.output_tokens`, as the record counts them. What the
//! conventions have no name for goes under `tokentap.*`.
use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use sha2::{Digest, Sha256};
use tokentap_event::{LlmCall, UsageSource};

/// `gen_ai.provider.name` for a tokentap provider. `server` tells Vertex AI
/// from the Gemini API (tokentap calls both `google`). Providers the
/// conventions do not list keep tokentap's name (the conventions allow
/// other values).
pub fn provider_name<'a>(provider: &'a str, server: Option<&str>) -> Cow<'a, str> {
    Cow::Borrowed(match provider {
        "openai" => "openai",
        "azure_openai" => "azure.ai.openai",
        "anthropic" => "anthropic",
        "google" if server.is_some_and(|s| s.ends_with("aiplatform.googleapis.com")) => "gcp.vertex_ai",
        "google" => "gcp.gemini",
        "bedrock" => "aws.bedrock",
        "cohere" => "cohere",
        "mistral" => "mistral_ai",
        "groq" => "groq",
        "deepseek" => "deepseek",
        "perplexity" => "perplexity",
        "xai" => "x_ai",
        other => return Cow::Borrowed(other),
    })
}

/// `gen_ai.operation.name` for a tokentap operation (the record keeps the
/// API's own name; `tokentap.operation` carries it on the span).
pub fn operation_name<'a>(operation: &'a str, model: Option<&str>) -> &'a str {
    match operation {
        // Chat-shaped APIs: a conversation in, a message out.
        "chat" | "messages" | "converse" | "responses" | "realtime" | "live" => "chat",
        "completions" | "generate" => "text_completion",
        "embeddings" | "embed_content" => "embeddings",
        "generate_content" => "generate_content",
        // Bedrock InvokeModel carries any model's native body: an embedding
        // model's call is an embedding, the others generate.
        "invoke" if model.is_some_and(|m| m.to_ascii_lowercase().contains("embed")) => "embeddings",
        "invoke" => "chat",
        other => other,
    }
}

/// The span's name: `{gen_ai.operation.name} {gen_ai.request.model}`.
pub fn span_name(r: &LlmCall) -> String {
    let op = operation_name(&r.operation, r.request_model.as_deref());
    match r.request_model.as_deref() {
        Some(m) if !m.is_empty() => format!("{op} {m}"),
        _ => op.to_owned(),
    }
}

/// A trace id and span id derived from the record's `event_id` alone: a
/// resent record is the same span, which receivers can deduplicate.
pub fn ids(event_id: &str) -> ([u8; 16], [u8; 8]) {
    let digest = |what: &[u8]| {
        let mut h = Sha256::new();
        h.update(what);
        h.update(event_id.as_bytes());
        h.finalize()
    };
    let (t, s) = (digest(b"tokentap trace id\0"), digest(b"tokentap span id\0"));
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    trace.copy_from_slice(&t[..16]);
    span.copy_from_slice(&s[..8]);
    // All zeroes is an invalid id.
    trace[15] |= u8::from(trace == [0; 16]);
    span[7] |= u8::from(span == [0; 8]);
    (trace, span)
}

/// Start (the request's first byte) and end (the response's last byte), in
/// nanoseconds since the Unix epoch. A `ts` that does not parse gives 0 (the
/// pipeline always writes a valid one).
pub fn times(r: &LlmCall) -> (u64, u64) {
    let start = chrono::DateTime::parse_from_rfc3339(&r.ts)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .map_or(0, |n| n.max(0) as u64);
    let duration = r.duration_ms.filter(|d| d.is_finite() && *d > 0.0).map_or(0, |d| (d * 1e6).round() as u64);
    (start, start.saturating_add(duration))
}

/// What the agent knows of the host it runs on, for the resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// `host.name`: the node's name (`NODE_NAME` from the downward API),
    /// else the host name.
    pub name: Option<String>,
    /// `k8s.node.name`, when running in Kubernetes (`NODE_NAME` set).
    pub k8s_node: Option<String>,
}

impl Host {
    pub fn detect() -> Self {
        let k8s_node = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
        let name = k8s_node.clone().or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        });
        Self { name, k8s_node }
    }
}

/// A resource attribute's value (strings and one integer, `process.pid`):
/// ordered, so spans can be grouped by resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResValue {
    Str(String),
    Int(i64),
}

/// A resource: its attributes, in a fixed order.
pub type ResourceKey = Vec<(String, ResValue)>;

/// Who made the call, as a resource (`service.name` is always there:
/// `unknown_service` when the record has none, as OpenTelemetry SDKs say).
pub fn resource(r: &LlmCall, host: &Host) -> ResourceKey {
    let mut out: ResourceKey = Vec::with_capacity(12);
    let mut s = |k: &str, v: Option<&String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.push((k.to_owned(), ResValue::Str(v.clone())));
        }
    };
    s("service.name", Some(r.service.as_ref().filter(|v| !v.is_empty()).unwrap_or(&"unknown_service".to_owned())));
    s("k8s.namespace.name", r.namespace.as_ref());
    s("k8s.pod.name", r.pod.as_ref());
    // The pod's top owner under the conventions' name for its kind; a pod
    // with no owner (or a kind they do not name) only under tokentap's.
    let kind_key = match r.workload_kind.as_deref() {
        Some("Deployment") => Some("k8s.deployment.name"),
        Some("StatefulSet") => Some("k8s.statefulset.name"),
        Some("DaemonSet") => Some("k8s.daemonset.name"),
        Some("CronJob") => Some("k8s.cronjob.name"),
        Some("Job") => Some("k8s.job.name"),
        _ => None,
    };
    if let Some(k) = kind_key {
        s(k, r.workload.as_ref());
    }
    s("tokentap.workload", r.workload.as_ref());
    s("k8s.node.name", host.k8s_node.as_ref());
    s("container.id", r.container_id.as_ref());
    s("process.executable.path", r.exe.as_ref());
    s("process.executable.name", r.comm.as_ref());
    s("host.name", host.name.as_ref());
    for (k, v) in &r.labels {
        s(&format!("tokentap.label.{k}"), Some(v));
    }
    if let Some(pid) = r.pid {
        out.push(("process.pid".into(), ResValue::Int(i64::from(pid))));
    }
    out
}

pub fn resource_attributes(key: &ResourceKey) -> Vec<KeyValue> {
    key.iter()
        .map(|(k, v)| match v {
            ResValue::Str(s) => kv(k, str_value(s)),
            ResValue::Int(i) => kv(k, any_value::Value::IntValue(*i)),
        })
        .collect()
}

pub fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

pub fn str_value(s: &str) -> any_value::Value {
    any_value::Value::StringValue(s.to_owned())
}

fn int(n: u64) -> any_value::Value {
    any_value::Value::IntValue(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The span's attributes: the conventions' where they have a name, then
/// tokentap's. Unknown values are left out (never a made-up 0).
pub fn span_attributes(r: &LlmCall) -> Vec<KeyValue> {
    use any_value::Value::{BoolValue, DoubleValue};
    let mut a = Vec::with_capacity(32);
    let s = |a: &mut Vec<KeyValue>, k: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            a.push(kv(k, str_value(v)));
        }
    };
    let n = |a: &mut Vec<KeyValue>, k: &str, v: Option<u64>| {
        if let Some(v) = v {
            a.push(kv(k, int(v)));
        }
    };
    s(&mut a, "gen_ai.operation.name", Some(operation_name(&r.operation, r.request_model.as_deref())));
    s(&mut a, "gen_ai.provider.name", Some(&provider_name(&r.provider, r.server.as_deref())));
    s(&mut a, "gen_ai.request.model", r.request_model.as_deref());
    s(&mut a, "gen_ai.response.model", r.response_model.as_deref());
    s(&mut a, "gen_ai.response.id", r.response_id.as_deref());
    a.push(kv("gen_ai.request.stream", BoolValue(r.stream)));
    n(&mut a, "gen_ai.usage.input_tokens", r.input_tokens);
    n(&mut a, "gen_ai.usage.output_tokens", r.output_tokens);
    n(&mut a, "gen_ai.usage.cache_read.input_tokens", r.cached_input_tokens);
    n(&mut a, "gen_ai.usage.cache_creation.input_tokens", r.cache_write_tokens);
    n(&mut a, "gen_ai.usage.reasoning.output_tokens", r.reasoning_tokens);
    if let Some(t) = r.ttft_ms.filter(|t| t.is_finite()) {
        a.push(kv("gen_ai.response.time_to_first_chunk", DoubleValue(t / 1000.0)));
    }
    let conversation = r.features.as_ref().and_then(|f| f.conversation_hash.as_deref());
    s(&mut a, "gen_ai.conversation.id", conversation);
    s(&mut a, "server.address", r.server.as_deref());
    if let Some(status) = r.status {
        a.push(kv("http.response.status_code", int(u64::from(status))));
        if status >= 400 {
            a.push(kv("error.type", str_value(&status.to_string())));
        }
    }
    s(&mut a, "url.path", r.path.as_deref());
    s(&mut a, "network.protocol.version", r.http_version.as_deref());
    s(&mut a, "user.id", r.end_user.as_deref());
    // tokentap's own: what the conventions have no name for.
    s(&mut a, "tokentap.event_id", Some(&r.event_id));
    s(&mut a, "tokentap.provider", Some(&r.provider));
    s(&mut a, "tokentap.operation", Some(&r.operation));
    if let Some(c) = r.cost_usd.filter(|c| c.is_finite()) {
        a.push(kv("tokentap.cost.usd", DoubleValue(c)));
    }
    s(&mut a, "tokentap.usage_source", r.usage_source.map(UsageSource::as_str));
    n(&mut a, "tokentap.usage.input_audio_tokens", r.input_audio_tokens);
    n(&mut a, "tokentap.usage.cached_audio_tokens", r.cached_audio_tokens);
    n(&mut a, "tokentap.usage.output_audio_tokens", r.output_audio_tokens);
    s(&mut a, "tokentap.service_tier", r.service_tier.as_deref());
    s(&mut a, "tokentap.request_id", r.request_id.as_deref());
    s(&mut a, "tokentap.tls_library", r.tls_library.as_deref());
    s(&mut a, "tokentap.api_key_id", r.api_key_id.as_deref());
    s(&mut a, "tokentap.feature", r.feature.as_deref());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_and_operations_use_the_conventions_names() {
        let p = |name, server| provider_name(name, server).into_owned();
        assert_eq!(p("openai", None), "openai");
        assert_eq!(p("azure_openai", None), "azure.ai.openai");
        assert_eq!(p("bedrock", None), "aws.bedrock");
        assert_eq!(p("google", Some("generativelanguage.googleapis.com")), "gcp.gemini");
        assert_eq!(p("google", Some("us-central1-aiplatform.googleapis.com")), "gcp.vertex_ai");
        assert_eq!(p("mistral", None), "mistral_ai");
        assert_eq!(p("xai", None), "x_ai");
        assert_eq!(p("ollama", None), "ollama", "not in the conventions: tokentap's name");
        assert_eq!(p("openai_compatible", None), "openai_compatible", "an unnamed host is not OpenAI");
        let o = |op, model| operation_name(op, model);
        assert_eq!(o("messages", None), "chat");
        assert_eq!(o("responses", None), "chat");
        assert_eq!(o("completions", None), "text_completion");
        assert_eq!(o("generate", None), "text_completion");
        assert_eq!(o("embed_content", None), "embeddings");
        assert_eq!(o("generate_content", None), "generate_content");
        assert_eq!(o("invoke", Some("amazon.titan-embed-text-v2:0")), "embeddings");
        assert_eq!(o("invoke", Some("anthropic.claude-3-5-haiku-20241022-v1:0")), "chat");
        assert_eq!(o("rerank", None), "rerank");
    }

    #[test]
    fn ids_are_derived_from_the_event_id_only() {
        let (t1, s1) = ids("0190a8b2-0000-7000-8000-000000000001");
        assert_eq!(ids("0190a8b2-0000-7000-8000-000000000001"), (t1, s1), "a resend is the same span");
        let (t2, s2) = ids("0190a8b2-0000-7000-8000-000000000002");
        assert!(t1 != t2 && s1 != s2);
        assert!(t1 != [0; 16] && s1 != [0; 8]);
    }

    #[test]
    fn times_and_names() {
        let r = LlmCall {
            ts: "2023-11-14T22:13:20.123456Z".into(),
            duration_ms: Some(1500.25),
            operation: "messages".into(),
            request_model: Some("claude-x".into()),
            ..Default::default()
        };
        assert_eq!(times(&r), (1_700_000_000_123_456_000, 1_700_000_001_623_706_000));
        assert_eq!(span_name(&r), "chat claude-x");
        let r = LlmCall { ts: "garbage".into(), operation: "embeddings".into(), ..Default::default() };
        assert_eq!((times(&r), span_name(&r)), ((0, 0), "embeddings".to_owned()));
    }

    #[test]
    fn resources_leave_unknowns_out() {
        let host = Host { name: Some("node-1".into()), k8s_node: None };
        let r = LlmCall {
            service: None,
            pid: Some(42),
            exe: Some("/usr/bin/python3".into()),
            labels: [("team".to_owned(), "search".to_owned())].into(),
            ..Default::default()
        };
        let want: ResourceKey = vec![
            ("service.name".into(), ResValue::Str("unknown_service".into())),
            ("process.executable.path".into(), ResValue::Str("/usr/bin/python3".into())),
            ("host.name".into(), ResValue::Str("node-1".into())),
            ("tokentap.label.team".into(), ResValue::Str("search".into())),
            ("process.pid".into(), ResValue::Int(42)),
        ];
        assert_eq!(resource(&r, &host), want);
    }
}
