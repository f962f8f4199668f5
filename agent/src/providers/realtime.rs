//! OpenAI Realtime API over a WebSocket (`/v1/realtime?model=…`, Azure's
//! `/openai/realtime?deployment=…`): a session of events, one call per
//! response, from `response.created` (asked for by the client's
//! `response.create`, or begun by the server on voice activity) to
//! `response.done`, which carries the usage.
//!
//! Normalisation: `input = input_tokens` (text, audio and image, cached
//! included), `output = output_tokens` (text and audio), `cached =
//! input_token_details.cached_tokens`. The model is the session's: the URL's
//! `model` (or `deployment`), else the one the client's `session.update` or the
//! server's `session.created` names.
use serde_json::{json, Value};

use super::api::{
    str_at, u64_at, AudioTokens, Parsed, PathMatch, PathParts, ProviderError, Shape, StreamDefault, Usage,
};
use super::provider::Provider;
use super::response::{fold, Response, Seen};
use crate::http::ws_session::WsRole;

pub struct OpenAiRealtime;

pub static REALTIME: Shape =
    Shape { name: "realtime", operation: "realtime", stream: StreamDefault::WebSocket, embedding: false };
static SHAPES: [&Shape; 1] = [&REALTIME];

/// Server events that carry generated content (GA names, then beta names).
const CONTENT: [&str; 7] = [
    "response.output_text.delta",
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "response.function_call_arguments.delta",
    "response.text.delta",
    "response.audio.delta",
    "response.audio_transcript.delta",
];

impl Provider for OpenAiRealtime {
    fn unnamed_host(&self) -> &'static str {
        "openai_compatible"
    }

    fn shapes(&self) -> &'static [&'static Shape] {
        &SHAPES
    }

    fn match_path(&self, p: &PathParts<'_>) -> PathMatch {
        if p.last() == "realtime" {
            PathMatch::Call(&REALTIME, None)
        } else {
            PathMatch::Pass
        }
    }

    fn parse(&self, _: &Shape, _: &Value, resp: &Response<'_>, out: &mut Parsed) -> Result<(), ProviderError> {
        fold(resp.sse_json()?, out, |ev, out| {
            let r = ev.json.get("response");
            let kind = ev.kind();
            if kind == "session.created" || kind == "session.updated" {
                out.response_model = str_at(ev.json, &["session", "model"]).or(out.response_model.take());
            }
            if kind == "response.created" || kind == "response.done" {
                out.response_id = out.response_id.take().or_else(|| r.and_then(|r| str_at(r, &["id"])));
            }
            if kind == "response.done" {
                let u = r.and_then(|r| r.get("usage"));
                out.usage = usage(u);
                out.audio = AudioTokens {
                    input: u.and_then(|u| u64_at(u, &["input_token_details", "audio_tokens"])),
                    cached: u
                        .and_then(|u| u64_at(u, &["input_token_details", "cached_tokens_details", "audio_tokens"])),
                    output: u.and_then(|u| u64_at(u, &["output_token_details", "audio_tokens"])),
                };
                return Ok(Seen { content: false, finished: r.is_some() });
            }
            Ok(Seen { content: CONTENT.contains(&kind), finished: false })
        })?;
        Ok(())
    }

    fn ws_role(&self, _: &Shape, from_client: bool, msg: &Value) -> WsRole {
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
        match (from_client, kind) {
            (true, "session.update") | (false, "session.created" | "session.updated") => WsRole::Session,
            (true, "response.create") => WsRole::Request,
            (false, "response.created") => WsRole::Event,
            (false, k) if CONTENT.contains(&k) => WsRole::Content,
            (false, "response.done") => WsRole::End,
            _ => WsRole::Ignore,
        }
    }

    /// The response's parameters, with the session's model.
    fn ws_request(&self, _: &Shape, path: &str, session: [Option<&Value>; 2], request: Option<&Value>) -> Value {
        let query = path.split_once('?').map_or("", |(_, q)| q);
        let from_query = ["model", "deployment"].iter().find_map(|k| query_param(query, k));
        let model = from_query
            .or_else(|| session.iter().flatten().find_map(|s| str_at(s, &["session", "model"])))
            .map_or(Value::Null, Value::String);
        let mut body = request.and_then(|r| r.get("response")).filter(|r| r.is_object()).cloned().unwrap_or(json!({}));
        if let Some(o) = body.as_object_mut() {
            o.insert("model".into(), model);
            o.insert("stream".into(), Value::Bool(true));
        }
        body
    }
}

