//! The ingest endpoint: checks a batch, admits its new rows and answers once
//! they are stored in ClickHouse.
//!
//! The token is checked from the headers before any of the body is read; the
//! body is read within a deadline and a budget of bytes shared by all
//! requests (503 beyond it), and decoded on a bounded number of threads. An
//! agent's batch is acknowledged (200) only once its rows are stored: until
//! then the agent keeps it in its spool, so a collector crash loses nothing.
//! Rows ClickHouse refuses for good are named in a 422; the rest are stored.
//! Memory is bounded by `max_queue_records` (503 with `Retry-After` beyond).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokentap_event::wire::{self, WireError};
use tokio::sync::{mpsc, Semaphore};

use crate::admission::{Admission, Job, Refused};
use crate::dedup::RecentIds;
use crate::metrics::Metrics;
use crate::row::StoredRow;
use crate::store::CallRow;
use crate::traffic::TrafficRow;
use crate::writer::{self, Store, WriterConfig};

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Bearer token agents must send; None: no authentication (tests, a trusted network).
    pub token: Option<String>,
    /// Largest request body (compressed) and batch (decompressed).
    pub max_body_bytes: usize,
    pub max_batch_bytes: usize,
    /// Body bytes all requests may hold at once while reading and decoding.
    pub max_inflight_bytes: usize,
    /// How long reading one request body may take.
    pub body_timeout: Duration,
    /// How long an agent waits for its rows to be stored before a 503 (its
    /// retry then waits for the same rows; it never queues them twice).
    pub ack_timeout: Duration,
    /// Records accepted but not yet in ClickHouse, at most.
    pub max_queue_records: usize,
    /// Event ids remembered for deduplication.
    pub dedup_window: usize,
    /// Days of rows the table keeps: older records are refused.
    pub retention_days: u32,
    pub writer: WriterConfig,
    /// Prices of OTLP spans' calls (`/v1/traces`): the agents' table, with the
    /// same overrides (`--prices`).
    pub prices: Arc<tokentap_event::PriceTable>,
    /// How long after its call ended an OTLP span waits before it is stored,
    /// so an agent's record of the same call arriving meanwhile wins.
    pub otlp_hold: Duration,
    /// Calls (provider family + response id) remembered to match agents'
    /// records with OTLP spans.
    pub otlp_match_keys: usize,
    /// Prompts and conversations remembered to find repeats, each.
    pub repeat_keys: usize,
    /// How long the answer to "were spans stored in the last day?" is kept:
    /// while none were, agents' batches are not checked against other
    /// replicas' spans.
    pub otlp_peer_refresh: Duration,
    /// (service, model, provider) series of the spend counters, at most.
    pub spend_series_max: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
            max_body_bytes: 32 << 20,
            max_batch_bytes: 64 << 20,
            max_inflight_bytes: 256 << 20,
            body_timeout: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(30),
            max_queue_records: 200_000,
            dedup_window: 1_000_000,
            retention_days: 395,
            writer: WriterConfig::default(),
            prices: Arc::new(tokentap_event::PriceTable::shipped()),
            otlp_hold: Duration::from_secs(3),
            otlp_match_keys: 1_000_000,
            repeat_keys: 1_000_000,
            otlp_peer_refresh: Duration::from_secs(60),
            spend_series_max: 1000,
        }
    }
}

/// One row kind's way to ClickHouse: its admission (ids stored, in flight)
/// and the queue its writer takes jobs from.
pub struct Lane<R> {
    tx: mpsc::Sender<Job<R>>,
    pub admission: Mutex<Admission<R>>,
}

impl<R: StoredRow> Lane<R> {
    fn new(recent: RecentIds, max_queue: usize) -> (Self, mpsc::Receiver<Job<R>>) {
        let (tx, rx) = mpsc::channel::<Job<R>>(4096);
        (Self { tx, admission: Mutex::new(Admission::new(recent, max_queue)) }, rx)
    }
}

