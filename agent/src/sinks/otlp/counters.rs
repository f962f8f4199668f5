//! The OTLP sink's counters, as the stats file and /metrics name them
//! (`otlp_*`, `tokentap_agent_otlp_*`): the spans' spool and the metrics'
//! spool, each counted in records (a span is one record; a metrics batch
//! is the records it was computed from).
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::sinks::spool::counters::get;
use crate::sinks::spool::SpoolCounters;
use crate::stats::CounterSet;

#[derive(Debug, Default)]
pub struct OtlpCounters {
    pub spans: Arc<SpoolCounters>,
    pub metrics: Arc<SpoolCounters>,
    /// Data points a receiver refused in a partial success (logged).
    pub metric_points_rejected: AtomicU64,
    /// Records that could not be spooled (their JSON failed to encode).
    pub records_unencodable: AtomicU64,
}

impl CounterSet for OtlpCounters {
    fn fields(&self) -> Vec<(&'static str, u64)> {
        let (s, m) = (&self.spans, &self.metrics);
        vec![
            ("otlp_spans_sent", get(&s.records_sent)),
            ("otlp_span_batches_sent", get(&s.batches_sent)),
            ("otlp_span_send_errors", get(&s.send_errors)),
            ("otlp_span_batches_rejected", get(&s.batches_rejected)),
            ("otlp_spans_rejected", get(&s.records_rejected)),
            ("otlp_span_spool_dropped_records", get(&s.spool_dropped_records)),
            ("otlp_span_spool_recovered_records", get(&s.spool_recovered_records)),
            ("otlp_span_spool_bytes", get(&s.spool_bytes)),
            ("otlp_span_spool_batches", get(&s.spool_batches)),
            ("otlp_span_in_flight", get(&s.in_flight)),
            ("otlp_metric_records_sent", get(&m.records_sent)),
            ("otlp_metric_batches_sent", get(&m.batches_sent)),
            ("otlp_metric_send_errors", get(&m.send_errors)),
            ("otlp_metric_batches_rejected", get(&m.batches_rejected)),
            ("otlp_metric_points_rejected", get(&self.metric_points_rejected)),
            ("otlp_metric_spool_dropped_records", get(&m.spool_dropped_records)),
            ("otlp_metric_spool_recovered_records", get(&m.spool_recovered_records)),
            ("otlp_metric_spool_bytes", get(&m.spool_bytes)),
            ("otlp_metric_spool_batches", get(&m.spool_batches)),
            ("otlp_metric_in_flight", get(&m.in_flight)),
            ("otlp_records_unencodable", get(&self.records_unencodable)),
        ]
    }

    fn gauges(&self) -> &'static [&'static str] {
        &[
            "otlp_span_spool_bytes",
            "otlp_span_spool_batches",
            "otlp_span_in_flight",
            "otlp_metric_spool_bytes",
            "otlp_metric_spool_batches",
            "otlp_metric_in_flight",
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    #[test]
    fn named_in_the_stats_file_and_metrics() {
        let stats = Stats::default();
        crate::sinks::register_counters(&stats);
        let c = stats.group::<OtlpCounters>();
        crate::sinks::spool::counters::add(&c.spans.records_sent, 7);
        crate::sinks::spool::counters::add(&c.metrics.spool_bytes, 3);
        let snap = stats.snapshot();
        let names: Vec<&str> = snap.groups.keys().map(String::as_str).filter(|n| n.starts_with("otlp_")).collect();
        assert_eq!(names.len(), 21, "{names:?}");
        let json: serde_json::Value = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["otlp_spans_sent"], 7);
        let m = crate::metrics::render(&stats);
        assert!(m.contains("# TYPE tokentap_agent_otlp_spans_sent_total counter\n"), "{m}");
        assert!(m.contains("tokentap_agent_otlp_metric_spool_bytes 3\n"), "{m}");
    }
}
