//! Content decoding of arbitrary bytes: errors or at most the cap, never more.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    const CAP: usize = 1 << 20;
    for enc in ["gzip", "deflate", "br", "zstd", "gzip, br", "identity"] {
        if let Ok(out) = tokentap_agent::http::body::decode(Some(enc), data, CAP) {
            assert!(out.len() <= CAP.max(data.len()));
        }
    }
});
