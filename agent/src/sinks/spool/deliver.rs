//! Delivery: sender threads take runs of consecutive batches from the spool,
//! hand their files concatenated to a [`Transport`] (zstd frames concatenate
//! into one valid stream: nothing is re-encoded), and settle the batches by
//! the [`Outcome`]:
//!
//! - `Delivered`: durable; deleted.
//! - `Partial`: the accepted records are durable, the others refused for good;
//!   deleted, never resent.
//! - `Refused`: nothing written. A merged request is resent one batch at a
//!   time; a single batch is moved to `rejected/`.
//! - `Unauthorized`: configuration (a wrong or rotated credential): retried,
//!   never rejected.
//! - `Retry`: retried with backoff (or after the receiver's delay), marked as
//!   a retry (the first copy may have been stored).
//!
//! Counts are made before the spool changes: whoever sees the spool settled
//! sees the counts. [`Delivery`] puts a [`Batcher`] and the senders together
//! and, when dropped, seals the open batch, waits for the spool to drain (up
//! to the drain timeout) and stops the senders; what is left is sent by the
//! next run.
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::batcher::{BatchLimits, Batcher};
use super::counters::{self, SpoolCounters};
use super::index::{Done, Spool, Taken};

/// How long, after the drain timeout, requests in flight may take to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What one request may carry (at least one batch is always sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    pub records: u64,
    /// Compressed bytes.
    pub bytes: u64,
    /// Bytes once decompressed.
    pub raw_bytes: u64,
}

/// One request: a run of consecutive batches.
#[derive(Debug)]
pub struct Request<'a> {
    /// The batch's id, or for merged batches one derived from theirs (the
    /// same batches give the same id), so a receiver can tell a copy it
    /// already stored.
    pub id: &'a str,
    /// Some of it may have reached the receiver before, unanswered.
    pub retried: bool,
    /// The batch files concatenated: one zstd stream of the records as the
    /// sink encoded them.
    pub body: &'a [u8],
    pub records: u64,
    pub batches: usize,
}

/// What the receiver's answer means for the batches of a request.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Delivered,
    /// `accepted` records (new and duplicates) are durable, `rejected`
    /// refused for good.
    Partial {
        accepted: u64,
        rejected: u64,
        reasons: Vec<String>,
    },
    /// Nothing written: the request as a whole is malformed or too large.
    Refused {
        status: u16,
        why: String,
    },
    /// The credentials are wrong; retried until they are fixed.
    Unauthorized {
        status: u16,
        why: String,
    },
    /// Not answered, or not now: retried after `after` (default: backoff).
    Retry {
        why: String,
        after: Option<Duration>,
    },
}

/// How a spooled sink reaches its receiver. Called from several sender
/// threads at once.
pub trait Transport: Send + Sync + 'static {
    fn limits(&self) -> RequestLimits;
    fn send(&self, request: &Request<'_>) -> Outcome;
}

/// Where and how a spooled sink keeps and sends its batches.
#[derive(Clone, Debug, PartialEq)]
pub struct SpoolOptions {
    /// The output's name (for logs).
    pub name: String,
    /// The sink kind: sender threads are named `<kind>-<n>`.
    pub kind: &'static str,
    pub dir: PathBuf,
    /// Past it the oldest waiting batches are dropped (counted).
    pub max_bytes: u64,
    pub batch: BatchLimits,
    /// Requests sent at once (at least 1).
    pub senders: usize,
    /// How long a drop waits for the spool to drain.
    pub drain_timeout: Duration,
}

/// A batcher and its sender threads over one spool.
pub struct Delivery {
    batcher: Batcher,
    // Dropped after `Drop::drop` sealed the open batch: drains, then stops.
    senders: Senders,
}

impl Delivery {
    pub fn open(opts: &SpoolOptions, transport: Arc<dyn Transport>, counters: Arc<SpoolCounters>) -> io::Result<Self> {
        // Named, or a spool directory's fault reads as the receiver's.
        let spool = Spool::open(&opts.name, &opts.dir, opts.max_bytes, counters.clone())
            .map_err(|e| io::Error::new(e.kind(), format!("spool directory {}: {e}", opts.dir.display())))?;
        let spool = Arc::new(spool);
        let senders = Senders::spawn(opts, spool.clone(), transport, counters.clone())?;
        Ok(Self { batcher: Batcher::new(spool, counters, opts.batch), senders })
    }

