//! What a spooled sink counts: what became of its batches, and the spool's
//! levels. The sink names them (the collector's are `collector_*`, see
//! `sinks/collector/counters.rs`); the spool only adds to them.
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct SpoolCounters {
    /// Batches and records the receiver holds (a partial answer's accepted
    /// rows included).
    pub batches_sent: AtomicU64,
    pub records_sent: AtomicU64,
    /// Failed sends (retried; the batches stay in the spool).
    pub send_errors: AtomicU64,
    /// Batches refused on their own, kept in the spool's `rejected/`.
    pub batches_rejected: AtomicU64,
    /// Records refused for good: rows of a partial answer, and the records of
    /// rejected batches.
    pub records_rejected: AtomicU64,
    /// Records dropped: the spool reached its bound, a batch could not be
    /// written, its file vanished, or one was half written at a kill.
    pub spool_dropped_records: AtomicU64,
    /// Records a killed agent left in its journal of the open batch, sealed
    /// and sent by this one (`journal`).
    pub spool_recovered_records: AtomicU64,
    /// Levels: bytes and batches in the spool (waiting or being sent), and
    /// requests being sent.
    pub spool_bytes: AtomicU64,
    pub spool_batches: AtomicU64,
    pub in_flight: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn set(c: &AtomicU64, n: u64) {
    c.store(n, Ordering::Relaxed);
}

pub(crate) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
