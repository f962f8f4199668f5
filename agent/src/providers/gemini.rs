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

use super::api::{
    percent_decode, str_at, u64_at, AudioTokens, Parsed, PathMatch, PathParts, ProviderError, Shape, StreamDefault,
    Usage,
};
use super::prompt::{self, Prompt};
use super::provider::Provider;
use super::response::{events, fold, json_array, Event, Framing, Response, Seen};

pub struct Gemini;

pub static GENERATE: Shape = Shape {
    name: "gemini_generate",
    operation: "generate_content",
    stream: StreamDefault::IfRequested,
    embedding: false,
};
pub static STREAM: Shape =
    Shape { name: "gemini_stream", operation: "generate_content", stream: StreamDefault::Always, embedding: false };
pub static EMBED: Shape =
    Shape { name: "gemini_embed", operation: "embed_content", stream: StreamDefault::IfRequested, embedding: true };
static SHAPES: [&Shape; 3] = [&GENERATE, &STREAM, &EMBED];

impl Provider for Gemini {
    fn unnamed_host(&self) -> &'static str {
        "google_compatible"
    }

    fn shapes(&self) -> &'static [&'static Shape] {
        &SHAPES
    }

    /// `…/models/{model}:{method}` (Generative Language API and Vertex AI); another
    /// method there (`:countTokens`) is not a call.
    fn match_path(&self, p: &PathParts<'_>) -> PathMatch {
        let Some((model, method)) = p.last().split_once(':').filter(|_| p.parent() == "models") else {
            return PathMatch::Pass;
        };
        let shape = match method {
            "generateContent" => &GENERATE,
            "streamGenerateContent" => &STREAM,
            "embedContent" | "batchEmbedContents" => &EMBED,
            _ => return PathMatch::NotACall,
        };
        PathMatch::Call(shape, Some(percent_decode(model)))
    }

    fn prompt(&self, shape: &Shape, r: &Value) -> Prompt {
        let max_tokens = prompt::max_tokens(r, &["/generationConfig/maxOutputTokens"]);
        if shape.embedding {
            // embedContent: one `content`; batchEmbedContents: `requests`. The
            // prompt hash is of no text (as before the providers were split).
            let inputs = r.get("requests").map_or(u32::from(r.get("content").is_some()), prompt::count);
            return Prompt::embedding(inputs, None, max_tokens);
        }
        let mut p = Prompt { max_tokens, ..Default::default() };
        p.system_from(r, &["systemInstruction"]);
        p.tools_from(r, &["tools", "toolConfig"]);
        p.messages_from(r.get("contents"));
        p
    }

    fn parse(
        &self,
        shape: &Shape,
        request: &Value,
        resp: &Response<'_>,
        out: &mut Parsed,
    ) -> Result<(), ProviderError> {
        if shape == &EMBED {
            resp.json()?;
            let mut text = String::new();
            collect_text(request, &mut text);
            out.usage = Some(Usage {
                input: tokens::count_text(out.request_model.as_deref().unwrap_or(""), &text),
                ..Default::default()
            });
            out.usage_source = Some(UsageSource::Estimated);
        } else if resp.framing == Framing::Sse {
            fold(resp.sse_json()?, out, chunk)?;
        } else if shape == &STREAM {
            let elements = json_array(resp.body)?;
            if fold(events(&elements), out, chunk)? == 0 {
                return Err(ProviderError::BadJson("empty stream".into()));
            }
        } else {
            let v = resp.json()?;
            out.response_id = str_at(v, &["responseId"]);
            out.response_model = str_at(v, &["modelVersion"]);
            out.usage = usage(v);
            out.audio = audio_tokens(v.get("usageMetadata"));
        }
        Ok(())
    }
}

fn usage(v: &Value) -> Option<Usage> {
    let u = v.get("usageMetadata").filter(|u| u.is_object())?;
    let thoughts = u64_at(u, &["thoughtsTokenCount"]);
    Some(Usage {
        input: u64_at(u, &["promptTokenCount"])?,
        // Saturating: the counts are the server's, any size.
        output: u64_at(u, &["candidatesTokenCount"]).unwrap_or(0).saturating_add(thoughts.unwrap_or(0)),
        cached: u64_at(u, &["cachedContentTokenCount"]),
        cache_write: None,
        reasoning: thoughts,
    })
}

