//! Provider parsers on arbitrary response bodies, sync and streamed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::providers::{anthropic, features, openai, Api, Parsed};

fuzz_target!(|data: &[u8]| {
    let req = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    for sse in [false, true] {
        for api in [Api::ChatCompletions, Api::Completions, Api::Responses, Api::Embeddings] {
            let mut p = Parsed::default();
            if openai::parse(api, &req, data, sse, &mut p).is_ok() {
                if let Some(u) = p.usage {
                    // Numbers come from the body or the tokenizer, nothing else.
                    assert!(u.output <= data.len() as u64 * 4 || p.usage_source.is_some());
                }
            }
        }
        let mut p = Parsed::default();
        let _ = anthropic::parse(&req, data, sse, &mut p);
    }
    // Prompt features of arbitrary request bodies, every shape.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let h = |b: &[u8]| format!("{}", b.len());
        for api in [Api::ChatCompletions, Api::Responses, Api::AnthropicMessages, Api::GeminiGenerate, Api::Embeddings] {
            if let Some(f) = features::compute(api, &v, &h) {
                assert!((0.0..=1.0).contains(&f.json_share) && (0.0..=1.0).contains(&f.whitespace_share));
            }
        }
    }
});
