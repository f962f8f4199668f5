//! The connection table: one entry per (process, TLS connection object), holding
//! whatever per-connection state the next stage keeps (`T`). Bounded in count;
//! entries expire when idle, and go when the connection is freed or its process
//! exits. Each entry checks that a call's chunks arrive complete and in order.
use std::collections::HashMap;

use tokentap_agent_common::{DataHeader, DIR_INGRESS, FLAG_GAP_BEFORE, FLAG_LAST, FLAG_READ_FAILED, FLAG_TRUNCATED};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ConnKey {
    pub tgid: u32,
    pub conn: u64,
}

/// Who owns a connection, as first seen.
#[derive(Clone, Debug)]
pub struct ConnMeta {
    pub tgid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    pub source: u32,
    /// Socket fd (from `SSL_set_fd`), -1 while unknown.
    pub fd: i32,
}

pub struct Entry<T> {
    pub state: T,
    pub meta: ConnMeta,
    pub last_ts: u64,
    /// Created by the last `on_data` call; the caller clears it.
    pub fresh: bool,
    /// Next expected chunk offset of an unfinished call, per direction.
    next_offset: [Option<u64>; 2],
}

/// Whether a chunk continues its stream without a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Continuity {
    InOrder,
    /// Bytes are missing before or inside this chunk.
    Gap,
    /// Bytes are missing before this chunk, which is whole and starts a call.
    GapBefore,
}

/// A connection pushed out of a full table.
pub type Evicted<T> = Option<(ConnKey, Entry<T>)>;

pub struct ConnTable<T> {
    conns: HashMap<ConnKey, Entry<T>>,
    max: usize,
}

impl<T> ConnTable<T> {
    pub fn new(max: usize) -> Self {
        Self { conns: HashMap::new(), max: max.max(1) }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ConnKey, &Entry<T>)> {
        self.conns.iter()
    }

    /// Find or create the entry for a data chunk and check its continuity. When
    /// the table is full the least recently active entry is evicted and returned.
    pub fn on_data(&mut self, h: &DataHeader, new: impl FnOnce() -> T) -> (&mut Entry<T>, Continuity, Evicted<T>) {
        let key = ConnKey { tgid: h.tgid, conn: h.conn };
        let mut evicted = None;
        if !self.conns.contains_key(&key) && self.conns.len() >= self.max {
            if let Some(oldest) = self.conns.iter().min_by_key(|(_, e)| e.last_ts).map(|(k, _)| *k) {
                evicted = self.conns.remove(&oldest).map(|e| (oldest, e));
            }
        }
        let e = self.conns.entry(key).or_insert_with(|| Entry {
            state: new(),
            meta: ConnMeta { tgid: h.tgid, cgroup_id: h.cgroup_id, comm: h.comm, source: h.source, fd: h.fd },
            last_ts: h.ts_ns,
            fresh: true,
            next_offset: [None, None],
        });
        e.last_ts = e.last_ts.max(h.ts_ns);
        if e.meta.fd < 0 {
            e.meta.fd = h.fd;
        }
        let dir = usize::from(h.direction == DIR_INGRESS);
        let expected = e.next_offset[dir].unwrap_or(0);
        let mut cont = if h.offset == expected {
            Continuity::InOrder
        } else if h.offset == 0 {
            // A new call while the last one's tail never came.
            Continuity::GapBefore
        } else {
            Continuity::Gap
        };
        if h.flags & (FLAG_READ_FAILED | FLAG_TRUNCATED) != 0 {
            cont = Continuity::Gap;
        } else if cont == Continuity::InOrder && h.flags & FLAG_GAP_BEFORE != 0 {
            cont = Continuity::GapBefore;
        }
        e.next_offset[dir] = if h.flags & FLAG_LAST != 0 { None } else { Some(h.offset.saturating_add(h.len as u64)) };
        (e, cont, evicted)
    }

    pub fn get_mut(&mut self, key: &ConnKey) -> Option<&mut Entry<T>> {
        self.conns.get_mut(key)
    }

    pub fn remove(&mut self, key: &ConnKey) -> Option<Entry<T>> {
        self.conns.remove(key)
    }