pub struct Shared {
    pub cfg: ServerConfig,
    pub writer: WriterConfig,
    /// Call records (`/v1/records` -> `llm_calls`).
    pub calls: Lane<CallRow>,
    /// LLM traffic rows (`/v1/traffic` -> `llm_traffic`).
    pub traffic: Lane<TrafficRow>,
    /// OTLP ingest's state: the calls seen by agents and by spans, spans held.
    pub otlp: crate::otlp::Otlp,
    /// Repeated prompts and conversation turns of the call rows.
    pub repeats: Mutex<crate::repeats::Repeats>,
    inflight: AtomicU64,
    pub(crate) decoders: Semaphore,
    pub metrics: Metrics,
}

/// The router, the writers' future (run both) and the shared state. Each row
/// kind has its store and the ids stored recently.
pub fn build<S: Store<CallRow>, T: Store<TrafficRow>>(
    cfg: ServerConfig,
    store: S,
    traffic_store: T,
    recent: RecentIds,
    recent_traffic: RecentIds,
) -> (Router, impl std::future::Future<Output = ()>, Arc<Shared>) {
    let (calls, rx) = Lane::new(recent, cfg.max_queue_records);
    let (traffic, traffic_rx) = Lane::new(recent_traffic, cfg.max_queue_records);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
    let shared = Arc::new(Shared {
        writer: cfg.writer.clone(),
        calls,
        traffic,
        otlp: crate::otlp::Otlp::new(cfg.otlp_match_keys, cfg.otlp_peer_refresh),
        repeats: Mutex::new(crate::repeats::Repeats::new(cfg.repeat_keys)),
        cfg,
        inflight: AtomicU64::new(0),
        decoders: Semaphore::new(threads),
        metrics: Metrics::default(),
    });
    shared.metrics.ready.store(1, Ordering::Relaxed);
    shared.metrics.spend.set_max_series(shared.cfg.spend_series_max);
    let writers = {
        let calls = writer::run(Arc::new(store), shared.clone(), rx);
        let traffic = writer::run(Arc::new(traffic_store), shared.clone(), traffic_rx);
        async move {
            tokio::join!(calls, traffic);
        }
    };
    let app = Router::new()
        .route(wire::PATH, post(ingest::<CallRow>))
        .route(wire::TRAFFIC_PATH, post(ingest::<TrafficRow>))
        .route(crate::otlp::PATH, post(crate::otlp::endpoint::traces))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared.clone());
    (app, writers, shared)
}

#[cfg(test)]
impl Shared {
    pub fn tx_for_tests(&self) -> &mpsc::Sender<Job<CallRow>> {
        &self.calls.tx
    }
}

/// A traffic store for tests about records: takes every row, keeps none.
#[cfg(test)]
pub struct NoTraffic;

#[cfg(test)]
impl Store<TrafficRow> for NoTraffic {
    async fn insert(&self, _: &[TrafficRow]) -> Result<(), writer::Failed> {
        Ok(())
    }

    async fn existing(&self, _: &[TrafficRow]) -> Result<std::collections::HashSet<u128>, writer::Failed> {
        Ok(Default::default())
    }
}

fn reject(shared: &Shared, status: StatusCode, reason: &'static str, msg: String) -> Response {
    shared.metrics.reject(reason);
    tracing::debug!(reason, %msg, "batch rejected");
    (status, Json(serde_json::json!({"error": msg, "reason": reason}))).into_response()
}

/// Why a request is refused, before it is answered: each endpoint answers in
/// its own form (the wire's JSON, OTLP's Status).
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    /// The `reason` label of `batches_rejected_total`.
    pub reason: &'static str,
    pub msg: String,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, msg: impl Into<String>) -> Self {
        Self { status, reason, msg: msg.into() }
    }

    pub fn busy(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", msg)
    }

    pub fn too_large(max: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("body larger than {max} bytes"))
    }

    /// The wire endpoints' answer.
    fn respond(self, shared: &Shared) -> Response {
        if self.reason == "busy" {
            return busy(shared, &self.msg);
        }
        reject(shared, self.status, self.reason, self.msg)
    }
}

