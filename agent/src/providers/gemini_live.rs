//! Gemini Live API over a WebSocket (`…GenerativeService.BidiGenerateContent`,
//! Vertex AI's `…LlmBidiService/BidiGenerateContent`): the client's `setup`
//! names the model, `clientContent` or `toolResponse` asks for a turn, the
//! server streams `serverContent` and reports `usageMetadata`.
//!
//! A call ends at each server message that carries `usageMetadata`: a server
//! message may carry usage beside its one other field, and reports for one turn
//! add up, so one call per report counts each token once whatever the server's
//! rhythm.
//!
//! Field names are read in both spellings protobuf's JSON accepts
//! (`clientContent` and `client_content`: google-genai sends the latter).
//!
//! Normalisation as for the REST API: `input = promptTokenCount +
//! toolUsePromptTokenCount` (cached included), `output = responseTokenCount`
//! (or `candidatesTokenCount`) `+ thoughtsTokenCount`, `cached =
//! cachedContentTokenCount`, `reasoning = thoughtsTokenCount`.
use serde_json::{json, Value};

use super::api::{str_at, Parsed, PathMatch, PathParts, ProviderError, Shape, StreamDefault, Usage};
use super::prompt::Prompt;
use super::provider::Provider;
use super::response::{fold, Response, Seen};
use crate::http::ws_session::WsRole;

pub struct GeminiLive;

pub static LIVE: Shape =
    Shape { name: "gemini_live", operation: "live", stream: StreamDefault::WebSocket, embedding: false };
static SHAPES: [&Shape; 1] = [&LIVE];

impl Provider for GeminiLive {
    fn unnamed_host(&self) -> &'static str {
        "google_compatible"
    }

    fn shapes(&self) -> &'static [&'static Shape] {
        &SHAPES
    }

    fn match_path(&self, p: &PathParts<'_>) -> PathMatch {
        let method = p.last().rsplit('.').next().unwrap_or("");
        if matches!(method, "BidiGenerateContent" | "BidiGenerateContentConstrained") {
            PathMatch::Call(&LIVE, None)
        } else {
            PathMatch::Pass
        }
    }

    /// The REST API's spellings (`contents`, `systemInstruction`, `tools`).
    fn prompt(&self, _: &Shape, r: &Value) -> Prompt {
        super::gemini::Gemini.prompt(&super::gemini::GENERATE, r)
    }

    fn parse(&self, _: &Shape, _: &Value, resp: &Response<'_>, out: &mut Parsed) -> Result<(), ProviderError> {
        fold(resp.sse_json()?, out, |ev, out| {
            let v = ev.json;
            if let Some(u) = usage(v) {
                out.usage = Some(u);
                out.audio = super::gemini::audio_tokens(field(v, "usageMetadata"));
                return Ok(Seen { content: has_content(v), finished: true });
            }
            if out.response_id.is_none() {
                out.response_id = str_at(v, &["responseId"]);
            }
            Ok(Seen { content: has_content(v), finished: false })
        })?;
        Ok(())
    }

    fn ws_role(&self, _: &Shape, from_client: bool, msg: &Value) -> WsRole {
        let has = |k: &str| field(msg, k).is_some();
        if from_client {
            return if has("setup") {
                WsRole::Session
            } else if has("clientContent") || has("toolResponse") {
                WsRole::Request
            } else {
                WsRole::Ignore
            };
        }
        if has("usageMetadata") {
            WsRole::End
        } else if has_content(msg) {
            WsRole::Content
        } else if has("serverContent") || has("toolCall") {
            WsRole::Event
        } else {
            WsRole::Ignore
        }
    }

    /// The turn's content, with the model and config of the session's setup.
    fn ws_request(&self, _: &Shape, _: &str, session: [Option<&Value>; 2], request: Option<&Value>) -> Value {
        let setup = session[0].and_then(|s| field(s, "setup"));
        let model = setup
            .and_then(|s| str_at(s, &["model"]))
            .map(|m| m.rsplit('/').next().unwrap_or(&m).to_owned())
            .map_or(Value::Null, Value::String);
        let turns = request.and_then(|r| field(r, "clientContent")).and_then(|c| c.get("turns"));
        let mut body = json!({"model": model, "stream": true, "contents": turns.cloned().unwrap_or(Value::Null)});
        for key in ["systemInstruction", "tools", "generationConfig"] {
            if let Some(v) = setup.and_then(|s| field(s, key)) {
                body[key] = v.clone();
            }
        }
        body
    }
}

