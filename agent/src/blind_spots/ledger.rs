//! What became of the connections to LLM API hosts, added up per process,
//! provider host and verdict (decoded by a capture method, or not read and
//! why). Three views of the same counts: the `blind_spots` list of the stats
//! file (totals of what was not read), the labelled `/metrics` series
//! ([`Series`]) and the rows sent to the collector (the deltas since the last
//! flush, [`LlmTraffic`]). Bounded: at most [`MAX_ENTRIES`] entries (the
//! least recently active goes first, its unsent delta kept for the next
//! flush) and [`MAX_SERIES`] metric series (the rest add up under `_other`).
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use tokentap_event::traffic::{BlindSpot, LlmTraffic, Unread};
use tokentap_event::LlmCall;

/// Entries kept (processes x hosts x verdicts).
pub const MAX_ENTRIES: usize = 1024;
/// Labelled metric series kept.
pub const MAX_SERIES: usize = 256;
/// Rows of evicted entries kept for the next flush, at most.
const MAX_OVERFLOW_ROWS: usize = 4096;

/// Who a process is, as its call records would say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Who {
    pub comm: String,
    pub exe: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub service: Option<String>,
}

/// What the agent made of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Read and decoded by this capture method (`Source::as_str`).
    Decoded(&'static str),
    Unread(Unread),
}

/// Connections and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: u64,
    pub sent: u64,
    pub received: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.connections = self.connections.saturating_add(o.connections);
        self.sent = self.sent.saturating_add(o.sent);
        self.received = self.received.saturating_add(o.received);
    }

    fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// One addition: `counts` more of a process's traffic to `host`, seen at
/// `wall_ns` (nanoseconds since the epoch).
#[derive(Clone, Debug)]
pub struct Add<'a> {
    pub pid: u32,
    pub who: &'a Who,
    pub host: &'a str,
    pub provider: &'a str,
    pub verdict: Verdict,
    pub detail: Option<&'a str>,
    pub counts: Counts,
    pub wall_ns: i128,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    pid: u32,
    host: String,
    verdict: Verdict,
}

struct Entry {
    who: Who,
    provider: String,
    detail: Option<String>,
    total: Counts,
    first_ns: i128,
    last_ns: i128,
    /// Not yet sent as a row, and when it began and last grew.
    pending: Counts,
    pending_first_ns: i128,
    pending_last_ns: i128,
    touched: u64,
    exited: bool,
}

#[derive(Default)]
pub struct Ledger {
    entries: HashMap<Key, Entry>,
    tick: u64,
    /// Rows of entries evicted before they were flushed.
    overflow: Vec<LlmTraffic>,
    /// Entries evicted to stay within bounds, and rows dropped when even the
    /// overflow was full.
    pub evicted: u64,
    pub rows_dropped: u64,
}

impl Ledger {
    /// Returns whether this started a new entry (a process's first such
    /// connection to the host, as far as the ledger remembers).
    pub fn add(&mut self, a: Add<'_>) -> bool {
        if a.counts.is_zero() {
            return false;
        }
        self.tick += 1;
        let key = Key { pid: a.pid, host: a.host.to_owned(), verdict: a.verdict };
        let new = !self.entries.contains_key(&key);
        if new && self.entries.len() >= MAX_ENTRIES {
            self.evict_one();
        }
        let e = self.entries.entry(key).or_insert_with(|| Entry {
            who: a.who.clone(),
            provider: a.provider.to_owned(),
            detail: None,
            total: Counts::default(),
            first_ns: a.wall_ns,
            last_ns: a.wall_ns,
            pending: Counts::default(),
            pending_first_ns: a.wall_ns,
            pending_last_ns: a.wall_ns,
            touched: 0,
            exited: false,
        });
        if e.pending.is_zero() {
            e.pending_first_ns = a.wall_ns;
        }
        e.total.add(a.counts);
        e.pending.add(a.counts);
        e.last_ns = e.last_ns.max(a.wall_ns);
        e.first_ns = e.first_ns.min(a.wall_ns);
        e.pending_last_ns = e.pending_last_ns.max(a.wall_ns);
        e.touched = self.tick;
        e.exited = false;
        if let Some(d) = a.detail {
            e.detail = Some(d.chars().take(1024).collect());
        }
        new
    }

    /// The least recently active entry goes, decoded traffic before blind
    /// spots (what users read the list for); what it had not sent is kept.
    fn evict_one(&mut self) {
        let order = |(k, e): &(&Key, &Entry)| (matches!(k.verdict, Verdict::Unread(_)), e.touched);
        let Some(key) = self.entries.iter().min_by_key(order).map(|(k, _)| k.clone()) else {
            return;
        };
        if let Some(mut e) = self.entries.remove(&key) {
            self.evicted += 1;
            if let Some(row) = row(&key, &mut e) {
                if self.overflow.len() < MAX_OVERFLOW_ROWS {
                    self.overflow.push(row);
                } else {
                    self.rows_dropped += 1;
                }
            }
        }
    }

