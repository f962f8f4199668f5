//! LLM providers: recognise an API call from its request head ([`classify`]) and
//! read model, usage and ids from the exchange ([`parse`]). Token counts are
//! normalised as the record contract says (docs/record.md).
pub mod anthropic;
pub mod bedrock;
pub mod cohere;
pub mod features;
pub mod gemini;
pub mod ollama;
pub mod openai;
pub mod rules;

pub use rules::{RuleSet, Rules, RulesError};

use serde_json::Value;
use thiserror::Error;
use tokentap_event::UsageSource;

use crate::http::{body, exchange::Exchange};

/// The API shape of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    AnthropicMessages,
    GeminiGenerate,
    GeminiStream,
    GeminiEmbed,
    BedrockConverse,
    BedrockConverseStream,
    BedrockInvoke,
    BedrockInvokeStream,
    CohereChat,
    OllamaChat,
    OllamaGenerate,
    OllamaEmbed,
}

impl Api {
    const ALL: [(Api, &'static str); 16] = [
        (Api::ChatCompletions, "chat_completions"),
        (Api::Completions, "completions"),
        (Api::Responses, "responses"),
        (Api::Embeddings, "embeddings"),
        (Api::AnthropicMessages, "anthropic_messages"),
        (Api::GeminiGenerate, "gemini_generate"),
        (Api::GeminiStream, "gemini_stream"),
        (Api::GeminiEmbed, "gemini_embed"),
        (Api::BedrockConverse, "bedrock_converse"),
        (Api::BedrockConverseStream, "bedrock_converse_stream"),
        (Api::BedrockInvoke, "bedrock_invoke"),
        (Api::BedrockInvokeStream, "bedrock_invoke_stream"),
        (Api::CohereChat, "cohere_chat"),
        (Api::OllamaChat, "ollama_chat"),
        (Api::OllamaGenerate, "ollama_generate"),
        (Api::OllamaEmbed, "ollama_embed"),
    ];

    /// The shape's name in rule files.
    pub fn from_name(name: &str) -> Option<Api> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(a, _)| *a)
    }

    /// The record's `operation`.
    pub fn operation(self) -> &'static str {
        match self {
            Api::ChatCompletions | Api::CohereChat | Api::OllamaChat => "chat",
            Api::Completions => "completions",
            Api::Responses => "responses",
            Api::Embeddings | Api::OllamaEmbed => "embeddings",
            Api::AnthropicMessages => "messages",
            Api::GeminiGenerate | Api::GeminiStream => "generate_content",
            Api::GeminiEmbed => "embed_content",
            Api::BedrockConverse | Api::BedrockConverseStream => "converse",
            Api::BedrockInvoke | Api::BedrockInvokeStream => "invoke",
            Api::OllamaGenerate => "generate",
        }
    }

    /// Provider named when the host matches no rule.
    fn family_default_provider(self) -> &'static str {
        match self {
            Api::AnthropicMessages => "anthropic_compatible",
            Api::GeminiGenerate | Api::GeminiStream | Api::GeminiEmbed => "google_compatible",
            Api::BedrockConverse | Api::BedrockConverseStream | Api::BedrockInvoke | Api::BedrockInvokeStream => {
                "bedrock_compatible"
            }
            Api::CohereChat => "cohere_compatible",
            Api::OllamaChat | Api::OllamaGenerate | Api::OllamaEmbed => "ollama",
            _ => "openai_compatible",
        }
    }

    /// The response streams whatever the request says.
    fn always_streams(self) -> bool {
        matches!(self, Api::GeminiStream | Api::BedrockConverseStream | Api::BedrockInvokeStream)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub provider: String,
    pub api: Api,
    /// Model named by the path (Gemini, Bedrock, Azure deployment).
    pub path_model: Option<String>,
}

pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map_or(host, |h| &h[1..]);
    }
    host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

/// Token counts, normalised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached: Option<u64>,
    pub cache_write: Option<u64>,
    pub reasoning: Option<u64>,
}

