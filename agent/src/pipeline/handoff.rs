//! Connections that change agents during an upgrade (`handover`), as the
//! pipeline sees them. The agent leaving hands on each HTTP/2 connection's
//! and WebSocket session's decoding state, and each ignored connection's
//! verdict ([`Pipeline::hand_off`]), once it has left and read what it copied
//! before: a few passes of its reader after leaving, not after its detach;
//! and at once for one that ends in between ([`Pipeline::hand_off_at_end`]).
//! The agent taking over holds the records of a connection it took from it
//! ([`Pipeline::park`]) until that state is there, then decodes them from where
//! the other stopped; or, when the agent before has exited without leaving one
//! (or the wait is too long), as a connection joined midway (counted). A
//! connection that ends while it waits still waits, its end with it (apart,
//! under a key of its own, when a new connection takes its key first). The
//! kernel leaves the state of a connection a running agent took over in the
//! map until that agent reads it, so one that ends after its state was
//! written, before this agent read it, keeps it too.
//!
//! States nobody takes are read back and dropped while the agent before
//! runs ([`Pipeline::sweep_late`]): those of connections decoded without
//! them, and of connections that ended without this agent holding any of
//! their bytes (the calls their end completes are recorded here, from the
//! owner the state carries; those it cuts are counted).
//!
//! Why wait rather than ask first: the agent before leaves first (from then
//! on the kernel gives every next call of its connections to the new one),
//! so its state is final only after the new agent may have its first bytes.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokentap_agent_common::{Source, HANDOFF_MAX_PARTS, HANDOFF_PART};

use super::{ConnFilter, Handed, Pipeline};
use crate::capture::decode::{decode, socket_conn};
use crate::capture::event::{Chunk, Comm, ConnKey, ConnMeta, Control, Direction, RawEvent, SockId};
use crate::http::exchange::HttpConnection;
use crate::http::sniff;
use crate::stats::Stats;

/// Longest wait for a state: the agent before hands on within a few passes
/// of its reader after leaving; this bounds the wait for one that stalls.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Record bytes held per connection, and for all, while waiting.
const MAX_CONN_BYTES: usize = 4 << 20;
const MAX_BYTES: usize = 32 << 20;
/// States that may come and that nobody will take: at most this many
/// connections remembered, looked for at most this often.
const MAX_LATE: usize = 16384;
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Records read from a killed agent's ring buffer (`orphan_rings`), by
/// connection: decoded under the connection's own key (true) or apart.
/// Apart: this agent already decoded newer bytes of the connection when
/// its first older record came (it moved here at a request boundary while
/// the other agent had stopped reading), so the older calls go under a
/// key of their own ([`ORPHANED`] set) instead of into the newer ones.
/// With them, the TLS sockets whose hello came from the killed agent's ring.
#[derive(Default)]
pub struct OrphanConns {
    conns: HashMap<ConnKey, bool>,
    hellos: HashSet<SockId>,
}

/// The connection id bit that sets an orphan's connection apart: not one
/// a TLS object's address, a socket's or a Java connection's id carries.
const ORPHANED: u64 = 1 << 61;
/// The bit that sets apart a connection that waited for its state past its
/// key's reuse ([`Pipeline::set_aside`]), as [`ORPHANED`] does an orphan's.
const SET_ASIDE: u64 = 1 << 60;

#[derive(Default)]
pub(super) struct Parked {
    conns: HashMap<ConnKey, Waiting>,
    bytes: usize,
    /// Connections whose state may still come and be taken by nobody: the
    /// time one ended without this agent holding its bytes (its end is
    /// decoded from the state when it comes), none for one decoded without
    /// it (counted as missing then).
    late: HashMap<ConnKey, Option<u64>>,
    /// Connections taken over at a request while the agent before ran: a
    /// state of theirs may come, whose calls are then counted cut.
    at_request: HashSet<ConnKey>,
    /// Connections that ended while they waited, whose key a new connection
    /// took before their state came (see [`Pipeline::set_aside`]), by that key.
    aside: HashMap<ConnKey, Waiting>,
    swept: Option<Instant>,
    /// This agent has left for a successor ([`Pipeline::leave`]), and has
    /// handed on every state ([`Pipeline::hand_off`]).
    leaving: bool,
    handed: bool,
}

