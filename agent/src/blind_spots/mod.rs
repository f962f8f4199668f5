//! Every connection to an LLM API host accounted for: read by a capture
//! method, or listed as a blind spot with the reason.
//!
//! The kernel names every TLS client socket by its ClientHello (the server
//! name, SNI) and counts the bytes it moves (`agent-ebpf` `sockets.rs`);
//! plaintext HTTP sockets are named by their request's `Host`. Sockets whose
//! host the provider rules name are tracked here, from their hello (or first
//! request) to their close or their process's exit, and judged:
//!
//! - **Decoded**: a TLS-library capture of the same process (OpenSSL,
//!   BoringSSL, Go, rustls) produced plaintext for it and its HTTP was not
//!   given up. Which plaintext connection belongs to which socket:
//!   - by fd, where the capture knows it (OpenSSL after `SSL_set_fd`, Go): the
//!     open socket of that process and fd;
//!   - otherwise (rustls, a stripped BoringSSL, OpenSSL over a memory BIO such
//!     as node's or Python's asyncio) by time: the socket of that process
//!     whose hello came last before the connection's first plaintext and that
//!     no other connection claimed; once the connection's first request names
//!     its `Host`, a claim whose host differs moves to an unclaimed socket
//!     with that host, or is dropped. One plaintext connection claims one
//!     socket, so N decoded connections can never hide an (N+1)th that was
//!     not read, and a process's connection to another host can't cover an
//!     LLM one.
//! - **Not read**, with the reason: its plaintext was read but its HTTP given
//!   up (the `ignored_*` reason: `http2_joined`, `desync`, ...); or no
//!   plaintext connection claimed it: the process maps a TLS library tokentap
//!   does not probe (coverage's `not_probed`, with the detail), or other
//!   connections of the process were read but not this one, or none of its
//!   plaintext was ever seen (a JVM, a pure-Python TLS, ...).
//!
//! A socket is judged when it closes, when its process exits, or once it has
//! been open for [`JUDGE_AFTER_NS`] (long-lived connections: its bytes are
//! then read from the kernel every [`REFRESH_NS`] and added as they grow). A
//! connection whose verdict changes after that (decoded, then given up)
//! counts once under each. The counts go to the [`Ledger`]; nothing here
//! reads plaintext, and no token count is derived from bytes.
//!
//! Bounded: at most [`MAX_SOCKETS`] sockets are tracked (past it a new LLM
//! socket is only counted, `llm_sockets_untracked`), and the ledger keeps
//! [`ledger::MAX_ENTRIES`] entries.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokentap_event::traffic::{LlmTraffic, Unread};

use crate::capture::clock::Clock;
use crate::capture::event::{ConnKey, Hello, SockId, Totals};
use crate::capture::tls_hello;
use crate::providers::Rules;
use crate::stats::Stats;

pub mod ledger;
#[cfg(test)]
pub(crate) mod tests;

pub use ledger::{Add, Counts, Ledger, Series, SeriesKey, Verdict, Who};

/// Open LLM sockets tracked at once.
pub const MAX_SOCKETS: usize = 8192;
/// An open socket is judged after this long: a capture method that reads it
/// has long seen its first plaintext (a TLS handshake takes milliseconds).
pub const JUDGE_AFTER_NS: u64 = 5_000_000_000;
/// How often an open socket's bytes are read from the kernel.
pub const REFRESH_NS: u64 = 5_000_000_000;
/// How often the ledger's new counts become rows for the sinks.
pub const FLUSH_NS: u64 = 10_000_000_000;

/// The kernel's socket table, as the tracker uses it.
pub trait SocketTable: Send {
    /// Keep counting this TLS socket (an LLM API host) or stop (any other).
    fn verdict(&mut self, sock: SockId, count: bool);
    /// The socket on (`tgid`, `fd`) now: its id and the bytes it moved so
    /// far; `remove`: and forget it (its process exited).
    fn totals(&mut self, tgid: u32, fd: i32, remove: bool) -> Option<(u64, Totals)>;
}

