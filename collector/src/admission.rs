//! Which rows of an incoming batch are new, already stored, or already on
//! their way to ClickHouse. A batch an agent sends again (its acknowledgement
//! was lost, or it timed out waiting) must not be inserted twice: its rows that
//! are stored count as duplicates, and its rows still queued or being inserted
//! are waited for, not queued again. That makes a retry after any timeout land
//! once in the raw table and once in the rollups fed from it.
use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::dedup::RecentIds;
use crate::row::StoredRow;

/// How a job ended: the ids of its rows ClickHouse refused for good, and why.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rejected: HashMap<u128, String>,
}

/// Where a job's outcome is published; waiters subscribe to it.
pub type Done = Arc<watch::Sender<Option<Arc<Outcome>>>>;
/// A subscription to a job's outcome.
pub type Waiter = watch::Receiver<Option<Arc<Outcome>>>;

/// Rows accepted for insertion, and where to publish how it went.
pub struct Job<R> {
    pub rows: Vec<R>,
    pub done: Done,
    /// The agent says this batch was sent before: its rows may already be in
    /// ClickHouse through another collector; check before inserting.
    pub check_existing: bool,
}

/// What admission made of a batch.
pub struct Admitted<R> {
    /// Its new rows, to queue (None: nothing new).
    pub job: Option<Job<R>>,
    /// Rows already in ClickHouse.
    pub duplicates: usize,
    /// Jobs holding its other rows, with the ids it has in each (its own job included).
    pub waits: Vec<(Waiter, Vec<u128>)>,
}

pub enum Refused {
    /// Accepting would put more than the limit of rows in the queue.
    QueueFull,
}

/// One row kind's admission (each kind has its own ids and queue).
pub struct Admission<R> {
    recent: RecentIds,
    pending: HashMap<u128, Done>,
    max_pending: usize,
    _rows: std::marker::PhantomData<fn(R)>,
}

impl<R: StoredRow> Admission<R> {
    pub fn new(recent: RecentIds, max_pending: usize) -> Self {
        Self { recent, pending: HashMap::new(), max_pending: max_pending.max(1), _rows: std::marker::PhantomData }
    }

    /// Rows queued or being inserted.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn admit(&mut self, rows: Vec<R>, check_existing: bool) -> Result<Admitted<R>, Refused> {
        let mut duplicates = 0;
        let mut fresh = Vec::with_capacity(rows.len());
        let mut elsewhere: Vec<(Done, Vec<u128>)> = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(rows.len());
        for r in rows {
            let id = r.id();
            if !seen.insert(id) || self.recent.contains(id) {
                duplicates += 1;
            } else if let Some(done) = self.pending.get(&id) {
                match elsewhere.iter_mut().find(|(d, _)| Arc::ptr_eq(d, done)) {
                    Some((_, ids)) => ids.push(id),
                    None => elsewhere.push((done.clone(), vec![id])),
                }
            } else {
                fresh.push(r);
            }
        }
        if self.pending.len() + fresh.len() > self.max_pending && !fresh.is_empty() {
            return Err(Refused::QueueFull);
        }
        let mut waits: Vec<_> = elsewhere.into_iter().map(|(d, ids)| (d.subscribe(), ids)).collect();
        let job = (!fresh.is_empty()).then(|| {
            let done: Done = Arc::new(watch::channel(None).0);
            let ids: Vec<u128> = fresh.iter().map(R::id).collect();
            for id in &ids {
                self.pending.insert(*id, done.clone());
            }
            waits.push((done.subscribe(), ids));
            Job { rows: fresh, done, check_existing }
        });
        Ok(Admitted { job, duplicates, waits })
    }

    /// A job's rows are resolved: stored ones join the recent ids, all leave
    /// the pending set. Call before publishing the outcome.
    pub fn complete(&mut self, ids: &[u128], outcome: &Outcome) {
        for id in ids {
            self.pending.remove(id);
            if !outcome.rejected.contains_key(id) {
                self.recent.insert(*id);
            }
        }
    }

    /// Give a job's rows back (it was never queued).
    pub fn withdraw(&mut self, ids: &[u128]) {
        for id in ids {
            self.pending.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CallRow;
    use tokentap_event::LlmCall;

    fn row() -> CallRow {
        CallRow::from_record(
            LlmCall {
                event_id: LlmCall::new_event_id(),
                ts: "2026-11-23T10:00:00Z".into(),
                provider: "openai".into(),
                operation: "chat".into(),
                ..Default::default()
            },
            "",
        )
    }

    #[test]
    fn a_batch_sent_again_waits_for_its_first_copy() {
        let mut a = Admission::new(RecentIds::new(100), 100);
        let rows: Vec<CallRow> = (0..5).map(|_| row()).collect();
        let first = a.admit(rows.clone(), false).ok().unwrap();
        let job = first.job.expect("new rows");
        assert_eq!(job.rows.len(), 5);
        assert_eq!(a.pending(), 5);
        // The same batch again, plus one new row, while the first is in flight.
        let mut again = rows.clone();
        again.push(row());
        let second = a.admit(again, true).ok().unwrap();
        assert_eq!(second.job.as_ref().map(|j| j.rows.len()), Some(1), "only the new row is queued");
        assert!(second.job.as_ref().is_some_and(|j| j.check_existing));
        assert_eq!(second.waits.len(), 2, "waits for the first job and its own");
        assert_eq!(second.waits[0].1.len(), 5);
        // The first job lands: its rows become duplicates for any later copy.
        let ids: Vec<u128> = job.rows.iter().map(|r| r.event_id.as_u128()).collect();
        a.complete(&ids, &Outcome::default());
        let third = a.admit(rows, false).ok().unwrap();
        assert!(third.job.is_none());
        assert_eq!(third.duplicates, 5);
        assert_eq!(a.pending(), 1);
    }

    #[test]
    fn rejected_rows_are_not_remembered_as_stored_and_the_queue_is_bounded() {
        let mut a = Admission::new(RecentIds::new(100), 3);
        let rows: Vec<CallRow> = (0..3).map(|_| row()).collect();
        let job = a.admit(rows.clone(), false).ok().unwrap().job.unwrap();
        assert!(matches!(a.admit(vec![row()], false), Err(Refused::QueueFull)));
        let ids: Vec<u128> = job.rows.iter().map(|r| r.event_id.as_u128()).collect();
        let mut out = Outcome::default();
        out.rejected.insert(ids[0], "bad".into());
        a.complete(&ids, &out);
        let again = a.admit(rows, false).ok().unwrap();
        assert_eq!(again.duplicates, 2);
        assert_eq!(again.job.map(|j| j.rows.len()), Some(1), "a refused row may be sent again (and refused again)");
    }
}
