//! The agent -> collector wire format, version 1: a batch is the records as
//! NDJSON (one `LlmCall` JSON object per line), zstd-compressed, POSTed to
//! `/v1/records` with `X-Tokentap-Wire-Version: 1` and a batch id that stays the
//! same across retries (`X-Tokentap-Batch-Id`). Other row kinds ([`WireRow`]:
//! the LLM traffic rows) travel the same way to their own path. Shared by both
//! ends so they can't drift; docs/collector.md describes it for other producers.
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::traffic::{self, LlmTraffic};
use crate::LlmCall;

pub const VERSION: &str = "1";
pub const PATH: &str = "/v1/records";
/// Where LLM traffic rows ([`LlmTraffic`]) are POSTed.
pub const TRAFFIC_PATH: &str = "/v1/traffic";

/// A kind of row agents send: its own endpoint, the same framing, headers
/// and answers; what the collector accepts of it.
pub trait WireRow: Serialize + DeserializeOwned {
    /// Where batches of this kind are POSTed.
    const PATH: &'static str;
    /// What a stored row must satisfy ([`validate`] for records).
    fn check(&self, limits: &Limits) -> Result<(), String>;
}

impl WireRow for LlmCall {
    const PATH: &'static str = PATH;
    fn check(&self, limits: &Limits) -> Result<(), String> {
        validate(self, limits)
    }
}

impl WireRow for LlmTraffic {
    const PATH: &'static str = TRAFFIC_PATH;
    fn check(&self, limits: &Limits) -> Result<(), String> {
        traffic::validate(self)?;
        check_ts(&self.ts, limits).map(drop)
    }
}
pub const HEADER_VERSION: &str = "x-tokentap-wire-version";
pub const HEADER_BATCH_ID: &str = "x-tokentap-batch-id";
/// Present (`1`) when the agent sent this batch before without an answer: the
/// collector then checks ClickHouse for rows another collector may have stored.
pub const HEADER_RETRY: &str = "x-tokentap-retry";
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
    encode_rows(records)
}

/// Rows of any kind -> compressed batch body.
pub fn encode_rows<T: WireRow>(records: &[T]) -> Vec<u8> {
    let mut ndjson = Vec::with_capacity(records.len() * 700);
    for r in records {
        // Serialising our own struct cannot fail.
        serde_json::to_writer(&mut ndjson, r).expect("record serialises");
        ndjson.push(b'\n');
    }
    zstd::bulk::compress(&ndjson, 3).expect("zstd of an in-memory buffer")
}

/// What the collector accepts beyond the record's shape: values the table can
/// store and sum, and timestamps inside its retention. Agents check with the
/// same rules before spooling, so a batch they send is never refused for them.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Now, in microseconds since the Unix epoch.
    pub now_micros: i64,
    /// Oldest `ts` accepted, as an age in days (the table's TTL); None: any.
    pub max_age_days: Option<u32>,
    /// Latest `ts` accepted, ahead of now (clock skew between nodes).
    pub max_ahead_micros: i64,
}

impl Limits {
    /// Limits at this moment, for a table keeping `max_age_days` of rows.
    pub fn now(max_age_days: Option<u32>) -> Self {
        let now_micros =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        Self { now_micros, max_age_days, max_ahead_micros: MAX_AHEAD_MICROS }
    }
}

/// Tokens of one call, at most: 10^12 keeps sums of billions of rows inside
/// the table's UInt64 columns and rollups.
pub const MAX_TOKENS: u64 = 1_000_000_000_000;
/// Cost of one call, at most (USD).
pub const MAX_COST_USD: f64 = 1_000_000.0;
/// Duration or time to first token of one call, at most (7 days, in ms).
pub const MAX_DURATION_MS: f64 = 7.0 * 86_400_000.0;
/// How far ahead of the collector's clock a record may be dated (1 day).
pub const MAX_AHEAD_MICROS: i64 = 86_400_000_000;
/// Labels per record, and bytes of a label's key and value.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 128;
pub const MAX_LABEL_VALUE: usize = 1024;
/// Bytes of the prompt features, as JSON.
pub const MAX_FEATURES_BYTES: usize = 64 * 1024;

