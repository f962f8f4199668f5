//! Connections that change agents during an upgrade (`handover`), as the
//! pipeline sees them. The agent leaving hands on each HTTP/2 connection's
//! and WebSocket session's decoding state, and each ignored connection's
//! verdict ([`Pipeline::hand_off`]), once it has left and read what it copied
//! before: a few passes of its reader after leaving, not after its detach.
//! The agent taking over holds the records of a connection it took from it
//! ([`Pipeline::park`]) until that state is there, then decodes them from where
//! the other stopped; or, when the agent before has exited without leaving one
//! (or the wait is too long, or the connection ends before the state is
//! handed on), as a connection joined midway (counted). A connection that
//! ends after its state was handed on but before this agent read it keeps
//! it: the kernel leaves the state of a connection a running agent took over
//! in the map until that agent reads it, here, at the connection's end.
//!
//! Why wait rather than ask first: the agent before leaves first (from then
//! on the kernel gives every next call of its connections to the new one),
//! so its state is final only after the new agent may have its first bytes.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokentap_agent_common::{HANDOFF_MAX_PARTS, HANDOFF_PART};

use super::{Handed, Pipeline};
use crate::capture::decode::decode;
use crate::capture::event::{Chunk, ConnKey, Direction, RawEvent};
use crate::http::exchange::HttpConnection;
use crate::http::sniff;
use crate::stats::Stats;

/// Longest wait for a state: the agent before hands on within a few passes
/// of its reader after leaving; this bounds the wait for one that stalls.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Record bytes held per connection, and for all, while waiting.
const MAX_CONN_BYTES: usize = 4 << 20;
const MAX_BYTES: usize = 32 << 20;

/// Connections remembered as decoded without their state (see
/// [`Pipeline::discard_late_state`]).
const MAX_UNSTATED: usize = 16384;

#[derive(Default)]
pub(super) struct Parked {
    conns: HashMap<ConnKey, Waiting>,
    bytes: usize,
    /// Released without a state: one may still come (the agent before was
    /// slow, or the connection outgrew what is held), and the kernel keeps a
    /// state of a connection that a running agent owns until it is read.
    unstated: HashSet<ConnKey>,
}

struct Waiting {
    since: Instant,
    records: Vec<Vec<u8>>,
    bytes: usize,
}

impl Pipeline {
    /// Hold `raw` while its connection waits for the state the agent before
    /// hands on; true when held (false: decode it now).
    pub(super) fn park(&mut self, c: &Chunk<'_>, raw: &[u8]) -> bool {
        let waiting = self.parked.conns.get(&c.key).map(|w| w.bytes);
        if waiting.is_none() {
            if !c.flags.taken_over || self.conns.contains(&c.key) || self.filter.is_none() {
                return false;
            }
            // HTTP/1.1 at a request: the connection changed hands cleanly.
            if c.direction == Direction::Egress && sniff::looks_like_request(c.data) {
                return false;
            }
        }
        let full = self.parked.bytes + raw.len() > MAX_BYTES || waiting.unwrap_or(0) + raw.len() > MAX_CONN_BYTES;
        if full {
            // Decoded as it is: what it held first, then this.
            self.release(c.key, None);
            return false;
        }
        let w = self.parked.conns.entry(c.key).or_insert_with(|| Waiting {
            since: Instant::now(),
            records: Vec::new(),
            bytes: 0,
        });
        w.records.push(raw.to_vec());
        w.bytes += raw.len();
        self.parked.bytes += raw.len();
        true
    }

    /// Connections waiting for a state: go on with those whose state came,
    /// or will not (the agent before is gone, or the wait is too long).
    pub(super) fn unpark(&mut self) {
        if self.parked.conns.is_empty() {
            return;
        }
        let waiting: Vec<(ConnKey, Instant)> = self.parked.conns.iter().map(|(k, w)| (*k, w.since)).collect();
        for (key, since) in waiting {
            let Some(f) = self.filter.as_mut() else { return };
            match f.handed(key.tgid, key.conn) {
                Handed::State(s) => self.release(key, Some(s)),
                Handed::Wait if since.elapsed() < MAX_WAIT => {}
                Handed::Wait | Handed::Never => self.release(key, None),
            }
        }
    }

