//! Writing rows to ClickHouse: the call record as stored (`llm_calls`), one insert
//! in RowBinary with an insert deduplication token (a retried insert of the
//! same rows is dropped by ClickHouse, and so are its materialized views' rows),
//! the ids already stored (checked before an uncertain retry), and what a
//! failed insert means: ClickHouse away (retry) or rows it refuses (never retry).
use std::collections::HashSet;
use std::time::Duration;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use tokentap_event::LlmCall;

use crate::row::StoredRow;

/// One `llm_calls` row. Field order and names match the table.
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct CallRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    /// Microseconds since the epoch (DateTime64(6)).
    pub ts: i64,
    pub duration_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub provider: String,
    pub operation: String,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub model: String,
    pub stream: bool,
    pub status: Option<u16>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    pub usage_source: Option<String>,
    pub cost_usd: Option<f64>,
    pub response_id: Option<String>,
    pub request_id: Option<String>,
    pub server: Option<String>,
    pub path: Option<String>,
    pub http_version: Option<String>,
    pub tls_library: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<String>,
    pub namespace: String,
    pub workload: String,
    pub workload_kind: Option<String>,
    pub service: String,
    pub end_user: Option<String>,
    pub api_key_id: Option<String>,
    pub feature: Option<String>,
    pub labels: Vec<(String, String)>,
    pub cluster: String,
    /// The record's `features` as JSON ('' when absent).
    pub features: String,
    pub service_tier: Option<String>,
    pub input_audio_tokens: Option<u64>,
    pub cached_audio_tokens: Option<u64>,
    pub output_audio_tokens: Option<u64>,
    /// Set by the collector as the row arrives (`repeats`): earlier calls of
    /// the same service, model and prompt, and the call's conversation turn.
    pub prompt_repeat: u32,
    pub conversation_turn: u32,
    pub conversation_first_input: u64,
    pub conversation_growing: u8,
    /// What `repeats` looks up, taken from the typed features here (not a
    /// column).
    #[serde(skip)]
    pub repeat_keys: crate::repeats::RepeatKeys,
}

impl CallRow {
    /// A validated record (see `tokentap_event::wire::validate`) as a row.
    pub fn from_record(r: LlmCall, cluster: &str) -> Self {
        let ts = chrono::DateTime::parse_from_rfc3339(&r.ts).map(|t| t.timestamp_micros()).unwrap_or(0);
        let model = r.response_model.clone().or_else(|| r.request_model.clone()).unwrap_or_else(|| "(unknown)".into());
        let service = r.service.unwrap_or_default();
        let repeat_keys = crate::repeats::RepeatKeys::of(&service, &model, r.features.as_ref());
        Self {
            event_id: uuid::Uuid::parse_str(&r.event_id).unwrap_or_default(),
            ts,
            duration_ms: r.duration_ms,
            ttft_ms: r.ttft_ms,
            provider: r.provider,
            operation: r.operation,
            request_model: r.request_model,
            response_model: r.response_model,
            model,
            stream: r.stream,
            status: r.status,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            cache_write_tokens: r.cache_write_tokens,
            reasoning_tokens: r.reasoning_tokens,
            usage_source: r.usage_source.map(|u| u.as_str().to_owned()),
            cost_usd: r.cost_usd,
            response_id: r.response_id,
            request_id: r.request_id,
            server: r.server,
            path: r.path,
            http_version: r.http_version,
            tls_library: r.tls_library,
            pid: r.pid,
            comm: r.comm,
            exe: r.exe,
            container_id: r.container_id,
            pod: r.pod,
            namespace: r.namespace.unwrap_or_default(),
            workload: r.workload.unwrap_or_default(),
            workload_kind: r.workload_kind,
            service,
            end_user: r.end_user,
            api_key_id: r.api_key_id,
            feature: r.feature,
            labels: r.labels.into_iter().collect(),
            cluster: cluster.to_owned(),
            features: r.features.as_ref().and_then(|f| serde_json::to_string(f).ok()).unwrap_or_default(),
            service_tier: r.service_tier,
            input_audio_tokens: r.input_audio_tokens,
            cached_audio_tokens: r.cached_audio_tokens,
            output_audio_tokens: r.output_audio_tokens,
            prompt_repeat: 0,
            conversation_turn: 0,
            conversation_first_input: 0,
            conversation_growing: 0,
            repeat_keys,
        }
    }

