//! OpenAI and OpenAI-compatible APIs: chat completions, legacy completions,
//! Responses and embeddings, sync and streamed; the Responses API over a
//! WebSocket too (`response.create` up, the SSE events down, one message each).
//!
//! Normalisation: `input = prompt_tokens` (includes `cached_tokens`), `output =
//! completion_tokens` (includes `reasoning_tokens`); Responses API
//! `input_tokens`/`output_tokens` likewise. A chat stream without usage
//! (`stream_options.include_usage` unset) is estimated with the model's tokenizer.
use serde_json::Value;
use tokentap_event::{tokens, UsageSource};

use super::api::{str_at, u64_at, Parsed, PathMatch, PathParts, ProviderError, Shape, StreamDefault, Usage};
use super::prompt::{self, Prompt};
use super::provider::Provider;
use super::response::{fold, Framing, Response, Seen};
use crate::http::ws_session::WsRole;

pub struct OpenAi;

pub static CHAT: Shape =
    Shape { name: "chat_completions", operation: "chat", stream: StreamDefault::IfRequested, embedding: false };
pub static COMPLETIONS: Shape =
    Shape { name: "completions", operation: "completions", stream: StreamDefault::IfRequested, embedding: false };
pub static RESPONSES: Shape =
    Shape { name: "responses", operation: "responses", stream: StreamDefault::IfRequested, embedding: false };
pub static EMBEDDINGS: Shape =
    Shape { name: "embeddings", operation: "embeddings", stream: StreamDefault::IfRequested, embedding: true };
static SHAPES: [&Shape; 4] = [&CHAT, &COMPLETIONS, &RESPONSES, &EMBEDDINGS];

impl Provider for OpenAi {
    fn unnamed_host(&self) -> &'static str {
        "openai_compatible"
    }

    fn shapes(&self) -> &'static [&'static Shape] {
        &SHAPES
    }

    /// Any prefix (`/v1`, `/openai/v1`, `/api/v1`, none): the last segments decide.
    fn match_path(&self, p: &PathParts<'_>) -> PathMatch {
        let shape = match (p.parent(), p.last()) {
            ("chat", "completions") => &CHAT,
            (_, "completions") => &COMPLETIONS,
            (_, "responses") => &RESPONSES,
            (_, "embeddings") => &EMBEDDINGS,
            _ => return PathMatch::Pass,
        };
        // Azure OpenAI: /openai/deployments/{deployment}/chat/completions
        PathMatch::Call(shape, p.after("deployments"))
    }

    fn end_user(&self, request: &Value) -> Option<String> {
        str_at(request, &["user"]).or_else(|| str_at(request, &["safety_identifier"]))
    }

    /// Chat `messages`, Responses `instructions` and `input` (items or a string),
    /// completions `prompt`.
    fn prompt(&self, shape: &Shape, r: &Value) -> Prompt {
        let max_tokens = prompt::max_tokens(r, &["/max_tokens", "/max_completion_tokens", "/max_output_tokens"]);
        if shape.embedding {
            return Prompt::embedding(r.get("input").map_or(0, prompt::count), r.get("input"), max_tokens);
        }
        let mut p = Prompt { max_tokens, ..Default::default() };
        p.system_from(r, &["instructions"]);
        p.tools_from(r, &["tools"]);
        p.messages_from(r.get("messages").or_else(|| r.get("input").filter(|i| i.is_array())));
        p.prompt_from(r, &["prompt", "input"]);
        p
    }

    fn parse(
        &self,
        shape: &Shape,
        request: &Value,
        resp: &Response<'_>,
        out: &mut Parsed,
    ) -> Result<(), ProviderError> {
        match (shape == &RESPONSES, resp.framing == Framing::Sse) {
            (true, false) => responses_object(resp.json()?, out),
            (true, true) => responses_stream(resp, out)?,
            (false, false) => {
                let v = resp.json()?;
                out.response_id = str_at(v, &["id"]);
                out.response_model = str_at(v, &["model"]);
                out.usage = chat_usage(v.get("usage"));
                if shape == &EMBEDDINGS {
                    out.usage = out.usage.map(|u| Usage { output: 0, ..u });
                }
            }
            (false, true) => chat_stream(request, resp, out)?,
        }
        Ok(())
    }

    /// The Responses API over a WebSocket: each `response.create` is a call
    /// (a `generate: false` warm-up too: it is answered with its own usage),
    /// answered by the events of the SSE stream; an `error` ends it. The
    /// session decides which call an `error` is: none when no call is open (a
    /// refused message that asked for no response), the waiting request's when
    /// one was sent while a response streams (see `WsSession`).
    fn ws_role(&self, shape: &Shape, from_client: bool, msg: &Value) -> WsRole {
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
        match (shape == &RESPONSES, from_client, kind) {
            (false, ..) => WsRole::Ignore,
            (_, true, "response.create") => WsRole::Request,
            (_, true, _) => WsRole::Ignore,
            (_, false, "response.created" | "response.in_progress") => WsRole::Event,
            (_, false, k) if RESPONSES_CONTENT.contains(&k) => WsRole::Content,
            (_, false, "response.completed" | "response.incomplete" | "response.failed") => WsRole::End,
            (_, false, "error") => {
                WsRole::Error(u64_at(msg, &["status"]).and_then(|s| u16::try_from(s).ok()).unwrap_or(500))
            }
            _ => WsRole::Ignore,
        }
    }

    /// The `response.create` message is the HTTP body plus its `type` (or,
    /// in the first beta, the body under `response`).
    fn ws_request(&self, _: &Shape, _: &str, _: [Option<&Value>; 2], request: Option<&Value>) -> Value {
        let Some(r) = request else { return Value::Null };
        let mut body = r.get("response").filter(|b| b.is_object()).unwrap_or(r).clone();
        if let Some(o) = body.as_object_mut() {
            o.remove("type");
        }
        body
    }
}

