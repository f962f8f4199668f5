//! One OTLP span (with its resource) -> one `llm_calls` row, in tokentap's
//! record contract (docs/record.md), or the reason it is none.
//!
//! A span is a GenAI span when it names a provider (`gen_ai.provider.name`,
//! or the deprecated `gen_ai.system`) or a GenAI operation
//! (`gen_ai.operation.name`). Its tokens are read in the semantic
//! conventions' current spelling and the older ones instrumentations still
//! write, and normalised the way the agent's records are: `input` includes
//! cache reads and writes, `output` includes reasoning. It is priced with the
//! same price table as the agent's records and checked with the same limits
//! as a wire record (`tokentap_event::wire::validate`), so an OTLP row can't
//! be something the wire would refuse.
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};
use tokentap_event::{wire, LlmCall, PriceTable, UsageSource};

use crate::store::CallRow;

/// Namespace of the span event ids (UUIDv5 of trace id + span id): a span
/// sent again gets the same `event_id`, and the collector's dedup drops it.
const SPAN_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7f0c_2a8e_51b4_4d0e_9a53_0b7e_6c1f_d2a4);

/// What a span is to tokentap.
#[derive(Debug)]
pub enum Verdict {
    /// An LLM call: its row, and when it ended (nanoseconds since the epoch).
    Call(Box<SpanCall>),
    /// No `gen_ai.*` provider or operation: not an LLM call (HTTP, DB, app spans).
    NotGenAi,
    /// A GenAI span that is not one API call (`invoke_agent`, `execute_tool`,
    /// `create_agent`): its usage, if any, sums calls that have spans of their own.
    NotACall,
    /// A GenAI span tokentap can't store as it is; the message says why.
    Invalid(String),
}

#[derive(Debug)]
pub struct SpanCall {
    pub row: CallRow,
    pub end_unix_nanos: u64,
}

/// What the spans of one export request are.
#[derive(Debug, Default)]
pub struct Batch {
    pub calls: Vec<SpanCall>,
    pub spans: usize,
    pub not_genai: usize,
    pub not_a_call: usize,
    pub invalid: usize,
    /// The first invalid span's reason (the sender is told it).
    pub why_invalid: Option<String>,
}

impl Batch {
    /// Spans that are not stored as calls (OTLP's `rejected_spans`).
    pub fn rejected(&self) -> usize {
        self.not_genai + self.not_a_call + self.invalid
    }

    /// OTLP's `error_message` for them.
    pub fn message(&self) -> String {
        let mut parts = Vec::new();
        if self.invalid > 0 {
            let why = self.why_invalid.as_deref().unwrap_or("");
            parts.push(format!("{} GenAI spans invalid (first: {why})", self.invalid));
        }
        if self.not_genai > 0 {
            parts.push(format!("{} spans without gen_ai.* attributes skipped (not LLM calls)", self.not_genai));
        }
        if self.not_a_call > 0 {
            parts.push(format!("{} agent/tool spans skipped (not one LLM API call)", self.not_a_call));
        }
        parts.join("; ")
    }
}

/// Every span of a request, each with its resource's attributes.
pub fn normalise_request(
    req: &ExportTraceServiceRequest,
    prices: &PriceTable,
    limits: &wire::Limits,
    cluster: &str,
) -> Batch {
    let mut b = Batch::default();
    for rs in &req.resource_spans {
        let resource = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            b.spans += 1;
            match normalise(resource, span, prices, limits, cluster) {
                Verdict::Call(c) => b.calls.push(*c),
                Verdict::NotGenAi => b.not_genai += 1,
                Verdict::NotACall => b.not_a_call += 1,
                Verdict::Invalid(why) => {
                    b.invalid += 1;
                    b.why_invalid.get_or_insert(why);
                }
            }
        }
    }
    b
}

/// Read one span. `cluster` is the sender's `x-tokentap-cluster` header,
/// used when the resource names no `k8s.cluster.name`.
pub fn normalise(
    resource: &[KeyValue],
    span: &Span,
    prices: &PriceTable,
    limits: &wire::Limits,
    cluster: &str,
) -> Verdict {
    let attrs = Attrs(&span.attributes);
    let res = Attrs(resource);
    let provider_raw = attrs.str("gen_ai.provider.name").or_else(|| attrs.str("gen_ai.system"));
    let op_raw = attrs.str("gen_ai.operation.name");
    if provider_raw.is_none() && op_raw.is_none() {
        return Verdict::NotGenAi;
    }
    if op_raw.is_some_and(|op| matches!(op, "invoke_agent" | "execute_tool" | "create_agent")) {
        return Verdict::NotACall;
    }
    match read(&attrs, &res, span, provider_raw, op_raw, prices, limits, cluster) {
        Ok(call) => Verdict::Call(Box::new(call)),
        Err(why) => Verdict::Invalid(why),
    }
}

