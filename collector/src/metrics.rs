//! The collector's own metrics, in the Prometheus text format at `/metrics`.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::store::Failure;

#[derive(Default)]
pub struct Metrics {
    pub batches_received: AtomicU64,
    pub records_received: AtomicU64,
    pub records_inserted: AtomicU64,
    pub duplicates: AtomicU64,
    /// Rows ClickHouse refused for good (data errors), reported to the agent.
    pub records_rejected: AtomicU64,
    /// Rows of a retried batch found already stored (not inserted again).
    pub records_already_stored: AtomicU64,
    pub inserts: AtomicU64,
    pub queue_records: AtomicU64,
    pub ready: AtomicU64,
    pub connections: AtomicU64,
    pub connections_refused: AtomicU64,
    pub inflight_bytes: AtomicU64,
    /// The LLM traffic rows' own counts (`/v1/traffic`), so the records'
    /// counters keep meaning records.
    pub traffic: RowMetrics,
    /// OTLP trace ingest (`/v1/traces`).
    pub otlp: OtlpMetrics,
    /// Finding repeats as rows arrive (`repeats`).
    pub repeats: crate::repeats::RepeatMetrics,
    /// Spend of the call rows this replica stored (`tokentap_spend_*`).
    pub spend: crate::spend::SpendCounters,
    /// Budgets and the tracked baseline (`tokentap_budget_*`, `tokentap_track_*`).
    pub track: crate::track::Track,
    insert_errors: Mutex<BTreeMap<&'static str, u64>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Insert latency and record lag histograms: counts per bucket, plus sum.
    latency: Mutex<Histogram>,
    lag: Mutex<Histogram>,
}

/// What one row kind's path through admission and the writer counts.
#[derive(Default)]
pub struct RowMetrics {
    pub received: AtomicU64,
    pub inserted: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub already_stored: AtomicU64,
    pub inserts: AtomicU64,
    pub queue: AtomicU64,
}

/// What OTLP trace ingest counts (`tokentap_collector_otlp_*`). Every span
/// received ends in exactly one of: stored, skipped (not GenAI / not a call),
/// rejected (invalid, or refused by ClickHouse), a duplicate (of an agent's
/// record, of another span of the call, or the same span sent again).
#[derive(Default)]
pub struct OtlpMetrics {
    pub requests: AtomicU64,
    pub spans_received: AtomicU64,
    pub spans_stored: AtomicU64,
    pub spans_skipped_not_genai: AtomicU64,
    pub spans_skipped_not_call: AtomicU64,
    pub spans_rejected_invalid: AtomicU64,
    pub spans_rejected_by_clickhouse: AtomicU64,
    pub spans_duplicate_of_ebpf: AtomicU64,
    pub spans_duplicate_of_otel: AtomicU64,
    pub spans_resent: AtomicU64,
    /// Agents' records left out because a span of the same call was stored first.
    pub records_duplicate_of_otel: AtomicU64,
    pub match_keys: AtomicU64,
    pub held_spans: AtomicU64,
    /// Queries to ClickHouse for rows other replicas stored.
    pub replica_checks: AtomicU64,
    /// Of those, failed or timed out: the in-memory match decided alone.
    pub replica_check_failures: AtomicU64,
}

impl OtlpMetrics {
    fn series(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("otlp_requests_total", "counter", "OTLP trace export requests decoded.", g(&self.requests)),
            ("otlp_spans_received_total", "counter", "Spans in decoded OTLP requests.", g(&self.spans_received)),
            ("otlp_spans_stored_total", "counter", "GenAI spans stored as llm_calls rows.", g(&self.spans_stored)),
            (
                "otlp_spans_skipped_not_genai_total",
                "counter",
                "Spans without gen_ai.* provider or operation (not LLM calls).",
                g(&self.spans_skipped_not_genai),
            ),
            (
                "otlp_spans_skipped_not_call_total",
                "counter",
                "GenAI agent/tool spans (invoke_agent, execute_tool, create_agent): not one API call.",
                g(&self.spans_skipped_not_call),
            ),
            (
                "otlp_spans_rejected_invalid_total",
                "counter",
                "GenAI spans refused as invalid (ids, times, token counts, limits).",
                g(&self.spans_rejected_invalid),
            ),
            (
                "otlp_spans_rejected_by_clickhouse_total",
                "counter",
                "GenAI spans whose rows ClickHouse refused for good.",
                g(&self.spans_rejected_by_clickhouse),
            ),
            (
                "otlp_spans_duplicate_of_ebpf_total",
                "counter",
                "GenAI spans of calls an agent recorded (the agent's record is stored).",
                g(&self.spans_duplicate_of_ebpf),
            ),
            (
                "otlp_spans_duplicate_of_otel_total",
                "counter",
                "GenAI spans of a call another span (same response id) already stored.",
                g(&self.spans_duplicate_of_otel),
            ),
            (
                "otlp_spans_resent_total",
                "counter",
                "GenAI spans already stored (same trace and span id sent again).",
                g(&self.spans_resent),
            ),
            (
                "otlp_records_duplicate_of_otel_total",
                "counter",
                "Agents' records left out: a span of the same call was stored first (past the hold).",
                g(&self.records_duplicate_of_otel),
            ),
            ("otlp_match_keys", "gauge", "Calls remembered to match agents' records and spans.", g(&self.match_keys)),
            ("otlp_held_spans", "gauge", "GenAI spans waiting out the match hold.", g(&self.held_spans)),
            (
                "otlp_replica_checks_total",
                "counter",
                "Queries to ClickHouse for calls other collector replicas stored (one per flush of held spans or records batch).",
                g(&self.replica_checks),
            ),
            (
                "otlp_replica_check_failures_total",
                "counter",
                "Replica checks that failed or timed out: the call was matched in this replica's memory only.",
                g(&self.replica_check_failures),
            ),
        ]
    }
}

