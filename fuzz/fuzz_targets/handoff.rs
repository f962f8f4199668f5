//! A connection's state handed on by the agent before (an upgrade), as the
//! agent taking over reads it from a shared map: never panics, never holds
//! more than it was given, and what it accepts it hands on again unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_agent::http::exchange::HttpConnection;

fuzz_target!(|data: &[u8]| {
    let mut all = |_: &tokentap_agent::http::h1::Head| Some(());
    let Ok(mut c) = HttpConnection::<()>::resume(data, 1 << 16, &mut all) else { return };
    assert!(c.buffered() <= data.len());
    let Some(again) = c.hand_off(1 << 20) else { return };
    let mut d = HttpConnection::<()>::resume(&again, 1 << 16, &mut all).expect("a state handed on is read back");
    assert_eq!(d.hand_off(1 << 20), Some(again), "handed on unchanged");
});
