//! LLM providers: recognise an API call from its request head ([`classify`]) and
//! read model, usage and ids from the exchange ([`parse`]). Token counts are
//! normalised as the record contract says (docs/record.md).
pub mod anthropic;
pub mod openai;

use std::collections::BTreeMap;

use serde_json::Value;
use thiserror::Error;
use tokentap_event::UsageSource;

use crate::http::{body, exchange::Exchange, h1::Head};

/// The API shape of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    AnthropicMessages,
}

impl Api {
    pub fn operation(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat",
            Api::Completions => "completions",
            Api::Responses => "responses",
            Api::Embeddings => "embeddings",
            Api::AnthropicMessages => "messages",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub provider: String,
    pub api: Api,
}

/// Host -> provider rules. Built-in hosts plus the user's (`[providers.hosts]` in
/// the config file), exact host or `*.suffix`.
#[derive(Clone, Debug)]
pub struct Rules {
    hosts: Vec<(String, String)>,
}

const BUILTIN_HOSTS: &[(&str, &str)] = &[
    ("api.openai.com", "openai"),
    ("*.openai.azure.com", "azure_openai"),
    ("*.cognitiveservices.azure.com", "azure_openai"),
    ("api.anthropic.com", "anthropic"),
];

impl Default for Rules {
    fn default() -> Self {
        Self::new(&BTreeMap::new())
    }
}

impl Rules {
    /// User rules come first so they can override built-ins.
    pub fn new(user: &BTreeMap<String, String>) -> Self {
        let mut hosts: Vec<(String, String)> = user.iter().map(|(h, p)| (h.to_ascii_lowercase(), p.clone())).collect();
        hosts.extend(BUILTIN_HOSTS.iter().map(|(h, p)| (h.to_string(), p.to_string())));
        Self { hosts }
    }

    fn provider_for_host(&self, host: &str) -> Option<&str> {
        self.hosts.iter().find_map(|(pat, provider)| {
            let hit = match pat.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len()
                        && host.ends_with(suffix)
                        && host[..host.len() - suffix.len()].ends_with('.')
                }
                None => host == pat,
            };
            hit.then_some(provider.as_str())
        })
    }

    /// Is this request an LLM API call, and of which provider and shape?
    pub fn classify(&self, head: &Head) -> Option<Endpoint> {
        if head.method.as_deref() != Some("POST") {
            return None;
        }
        let path = head.path.as_deref()?;
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        let host = head.header("host").map(host_without_port).map(str::to_ascii_lowercase);
        let api = api_for_path(path)?;
        let known = host.as_deref().and_then(|h| self.provider_for_host(h));
        let provider = match (known, api) {
            (Some(p), _) => p.to_owned(),
            (None, Api::AnthropicMessages) => "anthropic_compatible".to_owned(),
            (None, _) => "openai_compatible".to_owned(),
        };
        Some(Endpoint { provider, api })
    }
}

pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map_or(host, |h| &h[1..]);
    }
    host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

fn api_for_path(path: &str) -> Option<Api> {
    let last = path.rsplit('/').next()?;
    let parent = path.rsplit('/').nth(1).unwrap_or("");
    Some(match (parent, last) {
        ("chat", "completions") => Api::ChatCompletions,
        (_, "completions") => Api::Completions,
        (_, "responses") => Api::Responses,
        (_, "embeddings") => Api::Embeddings,
        ("v1", "messages") => Api::AnthropicMessages,
        _ => return None,
    })
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
pub fn parse(endpoint: &Endpoint, ex: &Exchange, max_body: usize) -> Result<Parsed, ProviderError> {
    let req_body =
        body::decode(ex.request.head.header("content-encoding"), &ex.request.body, max_body).unwrap_or_default();
    let request: Value = serde_json::from_slice(&req_body).unwrap_or(Value::Null);
    let mut parsed = Parsed {
        request_model: request.get("model").and_then(Value::as_str).map(str::to_owned),
        stream: request.get("stream").and_then(Value::as_bool).unwrap_or(false),
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
    let is_sse = ex
        .response
        .head
        .header("content-type")
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("text/event-stream"));
    parsed.stream |= is_sse;
    // A cut-short response counts only if it is a stream whose final event
    // arrived (clients may stop reading before the terminating chunk).
    if !ex.response.complete && !is_sse {
        return Err(ProviderError::Incomplete);
    }
    match endpoint.api {
        Api::AnthropicMessages => anthropic::parse(&request, &body, is_sse, &mut parsed)?,
        api => openai::parse(api, &request, &body, is_sse, &mut parsed)?,
    }
    if !ex.response.complete && !parsed.stream_finished {
        return Err(ProviderError::Incomplete);
    }
    // The first-content offset is only meaningful on the raw body.
    if ex.response.head.header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        parsed.first_content_offset = parsed.first_content_offset.map(|_| 0);
    }
    Ok(parsed)
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

    fn head(host: &str, path: &str) -> Head {
        Head {
            method: Some("POST".into()),
            path: Some(path.into()),
            headers: vec![("host".into(), host.as_bytes().to_vec())],
            ..Default::default()
        }
    }

    #[test]
    fn classifies_by_host_and_path() {
        let r = Rules::default();
        let c = |h: &str, p: &str| r.classify(&head(h, p)).map(|e| (e.provider, e.api));
        assert_eq!(c("api.openai.com", "/v1/chat/completions"), Some(("openai".into(), Api::ChatCompletions)));
        assert_eq!(c("api.openai.com:443", "/v1/responses"), Some(("openai".into(), Api::Responses)));
        assert_eq!(c("api.openai.com", "/v1/embeddings?x=1"), Some(("openai".into(), Api::Embeddings)));
        assert_eq!(c("api.openai.com", "/v1/completions"), Some(("openai".into(), Api::Completions)));
        assert_eq!(
            c("my.openai.azure.com", "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"),
            Some(("azure_openai".into(), Api::ChatCompletions))
        );
        assert_eq!(c("api.anthropic.com", "/v1/messages"), Some(("anthropic".into(), Api::AnthropicMessages)));
        assert_eq!(
            c("127.0.0.1:8443", "/v1/chat/completions"),
            Some(("openai_compatible".into(), Api::ChatCompletions))
        );
        assert_eq!(c("localhost", "/v1/messages"), Some(("anthropic_compatible".into(), Api::AnthropicMessages)));
        assert_eq!(c("api.openai.com", "/v1/models"), None);
        assert_eq!(c("example.com", "/index.html"), None);
        assert_eq!(c("evilopenai.azure.com", "/v1/chat/completions").unwrap().0, "openai_compatible");
        let mut get = head("api.openai.com", "/v1/responses");
        get.method = Some("GET".into());
        assert_eq!(r.classify(&get), None);
    }

    #[test]
    fn user_rules_override_builtins() {
        let mut user = BTreeMap::new();
        user.insert("llm.internal".to_string(), "openai".to_string());
        user.insert("*.groq.com".to_string(), "groq".to_string());
        let r = Rules::new(&user);
        assert_eq!(r.classify(&head("llm.internal:8000", "/v1/chat/completions")).unwrap().provider, "openai");
        assert_eq!(r.classify(&head("api.groq.com", "/openai/v1/chat/completions")).unwrap().provider, "groq");
    }

    #[test]
    fn host_port_stripping() {
        assert_eq!(host_without_port("a.b:443"), "a.b");
        assert_eq!(host_without_port("a.b"), "a.b");
        assert_eq!(host_without_port("[::1]:8443"), "::1");
    }
}
