//! Cohere v2 chat (`/v2/chat`), sync and streamed (SSE, usage in `message-end`).
//!
//! Normalisation: the billed units (`usage.billed_units.input_tokens` /
//! `output_tokens`) are what Cohere charges; the raw `usage.tokens` counts are the
//! fallback when billed units are absent.
use serde_json::Value;

use super::api::{str_at, u64_at, Parsed, PathMatch, PathParts, ProviderError, Shape, StreamDefault, Usage};
use super::prompt::{self, Prompt};
use super::provider::Provider;
use super::response::{fold, Framing, Response, Seen};

pub struct Cohere;

pub static CHAT: Shape =
    Shape { name: "cohere_chat", operation: "chat", stream: StreamDefault::IfRequested, embedding: false };
static SHAPES: [&Shape; 1] = [&CHAT];

impl Provider for Cohere {
    fn unnamed_host(&self) -> &'static str {
        "cohere_compatible"
    }

    fn shapes(&self) -> &'static [&'static Shape] {
        &SHAPES
    }

    fn match_path(&self, p: &PathParts<'_>) -> PathMatch {
        if (p.parent(), p.last()) == ("v2", "chat") {
            PathMatch::Call(&CHAT, None)
        } else {
            PathMatch::Pass
        }
    }

    fn prompt(&self, _shape: &Shape, r: &Value) -> Prompt {
        let mut p = Prompt { max_tokens: prompt::max_tokens(r, &["/max_tokens"]), ..Default::default() };
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
        if resp.framing == Framing::Sse {
            fold(resp.sse_json()?, out, |ev, out| {
                Ok(match ev.json.get("type").and_then(Value::as_str).unwrap_or("") {
                    "message-start" => {
                        out.response_id = str_at(ev.json, &["id"]);
                        Seen::default()
                    }
                    "content-delta" => Seen { content: true, finished: false },
                    "message-end" => {
                        out.usage = ev.json.pointer("/delta/usage").and_then(usage);
                        Seen { content: false, finished: true }
                    }
                    _ => Seen::default(),
                })
            })?;
        } else {
            let v = resp.json()?;
            out.response_id = str_at(v, &["id"]);
            out.usage = v.get("usage").and_then(usage);
        }
        Ok(())
    }
}

fn usage(u: &Value) -> Option<Usage> {
    let pick = |k: &str| u64_at(u, &["billed_units", k]).or_else(|| u64_at(u, &["tokens", k]));
    Some(Usage { input: pick("input_tokens")?, output: pick("output_tokens").unwrap_or(0), ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::Head;
    use crate::providers::provider;

    fn parse(body: &[u8], sse: bool, out: &mut Parsed) -> Result<(), ProviderError> {
        provider::read(&Cohere, &CHAT, &Value::Null, &Head::default(), body, sse, out)
    }

    #[test]
    fn sync_uses_billed_units() {
        let body = crate::providers::api::fixture("cohere/chat.json");
        let mut p = Parsed::default();
        parse(&body, false, &mut p).unwrap();
        assert_eq!(p.usage.map(|u| (u.input, u.output)), Some((5, 418)));
        assert_eq!(p.response_id.as_deref(), Some("c14c80c3-18eb-4519-9460-6c92edd8cfb4"));
    }

    #[test]
    fn stream_reads_message_end() {
        let body =
            std::fs::read(format!("{}/tests/fixtures/cohere/chat_stream.sse", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let mut p = Parsed::default();
        parse(&body, true, &mut p).unwrap();
        assert_eq!(p.usage.map(|u| (u.input, u.output)), Some((8, 12)));
        assert!(p.stream_finished);
        assert!(p.first_content_offset.is_some());
        let cut = &body[..body.len() / 2];
        let mut p = Parsed::default();
        parse(cut, true, &mut p).unwrap();
        assert!(!p.stream_finished);
    }
}
