//! The connection table: one entry per (process, TLS connection object), holding
//! whatever per-connection state the next stage keeps (`T`). Bounded in count;
//! entries expire when idle, and go when the connection is freed or its process
//! exits. Each entry checks that a call's chunks arrive complete and in order.
use std::collections::HashMap;

use super::event::{Chunk, ConnKey, ConnMeta, Direction};

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

/// Why a connection left the table other than by closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnDrop {
    /// Pushed out of a full table.
    Evicted,
    /// Idle for longer than the timeout.
    Expired,
    /// Held too many bytes (its own cap, or the total budget).
    Shed,
}

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
    pub fn on_data(&mut self, c: &Chunk<'_>, new: impl FnOnce() -> T) -> (&mut Entry<T>, Continuity, Evicted<T>) {
        let key = c.key;
        let mut evicted = None;
        if !self.conns.contains_key(&key) && self.conns.len() >= self.max {
            if let Some(oldest) = self.conns.iter().min_by_key(|(_, e)| e.last_ts).map(|(k, _)| *k) {
                evicted = self.conns.remove(&oldest).map(|e| (oldest, e));
            }
        }
        let e = self.conns.entry(key).or_insert_with(|| Entry {
            state: new(),
            meta: c.owner,
            last_ts: c.ts_ns,
            fresh: true,
            next_offset: [None, None],
        });
        e.last_ts = e.last_ts.max(c.ts_ns);
        let dir = usize::from(c.direction == Direction::Ingress);
        let expected = e.next_offset[dir].unwrap_or(0);
        let mut cont = if c.offset == expected {
            Continuity::InOrder
        } else if c.offset == 0 {
            // A new call while the last one's tail never came.
            Continuity::GapBefore
        } else {
            Continuity::Gap
        };
        if c.flags.has_hole() {
            cont = Continuity::Gap;
        } else if cont == Continuity::InOrder && c.flags.gap_before {
            cont = Continuity::GapBefore;
        }
        e.next_offset[dir] = if c.flags.last { None } else { Some(c.offset.saturating_add(c.data.len() as u64)) };
        (e, cont, evicted)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ConnKey, &mut Entry<T>)> {
        self.conns.iter_mut()
    }

    pub fn contains(&self, key: &ConnKey) -> bool {
        self.conns.contains_key(key)
    }

    /// The connection now goes by another key (its object moved): its state
    /// carries over, its calls start afresh at the new key.
    pub fn rekey(&mut self, from: &ConnKey, to: ConnKey) -> bool {
        if self.conns.contains_key(&to) {
            return false;
        }
        let Some(mut e) = self.conns.remove(from) else { return false };
        e.next_offset = [None, None];
        self.conns.insert(to, e);
        true
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

    /// Keep the bytes all entries hold (`size` of each) within `budget` by
    /// removing the entries that hold most; they are returned.
    pub fn shed(&mut self, budget: usize, size: impl Fn(&T) -> usize) -> Vec<(ConnKey, Entry<T>)> {
        let mut sizes: Vec<(usize, ConnKey)> =
            self.conns.iter().map(|(k, e)| (size(&e.state), *k)).filter(|(n, _)| *n > 0).collect();
        let mut total: usize = sizes.iter().map(|(n, _)| n).sum();
        let mut shed = Vec::new();
        if total <= budget {
            return shed;
        }
        sizes.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        for (n, key) in sizes {
            if total <= budget {
                break;
            }
            if let Some(e) = self.conns.remove(&key) {
                shed.push((key, e));
                total -= n;
            }
        }
        shed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::{ChunkFlags, Comm};
    use tokentap_agent_common::{Source, DIR_EGRESS, DIR_INGRESS, FLAG_GAP_BEFORE, FLAG_LAST, FLAG_TRUNCATED};

    const OWNER: ConnMeta = ConnMeta { tgid: 1, cgroup_id: 0, comm: Comm([0; 16]), source: Source::OpenSsl };

    fn hdr(tgid: u32, conn: u64, dir: u32, offset: u64, len: u32, flags: u32, ts: u64) -> Chunk<'static> {
        static DATA: [u8; 1 << 15] = [0; 1 << 15];
        Chunk {
            key: ConnKey { tgid, conn },
            owner: ConnMeta { tgid, ..OWNER },
            direction: Direction::from_u32(dir).unwrap(),
            offset,
            stream_pos: 0,
            stream_base: 0,
            skip_after: 0,
            flags: ChunkFlags::from_bits(flags),
            ts_ns: ts,
            fd: -1,
            data: &DATA[..len as usize],
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

    #[test]
    fn shedding_removes_the_biggest_until_within_budget() {
        let mut t: ConnTable<usize> = ConnTable::new(10);
        for (conn, held) in [(1u64, 900usize), (2, 400), (3, 0), (4, 300)] {
            t.on_data(&hdr(1, conn, DIR_EGRESS, 0, 1, FLAG_LAST, 1), || held);
        }
        assert!(t.shed(1600, |n| *n).is_empty());
        let shed: Vec<u64> = t.shed(1000, |n| *n).iter().map(|(k, _)| k.conn).collect();
        assert_eq!(shed, [1]);
        assert_eq!(t.len(), 3);
    }
}
