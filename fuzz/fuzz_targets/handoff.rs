//! A connection's state handed on by the agent before (an upgrade), as the
//! agent taking over reads it from a shared map: never panics, never holds
//! more than it was given, and what it accepts it hands on again unchanged.
//! A state handed on at its connection's end opens with its owner: read
//! back, that opening is written again the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::http::exchange::HttpConnection;
use tokentap_agent::pipeline::{ended_meta, ended_prefix};

fuzz_target!(|input: &[u8]| {
    let Ok((owner, data)) = ended_meta(input) else { return };
    if let Some(m) = owner {
        assert_eq!(m.tgid, 0, "the owner's pid is the key's");
        let opening = ended_prefix(&m);
        assert_eq!([&opening[..], data].concat(), input, "the opening written again the same");
    }
    let mut all = |_: &tokentap_agent::http::h1::Head| Some(());
    let Ok(mut c) = HttpConnection::<()>::resume(data, 1 << 16, &mut all) else { return };
    assert!(c.buffered() <= data.len());
    let Some(again) = c.hand_off(1 << 20) else { return };
    let mut d = HttpConnection::<()>::resume(&again, 1 << 16, &mut all).expect("a state handed on is read back");
    assert_eq!(d.hand_off(1 << 20), Some(again), "handed on unchanged");
});