/// Why a process's socket that no plaintext connection claimed was not read,
/// and the detail: what the agent knows about the process (from coverage).
pub type Facts<'a> = &'a dyn Fn(u32) -> (Unread, Option<String>);

/// A plaintext connection reading a socket.
#[derive(Clone, Debug)]
struct Claim {
    conn: ConnKey,
    method: &'static str,
    /// Claimed by time (the capture does not know its fd): may move once the
    /// connection's `Host` is known.
    by_time: bool,
    /// Its HTTP was given up, and why.
    ignored: Option<&'static str>,
}

struct Socket {
    /// `id` 0 for plaintext sockets (their data records do not carry it).
    sock: SockId,
    host: String,
    provider: String,
    who: Who,
    opened_ns: u64,
    refreshed_ns: u64,
    totals: Totals,
    /// What the ledger has of it already.
    counted: Totals,
    judged: Option<Verdict>,
    claim: Option<Claim>,
    /// Plaintext HTTP, read by the socket capture itself.
    plaintext: bool,
    /// Not in the kernel's table at the last refresh.
    missed: bool,
}

pub struct Tracker {
    sockets: HashMap<(u32, i32), Socket>,
    claims: HashMap<ConnKey, (u32, i32)>,
    /// Connections whose claimed socket is gone (see [`Tracker::released`]).
    released: HashSet<ConnKey>,
    ledger: Ledger,
    kernel: Option<Box<dyn SocketTable>>,
    stats: Arc<Stats>,
    clock: Clock,
    last_flush_ns: u64,
    rows: Vec<LlmTraffic>,
}

impl Tracker {
    pub fn new(stats: Arc<Stats>, clock: Clock) -> Self {
        Self {
            sockets: HashMap::new(),
            claims: HashMap::new(),
            released: HashSet::new(),
            ledger: Ledger::default(),
            kernel: None,
            stats,
            clock,
            last_flush_ns: 0,
            rows: Vec::new(),
        }
    }

