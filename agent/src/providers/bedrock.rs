//! AWS Bedrock runtime: Converse, ConverseStream, InvokeModel and
//! InvokeModelWithResponseStream. The model is in the path (`/model/{id}/…`).
//!
//! Normalisation: Converse `input = inputTokens + cacheReadInputTokens +
//! cacheWriteInputTokens` (Bedrock, like Anthropic, counts cache traffic apart),
//! `output = outputTokens`. InvokeModel: the `x-amzn-bedrock-input-token-count` /
//! `-output-token-count` response headers (`usage_source = headers`); its streamed
//! twin carries the same counts in the last chunk's
//! `amazon-bedrock-invocationMetrics`.
use base64::Engine;
use serde_json::Value;
use tokentap_event::UsageSource;

use super::{json, str_at, u64_at, Api, Parsed, ProviderError, Usage};
use crate::http::{eventstream, h1::Head};

/// Bedrock counts cache reads and writes apart from `input`: they are added to it.
fn usage(input: u64, output: u64, read: Option<u64>, write: Option<u64>) -> Usage {
    Usage {
        input: input + read.unwrap_or(0) + write.unwrap_or(0),
        output,
        cached: read,
        cache_write: write,
        reasoning: None,
    }
}

/// Converse `usage` (`inputTokens`, …) or a stream's `amazon-bedrock-invocationMetrics`
/// (`inputTokenCount`, …): the same four counts under two spellings.
fn usage_at(v: &Value, [input, output, read, write]: [&str; 4]) -> Option<Usage> {
    Some(usage(u64_at(v, &[input])?, u64_at(v, &[output])?, u64_at(v, &[read]), u64_at(v, &[write])))
}

fn converse_usage(u: &Value) -> Option<Usage> {
    usage_at(u, ["inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens"])
}

fn metrics_usage(m: &Value) -> Option<Usage> {
    usage_at(m, ["inputTokenCount", "outputTokenCount", "cacheReadInputTokenCount", "cacheWriteInputTokenCount"])
}

fn header_u64(head: &Head, name: &str) -> Option<u64> {
    head.header(name).and_then(|v| v.parse().ok())
}

pub fn parse(api: Api, head: &Head, body: &[u8], out: &mut Parsed) -> Result<(), ProviderError> {
    out.response_model = out.request_model.clone();
    match api {
        Api::BedrockConverse => {
            let v = json(body)?;
            out.usage = v.get("usage").and_then(converse_usage);
            out.usage_source = out.usage.map(|_| UsageSource::Reported);
        }
        Api::BedrockInvoke => {
            let input = header_u64(head, "x-amzn-bedrock-input-token-count");
            let output = header_u64(head, "x-amzn-bedrock-output-token-count");
            if let (Some(input), Some(output)) = (input, output) {
                let read = header_u64(head, "x-amzn-bedrock-cache-read-input-token-count");
                let write = header_u64(head, "x-amzn-bedrock-cache-write-input-token-count");
                out.usage = Some(usage(input, output, read, write));
                out.usage_source = Some(UsageSource::Headers);
            }
            // The body is the model's own format; its id when it has one.
            if let Ok(v) = serde_json::from_slice::<Value>(body) {
                out.response_id = str_at(&v, &["id"]);
            }
        }
        _ => stream(api, body, out)?,
    }
    Ok(())
}

