//! The interface every provider implements ([`Provider`]), and the handle to one
//! of its API shapes that classification hands on ([`Api`], [`Endpoint`]).
use serde_json::Value;
use tokentap_event::UsageSource;

use super::api::{Parsed, PathMatch, PathParts, ProviderError, Shape};
use super::prompt::Prompt;
use super::response::Response;
use crate::http::ws_session::{WsCalls, WsRole};

/// One LLM API family: the paths it answers, and how to read its requests and
/// responses. Implementations are unit structs listed once, in `providers/mod.rs`.
pub trait Provider: Sync + 'static {
    /// Provider named when no host rule matches (`openai_compatible`).
    fn unnamed_host(&self) -> &'static str;

    /// Every shape this provider's [`Provider::match_path`] returns.
    fn shapes(&self) -> &'static [&'static Shape];

    /// What this provider makes of a path. Providers are asked in registry order;
    /// the first that does not [`PathMatch::Pass`] decides.
    fn match_path(&self, path: &PathParts<'_>) -> PathMatch;

    /// The end user the request body names (read for answered calls only).
    fn end_user(&self, _request: &Value) -> Option<String> {
        None
    }

    /// The request's prompt, read from this provider's spellings.
    fn prompt(&self, shape: &Shape, request: &Value) -> Prompt {
        Prompt::any(shape, request)
    }

    /// Model, usage, ids and stream progress from a 2xx response. `out` already
    /// holds what the request said (model, stream, tier). A body that is not the
    /// provider's format is an error: no number is ever invented.
    fn parse(&self, shape: &Shape, request: &Value, resp: &Response<'_>, out: &mut Parsed)
        -> Result<(), ProviderError>;

    /// Whether this shape's response headers carry the usage, so that a call
    /// whose body the client never read whole is still recorded (Bedrock
    /// InvokeModel: `usage_source = headers`).
    fn usage_in_headers(&self, _shape: &Shape) -> bool {
        false
    }

    /// Shapes spoken over a WebSocket: what one message is to the calls
    /// ([`WsRole`]); the events a call keeps are handed to [`Provider::parse`]
    /// as a server-sent-event stream.
    fn ws_role(&self, _shape: &Shape, _from_client: bool, _msg: &Value) -> WsRole {
        WsRole::Ignore
    }

    /// The request body a WebSocket call is read as (see [`WsCalls::ws_request`]).
    fn ws_request(&self, _shape: &Shape, _path: &str, _session: [Option<&Value>; 2], request: Option<&Value>) -> Value {
        request.cloned().unwrap_or(Value::Null)
    }
}

/// One API shape of one provider: what [`super::rules::Rules`] classifies a request as.
#[derive(Clone, Copy)]
pub struct Api {
    pub provider: &'static dyn Provider,
    pub shape: &'static Shape,
}

impl Api {
    /// The shape's name in rule files.
    pub fn name(self) -> &'static str {
        self.shape.name
    }

    /// The record's `operation`.
    pub fn operation(self) -> &'static str {
        self.shape.operation
    }

    pub fn usage_in_headers(self) -> bool {
        self.provider.usage_in_headers(self.shape)
    }

    /// What a 2xx response and its request say: the body's end user (only
    /// answered calls have one), the provider's parse, then the rule all
    /// providers share: usage read without a stated source was reported.
    pub fn read(self, request: &Value, resp: &Response<'_>, out: &mut Parsed) -> Result<(), ProviderError> {
        out.end_user = self.provider.end_user(request);
        self.provider.parse(self.shape, request, resp, out)?;
        if out.usage.is_some() && out.usage_source.is_none() {
            out.usage_source = Some(UsageSource::Reported);
        }
        Ok(())
    }
}

/// Shape names are unique across providers (a test checks it).
impl PartialEq for Api {
    fn eq(&self, other: &Self) -> bool {
        self.shape.name == other.shape.name
    }
}

impl Eq for Api {}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.shape.name)
    }
}

/// What a request was classified as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub provider: String,
    pub api: Api,
    /// Model named by the path (Gemini, Bedrock, Azure deployment).
    pub path_model: Option<String>,
}

impl WsCalls for Endpoint {
    fn ws_role(&self, from_client: bool, msg: &Value) -> WsRole {
        self.api.provider.ws_role(self.api.shape, from_client, msg)
    }

    fn ws_request(&self, path: &str, session: [Option<&Value>; 2], request: Option<&Value>) -> Value {
        self.api.provider.ws_request(self.api.shape, path, session, request)
    }
}

/// `provider`'s parse of `body` as `shape` (a `text/event-stream` when `sse`),
/// as the call path runs it.
#[cfg(test)]
pub(crate) fn read(
    provider: &'static dyn Provider,
    shape: &'static Shape,
    request: &Value,
    head: &crate::http::h1::Head,
    body: &[u8],
    sse: bool,
    out: &mut Parsed,
) -> Result<(), ProviderError> {
    let mut head = head.clone();
    if sse {
        head.headers.push(("content-type".into(), b"text/event-stream".to_vec()));
    }
    Api { provider, shape }.read(request, &Response::new(&head, body), out)
}
