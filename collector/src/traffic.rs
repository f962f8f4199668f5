//! The LLM traffic rows as stored (`llm_traffic`, docs/schema.md): which
//! connections to LLM API hosts tokentap read and which it could not, per
//! process, host and interval.
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use tokentap_event::LlmTraffic;

use crate::metrics::{Metrics, RowCounters};
use crate::row::StoredRow;
use crate::server::{Lane, Shared};

/// One `llm_traffic` row. Field order and names match the table.
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct TrafficRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub row_id: uuid::Uuid,
    /// Microseconds since the epoch (DateTime64(6)).
    pub ts: i64,
    pub first_seen: i64,
    pub last_seen: i64,
    pub provider_host: String,
    pub provider: String,
    pub decoded: bool,
    /// '' when not decoded.
    pub capture: String,
    /// '' when decoded.
    pub reason: String,
    pub reason_detail: Option<String>,
    pub connections: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<String>,
    pub namespace: String,
    pub workload: String,
    pub service: String,
    pub cluster: String,
}

fn micros(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts).map(|t| t.timestamp_micros()).unwrap_or(0)
}

impl StoredRow for TrafficRow {
    type Wire = LlmTraffic;
    const TABLE: &'static str = "llm_traffic";
    const ID_COLUMN: &'static str = "row_id";
    const LAG: bool = false;

    /// A validated row (`tokentap_event::traffic::validate`).
    fn from_wire(r: LlmTraffic, cluster: &str) -> Self {
        Self {
            row_id: uuid::Uuid::parse_str(&r.row_id).unwrap_or_default(),
            ts: micros(&r.ts),
            first_seen: micros(&r.first_seen),
            last_seen: micros(&r.last_seen),
            provider_host: r.provider_host,
            provider: r.provider,
            decoded: r.decoded,
            capture: r.capture.unwrap_or_default(),
            reason: r.reason.unwrap_or_default(),
            reason_detail: r.reason_detail,
            connections: r.connections,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            pid: r.pid,
            comm: r.comm,
            exe: r.exe,
            container_id: r.container_id,
            pod: r.pod,
            namespace: r.namespace.unwrap_or_default(),
            workload: r.workload.unwrap_or_default(),
            service: r.service.unwrap_or_default(),
            cluster: cluster.to_owned(),
        }
    }

    fn id(&self) -> u128 {
        self.row_id.as_u128()
    }

    fn ts(&self) -> i64 {
        self.ts
    }

    fn lane(shared: &Shared) -> &Lane<Self> {
        &shared.traffic
    }

    fn counters(m: &Metrics) -> RowCounters<'_> {
        m.traffic()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wire_row_becomes_a_table_row() {
        let ts = "2026-11-23T10:00:00.123456Z".to_string();
        let w = LlmTraffic {
            row_id: tokentap_event::LlmCall::new_event_id(),
            ts: ts.clone(),
            first_seen: "2026-11-23T09:59:59Z".into(),
            last_seen: ts,
            provider_host: "api.openai.com".into(),
            provider: "openai".into(),
            reason: Some("no_plaintext_seen".into()),
            connections: 2,
            bytes_sent: 3002,
            bytes_received: 8324,
            pid: Some(7),
            service: Some("billing".into()),
            ..Default::default()
        };
        let r = TrafficRow::from_wire(w.clone(), "prod");
        assert_eq!((r.ts, r.first_seen), (1_795_428_000_123_456, 1_795_427_999_000_000));
        assert_eq!((r.reason.as_str(), r.capture.as_str(), r.namespace.as_str()), ("no_plaintext_seen", "", ""));
        assert_eq!((r.cluster.as_str(), r.service.as_str(), r.bytes_received), ("prod", "billing", 8324));
        assert_eq!(r.id(), uuid::Uuid::parse_str(&w.row_id).unwrap().as_u128());
    }
}