    /// Remove every connection of a process.
    pub fn remove_process(&mut self, tgid: u32) -> Vec<(ConnKey, Entry<T>)> {
        let keys: Vec<ConnKey> = self.conns.keys().filter(|k| k.tgid == tgid).copied().collect();
        keys.into_iter().filter_map(|k| self.conns.remove(&k).map(|e| (k, e))).collect()
    }

    /// Remove connections idle since before `cutoff_ts`.
    pub fn expire(&mut self, cutoff_ts: u64) -> Vec<(ConnKey, Entry<T>)> {
        let keys: Vec<ConnKey> = self.conns.iter().filter(|(_, e)| e.last_ts < cutoff_ts).map(|(k, _)| *k).collect();
        keys.into_iter().filter_map(|k| self.conns.remove(&k).map(|e| (k, e))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokentap_agent_common::{EventKind, DIR_EGRESS};

    fn hdr(tgid: u32, conn: u64, dir: u32, offset: u64, len: u32, flags: u32, ts: u64) -> DataHeader {
        DataHeader {
            kind: EventKind::Data as u32,
            direction: dir,
            tgid,
            tid: tgid,
            ts_ns: ts,
            conn,
            cgroup_id: 0,
            call_len: 0,
            offset,
            len,
            flags,
            fd: -1,
            source: 1,
            comm: [0; 16],
        }
    }

    #[test]
    fn chunks_in_order_and_gaps() {
        let mut t: ConnTable<u32> = ConnTable::new(10);
        let (_, c, _) = t.on_data(&hdr(1, 1, DIR_EGRESS, 0, 10, 0, 1), || 0);
        assert_eq!(c, Continuity::InOrder);
        let (_, c, _) = t.on_data(&hdr(1, 1, DIR_EGRESS, 10, 5, FLAG_LAST, 2), || 0);
        assert_eq!(c, Continuity::InOrder);
        // Next call starts at 0 again.
        let (_, c, _) = t.on_data(&hdr(1, 1, DIR_EGRESS, 0, 5, 0, 3), || 0);
        assert_eq!(c, Continuity::InOrder);
        // A chunk went missing (lost to a full ring buffer).
        let (_, c, _) = t.on_data(&hdr(1, 1, DIR_EGRESS, 16384, 5, FLAG_LAST, 4), || 0);
        assert_eq!(c, Continuity::Gap);
        // Directions are independent.
        let (_, c, _) = t.on_data(&hdr(1, 1, DIR_INGRESS, 0, 5, FLAG_LAST | FLAG_TRUNCATED, 5), || 0);
        assert_eq!(c, Continuity::Gap);
        assert_eq!(t.len(), 1);
        // Whole calls lost before this one (the kernel flags it): a clean call start.
        let (_, c, _) = t.on_data(&hdr(1, 1, DIR_EGRESS, 0, 5, FLAG_LAST | FLAG_GAP_BEFORE, 6), || 0);
        assert_eq!(c, Continuity::GapBefore);
        // A call left unfinished (its last chunk lost), then a new call.
        let (_, c, _) = t.on_data(&hdr(1, 1, DIR_EGRESS, 0, 16384, 0, 7), || 0);
        assert_eq!(c, Continuity::InOrder);
        let (_, c, _) = t.on_data(&hdr(1, 1, DIR_EGRESS, 0, 5, FLAG_LAST, 8), || 0);
        assert_eq!(c, Continuity::GapBefore);
    }

    #[test]
    fn bounded_with_lru_eviction_expiry_and_process_exit() {
        let mut t: ConnTable<u64> = ConnTable::new(2);
        t.on_data(&hdr(1, 1, DIR_EGRESS, 0, 1, FLAG_LAST, 10), || 1);
        t.on_data(&hdr(1, 2, DIR_EGRESS, 0, 1, FLAG_LAST, 20), || 2);
        let (_, _, ev) = t.on_data(&hdr(2, 3, DIR_EGRESS, 0, 1, FLAG_LAST, 30), || 3);
        assert_eq!(ev.map(|(k, e)| (k.conn, e.state)), Some((1, 1)));
        assert_eq!(t.len(), 2);
        assert_eq!(t.expire(25).len(), 1);
        assert_eq!(t.remove_process(2).len(), 1);
        assert!(t.is_empty());
    }
}