/// Responses stream events that carry generated content.
const RESPONSES_CONTENT: [&str; 4] = [
    "response.output_text.delta",
    "response.function_call_arguments.delta",
    "response.refusal.delta",
    "response.reasoning_summary_text.delta",
];

/// `usage` of chat completions, completions and embeddings.
fn chat_usage(u: Option<&Value>) -> Option<Usage> {
    let u = u.filter(|u| u.is_object())?;
    let input = u64_at(u, &["prompt_tokens"])?;
    Some(Usage {
        input,
        output: u64_at(u, &["completion_tokens"]).unwrap_or(0),
        cached: u64_at(u, &["prompt_tokens_details", "cached_tokens"]),
        cache_write: None,
        reasoning: u64_at(u, &["completion_tokens_details", "reasoning_tokens"]),
    })
}

fn responses_usage(u: Option<&Value>) -> Option<Usage> {
    let u = u.filter(|u| u.is_object())?;
    Some(Usage {
        input: u64_at(u, &["input_tokens"])?,
        output: u64_at(u, &["output_tokens"])?,
        cached: u64_at(u, &["input_tokens_details", "cached_tokens"]),
        cache_write: None,
        reasoning: u64_at(u, &["output_tokens_details", "reasoning_tokens"]),
    })
}

fn responses_object(v: &Value, out: &mut Parsed) {
    out.response_id = str_at(v, &["id"]);
    out.response_model = str_at(v, &["model"]);
    out.usage = responses_usage(v.get("usage"));
}

fn responses_stream(resp: &Response<'_>, out: &mut Parsed) -> Result<(), ProviderError> {
    fold(resp.sse_json()?, out, |ev, out| {
        let r = ev.json.get("response");
        Ok(match ev.kind() {
            "response.created" | "response.in_progress" => {
                if let Some(r) = r {
                    out.response_id = out.response_id.take().or_else(|| str_at(r, &["id"]));
                    out.response_model = out.response_model.take().or_else(|| str_at(r, &["model"]));
                }
                Seen::default()
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let Some(r) = r {
                    responses_object(r, out);
                }
                Seen { content: false, finished: r.is_some() }
            }
            k if RESPONSES_CONTENT.contains(&k) => Seen { content: true, finished: false },
            _ => Seen::default(),
        })
    })?;
    Ok(())
}

