//! Google Gemini (Generative Language API and Vertex AI): generateContent,
//! streamGenerateContent (SSE with `alt=sse`, else one JSON array streamed
//! element by element) and embedContent.
//!
//! Normalisation: `input = promptTokenCount` (includes `cachedContentTokenCount`),
//! `output = candidatesTokenCount + thoughtsTokenCount`, `cached =
//! cachedContentTokenCount`, `reasoning = thoughtsTokenCount`. embedContent reports
//! no usage: its input is estimated from the request text (`usage_source =
//! estimated`).
use serde_json::Value;
use tokentap_event::{tokens, UsageSource};

use super::{json, str_at, u64_at, Api, Parsed, ProviderError, Usage};

fn usage(v: &Value) -> Option<Usage> {
    let u = v.get("usageMetadata").filter(|u| u.is_object())?;
    let thoughts = u64_at(u, &["thoughtsTokenCount"]);
    Some(Usage {
        input: u64_at(u, &["promptTokenCount"])?,
        output: u64_at(u, &["candidatesTokenCount"]).unwrap_or(0) + thoughts.unwrap_or(0),
        cached: u64_at(u, &["cachedContentTokenCount"]),
        cache_write: None,
        reasoning: thoughts,
    })
}

fn has_content(v: &Value) -> bool {
    v.get("candidates")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c.pointer("/content/parts").is_some_and(|p| p.is_array())))
}

fn finished(v: &Value) -> bool {
    v.get("candidates")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c.get("finishReason").is_some_and(|f| !f.is_null())))
}

/// One streamed chunk: ids and usage (the last chunk's usage is the final one).
fn chunk(v: &Value, end: usize, out: &mut Parsed) {
    if let Some(id) = str_at(v, &["responseId"]) {
        out.response_id = Some(id);
    }
    if let Some(m) = str_at(v, &["modelVersion"]) {
        out.response_model = Some(m);
    }
    if let Some(u) = usage(v) {
        out.usage = Some(u);
    }
    if out.first_content_offset.is_none() && has_content(v) {
        out.first_content_offset = Some(end.saturating_sub(1));
    }
    out.stream_finished |= finished(v);
}

pub fn parse(api: Api, request: &Value, body: &[u8], is_sse: bool, out: &mut Parsed) -> Result<(), ProviderError> {
    match api {
        Api::GeminiEmbed => {
            json(body)?;
            let mut text = String::new();
            collect_text(request, &mut text);
            out.usage = Some(Usage {
                input: tokens::count_text(out.request_model.as_deref().unwrap_or(""), &text),
                ..Default::default()
            });
            out.usage_source = Some(UsageSource::Estimated);
            return Ok(());
        }
        _ if is_sse => {
            for (v, ev) in super::json_events(body)? {
                chunk(&v, ev.end, out);
            }
        }
        Api::GeminiStream => {
            // `[{...},\r\n{...}]`: read element by element so a cut-short array
            // still yields what arrived.
            let start =
                body.iter().position(|&b| b == b'[').ok_or_else(|| ProviderError::BadJson("not an array".into()))?;
            let mut pos = start + 1;
            let mut seen = false;
            loop {
                while pos < body.len() && matches!(body[pos], b' ' | b'\t' | b'\r' | b'\n' | b',') {
                    pos += 1;
                }
                if pos >= body.len() || body[pos] == b']' {
                    break;
                }
                let mut it = serde_json::Deserializer::from_slice(&body[pos..]).into_iter::<Value>();
                match it.next() {
                    Some(Ok(v)) => {
                        pos += it.byte_offset();
                        seen = true;
                        chunk(&v, pos, out);
                    }
                    _ => break,
                }
            }
            if !seen {
                return Err(ProviderError::BadJson("empty stream".into()));
            }
        }
        _ => {
            let v = json(body)?;
            out.response_id = str_at(&v, &["responseId"]);
            out.response_model = str_at(&v, &["modelVersion"]);
            out.usage = usage(&v);
        }
    }
    if out.usage.is_some() {
        out.usage_source = Some(UsageSource::Reported);
    }
    Ok(())
}

/// Every `text` under the request's contents (embedContent: `content.parts`;
/// batchEmbedContents: `requests[].content.parts`).
fn collect_text(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("text", Value::String(s)) => {
                        out.push_str(s);
                        out.push('\n');
                    }
                    _ => collect_text(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_text(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::fixture;
    use serde_json::json;

    #[test]
    fn generate_content_with_thoughts_and_cache() {
        let mut p = Parsed::default();
        parse(Api::GeminiGenerate, &json!({}), &fixture("gemini/generate.json"), false, &mut p).unwrap();
        assert_eq!(p.response_model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(p.response_id.as_deref(), Some("mOdqaIHKBIuVz7IPx9KxmAk"));
        // candidates 212 + thoughts 1015; 1024 of the 1342 prompt tokens cached.
        assert_eq!(
            p.usage,
            Some(Usage { input: 1342, output: 1227, cached: Some(1024), cache_write: None, reasoning: Some(1015) })
        );
    }

    #[test]
    fn stream_sse_and_json_array_agree() {
        let mut a = Parsed::default();
        parse(Api::GeminiStream, &json!({}), &fixture("gemini/stream.sse"), true, &mut a).unwrap();
        let mut b = Parsed::default();
        parse(Api::GeminiStream, &json!({}), &fixture("gemini/stream.json"), false, &mut b).unwrap();
        assert_eq!(a.usage, Some(Usage { input: 9, output: 31, cached: None, cache_write: None, reasoning: None }));
        assert_eq!(a.usage, b.usage);
        assert!(a.stream_finished && b.stream_finished);
        assert!(a.first_content_offset.is_some() && b.first_content_offset.is_some());
        // A cut-short array still yields the chunks that arrived, unfinished.
        let full = fixture("gemini/stream.json");
        let mut c = Parsed::default();
        parse(Api::GeminiStream, &json!({}), &full[..full.len() / 2], false, &mut c).unwrap();
        assert!(!c.stream_finished);
    }

    #[test]
    fn embed_is_estimated_from_the_request() {
        let mut p = Parsed { request_model: Some("text-embedding-004".into()), ..Default::default() };
        let req = json!({"content": {"parts": [{"text": "hello world, this is a test"}]}});
        parse(Api::GeminiEmbed, &req, br#"{"embedding":{"values":[0.1,0.2]}}"#, false, &mut p).unwrap();
        assert!(p.usage.unwrap().input >= 5);
        assert_eq!(p.usage_source, Some(UsageSource::Estimated));
        assert!(parse(Api::GeminiEmbed, &req, b"nope", false, &mut p).is_err());
    }
}
