//! AWS Bedrock runtime: Converse, ConverseStream, InvokeModel and
//! InvokeModelWithResponseStream. The model is in the path (`/model/{id}/…`).
//!
//! Normalisation: Converse `input = inputTokens + cacheReadInputTokens +
//! cacheWriteInputTokens` (Bedrock, like Anthropic, counts cache traffic apart),
//! `output = outputTokens`. InvokeModel: the `x-amzn-bedrock-input-token-count` /
//! `-output-token-count` response headers (`usage_source = headers`), read even
//! when the client never reads the body ([`Provider::usage_in_headers`]); its streamed
//! twin carries the same counts in the last chunk's
//! `amazon-bedrock-invocationMetrics`.
use base64::Engine;
use serde_json::Value;
use tokentap_event::UsageSource;

use super::api::{
    percent_decode, str_at, u64_at, Parsed, PathMatch, PathParts, ProviderError, Shape, StreamDefault, Usage,
};
use super::prompt::{self, Prompt};
use super::provider::Provider;
use super::response::{fold, Event, Response, Seen};
use crate::http::{eventstream, h1::Head};

pub struct Bedrock;

pub static CONVERSE: Shape =
    Shape { name: "bedrock_converse", operation: "converse", stream: StreamDefault::IfRequested, embedding: false };
pub static CONVERSE_STREAM: Shape =
    Shape { name: "bedrock_converse_stream", operation: "converse", stream: StreamDefault::Always, embedding: false };
pub static INVOKE: Shape =
    Shape { name: "bedrock_invoke", operation: "invoke", stream: StreamDefault::IfRequested, embedding: false };
pub static INVOKE_STREAM: Shape =
    Shape { name: "bedrock_invoke_stream", operation: "invoke", stream: StreamDefault::Always, embedding: false };
static SHAPES: [&Shape; 4] = [&CONVERSE, &CONVERSE_STREAM, &INVOKE, &INVOKE_STREAM];

impl Provider for Bedrock {
    fn unnamed_host(&self) -> &'static str {
        "bedrock_compatible"
    }

    fn shapes(&self) -> &'static [&'static Shape] {
        &SHAPES
    }

    /// `/model/{modelId}/{operation}`; another operation there is not a call.
    fn match_path(&self, p: &PathParts<'_>) -> PathMatch {
        if p.segs.len() != 3 || p.segs[0] != "model" {
            return PathMatch::Pass;
        }
        let shape = match p.last() {
            "converse" => &CONVERSE,
            "converse-stream" => &CONVERSE_STREAM,
            "invoke" => &INVOKE,
            "invoke-with-response-stream" => &INVOKE_STREAM,
            _ => return PathMatch::NotACall,
        };
        PathMatch::Call(shape, Some(percent_decode(p.segs[1])))
    }

    /// InvokeModel's counts are headers: its SDKs hand the body back as a
    /// stream the caller may never read.
    fn usage_in_headers(&self, shape: &Shape) -> bool {
        shape == &INVOKE
    }

    /// Converse's own fields; InvokeModel bodies are the model's format, any of them.
    fn prompt(&self, shape: &Shape, r: &Value) -> Prompt {
        if shape == &INVOKE || shape == &INVOKE_STREAM {
            return Prompt::any(shape, r);
        }
        let mut p = Prompt { max_tokens: prompt::max_tokens(r, &["/inferenceConfig/maxTokens"]), ..Default::default() };
        p.system_from(r, &["system"]);
        p.tools_from(r, &["toolConfig"]);
        p.messages_from(r.get("messages"));
        p
    }

    fn parse(
        &self,
        shape: &Shape,
        _request: &Value,
        resp: &Response<'_>,
        out: &mut Parsed,
    ) -> Result<(), ProviderError> {
        out.response_model = out.request_model.clone();
        if shape == &CONVERSE {
            out.usage = resp.json()?.get("usage").and_then(converse_usage);
        } else if shape == &INVOKE {
            let head = resp.head;
            let input = header_u64(head, "x-amzn-bedrock-input-token-count");
            let output = header_u64(head, "x-amzn-bedrock-output-token-count");
            if let (Some(input), Some(output)) = (input, output) {
                let read = header_u64(head, "x-amzn-bedrock-cache-read-input-token-count");
                let write = header_u64(head, "x-amzn-bedrock-cache-write-input-token-count");
                out.usage = Some(Usage::cache_inclusive(input, output, read, write));
                out.usage_source = Some(UsageSource::Headers);
            }
            // The body is the model's own format; its id when it has one.
            if let Ok(v) = resp.json() {
                out.response_id = str_at(v, &["id"]);
            }
        } else {
            stream(shape == &INVOKE_STREAM, resp.body, out)?;
        }
        Ok(())
    }
}

