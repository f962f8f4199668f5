//! Server-sent event parsing: never panics, offsets stay inside the body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ev in tokentap_agent::http::sse::parse(data) {
        assert!(ev.end <= data.len());
    }
});
