//! Writing records to ClickHouse: the row as stored (`llm_calls`), batched
//! inserts in RowBinary with an insert deduplication token (a retried insert of
//! the same rows is dropped by ClickHouse), and retry with backoff while
//! ClickHouse is away.
use std::time::Duration;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use tokentap_event::LlmCall;

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
    pub service: String,
    pub end_user: Option<String>,
    pub api_key_id: Option<String>,
    pub feature: Option<String>,
    pub labels: Vec<(String, String)>,
    pub cluster: String,
    /// The record's `features` as JSON ('' when absent).
    pub features: String,
    pub service_tier: Option<String>,
}

impl CallRow {
    /// A validated record (see `tokentap_event::wire::validate`) as a row.
    pub fn from_record(r: LlmCall, cluster: &str) -> Self {
        let ts = chrono::DateTime::parse_from_rfc3339(&r.ts).map(|t| t.timestamp_micros()).unwrap_or(0);
        let model = r.response_model.clone().or_else(|| r.request_model.clone()).unwrap_or_else(|| "(unknown)".into());
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
            usage_source: r
                .usage_source
                .map(|u| serde_json::to_value(u).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()),
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
            service: r.service.unwrap_or_default(),
            end_user: r.end_user,
            api_key_id: r.api_key_id,
            feature: r.feature,
            labels: r.labels.into_iter().collect(),
            cluster: cluster.to_owned(),
            features: r.features.as_ref().and_then(|f| serde_json::to_string(f).ok()).unwrap_or_default(),
            service_tier: r.service_tier,
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
pub fn dedup_token(rows: &[CallRow]) -> String {
    let mut ids: Vec<u128> = rows.iter().map(|r| r.event_id.as_u128()).collect();
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

/// Insert once; the caller retries.
pub async fn insert(client: &Client, rows: &[CallRow]) -> Result<(), clickhouse::error::Error> {
    let mut ins =
        client.insert::<CallRow>("llm_calls").await?.with_setting("insert_deduplication_token", dedup_token(rows));
    for r in rows {
        ins.write(r).await?;
    }
    ins.end().await
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
}
