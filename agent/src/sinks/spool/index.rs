//! The spool's index: sealed batches on disk, and their index in memory.
//!
//! The directory is listed once, at start (batches a previous run left, `*.tmp`
//! leftovers of a crash deleted), or, when another agent owns it at start (an
//! upgrade), once when that one has exited (see `shared`); from then on the
//! in-memory index is the truth. The sink's thread adds batches, sender threads take consecutive
//! runs of them, and each taken run ends delivered (files deleted), returned
//! (to be retried, or resent one by one) or rejected (moved to `rejected/`).
//! Every operation costs the same whatever the spool's length: no directory
//! listings after start.
//!
//! The index also holds the shared retry state: after a failed send, nothing
//! is sent until the backoff passes, then one request at a time probes the
//! receiver until it answers; then all senders go again.
//!
//! A directory belongs to one spool at a time in this process: two outputs
//! sharing one would send each other's batches.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::counters::{self, SpoolCounters};
use super::shared::DirLock;

/// What `rejected/` may hold before its oldest files are deleted.
const REJECTED_MAX_BYTES: u64 = 64 << 20;
const REJECTED_MAX_FILES: usize = 1000;

/// One sealed batch: a file of the spool directory (zstd-compressed records).
/// Only its name is kept (the batch id and record count are in it): a long
/// outage can queue hundreds of thousands of them.
#[derive(Clone, Debug)]
pub struct Batch {
    pub name: Box<str>,
    pub bytes: u64,
    /// Bytes once decompressed (a receiver may cap them per request).
    pub raw: u64,
    pub records: u64,
    /// The receiver refused a request this batch was merged into: it goes
    /// alone from now on.
    solo: bool,
    /// It may have reached the receiver before, unanswered (a failed send,
    /// or left by a previous run): sent marked as a retry.
    retried: bool,
}

impl Batch {
    /// None: not the name of a batch.
    pub fn new(name: &str, bytes: u64, raw: u64) -> Option<Self> {
        let (_, records) = parse_name(name)?;
        Some(Self { name: name.into(), bytes, raw, records, solo: false, retried: false })
    }

    /// The batch id sent with it (the same on every retry).
    pub fn id(&self) -> &str {
        id_of(&self.name).unwrap_or_default()
    }
}

/// `<unix ms>-<seq>-<batch id>-<records>.zst`: names sort oldest first.
pub fn batch_name(seq: u64, records: usize) -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("{ms:013}-{seq:08}-{}-{records}.zst", uuid::Uuid::new_v4())
}

/// A batch file name -> (batch id, records).
pub fn parse_name(name: &str) -> Option<(String, u64)> {
    let n = name.strip_suffix(".zst")?.rsplit_once('-')?.1.parse().ok()?;
    Some((id_of(name)?.to_owned(), n))
}

fn id_of(name: &str) -> Option<&str> {
    let mut parts = name.strip_suffix(".zst")?.splitn(3, '-');
    let (_, _, rest) = (parts.next()?, parts.next()?, parts.next()?);
    Some(rest.rsplit_once('-')?.0)
}

/// The batches one request carries: consecutive, oldest first.
pub struct Taken {
    batches: Vec<(u64, Batch)>,
    started: Instant,
}

