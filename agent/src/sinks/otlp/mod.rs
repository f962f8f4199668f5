//! `type = "otlp"` (`--output otlp[:URL]`): records go to an OpenTelemetry
//! receiver (an OpenTelemetry Collector, or any OTLP/HTTP backend) as one
//! CLIENT span per call and the GenAI client metrics, in the GenAI semantic
//! conventions (docs/record.md has the mapping, field by field).
//!
//! Durable like the collector sink, through the same spool (`sinks/spool`):
//! the pipeline thread appends each record as NDJSON to two spools, one per
//! signal (`<spool_dir>/traces`, `<spool_dir>/metrics`), so that an endpoint
//! that refuses or lacks one signal does not hold the other back. The
//! transport ([`http`]) turns a run of spooled batches into the protobuf
//! request when it sends it: the spool keeps the record contract, and a resend
//! carries the same span ids ([`semconv::ids`]) and the same metric points
//! ([`metrics`]).
//!
//! Files: `settings.rs` (the section and the `--otlp-*` flags), `semconv.rs`
//! (names, resource, span attributes, ids), `traces.rs` and `metrics.rs` (the
//! two requests), `http.rs` (the transport and its answers), `counters.rs`
//! (`otlp_*`).
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokentap_event::LlmCall;

use crate::sinks::sink::{Sink, SinkContext, SinkKind};
use crate::sinks::spool::{BatchLimits, Delivery, SpoolOptions};
use crate::stats::Stats;

pub mod counters;
pub mod http;
pub mod metrics;
pub mod semconv;
pub mod settings;
#[cfg(test)]
mod tests;
pub mod traces;

pub use counters::OtlpCounters;
pub use settings::{OtlpFlags, OtlpSettings, Signal};

/// A batch this large (NDJSON) is sealed whatever its record count.
const MAX_BATCH_NDJSON: usize = 8 << 20;

pub struct OtlpSink {
    spans: Delivery,
    metrics: Option<Delivery>,
    counters: Arc<OtlpCounters>,
    /// One record's NDJSON line, encoded once for both spools.
    line: Vec<u8>,
}

impl OtlpSink {
    /// `name`: the output's, for logs.
    pub fn named(name: &str, cfg: OtlpSettings, stats: &Stats) -> io::Result<Self> {
        let counters = stats.group::<OtlpCounters>();
        let host = semconv::Host::detect();
        let max_bytes = if cfg.metrics { cfg.spool_max_bytes / 2 } else { cfg.spool_max_bytes };
        let opts = |signal: Signal| SpoolOptions {
            name: format!("{name} ({})", signal.name()),
            kind: match signal {
                Signal::Traces => "otlp-traces",
                Signal::Metrics => "otlp-metrics",
            },
            dir: cfg.spool_dir.join(signal.name()),
            max_bytes: max_bytes.max(1),
            batch: BatchLimits { records: cfg.batch_records, bytes: MAX_BATCH_NDJSON, age: cfg.batch_age() },
            senders: cfg.max_in_flight.max(1),
            drain_timeout: cfg.drain_timeout,
        };
        let open = |signal: Signal, spool| {
            let transport = Arc::new(http::OtlpTransport::new(&cfg, signal, host.clone(), counters.clone())?);
            Delivery::open(&opts(signal), transport, spool)
        };
        let spans = open(Signal::Traces, counters.spans.clone())?;
        let metrics = if cfg.metrics { Some(open(Signal::Metrics, counters.metrics.clone())?) } else { None };
        Ok(Self { spans, metrics, counters, line: Vec::new() })
    }

    /// Records buffered in the open span batch.
    pub fn buffered(&self) -> usize {
        self.spans.buffered()
    }
}

impl Sink for OtlpSink {
    fn write(&mut self, record: &LlmCall) -> io::Result<()> {
        self.line.clear();
        if let Err(e) = serde_json::to_writer(&mut self.line, record) {
            let n = self.counters.records_unencodable.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 1000 == 1 {
                tracing::warn!(event_id = %record.event_id, error = %e, "record not sent over OTLP: unencodable");
            }
            return Ok(());
        }
        self.line.push(b'\n');
        let line = &self.line;
        self.spans.push(|buf| buf.write_all(line))?;
        if let Some(m) = &mut self.metrics {
            m.push(|buf| buf.write_all(line))?;
        }
        Ok(())
    }

    /// Seal the open batches if they are old enough (the pipeline calls this often).
    fn flush(&mut self) -> io::Result<()> {
        self.spans.flush()?;
        match &mut self.metrics {
            Some(m) => m.flush(),
            None => Ok(()),
        }
    }

    fn closing(&mut self, since: std::time::Instant) {
        self.spans.closing(since);
        if let Some(m) = &mut self.metrics {
            m.closing(since);
        }
    }
}

/// The registry's entry for this sink.
pub struct Otlp;

impl SinkKind for Otlp {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn usage(&self) -> &'static str {
        "otlp[:http(s)://HOST:4318]"
    }

    /// `otlp` alone: OpenTelemetry's default endpoint (`http://localhost:4318`).
    fn section_from_spec(&self, arg: Option<&str>) -> Option<toml::Table> {
        match arg {
            None => Some(toml::Table::new()),
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(toml::Table::from_iter([("endpoint".to_owned(), url.into())]))
            }
            Some(_) => None,
        }
    }

    fn check(&self, section: &toml::Table) -> Result<(), String> {
        OtlpSettings::from_section(section).map(drop)
    }

    fn open(&self, section: &toml::Table, cx: &SinkContext<'_>) -> io::Result<Box<dyn Sink>> {
        let cfg = OtlpSettings::from_section(section).map_err(io::Error::other)?;
        Ok(Box::new(OtlpSink::named(cx.name, cfg, cx.stats)?))
    }

    fn register_counters(&self, stats: &Stats) {
        stats.group::<OtlpCounters>();
    }
}
