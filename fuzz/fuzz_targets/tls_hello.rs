//! ClientHello parsing: never panics; a cut hello never asks for more than one
//! TLS record; a name it reports is a plausible DNS name.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::capture::tls_hello::{parse, Hello, MAX_RECORD};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Hello::Incomplete(n) => assert!(n > data.len() && n <= MAX_RECORD),
        Hello::Client { server_name: Some(name), .. } => {
            assert!(!name.is_empty() && name.len() <= 253 && name.is_ascii());
        }
        _ => {}
    }
});
