//! An exchange to a call record: what the request asked, whether the response
//! counts, the provider's reading of it, and every field of the record that the
//! exchange and its capture decide (times, TLS library, ids, path, HTTP
//! version). The who-fields (attribution's) and the cost are added by the caller;
//! what the request body says about the end user is handed on as a fact
//! ([`Call::body_user`]) for attribution to weigh.
use serde_json::Value;
use tokentap_event::{LlmCall, UsageSource};

use super::api::{host_without_port, Parsed, ProviderError};
use super::features::{self, Hasher};
use super::provider::Endpoint;
use super::response::Response;
use crate::capture::clock::Clock;
use crate::capture::event::ConnMeta;
use crate::http::{body, exchange::Exchange, message::Classified};

/// Response headers naming the provider's request id, first found wins.
pub const REQUEST_ID_HEADERS: [&str; 3] = ["x-request-id", "request-id", "x-amzn-requestid"];

/// Read model, usage and ids from an exchange. A non-2xx response yields a record
/// without usage (it bills nothing); a 2xx response that can't be read is an error
/// (counted, no record) so no number is ever invented.
pub fn parse(endpoint: &Endpoint, ex: &Exchange, max_body: usize, hash: Hasher) -> Result<Parsed, ProviderError> {
    let req_body =
        body::decode(ex.request.head.header("content-encoding"), &ex.request.body, max_body).unwrap_or_default();
    let request: Value = serde_json::from_slice(&req_body).unwrap_or(Value::Null);
    let api = endpoint.api;
    let mut parsed = Parsed {
        request_model: request
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| endpoint.path_model.clone()),
        stream: api.shape.stream.streams(request.get("stream").and_then(Value::as_bool)),
        features: features::of_request(api, &request, hash),
        service_tier: request.get("service_tier").and_then(Value::as_str).map(str::to_owned),
        ..Default::default()
    };
    let status = ex.response.head.status.unwrap_or(0);
    if !(200..300).contains(&status) {
        return Ok(parsed);
    }
    if ex.response.body_truncated {
        return Err(ProviderError::TruncatedBody);
    }
    // A body the client never read whole may be recorded from its headers
    // alone; the part that was read need not decode.
    let headers_only = !ex.response.complete && api.usage_in_headers();
    let body = match body::decode(ex.response.head.header("content-encoding"), &ex.response.body, max_body) {
        Err(_) if headers_only => Vec::new(),
        b => b?,
    };
    let resp = Response::new(&ex.response.head, &body);
    let streamed = resp.framing.streamed();
    parsed.stream |= streamed;
    // A cut-short response counts only if it is a stream whose final event
    // arrived (clients may stop reading before the terminating chunk), or its
    // headers carry the usage.
    if !ex.response.complete && !streamed {
        if !headers_only {
            return Err(ProviderError::Incomplete);
        }
        api.read(&request, &resp, &mut parsed)?;
        if parsed.usage_source != Some(UsageSource::Headers) {
            return Err(ProviderError::Incomplete);
        }
        parsed.body_unread = true;
        return Ok(parsed);
    }
    api.read(&request, &resp, &mut parsed)?;
    if !ex.response.complete && !parsed.stream_finished {
        return Err(ProviderError::Incomplete);
    }
    if let Some(t) = resp.answered_tier() {
        parsed.service_tier = Some(t);
    }
    // The first-content offset is only meaningful on the raw body.
    if ex.response.head.header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        parsed.first_content_offset = parsed.first_content_offset.map(|_| 0);
    }
    Ok(parsed)
}

/// What reading an exchange needs besides the exchange.
pub struct CallContext<'a> {
    /// Largest body decoded (content coding removed).
    pub max_body: usize,
    /// Kernel time to the record's wall-clock `ts`.
    pub clock: Clock,
    /// Keyed hash for prompt features.
    pub hash: Hasher<'a>,
}

/// A complete call: the record but for its who-fields and cost, and what the
/// request body says about the end user (read for 2xx answers only).
#[derive(Debug)]
pub struct Call {
    pub record: LlmCall,
    pub body_user: Option<String>,
    /// Read from the response headers: the client never read the whole body.
    pub body_unread: bool,
}