#[allow(clippy::too_many_arguments)]
fn read(
    attrs: &Attrs,
    res: &Attrs,
    span: &Span,
    provider_raw: Option<&str>,
    op_raw: Option<&str>,
    prices: &PriceTable,
    limits: &wire::Limits,
    cluster: &str,
) -> Result<SpanCall, String> {
    let ids_ok = span.trace_id.len() == 16
        && span.span_id.len() == 8
        && span.trace_id.iter().any(|&b| b != 0)
        && span.span_id.iter().any(|&b| b != 0);
    if !ids_ok {
        return Err("trace_id must be 16 bytes and span_id 8 bytes, not all zero".into());
    }
    let provider = provider(provider_raw.ok_or("no gen_ai.provider.name (or gen_ai.system)")?);
    if provider.is_empty() {
        return Err("gen_ai.provider.name is empty".into());
    }
    let operation = operation(op_raw.unwrap_or("chat"), &provider);
    let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
    if start == 0 || end < start {
        return Err(format!("span times are not a call: start {start}, end {end} (ns since the epoch)"));
    }
    let tokens = Tokens::read(attrs, &operation)?;
    let response_id = attrs.str("gen_ai.response.id").map(str::to_owned);
    let http_status = attrs.uint("http.response.status_code")?.map(|s| u16::try_from(s).unwrap_or(0));
    let error = span.status.as_ref().is_some_and(|s| s.code == StatusCode::Error as i32);
    let status = http_status
        .or_else(|| attrs.str("error.type").and_then(|t| t.parse::<u16>().ok()))
        .filter(|s| (100..=599).contains(s))
        // Providers give an id and usage only with a 2xx answer.
        .or_else(|| (!error && (response_id.is_some() || tokens.input.is_some())).then_some(200));
    let pid = res.uint("process.pid").ok().flatten().and_then(|p| u32::try_from(p).ok());
    let mut labels = std::collections::BTreeMap::new();
    for (key, value) in
        [("gen_ai.conversation.id", attrs.str("gen_ai.conversation.id")), ("host.name", res.str("host.name"))]
    {
        if let Some(v) = value {
            labels.insert(key.to_owned(), v.to_owned());
        }
    }
    let own = |v: Option<&str>| v.map(str::to_owned);
    let kinds = [
        ("k8s.deployment.name", "Deployment"),
        ("k8s.statefulset.name", "StatefulSet"),
        ("k8s.daemonset.name", "DaemonSet"),
        ("k8s.cronjob.name", "CronJob"),
        ("k8s.job.name", "Job"),
    ];
    let (workload, workload_kind) =
        kinds.iter().find_map(|(k, kind)| Some((res.str(k)?, *kind))).map_or((None, None), |(w, k)| (Some(w), Some(k)));
    let mut call = LlmCall {
        event_id: uuid::Uuid::new_v5(&SPAN_ID_NAMESPACE, &[&span.trace_id[..], &span.span_id[..]].concat()).to_string(),
        ts: LlmCall::format_ts(start as i128),
        duration_ms: Some((end - start) as f64 / 1e6),
        ttft_ms: None,
        provider,
        operation,
        request_model: own(attrs.str("gen_ai.request.model")),
        response_model: own(attrs.str("gen_ai.response.model")),
        stream: attrs.bool("gen_ai.request.stream").unwrap_or(false),
        status,
        input_tokens: tokens.input,
        output_tokens: tokens.output,
        cached_input_tokens: tokens.cached,
        cache_write_tokens: tokens.cache_write,
        reasoning_tokens: tokens.reasoning,
        usage_source: (tokens.input.is_some() || tokens.output.is_some()).then_some(UsageSource::Otel),
        response_id,
        server: own(attrs.str("server.address")),
        pid,
        comm: own(res.str("process.executable.name")),
        exe: own(res.str("process.executable.path")),
        container_id: own(res.str("container.id")),
        pod: own(res.str("k8s.pod.name")),
        namespace: own(res.str("k8s.namespace.name")),
        workload: own(workload),
        workload_kind: own(workload_kind),
        service: own(res.str("service.name")),
        end_user: own(attrs.str("user.id").or_else(|| attrs.str("enduser.id"))),
        service_tier: own([
            "openai.response.service_tier",
            "gen_ai.openai.response.service_tier",
            "openai.request.service_tier",
        ]
        .iter()
        .find_map(|k| attrs.str(k))),
        labels,
        ..Default::default()
    };
    call.apply_cost(prices);
    wire::validate(&call, limits)?;
    let cluster = res.str("k8s.cluster.name").unwrap_or(cluster);
    Ok(SpanCall { row: CallRow::from_record(call, cluster), end_unix_nanos: end })
}

/// Token counts in the record's terms.
#[derive(Debug, Default, PartialEq)]
struct Tokens {
    input: Option<u64>,
    output: Option<u64>,
    cached: Option<u64>,
    cache_write: Option<u64>,
    reasoning: Option<u64>,
}

