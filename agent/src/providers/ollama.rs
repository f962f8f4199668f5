//! Ollama's native API: `/api/chat`, `/api/generate` (NDJSON streams by default,
//! one JSON object per line, counts on the `done: true` line) and `/api/embed`.
//!
//! Normalisation: `input = prompt_eval_count`, `output = eval_count`. Ollama
//! leaves `prompt_eval_count` out when the whole prompt came from its KV cache:
//! that is 0 prompt tokens evaluated. Self-hosted: no price, tokens still count.
use serde_json::Value;
use tokentap_event::UsageSource;

use super::{str_at, u64_at, Parsed, ProviderError, Usage};

fn usage(v: &Value) -> Option<Usage> {
    let input = u64_at(v, &["prompt_eval_count"]);
    let output = u64_at(v, &["eval_count"]);
    if input.is_none() && output.is_none() {
        return None;
    }
    Some(Usage { input: input.unwrap_or(0), output: output.unwrap_or(0), ..Default::default() })
}

pub fn parse(body: &[u8], out: &mut Parsed) -> Result<(), ProviderError> {
    // One JSON document (stream: false, embeddings), else NDJSON.
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return object(&v, out);
    }
    let mut seen = false;
    let mut pos = 0;
    for line in body.split(|&b| b == b'\n') {
        pos += line.len() + 1;
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        seen = true;
        if out.first_content_offset.is_none() && v.get("done") == Some(&Value::Bool(false)) {
            out.first_content_offset = Some(pos.saturating_sub(2));
        }
        object(&v, out)?;
    }
    if !seen {
        return Err(ProviderError::BadJson("no JSON objects".into()));
    }
    Ok(())
}

fn object(v: &Value, out: &mut Parsed) -> Result<(), ProviderError> {
    if !v.is_object() || v.get("model").is_none() {
        return Err(ProviderError::BadJson("not an Ollama response".into()));
    }
    out.response_model = str_at(v, &["model"]);
    let done = v.get("done").and_then(Value::as_bool);
    // Embeddings have no `done`; chat/generate report counts when done.
    if done != Some(false) {
        if let Some(u) = usage(v) {
            out.usage = Some(u);
            out.usage_source = Some(UsageSource::Reported);
        }
        out.stream_finished = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        crate::providers::fixture(&format!("ollama/{name}"))
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
