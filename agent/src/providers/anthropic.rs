//! Anthropic Messages API, sync and streamed.
//!
//! Normalisation: `input = input_tokens + cache_read_input_tokens +
//! cache_creation_input_tokens`, `cached = cache_read_input_tokens`, `cache_write =
//! cache_creation_input_tokens`. In a stream `message_start` carries the input
//! usage and the last `message_delta` the final (cumulative) output count; newer
//! API versions repeat input counts in `message_delta`, which then win.
use serde_json::Value;

use super::api::{str_at, u64_at, Parsed, PathMatch, PathParts, ProviderError, Shape, StreamDefault, Usage};
use super::prompt::{self, Prompt};
use super::provider::Provider;
use super::response::{fold, Framing, Response, Seen};

pub struct Anthropic;

pub static MESSAGES: Shape =
    Shape { name: "anthropic_messages", operation: "messages", stream: StreamDefault::IfRequested, embedding: false };
static SHAPES: [&Shape; 1] = [&MESSAGES];

impl Provider for Anthropic {
    fn unnamed_host(&self) -> &'static str {
        "anthropic_compatible"
    }

    fn shapes(&self) -> &'static [&'static Shape] {
        &SHAPES
    }

    fn match_path(&self, p: &PathParts<'_>) -> PathMatch {
        if (p.parent(), p.last()) != ("v1", "messages") {
            return PathMatch::Pass;
        }
        // Azure AI Foundry serves Claude under deployments too.
        PathMatch::Call(&MESSAGES, p.after("deployments"))
    }

    fn end_user(&self, request: &Value) -> Option<String> {
        str_at(request, &["metadata", "user_id"])
    }

    fn prompt(&self, _shape: &Shape, r: &Value) -> Prompt {
        let mut p = Prompt { max_tokens: prompt::max_tokens(r, &["/max_tokens"]), ..Default::default() };
        p.system_from(r, &["system"]);
        p.tools_from(r, &["tools"]);
        p.messages_from(r.get("messages"));
        p
    }

    fn parse(
        &self,
        _shape: &Shape,
        _request: &Value,
        resp: &Response<'_>,
        out: &mut Parsed,
    ) -> Result<(), ProviderError> {
        let mut raw = Raw::default();
        if resp.framing == Framing::Sse {
            fold(resp.sse_json()?, out, |ev, out| {
                let v = ev.json;
                Ok(match ev.kind() {
                    "message_start" => {
                        if let Some(m) = v.get("message") {
                            out.response_id = str_at(m, &["id"]);
                            out.response_model = str_at(m, &["model"]);
                            if let Some(u) = m.get("usage") {
                                raw.merge(u);
                            }
                        }
                        Seen::default()
                    }
                    "message_delta" => {
                        let usage = v.get("usage");
                        if let Some(u) = usage {
                            raw.merge(u);
                        }
                        Seen { content: false, finished: usage.is_some() }
                    }
                    "message_stop" => Seen { content: false, finished: true },
                    "content_block_delta" => Seen { content: true, finished: false },
                    _ => Seen::default(),
                })
            })?;
        } else {
            let v = resp.json()?;
            out.response_id = str_at(v, &["id"]);
            out.response_model = str_at(v, &["model"]);
            if let Some(u) = v.get("usage") {
                raw.merge(u);
            }
        }
        out.usage = raw.usage();
        Ok(())
    }
}

/// Counts as they arrive, before normalisation: a stream spreads them over events.
#[derive(Default)]
struct Raw {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
}

impl Raw {
    fn merge(&mut self, u: &Value) {
        if let Some(v) = u64_at(u, &["input_tokens"]) {
            self.input = Some(v);
        }
        if let Some(v) = u64_at(u, &["output_tokens"]) {
            self.output = Some(v);
        }
        if let Some(v) = u64_at(u, &["cache_read_input_tokens"]) {
            self.cache_read = Some(v);
        }
        if let Some(v) = u64_at(u, &["cache_creation_input_tokens"]) {
            self.cache_write = Some(v);
        }
    }

    /// Absent cache counts are 0 here (Anthropic omits them when there was no
    /// cache traffic), unlike Bedrock's, which stay unknown.
    fn usage(&self) -> Option<Usage> {
        let (input, output) = (self.input?, self.output?);
        Some(Usage::cache_inclusive(
            input,
            output,
            Some(self.cache_read.unwrap_or(0)),
            Some(self.cache_write.unwrap_or(0)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::Head;
    use crate::providers::api::fixture;
    use crate::providers::provider;
    use serde_json::json;

    fn parse(req: &Value, body: &[u8], sse: bool, out: &mut Parsed) -> Result<(), ProviderError> {
        provider::read(&Anthropic, &MESSAGES, req, &Head::default(), body, sse, out)
    }

    #[test]
    fn sync_with_cache_read_and_write() {
        let mut p = Parsed::default();
        let req = json!({"model":"claude-sonnet-4-5","metadata":{"user_id":"user-7"}});
        parse(&req, &fixture("anthropic/messages_sync.json"), false, &mut p).unwrap();
        assert_eq!(p.response_id.as_deref(), Some("msg_01XFDUDYJgAACzvnptvVoYEL"));
        assert_eq!(p.response_model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        // 12 + 2048 read + 300 written.
        assert_eq!(
            p.usage,
            Some(Usage { input: 2360, output: 87, cached: Some(2048), cache_write: Some(300), reasoning: None })
        );
        assert_eq!(p.end_user.as_deref(), Some("user-7"));
    }

    #[test]
    fn stream_takes_input_from_start_and_output_from_last_delta() {
        let mut p = Parsed::default();
        parse(&json!({}), &fixture("anthropic/messages_stream.sse"), true, &mut p).unwrap();
        assert_eq!(p.response_id.as_deref(), Some("msg_014p7gG3wDgGV9EUtLvnow3U"));
        assert_eq!(
            p.usage,
            Some(Usage { input: 472, output: 15, cached: Some(0), cache_write: Some(0), reasoning: None })
        );
        assert!(p.first_content_offset.is_some());
    }

    #[test]
    fn missing_usage_gives_no_numbers() {
        let mut p = Parsed::default();
        parse(&json!({}), br#"{"id":"msg_x","model":"claude"}"#, false, &mut p).unwrap();
        assert_eq!(p.usage, None);
        assert!(parse(&json!({}), b"not json", false, &mut p).is_err());
        assert!(parse(&json!({}), b"event: ping\ndata: x\n\n", true, &mut p).is_err());
    }
}
