//! The agent's counters about itself: what it captured, what it dropped and why.
//! Logged periodically and at exit, and written to `--stats-file` as JSON.
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Default)]
        pub struct Stats { $($(#[$doc])* pub $name: AtomicU64,)* }

        #[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
        pub struct Snapshot { $(pub $name: u64,)* }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Snapshot {
            /// Every counter with its name.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Ring-buffer records read.
    events,
    /// Plaintext bytes received from the kernel.
    bytes,
    /// Records that failed to decode.
    decode_errors,
    /// Connections seen.
    connections,
    /// Connections ignored, by reason.
    ignored_not_http,
    /// HTTP/2 connections opened before capture began (HPACK state unknown).
    ignored_http2_joined,
    ignored_server_side,
    /// Connections whose capture began mid-exchange (that exchange skipped).
    joined_mid_stream,
    /// HTTP/1.1 connections that lost bytes (full ring buffer, unreadable
    /// memory) and resumed at their next request; the calls in flight count in
    /// `dropped_unanswered`.
    resynced_after_gap,
    ignored_desync,
    ignored_upgraded,
    /// Connections evicted because the table was full.
    connections_evicted,
    /// Connections expired after the idle timeout.
    connections_expired,
    /// Connections dropped for holding too much memory (per-connection or
    /// `max_buffered_bytes` limit); their pending calls count as unanswered.
    connections_shed,
    /// LLM records written.
    records,
    /// Spend of those records, in millionths of a USD.
    cost_micro_usd,
    /// LLM calls dropped: no complete response (client died, connection reset, bytes lost).
    dropped_unanswered,
    /// LLM calls dropped: response body larger than the cap.
    dropped_truncated_body,
    /// LLM calls dropped: response body could not be decoded (bad gzip, bomb, ...).
    dropped_body_decode,
    /// LLM calls dropped: response was not the provider's format.
    dropped_parse_error,
    /// Records a sink failed to write.
    sink_errors,
    /// `--output collector:`: batches and records the collector acknowledged.
    collector_batches_sent,
    collector_records_sent,
    /// Send attempts that failed (retried; the batch stays in the spool).
    collector_send_errors,
    /// Batches the collector refused as malformed (kept in the spool's rejected/).
    collector_batches_rejected,
    /// Records the collector refused for good: rows it could not store (422),
    /// and the records of rejected batches.
    collector_records_rejected,
    /// Records not sent because they fail the wire format's checks (logged).
    collector_records_invalid,
    /// Records dropped because the spool reached `--spool-max-bytes`.
    collector_spool_dropped_records,
    /// Bytes and batches in the spool (waiting or being sent).
    collector_spool_bytes,
    collector_spool_batches,
    /// Requests to the collector in flight.
    collector_in_flight,
    /// TLS library files (by device and inode) with probes attached.
    targets_attached,
    /// Attach attempts that failed.
    attach_failures,
    /// Process scans skipped for `--exclude-process`.
    processes_excluded,
    /// Kernel-side losses (from the LOSS map).
    kernel_ring_full,
    kernel_truncated_calls,
    kernel_read_failed,
    kernel_control_ring_full,
    kernel_args_map_full,
    kernel_scratch_busy,
    /// Not a loss: TLS calls the kernel skipped on connections marked ignored.
    kernel_filtered_calls,
    /// Plaintext socket connections given up: a vector call had more buffers than copied.
    kernel_iov_overflow,
    /// Not a loss: plaintext socket connections whose first bytes were not HTTP
    /// (TLS, databases, DNS…), skipped in the kernel.
    kernel_sockets_not_http,
    /// Most bytes waiting in the kernel ring buffer during the last second, and
    /// its size (`--ring-buffer-bytes`): when the first nears the second,
    /// records are about to be lost (`kernel_ring_full`).
    ring_buffer_fill_bytes,
    ring_buffer_size_bytes,
}

impl Stats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set(c: &AtomicU64, n: u64) {
        c.store(n, Ordering::Relaxed);
    }
}

impl Snapshot {
    /// Calls that were seen but produced no record.
    pub fn dropped_calls(&self) -> u64 {
        self.dropped_unanswered + self.dropped_truncated_body + self.dropped_body_decode + self.dropped_parse_error
    }

    pub fn kernel_losses(&self) -> u64 {
        self.kernel_ring_full
            + self.kernel_truncated_calls
            + self.kernel_read_failed
            + self.kernel_control_ring_full
            + self.kernel_args_map_full
            + self.kernel_scratch_busy
            + self.kernel_iov_overflow
    }

    /// Write as JSON, atomically (write then rename).
    pub fn write_to(&self, path: &std::path::Path) -> std::io::Result<()> {
        StatsFile { counters: self.clone(), coverage: Vec::new() }.write_to(path)
    }
}

/// What `--stats-file` holds: the counters, plus per-process coverage.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatsFile {
    #[serde(flatten)]
    pub counters: Snapshot,
    #[serde(default)]
    pub coverage: Vec<crate::coverage::ProcessCoverage>,
}

impl StatsFile {
    pub fn write_to(&self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_file() {
        let s = Stats::default();
        Stats::inc(&s.records);
        Stats::add(&s.dropped_unanswered, 2);
        Stats::add(&s.dropped_parse_error, 1);
        let snap = s.snapshot();
        assert_eq!(snap.records, 1);
        assert_eq!(snap.dropped_calls(), 3);
        let p = std::env::temp_dir().join(format!("tt-stats-{}.json", std::process::id()));
        snap.write_to(&p).unwrap();
        let back: Snapshot = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, snap);
    }
}