/// Converse `usage` (`inputTokens`, …) or a stream's `amazon-bedrock-invocationMetrics`
/// (`inputTokenCount`, …): the same four counts under two spellings. Absent cache
/// counts stay unknown.
fn usage_at(v: &Value, [input, output, read, write]: [&str; 4]) -> Option<Usage> {
    Some(Usage::cache_inclusive(u64_at(v, &[input])?, u64_at(v, &[output])?, u64_at(v, &[read]), u64_at(v, &[write])))
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

/// ConverseStream events, or InvokeModelWithResponseStream `chunk`s, each of
/// which carries the model's own JSON base64-encoded.
fn stream(invoke: bool, body: &[u8], out: &mut Parsed) -> Result<(), ProviderError> {
    let msgs = eventstream::parse(body).map_err(|e| ProviderError::BadJson(e.to_string()))?;
    if let Some(m) = msgs.iter().find(|m| m.header(":message-type") == Some("exception")) {
        let kind = m.header(":exception-type").unwrap_or("exception");
        return Err(ProviderError::BadJson(format!("stream ended with {kind}")));
    }
    if msgs.is_empty() {
        return Err(ProviderError::BadJson("no event-stream messages".into()));
    }
    let values: Vec<(Value, Option<&str>, usize)> = msgs
        .iter()
        .filter_map(|m| {
            let v = serde_json::from_slice::<Value>(&m.payload).ok()?;
            let name = m.header(":event-type");
            if !invoke {
                return Some((v, name, m.end));
            }
            let inner = v
                .get("bytes")
                .and_then(Value::as_str)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            inner.filter(|_| name == Some("chunk")).map(|inner| (inner, name, m.end))
        })
        .collect();
    let events = values.iter().map(|(json, name, end)| Event { json, name: *name, end: *end });
    fold(events, out, |ev, out| {
        let v = ev.json;
        if invoke {
            if out.response_id.is_none() {
                out.response_id = str_at(v, &["message", "id"]).or_else(|| str_at(v, &["id"]));
            }
            let usage = v.get("amazon-bedrock-invocationMetrics").and_then(metrics_usage);
            if usage.is_some() {
                out.usage = usage;
            }
            return Ok(Seen { content: true, finished: usage.is_some() });
        }
        Ok(match ev.name.unwrap_or("") {
            "contentBlockDelta" => Seen { content: true, finished: false },
            "metadata" => {
                out.usage = v.get("usage").and_then(converse_usage);
                Seen { content: false, finished: true }
            }
            _ => Seen::default(),
        })
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::eventstream::encode;
    use crate::providers::api::fixture;
    use crate::providers::provider;

    fn parse(shape: &'static Shape, head: &Head, body: &[u8], out: &mut Parsed) -> Result<(), ProviderError> {
        provider::read(&Bedrock, shape, &Value::Null, head, body, false, out)
    }

    fn model() -> Parsed {
        Parsed { request_model: Some("anthropic.claude-3-haiku-20240307-v1:0".into()), ..Default::default() }
    }

    #[test]
    fn converse_counts_cache_traffic_as_input() {
        let mut p = model();
        parse(&CONVERSE, &Head::default(), &fixture("bedrock/converse.json"), &mut p).unwrap();
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
        parse(&INVOKE, &head, br#"{"id":"msg_bdrk_1","content":[]}"#, &mut p).unwrap();
        assert_eq!(p.usage.map(|u| (u.input, u.output)), Some((17, 44)));
        assert_eq!(p.usage_source, Some(UsageSource::Headers));
        assert_eq!(p.response_id.as_deref(), Some("msg_bdrk_1"));
        let mut p = model();
        parse(&INVOKE, &Head::default(), b"{}", &mut p).unwrap();
        assert_eq!(p.usage, None);
    }

    /// Unlike Anthropic's (`Some(0)`), Bedrock's cache counts stay unknown when
    /// the response does not give them.
    #[test]
    fn absent_cache_counts_stay_unknown() {
        let mut p = model();
        let head = Head {
            headers: vec![
                ("x-amzn-bedrock-input-token-count".into(), b"17".to_vec()),
                ("x-amzn-bedrock-output-token-count".into(), b"44".to_vec()),
            ],
            ..Default::default()
        };
        parse(&INVOKE, &head, b"{}", &mut p).unwrap();
        assert_eq!(p.usage, Some(Usage { input: 17, output: 44, cached: None, cache_write: None, reasoning: None }));
        let mut head = head;
        head.headers.push(("x-amzn-bedrock-cache-read-input-token-count".into(), b"3".to_vec()));
        let mut p = model();
        parse(&INVOKE, &head, b"{}", &mut p).unwrap();
        assert_eq!(p.usage, Some(Usage { input: 20, output: 44, cached: Some(3), cache_write: None, reasoning: None }));
        let mut p = model();
        let body = br#"{"usage":{"inputTokens":5,"outputTokens":6}}"#;
        parse(&CONVERSE, &Head::default(), body, &mut p).unwrap();
        assert_eq!(p.usage, Some(Usage { input: 5, output: 6, cached: None, cache_write: None, reasoning: None }));
        assert_eq!(p.usage_source, Some(UsageSource::Reported));
    }

    #[test]
    fn converse_stream_fixture() {
        let mut p = model();
        parse(&CONVERSE_STREAM, &Head::default(), &fixture("bedrock/converse_stream.bin"), &mut p).unwrap();
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
        parse(&INVOKE_STREAM, &Head::default(), &body, &mut p).unwrap();
        assert_eq!(p.usage.map(|u| (u.input, u.output)), Some((30, 7)));
        assert_eq!(p.response_id.as_deref(), Some("msg_bdrk_2"));
        assert!(p.stream_finished);
        let mut p = model();
        parse(&INVOKE_STREAM, &Head::default(), &body[..before_metrics], &mut p).unwrap();
        assert!(!p.stream_finished);
        let exc = encode(&[(":message-type", "exception"), (":exception-type", "throttlingException")], b"{}");
        assert!(parse(&INVOKE_STREAM, &Head::default(), &exc, &mut model()).is_err());
    }
}