    /// Add one record (see [`Batcher::push`]).
    pub fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        let pushed = self.batcher.push(encode);
        pushed.map_err(|e| self.named(e))
    }

    /// Seal the open batch if it is old enough.
    pub fn flush(&mut self) -> io::Result<()> {
        self.senders.spool.adopt();
        let flushed = self.batcher.flush();
        flushed.map_err(|e| self.named(e))
    }

    /// An error that says which output and spool it befell (the pipeline
    /// logs it without knowing).
    fn named(&self, e: io::Error) -> io::Error {
        let spool = &self.senders.spool;
        io::Error::new(e.kind(), format!("output {} (spool {}): {e}", spool.name(), spool.dir().display()))
    }

    /// The agent exits since `since`: seal the open batch now, so that the
    /// senders take it while other outputs close, and drain until `since` plus
    /// the drain timeout when dropped (not from the drop: a sink's deliveries,
    /// and the outputs, are dropped one after another).
    pub fn closing(&mut self, since: Instant) {
        if let Err(e) = self.batcher.seal() {
            tracing::warn!(output = %self.senders.spool.name(), error = %e, "could not spool the last batch");
        }
        self.senders.deadline = Some(since + self.senders.drain_timeout);
    }

    /// Records in the open batch.
    pub fn buffered(&self) -> usize {
        self.batcher.buffered()
    }

    /// Waiting batches (path, bytes), by name.
    #[cfg(test)]
    pub fn index(&self) -> Vec<(PathBuf, u64)> {
        self.senders.spool.index()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Err(e) = self.batcher.seal() {
            tracing::warn!(output = %self.senders.spool.name(), error = %e, "could not spool the last batch");
        }
    }
}

struct Senders {
    spool: Arc<Spool>,
    threads: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
    /// Set by [`Delivery::closing`]; else the drain runs from the drop.
    deadline: Option<Instant>,
}

impl Senders {
    fn spawn(
        opts: &SpoolOptions,
        spool: Arc<Spool>,
        transport: Arc<dyn Transport>,
        counters: Arc<SpoolCounters>,
    ) -> io::Result<Self> {
        let mut senders =
            Self { spool: spool.clone(), threads: Vec::new(), drain_timeout: opts.drain_timeout, deadline: None };
        for i in 0..opts.senders.max(1) {
            let (spool, transport, counters) = (spool.clone(), transport.clone(), counters.clone());
            let h = std::thread::Builder::new()
                .name(format!("{}-{i}", opts.kind))
                .spawn(move || send_loop(&spool, &*transport, &counters));
            match h {
                Ok(h) => senders.threads.push(h),
                Err(e) => {
                    senders.drain_timeout = Duration::ZERO;
                    return Err(e);
                }
            }
        }
        Ok(senders)
    }
}

impl Drop for Senders {
    fn drop(&mut self) {
        // Give the senders a moment to drain, then leave the rest for the next run.
        self.spool.wait_empty(self.deadline.unwrap_or_else(|| Instant::now() + self.drain_timeout));
        self.spool.stop();
        let busy = self.spool.wait_idle(Instant::now() + STOP_GRACE);
        for h in self.threads.drain(..) {
            // A sender stuck in a request is left behind rather than holding up exit.
            if busy == 0 || h.is_finished() {
                let _ = h.join();
            }
        }
        let left = self.spool.wait_empty(Instant::now());
        if left > 0 {
            tracing::warn!(
                output = %self.spool.name(),
                batches = left,
                dir = %self.spool.dir().display(),
                "batches left in the spool for the next run"
            );
        }
    }
}

/// The batch id of a request: the batch's own, or for a merged request one
/// derived from its parts (the same parts give the same id on a retry).
pub(super) fn request_id(taken: &Taken) -> String {
    let ids: Vec<&str> = taken.batches().map(|b| b.id()).collect();
    if let [one] = ids[..] {
        return one.to_owned();
    }
    let mut h = Sha256::new();
    for id in &ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize()[..16]);
    // A UUID of version 8 (custom), like the batch ids it stands for.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