/// A batch body -> checked records. `max_bytes` caps the decompressed size
/// (a zstd bomb stops there).
pub fn decode(
    encoding: Option<&str>,
    body: &[u8],
    max_bytes: usize,
    limits: &Limits,
) -> Result<Vec<LlmCall>, WireError> {
    decode_rows(encoding, body, max_bytes, limits)
}

/// A batch body of any row kind -> checked rows.
pub fn decode_rows<T: WireRow>(
    encoding: Option<&str>,
    body: &[u8],
    max_bytes: usize,
    limits: &Limits,
) -> Result<Vec<T>, WireError> {
    let text = match encoding.map(str::trim).unwrap_or("identity") {
        "identity" | "" => {
            if body.len() > max_bytes {
                return Err(WireError::TooLarge(max_bytes));
            }
            std::borrow::Cow::Borrowed(body)
        }
        "zstd" => std::borrow::Cow::Owned(decompress(body, max_bytes)?),
        other => return Err(WireError::Encoding(other.to_owned())),
    };
    // UTF-8 checked once for the whole batch: each line then parses as text
    // (serde_json skips its per-string check on a &str).
    let text = match std::str::from_utf8(&text) {
        Ok(t) => t,
        Err(e) => {
            let line = text[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            return Err(WireError::Record { line, reason: "not UTF-8".into() });
        }
    };
    let mut records = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        if line.bytes().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if records.len() >= MAX_RECORDS {
            return Err(WireError::TooManyRecords);
        }
        let r: T = serde_json::from_str(line)
            .map_err(|e| WireError::Record { line: i + 1, reason: format!("not a record: {e}") })?;
        r.check(limits).map_err(|reason| WireError::Record { line: i + 1, reason })?;
        records.push(r);
    }
    if records.is_empty() {
        return Err(WireError::Empty);
    }
    Ok(records)
}

/// Decompress one zstd stream (frames concatenated: agents merge batches),
/// at most `max_bytes`, straight into one buffer sized from the frames'
/// declared sizes (a hint: a bomb may lie, growth stays capped).
fn decompress(body: &[u8], max_bytes: usize) -> Result<Vec<u8>, WireError> {
    use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer};
    let mut declared: u64 = 0;
    let mut rest = body;
    while !rest.is_empty() && declared <= max_bytes as u64 {
        let Ok(n) = zstd::zstd_safe::find_frame_compressed_size(rest) else { break };
        match zstd::zstd_safe::get_frame_content_size(rest) {
            Ok(Some(size)) => declared = declared.saturating_add(size),
            _ => break,
        }
        rest = &rest[n.min(rest.len())..];
    }
    let mut out: Vec<u8> = Vec::with_capacity((declared as usize).max(64 << 10).min(max_bytes + 1));
    let mut dctx = DCtx::create();
    let mut input = InBuffer::around(body);
    let frame_done = loop {
        if out.len() == out.capacity() {
            if out.len() > max_bytes {
                return Err(WireError::TooLarge(max_bytes));
            }
            let more = out.capacity().min(max_bytes + 1 - out.len()).max(1);
            out.reserve_exact(more);
        }
        let before = (input.pos(), out.len());
        let pos = out.len();
        let hint = {
            let mut output = OutBuffer::around_pos(&mut out, pos);
            dctx.decompress_stream(&mut output, &mut input).map_err(|_| WireError::Compression)?
        };
        if out.len() > max_bytes {
            return Err(WireError::TooLarge(max_bytes));
        }
        let frame_done = hint == 0;
        if input.pos() == body.len() && (frame_done || (input.pos(), out.len()) == before) {
            break frame_done;
        }
    };
    // Input ended inside a frame: truncated.
    if !frame_done {
        return Err(WireError::Compression);
    }
    Ok(out)
}

