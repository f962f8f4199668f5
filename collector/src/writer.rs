//! Accepted rows -> ClickHouse inserts, with group commit: up to
//! `insert_concurrency` inserts run at once, and each takes every row queued
//! when it starts (up to `insert_rows`), so rows from many agents share an
//! insert under load while a lone batch is inserted at once, never waiting a
//! fixed flush interval.
//!
//! An insert is split so that ClickHouse can take it: at most
//! `max_partitions` days (partitions) each. A failure is sorted by what it
//! means for the rows (`store::classify`): an outage is retried with backoff
//! until ClickHouse answers (after an uncertain failure, the rows already
//! stored are looked up first, so a retry never stores a row twice); a data
//! error is never retried as is: the rows are halved until the good ones are
//! written and the bad ones are isolated and refused, within a budget of
//! failed attempts per insert. Nothing one batch holds can stop the writer.
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};

use crate::admission::{Job, Outcome};
use crate::metrics::Metrics;
use crate::row::StoredRow;
use crate::server::Shared;
use crate::store::{self, Failure};

/// A failed request to ClickHouse.
#[derive(Debug, Clone)]
pub struct Failed {
    pub kind: Failure,
    pub message: String,
}

/// Where rows of kind `R` are stored: ClickHouse, or a stand-in in unit tests.
pub trait Store<R>: Send + Sync + 'static {
    fn insert(&self, rows: &[R]) -> impl Future<Output = Result<(), Failed>> + Send;
    /// Which of these rows' ids are stored already.
    fn existing(&self, rows: &[R]) -> impl Future<Output = Result<HashSet<u128>, Failed>> + Send;
}

fn failed(e: clickhouse::error::Error) -> Failed {
    Failed { kind: store::classify(&e), message: e.to_string() }
}

impl<R: StoredRow> Store<R> for clickhouse::Client {
    async fn insert(&self, rows: &[R]) -> Result<(), Failed> {
        store::insert(self, rows).await.map_err(failed)
    }

    async fn existing(&self, rows: &[R]) -> Result<HashSet<u128>, Failed> {
        store::existing_ids(self, rows).await.map_err(failed)
    }
}

#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Rows per insert, at most.
    pub insert_rows: usize,
    /// Inserts in flight at once.
    pub insert_concurrency: usize,
    /// Extra time an insert waits for more rows (0: group commit only).
    pub linger: Duration,
    /// Days (partitions) per insert, at most.
    pub max_partitions: usize,
    /// One insert attempt longer than this is abandoned (and checked before a retry).
    pub insert_timeout: Duration,
    /// Failed attempts spent isolating bad rows in one insert, at most; the
    /// rows still unresolved then are refused with the last error.
    pub bisect_budget: u32,
    /// Attempts for an exception of unknown meaning before it counts as data.
    pub unknown_attempts: u32,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            insert_rows: 100_000,
            insert_concurrency: 2,
            linger: Duration::ZERO,
            max_partitions: 64,
            insert_timeout: Duration::from_secs(30),
            bisect_budget: 64,
            unknown_attempts: 5,
        }
    }
}

/// Takes jobs of one row kind from `rx` until it closes.
pub async fn run<R: StoredRow, S: Store<R>>(store: Arc<S>, shared: Arc<Shared>, mut rx: mpsc::Receiver<Job<R>>) {
    let cfg = shared.writer.clone();
    let slots = Arc::new(Semaphore::new(cfg.insert_concurrency.max(1)));
    loop {
        // A free slot first: while every slot is busy, jobs gather in the queue.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut rows = first.rows.len();
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + cfg.linger;
        while rows < cfg.insert_rows {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(_) if cfg.linger.is_zero() => None,
                Err(_) => tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten(),
            };
            let Some(j) = next else { break };
            rows += j.rows.len();
            jobs.push(j);
        }
        let (store, shared) = (store.clone(), shared.clone());
        tokio::spawn(async move {
            commit(&*store, &shared, jobs).await;
            drop(slot);
        });
    }
}

