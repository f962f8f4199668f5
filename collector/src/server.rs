//! The ingest endpoint and the ClickHouse writer.
//!
//! An agent's batch is acknowledged (200) only once its rows are in ClickHouse:
//! until then the agent keeps it in its spool, so a collector crash loses
//! nothing. Memory is bounded by `max_queue_records`: beyond it, and while
//! ClickHouse is away long enough to fill it, agents get 503 with `Retry-After`
//! and keep their data. Rows already inserted (same `event_id`) are dropped.
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clickhouse::Client;
use tokentap_event::wire::{self, WireError};
use tokio::sync::{mpsc, oneshot};

use crate::dedup::RecentIds;
use crate::metrics::Metrics;
use crate::store::{self, CallRow};

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Bearer token agents must send; None: no authentication (tests, a trusted network).
    pub token: Option<String>,
    /// Largest request body (compressed) and batch (decompressed).
    pub max_body_bytes: usize,
    pub max_batch_bytes: usize,
    /// Records accepted but not yet in ClickHouse, at most.
    pub max_queue_records: usize,
    /// Rows per ClickHouse insert, at most.
    pub insert_rows: usize,
    /// How long accepted rows wait for more before an insert.
    pub flush_interval: Duration,
    /// Event ids remembered for deduplication.
    pub dedup_window: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
            max_body_bytes: 32 << 20,
            max_batch_bytes: 256 << 20,
            max_queue_records: 200_000,
            insert_rows: 100_000,
            flush_interval: Duration::from_millis(500),
            dedup_window: 1_000_000,
        }
    }
}

struct Job {
    rows: Vec<CallRow>,
    done: oneshot::Sender<()>,
}

pub struct Shared {
    cfg: ServerConfig,
    tx: mpsc::Sender<Job>,
    recent: Mutex<RecentIds>,
    pub metrics: Metrics,
}

/// The router, the writer task's future (run both) and the shared state.
pub fn build(
    cfg: ServerConfig,
    client: Client,
    recent: RecentIds,
) -> (Router, impl std::future::Future<Output = ()>, Arc<Shared>) {
    let (tx, rx) = mpsc::channel::<Job>(1024);
    let shared = Arc::new(Shared { cfg: cfg.clone(), tx, recent: Mutex::new(recent), metrics: Metrics::default() });
    shared.metrics.ready.store(1, Ordering::Relaxed);
    let writer = writer(shared.clone(), client, rx);
    let app = Router::new()
        .route(wire::PATH, post(ingest))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(shared.clone());
    (app, writer, shared)
}

fn reject(shared: &Shared, status: StatusCode, reason: &'static str, msg: String) -> Response {
    shared.metrics.reject(reason);
    tracing::debug!(reason, %msg, "batch rejected");
    (status, Json(serde_json::json!({"error": msg, "reason": reason}))).into_response()
}