/// The counters a row kind updates: the records' are the historic fields of
/// [`Metrics`], the traffic rows' are [`Metrics::traffic`].
#[derive(Clone, Copy)]
pub struct RowCounters<'a> {
    pub received: &'a AtomicU64,
    pub inserted: &'a AtomicU64,
    pub duplicates: &'a AtomicU64,
    pub rejected: &'a AtomicU64,
    pub already_stored: &'a AtomicU64,
    pub inserts: &'a AtomicU64,
    pub queue: &'a AtomicU64,
}

impl Metrics {
    pub fn records(&self) -> RowCounters<'_> {
        RowCounters {
            received: &self.records_received,
            inserted: &self.records_inserted,
            duplicates: &self.duplicates,
            rejected: &self.records_rejected,
            already_stored: &self.records_already_stored,
            inserts: &self.inserts,
            queue: &self.queue_records,
        }
    }

    pub fn traffic(&self) -> RowCounters<'_> {
        let t = &self.traffic;
        RowCounters {
            received: &t.received,
            inserted: &t.inserted,
            duplicates: &t.duplicates,
            rejected: &t.rejected,
            already_stored: &t.already_stored,
            inserts: &t.inserts,
            queue: &t.queue,
        }
    }
}

const INSERT_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Lag from a call's first byte to its row being stored.
const LAG_BUCKETS: [f64; 14] = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
        }
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += v;
    }

    fn render(&self, s: &mut String, name: &str, help: &str, bounds: &[f64]) {
        let _ = writeln!(s, "# HELP tokentap_collector_{name} {help}\n# TYPE tokentap_collector_{name} histogram");
        let mut cum = 0;
        for (i, b) in bounds.iter().enumerate() {
            cum += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(s, "tokentap_collector_{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts.get(bounds.len()).copied().unwrap_or(0);
        let _ = writeln!(s, "tokentap_collector_{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(s, "tokentap_collector_{name}_sum {}", self.sum);
        let _ = writeln!(s, "tokentap_collector_{name}_count {cum}");
    }
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn reject(&self, reason: &'static str) {
        *self.rejected.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    pub fn insert_error(&self, kind: Failure) {
        let k = match kind {
            Failure::Outage => "outage",
            Failure::Data => "data",
            Failure::Unknown => "unknown",
        };
        *self.insert_errors.lock().unwrap_or_else(|e| e.into_inner()).entry(k).or_default() += 1;
    }

    pub fn observe_insert(&self, secs: f64) {
        self.latency.lock().unwrap_or_else(|e| e.into_inner()).observe(&INSERT_BUCKETS, secs);
    }

    /// Lag of stored rows: from their `ts` (microseconds) to `now_micros`.
    pub fn observe_lag(&self, ts: impl Iterator<Item = i64>, now_micros: i64) {
        let mut h = self.lag.lock().unwrap_or_else(|e| e.into_inner());
        for t in ts {
            h.observe(&LAG_BUCKETS, (now_micros - t).max(0) as f64 / 1e6);
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, kind, help, v) in [
            ("batches_received_total", "counter", "Batches received from agents.", g(&self.batches_received)),
            ("records_received_total", "counter", "Records received (valid batches).", g(&self.records_received)),
            ("records_inserted_total", "counter", "Records written to ClickHouse.", g(&self.records_inserted)),
            (
                "duplicates_total",
                "counter",
                "Records dropped as already inserted (same event_id).",
                g(&self.duplicates),
            ),
            (
                "records_rejected_total",
                "counter",
                "Records ClickHouse refused for good (data errors); named to the agent in a 422.",
                g(&self.records_rejected),
            ),
            (
                "records_already_stored_total",
                "counter",
                "Records of a retried insert or batch found already in ClickHouse (not inserted again).",
                g(&self.records_already_stored),
            ),
            ("inserts_total", "counter", "ClickHouse inserts that succeeded.", g(&self.inserts)),
            ("queue_records", "gauge", "Records accepted and waiting for ClickHouse.", g(&self.queue_records)),
            (
                "ready",
                "gauge",
                "1 unless ClickHouse is unreachable (the last insert failed for an outage).",
                g(&self.ready),
            ),
            ("connections", "gauge", "Open client connections.", g(&self.connections)),
            (
                "connections_refused_total",
                "counter",
                "Connections refused at --max-connections (answered 503).",
                g(&self.connections_refused),
            ),
            ("inflight_bytes", "gauge", "Request body bytes being read or decoded.", g(&self.inflight_bytes)),
            (
                "traffic_rows_received_total",
                "counter",
                "LLM traffic rows received (valid batches).",
                g(&self.traffic.received),
            ),
            (
                "traffic_rows_inserted_total",
                "counter",
                "LLM traffic rows written to ClickHouse.",
                g(&self.traffic.inserted),
            ),
            (
                "traffic_duplicates_total",
                "counter",
                "LLM traffic rows dropped as already inserted (same row_id).",
                g(&self.traffic.duplicates),
            ),
            (
                "traffic_rows_rejected_total",
                "counter",
                "LLM traffic rows ClickHouse refused for good.",
                g(&self.traffic.rejected),
            ),
            ("traffic_queue_rows", "gauge", "LLM traffic rows waiting for ClickHouse.", g(&self.traffic.queue)),
            (
                "repeat_keys",
                "gauge",
                "Prompts and conversations remembered to find repeats (--repeat-keys each).",
                g(&self.repeats.keys),
            ),
            (
                "repeat_keys_forgotten_total",
                "counter",
                "Times the older half of the remembered prompts or conversations was forgotten to make room.",
                g(&self.repeats.forgotten),
            ),
        ]
        .into_iter()
        .chain(self.otlp.series())
        {
            let _ = writeln!(s, "# HELP tokentap_collector_{name} {help}\n# TYPE tokentap_collector_{name} {kind}");
            let _ = writeln!(s, "tokentap_collector_{name} {v}");
        }
        let _ = writeln!(s, "# HELP tokentap_collector_insert_errors_total Failed ClickHouse insert attempts, by kind (outage: retried; data: rows isolated and refused; unknown: retried a few times, then data).");
        let _ = writeln!(s, "# TYPE tokentap_collector_insert_errors_total counter");
        for (kind, n) in self.insert_errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(s, "tokentap_collector_insert_errors_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(s, "# HELP tokentap_collector_batches_rejected_total Batches refused, by reason.");
        let _ = writeln!(s, "# TYPE tokentap_collector_batches_rejected_total counter");
        for (reason, n) in self.rejected.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(s, "tokentap_collector_batches_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        self.latency.lock().unwrap_or_else(|e| e.into_inner()).render(
            &mut s,
            "insert_duration_seconds",
            "ClickHouse insert latency.",
            &INSERT_BUCKETS,
        );
        self.lag.lock().unwrap_or_else(|e| e.into_inner()).render(
            &mut s,
            "record_lag_seconds",
            "From a call's first byte (its ts) to its row being stored in ClickHouse.",
            &LAG_BUCKETS,
        );
        self.spend.render(&mut s);
        self.track.render(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.records_inserted, 5);
        m.reject("unauthorized");
        m.insert_error(Failure::Data);
        m.observe_insert(0.02);
        m.observe_insert(20.0);
        m.observe_lag([1_000_000i64, 2_500_000].into_iter(), 3_000_000);
        let t = m.render();
        assert!(t.contains("tokentap_collector_records_inserted_total 5\n"));
        assert!(t.contains("tokentap_collector_batches_rejected_total{reason=\"unauthorized\"} 1\n"));
        assert!(t.contains("tokentap_collector_insert_errors_total{kind=\"data\"} 1\n"));
        assert!(t.contains("tokentap_collector_insert_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(t.contains("tokentap_collector_insert_duration_seconds_count 2\n"));
        assert!(t.contains("tokentap_collector_record_lag_seconds_bucket{le=\"0.5\"} 1\n"), "{t}");
        assert!(t.contains("tokentap_collector_record_lag_seconds_bucket{le=\"2\"} 2\n"), "{t}");
    }
}