/// Read the run's files into one body. Err: the indexes of files that vanished.
fn read_bodies(spool: &Spool, taken: &Taken) -> Result<Vec<u8>, Result<Vec<usize>, io::Error>> {
    let mut body = Vec::with_capacity(taken.bytes() as usize);
    let mut lost = Vec::new();
    for (i, b) in taken.batches().enumerate() {
        match std::fs::File::open(spool.path(b)).and_then(|mut f| f.read_to_end(&mut body)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => lost.push(i),
            Err(e) => return Err(Err(e)),
        }
    }
    if lost.is_empty() {
        Ok(body)
    } else {
        Err(Ok(lost))
    }
}

/// One sender thread: take, send, settle; until the spool stops.
fn send_loop(spool: &Spool, transport: &dyn Transport, counters: &SpoolCounters) {
    let l = transport.limits();
    while let Some(taken) = spool.take(l.records.max(1), l.bytes, l.raw_bytes) {
        let outcome = match read_bodies(spool, &taken) {
            Ok(body) => {
                let id = request_id(&taken);
                let req = Request {
                    id: &id,
                    retried: taken.retried(),
                    body: &body,
                    records: taken.records(),
                    batches: taken.len(),
                };
                transport.send(&req)
            }
            Err(Ok(lost)) => {
                spool.done(taken, Done::Lost(lost));
                continue;
            }
            Err(Err(e)) => Outcome::Retry { why: format!("reading the spool: {e}"), after: None },
        };
        settle(spool, taken, outcome, counters);
    }
}