struct Waiting {
    since: Instant,
    records: Vec<Vec<u8>>,
    bytes: usize,
    /// The connection ended (`ConnClosed` at this time) while it waited.
    ended: Option<u64>,
}

impl Waiting {
    fn new() -> Self {
        Self { since: Instant::now(), records: Vec::new(), bytes: 0, ended: None }
    }
}

impl Pipeline {
    /// Hold `raw` while its connection waits for the state the agent before
    /// hands on; true when held (false: decode it now).
    pub(super) fn park(&mut self, c: &Chunk<'_>, raw: &[u8]) -> bool {
        if self.parked.conns.get(&c.key).is_some_and(|w| w.ended.is_some()) {
            // A new connection under the key of one that ended while it
            // waited (an `SSL*` the allocator hands out again at once): that
            // one waits on apart, the new one is read.
            self.set_aside(c.key);
        }
        let waiting = self.parked.conns.get(&c.key).map(|w| w.bytes);
        if waiting.is_none() {
            if !c.flags.taken_over || self.conns.contains(&c.key) || self.filter.is_none() {
                return false;
            }
            // HTTP/1.1 at a request: the connection changed hands cleanly.
            // Unless the agent before hands on a call still in flight on it
            // (its drain ran out) whose answer this agent never copied: a
            // state that comes is then read back and its calls counted cut.
            if c.direction == Direction::Egress && sniff::looks_like_request(c.data) {
                self.remember_late(c.key);
                return false;
            }
        }
        let full = self.parked.bytes + raw.len() > MAX_BYTES || waiting.unwrap_or(0) + raw.len() > MAX_CONN_BYTES;
        if full {
            // Decoded now, from the state if it came (a request body of
            // megabytes written after the switch), else as joined midway:
            // what it held first, then this. One not held yet (all the
            // connections' cap reached) is held with this record and goes
            // on at once the same way: from its state, or counted missing.
            if waiting.is_none() {
                let w = Waiting { records: vec![raw.to_vec()], bytes: raw.len(), ..Waiting::new() };
                self.parked.bytes += raw.len();
                self.parked.conns.insert(c.key, w);
                self.release_now(c.key);
                return true;
            }
            self.release_now(c.key);
            return false;
        }
        let w = self.parked.conns.entry(c.key).or_insert_with(Waiting::new);
        w.records.push(raw.to_vec());
        w.bytes += raw.len();
        self.parked.bytes += raw.len();
        true
    }

    /// One record a killed agent copied and never read (`orphan_rings`),
    /// read before any later one of its connection: decoded as if this
    /// agent had copied it, apart when this agent has newer bytes of it.
    pub fn handle_orphan(&mut self, raw: &[u8], conns: &mut OrphanConns) {
        Stats::inc(&self.stats.handover_orphan_records);
        let apart = |key: ConnKey| ConnKey { conn: key.conn ^ ORPHANED, ..key };
        match decode(raw) {
            Ok(RawEvent::Data(mut c)) => {
                let known = self.conns.contains(&c.key) || self.parked.conns.contains_key(&c.key);
                if !*conns.conns.entry(c.key).or_insert(!known) {
                    Stats::inc(&self.stats.events);
                    c.key = apart(c.key);
                    self.on_data(&c);
                    return;
                }
            }
            Ok(RawEvent::Control(control)) => return self.orphan_control(control, conns),
            Ok(RawEvent::Hello(h)) => {
                conns.hellos.insert(h.sock);
            }
            Err(_) => {}
        }
        self.handle(raw);
    }