impl Taken {
    pub fn batches(&self) -> impl Iterator<Item = &Batch> {
        self.batches.iter().map(|(_, b)| b)
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Never: a run holds at least one batch.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub fn records(&self) -> u64 {
        self.batches().map(|b| b.records).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.batches().map(|b| b.bytes).sum()
    }

    /// Some of it may have reached the receiver before.
    pub fn retried(&self) -> bool {
        self.batches().any(|b| b.retried)
    }
}

/// How a taken run of batches ended.
pub enum Done {
    /// The receiver holds them (all, or all it will ever take: refused rows
    /// are refused for good).
    Delivered,
    /// The receiver refused the merged request as a whole: each batch goes
    /// again on its own, so one bad batch cannot take the others with it.
    Split,
    /// The receiver refused this single batch: kept in `rejected/`.
    Rejected,
    /// Not answered (or not allowed): back to the queue, nothing sent until
    /// `after` (default: exponential backoff) has passed.
    Retry(Option<Duration>),
    /// These files (indexes into the run) vanished from the directory; the
    /// rest go back to the queue.
    Lost(Vec<usize>),
}

#[derive(Default)]
struct State {
    /// Batches waiting, by arrival: taking the oldest is taking the first keys.
    queue: BTreeMap<u64, Batch>,
    next_key: u64,
    /// Every batch in the spool, waiting or being sent.
    batches: u64,
    bytes: u64,
    /// Requests being sent.
    in_flight: u64,
    /// Consecutive failed sends, and when the next may start.
    attempt: u32,
    retry_at: Option<Instant>,
    /// When the last send failed: only an answer to a request started after
    /// it ends the backoff (one already in flight says nothing new).
    failed_at: Option<Instant>,
    stop: bool,
    /// Batches dropped for the size bound (for rate-limited logging).
    drops: u64,
    rejected: VecDeque<(PathBuf, u64)>,
    rejected_bytes: u64,
}

pub struct Spool {
    /// The output it belongs to (for logs).
    name: String,
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    cond: Condvar,
    counters: Arc<SpoolCounters>,
    /// This process's claim on `dir`, released on drop.
    _claim: Claim,
    /// Which agent owns `dir` now (see `shared`).
    shared: DirLock,
}

/// Spool directories in use in this process.
static CLAIMED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

struct Claim(PathBuf);

impl Claim {
    fn take(dir: &Path) -> io::Result<Self> {
        let dir = dir.canonicalize()?;
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        if !claimed.insert(dir.clone()) {
            return Err(io::Error::other(format!(
                "spool directory {} is already used by another output: give each output its own spool_dir",
                dir.display()
            )));
        }
        Ok(Self(dir))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        CLAIMED.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// Files of `dir` whose name ends with `suffix`, sorted by name, with sizes.
fn list(dir: &Path, suffix: &str) -> io::Result<Vec<(PathBuf, u64)>> {
    let mut v: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    v.sort();
    Ok(v)
}

/// The batches in `dir` not named in `own`, marked retried (their sender may
/// have sent them and stopped before the answer); a file that is no batch
/// goes to `rejected_dir`.
fn leftovers(dir: &Path, rejected_dir: &Path, own: &std::collections::HashSet<Box<str>>) -> io::Result<Vec<Batch>> {
    let mut out = Vec::new();
    for (path, bytes) in list(dir, ".zst")? {
        let Some(name) = path.file_name() else { continue };
        if name.to_str().is_some_and(|n| own.contains(n)) {
            continue;
        }
        // Unknown size: assume a high compression ratio (merging less, not refused).
        let raw = frame_content_size(&path).unwrap_or(bytes.saturating_mul(16));
        let Some(mut batch) = name.to_str().and_then(|n| Batch::new(n, bytes, raw)) else {
            tracing::warn!(file = %path.display(), "unknown file in the spool; moved to rejected/");
            let _ = std::fs::rename(&path, rejected_dir.join(name));
            continue;
        };
        batch.retried = true;
        out.push(batch);
    }
    Ok(out)
}

/// The decompressed size a zstd file's frame header declares.
fn frame_content_size(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = Vec::with_capacity(18);
    std::fs::File::open(path).ok()?.take(18).read_to_end(&mut head).ok()?;
    zstd::zstd_safe::get_frame_content_size(&head).ok().flatten()
}

/// 100 ms doubling to 10 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.saturating_sub(1).min(7)).min(10_000))
}

impl Spool {
    /// Index what a previous run left in `dir` (created). `output`: the
    /// output's name, for logs.
    pub fn open(output: &str, dir: &Path, max_bytes: u64, counters: Arc<SpoolCounters>) -> io::Result<Self> {
        let rejected_dir = dir.join("rejected");
        std::fs::create_dir_all(&rejected_dir)?;
        let claim = Claim::take(dir)?;
        let shared = DirLock::open(dir)?;
        let mut st = State::default();
        if shared.owned() {
            // A batch half-written by a crash is not a batch.
            for (p, _) in list(dir, ".tmp")? {
                let _ = std::fs::remove_file(p);
            }
            for batch in leftovers(dir, &rejected_dir, &Default::default())? {
                st.batches += 1;
                st.bytes += batch.bytes;
                st.queue.insert(st.next_key, batch);
                st.next_key += 1;
            }
            st.rejected = list(&rejected_dir, "")?.into();
            st.rejected_bytes = st.rejected.iter().map(|(_, n)| n).sum();
        } else {
            tracing::info!(output, dir = %dir.display(), "another agent owns the spool (an upgrade): what it leaves is sent once it exits");
        }
        if st.batches > 0 {
            tracing::info!(
                output,
                batches = st.batches,
                bytes = st.bytes,
                "spool has batches from a previous run; sending them"
            );
        }
        let spool = Self {
            name: output.to_owned(),
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::new(st),
            cond: Condvar::new(),
            counters,
            _claim: claim,
            shared,
        };
        {
            let mut st = spool.lock();
            spool.trim_rejected(&mut st);
            spool.enforce_bound(&mut st);
            spool.publish(&st);
        }
        if spool.shared.owned() {
            spool.recover_journals();
        }
        Ok(spool)
    }