fn check_len(field: &str, v: Option<&str>, max: usize) -> Result<(), String> {
    match v {
        Some(s) if s.len() > max => Err(format!("{field} is {} bytes long (at most {max})", s.len())),
        _ => Ok(()),
    }
}

/// At least the bytes the features take as JSON (keys and numbers at their
/// longest, every string character escaped as `\\uXXXX`): below the limit, no
/// need to serialise them to know.
fn features_bound(f: &crate::PromptFeatures) -> usize {
    let s = |v: &Option<String>| v.as_ref().map_or(4, |s| 6 * s.len() + 2);
    let strings = s(&f.prompt_hash) + s(&f.prefix_hash) + s(&f.conversation_hash) + s(&f.simhash);
    let tools: usize = f.tool_calls.iter().map(|t| 6 * (t.name.len() + t.args_hash.len()) + 32).sum();
    // 16 keys and their punctuation, 8 numbers of at most 24 characters each.
    1024 + strings + tools
}

/// Bytes a value takes as JSON, without keeping the text.
fn json_len<T: serde::Serialize>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// What a stored record must satisfy: the shape, lengths the table is meant
/// for, numbers it can store and sum, and a `ts` inside `limits`.
pub fn validate(r: &LlmCall, limits: &Limits) -> Result<(), String> {
    if uuid::Uuid::parse_str(&r.event_id).is_err() {
        return Err(format!("event_id {:?} is not a UUID", truncated(&r.event_id)));
    }
    check_ts(&r.ts, limits)?;
    if r.provider.is_empty() || r.provider.len() > 128 {
        return Err("provider must be 1-128 bytes".into());
    }
    if r.operation.is_empty() || r.operation.len() > 128 {
        return Err("operation must be 1-128 bytes".into());
    }
    for (field, v, max) in [
        ("request_model", r.request_model.as_deref(), 256),
        ("response_model", r.response_model.as_deref(), 256),
        ("response_id", r.response_id.as_deref(), 512),
        ("request_id", r.request_id.as_deref(), 512),
        ("server", r.server.as_deref(), 256),
        ("path", r.path.as_deref(), 2048),
        ("http_version", r.http_version.as_deref(), 16),
        ("tls_library", r.tls_library.as_deref(), 64),
        ("comm", r.comm.as_deref(), 64),
        ("exe", r.exe.as_deref(), 4096),
        ("container_id", r.container_id.as_deref(), 128),
        ("pod", r.pod.as_deref(), 256),
        ("namespace", r.namespace.as_deref(), 256),
        ("workload", r.workload.as_deref(), 256),
        ("workload_kind", r.workload_kind.as_deref(), 64),
        ("service", r.service.as_deref(), 256),
        ("end_user", r.end_user.as_deref(), 256),
        ("api_key_id", r.api_key_id.as_deref(), 128),
        ("feature", r.feature.as_deref(), 256),
        ("service_tier", r.service_tier.as_deref(), 64),
    ] {
        check_len(field, v, max)?;
    }
    if r.labels.len() > MAX_LABELS {
        return Err(format!("{} labels (at most {MAX_LABELS})", r.labels.len()));
    }
    for (k, v) in &r.labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY || v.len() > MAX_LABEL_VALUE {
            return Err(format!(
                "label {:?}: keys must be 1-{MAX_LABEL_KEY} bytes, values at most {MAX_LABEL_VALUE}",
                truncated(k)
            ));
        }
    }
    if let Some(f) = r.features.as_ref().filter(|f| features_bound(f) > MAX_FEATURES_BYTES) {
        let n = json_len(f);
        if n > MAX_FEATURES_BYTES {
            return Err(format!("features are {n} bytes as JSON (at most {MAX_FEATURES_BYTES})"));
        }
    }
    for (field, v) in [
        ("input_tokens", r.input_tokens),
        ("output_tokens", r.output_tokens),
        ("cached_input_tokens", r.cached_input_tokens),
        ("cache_write_tokens", r.cache_write_tokens),
        ("reasoning_tokens", r.reasoning_tokens),
        ("input_audio_tokens", r.input_audio_tokens),
        ("cached_audio_tokens", r.cached_audio_tokens),
        ("output_audio_tokens", r.output_audio_tokens),
    ] {
        if v.is_some_and(|n| n > MAX_TOKENS) {
            return Err(format!("{field} is over {MAX_TOKENS}"));
        }
    }
    let within = |part: Option<u64>, whole: Option<u64>| match (part, whole) {
        (Some(p), Some(w)) => p <= w,
        _ => true,
    };
    if !within(r.cached_input_tokens, r.input_tokens) {
        return Err("cached_input_tokens exceeds input_tokens".into());
    }
    if !within(r.cache_write_tokens, r.input_tokens) {
        return Err("cache_write_tokens exceeds input_tokens".into());
    }
    if !within(r.reasoning_tokens, r.output_tokens) {
        return Err("reasoning_tokens exceeds output_tokens".into());
    }
    for (part, whole, what) in [
        (r.input_audio_tokens, r.input_tokens, "input_audio_tokens exceeds input_tokens"),
        (r.output_audio_tokens, r.output_tokens, "output_audio_tokens exceeds output_tokens"),
        (r.cached_audio_tokens, r.cached_input_tokens, "cached_audio_tokens exceeds cached_input_tokens"),
        (r.cached_audio_tokens, r.input_audio_tokens, "cached_audio_tokens exceeds input_audio_tokens"),
    ] {
        if !within(part, whole) {
            return Err(what.into());
        }
    }
    if r.cost_usd.is_some_and(|c| !c.is_finite() || !(0.0..=MAX_COST_USD).contains(&c)) {
        return Err(format!("cost_usd must be a finite number from 0 to {MAX_COST_USD}"));
    }
    for (field, v) in [("duration_ms", r.duration_ms), ("ttft_ms", r.ttft_ms)] {
        if v.is_some_and(|d| !d.is_finite() || !(0.0..=MAX_DURATION_MS).contains(&d)) {
            return Err(format!("{field} must be a finite number from 0 to {MAX_DURATION_MS}"));
        }
    }
    if r.status.is_some_and(|s| !(100..=599).contains(&s)) {
        return Err("status must be an HTTP status (100-599)".into());
    }
    Ok(())
}