/// The `AUDIO` entries of `usageMetadata`'s per-modality details (prompt,
/// cache, and output: `candidatesTokensDetails`, or Live's
/// `responseTokensDetails`); none where the details are absent.
pub(super) fn audio_tokens(u: Option<&Value>) -> AudioTokens {
    let of = |keys: &[&str]| {
        let entries = keys.iter().find_map(|k| u?.get(*k))?.as_array()?;
        let audio = entries.iter().filter(|e| e.get("modality").and_then(Value::as_str) == Some("AUDIO"));
        Some(audio.filter_map(|e| u64_at(e, &["tokenCount"])).fold(0, u64::saturating_add))
    };
    AudioTokens {
        input: of(&["promptTokensDetails", "prompt_tokens_details"]),
        cached: of(&["cacheTokensDetails", "cache_tokens_details"]),
        output: of(&[
            "candidatesTokensDetails",
            "responseTokensDetails",
            "candidates_tokens_details",
            "response_tokens_details",
        ]),
    }
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
fn chunk(ev: &Event<'_>, out: &mut Parsed) -> Result<Seen, ProviderError> {
    let v = ev.json;
    if let Some(id) = str_at(v, &["responseId"]) {
        out.response_id = Some(id);
    }
    if let Some(m) = str_at(v, &["modelVersion"]) {
        out.response_model = Some(m);
    }
    if let Some(u) = usage(v) {
        out.usage = Some(u);
        out.audio = audio_tokens(v.get("usageMetadata"));
    }
    Ok(Seen { content: has_content(v), finished: finished(v) })
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
    use crate::http::h1::Head;
    use crate::providers::api::fixture;
    use crate::providers::provider;
    use serde_json::json;

    fn parse(
        shape: &'static Shape,
        req: &Value,
        body: &[u8],
        sse: bool,
        out: &mut Parsed,
    ) -> Result<(), ProviderError> {
        provider::read(&Gemini, shape, req, &Head::default(), body, sse, out)
    }

    #[test]
    fn generate_content_with_thoughts_and_cache() {
        let mut p = Parsed::default();
        parse(&GENERATE, &json!({}), &fixture("gemini/generate.json"), false, &mut p).unwrap();
        assert_eq!(p.response_model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(p.response_id.as_deref(), Some("mOdqaIHKBIuVz7IPx9KxmAk"));
        // candidates 212 + thoughts 1015; 1024 of the 1342 prompt tokens cached.
        assert_eq!(
            p.usage,
            Some(Usage { input: 1342, output: 1227, cached: Some(1024), cache_write: None, reasoning: Some(1015) })
        );
    }

    /// Audio in the prompt or the answer is read from the per-modality details.
    #[test]
    fn audio_parts_from_the_modality_details() {
        let body = json!({"usageMetadata":{"promptTokenCount":50,"candidatesTokenCount":9,
            "promptTokensDetails":[{"modality":"TEXT","tokenCount":20},{"modality":"AUDIO","tokenCount":30}],
            "candidatesTokensDetails":[{"modality":"TEXT","tokenCount":9}]}});
        let mut p = Parsed::default();
        parse(&GENERATE, &json!({}), body.to_string().as_bytes(), false, &mut p).unwrap();
        assert_eq!(p.audio, AudioTokens { input: Some(30), cached: None, output: Some(0) });
        let mut p = Parsed::default();
        parse(&GENERATE, &json!({}), br#"{"usageMetadata":{"promptTokenCount":5}}"#, false, &mut p).unwrap();
        assert_eq!(p.audio, AudioTokens::default());
    }

    /// Counts near u64::MAX (a hostile or broken server) saturate: no
    /// overflow panic, no wrap to a small number.
    #[test]
    fn huge_counts_saturate() {
        let max = u64::MAX;
        let body = json!({"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":max,"thoughtsTokenCount":2,
            "promptTokensDetails":[{"modality":"AUDIO","tokenCount":max},{"modality":"AUDIO","tokenCount":3}]}});
        let mut p = Parsed::default();
        parse(&GENERATE, &json!({}), body.to_string().as_bytes(), false, &mut p).unwrap();
        assert_eq!(p.usage.map(|u| u.output), Some(max));
        assert_eq!(p.audio.input, Some(max));
    }

    #[test]
    fn stream_sse_and_json_array_agree() {
        let mut a = Parsed::default();
        parse(&STREAM, &json!({}), &fixture("gemini/stream.sse"), true, &mut a).unwrap();
        let mut b = Parsed::default();
        parse(&STREAM, &json!({}), &fixture("gemini/stream.json"), false, &mut b).unwrap();
        assert_eq!(a.usage, Some(Usage { input: 9, output: 31, cached: None, cache_write: None, reasoning: None }));
        assert_eq!(a.usage, b.usage);
        assert!(a.stream_finished && b.stream_finished);
        assert!(a.first_content_offset.is_some() && b.first_content_offset.is_some());
        // A cut-short array still yields the chunks that arrived, unfinished.
        let full = fixture("gemini/stream.json");
        let mut c = Parsed::default();
        parse(&STREAM, &json!({}), &full[..full.len() / 2], false, &mut c).unwrap();
        assert!(!c.stream_finished);
    }

    #[test]
    fn embed_is_estimated_from_the_request() {
        let mut p = Parsed { request_model: Some("text-embedding-004".into()), ..Default::default() };
        let req = json!({"content": {"parts": [{"text": "hello world, this is a test"}]}});
        parse(&EMBED, &req, br#"{"embedding":{"values":[0.1,0.2]}}"#, false, &mut p).unwrap();
        assert!(p.usage.unwrap().input >= 5);
        assert_eq!(p.usage_source, Some(UsageSource::Estimated));
        assert!(parse(&EMBED, &req, b"nope", false, &mut p).is_err());
    }
}