    /// Back to the record contract (reports read rows this way).
    pub fn into_record(self) -> LlmCall {
        let opt = |s: String| if s.is_empty() { None } else { Some(s) };
        LlmCall {
            event_id: self.event_id.to_string(),
            ts: LlmCall::format_ts(self.ts as i128 * 1000),
            duration_ms: self.duration_ms,
            ttft_ms: self.ttft_ms,
            provider: self.provider,
            operation: self.operation,
            request_model: self.request_model,
            response_model: self.response_model,
            stream: self.stream,
            status: self.status,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cached_input_tokens,
            cache_write_tokens: self.cache_write_tokens,
            reasoning_tokens: self.reasoning_tokens,
            input_audio_tokens: self.input_audio_tokens,
            cached_audio_tokens: self.cached_audio_tokens,
            output_audio_tokens: self.output_audio_tokens,
            usage_source: self.usage_source.and_then(|u| serde_json::from_value(serde_json::Value::String(u)).ok()),
            cost_usd: self.cost_usd,
            response_id: self.response_id,
            request_id: self.request_id,
            server: self.server,
            path: self.path,
            http_version: self.http_version,
            tls_library: self.tls_library,
            pid: self.pid,
            comm: self.comm,
            exe: self.exe,
            container_id: self.container_id,
            pod: self.pod,
            namespace: opt(self.namespace),
            workload: opt(self.workload),
            workload_kind: self.workload_kind,
            service: opt(self.service),
            end_user: self.end_user,
            api_key_id: self.api_key_id,
            feature: self.feature,
            labels: self.labels.into_iter().collect(),
            features: serde_json::from_str(&self.features).ok(),
            service_tier: self.service_tier,
        }
    }
}

/// A deduplication token for a set of rows: the same rows give the same token,
/// so a retried insert is dropped by ClickHouse.
pub fn dedup_token<R: StoredRow>(rows: &[R]) -> String {
    let mut ids: Vec<u128> = rows.iter().map(R::id).collect();
    ids.sort_unstable();
    // FNV-1a over the sorted ids: stable across processes and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids {
        for b in id.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("tt-{h:016x}-{}", rows.len())
}

/// Insert once into the row kind's table; the caller retries.
pub async fn insert<R: StoredRow>(client: &Client, rows: &[R]) -> Result<(), clickhouse::error::Error> {
    let mut ins = client.insert::<R>(R::TABLE).await?.with_setting("insert_deduplication_token", dedup_token(rows));
    for r in rows {
        ins.write(r).await?;
    }
    ins.end().await
}

/// Ids per existence query: keeps the SQL under ClickHouse's `max_query_size`.
const IDS_PER_QUERY: usize = 4000;

/// Which of these rows' ids are already in their table (partition-pruned by day).
pub async fn existing_ids<R: StoredRow>(
    client: &Client,
    rows: &[R],
) -> Result<HashSet<u128>, clickhouse::error::Error> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Id {
        #[serde(with = "clickhouse::serde::uuid")]
        id: uuid::Uuid,
    }
    let mut found = HashSet::new();
    for chunk in rows.chunks(IDS_PER_QUERY) {
        let days: HashSet<i64> = chunk.iter().map(|r| day_of(r.ts())).collect();
        let days: Vec<String> = days.iter().map(|d| format!("'{}'", date_of_day(*d))).collect();
        // A UUID's text is hex and dashes only: safe to inline.
        let ids: Vec<String> = chunk.iter().map(|r| format!("'{}'", uuid::Uuid::from_u128(r.id()))).collect();
        let (table, id) = (R::TABLE, R::ID_COLUMN);
        let sql = format!(
            "SELECT {id} AS id FROM {table} WHERE toDate(ts) IN ({}) AND {id} IN ({})",
            days.join(","),
            ids.join(",")
        );
        let got: Vec<Id> = client.query(&sql).fetch_all().await?;
        found.extend(got.into_iter().map(|i| i.id.as_u128()));
    }
    Ok(found)
}

/// Days since the epoch of a `ts` in microseconds: the table's partition.
pub fn day_of(ts_micros: i64) -> i64 {
    ts_micros.div_euclid(86_400_000_000)
}

/// `YYYY-MM-DD` of a day since the epoch.
fn date_of_day(day: i64) -> String {
    chrono::DateTime::from_timestamp(day * 86_400, 0).map(|t| t.date_naive().to_string()).unwrap_or_default()
}

/// What a failed ClickHouse request means for the rows in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// ClickHouse away, overloaded, timed out, or the connection broke: retry
    /// with backoff. The insert may have landed (check before retrying).
    Outage,
    /// ClickHouse refused these rows (types, ranges, partitions, constraints):
    /// retrying the same rows fails the same way.
    Data,
    /// An exception not known either way: retried a few times, then data.
    Unknown,
}