    /// Stopping: every connection still waiting goes on now, with its state
    /// if it came, else as joined midway (never dropped unread).
    pub(super) fn unpark_all(&mut self) {
        let keys: Vec<ConnKey> = self.parked.conns.keys().copied().collect();
        keys.into_iter().for_each(|k| self.unpark_now(k));
    }

    /// A connection that ends (closed, its process gone) while it waits:
    /// decoded now, with its state if it came, so that its end follows its
    /// bytes and a new connection under its key is not held with it.
    pub(super) fn unpark_now(&mut self, key: ConnKey) {
        if !self.parked.conns.contains_key(&key) {
            return;
        }
        let state = match self.filter.as_mut().map(|f| f.handed(key.tgid, key.conn)) {
            Some(Handed::State(s)) => Some(s),
            _ => None,
        };
        self.release(key, state);
    }

    /// Every connection of `tgid` still waiting (the process exited).
    pub(super) fn unpark_process(&mut self, tgid: u32) {
        let keys: Vec<ConnKey> = self.parked.conns.keys().filter(|k| k.tgid == tgid).copied().collect();
        keys.into_iter().for_each(|k| self.unpark_now(k));
        let late: Vec<ConnKey> = self.parked.unstated.iter().filter(|k| k.tgid == tgid).copied().collect();
        late.into_iter().for_each(|k| self.discard_late_state(k));
    }

    /// A connection decoded without its state has ended: a state that came
    /// after all is read and dropped, so that none stays in the pinned map.
    pub(super) fn discard_late_state(&mut self, key: ConnKey) {
        if self.parked.unstated.remove(&key) {
            if let Some(f) = self.filter.as_mut() {
                let _ = f.handed(key.tgid, key.conn);
            }
        }
    }

    fn release(&mut self, key: ConnKey, state: Option<Vec<u8>>) {
        let Some(w) = self.parked.conns.remove(&key) else { return };
        self.parked.bytes -= w.bytes;
        let rules = &self.cfg.rules;
        let mut classify = |h: &crate::http::message::Head| rules.classify(h);
        match state.map(|s| HttpConnection::resume(&s, self.cfg.max_body_bytes, &mut classify)) {
            Some(Ok(c)) => {
                Stats::inc(&self.stats.handoff_states_received);
                if let (Some(_), Some(f)) = (c.ignored(), self.filter.as_mut()) {
                    // Ignored by the agent before (and counted there): not copied from now on.
                    f.ignore(key.tgid, key.conn);
                }
                self.resumed.insert(key, c);
            }
            Some(Err(e)) => {
                Stats::inc(&self.stats.handoff_states_unusable);
                tracing::debug!(error = %e, pid = key.tgid, "a handed-on state could not be used");
            }
            None => {
                Stats::inc(&self.stats.handoff_states_missing);
                if self.parked.unstated.len() < MAX_UNSTATED {
                    self.parked.unstated.insert(key);
                }
            }
        }
        for raw in &w.records {
            if let Ok(RawEvent::Data(c)) = decode(raw) {
                self.on_data(&c);
            }
        }
    }

    /// Leaving for a successor, after the last record it copied was read:
    /// each HTTP/2 connection's and WebSocket session's decoding state, and
    /// each ignored connection's verdict, for the agent that takes it over.
    /// Returns the states handed on and those that could not be.
    pub fn hand_off(&mut self) -> (usize, usize) {
        let Some(f) = self.filter.as_mut() else { return (0, 0) };
        let (mut sent, mut not_sent) = (0, 0);
        for (k, e) in self.conns.iter_mut() {
            if !e.state.http.hands_off() {
                continue;
            }
            match e.state.http.hand_off(HANDOFF_PART * HANDOFF_MAX_PARTS as usize - 64) {
                Some(s) if f.hand_off(k.tgid, k.conn, &s) => sent += 1,
                _ => not_sent += 1,
            }
        }
        Stats::add(&self.stats.handoff_states_sent, sent as u64);
        Stats::add(&self.stats.handoff_states_not_sent, not_sent as u64);
        (sent, not_sent)
    }
}
