//! `--output collector:URL`: records go to a tokentap collector in compressed
//! batches (the wire format of `tokentap_event::wire`), through an on-disk spool
//! so that a collector outage, or an agent restart, loses nothing.
//!
//! The pipeline thread checks each record (`wire::validate`: an invalid one is
//! dropped and counted, so a batch is never refused for one record), buffers
//! it as NDJSON and seals the buffer into a spool file when it holds
//! `batch_records` or its oldest record is `batch_age` old ([`spool`]: written,
//! then renamed, then indexed in memory). `max_in_flight` sender threads
//! ([`send`]) post runs of consecutive batches, merged up to `merge_records`,
//! and delete each only once the collector holds it. Batches left at exit are
//! sent by the next run.
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokentap_event::{wire, LlmCall};

use super::Sink;
use crate::stats::Stats;

mod send;
mod spool;
#[cfg(test)]
mod tests;

use spool::{Batch, Spool};

pub const DEFAULT_BATCH_RECORDS: usize = 5000;
pub const DEFAULT_BATCH_AGE: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
pub const DEFAULT_MERGE_RECORDS: usize = 20_000;
/// A buffer this large (uncompressed) is sealed whatever its record count:
/// well under what a collector decompresses per request (64 MiB).
const MAX_BATCH_NDJSON: usize = 32 << 20;
/// How long, after the drain timeout, requests in flight may take to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// Collector base URL (`http://collector:8787`).
    pub url: String,
    /// Bearer token file (re-read per request: rotations apply without restart).
    pub token_file: Option<PathBuf>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// A batch is sealed at this many records (at most `wire::MAX_RECORDS`)...
    pub batch_records: usize,
    /// ...or when its oldest record is this old, whichever comes first.
    pub batch_age: Duration,
    /// Requests sent at once.
    pub max_in_flight: usize,
    /// Records one request carries when spooled batches are merged.
    pub merge_records: usize,
    /// Sent with every batch (`x-tokentap-cluster`): which cluster this node is in.
    pub cluster: String,
    /// How long the agent waits at exit for the spool to drain.
    pub drain_timeout: Duration,
    /// CA certificate(s) trusted for an `https://` collector (default: the
    /// public web PKI roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl CollectorConfig {
    /// Defaults for everything but where to send and where to spool.
    pub fn new(url: impl Into<String>, spool_dir: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            token_file: None,
            spool_dir: spool_dir.into(),
            spool_max_bytes: 1 << 30,
            batch_records: DEFAULT_BATCH_RECORDS,
            batch_age: DEFAULT_BATCH_AGE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            merge_records: DEFAULT_MERGE_RECORDS,
            cluster: String::new(),
            drain_timeout: Duration::from_secs(5),
            ca_file: None,
            client_cert: None,
        }
    }
}

pub struct CollectorSink {
    cfg: CollectorConfig,
    /// Records of the open batch, as NDJSON (what `wire::encode` compresses).
    ndjson: Vec<u8>,
    records: usize,
    /// When the open batch's first record arrived.
    opened: Option<Instant>,
    seq: u64,
    spool: Arc<Spool>,
    stats: Arc<Stats>,
    senders: Vec<std::thread::JoinHandle<()>>,
}

impl CollectorSink {
    pub fn new(mut cfg: CollectorConfig, stats: Arc<Stats>) -> io::Result<Self> {
        cfg.batch_records = cfg.batch_records.clamp(1, wire::MAX_RECORDS);
        cfg.max_in_flight = cfg.max_in_flight.max(1);
        // Bad certificate paths are configuration errors: fail at start, not per send.
        let agent = send::http_agent(&cfg)?;
        let spool = Arc::new(Spool::open(&cfg.spool_dir, cfg.spool_max_bytes, stats.clone())?);
        let mut senders = Vec::new();
        for i in 0..cfg.max_in_flight {
            let (cfg, spool2, agent, stats) = (cfg.clone(), spool.clone(), agent.clone(), stats.clone());
            let h = std::thread::Builder::new()
                .name(format!("collector-{i}"))
                .spawn(move || send::send_loop(&cfg, &spool2, &agent, &stats));
            match h {
                Ok(h) => senders.push(h),
                Err(e) => {
                    spool.stop();
                    return Err(e);
                }
            }
        }
        Ok(Self { cfg, ndjson: Vec::new(), records: 0, opened: None, seq: 0, spool, stats, senders })
    }