impl Tokens {
    fn read(a: &Attrs, operation: &str) -> Result<Self, String> {
        let first = |keys: &[&str]| -> Result<Option<u64>, String> {
            for k in keys {
                if let Some(v) = a.uint(k)? {
                    return Ok(Some(v));
                }
            }
            Ok(None)
        };
        let mut t = Tokens {
            input: first(&["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"])?,
            output: first(&["gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"])?,
            cached: first(&["gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"])?,
            cache_write: first(&[
                "gen_ai.usage.cache_creation.input_tokens",
                "gen_ai.usage.cache_creation_input_tokens",
            ])?,
            reasoning: first(&["gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens"])?,
        };
        // Since semantic conventions v1.40 input counts cache reads and writes
        // (tokentap's contract). Older instrumentations (Anthropic's before
        // that) counted them apart: an input smaller than its own cached part
        // can only be that reading, so the parts are added back.
        let parts = t.cached.unwrap_or(0).saturating_add(t.cache_write.unwrap_or(0));
        if let Some(i) = t.input.filter(|&i| i < parts) {
            t.input = Some(i.saturating_add(parts));
        }
        // Likewise reasoning inside output (v1.41); an output smaller than its
        // reasoning part counted it apart (Gemini's candidates vs thoughts).
        if let (Some(o), Some(r)) = (t.output, t.reasoning) {
            if o < r {
                t.output = Some(o.saturating_add(r));
            }
        }
        // Embeddings generate nothing: the record says 0, as the agent's do.
        if t.output.is_none() && t.input.is_some() && matches!(operation, "embeddings" | "embed_content") {
            t.output = Some(0);
        }
        Ok(t)
    }
}

/// tokentap's provider name for a `gen_ai.provider.name` / `gen_ai.system`
/// value (well-known values of either, any case); others lower-cased with
/// `.` as `_`.
pub fn provider(raw: &str) -> String {
    let v = raw.trim().to_ascii_lowercase();
    let known = match v.as_str() {
        "openai" => "openai",
        "azure.ai.openai" | "az.ai.openai" | "azure_openai" | "azure" => "azure_openai",
        "anthropic" => "anthropic",
        "aws.bedrock" | "aws_bedrock" | "bedrock" | "aws" => "bedrock",
        "gcp.gemini" | "gcp.vertex_ai" | "gcp.gen_ai" | "gemini" | "vertex_ai" | "vertexai" | "google" => "google",
        "cohere" => "cohere",
        "mistral_ai" | "mistralai" | "mistral" => "mistral",
        "groq" => "groq",
        "deepseek" => "deepseek",
        "perplexity" => "perplexity",
        "x_ai" | "xai" => "xai",
        "ollama" => "ollama",
        "together" | "together_ai" => "together",
        "fireworks" | "fireworks_ai" => "fireworks",
        "openrouter" => "openrouter",
        _ => return v.replace('.', "_"),
    };
    known.to_owned()
}

/// tokentap's `operation` for a `gen_ai.operation.name`, in the provider's own
/// terms where the agent names it so (an Anthropic `chat` is `messages`).
pub fn operation(op: &str, provider: &str) -> String {
    let family = provider.strip_suffix("_compatible").unwrap_or(provider);
    match (op, family) {
        ("chat", "anthropic") => "messages",
        ("chat" | "generate_content", "google") => "generate_content",
        ("embeddings", "google") => "embed_content",
        ("chat", "bedrock") => "converse",
        ("text_completion", "ollama") => "generate",
        ("text_completion", _) => "completions",
        (other, _) => other,
    }
    .to_owned()
}

/// A span's or resource's attributes, read by key with the type the
/// semantic conventions give them (and the spellings SDKs use instead).
struct Attrs<'a>(&'a [KeyValue]);

impl<'a> Attrs<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
    }

    /// A string attribute; an empty string is none.
    fn str(&self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::StringValue(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    /// A non-negative integer: an int, an integral double (some SDKs send
    /// numbers as doubles), or a decimal string. Anything else is an error:
    /// a token count tokentap can't read is never guessed.
    fn uint(&self, key: &str) -> Result<Option<u64>, String> {
        let bad = || format!("{key} is not a non-negative integer");
        match self.get(key) {
            None => Ok(None),
            Some(Value::IntValue(i)) => u64::try_from(*i).map(Some).map_err(|_| bad()),
            Some(Value::DoubleValue(d)) if d.fract() == 0.0 && *d >= 0.0 && *d < 9.0e15 => Ok(Some(*d as u64)),
            Some(Value::StringValue(s)) => s.trim().parse::<u64>().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::BoolValue(b) => Some(*b),
            Value::StringValue(s) => s.parse().ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "normalise_tests.rs"]
mod tests;
