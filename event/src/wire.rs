//! The agent -> collector wire format, version 1: a batch is the records as
//! NDJSON (one `LlmCall` JSON object per line), zstd-compressed, POSTed to
//! `/v1/records` with `X-Tokentap-Wire-Version: 1` and a batch id that stays the
//! same across retries (`X-Tokentap-Batch-Id`). Shared by both ends so they can't
//! drift; docs/collector.md describes it for other producers.
use thiserror::Error;

use crate::LlmCall;

pub const VERSION: &str = "1";
pub const PATH: &str = "/v1/records";
pub const HEADER_VERSION: &str = "x-tokentap-wire-version";
pub const HEADER_BATCH_ID: &str = "x-tokentap-batch-id";
/// Records per batch a collector accepts.
pub const MAX_RECORDS: usize = 50_000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("unsupported content encoding {0:?} (use zstd or identity)")]
    Encoding(String),
    #[error("body is not valid zstd")]
    Compression,
    #[error("batch larger than {0} bytes once decompressed")]
    TooLarge(usize),
    #[error("batch has more than {MAX_RECORDS} records")]
    TooManyRecords,
    #[error("line {line}: {reason}")]
    Record { line: usize, reason: String },
    #[error("empty batch")]
    Empty,
}

/// Records -> compressed batch body.
pub fn encode(records: &[LlmCall]) -> Vec<u8> {
    let mut ndjson = Vec::with_capacity(records.len() * 700);
    for r in records {
        // Serialising our own struct cannot fail.
        serde_json::to_writer(&mut ndjson, r).expect("record serialises");
        ndjson.push(b'\n');
    }
    zstd::bulk::compress(&ndjson, 3).expect("zstd of an in-memory buffer")
}

/// A batch body -> checked records. `max_bytes` caps the decompressed size
/// (a zstd bomb stops there).
pub fn decode(encoding: Option<&str>, body: &[u8], max_bytes: usize) -> Result<Vec<LlmCall>, WireError> {
    let text = match encoding.map(str::trim).unwrap_or("identity") {
        "identity" | "" => {
            if body.len() > max_bytes {
                return Err(WireError::TooLarge(max_bytes));
            }
            body.to_vec()
        }
        "zstd" => {
            use std::io::Read;
            let mut out = Vec::new();
            let dec = zstd::stream::read::Decoder::new(body).map_err(|_| WireError::Compression)?;
            dec.take(max_bytes as u64 + 1).read_to_end(&mut out).map_err(|_| WireError::Compression)?;
            if out.len() > max_bytes {
                return Err(WireError::TooLarge(max_bytes));
            }
            out
        }
        other => return Err(WireError::Encoding(other.to_owned())),
    };
    let mut records = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if records.len() >= MAX_RECORDS {
            return Err(WireError::TooManyRecords);
        }
        let r: LlmCall = serde_json::from_slice(line)
            .map_err(|e| WireError::Record { line: i + 1, reason: format!("not a record: {e}") })?;
        validate(&r).map_err(|reason| WireError::Record { line: i + 1, reason })?;
        records.push(r);
    }
    if records.is_empty() {
        return Err(WireError::Empty);
    }
    Ok(records)
}

/// What a stored record must satisfy.
pub fn validate(r: &LlmCall) -> Result<(), String> {
    if uuid::Uuid::parse_str(&r.event_id).is_err() {
        return Err(format!("event_id {:?} is not a UUID", r.event_id));
    }
    if chrono::DateTime::parse_from_rfc3339(&r.ts).is_err() {
        return Err(format!("ts {:?} is not RFC 3339", r.ts));
    }
    if r.provider.is_empty() || r.provider.len() > 128 {
        return Err("provider must be 1-128 characters".into());
    }
    if r.operation.is_empty() || r.operation.len() > 128 {
        return Err("operation must be 1-128 characters".into());
    }
    if let (Some(i), Some(c)) = (r.input_tokens, r.cached_input_tokens) {
        if c > i {
            return Err("cached_input_tokens exceeds input_tokens".into());
        }
    }
    if r.cost_usd.is_some_and(|c| !c.is_finite() || c < 0.0) {
        return Err("cost_usd must be a finite, non-negative number".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn record(i: u64) -> LlmCall {
        LlmCall {
            event_id: LlmCall::new_event_id(),
            ts: LlmCall::format_ts(1_763_900_000_000_000_000 + i as i128 * 1000),
            provider: "openai".into(),
            operation: "chat".into(),
            input_tokens: Some(100 + i),
            output_tokens: Some(10),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let rs: Vec<LlmCall> = (0..100).map(record).collect();
        let body = encode(&rs);
        assert_eq!(decode(Some("zstd"), &body, 1 << 20).unwrap(), rs);
    }

    #[test]
    fn bad_batches_are_clear_errors() {
        assert_eq!(decode(Some("br"), b"x", 100), Err(WireError::Encoding("br".into())));
        assert_eq!(decode(Some("zstd"), b"not zstd", 100), Err(WireError::Compression));
        assert_eq!(decode(None, b"\n\n", 100), Err(WireError::Empty));
        let bomb = zstd::bulk::compress(&vec![b' '; 1 << 20], 19).unwrap();
        assert_eq!(decode(Some("zstd"), &bomb, 1000), Err(WireError::TooLarge(1000)));
        let mut r = record(1);
        r.event_id = "nope".into();
        let line = serde_json::to_string(&r).unwrap();
        let err = decode(None, format!("{}\n{line}\n", serde_json::to_string(&record(2)).unwrap()).as_bytes(), 1 << 20);
        assert!(matches!(err, Err(WireError::Record { line: 2, .. })), "{err:?}");
        assert!(matches!(decode(None, b"{\"x\":1}", 100), Err(WireError::Record { line: 1, .. })));
        let mut r = record(1);
        r.cached_input_tokens = Some(1000);
        assert!(validate(&r).is_err());
    }
}