    /// A killed agent's control record ends only what was decoded from its
    /// records. This agent's probes copied their own of every other end and
    /// exit (the kernel runs each agent's programs), and the key may since
    /// name a live connection here: an `SSL*` or fd reused at once.
    fn orphan_control(&mut self, control: Control, conns: &mut OrphanConns) {
        let apart = |key: ConnKey| ConnKey { conn: key.conn ^ ORPHANED, ..key };
        match control {
            Control::ConnClosed { key, ts_ns } => match conns.conns.remove(&key) {
                Some(own) => self.on_control(Control::ConnClosed { key: if own { key } else { apart(key) }, ts_ns }),
                None => return,
            },
            Control::SockClosed { sock, ts_ns, tls: false, .. } => {
                let key = socket_conn(sock.tgid, sock.fd);
                match conns.conns.remove(&key) {
                    // With its blind-spot entry, which its records opened.
                    Some(true) => self.on_control(control),
                    Some(false) => self.on_control(Control::ConnClosed { key: apart(key), ts_ns }),
                    None => return,
                }
            }
            Control::SockClosed { sock, .. } => {
                if !conns.hellos.remove(&sock) {
                    return;
                }
                self.on_control(control);
            }
            Control::Exit { tgid, ts_ns } => {
                let keys: Vec<(ConnKey, bool)> =
                    conns.conns.iter().filter(|(k, _)| k.tgid == tgid).map(|(k, o)| (*k, *o)).collect();
                let hellos = conns.hellos.iter().any(|s| s.tgid == tgid);
                if keys.is_empty() && !hellos {
                    return;
                }
                conns.hellos.retain(|s| s.tgid != tgid);
                for (key, own) in keys {
                    conns.conns.remove(&key);
                    self.on_control(Control::ConnClosed { key: if own { key } else { apart(key) }, ts_ns });
                }
                // What its records opened of the process: attribution looked up
                // again, blind-spot entries (the pid is not reused this soon).
                self.attribution.forget(tgid);
                let cov = &self.coverage;
                self.blind.exited(tgid, ts_ns, &|pid| cov.unread(pid));
            }
            Control::Exec { .. } | Control::LibsChanged { .. } => return,
        }
        Stats::inc(&self.stats.events);
    }

    /// A connection taken over at a request, so never waiting for a state:
    /// one may still come, with calls this agent will not see answered. Apart
    /// from `late`: every keep-alive connection the agent before still held
    /// comes here, and most will never have a state.
    fn remember_late(&mut self, key: ConnKey) {
        let Some(f) = self.filter.as_mut() else { return };
        if f.handover_pending() {
            if self.parked.at_request.len() < MAX_LATE {
                self.parked.at_request.insert(key);
            }
        } else if let Handed::State(s) = f.handed(key.tgid, key.conn) {
            // The agent before is gone: what it handed on is final.
            self.count_cut(&s);
        }
    }