fn chat_stream(request: &Value, resp: &Response<'_>, out: &mut Parsed) -> Result<(), ProviderError> {
    out.stream_finished |= resp.sse().iter().any(|e| e.event.data.trim() == "[DONE]");
    let mut text = String::new();
    let seen = fold(resp.sse_events(), out, |ev, out| {
        let v = ev.json;
        if out.response_id.is_none() {
            out.response_id = str_at(v, &["id"]);
        }
        if out.response_model.is_none() {
            out.response_model = str_at(v, &["model"]).filter(|m| !m.is_empty());
        }
        let usage = chat_usage(v.get("usage"));
        if usage.is_some() {
            out.usage = usage;
        }
        let before = text.len();
        for choice in v.get("choices").and_then(Value::as_array).into_iter().flatten() {
            // chat: delta.content / tool call arguments; legacy completions: text.
            let d = choice.get("delta").unwrap_or(choice);
            for key in ["content", "text", "refusal", "reasoning_content"] {
                if let Some(s) = d.get(key).and_then(Value::as_str) {
                    text.push_str(s);
                }
            }
            for call in d.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                for key in ["name", "arguments"] {
                    if let Some(s) = call.get("function").and_then(|f| f.get(key)).and_then(Value::as_str) {
                        text.push_str(s);
                    }
                }
            }
        }
        Ok(Seen { content: text.len() > before, finished: usage.is_some() })
    })?;
    if seen == 0 {
        return Err(ProviderError::BadJson("no JSON chunks in the stream".into()));
    }
    if out.usage.is_none() {
        let model = out.response_model.clone().or_else(|| out.request_model.clone()).unwrap_or_default();
        let input = tokens::count_chat_prompt(&model, request)
            .or_else(|| request.get("prompt").and_then(Value::as_str).map(|p| tokens::count_text(&model, p)));
        if let Some(input) = input {
            out.usage = Some(Usage { input, output: tokens::count_text(&model, &text), ..Default::default() });
            out.usage_source = Some(UsageSource::Estimated);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::Head;
    use crate::providers::api::fixture;
    use crate::providers::provider;
    use serde_json::json;

    fn parse(
        shape: &'static Shape,
        req: &Value,
        body: &[u8],
        sse: bool,
        out: &mut Parsed,
    ) -> Result<(), ProviderError> {
        provider::read(&OpenAi, shape, req, &Head::default(), body, sse, out)
    }

    fn run(shape: &'static Shape, req: Value, name: &str, sse: bool) -> Parsed {
        let mut p = Parsed { request_model: str_at(&req, &["model"]), ..Default::default() };
        parse(shape, &req, &fixture(name), sse, &mut p).unwrap();
        p
    }

    #[test]
    fn chat_sync_with_cache_and_reasoning() {
        let p = run(&CHAT, json!({"model":"gpt-4o","user":"u-42"}), "openai/chat_sync.json", false);
        assert_eq!(p.response_id.as_deref(), Some("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"));
        assert_eq!(p.response_model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(
            p.usage,
            Some(Usage { input: 1117, output: 46, cached: Some(1024), cache_write: None, reasoning: Some(0) })
        );
        assert_eq!(p.usage_source, Some(UsageSource::Reported));
        assert_eq!(p.end_user.as_deref(), Some("u-42"));
    }

    #[test]
    fn chat_stream_with_include_usage() {
        let p = run(&CHAT, json!({"model":"gpt-4o-mini","stream":true}), "openai/chat_stream_usage.sse", true);
        assert_eq!(
            p.usage,
            Some(Usage { input: 19, output: 10, cached: Some(0), cache_write: None, reasoning: Some(0) })
        );
        assert_eq!(p.response_id.as_deref(), Some("chatcmpl-AyPCpVgW2ZSvr3Yf3LbEUpwMCa8Ww"));
        assert_eq!(p.usage_source, Some(UsageSource::Reported));
        assert!(p.first_content_offset.is_some());
    }

    #[test]
    fn chat_stream_without_usage_is_estimated() {
        let req = json!({"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hello world"}]});
        let p = run(&CHAT, req, "openai/chat_stream_no_usage.sse", true);
        // Streamed text "Hello hello hello" -> 3 tokens; prompt 3 + (3 + 1 + 2) = 9.
        assert_eq!(p.usage, Some(Usage { input: 9, output: 3, ..Default::default() }));
        assert_eq!(p.usage_source, Some(UsageSource::Estimated));
        assert_eq!(p.response_model.as_deref(), Some("gpt-4o-2024-08-06"));
    }

    #[test]
    fn responses_sync_and_stream() {
        let p = run(&RESPONSES, json!({"model":"o4-mini"}), "openai/responses_sync.json", false);
        assert_eq!(
            p.usage,
            Some(Usage { input: 328, output: 52, cached: Some(128), cache_write: None, reasoning: Some(32) })
        );
        assert_eq!(p.response_id.as_deref(), Some("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"));
        let p = run(&RESPONSES, json!({"model":"gpt-4.1","stream":true}), "openai/responses_stream.sse", true);
        assert_eq!(
            p.usage,
            Some(Usage { input: 37, output: 11, cached: Some(0), cache_write: None, reasoning: Some(0) })
        );
        assert_eq!(p.response_model.as_deref(), Some("gpt-4.1-2025-04-14"));
        assert_eq!(p.response_id.as_deref(), Some("resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654"));
        assert!(p.first_content_offset.is_some());
    }

    #[test]
    fn embeddings_have_no_output() {
        let p = run(&EMBEDDINGS, json!({"model":"text-embedding-3-small"}), "openai/embeddings.json", false);
        assert_eq!(p.usage, Some(Usage { input: 8, output: 0, ..Default::default() }));
        assert_eq!(p.response_model.as_deref(), Some("text-embedding-3-small"));
        assert_eq!(p.response_id, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_record() {
        let mut p = Parsed::default();
        assert!(parse(&CHAT, &Value::Null, b"{\"usage\":", false, &mut p).is_err());
        assert!(parse(&CHAT, &Value::Null, b"data: nope\n\n", true, &mut p).is_err());
        let mut p = Parsed::default();
        // Valid JSON without usage: no numbers are invented.
        parse(&CHAT, &Value::Null, b"{\"id\":\"x\",\"usage\":{\"prompt_tokens\":\"7\"}}", false, &mut p).unwrap();
        assert_eq!(p.usage, None);
        assert_eq!(p.usage_source, None);
    }
}