/// `usage` of `response.done`.
fn usage(u: Option<&Value>) -> Option<Usage> {
    let u = u.filter(|u| u.is_object())?;
    Some(Usage {
        input: u64_at(u, &["input_tokens"])?,
        output: u64_at(u, &["output_tokens"])?,
        cached: u64_at(u, &["input_token_details", "cached_tokens"]),
        cache_write: None,
        reasoning: None,
    })
}

/// A query parameter's value (percent-decoded); none when empty.
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| super::api::percent_decode(v))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::Head;
    use crate::providers::provider;

    fn done(usage: Value) -> String {
        json!({"type":"response.done","response":{"id":"resp_1","status":"completed","usage":usage}}).to_string()
    }

    #[test]
    fn reads_response_done_usage_and_the_first_content() {
        let usage = json!({"total_tokens":300,"input_tokens":200,"output_tokens":100,
            "input_token_details":{"cached_tokens":64,"text_tokens":50,"audio_tokens":150},
            "output_token_details":{"text_tokens":20,"audio_tokens":80}});
        let body = format!(
            "data: {}\n\ndata: {}\n\ndata: {}\n\ndata: {}\n\n",
            json!({"type":"session.updated","session":{"model":"gpt-realtime-2025-08-28"}}),
            json!({"type":"response.created","response":{"id":"resp_1"}}),
            json!({"type":"response.output_audio.delta","delta":"AAAA"}),
            done(usage)
        );
        let mut p = Parsed::default();
        provider::read(&OpenAiRealtime, &REALTIME, &json!({}), &Head::default(), body.as_bytes(), true, &mut p)
            .unwrap();
        assert_eq!(p.usage, Some(Usage { input: 200, output: 100, cached: Some(64), ..Default::default() }));
        assert_eq!(p.audio, AudioTokens { input: Some(150), cached: None, output: Some(80) });
        assert_eq!(p.response_id.as_deref(), Some("resp_1"));
        assert_eq!(p.response_model.as_deref(), Some("gpt-realtime-2025-08-28"));
        assert!(p.stream_finished && p.first_content_offset.is_some());
        // A done event without usage: no numbers invented.
        let mut p = Parsed::default();
        let body = format!("data: {}\n\n", json!({"type":"response.done","response":{"id":"r"}}));
        provider::read(&OpenAiRealtime, &REALTIME, &json!({}), &Head::default(), body.as_bytes(), true, &mut p)
            .unwrap();
        assert_eq!(p.usage, None);
    }

    #[test]
    fn roles_and_the_model_of_the_session() {
        let role = |c, v: Value| OpenAiRealtime.ws_role(&REALTIME, c, &v);
        assert_eq!(role(true, json!({"type":"session.update"})), WsRole::Session);
        assert_eq!(role(false, json!({"type":"session.created"})), WsRole::Session);
        assert_eq!(role(true, json!({"type":"response.create"})), WsRole::Request);
        assert_eq!(role(true, json!({"type":"input_audio_buffer.append","audio":"AA"})), WsRole::Ignore);
        assert_eq!(role(false, json!({"type":"response.audio.delta"})), WsRole::Content);
        assert_eq!(role(false, json!({"type":"response.done"})), WsRole::End);
        assert_eq!(role(false, json!({"type":"rate_limits.updated"})), WsRole::Ignore);
        // A client message that says it is a server event is not one.
        assert_eq!(role(true, json!({"type":"response.done"})), WsRole::Ignore);
        let created = json!({"type":"session.created","session":{"model":"gpt-realtime-2025-08-28"}});
        let update = json!({"type":"session.update","session":{"model":"gpt-realtime-mini"}});
        let ask = json!({"type":"response.create","response":{"instructions":"be brief"}});
        let req = |path, s: [Option<&Value>; 2], r| OpenAiRealtime.ws_request(&REALTIME, path, s, r);
        let r = req("/v1/realtime?model=gpt-realtime", [Some(&update), Some(&created)], Some(&ask));
        assert_eq!(r, json!({"model":"gpt-realtime","stream":true,"instructions":"be brief"}));
        let r = req("/v1/realtime", [Some(&update), Some(&created)], None);
        assert_eq!(r["model"], "gpt-realtime-mini");
        let r = req("/openai/realtime?api-version=2025-04-01&deployment=rt%2Dprod", [None, Some(&created)], None);
        assert_eq!(r["model"], "rt-prod");
        assert_eq!(req("/v1/realtime?model=", [None, Some(&created)], None)["model"], "gpt-realtime-2025-08-28");
        assert_eq!(req("/v1/realtime", [None, None], None)["model"], Value::Null);
    }
}
