//! The collector sink's counters, as the stats file and /metrics name them
//! (`collector_*`, `tokentap_agent_collector_*`): the spool's, and records
//! refused before they reach it.
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::sinks::spool::counters::get;
use crate::sinks::spool::SpoolCounters;
use crate::stats::CounterSet;

#[derive(Debug, Default)]
pub struct CollectorCounters {
    pub spool: Arc<SpoolCounters>,
    /// Records not sent because they fail the wire format's checks (logged).
    pub records_invalid: AtomicU64,
}

impl CounterSet for CollectorCounters {
    fn fields(&self) -> Vec<(&'static str, u64)> {
        let s = &self.spool;
        vec![
            ("collector_batches_sent", get(&s.batches_sent)),
            ("collector_records_sent", get(&s.records_sent)),
            ("collector_send_errors", get(&s.send_errors)),
            ("collector_batches_rejected", get(&s.batches_rejected)),
            ("collector_records_rejected", get(&s.records_rejected)),
            ("collector_records_invalid", get(&self.records_invalid)),
            ("collector_spool_dropped_records", get(&s.spool_dropped_records)),
            ("collector_spool_recovered_records", get(&s.spool_recovered_records)),
            ("collector_spool_bytes", get(&s.spool_bytes)),
            ("collector_spool_batches", get(&s.spool_batches)),
            ("collector_in_flight", get(&s.in_flight)),
        ]
    }

    fn gauges(&self) -> &'static [&'static str] {
        &["collector_spool_bytes", "collector_spool_batches", "collector_in_flight"]
    }
}

/// The same for the LLM traffic rows the sink sends beside the records
/// (`collector_traffic_*`): their own spool, their own counts, so the records'
/// counters keep meaning records.
#[derive(Debug, Default)]
pub struct TrafficCounters {
    pub spool: Arc<SpoolCounters>,
    /// Rows not sent because they fail the wire format's checks (logged).
    pub rows_invalid: AtomicU64,
}

impl CounterSet for TrafficCounters {
    fn fields(&self) -> Vec<(&'static str, u64)> {
        let s = &self.spool;
        vec![
            ("collector_traffic_batches_sent", get(&s.batches_sent)),
            ("collector_traffic_rows_sent", get(&s.records_sent)),
            ("collector_traffic_send_errors", get(&s.send_errors)),
            ("collector_traffic_rows_rejected", get(&s.records_rejected)),
            ("collector_traffic_rows_invalid", get(&self.rows_invalid)),
            ("collector_traffic_spool_dropped_rows", get(&s.spool_dropped_records)),
            ("collector_traffic_spool_recovered_rows", get(&s.spool_recovered_records)),
            ("collector_traffic_spool_batches", get(&s.spool_batches)),
            ("collector_traffic_in_flight", get(&s.in_flight)),
        ]
    }

    fn gauges(&self) -> &'static [&'static str] {
        &["collector_traffic_spool_batches", "collector_traffic_in_flight"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Snapshot, Stats, StatsFile};

    const TOTALS: [&str; 8] = [
        "collector_batches_sent",
        "collector_records_sent",
        "collector_send_errors",
        "collector_batches_rejected",
        "collector_records_rejected",
        "collector_records_invalid",
        "collector_spool_dropped_records",
        "collector_spool_recovered_records",
    ];
    const GAUGES: [&str; 3] = ["collector_spool_bytes", "collector_spool_batches", "collector_in_flight"];

    #[test]
    fn names_in_the_stats_file_and_metrics_are_unchanged() {
        let stats = Stats::default();
        crate::sinks::register_counters(&stats);
        let c = stats.group::<CollectorCounters>();
        crate::sinks::spool::counters::add(&c.spool.records_sent, 7);
        crate::sinks::spool::counters::add(&c.spool.spool_bytes, 3);
        let snap = stats.snapshot();
        let names: Vec<&str> = snap
            .groups
            .keys()
            .map(String::as_str)
            .filter(|n| n.starts_with("collector_") && !n.starts_with("collector_traffic_"))
            .collect();
        let mut want = [&TOTALS[..], &GAUGES[..]].concat();
        want.sort();
        assert_eq!(names, want, "the collector's names");
        let traffic = snap.groups.keys().filter(|n| n.starts_with("collector_traffic_")).count();
        assert_eq!(traffic, 9, "the traffic rows' own counters");
        let json: serde_json::Value = serde_json::to_value(&snap).unwrap();
        assert_eq!((json["collector_records_sent"].as_u64(), json["collector_in_flight"].as_u64()), (Some(7), Some(0)));
        let p = std::env::temp_dir().join(format!("tt-collector-counters-{}.json", std::process::id()));
        StatsFile { counters: snap.clone(), ..Default::default() }.write_to(&p).unwrap();
        let back: Snapshot = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, snap, "read back from the stats file");
        let m = crate::metrics::render(&stats);
        for n in TOTALS {
            assert!(m.contains(&format!("# TYPE tokentap_agent_{n}_total counter\n")), "{n}: {m}");
        }
        for n in GAUGES {
            assert!(m.contains(&format!("# TYPE tokentap_agent_{n} gauge\n")), "{n}: {m}");
        }
        assert!(m.contains("tokentap_agent_collector_spool_bytes 3\n"), "{m}");
        assert_eq!(Arc::as_ptr(&stats.group::<CollectorCounters>()), Arc::as_ptr(&c), "one group per type");
    }
}
