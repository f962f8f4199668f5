//! The collector's own metrics, in the Prometheus text format at `/metrics`.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub batches_received: AtomicU64,
    pub records_received: AtomicU64,
    pub records_inserted: AtomicU64,
    pub duplicates: AtomicU64,
    pub inserts: AtomicU64,
    pub insert_errors: AtomicU64,
    pub queue_records: AtomicU64,
    pub ready: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Insert latency histogram: counts per upper bound (seconds), plus sum.
    latency: Mutex<(Vec<u64>, f64)>,
}

const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn reject(&self, reason: &'static str) {
        *self.rejected.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    pub fn observe_insert(&self, secs: f64) {
        let mut l = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        if l.0.is_empty() {
            l.0 = vec![0; BUCKETS.len() + 1];
        }
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        l.0[i] += 1;
        l.1 += secs;
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
            ("inserts_total", "counter", "ClickHouse inserts that succeeded.", g(&self.inserts)),
            (
                "insert_errors_total",
                "counter",
                "ClickHouse insert attempts that failed (retried).",
                g(&self.insert_errors),
            ),
            ("queue_records", "gauge", "Records accepted and waiting for ClickHouse.", g(&self.queue_records)),
            ("ready", "gauge", "1 when ClickHouse answered the last insert or ping.", g(&self.ready)),
        ] {
            let _ = writeln!(s, "# HELP tokentap_collector_{name} {help}\n# TYPE tokentap_collector_{name} {kind}");
            let _ = writeln!(s, "tokentap_collector_{name} {v}");
        }
        let _ = writeln!(s, "# HELP tokentap_collector_batches_rejected_total Batches refused, by reason.");
        let _ = writeln!(s, "# TYPE tokentap_collector_batches_rejected_total counter");
        for (reason, n) in self.rejected.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(s, "tokentap_collector_batches_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        let l = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(s, "# HELP tokentap_collector_insert_duration_seconds ClickHouse insert latency.");
        let _ = writeln!(s, "# TYPE tokentap_collector_insert_duration_seconds histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += l.0.get(i).copied().unwrap_or(0);
            let _ = writeln!(s, "tokentap_collector_insert_duration_seconds_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += l.0.get(BUCKETS.len()).copied().unwrap_or(0);
        let _ = writeln!(s, "tokentap_collector_insert_duration_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(s, "tokentap_collector_insert_duration_seconds_sum {}", l.1);
        let _ = writeln!(s, "tokentap_collector_insert_duration_seconds_count {cum}");
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
        m.observe_insert(0.02);
        m.observe_insert(20.0);
        let t = m.render();
        assert!(t.contains("tokentap_collector_records_inserted_total 5\n"));
        assert!(t.contains("tokentap_collector_batches_rejected_total{reason=\"unauthorized\"} 1\n"));
        assert!(t.contains("tokentap_collector_insert_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(t.contains("tokentap_collector_insert_duration_seconds_count 2\n"));
    }
}