/// What a provider parser read from one exchange.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub stream: bool,
    pub usage: Option<Usage>,
    pub usage_source: Option<UsageSource>,
    pub response_id: Option<String>,
    pub end_user: Option<String>,
    /// Response body offset of the first event carrying generated content.
    pub first_content_offset: Option<usize>,
    /// A stream's final event (with the final usage) was seen.
    pub stream_finished: bool,
    /// Prompt features of the request (no prompt text).
    pub features: Option<tokentap_event::PromptFeatures>,
    /// Service tier: as answered (OpenAI `service_tier`, Anthropic
    /// `usage.service_tier`), else as requested.
    pub service_tier: Option<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProviderError {
    #[error("response body incomplete (larger than the body cap)")]
    TruncatedBody,
    #[error("response cut short before its end (connection closed, client died)")]
    Incomplete,
    #[error(transparent)]
    Body(#[from] body::BodyError),
    #[error("response body is not the expected JSON: {0}")]
    BadJson(String),
}

/// Read model, usage and ids from an exchange. A non-2xx response yields a record
/// without usage (it bills nothing); a 2xx response that can't be read is an error
/// (counted, no record) so no number is ever invented.
pub fn parse(
    endpoint: &Endpoint,
    ex: &Exchange,
    max_body: usize,
    hash: features::Hasher,
) -> Result<Parsed, ProviderError> {
    let req_body =
        body::decode(ex.request.head.header("content-encoding"), &ex.request.body, max_body).unwrap_or_default();
    let request: Value = serde_json::from_slice(&req_body).unwrap_or(Value::Null);
    let ollama = matches!(endpoint.api, Api::OllamaChat | Api::OllamaGenerate);
    let mut parsed = Parsed {
        request_model: request
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| endpoint.path_model.clone()),
        // Ollama streams unless told not to.
        stream: request.get("stream").and_then(Value::as_bool).unwrap_or(ollama) || endpoint.api.always_streams(),
        features: features::compute(endpoint.api, &request, hash),
        service_tier: request.get("service_tier").and_then(Value::as_str).map(str::to_owned),
        ..Default::default()
    };
    let status = ex.response.head.status.unwrap_or(0);
    if !(200..300).contains(&status) {
        return Ok(parsed);
    }
    if ex.response.body_truncated {
        return Err(ProviderError::TruncatedBody);
    }
    let body = body::decode(ex.response.head.header("content-encoding"), &ex.response.body, max_body)?;
    let content_type = ex.response.head.header("content-type").unwrap_or("").to_ascii_lowercase();
    let is_sse = content_type.starts_with("text/event-stream");
    let streamed = is_sse
        || content_type.starts_with("application/vnd.amazon.eventstream")
        || content_type.starts_with("application/x-ndjson");
    parsed.stream |= streamed;
    // A cut-short response counts only if it is a stream whose final event
    // arrived (clients may stop reading before the terminating chunk).
    if !ex.response.complete && !streamed {
        return Err(ProviderError::Incomplete);
    }
    let head = &ex.response.head;
    match endpoint.api {
        Api::AnthropicMessages => anthropic::parse(&request, &body, is_sse, &mut parsed)?,
        Api::GeminiGenerate | Api::GeminiStream | Api::GeminiEmbed => {
            gemini::parse(endpoint.api, &request, &body, is_sse, &mut parsed)?
        }
        Api::BedrockConverse | Api::BedrockConverseStream | Api::BedrockInvoke | Api::BedrockInvokeStream => {
            bedrock::parse(endpoint.api, head, &body, &mut parsed)?
        }
        Api::CohereChat => cohere::parse(&body, is_sse, &mut parsed)?,
        Api::OllamaChat | Api::OllamaGenerate | Api::OllamaEmbed => ollama::parse(&body, &mut parsed)?,
        api => openai::parse(api, &request, &body, is_sse, &mut parsed)?,
    }
    if !ex.response.complete && !parsed.stream_finished {
        return Err(ProviderError::Incomplete);
    }
    if let Some(t) = answered_tier(&body, is_sse) {
        parsed.service_tier = Some(t);
    }
    // The first-content offset is only meaningful on the raw body.
    if ex.response.head.header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        parsed.first_content_offset = parsed.first_content_offset.map(|_| 0);
    }
    Ok(parsed)
}

/// The tier a response says it was served at: `service_tier` at the top level
/// (OpenAI chat, Responses under `response`) or in `usage` (Anthropic), in the
/// body or in any event of a stream.
fn answered_tier(body: &[u8], is_sse: bool) -> Option<String> {
    let find = |v: &Value| {
        ["/service_tier", "/response/service_tier", "/usage/service_tier", "/message/usage/service_tier"]
            .iter()
            .find_map(|p| v.pointer(p).and_then(Value::as_str).map(str::to_owned))
    };
    if is_sse {
        crate::http::sse::parse(body)
            .iter()
            .rev()
            .find_map(|e| serde_json::from_str::<Value>(&e.data).ok().as_ref().and_then(find))
    } else {
        serde_json::from_slice::<Value>(body).ok().as_ref().and_then(find)
    }
}

/// The events of an SSE body whose data is JSON, with the events themselves
/// (name, end offset); a stream with none is not the provider's format.
pub(crate) fn json_events(body: &[u8]) -> Result<Vec<(Value, crate::http::sse::SseEvent)>, ProviderError> {
    let evs: Vec<_> = crate::http::sse::parse(body)
        .into_iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok().map(|v| (v, e)))
        .collect();
    if evs.is_empty() {
        return Err(ProviderError::BadJson("no JSON events in the stream".into()));
    }
    Ok(evs)
}

/// A recorded provider payload under `tests/fixtures/` (tests).
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

pub(crate) fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
}

pub(crate) fn str_at(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().map(str::to_owned)
}

pub(crate) fn json(data: &[u8]) -> Result<Value, ProviderError> {
    serde_json::from_slice(data).map_err(|e| ProviderError::BadJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_stripping() {
        assert_eq!(host_without_port("a.b:443"), "a.b");
        assert_eq!(host_without_port("a.b"), "a.b");
        assert_eq!(host_without_port("[::1]:8443"), "::1");
    }

    #[test]
    fn answered_service_tier_in_bodies_and_streams() {
        let f = fixture;
        assert_eq!(answered_tier(&f("openai/chat_sync.json"), false).as_deref(), Some("default"));
        assert_eq!(answered_tier(&f("anthropic/messages_sync.json"), false).as_deref(), Some("standard"));
        let sse = b"data: {\"type\":\"response.completed\",\"response\":{\"service_tier\":\"flex\"}}\n\n";
        assert_eq!(answered_tier(sse, true).as_deref(), Some("flex"));
        assert_eq!(answered_tier(b"{}", false), None);
    }

    #[test]
    fn api_names_round_trip() {
        for (api, name) in Api::ALL {
            assert_eq!(Api::from_name(name), Some(api));
        }
        assert_eq!(Api::from_name("chat"), None);
    }
}
