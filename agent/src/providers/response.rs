//! A response body as providers read it: its framing (from the content type) and
//! the parses more than one reader needs (the JSON document, the SSE events),
//! each done once. Also the stream loop every provider shares ([`fold`]).
use std::cell::OnceCell;

use serde_json::Value;

use super::api::{Parsed, ProviderError};
use crate::http::h1::Head;
use crate::http::sse::{self, SseEvent};

/// How the body is framed, as its content type says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One document (JSON, or whatever else the server sent).
    Document,
    /// `text/event-stream`.
    Sse,
    /// `application/vnd.amazon.eventstream` (Bedrock).
    EventStream,
    /// `application/x-ndjson` (Ollama).
    NdJson,
}

impl Framing {
    pub fn of(head: &Head) -> Framing {
        let ct = head.header("content-type").unwrap_or("").to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Framing::Sse
        } else if ct.starts_with("application/vnd.amazon.eventstream") {
            Framing::EventStream
        } else if ct.starts_with("application/x-ndjson") {
            Framing::NdJson
        } else {
            Framing::Document
        }
    }

    /// The content type says the response was streamed.
    pub fn streamed(self) -> bool {
        self != Framing::Document
    }
}

/// One SSE event, with its data parsed when it is JSON.
#[derive(Debug)]
pub struct SseJson {
    pub event: SseEvent,
    pub json: Option<Value>,
}

/// A decoded response body.
pub struct Response<'a> {
    pub head: &'a Head,
    pub body: &'a [u8],
    pub framing: Framing,
    json: OnceCell<Result<Value, String>>,
    sse: OnceCell<Vec<SseJson>>,
}

impl<'a> Response<'a> {
    pub fn new(head: &'a Head, body: &'a [u8]) -> Self {
        Self { head, body, framing: Framing::of(head), json: OnceCell::new(), sse: OnceCell::new() }
    }

    /// The body as one JSON document.
    pub fn json(&self) -> Result<&Value, ProviderError> {
        self.json
            .get_or_init(|| serde_json::from_slice(self.body).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| ProviderError::BadJson(e.clone()))
    }

    /// Every SSE event of the body (`[DONE]` included).
    pub fn sse(&self) -> &[SseJson] {
        self.sse.get_or_init(|| {
            sse::parse(self.body)
                .into_iter()
                .map(|event| SseJson { json: serde_json::from_str(&event.data).ok(), event })
                .collect()
        })
    }

    /// The SSE events whose data is JSON.
    pub fn sse_events(&self) -> impl Iterator<Item = Event<'_>> {
        self.sse()
            .iter()
            .filter_map(|e| Some(Event { json: e.json.as_ref()?, name: e.event.event.as_deref(), end: e.event.end }))
    }

    /// [`Response::sse_events`]; a stream with none is not the provider's format.
    pub fn sse_json(&self) -> Result<Vec<Event<'_>>, ProviderError> {
        let events: Vec<Event> = self.sse_events().collect();
        if events.is_empty() {
            return Err(ProviderError::BadJson("no JSON events in the stream".into()));
        }
        Ok(events)
    }

    /// The tier a response says it was served at: `service_tier` at the top level
    /// (OpenAI chat, Responses under `response`) or in `usage` (Anthropic), in the
    /// body or in the last SSE event that has one. Other stream framings: none.
    pub fn answered_tier(&self) -> Option<String> {
        let find = |v: &Value| {
            ["/service_tier", "/response/service_tier", "/usage/service_tier", "/message/usage/service_tier"]
                .iter()
                .find_map(|p| v.pointer(p).and_then(Value::as_str).map(str::to_owned))
        };
        if self.framing == Framing::Sse {
            self.sse().iter().rev().find_map(|e| e.json.as_ref().and_then(find))
        } else {
            self.json().ok().and_then(find)
        }
    }
}

/// One event of a stream, whatever its framing.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub json: &'a Value,
    /// SSE `event:` or event-stream `:event-type`.
    pub name: Option<&'a str>,
    /// Body offset just past the event.
    pub end: usize,
}

impl Event<'_> {
    /// The event's `type` field, else its name.
    pub fn kind(&self) -> &str {
        self.json.get("type").and_then(Value::as_str).or(self.name).unwrap_or("")
    }
}

/// What one event told the stream loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    /// It carries generated content.
    pub content: bool,
    /// It is (or carries) the stream's end.
    pub finished: bool,
}

/// The stream loop: `on` reads each event into `out`; the first event with
/// content sets the first-content offset (its last byte, where TTFT is read) and
/// any finishing event marks the stream finished. Returns the number of events.
pub fn fold<'e>(
    events: impl IntoIterator<Item = Event<'e>>,
    out: &mut Parsed,
    mut on: impl FnMut(&Event<'e>, &mut Parsed) -> Result<Seen, ProviderError>,
) -> Result<usize, ProviderError> {
    let mut n = 0;
    for ev in events {
        n += 1;
        let seen = on(&ev, out)?;
        if seen.content && out.first_content_offset.is_none() {
            out.first_content_offset = Some(ev.end.saturating_sub(1));
        }
        out.stream_finished |= seen.finished;
    }
    Ok(n)
}

