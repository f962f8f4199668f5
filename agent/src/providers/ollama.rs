//! Ollama's native API: `/api/chat`, `/api/generate` (NDJSON streams by default,
//! one JSON object per line, counts on the `done: true` line) and `/api/embed`.
//!
//! Normalisation: `input = prompt_eval_count`, `output = eval_count`. Ollama
//! leaves `prompt_eval_count` out when the whole prompt came from its KV cache:
//! that is 0 prompt tokens evaluated. Self-hosted: no price, tokens still count.
use serde_json::Value;

use super::api::{str_at, u64_at, Parsed, PathMatch, PathParts, ProviderError, Shape, StreamDefault, Usage};
use super::prompt::{self, Prompt};
use super::provider::Provider;
use super::response::{events, fold, ndjson, Response, Seen};

pub struct Ollama;

pub static CHAT: Shape =
    Shape { name: "ollama_chat", operation: "chat", stream: StreamDefault::UnlessDeclined, embedding: false };
pub static GENERATE: Shape =
    Shape { name: "ollama_generate", operation: "generate", stream: StreamDefault::UnlessDeclined, embedding: false };
pub static EMBED: Shape =
    Shape { name: "ollama_embed", operation: "embeddings", stream: StreamDefault::IfRequested, embedding: true };
static SHAPES: [&Shape; 3] = [&CHAT, &GENERATE, &EMBED];

impl Provider for Ollama {
    /// Self-hosted: there is no vendor host to name.
    fn unnamed_host(&self) -> &'static str {
        "ollama"
    }

    fn shapes(&self) -> &'static [&'static Shape] {
        &SHAPES
    }

    /// Exact paths; asked before OpenAI's, whose `*/embeddings` would take `/api/embeddings`.
    fn match_path(&self, p: &PathParts<'_>) -> PathMatch {
        match p.path {
            "/api/chat" => PathMatch::Call(&CHAT, None),
            "/api/generate" => PathMatch::Call(&GENERATE, None),
            "/api/embed" | "/api/embeddings" => PathMatch::Call(&EMBED, None),
            _ => PathMatch::Pass,
        }
    }

    /// Chat `messages` and `tools`, generate `system` and `prompt`, `/api/embed` `input`.
    fn prompt(&self, shape: &Shape, r: &Value) -> Prompt {
        let max_tokens = prompt::max_tokens(r, &["/options/num_predict"]);
        if shape.embedding {
            return Prompt::embedding(r.get("input").map_or(0, prompt::count), r.get("input"), max_tokens);
        }
        let mut p = Prompt { max_tokens, ..Default::default() };
        p.system_from(r, &["system"]);
        p.tools_from(r, &["tools"]);
        p.messages_from(r.get("messages"));
        p.prompt_from(r, &["prompt"]);
        p
    }

    fn parse(
        &self,
        _shape: &Shape,
        _request: &Value,
        resp: &Response<'_>,
        out: &mut Parsed,
    ) -> Result<(), ProviderError> {
        // One JSON document (stream: false, embeddings), else NDJSON.
        if let Ok(v) = resp.json() {
            out.stream_finished |= object(v, out)?;
            return Ok(());
        }
        let lines = ndjson(resp.body);
        let seen = fold(events(&lines), out, |ev, out| {
            let done = object(ev.json, out)?;
            Ok(Seen { content: ev.json.get("done") == Some(&Value::Bool(false)), finished: done })
        })?;
        if seen == 0 {
            return Err(ProviderError::BadJson("no JSON objects".into()));
        }
        Ok(())
    }
}

fn usage(v: &Value) -> Option<Usage> {
    let input = u64_at(v, &["prompt_eval_count"]);
    let output = u64_at(v, &["eval_count"]);
    if input.is_none() && output.is_none() {
        return None;
    }
    Some(Usage { input: input.unwrap_or(0), output: output.unwrap_or(0), ..Default::default() })
}

/// One response object; true when it is the last (counts are on it).
fn object(v: &Value, out: &mut Parsed) -> Result<bool, ProviderError> {
    if !v.is_object() || v.get("model").is_none() {
        return Err(ProviderError::BadJson("not an Ollama response".into()));
    }
    out.response_model = str_at(v, &["model"]);
    let done = v.get("done").and_then(Value::as_bool);
    // Embeddings have no `done`; chat/generate report counts when done.
    if done == Some(false) {
        return Ok(false);
    }
    if let Some(u) = usage(v) {
        out.usage = Some(u);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::Head;
    use crate::providers::provider;

    fn fixture(name: &str) -> Vec<u8> {
        crate::providers::api::fixture(&format!("ollama/{name}"))
    }

    fn parse(body: &[u8], out: &mut Parsed) -> Result<(), ProviderError> {
        provider::read(&Ollama, &CHAT, &Value::Null, &Head::default(), body, false, out)
    }

    #[test]
    fn chat_stream_counts_on_the_done_line() {
        let mut p = Parsed::default();
        parse(&fixture("chat_stream.ndjson"), &mut p).unwrap();
        assert_eq!(p.usage.map(|u| (u.input, u.output)), Some((26, 298)));
        assert_eq!(p.response_model.as_deref(), Some("llama3.2"));
        assert!(p.stream_finished);
        assert!(p.first_content_offset.is_some());
        let body = fixture("chat_stream.ndjson");
        let mut p = Parsed::default();
        parse(&body[..body.len() / 2], &mut p).unwrap();
        assert!(!p.stream_finished);
        assert_eq!(p.usage, None);
    }

    #[test]
    fn sync_generate_and_embed() {
        let mut p = Parsed::default();
        parse(&fixture("generate.json"), &mut p).unwrap();
        assert_eq!(p.usage.map(|u| (u.input, u.output)), Some((26, 290)));
        let mut p = Parsed::default();
        parse(br#"{"model":"all-minilm","embeddings":[[0.1]],"prompt_eval_count":8}"#, &mut p).unwrap();
        assert_eq!(p.usage.map(|u| (u.input, u.output)), Some((8, 0)));
        assert!(parse(br#"{"error":"x"}"#, &mut Parsed::default()).is_err());
        assert!(parse(b"<html>", &mut Parsed::default()).is_err());
    }
}
