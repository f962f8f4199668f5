//! The event ids inserted recently, so a batch delivered again (an agent retrying
//! after a lost acknowledgement, a spool replayed after a restart) is not
//! inserted twice. Bounded: the oldest ids go first. Filled from ClickHouse at
//! start so a collector restart keeps the window.
use std::collections::{HashSet, VecDeque};

pub struct RecentIds {
    set: HashSet<u128>,
    order: VecDeque<u128>,
    cap: usize,
}

impl RecentIds {
    pub fn new(cap: usize) -> Self {
        Self { set: HashSet::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    pub fn contains(&self, id: u128) -> bool {
        self.set.contains(&id)
    }

    pub fn insert(&mut self, id: u128) {
        if !self.set.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_oldest_first() {
        let mut r = RecentIds::new(3);
        for i in 0..5 {
            r.insert(i);
        }
        r.insert(4);
        assert_eq!(r.len(), 3);
        assert!(!r.contains(1) && r.contains(2) && r.contains(4));
    }
}