    /// Records buffered in the open batch.
    pub fn buffered(&self) -> usize {
        self.records
    }

    /// Seal the open batch into the spool, however small.
    fn seal(&mut self) -> io::Result<()> {
        if self.records == 0 {
            return Ok(());
        }
        let records = std::mem::take(&mut self.records);
        self.opened = None;
        let spooled = self.spool_batch(records);
        self.ndjson.clear();
        // Keep the usual batch's allocation, not a rare huge one's.
        if self.ndjson.capacity() > MAX_BATCH_NDJSON / 2 {
            self.ndjson = Vec::new();
        }
        spooled.inspect_err(|_| {
            // Not kept in memory: the buffer must stay bounded while the disk fails.
            Stats::add(&self.stats.collector_spool_dropped_records, records as u64);
        })
    }

    fn spool_batch(&mut self, records: usize) -> io::Result<()> {
        // The same bytes as `wire::encode` of the records.
        let body = zstd::bulk::compress(&self.ndjson, 3)?;
        self.seq += 1;
        let name = spool::batch_name(self.seq, records);
        let batch = Batch::new(&name, body.len() as u64, self.ndjson.len() as u64)
            .ok_or_else(|| io::Error::other("bad batch name"))?;
        let tmp = self.cfg.spool_dir.join(format!("{name}.tmp"));
        let written = std::fs::write(&tmp, &body).and_then(|()| std::fs::rename(&tmp, self.cfg.spool_dir.join(&name)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        self.spool.push(batch);
        Ok(())
    }
}

impl Sink for CollectorSink {
    fn write(&mut self, record: &LlmCall) -> io::Result<()> {
        if let Err(reason) = wire::validate(record, &wire::Limits::now(None)) {
            let n = self.stats.collector_records_invalid.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n % 1000 == 1 {
                tracing::warn!(event_id = %record.event_id, %reason, invalid_so_far = n, "record not sent to the collector: invalid");
            }
            return Ok(());
        }
        serde_json::to_writer(&mut self.ndjson, record)?;
        self.ndjson.write_all(b"\n")?;
        self.records += 1;
        self.opened.get_or_insert_with(Instant::now);
        if self.records >= self.cfg.batch_records || self.ndjson.len() >= MAX_BATCH_NDJSON {
            self.seal()?;
        }
        Ok(())
    }

    /// Seal the open batch if it is old enough (the pipeline calls this often).
    fn flush(&mut self) -> io::Result<()> {
        if self.opened.is_some_and(|t| t.elapsed() >= self.cfg.batch_age) {
            self.seal()?;
        }
        Ok(())
    }
}

impl Drop for CollectorSink {
    fn drop(&mut self) {
        if let Err(e) = self.seal() {
            tracing::warn!(error = %e, "could not spool the last batch");
        }
        // Give the senders a moment to drain, then leave the rest for the next run.
        self.spool.wait_empty(Instant::now() + self.cfg.drain_timeout);
        self.spool.stop();
        let busy = self.spool.wait_idle(Instant::now() + STOP_GRACE);
        for h in self.senders.drain(..) {
            // A sender stuck in a request is left behind rather than holding up exit.
            if busy == 0 || h.is_finished() {
                let _ = h.join();
            }
        }
        let left = self.spool.wait_empty(Instant::now());
        if left > 0 {
            tracing::warn!(batches = left, dir = %self.cfg.spool_dir.display(), "batches left in the collector spool for the next run");
        }
    }
}
