//! AWS event-stream framing: never panics; messages end in order inside the body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msgs) = tokentap_agent::http::eventstream::parse(data) {
        let mut last = 0;
        for m in msgs {
            assert!(m.end > last && m.end <= data.len());
            assert!(m.payload.len() < m.end - last);
            last = m.end;
        }
    }
});