/// Constant-time comparison, so the token can't be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ingest(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(token) = &shared.cfg.token {
        let given = header("authorization").and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            return reject(&shared, StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token".into());
        }
    }
    if let Some(v) = header(wire::HEADER_VERSION).filter(|v| *v != wire::VERSION) {
        let msg = format!("wire version {v} not supported (this collector speaks {})", wire::VERSION);
        return reject(&shared, StatusCode::UNSUPPORTED_MEDIA_TYPE, "version", msg);
    }
    let records = match wire::decode(header("content-encoding"), &body, shared.cfg.max_batch_bytes) {
        Ok(r) => r,
        Err(e @ WireError::TooLarge(_)) | Err(e @ WireError::TooManyRecords) => {
            return reject(&shared, StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        Err(e @ WireError::Encoding(_)) => {
            return reject(&shared, StatusCode::UNSUPPORTED_MEDIA_TYPE, "encoding", e.to_string())
        }
        Err(e) => return reject(&shared, StatusCode::BAD_REQUEST, "malformed", e.to_string()),
    };
    Metrics::add(&shared.metrics.batches_received, 1);
    Metrics::add(&shared.metrics.records_received, records.len() as u64);
    let cluster = header("x-tokentap-cluster").unwrap_or("").to_owned();
    let total = records.len();
    let rows: Vec<CallRow> = {
        let recent = shared.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = std::collections::HashSet::new();
        records
            .into_iter()
            .map(|r| CallRow::from_record(r, &cluster))
            .filter(|r| !recent.contains(r.event_id.as_u128()) && seen.insert(r.event_id))
            .collect()
    };
    let duplicates = total - rows.len();
    Metrics::add(&shared.metrics.duplicates, duplicates as u64);
    if rows.is_empty() {
        return ok(0, duplicates);
    }
    let n = rows.len();
    let queued = shared.metrics.queue_records.fetch_add(n as u64, Ordering::Relaxed) as usize;
    let unqueue = || shared.metrics.queue_records.fetch_sub(n as u64, Ordering::Relaxed);
    if queued + n > shared.cfg.max_queue_records {
        unqueue();
        return busy(&shared, "queue full: ClickHouse is slow or away");
    }
    let (done, wait) = oneshot::channel();
    if shared.tx.try_send(Job { rows, done }).is_err() {
        unqueue();
        return busy(&shared, "queue full");
    }
    match tokio::time::timeout(Duration::from_secs(60), wait).await {
        Ok(Ok(())) => ok(n, duplicates),
        // Still queued: the agent retries, and the retry is deduplicated once in.
        _ => busy(&shared, "ClickHouse did not take the rows in time"),
    }
}

fn ok(accepted: usize, duplicates: usize) -> Response {
    (StatusCode::OK, Json(serde_json::json!({"accepted": accepted, "duplicates": duplicates}))).into_response()
}

fn busy(shared: &Shared, msg: &str) -> Response {
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

/// Gathers jobs into inserts; retries each insert until ClickHouse takes it.
async fn writer(shared: Arc<Shared>, client: Client, mut rx: mpsc::Receiver<Job>) {
    let cfg = shared.cfg.clone();
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + cfg.flush_interval;
        let mut rows: usize = jobs[0].rows.len();
        while rows < cfg.insert_rows {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) => {
                    rows += j.rows.len();
                    jobs.push(j);
                }
                _ => break,
            }
        }
        let batch: Vec<CallRow> = jobs.iter_mut().flat_map(|j| std::mem::take(&mut j.rows)).collect();
        let mut attempt = 0;
        loop {
            let t = Instant::now();
            match store::insert(&client, &batch).await {
                Ok(()) => {
                    shared.metrics.observe_insert(t.elapsed().as_secs_f64());
                    shared.metrics.ready.store(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    Metrics::add(&shared.metrics.insert_errors, 1);
                    shared.metrics.ready.store(0, Ordering::Relaxed);
                    let wait = store::backoff(attempt);
                    tracing::warn!(error = %e, rows = batch.len(), retry_in_ms = wait.as_millis() as u64, "ClickHouse insert failed");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
        {
            let mut recent = shared.recent.lock().unwrap_or_else(|e| e.into_inner());
            for r in &batch {
                recent.insert(r.event_id.as_u128());
            }
        }
        Metrics::add(&shared.metrics.inserts, 1);
        Metrics::add(&shared.metrics.records_inserted, batch.len() as u64);
        shared.metrics.queue_records.fetch_sub(batch.len() as u64, Ordering::Relaxed);
        for j in jobs {
            let _ = j.done.send(());
        }
    }
}

/// Event ids inserted in the last `hours` (the dedup window across restarts).
pub async fn load_recent(client: &Client, cap: usize, hours: u32) -> Result<RecentIds, clickhouse::error::Error> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Id {
        #[serde(with = "clickhouse::serde::uuid")]
        id: uuid::Uuid,
    }
    let ids: Vec<Id> = client
        .query("SELECT event_id AS id FROM llm_calls WHERE inserted_at > now() - toIntervalHour(?) ORDER BY inserted_at DESC LIMIT ?")
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