/// Store the jobs' rows and publish each job's outcome.
async fn commit<R: StoredRow, S: Store<R>>(store: &S, shared: &Shared, mut jobs: Vec<Job<R>>) {
    let cfg = &shared.writer;
    let counters = R::counters(&shared.metrics);
    let mut outcome = Outcome::default();
    let mut rows: Vec<R> = Vec::new();
    let mut check: Vec<R> = Vec::new();
    let ids: Vec<Vec<u128>> = jobs.iter().map(|j| j.rows.iter().map(R::id).collect()).collect();
    let stamps: Vec<(u128, i64)> = jobs.iter().flat_map(|j| j.rows.iter().map(|r| (r.id(), r.ts()))).collect();
    for j in &mut jobs {
        if j.check_existing {
            check.append(&mut j.rows);
        } else {
            rows.append(&mut j.rows);
        }
    }
    if !check.is_empty() {
        // Sent before: another collector may have stored them.
        let stored = until_answered(shared, || store.existing(&check)).await;
        Metrics::add(counters.already_stored, stored.len() as u64);
        rows.extend(check.into_iter().filter(|r| !stored.contains(&r.id())));
    }
    R::arriving(shared, &mut rows);
    for part in by_partitions(rows, cfg.max_partitions, cfg.insert_rows) {
        write_isolating(store, shared, part, &mut outcome).await;
    }
    let now_micros = tokentap_event::wire::Limits::now(None).now_micros;
    let outcome = Arc::new(outcome);
    {
        let mut adm = R::lane(shared).admission.lock().unwrap_or_else(|e| e.into_inner());
        for ids in &ids {
            adm.complete(ids, &outcome);
        }
        counters.queue.store(adm.pending() as u64, Ordering::Relaxed);
    }
    Metrics::add(counters.rejected, outcome.rejected.len() as u64);
    if R::LAG {
        let stored = stamps.iter().filter(|(id, _)| !outcome.rejected.contains_key(id)).map(|(_, ts)| *ts);
        shared.metrics.observe_lag(stored, now_micros);
    }
    for j in jobs {
        j.done.send_replace(Some(outcome.clone()));
    }
}

/// Rows grouped into inserts of at most `max_parts` days and `max_rows` rows.
pub fn by_partitions<R: StoredRow>(rows: Vec<R>, max_parts: usize, max_rows: usize) -> Vec<Vec<R>> {
    let mut days: BTreeMap<i64, Vec<R>> = BTreeMap::new();
    for r in rows {
        days.entry(store::day_of(r.ts())).or_default().push(r);
    }
    let mut out: Vec<Vec<R>> = Vec::new();
    let mut parts = 0;
    for (_, mut day) in days {
        while !day.is_empty() {
            let room = out.last().map_or(0, |l| max_rows.saturating_sub(l.len()));
            if out.is_empty() || parts >= max_parts.max(1) || room == 0 {
                out.push(Vec::new());
                parts = 0;
            }
            let last = out.last_mut().expect("pushed above");
            let take = day.len().min(max_rows.saturating_sub(last.len()).max(1));
            last.extend(day.drain(..take));
            parts += 1;
        }
    }
    out
}

/// Insert `rows`; on a data error, halve until the bad rows are isolated.
async fn write_isolating<R: StoredRow, S: Store<R>>(store: &S, shared: &Shared, rows: Vec<R>, outcome: &mut Outcome) {
    let mut todo = vec![rows];
    let mut budget = shared.writer.bisect_budget;
    while let Some(mut seg) = todo.pop() {
        if seg.is_empty() {
            continue;
        }
        let Err(message) = insert_retrying(store, shared, &mut seg).await else { continue };
        if seg.len() == 1 || budget == 0 {
            tracing::warn!(rows = seg.len(), error = %message, "rows refused by ClickHouse");
            for r in &seg {
                outcome.rejected.insert(r.id(), message.clone());
            }
            continue;
        }
        budget -= 1;
        let right = seg.split_off(seg.len() / 2);
        todo.push(right);
        todo.push(seg);
    }
}

