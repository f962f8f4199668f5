//! OTLP trace ingest (`POST /v1/traces`): services instrumented with an
//! OpenTelemetry GenAI SDK send their spans, and each span of an LLM call
//! becomes an `llm_calls` row (`usage_source = 'otel'`) beside the agents'
//! records, in one Spend Map.
//!
//! `decode` (body -> OTLP request) -> `normalise` (span -> row, or why not)
//! -> `endpoint` (hold, match with agents' records, store, answer as OTLP
//! does, `answer`). `matcher` keeps the recent calls of both sources, so a
//! call seen by an agent and by an SDK is stored once (the agent's record
//! wins); `peers` asks ClickHouse for what other replicas stored.
pub mod answer;
pub mod decode;
pub mod endpoint;
pub mod matcher;
pub mod normalise;
pub mod peers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::store::CallRow;
use matcher::{Claim, Matcher, Seen};

/// OTLP/HTTP's path for traces.
pub const PATH: &str = "/v1/traces";

/// The collector's OTLP state, shared by its endpoint and the records' path.
pub struct Otlp {
    pub matcher: Mutex<Matcher>,
    /// Spans held right now (waiting out the hold), bounded by the queue size.
    pub held: AtomicU64,
    /// Woken when agents' records claim calls: a held span whose call an
    /// agent recorded is answered then, not at the end of the hold.
    pub claimed: tokio::sync::Notify,
    /// The rows other replicas stored (ClickHouse); unset: this replica's
    /// memory alone (unit tests, or before the collector is wired up).
    peers: OnceLock<Arc<dyn peers::Peers>>,
    /// Whether spans were stored in the last day, and when that was asked.
    otel_rows: Mutex<Option<(Instant, bool)>>,
    /// How long that answer is kept.
    otel_rows_refresh: Duration,
}

impl Otlp {
    pub fn new(match_keys: usize, otel_rows_refresh: Duration) -> Self {
        Self {
            matcher: Mutex::new(Matcher::new(match_keys)),
            held: AtomicU64::new(0),
            claimed: tokio::sync::Notify::new(),
            peers: OnceLock::new(),
            otel_rows: Mutex::new(None),
            otel_rows_refresh,
        }
    }

    /// Match across replicas through `peers` (the collector's ClickHouse).
    pub fn set_peers(&self, peers: Arc<dyn peers::Peers>) {
        let _ = self.peers.set(peers);
    }

