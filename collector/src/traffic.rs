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

/// What could not be read since `since_secs` ago, per process, host and
/// reason, for the report (the same lines as an agent's `blind_spots`).
pub async fn blind_spots(
    client: &clickhouse::Client,
    since_secs: u64,
) -> Result<Vec<tokentap_event::traffic::BlindSpot>, clickhouse::error::Error> {
    #[derive(Row, Deserialize)]
    struct Line {
        provider_host: String,
        provider: String,
        reason: String,
        detail: String,
        connections: u64,
        bytes_sent: u64,
        bytes_received: u64,
        first_seen: i64,
        last_seen: i64,
        pid: u32,
        comm: String,
        exe: String,
        pod: String,
        namespace: String,
        workload: String,
        service: String,
    }
    let lines: Vec<Line> = client
        .query(
            "SELECT provider_host, any(provider) AS provider, reason, any(ifNull(reason_detail, '')) AS detail, \
             sum(connections) AS connections, sum(bytes_sent) AS bytes_sent, sum(bytes_received) AS bytes_received, \
             toInt64(toUnixTimestamp64Micro(min(first_seen))) AS first_seen, \
             toInt64(toUnixTimestamp64Micro(max(last_seen))) AS last_seen, ifNull(pid, 0) AS pid, \
             any(ifNull(comm, '')) AS comm, any(ifNull(exe, '')) AS exe, any(ifNull(pod, '')) AS pod, \
             namespace, workload, service \
             FROM llm_traffic FINAL WHERE NOT decoded AND ts >= now64(6) - toIntervalSecond(?) \
             GROUP BY provider_host, reason, pid, namespace, workload, service \
             ORDER BY bytes_sent + bytes_received DESC LIMIT 1000",
        )
        .bind(since_secs)
        .fetch_all()
        .await?;
    let opt = |s: String| if s.is_empty() { None } else { Some(s) };
    let ts = |us: i64| tokentap_event::LlmCall::format_ts(us as i128 * 1000);
    Ok(lines
        .into_iter()
        .map(|l| {
            let reason_text = match l.detail.as_str() {
                "" => describe(&l.reason),
                d => format!("{}: {d}", describe(&l.reason)),
            };
            tokentap_event::traffic::BlindSpot {
                provider_host: l.provider_host,
                provider: l.provider,
                reason: l.reason,
                reason_text,
                connections: l.connections,
                bytes_sent: l.bytes_sent,
                bytes_received: l.bytes_received,
                first_seen: ts(l.first_seen),
                last_seen: ts(l.last_seen),
                pid: l.pid,
                comm: l.comm,
                exe: opt(l.exe),
                container_id: None,
                pod: opt(l.pod),
                namespace: opt(l.namespace),
                workload: opt(l.workload),
                service: opt(l.service),
                exited: false,
            }
        })
        .collect())
}

/// A stored reason code in words (the agent's `Unread::describe`).
fn describe(code: &str) -> String {
    use tokentap_event::Unread;
    let why = match code {
        "no_plaintext_seen" => Unread::NoPlaintextSeen,
        "tls_library_not_probed" => Unread::TlsLibraryNotProbed,
        "plaintext_not_seen" => Unread::PlaintextNotSeen,
        other => return format!("plaintext seen, HTTP given up ({other})"),
    };
    why.describe()
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