    pub fn with_kernel(mut self, kernel: Box<dyn SocketTable>) -> Self {
        self.kernel = Some(kernel);
        self
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Sockets tracked now.
    pub fn open(&self) -> usize {
        self.sockets.len()
    }

    fn verdict(&mut self, sock: SockId, count: bool) {
        if let Some(k) = self.kernel.as_mut() {
            k.verdict(sock, count);
        }
    }

    /// A TLS client socket's first write: the LLM API host (and provider) it
    /// names, if any; the caller then [`open_tls`](Self::open_tls)s it. The
    /// kernel stops counting every other socket.
    pub fn name(&mut self, h: &Hello<'_>, rules: &Rules) -> Option<(String, String)> {
        let named = match tls_hello::parse(h.data) {
            tls_hello::Hello::Client { server_name: Some(name), .. } => Some(name),
            _ => None,
        };
        let Some(host) = named else {
            Stats::inc(&self.stats.tls_connections_unnamed);
            self.verdict(h.sock, false);
            return None;
        };
        Stats::inc(&self.stats.tls_connections_named);
        match rules.llm_host(&host) {
            Some(provider) => Some((host, provider.to_owned())),
            None => {
                self.verdict(h.sock, false);
                None
            }
        }
    }

    /// Track a TLS socket to an LLM API host.
    pub fn open_tls(&mut self, sock: SockId, host: String, provider: String, who: Who, ts_ns: u64, facts: Facts<'_>) {
        let slot = (sock.tgid, sock.fd);
        if let Some(old) = self.sockets.remove(&slot) {
            // Its close was lost: what the kernel had of it is gone too.
            self.finish(old, ts_ns, facts);
        }
        if self.sockets.len() >= MAX_SOCKETS {
            Stats::inc(&self.stats.llm_sockets_untracked);
            self.verdict(sock, false);
            return;
        }
        self.verdict(sock, true);
        self.sockets.insert(slot, Socket::new(sock, host, provider, who, ts_ns, None));
    }

    /// A plaintext HTTP connection (socket capture) whose request named an
    /// LLM API host: tracked as read by the socket capture.
    pub fn open_plaintext(&mut self, conn: ConnKey, fd: i32, host: String, provider: String, who: Who, ts_ns: u64) {
        let slot = (conn.tgid, fd);
        if self.sockets.contains_key(&slot) {
            return;
        }
        if self.sockets.len() >= MAX_SOCKETS {
            Stats::inc(&self.stats.llm_sockets_untracked);
            return;
        }
        let claim = Claim { conn, method: "socket", by_time: false, ignored: None };
        let sock = SockId { tgid: conn.tgid, fd, id: 0 };
        self.sockets.insert(slot, Socket::new(sock, host, provider, who, ts_ns, Some(claim)));
        self.claims.insert(conn, slot);
    }

    /// A TLS capture's new plaintext connection: the socket it reads (see the
    /// module's rule). `fd` < 0: not known.
    pub fn plaintext_started(&mut self, conn: ConnKey, fd: i32, method: &'static str, ts_ns: u64) {
        if self.claims.contains_key(&conn) {
            return;
        }
        if fd >= 0 {
            let slot = (conn.tgid, fd);
            if let Some(s) = self.sockets.get_mut(&slot).filter(|s| !s.plaintext && s.claim.is_none()) {
                s.claim = Some(Claim { conn, method, by_time: false, ignored: None });
                self.claims.insert(conn, slot);
                self.released.remove(&conn);
            }
            return;
        }
        self.claim_by_time(conn, method, ts_ns, None);
    }

    /// The latest-opened unclaimed TLS socket of the process opened by `ts_ns`
    /// (with that host, if given) is claimed by `conn`.
    fn claim_by_time(&mut self, conn: ConnKey, method: &'static str, ts_ns: u64, host: Option<&str>) {
        let best = self
            .sockets
            .iter()
            .filter(|(_, s)| s.sock.tgid == conn.tgid && !s.plaintext && s.claim.is_none() && s.opened_ns <= ts_ns)
            .filter(|(_, s)| host.is_none_or(|h| h == s.host))
            .max_by_key(|(_, s)| s.opened_ns)
            .map(|(k, _)| *k);
        if let Some(slot) = best {
            if let Some(s) = self.sockets.get_mut(&slot) {
                s.claim = Some(Claim { conn, method, by_time: true, ignored: None });
                self.claims.insert(conn, slot);
                self.released.remove(&conn);
            }
        }
    }

    /// A TLS capture's connection sent its first request, for `host`: a claim
    /// by time must agree (one by fd is certain: `fd` >= 0 changes nothing).
    pub fn plaintext_host(&mut self, conn: ConnKey, fd: i32, method: &'static str, host: &str, ts_ns: u64) {
        if fd >= 0 {
            return;
        }
        let host = host_of(host);
        match self.claims.get(&conn).copied() {
            Some(slot) => {
                let Some(s) = self.sockets.get_mut(&slot) else { return };
                let moves = s.claim.as_ref().is_some_and(|c| c.by_time && c.conn == conn) && s.host != host;
                if !moves {
                    return;
                }
                s.claim = None;
                self.claims.remove(&conn);
                self.claim_by_time(conn, method, ts_ns, Some(&host));
            }
            None => self.claim_by_time(conn, method, ts_ns, Some(&host)),
        }
    }

    /// A connection's HTTP was given up (`why`: the `ignored_*` reason).
    pub fn ignored(&mut self, conn: ConnKey, why: &'static str) {
        if let Some(s) = self.claims.get(&conn).and_then(|slot| self.sockets.get_mut(slot)) {
            if let Some(c) = s.claim.as_mut().filter(|c| c.conn == conn) {
                c.ignored = Some(why);
            }
        }
    }

    /// Whether `conn` read a socket that is gone and reads none now: its
    /// next request is on a new socket (the TLS object was reused).
    pub fn released(&self, conn: ConnKey) -> bool {
        self.released.contains(&conn)
    }

    /// A TLS connection object is gone: its claim stays with its socket.
    pub fn conn_gone(&mut self, conn: ConnKey) {
        self.claims.remove(&conn);
        self.released.remove(&conn);
    }

    /// A watched socket closed (or reconnected): final totals.
    pub fn sock_closed(&mut self, sock: SockId, totals: Totals, ts_ns: u64, facts: Facts<'_>) {
        let slot = (sock.tgid, sock.fd);
        let ours = self.sockets.get(&slot).is_some_and(|s| s.sock.id == 0 || s.sock.id == sock.id);
        if !ours {
            return;
        }
        if let Some(mut s) = self.sockets.remove(&slot) {
            s.sock.id = sock.id;
            s.update(totals);
            self.finish(s, ts_ns, facts);
        }
    }

    /// The process exited (exit closes its files without `close(2)`): its
    /// sockets' totals are read from the kernel and final, and its rows sent.
    pub fn exited(&mut self, tgid: u32, ts_ns: u64, facts: Facts<'_>) {
        let slots: Vec<(u32, i32)> = self.sockets.keys().filter(|k| k.0 == tgid).copied().collect();
        for slot in slots {
            let Some(mut s) = self.sockets.remove(&slot) else { continue };
            if let Some((id, t)) = self.kernel.as_mut().and_then(|k| k.totals(slot.0, slot.1, true)) {
                if s.sock.id == 0 || s.sock.id == id {
                    s.update(t);
                }
            }
            self.finish(s, ts_ns, facts);
        }
        self.released.retain(|k| k.tgid != tgid);
        self.ledger.exited(tgid);
        let rows = self.ledger.flush(Some(tgid));
        self.rows.extend(rows);
    }

    /// Read open sockets' bytes, judge those open long enough, and turn the
    /// ledger's new counts into rows every [`FLUSH_NS`].
    pub fn tick(&mut self, now_ns: u64, facts: Facts<'_>) {
        let due: Vec<(u32, i32)> = self
            .sockets
            .iter()
            .filter(|(_, s)| now_ns.saturating_sub(s.refreshed_ns) >= REFRESH_NS)
            .map(|(k, _)| *k)
            .collect();
        for slot in due {
            let read = self.kernel.as_mut().and_then(|k| k.totals(slot.0, slot.1, false));
            let Some(s) = self.sockets.get_mut(&slot) else { continue };
            s.refreshed_ns = now_ns;
            match read {
                Some((id, t)) if s.sock.id == 0 || s.sock.id == id => {
                    s.sock.id = id;
                    s.missed = false;
                    s.update(t);
                }
                // Gone from the kernel's table: its close record may still be
                // on its way with the last bytes, so it gets one more period;
                // missing again, its close was lost (or the table evicted it).
                _ if self.kernel.is_some() => {
                    if !std::mem::replace(&mut s.missed, true) {
                        continue;
                    }
                    if let Some(s) = self.sockets.remove(&slot) {
                        self.finish(s, now_ns, facts);
                    }
                    continue;
                }
                _ => {}
            }
            let judge = s.judged.is_some() || now_ns.saturating_sub(s.opened_ns) >= JUDGE_AFTER_NS;
            if judge {
                let (verdict, detail) = s.verdict(facts);
                let wall = self.clock.wall_ns(now_ns);
                account(&mut self.ledger, &self.stats, s, verdict, detail.as_deref(), wall);
            }
        }
        if now_ns.saturating_sub(self.last_flush_ns) >= FLUSH_NS {
            self.last_flush_ns = now_ns;
            let rows = self.ledger.flush(None);
            self.rows.extend(rows);
        }
        Stats::set(&self.stats.blind_spot_entries_evicted, self.ledger.evicted);
        Stats::set(&self.stats.llm_traffic_rows_dropped, self.ledger.rows_dropped);
    }

    /// Everything left (the agent stops): open sockets judged as they are.
    pub fn finish_all(&mut self, now_ns: u64, facts: Facts<'_>) {
        let slots: Vec<(u32, i32)> = self.sockets.keys().copied().collect();
        for slot in slots {
            if let Some(s) = self.sockets.remove(&slot) {
                self.finish(s, now_ns, facts);
            }
        }
        let rows = self.ledger.flush(None);
        self.rows.extend(rows);
    }

    /// Rows ready for the sinks.
    pub fn take_rows(&mut self) -> Vec<LlmTraffic> {
        std::mem::take(&mut self.rows)
    }

    fn finish(&mut self, s: Socket, ts_ns: u64, facts: Facts<'_>) {
        let mut s = s;
        if let Some(c) = &s.claim {
            if self.claims.remove(&c.conn).is_some() && !s.plaintext {
                if self.released.len() >= MAX_SOCKETS {
                    // Bounded; forgetting only risks a reused object's socket
                    // being listed as not read.
                    self.released.clear();
                }
                self.released.insert(c.conn);
            }
        }
        let (verdict, detail) = s.verdict(facts);
        let wall = self.clock.wall_ns(ts_ns);
        account(&mut self.ledger, &self.stats, &mut s, verdict, detail.as_deref(), wall);
    }
}

impl Socket {
    fn new(sock: SockId, host: String, provider: String, who: Who, ts_ns: u64, claim: Option<Claim>) -> Self {
        Self {
            plaintext: claim.is_some(),
            sock,
            host,
            provider,
            who,
            opened_ns: ts_ns,
            refreshed_ns: ts_ns,
            totals: Totals::default(),
            counted: Totals::default(),
            judged: None,
            claim,
            missed: false,
        }
    }