/// Exception codes that say "try again later" (server state, not the rows).
const TRANSIENT_CODES: &[u32] = &[
    3,   // UNEXPECTED_END_OF_FILE (connection cut mid-request)
    60,  // UNKNOWN_TABLE (schema being created or restored)
    81,  // UNKNOWN_DATABASE
    159, // TIMEOUT_EXCEEDED
    164, // READONLY
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    236, // ABORTED
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    285, // TOO_FEW_LIVE_REPLICAS
    319, // UNKNOWN_STATUS_OF_INSERT
    394, // QUERY_WAS_CANCELLED
    425, // SYSTEM_ERROR
    439, // CANNOT_SCHEDULE_TASK
    497, // ACCESS_DENIED (grants being fixed: the rows are fine)
    516, // AUTHENTICATION_FAILED
    999, // KEEPER_EXCEPTION
];

/// Exception codes that say "these rows can never be inserted".
const DATA_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  // ATTEMPT_TO_READ_AFTER_EOF
    36,  // BAD_ARGUMENTS
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    128, // TOO_LARGE_ARRAY_SIZE
    131, // TOO_LARGE_STRING_SIZE
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    469, // VIOLATED_CONSTRAINT
];

/// The `Code: N` of a ClickHouse exception text.
pub fn exception_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Sort a ClickHouse error into what to do with the rows.
pub fn classify(e: &clickhouse::error::Error) -> Failure {
    use clickhouse::error::Error as E;
    match e {
        E::BadResponse(text) => match exception_code(text) {
            // TOO_MANY_PARTS is both "merges are behind" (wait) and "too many
            // partitions for a single INSERT block" (these rows, as grouped).
            Some(252) if text.contains("partitions") => Failure::Data,
            Some(252) => Failure::Outage,
            Some(c) if TRANSIENT_CODES.contains(&c) => Failure::Outage,
            Some(c) if DATA_CODES.contains(&c) => Failure::Data,
            Some(_) => Failure::Unknown,
            // No exception: an HTTP-level answer (502/503 from a proxy).
            None => Failure::Outage,
        },
        // Rows the client itself could not serialise are data.
        E::Custom(_) | E::SequenceMustHaveLength | E::InvalidUtf8Encoding(_) => Failure::Data,
        _ => Failure::Outage,
    }
}

/// Backoff for the `attempt`th retry: 100 ms doubling to 10 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(7)).min(10_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u32) -> LlmCall {
        LlmCall {
            event_id: LlmCall::new_event_id(),
            ts: "2026-11-23T10:00:00.123456Z".into(),
            provider: "openai".into(),
            operation: "chat".into(),
            request_model: Some("gpt-4o".into()),
            input_tokens: Some(10 + i as u64),
            output_tokens: Some(2),
            namespace: Some("ns".into()),
            labels: [("team".to_string(), "a".to_string())].into(),
            features: Some(tokentap_event::PromptFeatures {
                prompt_hash: Some("p_1".into()),
                message_count: 3,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn rows_round_trip_to_records() {
        let r = record(1);
        let row = CallRow::from_record(r.clone(), "c1");
        assert_eq!(row.ts, 1_795_428_000_123_456);
        assert_eq!(row.model, "gpt-4o");
        assert_eq!(row.service, "");
        assert_eq!(row.into_record(), r);
    }

    #[test]
    fn tokens_depend_on_the_set_not_the_order() {
        let rows: Vec<CallRow> = (0..5).map(|i| CallRow::from_record(record(i), "")).collect();
        let mut rev = rows.clone();
        rev.reverse();
        assert_eq!(dedup_token(&rows), dedup_token(&rev));
        assert_ne!(dedup_token(&rows), dedup_token(&rows[1..]));
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(30), Duration::from_secs(10));
    }

    #[test]
    fn failures_are_sorted_by_what_they_mean_for_the_rows() {
        use clickhouse::error::Error as E;
        let bad = |t: &str| classify(&E::BadResponse(t.into()));
        assert_eq!(
            bad("Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100)."),
            Failure::Data
        );
        assert_eq!(bad("Code: 252. DB::Exception: Too many parts (300). Merges are processing"), Failure::Outage);
        assert_eq!(bad("Code: 469. DB::Exception: Constraint `c` for table t is violated"), Failure::Data);
        assert_eq!(bad("Code: 53. DB::Exception: Type mismatch"), Failure::Data);
        assert_eq!(bad("Code: 241. DB::Exception: Memory limit (total) exceeded"), Failure::Outage);
        assert_eq!(bad("Code: 210. DB::NetException: Connection refused"), Failure::Outage);
        assert_eq!(bad("Code: 33. DB::Exception: Cannot read all data"), Failure::Unknown);
        assert_eq!(bad("503 Service Unavailable"), Failure::Outage);
        assert_eq!(classify(&E::TimedOut), Failure::Outage);
        assert_eq!(exception_code("Code: 117. DB::Exception"), Some(117));
        assert_eq!(exception_code("no code"), None);
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_of(86_400_000_000), 1);
    }
}
