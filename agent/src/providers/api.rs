//! The vocabulary every provider shares: API shapes, what a path says, token
//! counts and what a parser read. A leaf module: everything else in `providers/`
//! imports it, it imports nothing from there.
use thiserror::Error;
use tokentap_event::{PromptFeatures, UsageSource};

use crate::http::body;

/// One API shape of a provider: what a rule file names and the record's `operation`.
#[derive(Debug, PartialEq, Eq)]
pub struct Shape {
    /// Name in rule files and docs (`chat_completions`); unique across providers.
    pub name: &'static str,
    /// The record's `operation`.
    pub operation: &'static str,
    pub stream: StreamDefault,
    /// An embeddings request: features count its inputs instead of reading a prompt.
    pub embedding: bool,
}

/// Whether a call streams when the request does not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamDefault {
    /// Only with `"stream": true`.
    IfRequested,
    /// Unless `"stream": false` (Ollama chat and generate).
    UnlessDeclined,
    /// The endpoint streams whatever the body says (`streamGenerateContent`, …).
    Always,
    /// A session of events over a WebSocket, never a POST (Realtime, Gemini Live).
    WebSocket,
}

impl StreamDefault {
    /// The call streams, given the request's `stream` field.
    pub fn streams(self, requested: Option<bool>) -> bool {
        match self {
            StreamDefault::IfRequested => requested.unwrap_or(false),
            StreamDefault::UnlessDeclined => requested.unwrap_or(true),
            StreamDefault::Always | StreamDefault::WebSocket => true,
        }
    }
}

/// A request path as the matchers see it: query and trailing `/` removed, split
/// into its non-empty segments (at least one).
#[derive(Debug)]
pub struct PathParts<'a> {
    pub path: &'a str,
    pub segs: Vec<&'a str>,
}

impl<'a> PathParts<'a> {
    /// None for a path without segments (`/`): never a call.
    pub fn new(path: &'a str) -> Option<Self> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        (!segs.is_empty()).then_some(Self { path, segs })
    }

    pub fn last(&self) -> &'a str {
        self.segs[self.segs.len() - 1]
    }

    /// The segment before the last, `""` when there is none.
    pub fn parent(&self) -> &'a str {
        self.segs.len().checked_sub(2).map_or("", |i| self.segs[i])
    }

    /// The segment after the first `name`, percent-decoded (`deployments/{d}`).
    pub fn after(&self, name: &str) -> Option<String> {
        let i = self.segs.iter().position(|s| *s == name)?;
        self.segs.get(i + 1).map(|s| percent_decode(s))
    }
}

/// What a provider makes of a path.
#[derive(Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// A call of this shape, with the model the path names (Gemini, Bedrock, Azure).
    Call(&'static Shape, Option<String>),
    /// The provider's path family, but not a call (Gemini `:countTokens`):
    /// no later provider may claim it.
    NotACall,
    /// Not this provider's.
    Pass,
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

impl Usage {
    /// For providers that count cache reads and writes apart from `input`
    /// (Anthropic, Bedrock): the record's `input` includes them.
    pub fn cache_inclusive(input: u64, output: u64, read: Option<u64>, write: Option<u64>) -> Usage {
        Usage {
            input: input.saturating_add(read.unwrap_or(0)).saturating_add(write.unwrap_or(0)),
            output,
            cached: read,
            cache_write: write,
            reasoning: None,
        }
    }
}

/// The audio parts of a call's tokens, where the provider says (each a part
/// of its [`Usage`] whole: `input`, `cached`, `output`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AudioTokens {
    pub input: Option<u64>,
    pub cached: Option<u64>,
    pub output: Option<u64>,
}

/// What was read from one exchange.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub stream: bool,
    pub usage: Option<Usage>,
    /// Audio parts of `usage` (Realtime, Gemini Live).
    pub audio: AudioTokens,
    pub usage_source: Option<UsageSource>,
    pub response_id: Option<String>,
    pub end_user: Option<String>,
    /// Response body offset of the first event carrying generated content.
    pub first_content_offset: Option<usize>,
    /// A stream's final event (with the final usage) was seen.
    pub stream_finished: bool,
    /// The client never read the whole body: the call was read from the
    /// response headers alone (`usage_source = headers`).
    pub body_unread: bool,
    /// Prompt features of the request (no prompt text).
    pub features: Option<PromptFeatures>,
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

pub fn u64_at(v: &serde_json::Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
}

pub fn str_at(v: &serde_json::Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().map(str::to_owned)
}

pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map_or(host, |h| &h[1..]);
    }
    host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

/// `%XX` escapes decoded (Bedrock model ids carry `%3A` for `:`); bad escapes kept.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A recorded provider payload under `tests/fixtures/` (tests).
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
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
    fn path_parts() {
        let p = PathParts::new("/openai/deployments/gpt%2D4o/chat/completions").unwrap();
        assert_eq!((p.parent(), p.last()), ("chat", "completions"));
        assert_eq!(p.after("deployments").as_deref(), Some("gpt-4o"));
        assert_eq!(p.after("models"), None);
        let p = PathParts::new("/x").unwrap();
        assert_eq!((p.parent(), p.last()), ("", "x"));
        assert!(PathParts::new("/").is_none() && PathParts::new("").is_none());
    }

    #[test]
    fn cache_inclusive_usage_keeps_unknown_counts_unknown() {
        let u = Usage::cache_inclusive(10, 2, Some(5), None);
        assert_eq!(u, Usage { input: 15, output: 2, cached: Some(5), cache_write: None, reasoning: None });
        // Counts from a hostile payload saturate, never wrap or panic.
        assert_eq!(Usage::cache_inclusive(u64::MAX, 0, Some(7), Some(1)).input, u64::MAX);
        assert!(StreamDefault::UnlessDeclined.streams(None));
        assert!(!StreamDefault::IfRequested.streams(None));
        assert!(StreamDefault::Always.streams(Some(false)));
    }
}