/// One JSON document per line; each with the offset of its line's end.
pub fn ndjson(body: &[u8]) -> Vec<(Value, usize)> {
    let mut pos = 0;
    let mut out = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        pos += line.len() + 1;
        if let Ok(v) = serde_json::from_slice::<Value>(line) {
            out.push((v, pos - 1));
        }
    }
    out
}

/// A JSON array streamed element by element (`[{...},\r\n{...}]`), read so that a
/// cut-short array still yields the elements that arrived; each with its end.
pub fn json_array(body: &[u8]) -> Result<Vec<(Value, usize)>, ProviderError> {
    let start = body.iter().position(|&b| b == b'[').ok_or_else(|| ProviderError::BadJson("not an array".into()))?;
    let mut pos = start + 1;
    let mut out = Vec::new();
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
                out.push((v, pos));
            }
            _ => break,
        }
    }
    Ok(out)
}

/// Events of owned values (NDJSON lines, array elements) for [`fold`].
pub fn events(values: &[(Value, usize)]) -> impl Iterator<Item = Event<'_>> {
    values.iter().map(|(json, end)| Event { json, name: None, end: *end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(content_type: &str) -> Head {
        Head { headers: vec![("content-type".into(), content_type.as_bytes().to_vec())], ..Default::default() }
    }

    #[test]
    fn framing_from_the_content_type() {
        assert_eq!(Framing::of(&head("Text/Event-Stream; charset=utf-8")), Framing::Sse);
        assert_eq!(Framing::of(&head("application/vnd.amazon.eventstream")), Framing::EventStream);
        assert_eq!(Framing::of(&head("application/x-ndjson")), Framing::NdJson);
        assert_eq!(Framing::of(&head("application/json")), Framing::Document);
        assert_eq!(Framing::of(&Head::default()), Framing::Document);
        assert!(Framing::NdJson.streamed() && !Framing::Document.streamed());
    }

    #[test]
    fn answered_service_tier_in_bodies_and_streams() {
        let f = crate::providers::api::fixture;
        let (json, sse) = (head("application/json"), head("text/event-stream"));
        let answered_tier =
            |body: &[u8], is_sse: bool| Response::new(if is_sse { &sse } else { &json }, body).answered_tier();
        assert_eq!(answered_tier(&f("openai/chat_sync.json"), false).as_deref(), Some("default"));
        assert_eq!(answered_tier(&f("anthropic/messages_sync.json"), false).as_deref(), Some("standard"));
        let sse = b"data: {\"type\":\"response.completed\",\"response\":{\"service_tier\":\"flex\"}}\n\n";
        assert_eq!(answered_tier(sse, true).as_deref(), Some("flex"));
        assert_eq!(answered_tier(b"{}", false), None);
    }

    #[test]
    fn the_tier_is_read_off_the_parses_already_made() {
        let h = head("text/event-stream");
        let body = b"data: {\"service_tier\":\"a\"}\n\ndata: {\"usage\":{\"service_tier\":\"b\"}}\n\ndata: [DONE]\n\n";
        let r = Response::new(&h, body);
        let events = r.sse().as_ptr();
        assert_eq!(r.sse_json().unwrap().len(), 2);
        assert_eq!(r.answered_tier().as_deref(), Some("b"));
        assert_eq!(r.sse().as_ptr(), events, "parsed once");
        let h = head("application/json");
        let r = Response::new(&h, br#"{"message":{"usage":{"service_tier":"c"}}}"#);
        let doc: *const Value = r.json().unwrap();
        assert_eq!(r.answered_tier().as_deref(), Some("c"));
        assert!(std::ptr::eq(doc, r.json().unwrap()), "parsed once");
        assert!(Response::new(&h, b"nope").json().is_err());
        assert!(Response::new(&head("text/event-stream"), b"data: x\n\n").sse_json().is_err());
    }

    #[test]
    fn fold_marks_the_first_content_and_the_end() {
        let values: Vec<(Value, usize)> = [r#"{"t":"meta"}"#, r#"{"t":"text"}"#, r#"{"t":"text"}"#, r#"{"t":"end"}"#]
            .iter()
            .enumerate()
            .map(|(i, s)| (serde_json::from_str(s).unwrap(), 10 * (i + 1)))
            .collect();
        let mut out = Parsed::default();
        let n = fold(events(&values), &mut out, |ev, _| {
            let t = ev.json["t"].as_str().unwrap();
            Ok(Seen { content: t == "text", finished: t == "end" })
        })
        .unwrap();
        assert_eq!((n, out.first_content_offset, out.stream_finished), (4, Some(19), true));
        let err = fold(events(&values), &mut out, |_, _| Err(ProviderError::BadJson("x".into())));
        assert!(err.is_err());
    }

    #[test]
    fn ndjson_and_array_offsets_end_each_element() {
        let body = b"{\"a\":1}\nnot json\n{\"b\":2}";
        let lines = ndjson(body);
        assert_eq!(lines.iter().map(|(_, e)| *e).collect::<Vec<_>>(), [7, body.len()]);
        let arr = b"[{\"a\":1},\r\n{\"b\":2}]";
        let els = json_array(arr).unwrap();
        assert_eq!(els.iter().map(|(_, e)| *e).collect::<Vec<_>>(), [8, 18]);
        assert_eq!(json_array(b"[{\"a\":1},{\"b\"").unwrap().len(), 1);
        assert!(json_array(b"{}").is_err());
    }
}
