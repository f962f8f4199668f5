//! Provider parsers on arbitrary response bodies, sync and streamed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::providers::{anthropic, openai, Api, Parsed};

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
});