/// Constant-time comparison, so the token can't be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Body bytes reserved from the shared budget, given back on drop.
pub(crate) struct Reserved<'a> {
    shared: &'a Shared,
    n: u64,
}

impl<'a> Reserved<'a> {
    fn take(shared: &'a Shared, n: u64) -> Option<Self> {
        let max = shared.cfg.max_inflight_bytes as u64;
        shared
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| (cur + n <= max).then_some(cur + n))
            .ok()?;
        shared.metrics.inflight_bytes.store(shared.inflight.load(Ordering::Relaxed), Ordering::Relaxed);
        Some(Self { shared, n })
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let left = self.shared.inflight.fetch_sub(self.n, Ordering::AcqRel) - self.n;
        self.shared.metrics.inflight_bytes.store(left, Ordering::Relaxed);
    }
}

/// Bytes of an unread body read and dropped before an early answer, at most.
const DRAIN_BYTES: usize = 64 << 10;

/// Read and drop the start of a body we answer without reading: closing a
/// socket with unread bytes resets it, and the client may then lose the
/// answer (a 401 it should act on). Bounded in bytes and time.
pub(crate) async fn drain(body: Body) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match body.frame().await {
                Some(Ok(f)) => left = left.saturating_sub(f.data_ref().map_or(0, |d| d.len())),
                _ => break,
            }
        }
    })
    .await;
}

/// Which endpoint's rules the headers are checked by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Speaks {
    /// tokentap's wire (`/v1/records`, `/v1/traffic`): its version header, zstd.
    Wire,
    /// OTLP/HTTP (`/v1/traces`): gzip too, no wire version.
    Otlp,
}

/// Checks that need only the headers: token, wire version, encoding, size.
/// Ok: the content length (if given) and encoding.
pub(crate) fn check_headers(
    shared: &Shared,
    headers: &HeaderMap,
    speaks: Speaks,
) -> Result<(Option<u64>, Option<String>), Refusal> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(token) = &shared.cfg.token {
        let given = header("authorization").and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token"));
        }
    }
    if let Some(v) = header(wire::HEADER_VERSION).filter(|v| *v != wire::VERSION && speaks == Speaks::Wire) {
        let msg = format!("wire version {v} not supported (this collector speaks {})", wire::VERSION);
        return Err(Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "version", msg));
    }
    let encoding = header("content-encoding").map(str::to_owned);
    let unsupported = match speaks {
        Speaks::Wire => encoding
            .as_deref()
            .filter(|e| !matches!(e.trim(), "zstd" | "identity" | ""))
            .map(|e| WireError::Encoding(e.to_owned()).to_string()),
        Speaks::Otlp => crate::otlp::decode::check_encoding(encoding.as_deref()).err().map(|e| e.to_string()),
    };
    if let Some(msg) = unsupported {
        return Err(Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "encoding", msg));
    }
    let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > shared.cfg.max_body_bytes as u64) {
        return Err(Refusal::too_large(shared.cfg.max_body_bytes));
    }
    Ok((length, encoding))
}