    pub fn path(&self, b: &Batch) -> PathBuf {
        self.dir.join(&*b.name)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Add a sealed batch: `body` (zstd, `raw` bytes once decompressed) is
    /// written to a temporary file, renamed into place, then indexed. `seq`
    /// orders batches sealed in the same millisecond.
    pub fn write(&self, seq: u64, records: usize, raw: u64, body: &[u8]) -> io::Result<()> {
        let name = batch_name(seq, records);
        let batch = Batch::new(&name, body.len() as u64, raw).ok_or_else(|| io::Error::other("bad batch name"))?;
        let tmp = self.dir.join(format!("{name}.tmp"));
        self.shared.place(&name, || {
            let written = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, self.dir.join(&name)));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written
        })?;
        self.push(batch);
        Ok(())
    }

    /// When another agent owned the directory at start: once it has exited,
    /// index the batches it left (the sink calls this often; it costs a
    /// lock try a second while waiting, nothing after).
    pub fn adopt(&self) {
        let rejected_dir = self.dir.join("rejected");
        let mut found = Vec::new();
        let adopted = self.shared.adopt(|own| match leftovers(&self.dir, &rejected_dir, own) {
            Ok(b) => found = b,
            Err(e) => tracing::warn!(output = %self.name, error = %e, "listing the spool"),
        });
        if !adopted {
            return;
        }
        let (n, bytes) = (found.len(), found.iter().map(|b| b.bytes).sum::<u64>());
        for b in found {
            self.push(b);
        }
        let mut st = self.lock();
        st.rejected = list(&rejected_dir, "").unwrap_or_default().into();
        st.rejected_bytes = st.rejected.iter().map(|(_, n)| n).sum();
        self.trim_rejected(&mut st);
        drop(st);
        tracing::info!(output = %self.name, batches = n, bytes, "the spool's previous owner exited: its batches adopted");
        self.recover_journals();
    }

    /// The open batches killed agents left in their journals, as batches.
    fn recover_journals(&self) {
        let write = |records, raw, body: &[u8]| self.write(0, records, raw, body);
        super::journal::recover(&self.dir, &self.name, &self.counters, write);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, st: &State) {
        counters::set(&self.counters.spool_bytes, st.bytes);
        counters::set(&self.counters.spool_batches, st.batches);
        counters::set(&self.counters.in_flight, st.in_flight);
    }

    /// A batch just sealed (its file is in place).
    fn push(&self, batch: Batch) {
        let mut st = self.lock();
        st.batches += 1;
        st.bytes += batch.bytes;
        let key = st.next_key;
        st.next_key += 1;
        st.queue.insert(key, batch);
        self.enforce_bound(&mut st);
        self.publish(&st);
        drop(st);
        self.cond.notify_all();
    }

    /// Drop the oldest waiting batches while the spool is over its bound
    /// (batches being sent stay).
    fn enforce_bound(&self, st: &mut State) {
        while st.bytes > self.max_bytes {
            let Some((_, b)) = st.queue.pop_first() else { break };
            let _ = std::fs::remove_file(self.path(&b));
            st.bytes -= b.bytes;
            st.batches -= 1;
            st.drops += 1;
            counters::add(&self.counters.spool_dropped_records, b.records);
            if st.drops % 100 == 1 {
                tracing::warn!(
                    output = %self.name,
                    records = b.records,
                    batches_dropped = st.drops,
                    max_bytes = self.max_bytes,
                    "spool full: oldest batch dropped"
                );
            }
        }
    }