/// One insert, retried through outages; Err(message) when ClickHouse refuses the rows.
async fn insert_retrying<R: StoredRow, S: Store<R>>(
    store: &S,
    shared: &Shared,
    rows: &mut Vec<R>,
) -> Result<(), String> {
    let cfg = &shared.writer;
    let counters = R::counters(&shared.metrics);
    let mut attempt = 0u32;
    let mut unknown = 0u32;
    let mut uncertain = false;
    loop {
        if uncertain {
            // The last attempt may have landed: never store a row twice.
            let stored = until_answered(shared, || store.existing(rows)).await;
            shared.metrics.ready.store(1, Ordering::Relaxed);
            if !stored.is_empty() {
                Metrics::add(counters.already_stored, stored.len() as u64);
                rows.retain(|r| !stored.contains(&r.id()));
            }
            if rows.is_empty() {
                return Ok(());
            }
        }
        let t = Instant::now();
        let result = match tokio::time::timeout(cfg.insert_timeout, store.insert(rows)).await {
            Ok(r) => r,
            Err(_) => Err(Failed { kind: Failure::Outage, message: "insert timed out".into() }),
        };
        let e = match result {
            Ok(()) => {
                shared.metrics.observe_insert(t.elapsed().as_secs_f64());
                Metrics::add(counters.inserts, 1);
                Metrics::add(counters.inserted, rows.len() as u64);
                R::inserted(&shared.metrics, rows);
                shared.metrics.ready.store(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => e,
        };
        shared.metrics.insert_error(e.kind);
        match e.kind {
            Failure::Data => return Err(e.message),
            Failure::Unknown => {
                unknown += 1;
                if unknown >= cfg.unknown_attempts {
                    return Err(e.message);
                }
                // ClickHouse answered with an exception: nothing landed.
                uncertain = false;
            }
            Failure::Outage => {
                uncertain = true;
                shared.metrics.ready.store(0, Ordering::Relaxed);
            }
        }
        let wait = store::backoff(attempt);
        if attempt.is_multiple_of(5) {
            tracing::warn!(error = %e.message, rows = rows.len(), retry_in_ms = wait.as_millis() as u64, "ClickHouse insert failed; retrying");
        }
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(wait).await;
    }
}

/// Retry a lookup until ClickHouse answers it (an outage holds the rows anyway).
async fn until_answered<F, Fut>(shared: &Shared, f: F) -> HashSet<u128>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<HashSet<u128>, Failed>>,
{
    let mut attempt = 0;
    loop {
        match tokio::time::timeout(shared.writer.insert_timeout, f()).await {
            Ok(Ok(ids)) => return ids,
            Ok(Err(e)) => tracing::warn!(error = %e.message, "looking up stored ids failed; retrying"),
            Err(_) => tracing::warn!("looking up stored ids timed out; retrying"),
        }
        shared.metrics.ready.store(0, Ordering::Relaxed);
        tokio::time::sleep(store::backoff(attempt)).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::RecentIds;
    use crate::server::{self, ServerConfig};
    use crate::store::CallRow;
    use std::sync::Mutex;
    use tokentap_event::LlmCall;

    /// For an insert of these rows (the nth attempt): the failure, if any, and
    /// whether the rows landed anyway (an answer lost after the commit).
    type FailWith = Box<dyn Fn(&[CallRow], usize) -> Option<(Failure, bool)> + Send + Sync>;

    /// A stand-in for ClickHouse: stores rows, and fails as `fail` says.
    #[derive(Default)]
    struct Fake {
        stored: Mutex<Vec<CallRow>>,
        attempts: Mutex<Vec<usize>>,
        fail: Option<FailWith>,
    }

    impl Store<CallRow> for Arc<Fake> {
        async fn insert(&self, rows: &[CallRow]) -> Result<(), Failed> {
            // An insert takes time, as ClickHouse's does: batches arrive meanwhile.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let n = {
                let mut a = self.attempts.lock().unwrap();
                a.push(rows.len());
                a.len()
            };
            if let Some((kind, landed)) = self.fail.as_ref().and_then(|f| f(rows, n)) {
                if landed {
                    self.stored.lock().unwrap().extend(rows.iter().cloned());
                }
                return Err(Failed { kind, message: format!("Code: 1. {kind:?}") });
            }
            self.stored.lock().unwrap().extend(rows.iter().cloned());
            Ok(())
        }

        async fn existing(&self, rows: &[CallRow]) -> Result<HashSet<u128>, Failed> {
            let stored = self.stored.lock().unwrap();
            let have: HashSet<u128> = stored.iter().map(|r| r.event_id.as_u128()).collect();
            Ok(rows.iter().map(|r| r.event_id.as_u128()).filter(|id| have.contains(id)).collect())
        }
    }

    fn row(provider: &str, day: i64) -> CallRow {
        CallRow::from_record(
            LlmCall {
                event_id: LlmCall::new_event_id(),
                ts: LlmCall::format_ts((1_763_900_000 + day * 86_400) as i128 * 1_000_000_000),
                provider: provider.into(),
                operation: "chat".into(),
                ..Default::default()
            },
            "",
        )
    }

    fn cfg() -> ServerConfig {
        ServerConfig {
            writer: WriterConfig {
                insert_timeout: Duration::from_secs(5),
                max_partitions: 10,
                bisect_budget: 64,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Admit `rows` as one batch and wait for its outcome.
    async fn send(shared: &Shared, rows: Vec<CallRow>) -> Arc<Outcome> {
        let a = shared.calls.admission.lock().unwrap().admit(rows, false).ok().expect("admitted");
        let job = a.job.expect("new rows");
        let mut rx = job.done.subscribe();
        shared.tx_for_tests().send(job).await.expect("queued");
        let out = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
        out
    }

    fn start(fake: Arc<Fake>, cfg: ServerConfig) -> Arc<Shared> {
        let (_, writer, shared) =
            server::build(cfg, fake, server::NoTraffic, RecentIds::new(10_000), RecentIds::new(1));
        tokio::spawn(writer);
        shared
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_share_inserts_and_each_is_acknowledged_once_stored() {
        let fake = Arc::new(Fake::default());
        let shared = start(fake.clone(), cfg());
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let shared = shared.clone();
                tokio::spawn(async move { send(&shared, (0..5).map(|_| row("openai", 0)).collect()).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().rejected.is_empty());
        }
        assert_eq!(fake.stored.lock().unwrap().len(), 1000);
        let inserts = fake.attempts.lock().unwrap().len();
        assert!(inserts < 200, "group commit: {inserts} inserts for 200 batches");
        assert_eq!(shared.metrics.records_inserted.load(Ordering::Relaxed), 1000);
    }

    #[tokio::test]
    async fn bad_rows_are_isolated_and_refused_the_good_ones_stored() {
        let fake = Arc::new(Fake {
            fail: Some(Box::new(|rows, _| {
                rows.iter().any(|r| r.provider == "poison").then_some((Failure::Data, false))
            })),
            ..Default::default()
        });
        let shared = start(fake.clone(), cfg());
        let mut rows: Vec<CallRow> = (0..100).map(|_| row("openai", 0)).collect();
        let bad = [3usize, 57, 58];
        for i in bad {
            rows[i].provider = "poison".into();
        }
        let bad_ids: HashSet<u128> = bad.iter().map(|i| rows[*i].event_id.as_u128()).collect();
        let out = send(&shared, rows).await;
        assert_eq!(out.rejected.keys().copied().collect::<HashSet<_>>(), bad_ids);
        assert_eq!(fake.stored.lock().unwrap().len(), 97);
        // The writer goes on: a later batch is stored.
        assert!(send(&shared, vec![row("openai", 0)]).await.rejected.is_empty());
        assert_eq!(shared.metrics.ready.load(Ordering::Relaxed), 1, "data errors are not an outage");
    }

    #[tokio::test]
    async fn a_batch_of_all_bad_rows_costs_a_bounded_number_of_attempts() {
        let fake = Arc::new(Fake { fail: Some(Box::new(|_, _| Some((Failure::Data, false)))), ..Default::default() });
        let mut c = cfg();
        c.writer.bisect_budget = 16;
        let shared = start(fake.clone(), c);
        let out = send(&shared, (0..5000).map(|_| row("openai", 0)).collect()).await;
        assert_eq!(out.rejected.len(), 5000);
        assert!(fake.attempts.lock().unwrap().len() <= 2 * 16 + 1, "{}", fake.attempts.lock().unwrap().len());
    }

    #[tokio::test]
    async fn rows_over_many_days_are_split_by_partition() {
        // ClickHouse refuses an insert spanning more than 10 partitions.
        let fake = Arc::new(Fake {
            fail: Some(Box::new(|rows, _| {
                let days: HashSet<i64> = rows.iter().map(|r| store::day_of(r.ts)).collect();
                (days.len() > 10).then_some((Failure::Data, false))
            })),
            ..Default::default()
        });
        let shared = start(fake.clone(), cfg());
        let out = send(&shared, (0..101).map(|d| row("openai", -d)).collect()).await;
        assert!(out.rejected.is_empty());
        assert_eq!(fake.stored.lock().unwrap().len(), 101);
        assert_eq!(fake.attempts.lock().unwrap().len(), 11, "ceil(101 / 10) inserts, none refused");
    }

    #[tokio::test]
    async fn an_insert_that_landed_but_lost_its_answer_is_not_stored_twice() {
        // The first attempt commits, then the answer is lost (an outage);
        // the second fails outright; the third would succeed.
        let fake = Arc::new(Fake {
            fail: Some(Box::new(|_, n| match n {
                1 => Some((Failure::Outage, true)),
                2 => Some((Failure::Outage, false)),
                _ => None,
            })),
            ..Default::default()
        });
        let shared = start(fake.clone(), cfg());
        let out = send(&shared, (0..50).map(|_| row("openai", 0)).collect()).await;
        assert!(out.rejected.is_empty());
        assert_eq!(fake.stored.lock().unwrap().len(), 50, "stored once");
        assert_eq!(shared.metrics.records_already_stored.load(Ordering::Relaxed), 50);
        assert_eq!(shared.metrics.ready.load(Ordering::Relaxed), 1, "ready again");
    }

    #[tokio::test]
    async fn an_unknown_exception_is_retried_a_few_times_then_the_rows_are_refused() {
        let fake =
            Arc::new(Fake { fail: Some(Box::new(|_, _| Some((Failure::Unknown, false)))), ..Default::default() });
        let mut c = cfg();
        c.writer.unknown_attempts = 2;
        c.writer.bisect_budget = 0;
        let shared = start(fake.clone(), c);
        let out = send(&shared, (0..3).map(|_| row("openai", 0)).collect()).await;
        assert_eq!(out.rejected.len(), 3);
        assert_eq!(fake.attempts.lock().unwrap().len(), 2);
    }

    #[test]
    fn partition_groups_respect_both_bounds() {
        let rows: Vec<CallRow> = (0..30).flat_map(|d| (0..4).map(move |_| row("openai", d))).collect();
        let groups = by_partitions(rows, 7, 10);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 120);
        for g in &groups {
            let days: HashSet<i64> = g.iter().map(|r| store::day_of(r.ts)).collect();
            assert!(days.len() <= 7 && g.len() <= 10, "{} days, {} rows", days.len(), g.len());
        }
    }
}
