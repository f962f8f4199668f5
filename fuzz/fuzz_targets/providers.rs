//! Every provider's parser on arbitrary response bodies, through the call path
//! (status gate, framing, stream and incomplete rules), and every provider's
//! prompt reader on arbitrary request bodies. Iterates the registry, so a new
//! provider is fuzzed without editing this file.
//! Input: [selector][body]; the selector picks the shape, the content type, the
//! Bedrock token headers and whether the response was cut short.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::http::exchange::Exchange;
use tokentap_agent::http::h1::{Head, Message};
use tokentap_agent::providers::{self, features, registry, Api, Endpoint};

const CONTENT_TYPES: [&str; 4] =
    ["application/json", "text/event-stream", "application/vnd.amazon.eventstream", "application/x-ndjson"];

fn head(headers: &[(&str, &str)]) -> Head {
    Head {
        headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
        ..Default::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let apis: Vec<Api> = registry::apis().collect();
    let sel = sel as usize;
    let api = apis[sel % apis.len()];
    let content_type = CONTENT_TYPES[(sel / apis.len()) % CONTENT_TYPES.len()];
    let mut headers = vec![("content-type", content_type)];
    if sel & 0x40 != 0 {
        headers.extend([("x-amzn-bedrock-input-token-count", "17"), ("x-amzn-bedrock-output-token-count", "4")]);
    }
    let request = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"prompt":"hi","input":"hi"}"#;
    let ex = Exchange {
        request: Message {
            head: Head { method: Some("POST".into()), path: Some("/x".into()), ..head(&[("host", "h")]) },
            body: request.to_vec(),
            complete: true,
            ..Default::default()
        },
        response: Message {
            head: Head { status: Some(200), ..head(&headers) },
            body: body.to_vec(),
            complete: sel & 0x80 == 0,
            ..Default::default()
        },
    };
    let endpoint = Endpoint { provider: "fuzz".into(), api, path_model: Some("m".into()) };
    let hash = |b: &[u8]| format!("{}", b.len());
    if let Ok(p) = providers::parse(&endpoint, &ex, 1 << 20, &hash) {
        if p.usage.is_some() {
            // Numbers come from the body, a header or the tokenizer, and say which.
            assert!(p.usage_source.is_some());
        }
        if let Some(off) = p.first_content_offset {
            assert!(off < body.len().max(1));
        }
    }
    // Prompt features of arbitrary request bodies, read by this shape's provider.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(f) = features::of_request(api, &v, &hash) {
            assert!((0.0..=1.0).contains(&f.json_share) && (0.0..=1.0).contains(&f.whitespace_share));
        }
    }
});