    /// Totals only grow: a late or reordered read never takes bytes back.
    fn update(&mut self, t: Totals) {
        self.totals.sent = self.totals.sent.max(t.sent);
        self.totals.received = self.totals.received.max(t.received);
    }

    fn verdict(&self, facts: Facts<'_>) -> (Verdict, Option<String>) {
        match &self.claim {
            Some(Claim { ignored: Some(why), .. }) => (Verdict::Unread(Unread::NotDecoded(why)), None),
            Some(c) => (Verdict::Decoded(c.method), None),
            None => {
                let (why, detail) = facts(self.sock.tgid);
                (Verdict::Unread(why), detail)
            }
        }
    }
}

/// Add what the ledger does not have of `s` yet under `verdict`; the
/// connection itself counts when first judged, and again if its verdict
/// changed.
fn account(ledger: &mut Ledger, stats: &Stats, s: &mut Socket, verdict: Verdict, detail: Option<&str>, wall_ns: i128) {
    let new = s.judged != Some(verdict);
    let counts = Counts {
        connections: u64::from(new),
        sent: s.totals.sent.saturating_sub(s.counted.sent),
        received: s.totals.received.saturating_sub(s.counted.received),
    };
    s.counted = s.totals;
    s.judged = Some(verdict);
    match verdict {
        Verdict::Decoded(_) => {
            Stats::add(&stats.llm_connections_decoded, counts.connections);
            Stats::add(&stats.llm_decoded_bytes, counts.sent + counts.received);
        }
        Verdict::Unread(_) => {
            Stats::add(&stats.llm_connections_unread, counts.connections);
            Stats::add(&stats.llm_unread_bytes_sent, counts.sent);
            Stats::add(&stats.llm_unread_bytes_received, counts.received);
        }
    }
    stats.traffic.add(&s.host, &s.who.comm, verdict, counts);
    let first = ledger.add(Add {
        pid: s.sock.tgid,
        who: &s.who,
        host: &s.host,
        provider: &s.provider,
        verdict,
        detail,
        counts,
        wall_ns,
    });
    if let (true, Verdict::Unread(why)) = (first, verdict) {
        // Once per process, host and reason (as long as the ledger remembers).
        tracing::info!(
            pid = s.sock.tgid,
            comm = %s.who.comm,
            host = %s.host,
            reason = why.code(),
            "LLM connection not read (blind spot)"
        );
    }
}

/// A `Host` header's host: no port, lower case.
fn host_of(host: &str) -> String {
    crate::providers::host_without_port(host.trim()).to_ascii_lowercase()
}
