//! The collector's OTLP trace ingest decoding (`otlp::read_request`: content
//! encoding, protobuf or OTLP/JSON, each span normalised and priced): never
//! panics, never holds more than the caps allow, and every row it returns is
//! a valid record in tokentap's contract. The first byte picks the encoding
//! (protobuf, JSON) and how the rest is sent (as is, gzip of it, as a zstd
//! body), so the decompressors' bounds are fuzzed too.
#![no_main]
use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokentap_collector::otlp::{self, decode::Format};
use tokentap_event::{wire, PriceTable};

fn prices() -> &'static PriceTable {
    static P: OnceLock<PriceTable> = OnceLock::new();
    P.get_or_init(PriceTable::shipped)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let format = if mode & 1 == 0 { Format::Protobuf } else { Format::Json };
    let limits = wire::Limits::now(Some(36_500));
    let max = 1 << 16;
    let gz;
    let (encoding, body) = match (mode >> 1) % 3 {
        0 => (None, rest),
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = e.write_all(rest);
            gz = e.finish().unwrap_or_default();
            (Some("gzip"), &gz[..])
        }
        _ => (Some("zstd"), rest),
    };
    let Ok(batch) = otlp::read_request(format, encoding, body, max, prices(), &limits, "fuzz") else { return };
    assert_eq!(batch.spans, batch.calls.len() + batch.rejected());
    assert!(batch.spans <= otlp::decode::MAX_SPANS);
    for c in &batch.calls {
        let r = &c.row;
        let record = r.clone().into_record();
        assert_eq!(wire::validate(&record, &limits), Ok(()));
        assert!(r.usage_source.is_none() || r.usage_source.as_deref() == Some("otel"));
        if let (Some(i), Some(o)) = (r.input_tokens, r.output_tokens) {
            assert!(r.cached_input_tokens.unwrap_or(0) <= i && r.cache_write_tokens.unwrap_or(0) <= i);
            assert!(r.reasoning_tokens.unwrap_or(0) <= o);
        }
    }
});
