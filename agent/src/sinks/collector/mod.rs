//! `type = "collector"` (`--output collector:URL`): records go to a tokentap
//! collector in compressed batches (the wire format of `tokentap_event::wire`),
//! through the durable spool (`sinks/spool`) so that a collector outage, or an
//! agent restart, loses nothing.
//!
//! The pipeline thread checks each record (`wire::validate`: an invalid one is
//! dropped and counted, so a batch is never refused for one record) and adds
//! it to the open batch as NDJSON; the spool seals, stores and sends batches
//! ([`settings`]: sizes, ages, requests in flight), over [`http`].
//!
//! Files: `settings.rs` (what the section and the shorthand flags hold),
//! `http.rs` (the transport: headers, answers), `counters.rs` (the
//! `collector_*` counters).
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokentap_event::wire::{self, WireRow};
use tokentap_event::{LlmCall, LlmTraffic};

use crate::sinks::sink::{Sink, SinkContext, SinkKind};
use crate::sinks::spool::{BatchLimits, Delivery, SpoolOptions};
use crate::stats::Stats;

pub mod counters;
pub mod http;
pub mod settings;
#[cfg(test)]
mod tests;

pub use counters::{CollectorCounters, TrafficCounters};
pub use settings::{
    CollectorFlags, CollectorSettings, DEFAULT_BATCH_AGE, DEFAULT_BATCH_RECORDS, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MERGE_RECORDS,
};

/// A batch this large (uncompressed) is sealed whatever its record count:
/// well under what a collector decompresses per request (64 MiB).
const MAX_BATCH_NDJSON: usize = 32 << 20;

/// The traffic rows' spool, at most (they are few: one per process, host and
/// verdict every ten seconds).
const MAX_TRAFFIC_SPOOL: u64 = 64 << 20;

pub struct CollectorSink {
    delivery: Delivery,
    counters: Arc<CollectorCounters>,
    /// LLM traffic rows: the same collector, their own endpoint
    /// (`wire::TRAFFIC_PATH`) and spool (`<spool_dir>/traffic`).
    traffic: Delivery,
    traffic_counters: Arc<TrafficCounters>,
}

impl CollectorSink {
    /// Counters go to `stats`' collector group.
    pub fn new(cfg: CollectorSettings, stats: Arc<Stats>) -> io::Result<Self> {
        Self::named("collector", cfg, &stats)
    }

    /// `name`: the output's, for logs.
    pub fn named(name: &str, cfg: CollectorSettings, stats: &Stats) -> io::Result<Self> {
        let cfg = cfg.normalised();
        let counters = stats.group::<CollectorCounters>();
        let transport = Arc::new(http::HttpTransport::new(&cfg)?);
        let opts = SpoolOptions {
            name: name.to_owned(),
            kind: "collector",
            dir: cfg.spool_dir.clone(),
            max_bytes: cfg.spool_max_bytes,
            batch: BatchLimits { records: cfg.batch_records, bytes: MAX_BATCH_NDJSON, age: cfg.batch_age() },
            senders: cfg.max_in_flight,
            drain_timeout: cfg.drain_timeout,
        };
        let delivery = Delivery::open(&opts, transport, counters.spool.clone())?;
        let traffic_counters = stats.group::<TrafficCounters>();
        let traffic_opts = SpoolOptions {
            name: format!("{name} (traffic)"),
            kind: "collector-traffic",
            dir: cfg.spool_dir.join("traffic"),
            max_bytes: cfg.spool_max_bytes.min(MAX_TRAFFIC_SPOOL),
            senders: 1,
            ..opts
        };
        let transport = Arc::new(http::HttpTransport::for_path(&cfg, LlmTraffic::PATH)?);
        let traffic = Delivery::open(&traffic_opts, transport, traffic_counters.spool.clone())?;
        http::check_at_start(&cfg, name);
        Ok(Self { delivery, counters, traffic, traffic_counters })
    }

    /// Records buffered in the open batch.
    pub fn buffered(&self) -> usize {
        self.delivery.buffered()
    }
}

impl Sink for CollectorSink {
    fn write(&mut self, record: &LlmCall) -> io::Result<()> {
        if let Err(reason) = wire::validate(record, &wire::Limits::now(None)) {
            let n = self.counters.records_invalid.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 1000 == 1 {
                tracing::warn!(event_id = %record.event_id, %reason, invalid_so_far = n, "record not sent to the collector: invalid");
            }
            return Ok(());
        }
        self.delivery.push(|buf| {
            serde_json::to_writer(&mut *buf, record)?;
            buf.write_all(b"\n")
        })
    }

    fn write_traffic(&mut self, row: &LlmTraffic) -> io::Result<()> {
        if let Err(reason) = row.check(&wire::Limits::now(None)) {
            let n = self.traffic_counters.rows_invalid.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 1000 == 1 {
                tracing::warn!(row_id = %row.row_id, %reason, invalid_so_far = n, "traffic row not sent to the collector: invalid");
            }
            return Ok(());
        }
        self.traffic.push(|buf| {
            serde_json::to_writer(&mut *buf, row)?;
            buf.write_all(b"\n")
        })
    }

    /// Seal the open batches if they are old enough (the pipeline calls this often).
    fn flush(&mut self) -> io::Result<()> {
        self.delivery.flush()?;
        self.traffic.flush()
    }

    fn closing(&mut self, since: std::time::Instant) {
        self.delivery.closing(since);
        self.traffic.closing(since);
    }
}

/// The registry's entry for this sink.
pub struct Collector;

impl SinkKind for Collector {
    fn name(&self) -> &'static str {
        "collector"
    }

    fn usage(&self) -> &'static str {
        "collector:http(s)://HOST:PORT"
    }

    fn section_from_spec(&self, arg: Option<&str>) -> Option<toml::Table> {
        let url = arg.filter(|u| u.starts_with("http://") || u.starts_with("https://"))?;
        Some(toml::Table::from_iter([("url".to_owned(), url.into())]))
    }

    fn check(&self, section: &toml::Table) -> Result<(), String> {
        CollectorSettings::from_section(section).map(drop)
    }

    fn open(&self, section: &toml::Table, cx: &SinkContext<'_>) -> io::Result<Box<dyn Sink>> {
        let cfg = CollectorSettings::from_section(section).map_err(io::Error::other)?;
        Ok(Box::new(CollectorSink::named(cx.name, cfg, cx.stats)?))
    }

    fn register_counters(&self, stats: &Stats) {
        stats.group::<CollectorCounters>();
        stats.group::<TrafficCounters>();
    }
}
