//! The open batch: records buffered on the sink's thread (the pipeline's),
//! sealed into the spool when the batch holds `records` records or `bytes`
//! bytes, or its oldest record is `age` old, whichever comes first. Sealing
//! compresses the buffer (zstd) and writes it to the spool; a batch that
//! cannot be written is dropped and counted, so the buffer stays bounded
//! while the disk fails.
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::counters::{self, SpoolCounters};
use super::index::Spool;
use super::journal::Journal;

/// When the open batch is sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// At this many records (at least 1)...
    pub records: usize,
    /// ...or this many bytes before compression...
    pub bytes: usize,
    /// ...or when its oldest record is this old (checked at each `flush`).
    pub age: Duration,
}

pub struct Batcher {
    spool: Arc<Spool>,
    counters: Arc<SpoolCounters>,
    limits: BatchLimits,
    /// The open batch's records, as the sink encoded them.
    buf: Vec<u8>,
    records: usize,
    /// When the open batch's first record arrived.
    opened: Option<Instant>,
    seq: u64,
    /// The open batch on disk too, for the next agent if this one is killed.
    journal: Journal,
}

impl Batcher {
    pub fn new(spool: Arc<Spool>, counters: Arc<SpoolCounters>, limits: BatchLimits) -> Self {
        let limits = BatchLimits { records: limits.records.max(1), ..limits };
        let journal = Journal::new(spool.dir());
        Self { spool, counters, limits, buf: Vec::new(), records: 0, opened: None, seq: 0, journal }
    }

    /// Add one record, which `encode` appends to the open batch (for NDJSON:
    /// the JSON and a newline). On error nothing of it is kept.
    pub fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        let len = self.buf.len();
        if let Err(e) = encode(&mut self.buf) {
            self.buf.truncate(len);
            return Err(e);
        }
        // On disk before the ring buffer record that completed it is released.
        self.journal.append(&self.buf[len..]);
        self.records += 1;
        self.opened.get_or_insert_with(Instant::now);
        if self.records >= self.limits.records || self.buf.len() >= self.limits.bytes {
            self.seal()?;
        }
        Ok(())
    }

    /// Seal the open batch if it is old enough (the pipeline calls this often).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.opened.is_some_and(|t| t.elapsed() >= self.limits.age) {
            return self.seal();
        }
        Ok(())
    }

    /// Records in the open batch.
    pub fn buffered(&self) -> usize {
        self.records
    }

    /// Seal the open batch into the spool, however small.
    pub fn seal(&mut self) -> io::Result<()> {
        if self.records == 0 {
            return Ok(());
        }
        let records = std::mem::take(&mut self.records);
        self.opened = None;
        self.seq += 1;
        let spooled = zstd::bulk::compress(&self.buf, 3)
            .and_then(|body| self.spool.write(self.seq, records, self.buf.len() as u64, &body));
        self.buf.clear();
        self.journal.clear();
        // Keep the usual batch's allocation, not a rare huge one's.
        if self.buf.capacity() > self.limits.bytes / 2 {
            self.buf = Vec::new();
        }
        spooled.inspect_err(|_| {
            // Not kept in memory: the buffer must stay bounded while the disk fails.
            counters::add(&self.counters.spool_dropped_records, records as u64);
        })
    }
}