    /// The process exited: its entries are final (kept for the report).
    pub fn exited(&mut self, pid: u32) {
        for (k, e) in self.entries.iter_mut() {
            if k.pid == pid {
                e.exited = true;
            }
        }
    }

    /// Rows for what was added since the last flush: of `pid` only, or of all.
    pub fn flush(&mut self, pid: Option<u32>) -> Vec<LlmTraffic> {
        let mut rows = if pid.is_none() { std::mem::take(&mut self.overflow) } else { Vec::new() };
        for (k, e) in self.entries.iter_mut() {
            if pid.is_none_or(|p| p == k.pid) {
                rows.extend(row(k, e));
            }
        }
        rows
    }

    /// What was not read, by process, host and reason (largest first).
    pub fn blind_spots(&self) -> Vec<BlindSpot> {
        let mut v: Vec<BlindSpot> = self
            .entries
            .iter()
            .filter_map(|(k, e)| {
                let Verdict::Unread(why) = k.verdict else { return None };
                let reason_text = match &e.detail {
                    Some(d) => format!("{}: {d}", why.describe()),
                    None => why.describe(),
                };
                Some(BlindSpot {
                    provider_host: k.host.clone(),
                    provider: e.provider.clone(),
                    reason: why.code().to_owned(),
                    reason_text,
                    connections: e.total.connections,
                    bytes_sent: e.total.sent,
                    bytes_received: e.total.received,
                    first_seen: LlmCall::format_ts(e.first_ns),
                    last_seen: LlmCall::format_ts(e.last_ns),
                    pid: k.pid,
                    comm: e.who.comm.clone(),
                    exe: e.who.exe.clone(),
                    container_id: e.who.container_id.clone(),
                    pod: e.who.pod.clone(),
                    namespace: e.who.namespace.clone(),
                    workload: e.who.workload.clone(),
                    service: e.who.service.clone(),
                    exited: e.exited,
                })
            })
            .collect();
        v.sort_by(|a, b| {
            (b.bytes_sent + b.bytes_received).cmp(&(a.bytes_sent + a.bytes_received)).then(a.pid.cmp(&b.pid))
        });
        v
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The entry's unsent delta as a row (and now sent).
fn row(k: &Key, e: &mut Entry) -> Option<LlmTraffic> {
    if e.pending.is_zero() {
        return None;
    }
    let p = std::mem::take(&mut e.pending);
    let (decoded, capture, reason) = match k.verdict {
        Verdict::Decoded(m) => (true, Some(m.to_owned()), None),
        Verdict::Unread(why) => (false, None, Some(why.code().to_owned())),
    };
    Some(LlmTraffic {
        row_id: LlmCall::new_event_id(),
        ts: LlmCall::format_ts(e.pending_last_ns),
        first_seen: LlmCall::format_ts(e.pending_first_ns),
        last_seen: LlmCall::format_ts(e.pending_last_ns),
        provider_host: k.host.clone(),
        provider: e.provider.clone(),
        decoded,
        capture,
        reason,
        reason_detail: if decoded { None } else { e.detail.clone() },
        connections: p.connections,
        bytes_sent: p.sent,
        bytes_received: p.received,
        pid: Some(k.pid),
        comm: Some(e.who.comm.clone()),
        exe: e.who.exe.clone(),
        container_id: e.who.container_id.clone(),
        pod: e.who.pod.clone(),
        namespace: e.who.namespace.clone(),
        workload: e.who.workload.clone(),
        service: e.who.service.clone(),
    })
}

/// Labels of one `/metrics` series: host and command name (a pid would make
/// one series per process), and the reason for what was not read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub host: String,
    pub comm: String,
    /// None: decoded.
    pub reason: Option<&'static str>,
}

/// The labelled LLM traffic counters `/metrics` shows, shared with the
/// metrics thread. Bounded: past [`MAX_SERIES`] new label sets add up under
/// host and comm `_other`.
#[derive(Default)]
pub struct Series(Mutex<BTreeMap<SeriesKey, Counts>>);

impl Series {
    pub fn add(&self, host: &str, comm: &str, verdict: Verdict, counts: Counts) {
        let reason = match verdict {
            Verdict::Decoded(_) => None,
            Verdict::Unread(why) => Some(why.code()),
        };
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = SeriesKey { host: host.to_owned(), comm: comm.to_owned(), reason };
        if !m.contains_key(&key) && m.len() >= MAX_SERIES {
            key = SeriesKey { host: "_other".into(), comm: "_other".into(), reason };
        }
        m.entry(key).or_default().add(counts);
    }

    pub fn snapshot(&self) -> Vec<(SeriesKey, Counts)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}
