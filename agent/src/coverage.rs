//! Coverage: per process, which capture method saw its connections, how many
//! calls became records, and which connections could not be decoded and why. So
//! a user sees the blind spots (an HTTP/2 connection joined mid-way, a
//! desynchronised stream) instead of guessing. Logged once per process and
//! reason, and written with the counters to `--stats-file`.
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tokentap_agent_common::Source;
use tokentap_event::traffic::Unread;

use crate::http::exchange::Ignored;

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
    /// Connections whose end a probe saw (`SSL_free`, BoringSSL's
    /// `SSL_shutdown`, Go's `Close`, `close(2)`), by capture method; the others
    /// end with their process, are restarted on a reused address or go idle.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub closed: BTreeMap<String, u64>,
    /// Connections not decoded, by reason (`not_http`, `http2_joined`, `desync`, …).
    pub not_decoded: BTreeMap<String, u64>,
    /// TLS libraries this process maps that are not probed (`library: file`),
    /// with the reason: its calls through them cannot be recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub not_probed: BTreeMap<String, String>,
    /// The agent has handled the process's exit: its connections are closed and
    /// every record it will ever produce has been written.
    #[serde(default)]
    pub exited: bool,
    #[serde(skip)]
    last_seen: u64,
}

#[derive(Default)]
pub struct Coverage {
    procs: HashMap<u32, ProcessCoverage>,
    tick: u64,
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

    pub fn connection(&mut self, pid: u32, comm: &str, source: Source) {
        let m = source.as_str();
        let p = self.entry(pid, comm);
        // A new connection: the process is alive (a reused pid after an exit).
        p.exited = false;
        let n = p.connections.entry(m.to_owned()).or_default();
        *n += 1;
        if *n == 1 {
            tracing::info!(pid, comm, method = m, "capturing process");
        }
    }

    pub fn closed(&mut self, pid: u32, comm: &str, source: Source) {
        *self.entry(pid, comm).closed.entry(source.as_str().to_owned()).or_default() += 1;
    }

    pub fn record(&mut self, pid: u32, comm: &str, source: Source) {
        *self.entry(pid, comm).records.entry(source.as_str().to_owned()).or_default() += 1;
    }

    /// A connection that will not be decoded. Normal ones (a database, a
    /// server end) are logged at debug; blind spots at info.
    pub fn not_decoded(&mut self, pid: u32, comm: &str, source: Source, why: Ignored) {
        let p = self.entry(pid, comm);
        let n = p.not_decoded.entry(why.as_str().to_owned()).or_default();
        *n += 1;
        if *n == 1 {
            let (method, reason) = (source.as_str(), why.as_str());
            if why.is_blind_spot() {
                tracing::info!(pid, comm, method, reason, "connection not decoded (blind spot)");
            } else {
                tracing::debug!(pid, comm, method, reason, "connection not decoded");
            }
        }
    }

    /// The process maps a TLS library that is not probed (`what`: library and
    /// file), and why. Logged by discovery, once per file.
    pub fn not_probed(&mut self, pid: u32, comm: &str, what: &str, reason: &str) {
        let p = self.entry(pid, comm);
        if p.not_probed.len() < 16 {
            p.not_probed.insert(what.to_owned(), reason.to_owned());
        }
    }

    /// The process exited (after its connections were closed). Processes never
    /// seen are not added.
    pub fn exited(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.exited = true;
        }
    }

    /// Why a connection of `pid` that no capture method read was not read,
    /// from what is known of the process: a TLS library it maps is not probed
    /// (the detail names them), or other connections of it were read, or none
    /// of its plaintext was ever seen.
    pub fn unread(&self, pid: u32) -> (Unread, Option<String>) {
        match self.procs.get(&pid) {
            Some(p) if !p.not_probed.is_empty() => {
                let detail: Vec<String> = p.not_probed.iter().map(|(what, why)| format!("{what} ({why})")).collect();
                (Unread::TlsLibraryNotProbed, Some(detail.join("; ")))
            }
            Some(p) if p.connections.keys().any(|m| m != Source::Socket.as_str()) => (Unread::PlaintextNotSeen, None),
            _ => (Unread::NoPlaintextSeen, None),
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
        c.connection(7, "python3", Source::GoTls);
        c.connection(7, "python3", Source::Socket);
        c.record(7, "python3", Source::Socket);
        c.not_decoded(7, "python3", Source::OpenSsl, Ignored::Http2Joined);
        c.not_probed(7, "python3", "boringssl: /opt/bun", "SSL_read not found");
        c.closed(7, "python3", Source::BoringSsl);
        let r = c.report();
        assert_eq!(r[0].closed.get("boringssl"), Some(&1));
        assert_eq!(r[0].not_probed.get("boringssl: /opt/bun").map(String::as_str), Some("SSL_read not found"));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].connections.get("go_tls"), Some(&1));
        assert_eq!(r[0].records.get("socket"), Some(&1));
        assert_eq!(r[0].not_decoded.get("http2_joined"), Some(&1));
        assert!(!r[0].exited);
        c.exited(7);
        c.exited(8);
        let r = c.report();
        assert_eq!((r.len(), r[0].exited), (1, true), "exited marks known processes only");
        c.connection(7, "python3", Source::Socket);
        assert!(!c.report()[0].exited, "a new connection: the pid is alive again");
        assert_eq!(c.unread(7).0, Unread::TlsLibraryNotProbed, "a library not probed says most");
        assert!(c.unread(7).1.is_some_and(|d| d.contains("boringssl: /opt/bun (SSL_read not found)")));
        c.connection(8, "node", Source::OpenSsl);
        assert_eq!(c.unread(8), (Unread::PlaintextNotSeen, None));
        c.connection(9, "curl", Source::Socket);
        assert_eq!(c.unread(9), (Unread::NoPlaintextSeen, None), "plaintext sockets say nothing about TLS");
        assert_eq!(c.unread(10), (Unread::NoPlaintextSeen, None));
        for pid in 0..(MAX_PROCESSES as u32 + 10) {
            c.connection(1000 + pid, "x", Source::OpenSsl);
        }
        assert_eq!(c.report().len(), MAX_PROCESSES);
    }
}
