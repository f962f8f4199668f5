//! Anthropic Messages API, sync and streamed.
//!
//! Normalisation: `input = input_tokens + cache_read_input_tokens +
//! cache_creation_input_tokens`, `cached = cache_read_input_tokens`, `cache_write =
//! cache_creation_input_tokens`. In a stream `message_start` carries the input
//! usage and the last `message_delta` the final (cumulative) output count; newer
//! API versions repeat input counts in `message_delta`, which then win.
use serde_json::Value;
use tokentap_event::UsageSource;

use super::{json, str_at, u64_at, Parsed, ProviderError, Usage};

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

    fn usage(&self) -> Option<Usage> {
        let (input, output) = (self.input?, self.output?);
        let read = self.cache_read.unwrap_or(0);
        let write = self.cache_write.unwrap_or(0);
        Some(Usage {
            input: input + read + write,
            output,
            cached: Some(read),
            cache_write: Some(write),
            reasoning: None,
        })
    }
}

pub fn parse(request: &Value, body: &[u8], is_sse: bool, out: &mut Parsed) -> Result<(), ProviderError> {
    out.end_user = str_at(request, &["metadata", "user_id"]);
    let mut raw = Raw::default();
    if is_sse {
        for (v, ev) in super::json_events(body)? {
            match v.get("type").and_then(Value::as_str).or(ev.event.as_deref()).unwrap_or("") {
                "message_start" => {
                    if let Some(m) = v.get("message") {
                        out.response_id = str_at(m, &["id"]);
                        out.response_model = str_at(m, &["model"]);
                        if let Some(u) = m.get("usage") {
                            raw.merge(u);
                        }
                    }
                }
                "message_delta" => {
                    if let Some(u) = v.get("usage") {
                        raw.merge(u);
                        out.stream_finished = true;
                    }
                }
                "message_stop" => out.stream_finished = true,
                "content_block_delta" if out.first_content_offset.is_none() => {
                    out.first_content_offset = Some(ev.end.saturating_sub(1));
                }
                _ => {}
            }
        }
    } else {
        let v = json(body)?;
        out.response_id = str_at(&v, &["id"]);
        out.response_model = str_at(&v, &["model"]);
        if let Some(u) = v.get("usage") {
            raw.merge(u);
        }
    }
    out.usage = raw.usage();
    if out.usage.is_some() {
        out.usage_source = Some(UsageSource::Reported);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::fixture;
    use serde_json::json;

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
