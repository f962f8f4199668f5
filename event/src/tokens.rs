//! Token estimation for responses that report no usage (an OpenAI stream without
//! `stream_options.include_usage`). Uses the model's tiktoken encoding; unknown
//! models use o200k_base, the encoding of current OpenAI models.
use serde_json::Value;
use tiktoken_rs::{tokenizer::Tokenizer, CoreBPE};

fn bpe_for(model: &str) -> &'static CoreBPE {
    match tiktoken_rs::tokenizer::get_tokenizer(model) {
        Some(Tokenizer::Cl100kBase) => tiktoken_rs::cl100k_base_singleton(),
        _ => tiktoken_rs::o200k_base_singleton(),
    }
}

/// Tokens of plain text.
pub fn count_text(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe_for(model).encode_ordinary(text).len() as u64
}

/// Prompt tokens of an OpenAI chat request body (`messages`, `tools`), using the
/// per-message framing of OpenAI's published counting recipe: 3 tokens per
/// message, 1 per `name`, 3 to prime the reply.
pub fn count_chat_prompt(model: &str, request: &Value) -> Option<u64> {
    let messages = request.get("messages")?.as_array()?;
    let bpe = bpe_for(model);
    let count = |s: &str| bpe.encode_ordinary(s).len() as u64;
    let mut total = 3u64;
    for m in messages {
        total += 3;
        if let Some(role) = m.get("role").and_then(Value::as_str) {
            total += count(role);
        }
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            total += count(name) + 1;
        }
        match m.get("content") {
            Some(Value::String(s)) => total += count(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        total += count(t);
                    }
                }
            }
            _ => {}
        }
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                if let Some(f) = c.get("function") {
                    for k in ["name", "arguments"] {
                        if let Some(s) = f.get(k).and_then(Value::as_str) {
                            total += count(s) + 1;
                        }
                    }
                }
            }
        }
    }
    if let Some(tools) = request.get("tools").filter(|t| !t.is_null()) {
        total += count(&tools.to_string());
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_known_strings() {
        // o200k_base: "hello world" is two tokens; " hello" repeated is one each.
        assert_eq!(count_text("gpt-4o", "hello world"), 2);
        assert_eq!(count_text("gpt-4o", &" hello".repeat(10)), 10);
        assert_eq!(count_text("gpt-4o", ""), 0);
        // cl100k_base for gpt-4 / gpt-3.5.
        assert_eq!(count_text("gpt-4", "hello world"), 2);
    }

    #[test]
    fn chat_prompt_uses_message_framing() {
        let req = json!({"model":"gpt-4o","messages":[
            {"role":"system","content":"hello world"},
            {"role":"user","content":[{"type":"text","text":"hello world"}]}
        ]});
        // 3 priming + 2 x (3 framing + role + 2 content); roles are one token each.
        assert_eq!(count_chat_prompt("gpt-4o", &req), Some(3 + 2 * (3 + 1 + 2)));
        assert_eq!(count_chat_prompt("gpt-4o", &json!({"input":"x"})), None);
    }
}