/// A row's `ts`: RFC 3339, inside the retention, not far ahead. Returns it in
/// microseconds since the epoch.
fn check_ts(ts: &str, limits: &Limits) -> Result<i64, String> {
    let micros = chrono::DateTime::parse_from_rfc3339(ts)
        .map_err(|_| format!("ts {:?} is not RFC 3339", truncated(ts)))?
        .timestamp_micros();
    if let Some(days) = limits.max_age_days {
        let oldest = limits.now_micros - days as i64 * 86_400_000_000;
        if micros < oldest {
            return Err(format!("ts {ts} is older than the {days}-day retention"));
        }
    }
    if micros > limits.now_micros.saturating_add(limits.max_ahead_micros) {
        return Err(format!("ts {ts} is more than a day ahead of the collector's clock"));
    }
    Ok(micros)
}

/// The start of a value for an error message (never megabytes of it).
fn truncated(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}...", &s[..end])
    } else {
        s.to_owned()
    }
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
        assert_eq!(decode(Some("zstd"), &body, 1 << 20, &Limits::now(None)).unwrap(), rs);
    }

    #[test]
    fn bad_batches_are_clear_errors() {
        let l = Limits::now(None);
        assert_eq!(decode(Some("br"), b"x", 100, &l), Err(WireError::Encoding("br".into())));
        assert_eq!(decode(Some("zstd"), b"not zstd", 100, &l), Err(WireError::Compression));
        assert_eq!(decode(None, b"\n\n", 100, &l), Err(WireError::Empty));
        let bomb = zstd::bulk::compress(&vec![b' '; 1 << 20], 19).unwrap();
        assert_eq!(decode(Some("zstd"), &bomb, 1000, &l), Err(WireError::TooLarge(1000)));
        let whole = encode(&[record(1), record(2)]);
        let cut = decode(Some("zstd"), &whole[..whole.len() - 3], 1 << 20, &l);
        assert_eq!(cut, Err(WireError::Compression), "a truncated stream");
        let mut r = record(1);
        r.event_id = "nope".into();
        let line = serde_json::to_string(&r).unwrap();
        let two = format!("{}\n{line}\n", serde_json::to_string(&record(2)).unwrap());
        let err = decode(None, two.as_bytes(), 1 << 20, &l);
        assert!(matches!(err, Err(WireError::Record { line: 2, .. })), "{err:?}");
        assert!(matches!(decode(None, b"{\"x\":1}", 100, &l), Err(WireError::Record { line: 1, .. })));
    }

    #[test]
    fn the_features_bound_is_never_below_their_json() {
        let f = crate::PromptFeatures {
            prompt_hash: Some("\u{1}\"é".repeat(50)),
            prefix_hash: Some("p".into()),
            prefix_tokens: Some(u64::MAX),
            conversation_hash: None,
            simhash: Some("\n".repeat(9)),
            message_count: u32::MAX,
            tool_calls: vec![crate::ToolCall { name: "\u{7}".repeat(3), args_hash: "a".into() }; 7],
            json_share: -1.2345678901234567e-300,
            whitespace_share: f64::MAX,
            minify_saved_tokens: Some(u64::MAX),
            max_tokens: Some(u64::MAX),
            duplicate_chunk_share: f64::MIN_POSITIVE,
            embedding_inputs: Some(u32::MAX),
        };
        assert!(features_bound(&f) >= json_len(&f), "{} < {}", features_bound(&f), json_len(&f));
        let empty = crate::PromptFeatures::default();
        assert!(features_bound(&empty) >= json_len(&empty));
    }

    #[test]
    fn traffic_rows_travel_the_same_way_and_are_checked_as_theirs() {
        type T = crate::traffic::LlmTraffic;
        let row = T {
            row_id: LlmCall::new_event_id(),
            ts: record(0).ts,
            first_seen: record(0).ts,
            last_seen: record(0).ts,
            provider_host: "api.openai.com".into(),
            provider: "openai".into(),
            decoded: true,
            capture: Some("openssl".into()),
            connections: 2,
            bytes_sent: 10,
            bytes_received: 20,
            ..Default::default()
        };
        let body = encode_rows(std::slice::from_ref(&row));
        let l = Limits::now(None);
        assert_eq!(decode_rows::<T>(Some("zstd"), &body, 1 << 20, &l).unwrap(), std::slice::from_ref(&row));
        // A record batch is not a traffic batch, and the other way round.
        let calls = encode(&[record(1)]);
        assert!(matches!(decode_rows::<T>(Some("zstd"), &calls, 1 << 20, &l), Err(WireError::Record { line: 1, .. })));
        assert!(matches!(decode(Some("zstd"), &body, 1 << 20, &l), Err(WireError::Record { line: 1, .. })));
        let old = T { ts: "1970-01-01T00:00:00Z".into(), ..row };
        let l = Limits::now(Some(30));
        let err = decode_rows::<T>(None, serde_json::to_string(&old).unwrap().as_bytes(), 1 << 20, &l);
        assert!(matches!(err, Err(WireError::Record { line: 1, .. })), "{err:?}");
    }

    #[test]
    fn not_utf8_names_its_line() {
        let good = serde_json::to_string(&record(1)).unwrap();
        let body = [good.as_bytes(), b"\n{\"x\":\"\xff\"}\n"].concat();
        let err = decode(None, &body, 1 << 20, &Limits::now(None));
        assert!(matches!(err, Err(WireError::Record { line: 2, .. })), "{err:?}");
    }

    #[test]
    fn concatenated_batches_decode_as_one() {
        let a: Vec<LlmCall> = (0..3).map(record).collect();
        let b: Vec<LlmCall> = (3..5).map(record).collect();
        let mut body = encode(&a);
        body.extend(encode(&b));
        let got = decode(Some("zstd"), &body, 1 << 20, &Limits::now(None)).unwrap();
        assert_eq!(got, [a, b].concat());
    }

    #[test]
    fn values_the_table_cannot_store_are_refused() {
        let now = 1_763_900_000_000_000i64;
        let l = Limits { now_micros: now, max_age_days: Some(30), max_ahead_micros: MAX_AHEAD_MICROS };
        let ok = record(1);
        assert_eq!(validate(&ok, &l), Ok(()));
        type Case = (&'static str, fn(&mut LlmCall));
        let cases: &[Case] = &[
            ("long model", |r| r.request_model = Some("m".repeat(10 << 20))),
            ("long label", |r| {
                r.labels.insert("team".into(), "x".repeat(2000));
            }),
            ("many labels", |r| r.labels = (0..100).map(|i| (format!("k{i}"), "v".into())).collect()),
            ("empty label key", |r| {
                r.labels.insert(String::new(), "v".into());
            }),
            ("u64::MAX tokens", |r| r.input_tokens = Some(u64::MAX)),
            ("too many output tokens", |r| r.output_tokens = Some(MAX_TOKENS + 1)),
            ("cached > input", |r| r.cached_input_tokens = Some(1000)),
            ("cache write > input", |r| r.cache_write_tokens = Some(1000)),
            ("reasoning > output", |r| r.reasoning_tokens = Some(11)),
            ("audio in > input", |r| r.input_audio_tokens = Some(1000)),
            ("audio out > output", |r| r.output_audio_tokens = Some(11)),
            ("cached audio > cached", |r| {
                (r.cached_input_tokens, r.input_audio_tokens, r.cached_audio_tokens) = (Some(1), Some(5), Some(2))
            }),
            ("cached audio > audio in", |r| {
                (r.cached_input_tokens, r.input_audio_tokens, r.cached_audio_tokens) = (Some(5), Some(1), Some(2))
            }),
            ("huge cost", |r| r.cost_usd = Some(1e300)),
            ("negative cost", |r| r.cost_usd = Some(-1.0)),
            ("NaN duration", |r| r.duration_ms = Some(f64::NAN)),
            ("negative ttft", |r| r.ttft_ms = Some(-5.0)),
            ("status 0", |r| r.status = Some(0)),
            ("far past", |r| r.ts = "1970-01-01T00:00:00Z".into()),
            ("before retention", |r| r.ts = LlmCall::format_ts((1_763_900_000 - 31 * 86_400) as i128 * 1_000_000_000)),
            ("far future", |r| r.ts = "2299-12-31T00:00:00Z".into()),
            ("two days ahead", |r| r.ts = LlmCall::format_ts((1_763_900_000 + 2 * 86_400) as i128 * 1_000_000_000)),
            ("empty provider", |r| r.provider.clear()),
            ("huge features", |r| {
                r.features = Some(crate::PromptFeatures {
                    tool_calls: (0..2000)
                        .map(|i| crate::ToolCall { name: format!("tool-{i}"), args_hash: "h".repeat(32) })
                        .collect(),
                    ..Default::default()
                })
            }),
        ];
        for (what, spoil) in cases {
            let mut r = ok.clone();
            spoil(&mut r);
            let err = validate(&r, &l).expect_err(what);
            assert!(err.len() < 200, "{what}: the error names the field, not the value: {err}");
        }
        // Inside the window: yesterday, and an hour ahead (clock skew).
        let mut r = ok.clone();
        r.ts = LlmCall::format_ts((1_763_900_000 - 86_400) as i128 * 1_000_000_000);
        assert_eq!(validate(&r, &l), Ok(()));
        r.ts = LlmCall::format_ts((1_763_900_000 + 3600) as i128 * 1_000_000_000);
        assert_eq!(validate(&r, &l), Ok(()));
    }
}