    /// This replica stored spans' rows: agents' batches are checked from now on.
    pub fn stored_spans(&self) {
        *self.otel_rows.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), true));
    }

    /// Whether spans were stored in the last day (by any replica), asked at
    /// most once per refresh; None: ClickHouse did not answer.
    async fn spans_stored_lately(&self, peers: &dyn peers::Peers, metrics: &Metrics) -> Option<bool> {
        let cached = *self.otel_rows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, any)) = cached {
            if at.elapsed() < self.otel_rows_refresh {
                return Some(any);
            }
        }
        Metrics::add(&metrics.otlp.replica_checks, 1);
        match tokio::time::timeout(peers::TIMEOUT, peers.otel_rows()).await {
            Ok(Ok(n)) => {
                *self.otel_rows.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), n > 0));
                Some(n > 0)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "counting recent OTLP rows failed: matching in memory only");
                None
            }
            Err(_) => {
                tracing::warn!("counting recent OTLP rows timed out: matching in memory only");
                None
            }
        }
    }

    /// Ask ClickHouse which of these calls (key, response id, `ts` in µs) the
    /// other side already stored (through any replica), and remember them in
    /// the matcher, which then decides as if this replica had seen them.
    /// Only calls this replica doesn't know are asked for; records are asked
    /// for only while spans were stored lately. Never fails: a failed check
    /// is counted and the in-memory match decides alone.
    pub async fn learn_from_peers(&self, side: peers::Side, calls: Vec<(u128, String, i64)>, metrics: &Metrics) {
        let Some(peers) = self.peers.get().cloned() else { return };
        let wanted: std::collections::HashMap<u128, (String, i64)> = {
            let m = self.matcher();
            calls.into_iter().filter(|c| !m.knows(c.0)).map(|(k, id, ts)| (k, (id, ts))).collect()
        };
        if wanted.is_empty() {
            return;
        }
        if side == peers::Side::Spans {
            match self.spans_stored_lately(peers.as_ref(), metrics).await {
                Some(true) => {}
                Some(false) => return,
                None => return Metrics::add(&metrics.otlp.replica_check_failures, 1),
            }
        }
        let lookups = peers::Lookup::of(side, wanted.values().map(|(id, ts)| (id.as_str(), *ts)));
        for q in &lookups {
            Metrics::add(&metrics.otlp.replica_checks, 1);
            let found = match tokio::time::timeout(peers::TIMEOUT, peers.find(q)).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "checking other replicas' rows failed: matching in memory only");
                    return Metrics::add(&metrics.otlp.replica_check_failures, 1);
                }
                Err(_) => {
                    tracing::warn!("checking other replicas' rows timed out: matching in memory only");
                    return Metrics::add(&metrics.otlp.replica_check_failures, 1);
                }
            };
            let mut m = self.matcher();
            for f in found {
                let Some(k) = matcher::key(&f.provider, Some(&f.response_id)) else { continue };
                if wanted.contains_key(&k) {
                    m.learn(k, if side == peers::Side::Agents { Seen::Ebpf } else { Seen::Otel(f.event_id.as_u128()) });
                }
            }
        }
    }

    /// [`Otlp::screen_records`], after asking ClickHouse for spans' rows of
    /// these calls stored through other replicas.
    pub async fn screen_records_across(&self, rows: Vec<CallRow>, metrics: &Metrics) -> Vec<CallRow> {
        let calls: Vec<(u128, String, i64)> = rows
            .iter()
            .filter_map(|r| {
                let id = r.response_id.as_deref()?;
                Some((matcher::key(&r.provider, Some(id))?, id.to_owned(), r.ts))
            })
            .collect();
        if !calls.is_empty() {
            self.learn_from_peers(peers::Side::Spans, calls, metrics).await;
        }
        self.screen_records(rows, metrics)
    }

    pub fn matcher(&self) -> std::sync::MutexGuard<'_, Matcher> {
        self.matcher.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An agent's batch: each record with a response id claims its call; a
    /// record of a call whose span was stored first is left out (counted).
    pub fn screen_records(&self, rows: Vec<CallRow>, metrics: &Metrics) -> Vec<CallRow> {
        let mut m = self.matcher();
        let before = rows.len();
        let kept: Vec<CallRow> = rows
            .into_iter()
            .filter(|r| match matcher::key(&r.provider, r.response_id.as_deref()) {
                Some(k) => m.ebpf(k) == Claim::Store,
                None => true,
            })
            .collect();
        metrics.otlp.match_keys.store(m.len() as u64, Ordering::Relaxed);
        drop(m);
        Metrics::add(&metrics.otlp.records_duplicate_of_otel, (before - kept.len()) as u64);
        if metrics.otlp.held_spans.load(Ordering::Relaxed) > 0 {
            self.claimed.notify_waiters();
        }
        kept
    }
}

/// An export request's body -> what its spans are: decompressed within `max`
/// bytes, decoded, each span normalised. The endpoint's whole decode path, in
/// one function a fuzz target can drive.
pub fn read_request(
    format: decode::Format,
    encoding: Option<&str>,
    body: &[u8],
    max: usize,
    prices: &tokentap_event::PriceTable,
    limits: &tokentap_event::wire::Limits,
    cluster: &str,
) -> Result<normalise::Batch, decode::DecodeError> {
    let raw = decode::decompress(encoding, body, max)?;
    let req = decode::decode(format, &raw)?;
    drop(raw);
    Ok(normalise::normalise_request(&req, prices, limits, cluster))
}

/// The calls stored in the last `hours` (newest `cap`), so a restart keeps
/// the matching window. Rows from spans are `usage_source = 'otel'`.
pub async fn load_matches(
    client: &clickhouse::Client,
    matcher: &Mutex<Matcher>,
    cap: usize,
    hours: u32,
) -> Result<usize, clickhouse::error::Error> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Key {
        #[serde(with = "clickhouse::serde::uuid")]
        event_id: uuid::Uuid,
        provider: String,
        response_id: String,
        otel: bool,
    }
    let keys: Vec<Key> = client
        .query(
            "SELECT event_id, provider, assumeNotNull(response_id) AS response_id, \
             ifNull(usage_source, '') = 'otel' AS otel FROM llm_calls \
             WHERE inserted_at > now() - toIntervalHour(?) AND response_id != '' \
             ORDER BY inserted_at DESC LIMIT ?",
        )
        .bind(hours)
        .bind(cap as u64)
        .fetch_all()
        .await?;
    let mut m = matcher.lock().unwrap_or_else(|e| e.into_inner());
    for k in keys.iter().rev() {
        if let Some(key) = matcher::key(&k.provider, Some(&k.response_id)) {
            m.load(key, if k.otel { Seen::Otel(k.event_id.as_u128()) } else { Seen::Ebpf });
        }
    }
    Ok(m.len())
}