/// Read a body within the deadline, the size cap and the shared budget of
/// bytes in flight (held until the returned reservation is dropped).
pub(crate) async fn read_body(
    shared: &Shared,
    body: Body,
    length: Option<u64>,
) -> Result<(axum::body::Bytes, Reserved<'_>), Refusal> {
    let max_body = shared.cfg.max_body_bytes;
    let Some(reserved) = Reserved::take(shared, length.unwrap_or(max_body as u64)) else {
        drain(body).await;
        return Err(Refusal::busy("too many batches being read at once"));
    };
    match tokio::time::timeout(shared.cfg.body_timeout, axum::body::to_bytes(body, max_body)).await {
        Ok(Ok(b)) => Ok((b, reserved)),
        Ok(Err(_)) if length.is_none() => Err(Refusal::too_large(max_body)),
        Ok(Err(e)) => Err(Refusal::new(StatusCode::BAD_REQUEST, "malformed", format!("reading the body: {e}"))),
        Err(_) => {
            let msg = format!("body not received within {} s", shared.cfg.body_timeout.as_secs());
            Err(Refusal::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", msg))
        }
    }
}

/// One batch of row kind `R` (its wire form, its table).
async fn ingest<R: StoredRow>(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    // Everything that needs only the headers comes before reading the body.
    let (length, encoding) = match check_headers(&shared, headers, Speaks::Wire) {
        Ok(x) => x,
        Err(r) => {
            drain(body).await;
            return r.respond(&shared);
        }
    };
    let (bytes, reserved) = match read_body(&shared, body, length).await {
        Ok(x) => x,
        Err(r) => return r.respond(&shared),
    };
    let records = {
        // Decoding is CPU work: on blocking threads, a few at a time.
        let Ok(_slot) = shared.decoders.acquire().await else { return busy(&shared, "shutting down") };
        let limits = wire::Limits::now(Some(shared.cfg.retention_days));
        let (max_batch, cluster) = (shared.cfg.max_batch_bytes, header("x-tokentap-cluster").unwrap_or("").to_owned());
        let decoded = tokio::task::spawn_blocking(move || {
            wire::decode_rows::<R::Wire>(encoding.as_deref(), &bytes, max_batch, &limits)
                .map(|rs| rs.into_iter().map(|r| R::from_wire(r, &cluster)).collect::<Vec<R>>())
        })
        .await;
        match decoded {
            Ok(r) => r,
            Err(_) => return busy(&shared, "decoder failed"),
        }
    };
    drop(reserved);
    let rows = match records {
        Ok(r) => r,
        Err(e @ WireError::TooLarge(_)) | Err(e @ WireError::TooManyRecords) => {
            return reject(&shared, StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        Err(e @ WireError::Encoding(_)) => {
            return reject(&shared, StatusCode::UNSUPPORTED_MEDIA_TYPE, "encoding", e.to_string())
        }
        Err(e @ WireError::Record { .. }) => return reject(&shared, StatusCode::BAD_REQUEST, "invalid", e.to_string()),
        Err(e) => return reject(&shared, StatusCode::BAD_REQUEST, "malformed", e.to_string()),
    };
    Metrics::add(&shared.metrics.batches_received, 1);
    Metrics::add(R::counters(&shared.metrics).received, rows.len() as u64);
    // Records of calls an OTLP span already stored are not stored again.
    let total = rows.len();
    let rows = R::screen(&shared, rows).await;
    let matched = total - rows.len();
    let retried = headers.get(wire::HEADER_RETRY).is_some();
    match store(&shared, rows, retried).await {
        Ok(s) => s.wire_answer(&shared, matched),
        Err(r) => r.respond(&shared),
    }
}

/// How a batch's rows ended.
pub struct Stored {
    pub accepted: usize,
    /// Already stored (same id): not stored again.
    pub duplicates: usize,
    /// Refused by ClickHouse for good, with why.
    pub rejected: Vec<(u128, String)>,
}

impl Stored {
    /// The wire's answer: 200, or 422 naming the rows ClickHouse refused.
    /// `matched` rows were left out as calls already stored another way.
    fn wire_answer(self, shared: &Shared, matched: usize) -> Response {
        let Stored { accepted, rejected, .. } = self;
        let duplicates = self.duplicates + matched;
        let total = accepted + duplicates + rejected.len();
        if rejected.is_empty() {
            return (StatusCode::OK, Json(serde_json::json!({"accepted": accepted, "duplicates": duplicates})))
                .into_response();
        }
        shared.metrics.reject("rejected_rows");
        let named: Vec<_> = rejected
            .iter()
            .take(100)
            .map(|(id, why)| serde_json::json!({"event_id": uuid::Uuid::from_u128(*id).to_string(), "error": why}))
            .collect();
        let body = serde_json::json!({
            "error": format!("ClickHouse refused {} of {total} records; the others are stored", rejected.len()),
            "reason": "rejected_rows",
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": rejected.len(),
            "rejected_rows": named,
        });
        (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
    }
}

/// Admit the rows, queue the new ones, and return once every one is resolved
/// (stored, a duplicate, or refused by ClickHouse). `retried`: the sender says
/// it sent these before (check ClickHouse for them before inserting).
pub(crate) async fn store<R: StoredRow>(shared: &Shared, rows: Vec<R>, retried: bool) -> Result<Stored, Refusal> {
    let total = rows.len();
    let (lane, counters) = (R::lane(shared), R::counters(&shared.metrics));
    let admitted = {
        let mut adm = lane.admission.lock().unwrap_or_else(|e| e.into_inner());
        let a = adm.admit(rows, retried);
        counters.queue.store(adm.pending() as u64, Ordering::Relaxed);
        a
    };
    let admitted = match admitted {
        Ok(a) => a,
        Err(Refused::QueueFull) => return Err(Refusal::busy("queue full: ClickHouse is slow or away")),
    };
    Metrics::add(counters.duplicates, admitted.duplicates as u64);
    if let Some(job) = admitted.job {
        let ids: Vec<u128> = job.rows.iter().map(R::id).collect();
        if lane.tx.try_send(job).is_err() {
            lane.admission.lock().unwrap_or_else(|e| e.into_inner()).withdraw(&ids);
            return Err(Refusal::busy("queue full"));
        }
    }
    let mut accepted = 0usize;
    let mut rejected: Vec<(u128, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + shared.cfg.ack_timeout;
    for (mut rx, ids) in admitted.waits {
        let outcome = match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
            Ok(Ok(o)) => o.clone().unwrap_or_default(),
            // Still queued: the sender retries, and the retry waits for these same rows.
            _ => return Err(Refusal::busy("ClickHouse did not take the rows in time")),
        };
        for id in ids {
            match outcome.rejected.get(&id) {
                Some(why) => rejected.push((id, why.clone())),
                None => accepted += 1,
            }
        }
    }
    let duplicates = admitted.duplicates;
    debug_assert_eq!(accepted + rejected.len() + duplicates, total);
    Ok(Stored { accepted, duplicates, rejected })
}

pub fn busy(shared: &Shared, msg: &str) -> Response {
    shared.metrics.reject("busy");
    let mut r =
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error": msg, "reason": "busy"}))).into_response();
    r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
    r
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.metrics.ready.load(Ordering::Relaxed) == 1 {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "ClickHouse unavailable\n").into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}

/// Ids of rows of kind `R` inserted in the last `hours` (the dedup window
/// across restarts).
pub async fn load_recent<R: StoredRow>(
    client: &clickhouse::Client,
    cap: usize,
    hours: u32,
) -> Result<RecentIds, clickhouse::error::Error> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Id {
        #[serde(with = "clickhouse::serde::uuid")]
        id: uuid::Uuid,
    }
    let ids: Vec<Id> = client
        .query(&format!(
            "SELECT {} AS id FROM {} WHERE inserted_at > now() - toIntervalHour(?) ORDER BY inserted_at DESC LIMIT ?",
            R::ID_COLUMN,
            R::TABLE
        ))
        .bind(hours)
        .bind(cap as u64)
        .fetch_all()
        .await?;
    let mut recent = RecentIds::new(cap);
    for id in ids.into_iter().rev() {
        recent.insert(id.id.as_u128());
    }
    Ok(recent)
}