fn stream(api: Api, body: &[u8], out: &mut Parsed) -> Result<(), ProviderError> {
    let msgs = eventstream::parse(body).map_err(|e| ProviderError::BadJson(e.to_string()))?;
    for m in &msgs {
        if m.header(":message-type") == Some("exception") {
            let kind = m.header(":exception-type").unwrap_or("exception");
            return Err(ProviderError::BadJson(format!("stream ended with {kind}")));
        }
        let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
            continue;
        };
        match (api, m.header(":event-type").unwrap_or("")) {
            (Api::BedrockConverseStream, "contentBlockDelta") if out.first_content_offset.is_none() => {
                out.first_content_offset = Some(m.end.saturating_sub(1));
            }
            (Api::BedrockConverseStream, "metadata") => {
                out.usage = v.get("usage").and_then(converse_usage);
                out.stream_finished = true;
            }
            (Api::BedrockInvokeStream, "chunk") => {
                let Some(inner) = v
                    .get("bytes")
                    .and_then(Value::as_str)
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                else {
                    continue;
                };
                if out.first_content_offset.is_none() {
                    out.first_content_offset = Some(m.end.saturating_sub(1));
                }
                if out.response_id.is_none() {
                    out.response_id = str_at(&inner, &["message", "id"]).or_else(|| str_at(&inner, &["id"]));
                }
                if let Some(u) = inner.get("amazon-bedrock-invocationMetrics").and_then(metrics_usage) {
                    out.usage = Some(u);
                    out.stream_finished = true;
                }
            }
            _ => {}
        }
    }
    if msgs.is_empty() {
        return Err(ProviderError::BadJson("no event-stream messages".into()));
    }
    out.usage_source = out.usage.map(|_| UsageSource::Reported);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::eventstream::encode;
    use crate::providers::fixture;

    fn model() -> Parsed {
        Parsed { request_model: Some("anthropic.claude-3-haiku-20240307-v1:0".into()), ..Default::default() }
    }

    #[test]
    fn converse_counts_cache_traffic_as_input() {
        let mut p = model();
        parse(Api::BedrockConverse, &Head::default(), &fixture("bedrock/converse.json"), &mut p).unwrap();
        assert_eq!(
            p.usage,
            Some(Usage {
                input: 25 + 1800 + 200,
                output: 52,
                cached: Some(1800),
                cache_write: Some(200),
                reasoning: None
            })
        );
        assert_eq!(p.response_model.as_deref(), Some("anthropic.claude-3-haiku-20240307-v1:0"));
    }

    #[test]
    fn invoke_reads_the_token_headers() {
        let mut p = model();
        let head = Head {
            headers: vec![
                ("x-amzn-bedrock-input-token-count".into(), b"17".to_vec()),
                ("x-amzn-bedrock-output-token-count".into(), b"44".to_vec()),
            ],
            ..Default::default()
        };
        parse(Api::BedrockInvoke, &head, br#"{"id":"msg_bdrk_1","content":[]}"#, &mut p).unwrap();
        assert_eq!(p.usage.map(|u| (u.input, u.output)), Some((17, 44)));
        assert_eq!(p.usage_source, Some(UsageSource::Headers));
        assert_eq!(p.response_id.as_deref(), Some("msg_bdrk_1"));
        let mut p = model();
        parse(Api::BedrockInvoke, &Head::default(), b"{}", &mut p).unwrap();
        assert_eq!(p.usage, None);
    }

    #[test]
    fn converse_stream_fixture() {
        let mut p = model();
        parse(Api::BedrockConverseStream, &Head::default(), &fixture("bedrock/converse_stream.bin"), &mut p).unwrap();
        assert_eq!(p.usage.map(|u| (u.input, u.output)), Some((13, 21)));
        assert!(p.stream_finished);
        assert!(p.first_content_offset.is_some());
    }

    #[test]
    fn invoke_stream_reads_invocation_metrics() {
        let chunk = |json: &str| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(json);
            encode(
                &[(":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")],
                format!(r#"{{"bytes":"{b64}"}}"#).as_bytes(),
            )
        };
        let mut body = chunk(r#"{"type":"message_start","message":{"id":"msg_bdrk_2"}}"#);
        body.extend(chunk(r#"{"type":"content_block_delta","delta":{"text":"hi"}}"#));
        let before_metrics = body.len();
        body.extend(chunk(
            r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":30,"outputTokenCount":7,"invocationLatency":300,"firstByteLatency":100}}"#,
        ));
        let mut p = model();
        parse(Api::BedrockInvokeStream, &Head::default(), &body, &mut p).unwrap();
        assert_eq!(p.usage.map(|u| (u.input, u.output)), Some((30, 7)));
        assert_eq!(p.response_id.as_deref(), Some("msg_bdrk_2"));
        assert!(p.stream_finished);
        let mut p = model();
        parse(Api::BedrockInvokeStream, &Head::default(), &body[..before_metrics], &mut p).unwrap();
        assert!(!p.stream_finished);
        let exc = encode(&[(":message-type", "exception"), (":exception-type", "throttlingException")], b"{}");
        assert!(parse(Api::BedrockInvokeStream, &Head::default(), &exc, &mut model()).is_err());
    }
}