/// The call of a classified exchange on a connection.
pub fn call(c: &Classified<Endpoint>, conn: &ConnMeta, cx: &CallContext) -> Result<Call, ProviderError> {
    let (endpoint, ex) = (&c.endpoint, &c.exchange);
    let mut parsed = parse(endpoint, ex, cx.max_body, cx.hash)?;
    let body_user = parsed.end_user.take();
    let body_unread = parsed.body_unread;
    let mut record = record(endpoint, ex, parsed);
    // What capture knows: when, and which TLS library (none for plaintext sockets).
    record.ts = LlmCall::format_ts(cx.clock.wall_ns(ex.request.first_ts));
    record.tls_library = conn.source.tls_library().map(str::to_owned);
    Ok(Call { record, body_user, body_unread })
}

/// The record's fields the exchange decides.
fn record(endpoint: &Endpoint, ex: &Exchange, parsed: Parsed) -> LlmCall {
    let (req, resp) = (&ex.request, &ex.response);
    let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
    let ttft_ms = parsed
        .first_content_offset
        .filter(|_| parsed.stream)
        .and_then(|off| resp.ts_of_body_offset(off))
        .map(|t| ms(req.first_ts, t));
    let usage = parsed.usage;
    LlmCall {
        event_id: LlmCall::new_event_id(),
        duration_ms: Some(ms(req.first_ts, resp.last_ts)),
        ttft_ms,
        provider: endpoint.provider.clone(),
        operation: endpoint.api.operation().to_owned(),
        request_model: parsed.request_model,
        response_model: parsed.response_model,
        stream: parsed.stream,
        status: resp.head.status,
        input_tokens: usage.map(|u| u.input),
        output_tokens: usage.map(|u| u.output),
        cached_input_tokens: usage.and_then(|u| u.cached),
        cache_write_tokens: usage.and_then(|u| u.cache_write),
        reasoning_tokens: usage.and_then(|u| u.reasoning),
        input_audio_tokens: usage.and(parsed.audio.input),
        cached_audio_tokens: usage.and(parsed.audio.cached),
        output_audio_tokens: usage.and(parsed.audio.output),
        usage_source: parsed.usage_source,
        cost_usd: None,
        response_id: parsed.response_id,
        request_id: REQUEST_ID_HEADERS.iter().find_map(|h| resp.head.header(h)).map(str::to_owned),
        server: req.head.header("host").map(|h| host_without_port(h).to_owned()),
        // Query strings can carry credentials (`?key=`): never recorded.
        path: req.head.path.as_deref().map(|p| p.split('?').next().unwrap_or(p).to_owned()),
        http_version: Some(if req.head.http2 { "2".to_owned() } else { format!("1.{}", req.head.minor_version) }),
        features: parsed.features,
        service_tier: parsed.service_tier,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::api::fixture;
    use crate::providers::rules::Rules;

    /// One exchange as the HTTP stage hands it over (complete unless `cut`).
    fn exchange(path: &str, request: &str, status: u16, content_type: &str, body: &[u8]) -> Exchange {
        use crate::http::h1::{Head, Message};
        let head = |headers: &[(&str, &str)]| Head {
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
            ..Default::default()
        };
        Exchange {
            request: Message {
                head: Head {
                    method: Some("POST".into()),
                    path: Some(path.into()),
                    ..head(&[("host", "localhost"), ("content-type", "application/json")])
                },
                body: request.as_bytes().to_vec(),
                complete: true,
                ..Default::default()
            },
            response: Message {
                head: Head { status: Some(status), ..head(&[("content-type", content_type)]) },
                body: body.to_vec(),
                complete: true,
                ..Default::default()
            },
        }
    }

    fn run(ex: &Exchange) -> Result<Parsed, ProviderError> {
        let endpoint = Rules::default().classify(&ex.request.head).expect("an LLM call");
        parse(&endpoint, ex, 1 << 20, &|b: &[u8]| b.len().to_string())
    }

    /// `call()` adds what capture knows (wall-clock `ts`, TLS library) and hands
    /// the body's end user on as a fact, not as the record's `end_user`.
    #[test]
    fn call_fills_capture_facts_and_hands_on_the_body_user() {
        use crate::capture::event::{Comm, ConnMeta};
        use tokentap_agent_common::Source;
        let ok = br#"{"id":"x","model":"m","usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
        let mut ex =
            exchange("/v1/chat/completions?key=s", r#"{"model":"m","user":"u-1"}"#, 200, "application/json", ok);
        ex.request.first_ts = 1_000_000;
        ex.response.head.headers.push(("request-id".into(), b"r-1".to_vec()));
        let endpoint = Rules::default().classify(&ex.request.head).unwrap();
        let c = Classified { endpoint, exchange: ex };
        let hash = |b: &[u8]| b.len().to_string();
        let cx = CallContext { max_body: 1 << 20, clock: Clock::fixed(1_000_000_000), hash: &hash };
        let mut conn = ConnMeta { tgid: 1, cgroup_id: 0, comm: Comm([0; 16]), source: Source::OpenSsl };
        let Call { record, body_user, .. } = call(&c, &conn, &cx).unwrap();
        assert_eq!(record.ts, LlmCall::format_ts(1_001_000_000));
        assert_eq!(record.tls_library.as_deref(), Some(Source::OpenSsl.as_str()));
        assert_eq!((record.path.as_deref(), record.request_id.as_deref()), (Some("/v1/chat/completions"), Some("r-1")));
        assert_eq!((body_user.as_deref(), record.end_user, record.pid), (Some("u-1"), None, None));
        conn.source = Source::Socket;
        assert_eq!(call(&c, &conn, &cx).unwrap().record.tls_library, None);
    }

    #[test]
    fn end_user_is_read_from_the_body_of_2xx_responses_only() {
        let ok = br#"{"id":"x","model":"m","usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
        let err = br#"{"error":{"message":"slow down"}}"#;
        let json = "application/json";
        let chat = r#"{"model":"m","user":"u-1"}"#;
        assert_eq!(
            run(&exchange("/v1/chat/completions", chat, 200, json, ok)).unwrap().end_user.as_deref(),
            Some("u-1")
        );
        assert_eq!(run(&exchange("/v1/chat/completions", chat, 429, json, err)).unwrap().end_user, None);
        let resp = r#"{"model":"m","safety_identifier":"s-1"}"#;
        let ok_resp = br#"{"id":"r","model":"m","usage":{"input_tokens":1,"output_tokens":1}}"#;
        assert_eq!(run(&exchange("/v1/responses", resp, 200, json, ok_resp)).unwrap().end_user.as_deref(), Some("s-1"));
        let an = r#"{"model":"c","metadata":{"user_id":"a-1"}}"#;
        let ok_an = br#"{"id":"m","model":"c","usage":{"input_tokens":1,"output_tokens":1}}"#;
        assert_eq!(run(&exchange("/v1/messages", an, 200, json, ok_an)).unwrap().end_user.as_deref(), Some("a-1"));
        assert_eq!(run(&exchange("/v1/messages", an, 500, json, err)).unwrap().end_user, None);
        // Other providers' bodies name no end user.
        assert_eq!(run(&exchange("/v2/chat", chat, 200, json, br#"{"id":"c"}"#)).unwrap().end_user, None);
    }

    #[test]
    fn answered_tier_wins_over_the_requested_one_in_bodies_and_sse_only() {
        let f = fixture;
        let req = r#"{"model":"m","service_tier":"flex"}"#;
        let tier = |ex: Exchange| run(&ex).unwrap().service_tier;
        let json = "application/json";
        assert_eq!(
            tier(exchange("/v1/chat/completions", req, 200, json, &f("openai/chat_sync.json"))).as_deref(),
            Some("default")
        );
        assert_eq!(tier(exchange("/v1/chat/completions", req, 200, json, br#"{"id":"x"}"#)).as_deref(), Some("flex"));
        assert_eq!(
            tier(exchange("/v1/chat/completions", req, 429, json, br#"{"service_tier":"x"}"#)).as_deref(),
            Some("flex")
        );
        let sse = b"data: {\"type\":\"response.completed\",\"response\":{\"service_tier\":\"auto\"}}\n\ndata: {\"type\":\"x\"}\n\n";
        assert_eq!(tier(exchange("/v1/responses", req, 200, "text/event-stream", sse)).as_deref(), Some("auto"));
        // Event-stream, NDJSON and JSON-array streams are not searched.
        let es = "application/vnd.amazon.eventstream";
        assert_eq!(
            tier(exchange("/model/m/converse-stream", req, 200, es, &f("bedrock/converse_stream.bin"))).as_deref(),
            Some("flex")
        );
        let nd = b"{\"model\":\"l\",\"done\":false,\"service_tier\":\"x\"}\n{\"model\":\"l\",\"done\":true,\"service_tier\":\"x\"}\n";
        assert_eq!(tier(exchange("/api/chat", req, 200, "application/x-ndjson", nd)).as_deref(), Some("flex"));
        let arr = br#"[{"service_tier":"x","candidates":[{"finishReason":"STOP"}]}]"#;
        assert_eq!(tier(exchange("/v1/models/g:streamGenerateContent", req, 200, json, arr)).as_deref(), Some("flex"));
    }

    /// The body offset of the first event with content (its last byte), per
    /// framing; TTFT is read off it. Encoded bodies give 0: offsets in the
    /// decoded body mean nothing on the wire.
    #[test]
    fn first_content_offsets_of_every_stream_framing() {
        let sse = "text/event-stream";
        let chat = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hello world"}]}"#;
        for (path, ct, name, want) in [
            ("/v1/chat/completions", sse, "openai/chat_stream_usage.sse", 640),
            ("/v1/chat/completions", sse, "openai/chat_stream_no_usage.sse", 487),
            ("/v1/responses", sse, "openai/responses_stream.sse", 1037),
            ("/v1/messages", sse, "anthropic/messages_stream.sse", 605),
            ("/v2/chat", sse, "cohere/chat_stream.sse", 429),
            ("/v1/models/g:streamGenerateContent", sse, "gemini/stream.sse", 300),
            ("/v1/models/g:streamGenerateContent", "application/json", "gemini/stream.json", 455),
            ("/model/m/converse-stream", "application/vnd.amazon.eventstream", "bedrock/converse_stream.bin", 278),
            ("/api/chat", "application/x-ndjson", "ollama/chat_stream.ndjson", 140),
        ] {
            let p = run(&exchange(path, chat, 200, ct, &fixture(name))).unwrap();
            assert_eq!(p.first_content_offset, Some(want), "{name}");
            assert!(p.stream, "{name}");
        }
        let mut ex = exchange("/v1/messages", chat, 200, sse, &fixture("anthropic/messages_stream.sse"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &ex.response.body).unwrap();
        ex.response.body = gz.finish().unwrap();
        ex.response.head.headers.push(("content-encoding".into(), b"gzip".to_vec()));
        assert_eq!(run(&ex).unwrap().first_content_offset, Some(0));
        let sync =
            run(&exchange("/v1/chat/completions", chat, 200, "application/json", &fixture("openai/chat_sync.json")));
        assert_eq!(sync.unwrap().first_content_offset, None);
    }

    /// InvokeModel's counts are headers: a body cut short (never read whole,
    /// gzip or not) still makes the call; Converse's body carries its usage.
    #[test]
    fn a_cut_short_invoke_model_is_read_from_its_headers() {
        let invoke = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke";
        let cut = |path: &str, gzip: bool, headers: bool| {
            let raw = fixture("bedrock/invoke_response.http");
            let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let mut body = raw[at..].to_vec();
            let mut ex = exchange(path, "{}", 200, "application/json", &[]);
            if gzip {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                std::io::Write::write_all(&mut gz, &body).unwrap();
                body = gz.finish().unwrap();
                ex.response.head.headers.push(("content-encoding".into(), b"gzip".to_vec()));
            }
            if headers {
                for (n, v) in
                    [("x-amzn-bedrock-input-token-count", "17"), ("x-amzn-bedrock-output-token-count", "4410")]
                {
                    ex.response.head.headers.push((n.into(), v.as_bytes().to_vec()));
                }
            }
            ex.response.body = body[..body.len() / 3].to_vec();
            ex.response.complete = false;
            run(&ex)
        };
        for gzip in [false, true] {
            let p = cut(invoke, gzip, true).unwrap();
            assert_eq!(p.usage.map(|u| (u.input, u.output)), Some((17, 4410)), "gzip {gzip}");
            assert_eq!(p.usage_source, Some(UsageSource::Headers));
            assert!(p.body_unread);
            assert_eq!(p.response_id, None);
        }
        assert_eq!(cut(invoke, false, false), Err(ProviderError::Incomplete), "no counts in the headers");
        let converse = invoke.replace("/invoke", "/converse");
        assert_eq!(cut(&converse, false, true), Err(ProviderError::Incomplete));
        let mut whole = exchange(invoke, "{}", 200, "application/json", br#"{"id":"msg_1"}"#);
        whole.response.head.headers.push(("x-amzn-bedrock-input-token-count".into(), b"1".to_vec()));
        whole.response.head.headers.push(("x-amzn-bedrock-output-token-count".into(), b"2".to_vec()));
        assert!(!run(&whole).unwrap().body_unread);
    }

    #[test]
    fn stream_and_incomplete_gates() {
        let json = "application/json";
        let sse = "text/event-stream";
        let body = fixture("anthropic/messages_stream.sse");
        let cut = |mut ex: Exchange, keep: usize| {
            ex.response.body.truncate(keep);
            ex.response.complete = false;
            run(&ex)
        };
        // A cut-short stream counts when its final event arrived, not before.
        let at_stop = body.windows(12).position(|w| w == b"message_stop").unwrap();
        assert!(cut(exchange("/v1/messages", "{}", 200, sse, &body), body.len() - 2).is_ok());
        assert_eq!(cut(exchange("/v1/messages", "{}", 200, sse, &body), at_stop / 2), Err(ProviderError::Incomplete));
        // A cut-short sync body never counts.
        let sync = fixture("openai/chat_sync.json");
        assert_eq!(
            cut(exchange("/v1/chat/completions", "{}", 200, json, &sync), sync.len()),
            Err(ProviderError::Incomplete)
        );
        let mut ex = exchange("/v1/chat/completions", "{}", 200, json, &sync);
        ex.response.body_truncated = true;
        assert_eq!(run(&ex), Err(ProviderError::TruncatedBody));
        // Non-2xx: a record without usage, whatever the body.
        let p = run(&exchange("/v1/chat/completions", r#"{"model":"m","stream":true}"#, 503, json, b"<html>")).unwrap();
        assert_eq!((p.usage, p.request_model.as_deref(), p.stream), (None, Some("m"), true));
        // Which shapes stream without being asked, and which unless told not to.
        let stream = |path: &str, req: &str| run(&exchange(path, req, 400, json, b"")).unwrap().stream;
        assert!(stream("/api/chat", "{}") && stream("/api/generate", "{}"));
        assert!(!stream("/api/chat", r#"{"stream":false}"#) && !stream("/api/embed", "{}"));
        assert!(stream("/v1/models/g:streamGenerateContent", r#"{"stream":false}"#));
        assert!(stream("/model/m/converse-stream", "{}") && stream("/model/m/invoke-with-response-stream", "{}"));
        assert!(!stream("/model/m/converse", "{}") && !stream("/v1/chat/completions", "{}"));
        assert!(stream("/v1/chat/completions", r#"{"stream":true}"#));
        // The model named by the path is the fallback for the body's.
        let m = |req: &str| run(&exchange("/model/p-model/converse", req, 400, json, b"")).unwrap().request_model;
        assert_eq!(m("{}").as_deref(), Some("p-model"));
        assert_eq!(m(r#"{"model":"b-model"}"#).as_deref(), Some("b-model"));
        // A streamed content type makes a call a stream whatever the request said.
        let p = run(&exchange("/v1/messages", r#"{"stream":false}"#, 200, sse, &body)).unwrap();
        assert!(p.stream);
    }
}