    /// The next run of batches to send (at most `max_records`, `max_bytes`
    /// compressed and `max_raw` decompressed, but at least one batch); blocks
    /// until there is one and sending is allowed. None once stopped.
    pub fn take(&self, max_records: u64, max_bytes: u64, max_raw: u64) -> Option<Taken> {
        let mut st = self.lock();
        loop {
            if st.stop {
                return None;
            }
            let now = Instant::now();
            let backing_off = st.retry_at.filter(|t| *t > now);
            // While failing, a single request probes the receiver.
            let probing = st.attempt > 0 && st.in_flight > 0;
            if !st.queue.is_empty() && backing_off.is_none() && !probing {
                let mut batches: Vec<(u64, Batch)> = Vec::new();
                let (mut records, mut bytes, mut raw) = (0, 0, 0);
                while let Some(e) = st.queue.first_entry() {
                    let b = e.get();
                    if let Some((_, first)) = batches.first() {
                        if first.solo
                            || b.solo
                            || records + b.records > max_records
                            || bytes + b.bytes > max_bytes
                            || raw + b.raw > max_raw
                        {
                            break;
                        }
                    }
                    records += b.records;
                    bytes += b.bytes;
                    raw += b.raw;
                    batches.push(e.remove_entry());
                }
                st.in_flight += 1;
                self.publish(&st);
                return Some(Taken { batches, started: now });
            }
            st = match backing_off {
                Some(t) => self.cond.wait_timeout(st, t - now).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0),
                None => self.cond.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// The end of a taken run. Returns the number of consecutive failed sends.
    pub fn done(&self, taken: Taken, how: Done) -> u32 {
        let mut st = self.lock();
        st.in_flight -= 1;
        let forget = |st: &mut State, b: &Batch| {
            st.batches -= 1;
            st.bytes -= b.bytes;
        };
        if !matches!(how, Done::Retry(_) | Done::Lost(_)) && st.failed_at.is_none_or(|f| taken.started >= f) {
            (st.attempt, st.retry_at, st.failed_at) = (0, None, None);
        }
        match how {
            Done::Delivered => {
                for (_, b) in &taken.batches {
                    let _ = std::fs::remove_file(self.path(b));
                    forget(&mut st, b);
                }
            }
            Done::Split => {
                for (k, mut b) in taken.batches {
                    b.solo = true;
                    st.queue.insert(k, b);
                }
            }
            Done::Rejected => {
                for (_, b) in &taken.batches {
                    forget(&mut st, b);
                    let to = self.dir.join("rejected").join(&*b.name);
                    match std::fs::rename(self.path(b), &to) {
                        Ok(()) => {
                            st.rejected.push_back((to, b.bytes));
                            st.rejected_bytes += b.bytes;
                        }
                        Err(e) => {
                            tracing::warn!(output = %self.name, error = %e, file = %b.name, "could not move to rejected/")
                        }
                    }
                }
                self.trim_rejected(&mut st);
            }
            Done::Retry(after) => {
                let now = Instant::now();
                st.attempt = st.attempt.saturating_add(1);
                st.retry_at = Some(now + after.unwrap_or_else(|| backoff(st.attempt)));
                st.failed_at = Some(now);
                for (k, mut b) in taken.batches {
                    b.retried = true;
                    st.queue.insert(k, b);
                }
            }
            Done::Lost(lost) => {
                for (i, (k, b)) in taken.batches.into_iter().enumerate() {
                    if lost.contains(&i) {
                        tracing::warn!(output = %self.name, file = %b.name, "spooled batch vanished from the spool directory");
                        counters::add(&self.counters.spool_dropped_records, b.records);
                        forget(&mut st, &b);
                    } else {
                        st.queue.insert(k, b);
                    }
                }
            }
        }
        let attempt = st.attempt;
        self.publish(&st);
        drop(st);
        self.cond.notify_all();
        attempt
    }

    /// Keep `rejected/` within its bound: the oldest files go first.
    fn trim_rejected(&self, st: &mut State) {
        let mut deleted = 0;
        while st.rejected.len() > REJECTED_MAX_FILES || st.rejected_bytes > REJECTED_MAX_BYTES {
            let Some((path, bytes)) = st.rejected.pop_front() else { break };
            st.rejected_bytes -= bytes;
            let _ = std::fs::remove_file(&path);
            deleted += 1;
        }
        if deleted > 0 {
            tracing::warn!(
                output = %self.name,
                deleted,
                kept = st.rejected.len(),
                "rejected/ full: oldest rejected batches deleted"
            );
        }
    }

    /// Wait until every batch is delivered (or dropped), or `deadline`.
    /// Returns the batches left.
    pub fn wait_empty(&self, deadline: Instant) -> u64 {
        self.wait_until(deadline, |st| st.batches == 0).batches
    }

    /// Wait until no request is in flight, or `deadline`. Returns those left.
    pub fn wait_idle(&self, deadline: Instant) -> u64 {
        self.wait_until(deadline, |st| st.in_flight == 0).in_flight
    }

    fn wait_until(&self, deadline: Instant, done: impl Fn(&State) -> bool) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            if done(&st) || now >= deadline {
                return st;
            }
            st = self.cond.wait_timeout(st, deadline - now).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Senders finish their request in flight and take no more.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.cond.notify_all();
    }

    /// Waiting batches (path, bytes), by name: what the directory should hold
    /// when nothing is in flight.
    #[cfg(test)]
    pub fn index(&self) -> Vec<(PathBuf, u64)> {
        let mut v: Vec<(PathBuf, u64)> = self.lock().queue.values().map(|b| (self.path(b), b.bytes)).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests;
