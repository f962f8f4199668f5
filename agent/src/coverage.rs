//! Coverage: per process, which capture method saw its connections, how many
//! calls became records, and which connections could not be decoded and why. So
//! a user sees the blind spots (an HTTP/2 connection joined mid-way, a
//! desynchronised stream) instead of guessing. Logged once per process and
//! reason, and written with the counters to `--stats-file`.
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tokentap_agent_common::Source;

/// Processes remembered (exited ones included, so a short-lived client shows up).
const MAX_PROCESSES: usize = 1024;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessCoverage {
    pub pid: u32,
    pub comm: String,
    /// Connections seen, by capture method (`openssl`, `go_tls`, `socket`).
    pub connections: BTreeMap<String, u64>,
    /// Records written, by capture method.
    pub records: BTreeMap<String, u64>,
    /// Connections not decoded, by reason (`not_http`, `http2_joined`, `desync`, …).
    pub not_decoded: BTreeMap<String, u64>,
    #[serde(skip)]
    last_seen: u64,
}

#[derive(Default)]
pub struct Coverage {
    procs: HashMap<u32, ProcessCoverage>,
    tick: u64,
}

fn method(source: u32) -> &'static str {
    Source::from_u32(source).map_or("unknown", Source::as_str)
}

impl Coverage {
    fn entry(&mut self, pid: u32, comm: &str) -> &mut ProcessCoverage {
        self.tick += 1;
        if !self.procs.contains_key(&pid) && self.procs.len() >= MAX_PROCESSES {
            if let Some(old) = self.procs.values().min_by_key(|p| p.last_seen).map(|p| p.pid) {
                self.procs.remove(&old);
            }
        }
        let tick = self.tick;
        let p = self.procs.entry(pid).or_insert_with(|| ProcessCoverage {
            pid,
            comm: comm.to_owned(),
            ..Default::default()
        });
        p.last_seen = tick;
        p
    }

    pub fn connection(&mut self, pid: u32, comm: &str, source: u32) {
        let m = method(source);
        let p = self.entry(pid, comm);
        let n = p.connections.entry(m.to_owned()).or_default();
        *n += 1;
        if *n == 1 {
            tracing::info!(pid, comm, method = m, "capturing process");
        }
    }

    pub fn record(&mut self, pid: u32, comm: &str, source: u32) {
        *self.entry(pid, comm).records.entry(method(source).to_owned()).or_default() += 1;
    }

    /// A connection that will not be decoded. `not_http` (a database, a
    /// download) is normal and logged at debug; the rest are blind spots.
    pub fn not_decoded(&mut self, pid: u32, comm: &str, source: u32, reason: &str) {
        let p = self.entry(pid, comm);
        let n = p.not_decoded.entry(reason.to_owned()).or_default();
        *n += 1;
        if *n == 1 {
            if matches!(reason, "not_http" | "server_side") {
                tracing::debug!(pid, comm, method = method(source), reason, "connection not decoded");
            } else {
                tracing::info!(pid, comm, method = method(source), reason, "connection not decoded (blind spot)");
            }
        }
    }

    /// Processes by pid.
    pub fn report(&self) -> Vec<ProcessCoverage> {
        let mut v: Vec<ProcessCoverage> = self.procs.values().cloned().collect();
        v.sort_by_key(|p| p.pid);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method_and_reason_and_stays_bounded() {
        let mut c = Coverage::default();
        c.connection(7, "python3", Source::GoTls as u32);
        c.connection(7, "python3", Source::Socket as u32);
        c.record(7, "python3", Source::Socket as u32);
        c.not_decoded(7, "python3", Source::OpenSsl as u32, "http2_joined");
        let r = c.report();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].connections.get("go_tls"), Some(&1));
        assert_eq!(r[0].records.get("socket"), Some(&1));
        assert_eq!(r[0].not_decoded.get("http2_joined"), Some(&1));
        for pid in 0..(MAX_PROCESSES as u32 + 10) {
            c.connection(1000 + pid, "x", 1);
        }
        assert_eq!(c.report().len(), MAX_PROCESSES);
    }
}
