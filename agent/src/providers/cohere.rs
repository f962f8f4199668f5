//! Cohere v2 chat (`/v2/chat`), sync and streamed (SSE, usage in `message-end`).
//!
//! Normalisation: the billed units (`usage.billed_units.input_tokens` /
//! `output_tokens`) are what Cohere charges; the raw `usage.tokens` counts are the
//! fallback when billed units are absent.
use serde_json::Value;
use tokentap_event::UsageSource;

use super::{json, str_at, u64_at, Parsed, ProviderError, Usage};

fn usage(u: &Value) -> Option<Usage> {
    let pick = |k: &str| u64_at(u, &["billed_units", k]).or_else(|| u64_at(u, &["tokens", k]));
    Some(Usage { input: pick("input_tokens")?, output: pick("output_tokens").unwrap_or(0), ..Default::default() })
}

pub fn parse(body: &[u8], is_sse: bool, out: &mut Parsed) -> Result<(), ProviderError> {
    if is_sse {
        for (v, ev) in super::json_events(body)? {
            match v.get("type").and_then(Value::as_str).unwrap_or("") {
                "message-start" => out.response_id = str_at(&v, &["id"]),
                "content-delta" if out.first_content_offset.is_none() => {
                    out.first_content_offset = Some(ev.end.saturating_sub(1));
                }
                "message-end" => {
                    out.usage = v.pointer("/delta/usage").and_then(usage);
                    out.stream_finished = true;
                }
                _ => {}
            }
        }
    } else {
        let v = json(body)?;
        out.response_id = str_at(&v, &["id"]);
        out.usage = v.get("usage").and_then(usage);
    }
    out.usage_source = out.usage.map(|_| UsageSource::Reported);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_uses_billed_units() {
        let body = crate::providers::fixture("cohere/chat.json");
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