/// A field by its camelCase name, or the snake_case one.
fn field<'a>(v: &'a Value, camel: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| {
        let mut snake = String::with_capacity(camel.len() + 4);
        for c in camel.chars() {
            if c.is_ascii_uppercase() {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        }
        v.get(&snake)
    })
}

/// A report without a prompt count has no usage (the record's tokens are
/// unknown, not 0), as in the REST API; a missing output count is 0 there too
/// (protobuf's JSON leaves zeros out). Sums saturate: the counts are the
/// server's, any size.
fn usage(v: &Value) -> Option<Usage> {
    let u = field(v, "usageMetadata").filter(|u| u.is_object())?;
    let count = |camel: &str| field(u, camel).and_then(Value::as_u64);
    let thoughts = count("thoughtsTokenCount");
    let output = count("responseTokenCount").or_else(|| count("candidatesTokenCount"));
    Some(Usage {
        input: count("promptTokenCount")?.saturating_add(count("toolUsePromptTokenCount").unwrap_or(0)),
        output: output.unwrap_or(0).saturating_add(thoughts.unwrap_or(0)),
        cached: count("cachedContentTokenCount"),
        cache_write: None,
        reasoning: thoughts,
    })
}

/// The model's turn carries parts (text, audio, a tool call).
fn has_content(v: &Value) -> bool {
    let parts = field(v, "serverContent").and_then(|c| field(c, "modelTurn")).and_then(|t| t.get("parts"));
    parts.and_then(Value::as_array).is_some_and(|p| !p.is_empty()) || field(v, "toolCall").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::Head;
    use crate::providers::api::AudioTokens;
    use crate::providers::provider;

    #[test]
    fn usage_and_content_of_a_turn() {
        let body = [
            json!({"serverContent":{"modelTurn":{"parts":[{"text":"Hi"}]}}}),
            json!({"serverContent":{"turnComplete":true},"usageMetadata":{"promptTokenCount":40,
                "cachedContentTokenCount":8,"responseTokenCount":12,"thoughtsTokenCount":3,
                "toolUsePromptTokenCount":5,"totalTokenCount":60,
                "promptTokensDetails":[{"modality":"TEXT","tokenCount":10},{"modality":"AUDIO","tokenCount":30}],
                "responseTokensDetails":[{"modality":"AUDIO","tokenCount":12}]}}),
        ]
        .iter()
        .map(|e| format!("data: {e}\n\n"))
        .collect::<String>();
        let mut p = Parsed::default();
        provider::read(&GeminiLive, &LIVE, &json!({}), &Head::default(), body.as_bytes(), true, &mut p).unwrap();
        assert_eq!(
            p.usage,
            Some(Usage { input: 45, output: 15, cached: Some(8), cache_write: None, reasoning: Some(3) })
        );
        assert!(p.stream_finished);
        assert_eq!(p.audio, AudioTokens { input: Some(30), cached: None, output: Some(12) });
        assert!(p.first_content_offset.is_some_and(|o| o < body.find("usageMetadata").unwrap()));
    }

    /// One usage report as the call's events.
    fn usage_of(report: Value) -> Option<Usage> {
        let body = format!("data: {}\n\n", json!({ "usageMetadata": report }));
        let mut p = Parsed::default();
        provider::read(&GeminiLive, &LIVE, &json!({}), &Head::default(), body.as_bytes(), true, &mut p).unwrap();
        p.usage
    }

    #[test]
    fn unknown_counts_stay_unknown_and_huge_ones_saturate() {
        // No prompt count: no usage (unknown), not an input of 0.
        assert_eq!(usage_of(json!({"responseTokenCount":7})), None);
        assert_eq!(usage_of(json!({"toolUsePromptTokenCount":3,"responseTokenCount":7})), None);
        // Either spelling of every count; candidatesTokenCount as the output.
        let u = usage_of(json!({"prompt_token_count":4,"tool_use_prompt_token_count":1,"candidates_token_count":2}));
        assert_eq!(u, Some(Usage { input: 5, output: 2, ..Default::default() }));
        // No output count: 0 (protobuf leaves zeros out).
        assert_eq!(usage_of(json!({"promptTokenCount":4})), Some(Usage { input: 4, ..Default::default() }));
        let max = u64::MAX;
        let u = usage_of(json!({"promptTokenCount":max,"toolUsePromptTokenCount":9,
            "responseTokenCount":max,"thoughtsTokenCount":9}));
        assert_eq!(u.map(|u| (u.input, u.output)), Some((max, max)));
    }

    #[test]
    fn roles_and_the_model_of_the_setup() {
        let role = |c, v: Value| GeminiLive.ws_role(&LIVE, c, &v);
        assert_eq!(role(true, json!({"setup":{"model":"models/gemini-live-2.5-flash"}})), WsRole::Session);
        assert_eq!(role(true, json!({"clientContent":{"turnComplete":true}})), WsRole::Request);
        assert_eq!(role(true, json!({"client_content":{"turnComplete":true}})), WsRole::Request);
        assert_eq!(role(false, json!({"usage_metadata":{"promptTokenCount":1}})), WsRole::End);
        assert_eq!(role(true, json!({"realtimeInput":{"audio":{"data":"AA"}}})), WsRole::Ignore);
        assert_eq!(role(false, json!({"setupComplete":{}})), WsRole::Ignore);
        assert_eq!(role(false, json!({"serverContent":{"modelTurn":{"parts":[{"text":"a"}]}}})), WsRole::Content);
        assert_eq!(role(false, json!({"serverContent":{"turnComplete":true}})), WsRole::Event);
        assert_eq!(role(false, json!({"usageMetadata":{"promptTokenCount":1}})), WsRole::End);
        let setup = json!({"setup":{"model":"models/gemini-live-2.5-flash","generationConfig":{"temperature":0}}});
        let turn = json!({"clientContent":{"turns":[{"role":"user","parts":[{"text":"hi"}]}],"turnComplete":true}});
        let r = GeminiLive.ws_request(&LIVE, "/ws/x", [Some(&setup), None], Some(&turn));
        assert_eq!(r["model"], "gemini-live-2.5-flash");
        assert_eq!(r["contents"][0]["parts"][0]["text"], "hi");
        assert_eq!(r["generationConfig"]["temperature"], 0);
        // google-genai's spelling.
        let setup = json!({"setup":{"model":"models/m","generation_config":{"temperature":1}}});
        let turn = json!({"client_content":{"turns":[{"role":"user","parts":[{"text":"yo"}]}]}});
        let r = GeminiLive.ws_request(&LIVE, "/ws/x", [Some(&setup), None], Some(&turn));
        assert_eq!((&r["model"], &r["contents"][0]["parts"][0]["text"]), (&json!("m"), &json!("yo")));
        assert_eq!(r["generationConfig"]["temperature"], 1);
        let paths = [
            "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
            "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained",
            "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent",
        ];
        for path in paths {
            assert_eq!(GeminiLive.match_path(&PathParts::new(path).unwrap()), PathMatch::Call(&LIVE, None), "{path}");
        }
        assert_eq!(GeminiLive.match_path(&PathParts::new("/v1/models/g:generateContent").unwrap()), PathMatch::Pass);
    }
}
