//! Token estimation for responses that report no usage (an OpenAI stream without
//! `stream_options.include_usage`) and for prompt features. Uses the model's
//! tiktoken encoding (tiktoken-rs's model table); unknown models use o200k_base,
//! the encoding of current OpenAI models.
//!
//! Each encoding's ranks are loaded on first use only (most records carry the
//! provider's usage and need none) and kept compactly (`bpe`): ~4 MiB for
//! o200k_base instead of tiktoken-rs's ~47 MiB.
use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::tokenizer::Tokenizer;

mod bpe;
#[cfg(test)]
mod tests;

use bpe::Encoding;

/// The token lists, generated from tiktoken-rs's copies of OpenAI's files (see
/// `tests::write_rank_files`).
const O200K_RANKS: &[u8] = include_bytes!("../data/o200k_base.bpe.zst");
const CL100K_RANKS: &[u8] = include_bytes!("../data/cl100k_base.bpe.zst");

fn o200k() -> &'static Encoding {
    static E: OnceLock<Encoding> = OnceLock::new();
    E.get_or_init(|| Encoding::new(O200K_RANKS, bpe::O200K_PATTERN))
}

fn cl100k() -> &'static Encoding {
    static E: OnceLock<Encoding> = OnceLock::new();
    E.get_or_init(|| Encoding::new(CL100K_RANKS, bpe::CL100K_PATTERN))
}

fn bpe_for(model: &str) -> &'static Encoding {
    match tiktoken_rs::tokenizer::get_tokenizer(model) {
        Some(Tokenizer::Cl100kBase) => cl100k(),
        _ => o200k(),
    }
}

/// Tokens of plain text.
pub fn count_text(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe_for(model).count(text)
}

/// Prompt tokens of an OpenAI chat request body (`messages`, `tools`), using the
/// per-message framing of OpenAI's published counting recipe: 3 tokens per
/// message, 1 per `name`, 3 to prime the reply.
pub fn count_chat_prompt(model: &str, request: &Value) -> Option<u64> {
    let messages = request.get("messages")?.as_array()?;
    let bpe = bpe_for(model);
    let count = |s: &str| bpe.count(s);
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