    /// Connections waiting for a state: go on with those whose state came,
    /// or will not (the agent before is gone, or the wait is too long).
    pub(super) fn unpark(&mut self) {
        let waiting: Vec<(ConnKey, Instant)> = self.parked.conns.iter().map(|(k, w)| (*k, w.since)).collect();
        for (key, since) in waiting {
            if let Some(state) = self.poll_state(key, since) {
                self.release(key, state);
            }
        }
        let aside: Vec<(ConnKey, Instant)> = self.parked.aside.iter().map(|(k, w)| (*k, w.since)).collect();
        for (key, since) in aside {
            if let Some(state) = self.poll_state(key, since) {
                self.release_aside(key, state);
            }
        }
        if self.parked.swept.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            self.sweep_late();
        }
    }

    /// Stopping: every connection still waiting goes on now, with its state
    /// if it came, else as joined midway (never dropped unread).
    pub(super) fn unpark_all(&mut self) {
        let keys: Vec<ConnKey> = self.parked.conns.keys().copied().collect();
        keys.into_iter().for_each(|k| self.release_now(k));
        let keys: Vec<ConnKey> = self.parked.aside.keys().copied().collect();
        keys.into_iter().for_each(|k| self.release_aside_now(k));
        self.sweep_late();
        self.sweep_at_request(true);
    }

    /// The connection `key` ended at `ts`: true when it waits for its state
    /// (and its end with it), false to end it now. One this agent holds no
    /// bytes of may have a state coming that nobody takes: remembered.
    pub(super) fn end_held(&mut self, key: ConnKey, ts: u64) -> bool {
        let Some(f) = self.filter.as_mut() else { return false };
        if !self.parked.conns.contains_key(&key) {
            // Only one this agent never read can have been the agent before's.
            let theirs = !self.conns.contains(&key);
            if theirs && f.handover_pending() && self.parked.late.len() < MAX_LATE {
                self.parked.late.insert(key, Some(ts));
            }
            return false;
        }
        match f.handed(key.tgid, key.conn) {
            Handed::State(s) => self.release(key, Some(s)),
            Handed::Wait => {
                if let Some(w) = self.parked.conns.get_mut(&key) {
                    w.ended = Some(ts);
                }
                return true;
            }
            Handed::Never => self.release(key, None),
        }
        false
    }

    /// Every connection of `tgid` still waiting (the process exited: its
    /// attribution and coverage end now), those that ended too.
    pub(super) fn unpark_process(&mut self, tgid: u32) {
        let keys: Vec<ConnKey> = self.parked.conns.keys().filter(|k| k.tgid == tgid).copied().collect();
        keys.into_iter().for_each(|k| self.release_now(k));
        let keys: Vec<ConnKey> = self.parked.aside.keys().filter(|k| k.tgid == tgid).copied().collect();
        keys.into_iter().for_each(|k| self.release_aside_now(k));
    }

    /// Whether a connection waiting since `since` goes on now (`Some`), with
    /// its state if it came: not while the agent before may still hand it on
    /// and the wait is short enough.
    fn poll_state(&mut self, key: ConnKey, since: Instant) -> Option<Option<Vec<u8>>> {
        match self.filter.as_mut()?.handed(key.tgid, key.conn) {
            Handed::State(s) => Some(Some(s)),
            Handed::Wait if since.elapsed() < MAX_WAIT => None,
            Handed::Wait | Handed::Never => Some(None),
        }
    }

    /// The state handed on for `key`, if it came.
    fn state_now(&mut self, key: ConnKey) -> Option<Vec<u8>> {
        match self.filter.as_mut()?.handed(key.tgid, key.conn) {
            Handed::State(s) => Some(s),
            _ => None,
        }
    }

    /// Go on now with a waiting connection, with its state if it came.
    fn release_now(&mut self, key: ConnKey) {
        let state = self.state_now(key);
        self.release(key, state);
    }

    fn release(&mut self, key: ConnKey, state: Option<Vec<u8>>) {
        let Some(w) = self.parked.conns.remove(&key) else { return };
        self.decode_held(w, key, key, state);
    }

    /// The waiting connection `key` ended, and a new connection now has its
    /// key. Its state may not have come yet: the agent before hands it on
    /// when it reads the end, which the new connection's first bytes can
    /// beat. Then it waits on apart from the new one (one at a time per key:
    /// an earlier one still apart goes on first), and is decoded under a key
    /// of its own when its state comes (the state is named by the key alone,
    /// and only a connection taken over waits for one: the new connection,
    /// opened under this agent, never does).
    fn set_aside(&mut self, key: ConnKey) {
        let state = match self.filter.as_mut().map(|f| f.handed(key.tgid, key.conn)) {
            Some(Handed::State(s)) => Some(s),
            Some(Handed::Wait) => {
                self.release_aside_now(key);
                if let Some(w) = self.parked.conns.remove(&key) {
                    self.parked.aside.insert(key, w);
                }
                return;
            }
            _ => None,
        };
        self.release(key, state);
    }

    fn release_aside_now(&mut self, key: ConnKey) {
        if self.parked.aside.contains_key(&key) {
            let state = self.state_now(key);
            self.release_aside(key, state);
        }
    }

    fn release_aside(&mut self, key: ConnKey, state: Option<Vec<u8>>) {
        let Some(w) = self.parked.aside.remove(&key) else { return };
        self.decode_held(w, key, ConnKey { conn: key.conn ^ SET_ASIDE, ..key }, state);
    }

    /// Decode what connection `key` held while it waited, under `as_key`,
    /// from its state if it came; then its end, if it ended.
    fn decode_held(&mut self, w: Waiting, key: ConnKey, as_key: ConnKey, state: Option<Vec<u8>>) {
        self.parked.bytes -= w.bytes;
        match state.map(|s| self.resume(&s)) {
            Some(Ok(c)) => {
                Stats::inc(&self.stats.handoff_states_received);
                // Ignored by the agent before: the kernel is told so with the
                // first chunk replayed below (`on_data`), under its base (of
                // one set aside, under its own key, which no probe copies:
                // its reused key is the new connection's).
                self.resumed.insert(as_key, c);
            }
            Some(Err(e)) => {
                Stats::inc(&self.stats.handoff_states_unusable);
                tracing::debug!(error = %e, pid = key.tgid, "a handed-on state could not be used");
                self.resumed.insert(as_key, HttpConnection::joined_after_upgrade(self.cfg.max_body_bytes));
            }
            None => {
                Stats::inc(&self.stats.handoff_states_missing);
                // Joined midway, maybe inside a request body written in many
                // calls (the peer silent until it is read).
                self.resumed.insert(as_key, HttpConnection::joined_after_upgrade(self.cfg.max_body_bytes));
                if self.parked.late.len() < MAX_LATE {
                    self.parked.late.insert(key, None);
                }
            }
        }
        for raw in &w.records {
            if let Ok(RawEvent::Data(mut c)) = decode(raw) {
                c.key = as_key;
                self.on_data(&c);
            }
        }
        if let Some(ts) = w.ended {
            self.end_conn(as_key, ts);
        }
    }

    fn resume(&self, state: &[u8]) -> Result<HttpConnection<super::Endpoint>, crate::http::h2::H2Error> {
        let (_, state) = ended_meta(state)?;
        let rules = &self.cfg.rules;
        let mut classify = |h: &crate::http::message::Head| rules.classify(h);
        HttpConnection::resume(state, self.cfg.max_body_bytes, &mut classify)
    }

    /// Read back the states that came for connections remembered in
    /// `late`, and drop them (none stays in the pinned map). One of a
    /// connection that ended without this agent holding its bytes is read
    /// first: the calls in flight in it were cut with the connection.
    fn sweep_late(&mut self) {
        self.parked.swept = Some(Instant::now());
        let late: Vec<(ConnKey, Option<u64>)> = self.parked.late.iter().map(|(k, e)| (*k, *e)).collect();
        for (key, ended) in late {
            let Some(f) = self.filter.as_mut() else { return };
            match (f.handed(key.tgid, key.conn), ended) {
                (Handed::Wait, _) => continue,
                (Handed::Never, _) | (Handed::State(_), None) => {}
                (Handed::State(s), Some(ts)) => self.end_from_state(key, &s, ts),
            }
            self.parked.late.remove(&key);
        }
        self.sweep_at_request(false);
    }

    /// The connections taken over at a request ([`Pipeline::remember_late`]):
    /// looked at once, when the agent before is gone (it wrote every state it
    /// would) or this agent stops (`all`), each one lookup.
    fn sweep_at_request(&mut self, all: bool) {
        let Some(f) = self.filter.as_mut() else { return };
        if self.parked.at_request.is_empty() || !all && f.handover_pending() {
            return;
        }
        for key in std::mem::take(&mut self.parked.at_request) {
            let Some(f) = self.filter.as_mut() else { return };
            if let Handed::State(s) = f.handed(key.tgid, key.conn) {
                self.count_cut(&s);
            }
        }
    }

    /// The state of a connection that ended (at `ts`) as the agent before
    /// left, this agent holding none of its bytes: the calls its end
    /// completes (a body framed by the close, a stream's last event) are
    /// recorded with the connection's metadata the state carries; the calls
    /// it cuts are counted (`dropped_at_handover`).
    fn end_from_state(&mut self, key: ConnKey, state: &[u8], ts: u64) {
        let meta = match ended_meta(state) {
            Ok((Some(m), _)) => m,
            _ => return self.count_cut(state),
        };
        let Some(mut c) = self.resume_counted(state) else { return };
        let mut lost = crate::http::exchange::Lost::default();
        c.close(ts, &mut self.exchanges, &mut lost);
        Stats::add(&self.stats.dropped_at_handover, std::mem::take(&mut lost.unanswered));
        self.count_lost(&lost);
        self.emit_exchanges(&ConnMeta { tgid: key.tgid, ..meta });
    }

    /// A state whose connection this agent holds none of the bytes after:
    /// its calls in flight were cut (`dropped_at_handover`). The calls its
    /// end completes or cuts short are not recorded either: counted all the same.
    fn count_cut(&mut self, state: &[u8]) {
        let Some(mut c) = self.resume_counted(state) else { return };
        let mut lost = crate::http::exchange::Lost::default();
        let mut cut = Vec::new();
        c.close(0, &mut cut, &mut lost);
        let calls = std::mem::take(&mut lost.unanswered) + cut.len() as u64;
        Stats::add(&self.stats.dropped_at_handover, calls);
        self.count_lost(&lost);
    }

    /// A state no connection here goes on from: what it holds, or counted
    /// unusable (its calls in flight unknown).
    fn resume_counted(&mut self, state: &[u8]) -> Option<HttpConnection<super::Endpoint>> {
        self.resume(state)
            .inspect_err(|e| {
                Stats::inc(&self.stats.handoff_states_unusable);
                tracing::debug!(error = %e, "a handed-on state nobody took could not be read");
            })
            .ok()
    }

    /// This agent has left for a successor: a connection that ends before
    /// [`Pipeline::hand_off`] hands its state on at its end.
    pub fn leave(&mut self) {
        self.parked.leaving = true;
        // A connection set aside shares its key with a live one, whose state
        // this agent hands on under that key: read back as the one's, it
        // would be lost to the successor. It goes on now, with its state if
        // it came (else counted missing).
        let keys: Vec<ConnKey> = self.parked.aside.keys().copied().collect();
        keys.into_iter().for_each(|k| self.release_aside_now(k));
    }

    /// The connection `key` ends while this agent leaves: its state goes to
    /// the successor, which may hold bytes of it that came after the leaving.
    pub(super) fn hand_off_at_end(&mut self, key: ConnKey) {
        if !self.parked.leaving || self.parked.handed {
            return;
        }
        let Some(f) = self.filter.as_mut() else { return };
        let Some(e) = self.conns.get_mut(&key) else { return };
        if let Some(sent) = hand_on(f.as_mut(), &key, &mut e.state.http, Some(&e.meta), &self.stats) {
            Stats::inc(if sent { &self.stats.handoff_states_sent } else { &self.stats.handoff_states_not_sent });
        }
    }

    /// Leaving for a successor, after the last record it copied was read:
    /// each HTTP/2 connection's and WebSocket session's decoding state, and
    /// each ignored connection's verdict, for the agent that takes it over.
    /// Returns the states handed on and those that could not be.
    pub fn hand_off(&mut self) -> (usize, usize) {
        self.parked.handed = true;
        let Some(f) = self.filter.as_mut() else { return (0, 0) };
        let (mut sent, mut not_sent) = (0, 0);
        // The small states first (verdicts, HPACK tables, most exchanges):
        // the few of megabytes (a request body being written) must not fill
        // the map before them.
        for large in [false, true] {
            for (k, e) in self.conns.iter_mut().filter(|(_, e)| (e.state.http.buffered() > LARGE_STATE) == large) {
                match hand_on(f.as_mut(), k, &mut e.state.http, None, &self.stats) {
                    Some(true) => sent += 1,
                    Some(false) => not_sent += 1,
                    None => {}
                }
            }
        }
        Stats::add(&self.stats.handoff_states_sent, sent as u64);
        Stats::add(&self.stats.handoff_states_not_sent, not_sent as u64);
        (sent, not_sent)
    }
}

