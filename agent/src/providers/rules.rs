//! Which requests are LLM API calls: host -> provider, path -> API shape.
//!
//! Built-in rules ship in `agent/data/providers.toml`; users add or override
//! entries in the same format without a rebuild (docs/providers.md).
use std::collections::BTreeMap;

use serde::Deserialize;
use thiserror::Error;

use super::api::{host_without_port, PathMatch, PathParts, StreamDefault};
use super::provider::{Api, Endpoint};
use super::registry::{self, REGISTRY};
use crate::http::h1::Head;

const BUILTIN: &str = include_str!("../../data/providers.toml");
/// Provider name that excludes a host.
pub const IGNORE: &str = "ignore";

/// The rule tables as written in TOML.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// Host pattern (exact, or with one `*`) -> provider name.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    /// Path (or `*suffix`) -> API shape name.
    #[serde(default)]
    pub paths: BTreeMap<String, String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("provider rules: unknown API shape {0:?} (see docs/providers.md for the list)")]
    UnknownApi(String),
    #[error("provider rules: host pattern {0:?} has more than one '*'")]
    BadPattern(String),
    #[error("provider rules: {0}")]
    Parse(String),
}

impl RuleSet {
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        toml::from_str(text).map_err(|e| RulesError::Parse(e.to_string()))
    }

    /// `other`'s entries added, replacing equal keys.
    pub fn merged(mut self, other: &RuleSet) -> Self {
        self.hosts.extend(other.hosts.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.paths.extend(other.paths.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }
}

/// A host pattern split at its `*`.
#[derive(Clone, Debug)]
struct HostPattern {
    prefix: String,
    /// `None`: exact match on `prefix`.
    suffix: Option<String>,
}

impl HostPattern {
    fn new(p: &str) -> Result<Self, RulesError> {
        let p = p.to_ascii_lowercase();
        match p.split_once('*') {
            None => Ok(Self { prefix: p, suffix: None }),
            Some((_, s)) if s.contains('*') => Err(RulesError::BadPattern(p)),
            Some((pre, s)) => Ok(Self { prefix: pre.to_owned(), suffix: Some(s.to_owned()) }),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match &self.suffix {
            None => host == self.prefix,
            Some(s) => {
                host.len() > self.prefix.len() + s.len() && host.starts_with(&self.prefix) && host.ends_with(s.as_str())
            }
        }
    }

    /// More specific patterns are tried first.
    fn specificity(&self) -> usize {
        self.prefix.len() + self.suffix.as_ref().map_or(1000, String::len)
    }
}

#[derive(Clone, Debug)]
pub struct Rules {
    hosts: Vec<(HostPattern, String)>,
    paths: Vec<(String, Api)>,
}

impl Default for Rules {
    fn default() -> Self {
        Self::new(&RuleSet::default()).expect("built-in provider rules are valid")
    }
}

impl Rules {
    /// Built-in rules with `user`'s on top.
    pub fn new(user: &RuleSet) -> Result<Self, RulesError> {
        let set = RuleSet::parse(BUILTIN)?.merged(user);
        let mut hosts = Vec::new();
        for (pat, provider) in &set.hosts {
            hosts.push((HostPattern::new(pat)?, provider.clone()));
        }
        hosts.sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
        let mut paths = Vec::new();
        for (path, api) in &set.paths {
            let api = registry::api(api).ok_or_else(|| RulesError::UnknownApi(api.clone()))?;
            paths.push((path.clone(), api));
        }
        paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(Self { hosts, paths })
    }

    fn provider_for_host(&self, host: &str) -> Option<&str> {
        self.hosts.iter().find(|(p, _)| p.matches(host)).map(|(_, provider)| provider.as_str())
    }

    /// The provider whose API `host` (a TLS server name or a `Host` header,
    /// port allowed) serves, by the host rules; None for other hosts and for
    /// hosts the rules `ignore`. Names connections at the socket layer.
    pub fn llm_host(&self, host: &str) -> Option<&str> {
        let host = host_without_port(host).to_ascii_lowercase();
        self.provider_for_host(&host).filter(|p| *p != IGNORE)
    }

    fn user_path(&self, path: &str) -> Option<Api> {
        self.paths
            .iter()
            .find(|(p, _)| match p.strip_prefix('*') {
                Some(suffix) => path.ends_with(suffix),
                None => path == p,
            })
            .map(|(_, api)| *api)
    }

    /// Is this request an LLM API call, and of which provider and shape?
    pub fn classify(&self, head: &Head) -> Option<Endpoint> {
        // Calls are POSTs, or a WebSocket (opened by a GET's upgrade or an
        // HTTP/2 extended CONNECT) whose messages are the calls (Responses,
        // Realtime, Gemini Live).
        let websocket = head.opens_websocket();
        if head.method.as_deref() != Some("POST") && !websocket {
            return None;
        }
        let path = head.path.as_deref()?;
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        let (api, path_model) = match self.user_path(path) {
            Some(api) => (api, None),
            None => shape_of_path(path)?,
        };
        // A POST to a WebSocket-only path is no call.
        if api.shape.stream == StreamDefault::WebSocket && !websocket {
            return None;
        }
        let host = head.header("host").map(host_without_port).map(str::to_ascii_lowercase);
        let provider = match host.as_deref().and_then(|h| self.provider_for_host(h)) {
            // A host the user excludes (an in-house gateway whose upstream calls
            // are captured too: counting both hops would double count).
            Some(IGNORE) => return None,
            Some(p) => p.to_owned(),
            None => api.provider.unnamed_host().to_owned(),
        };
        Some(Endpoint { provider, api, path_model })
    }
}

/// The API shape a path has, and the model it names (Gemini, Bedrock, Azure
/// deployments carry the model in the path, not the body): the first provider,
/// in registry order, that claims the path decides.
fn shape_of_path(path: &str) -> Option<(Api, Option<String>)> {
    let parts = PathParts::new(path)?;
    for &provider in REGISTRY {
        match provider.match_path(&parts) {
            PathMatch::Call(shape, model) => return Some((Api { provider, shape }, model)),
            PathMatch::NotACall => return None,
            PathMatch::Pass => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::api::percent_decode;

    /// The shape a rule file names.
    fn api(name: &str) -> Api {
        registry::api(name).unwrap()
    }

    fn head(host: &str, path: &str) -> Head {
        Head {
            method: Some("POST".into()),
            path: Some(path.into()),
            headers: vec![("host".into(), host.as_bytes().to_vec())],
            ..Default::default()
        }
    }

    fn c(r: &Rules, h: &str, p: &str) -> Option<(String, Api, Option<String>)> {
        r.classify(&head(h, p)).map(|e| (e.provider, e.api, e.path_model))
    }

    #[test]
    fn classifies_by_host_and_path() {
        let r = Rules::default();
        let c = |h: &str, p: &str| c(&r, h, p).map(|(p, a, _)| (p, a));
        assert_eq!(c("api.openai.com", "/v1/chat/completions"), Some(("openai".into(), api("chat_completions"))));
        assert_eq!(c("api.openai.com:443", "/v1/responses"), Some(("openai".into(), api("responses"))));
        assert_eq!(c("api.openai.com", "/v1/embeddings?x=1"), Some(("openai".into(), api("embeddings"))));
        assert_eq!(c("api.openai.com", "/v1/completions"), Some(("openai".into(), api("completions"))));
        assert_eq!(c("api.anthropic.com", "/v1/messages"), Some(("anthropic".into(), api("anthropic_messages"))));
        assert_eq!(
            c("127.0.0.1:8443", "/v1/chat/completions"),
            Some(("openai_compatible".into(), api("chat_completions")))
        );
        assert_eq!(c("localhost", "/v1/messages"), Some(("anthropic_compatible".into(), api("anthropic_messages"))));
        assert_eq!(c("api.openai.com", "/v1/models"), None);
        assert_eq!(c("example.com", "/index.html"), None);
        assert_eq!(c("evilopenai.azure.com", "/v1/chat/completions").unwrap().0, "openai_compatible");
        let mut get = head("api.openai.com", "/v1/responses");
        get.method = Some("GET".into());
        assert_eq!(r.classify(&get), None);
    }

    #[test]
    fn openai_compatible_hosts_are_named() {
        let r = Rules::default();
        for (host, path, provider) in [
            ("api.mistral.ai", "/v1/chat/completions", "mistral"),
            ("api.groq.com", "/openai/v1/chat/completions", "groq"),
            ("api.deepseek.com", "/chat/completions", "deepseek"),
            ("api.together.xyz", "/v1/chat/completions", "together"),
            ("api.fireworks.ai", "/inference/v1/chat/completions", "fireworks"),
            ("openrouter.ai", "/api/v1/chat/completions", "openrouter"),
            ("api.x.ai", "/v1/chat/completions", "xai"),
            ("api.perplexity.ai", "/chat/completions", "perplexity"),
            ("vllm.internal:8000", "/v1/chat/completions", "openai_compatible"),
            ("tgi:8080", "/v1/chat/completions", "openai_compatible"),
            ("llama-cpp:8080", "/v1/completions", "openai_compatible"),
        ] {
            assert_eq!(c(&r, host, path).map(|x| x.0).as_deref(), Some(provider), "{host}{path}");
        }
    }

    #[test]
    fn path_shapes_carry_the_model() {
        let r = Rules::default();
        assert_eq!(
            c(&r, "my.openai.azure.com", "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"),
            Some(("azure_openai".into(), api("chat_completions"), Some("gpt4o".into())))
        );
        assert_eq!(
            c(&r, "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:generateContent"),
            Some(("google".into(), api("gemini_generate"), Some("gemini-2.0-flash".into())))
        );
        assert_eq!(
            c(&r, "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse")
                .map(|x| x.1),
            Some(api("gemini_stream"))
        );
        assert_eq!(
            c(
                &r,
                "us-central1-aiplatform.googleapis.com",
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
            ),
            Some(("google".into(), api("gemini_generate"), Some("gemini-2.5-pro".into())))
        );
        assert_eq!(
            c(&r, "generativelanguage.googleapis.com", "/v1beta/models/text-embedding-004:embedContent").map(|x| x.1),
            Some(api("gemini_embed"))
        );
        assert_eq!(c(&r, "generativelanguage.googleapis.com", "/v1beta/models/x:countTokens"), None);
        assert_eq!(
            c(
                &r,
                "bedrock-runtime.us-east-1.amazonaws.com",
                "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
            ),
            Some(("bedrock".into(), api("bedrock_converse"), Some("anthropic.claude-3-haiku-20240307-v1:0".into())))
        );
        for (op, api) in [
            ("converse-stream", api("bedrock_converse_stream")),
            ("invoke", api("bedrock_invoke")),
            ("invoke-with-response-stream", api("bedrock_invoke_stream")),
        ] {
            let p = format!("/model/m/{op}");
            assert_eq!(c(&r, "bedrock-runtime.eu-west-1.amazonaws.com", &p).map(|x| x.1), Some(api));
        }
        assert_eq!(
            c(&r, "api.cohere.com", "/v2/chat").map(|x| (x.0, x.1)),
            Some(("cohere".into(), api("cohere_chat")))
        );
        assert_eq!(
            c(&r, "localhost:11434", "/api/chat").map(|x| (x.0, x.1)),
            Some(("ollama".into(), api("ollama_chat")))
        );
        assert_eq!(c(&r, "ollama:11434", "/api/generate").map(|x| x.1), Some(api("ollama_generate")));
        assert_eq!(c(&r, "ollama:11434", "/api/embeddings").map(|x| x.1), Some(api("ollama_embed")));
        assert_eq!(c(&r, "ollama:11434", "/api/tags"), None);
    }

    /// Registry order must keep these: a claimed-but-unknown Gemini method or
    /// Bedrock operation is not a call (not "the next shape that fits"), Ollama's
    /// exact paths win over OpenAI's `*/embeddings`, Gemini's `models/x:method`
    /// wins over Bedrock's `/model/{id}/{op}`, and an Azure deployment names the
    /// model of every shape of the last group, Anthropic's included.
    #[test]
    fn path_precedence_is_kept() {
        let r = Rules::default();
        let shape = |p: &str| c(&r, "localhost", p).map(|x| (x.1, x.2));
        assert_eq!(shape("/model/x/completions"), None);
        assert_eq!(shape("/model/x/embeddings"), None);
        assert_eq!(shape("/model/x/chat"), None);
        assert_eq!(shape("/v1beta/models/x:countTokens"), None);
        assert_eq!(shape("/v1beta/models/x:countTokens/completions"), Some((api("completions"), None)));
        assert_eq!(shape("/model/models/x:generateContent"), Some((api("gemini_generate"), Some("x".into()))));
        assert_eq!(shape("/a/model/x/converse"), None);
        assert_eq!(shape("/openai/deployments/d/v1/messages"), Some((api("anthropic_messages"), Some("d".into()))));
        assert_eq!(shape("/openai/deployments/d%2Fe/embeddings"), Some((api("embeddings"), Some("d/e".into()))));
        assert_eq!(shape("/api/embeddings"), Some((api("ollama_embed"), None)));
        assert_eq!(shape("/api/v1/embeddings"), Some((api("embeddings"), None)));
        assert_eq!(shape("/api/embed/"), Some((api("ollama_embed"), None)));
        assert_eq!(shape("/v2/chat"), Some((api("cohere_chat"), None)));
        assert_eq!(shape("/v2/chat/completions"), Some((api("chat_completions"), None)));
        assert_eq!(shape("/v1/chat/completions/?stream=1"), Some((api("chat_completions"), None)));
        assert_eq!(shape("/messages"), None);
        assert_eq!(shape("/"), None);
        assert_eq!(shape(""), None);
        // A host no rule names: the shape's family decides the provider.
        let provider = |p: &str| c(&r, "localhost", p).map(|x| x.0);
        for (path, want) in [
            ("/v1/responses", "openai_compatible"),
            ("/v1/messages", "anthropic_compatible"),
            ("/v1/models/m:streamGenerateContent", "google_compatible"),
            ("/model/m/invoke", "bedrock_compatible"),
            ("/v2/chat", "cohere_compatible"),
            ("/api/generate", "ollama"),
        ] {
            assert_eq!(provider(path).as_deref(), Some(want), "{path}");
        }
        // User paths come before the built-in shapes.
        let user = RuleSet::parse("[paths]\n\"/model/x/completions\" = \"completions\"").unwrap();
        let r = Rules::new(&user).unwrap();
        assert_eq!(c(&r, "h", "/model/x/completions").map(|x| (x.1, x.2)), Some((api("completions"), None)));
    }

    #[test]
    fn user_rules_extend_and_override() {
        let user = RuleSet::parse(
            r#"
            [hosts]
            "llm.internal" = "openai"
            "api.groq.com" = "groq-eu"
            "litellm.internal" = "ignore"
            [paths]
            "/gateway/llm" = "chat_completions"
            "*/invoke-llm" = "anthropic_messages"
            "#,
        )
        .unwrap();
        let r = Rules::new(&user).unwrap();
        assert_eq!(c(&r, "llm.internal:8000", "/v1/chat/completions").unwrap().0, "openai");
        assert_eq!(c(&r, "api.groq.com", "/openai/v1/chat/completions").unwrap().0, "groq-eu");
        assert_eq!(c(&r, "gw", "/gateway/llm").map(|x| x.1), Some(api("chat_completions")));
        assert_eq!(c(&r, "litellm.internal:4000", "/v1/chat/completions"), None);
        assert_eq!(c(&r, "gw", "/a/b/invoke-llm").map(|x| x.1), Some(api("anthropic_messages")));
        let bad = RuleSet::parse("[paths]\n\"/x\" = \"nope\"").unwrap();
        assert_eq!(Rules::new(&bad).unwrap_err(), RulesError::UnknownApi("nope".into()));
        let bad = RuleSet::parse("[hosts]\n\"*.a.*\" = \"p\"").unwrap();
        assert!(matches!(Rules::new(&bad), Err(RulesError::BadPattern(_))));
        assert!(RuleSet::parse("[hosts]\nx = 1").is_err());
    }

    #[test]
    fn wildcards() {
        let p = HostPattern::new("bedrock-runtime.*.amazonaws.com").unwrap();
        assert!(p.matches("bedrock-runtime.us-east-1.amazonaws.com"));
        assert!(!p.matches("bedrock-runtime..amazonaws.com"));
        assert!(!p.matches("bedrock.us-east-1.amazonaws.com"));
        let p = HostPattern::new("*.openai.azure.com").unwrap();
        assert!(p.matches("x.openai.azure.com"));
        assert!(!p.matches("evilopenai.azure.com"));
        assert_eq!(percent_decode("a%3Ab%zz%4"), "a:b%zz%4");
    }
}
