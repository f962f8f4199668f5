//! The collector's ingest decoding (`wire::decode`): never panics, never
//! returns more than the caps allow, and every record it returns passes the
//! same validation. Both encodings: the raw bytes, and as a zstd body (the
//! first byte picks; the rest is the input), so the decompressor's bounds are
//! fuzzed too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_event::wire;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let limits = wire::Limits::now(Some(30));
    let max = 1 << 16;
    let result = match mode % 3 {
        0 => wire::decode(None, rest, max, &limits),
        1 => wire::decode(Some("zstd"), rest, max, &limits),
        // Valid zstd of the fuzzer's bytes: the NDJSON parser behind decompression.
        _ => wire::decode(Some("zstd"), &zstd::bulk::compress(rest, 1).unwrap_or_default(), max, &limits),
    };
    if let Ok(records) = result {
        assert!(!records.is_empty() && records.len() <= wire::MAX_RECORDS);
        for r in &records {
            assert_eq!(wire::validate(r, &limits), Ok(()));
        }
    }
});
