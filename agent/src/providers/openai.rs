//! OpenAI and OpenAI-compatible APIs: chat completions, legacy completions,
//! Responses and embeddings, sync and streamed.
//!
//! Normalisation: `input = prompt_tokens` (includes `cached_tokens`), `output =
//! completion_tokens` (includes `reasoning_tokens`); Responses API
//! `input_tokens`/`output_tokens` likewise. A chat stream without usage
//! (`stream_options.include_usage` unset) is estimated with the model's tokenizer.
use serde_json::Value;
use tokentap_event::{tokens, UsageSource};

use super::{json, str_at, u64_at, Api, Parsed, ProviderError, Usage};
use crate::http::sse;

pub fn parse(api: Api, request: &Value, body: &[u8], is_sse: bool, out: &mut Parsed) -> Result<(), ProviderError> {
    out.end_user = str_at(request, &["user"]).or_else(|| str_at(request, &["safety_identifier"]));
    match (api, is_sse) {
        (Api::Responses, false) => responses_object(&json(body)?, out),
        (Api::Responses, true) => responses_stream(body, out)?,
        (_, false) => {
            let v = json(body)?;
            out.response_id = str_at(&v, &["id"]);
            out.response_model = str_at(&v, &["model"]);
            out.usage = chat_usage(v.get("usage"));
            if api == Api::Embeddings {
                out.usage = out.usage.map(|u| Usage { output: 0, ..u });
            }
        }
        (_, true) => chat_stream(request, body, out)?,
    }
    if out.usage.is_some() && out.usage_source.is_none() {
        out.usage_source = Some(UsageSource::Reported);
    }
    Ok(())
}

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

fn responses_stream(body: &[u8], out: &mut Parsed) -> Result<(), ProviderError> {
    for (v, ev) in super::json_events(body)? {
        let kind = v.get("type").and_then(Value::as_str).or(ev.event.as_deref()).unwrap_or("");
        match kind {
            "response.created" | "response.in_progress" => {
                if let Some(r) = v.get("response") {
                    out.response_id = out.response_id.take().or_else(|| str_at(r, &["id"]));
                    out.response_model = out.response_model.take().or_else(|| str_at(r, &["model"]));
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let Some(r) = v.get("response") {
                    responses_object(r, out);
                    out.stream_finished = true;
                }
            }
            k if out.first_content_offset.is_none()
                && (k == "response.output_text.delta"
                    || k == "response.function_call_arguments.delta"
                    || k == "response.refusal.delta"
                    || k == "response.reasoning_summary_text.delta") =>
            {
                out.first_content_offset = Some(ev.end.saturating_sub(1));
            }
            _ => {}
        }
    }
    Ok(())
}

fn chat_stream(request: &Value, body: &[u8], out: &mut Parsed) -> Result<(), ProviderError> {
    let mut text = String::new();
    let mut seen = false;
    for ev in sse::parse(body) {
        if ev.data.trim() == "[DONE]" {
            out.stream_finished = true;
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            continue;
        };
        seen = true;
        if out.response_id.is_none() {
            out.response_id = str_at(&v, &["id"]);
        }
        if out.response_model.is_none() {
            out.response_model = str_at(&v, &["model"]).filter(|m| !m.is_empty());
        }
        if let Some(u) = chat_usage(v.get("usage")) {
            out.usage = Some(u);
            out.stream_finished = true;
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
        if text.len() > before && out.first_content_offset.is_none() {
            out.first_content_offset = Some(ev.end.saturating_sub(1));
        }
    }
    if !seen {
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
    use crate::providers::fixture;
    use serde_json::json;

    fn run(api: Api, req: Value, name: &str, sse: bool) -> Parsed {
        let mut p = Parsed { request_model: str_at(&req, &["model"]), ..Default::default() };
        parse(api, &req, &fixture(name), sse, &mut p).unwrap();
        p
    }

    #[test]
    fn chat_sync_with_cache_and_reasoning() {
        let p = run(Api::ChatCompletions, json!({"model":"gpt-4o","user":"u-42"}), "openai/chat_sync.json", false);
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
        let p = run(
            Api::ChatCompletions,
            json!({"model":"gpt-4o-mini","stream":true}),
            "openai/chat_stream_usage.sse",
            true,
        );
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
        let p = run(Api::ChatCompletions, req, "openai/chat_stream_no_usage.sse", true);
        // Streamed text "Hello hello hello" -> 3 tokens; prompt 3 + (3 + 1 + 2) = 9.
        assert_eq!(p.usage, Some(Usage { input: 9, output: 3, ..Default::default() }));
        assert_eq!(p.usage_source, Some(UsageSource::Estimated));
        assert_eq!(p.response_model.as_deref(), Some("gpt-4o-2024-08-06"));
    }

    #[test]
    fn responses_sync_and_stream() {
        let p = run(Api::Responses, json!({"model":"o4-mini"}), "openai/responses_sync.json", false);
        assert_eq!(
            p.usage,
            Some(Usage { input: 328, output: 52, cached: Some(128), cache_write: None, reasoning: Some(32) })
        );
        assert_eq!(p.response_id.as_deref(), Some("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"));
        let p = run(Api::Responses, json!({"model":"gpt-4.1","stream":true}), "openai/responses_stream.sse", true);
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
        let p = run(Api::Embeddings, json!({"model":"text-embedding-3-small"}), "openai/embeddings.json", false);
        assert_eq!(p.usage, Some(Usage { input: 8, output: 0, ..Default::default() }));
        assert_eq!(p.response_model.as_deref(), Some("text-embedding-3-small"));
        assert_eq!(p.response_id, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_record() {
        let mut p = Parsed::default();
        assert!(parse(Api::ChatCompletions, &Value::Null, b"{\"usage\":", false, &mut p).is_err());
        assert!(parse(Api::ChatCompletions, &Value::Null, b"data: nope\n\n", true, &mut p).is_err());
        let mut p = Parsed::default();
        // Valid JSON without usage: no numbers are invented.
        parse(Api::ChatCompletions, &Value::Null, b"{\"id\":\"x\",\"usage\":{\"prompt_tokens\":\"7\"}}", false, &mut p)
            .unwrap();
        assert_eq!(p.usage, None);
        assert_eq!(p.usage_source, None);
    }
}