/// Hand on one connection's state: whether it went, or `None` for a
/// connection with no state to hand on (HTTP/1.1 between exchanges changes
/// agents at a request). The calls in flight of a state written but not
/// stored (the map full) are cut, and counted. A connection that ended
/// (`ended`: its metadata) hands on that too ([`ENDED`]).
fn hand_on(
    f: &mut dyn ConnFilter,
    key: &ConnKey,
    http: &mut HttpConnection<super::Endpoint>,
    ended: Option<&ConnMeta>,
    stats: &Stats,
) -> Option<bool> {
    if !http.hands_off() {
        return None;
    }
    let held = http.calls_handed();
    // None: too large, or half a header block; the calls stay, and are
    // counted at the end.
    let Some(mut state) = http.hand_off(HANDOFF_PART * HANDOFF_MAX_PARTS as usize - 64 - ENDED_LEN) else {
        return Some(false);
    };
    if let Some(m) = ended {
        state.splice(0..0, ended_prefix(m));
    }
    let sent = f.hand_off(key.tgid, key.conn, &state);
    if !sent {
        Stats::add(&stats.dropped_at_exit, held);
    }
    Some(sent)
}

/// The first byte of a state handed on at the connection's end: its owner's
/// cgroup, command and capture source follow, then the state itself. The
/// agent taking over may hold none of the connection's bytes (it ended
/// before any came), and needs them to record the calls the end completes.
/// An agent of an earlier release cannot use such a state: where it holds
/// bytes of the connection it counts it unusable, else it drops it uncounted.
const ENDED: u8 = b'e';
const ENDED_LEN: usize = 1 + 8 + 16 + 1;
/// The buffered bytes past which a connection's state is handed on after
/// all the others ([`Pipeline::hand_off`]).
const LARGE_STATE: usize = 64 << 10;

/// What opens a state handed on at its connection's end ([`ENDED`]).
pub fn ended_prefix(m: &ConnMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENDED_LEN);
    out.push(ENDED);
    out.extend(m.cgroup_id.to_le_bytes());
    out.extend(m.comm.0);
    out.push(m.source as u32 as u8);
    out
}

/// A state's metadata if it was handed on at its connection's end (the
/// tgid left 0: the key's), and the state proper.
pub fn ended_meta(state: &[u8]) -> Result<(Option<ConnMeta>, &[u8]), crate::http::h2::H2Error> {
    if state.first() != Some(&ENDED) {
        return Ok((None, state));
    }
    let bad = crate::http::h2::H2Error::Frame("handoff state: a connection's end cut short");
    let (m, rest) = (state.get(1..ENDED_LEN).ok_or(bad)?, &state[ENDED_LEN..]);
    let source = Source::from_u32(u32::from(m[24]))
        .ok_or(crate::http::h2::H2Error::Frame("handoff state: unknown capture source"))?;
    let cgroup_id = u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
    let comm = Comm(m[8..24].try_into().expect("16 bytes"));
    Ok((Some(ConnMeta { tgid: 0, cgroup_id, comm, source }), rest))
}