fn settle(spool: &Spool, taken: Taken, outcome: Outcome, c: &SpoolCounters) {
    let (files, records, output) = (taken.len() as u64, taken.records(), spool.name());
    match outcome {
        // Counted before the spool changes: whoever sees the spool settled sees the counts.
        Outcome::Delivered => {
            counters::add(&c.batches_sent, files);
            counters::add(&c.records_sent, records);
            spool.done(taken, Done::Delivered);
        }
        Outcome::Partial { accepted, rejected, reasons } => {
            counters::add(&c.batches_sent, files);
            counters::add(&c.records_sent, accepted);
            counters::add(&c.records_rejected, rejected);
            spool.done(taken, Done::Delivered);
            tracing::error!(output, accepted, rejected, first = ?reasons, "some records refused for good");
        }
        Outcome::Refused { status, why } if files > 1 => {
            spool.done(taken, Done::Split);
            tracing::warn!(output, status, %why, batches = files, "merged request refused; sending its batches one by one");
        }
        Outcome::Refused { status, why } => {
            let file = taken.batches().next().map(|b| b.name.to_string()).unwrap_or_default();
            counters::add(&c.batches_rejected, 1);
            counters::add(&c.records_rejected, records);
            spool.done(taken, Done::Rejected);
            tracing::error!(output, status, %why, %file, records, "batch rejected; kept in rejected/");
        }
        Outcome::Unauthorized { status, why } => {
            counters::add(&c.send_errors, 1);
            let attempt = spool.done(taken, Done::Retry(None));
            if attempt % 10 == 1 {
                tracing::error!(output, status, %why, attempt, "credentials refused; batches kept in the spool");
            }
        }
        Outcome::Retry { why, after } => {
            counters::add(&c.send_errors, 1);
            let attempt = spool.done(taken, Done::Retry(after));
            if attempt % 10 == 1 {
                tracing::warn!(output, %why, attempt, "receiver unavailable; batches kept in the spool");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;
    use std::sync::Mutex;

    use super::*;
    use crate::sinks::spool::counters::get;

    /// Refuses the first request of two batches or more, then takes all:
    /// records (one per line) are kept in order of arrival.
    struct Sent {
        id: String,
        retried: bool,
        lines: Vec<String>,
    }

    #[derive(Default)]
    struct Memory {
        got: Mutex<Vec<Sent>>,
    }

    impl Transport for Memory {
        fn limits(&self) -> RequestLimits {
            RequestLimits { records: 100, bytes: 1 << 20, raw_bytes: 1 << 20 }
        }

        fn send(&self, r: &Request<'_>) -> Outcome {
            let text = String::from_utf8(zstd::stream::decode_all(r.body).unwrap()).unwrap();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            assert_eq!(lines.len() as u64, r.records);
            let mut got = self.got.lock().unwrap();
            let first = got.is_empty();
            assert!(r.batches >= 1);
            got.push(Sent { id: r.id.to_owned(), retried: r.retried, lines });
            if first {
                Outcome::Retry { why: "not yet".into(), after: Some(Duration::ZERO) }
            } else {
                Outcome::Delivered
            }
        }
    }

    #[test]
    fn any_transport_gets_runs_of_batches_and_settles_them() {
        let dir = std::env::temp_dir().join(format!("tt-spool-deliver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts_at = |dir: &Path| SpoolOptions {
            name: "memory".into(),
            kind: "memory",
            dir: dir.into(),
            max_bytes: 1 << 20,
            batch: BatchLimits { records: 2, bytes: 1 << 20, age: Duration::from_secs(3600) },
            senders: 1,
            drain_timeout: Duration::from_secs(10),
        };
        let opts = opts_at(&dir);
        let transport = Arc::new(Memory::default());
        let counters = Arc::new(SpoolCounters::default());
        // A spool directory that cannot be made is named: not the receiver's fault.
        let file = dir.with_extension("file");
        std::fs::write(&file, b"").unwrap();
        let e = Delivery::open(&opts_at(&file), transport.clone(), counters.clone()).err().expect("refused");
        assert!(e.to_string().starts_with(&format!("spool directory {}: ", file.display())), "{e}");
        let _ = std::fs::remove_file(&file);
        let mut d = Delivery::open(&opts, transport.clone(), counters.clone()).unwrap();
        for i in 0..5 {
            d.push(|b| {
                b.extend_from_slice(format!("r{i}\n").as_bytes());
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(d.buffered(), 1, "two batches of two sealed, one record open");
        let e = d.push(|_| Err(io::Error::other("cannot encode"))).unwrap_err().to_string();
        assert_eq!(e, format!("output memory (spool {}): cannot encode", dir.display()), "named");
        assert_eq!(d.buffered(), 1, "a record that fails to encode is not kept");
        drop(d); // seals the last one, drains
        let got = transport.got.lock().unwrap();
        let delivered: Vec<&str> = got[1..].iter().flat_map(|s| s.lines.iter().map(String::as_str)).collect();
        assert_eq!(delivered, ["r0", "r1", "r2", "r3", "r4"], "everything once, in order, after the retry");
        assert!(got[1].retried, "the resent run is marked as a retry");
        assert!(got.iter().all(|s| uuid::Uuid::parse_str(&s.id).is_ok()), "each run has a batch id");
        assert_eq!((get(&counters.records_sent), get(&counters.send_errors)), (5, 1));
        assert_eq!((get(&counters.spool_batches), get(&counters.in_flight)), (0, 0));
    }

    /// Refuses every run: what is spooled stays.
    struct Down;

    impl Transport for Down {
        fn limits(&self) -> RequestLimits {
            RequestLimits { records: 100, bytes: 1 << 20, raw_bytes: 1 << 20 }
        }

        fn send(&self, _: &Request<'_>) -> Outcome {
            Outcome::Retry { why: "down".into(), after: Some(Duration::from_secs(3600)) }
        }
    }

    #[test]
    fn closing_seals_the_open_batch_and_counts_the_drain_from_the_exit() {
        let dir = std::env::temp_dir().join(format!("tt-spool-closing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = SpoolOptions {
            name: "down".into(),
            kind: "down",
            dir: dir.clone(),
            max_bytes: 1 << 20,
            batch: BatchLimits { records: 100, bytes: 1 << 20, age: Duration::from_secs(3600) },
            senders: 1,
            drain_timeout: Duration::from_secs(600),
        };
        let counters = Arc::new(SpoolCounters::default());
        let mut d = Delivery::open(&opts, Arc::new(Down), counters.clone()).unwrap();
        d.push(|b| b.write_all(b"r0\n")).unwrap();
        assert_eq!(d.buffered(), 1);
        // An exit that began a drain timeout ago (another output used it up).
        let since = Instant::now() - opts.drain_timeout;
        d.closing(since);
        assert_eq!(d.buffered(), 0, "sealed at once, for the senders to take while others close");
        assert_eq!(d.senders.deadline, Some(since + opts.drain_timeout));
        assert_eq!(d.index().len(), 1);
        drop(d); // no drain left: the batch stays for the next run
        assert_eq!(get(&counters.spool_batches), 1);
        let left = std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.path().is_file()).count();
        assert!(left >= 1, "the batch is on disk for the next run");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
