//! OTLP trace ingest (`POST /v1/traces`): services instrumented with an
//! OpenTelemetry GenAI SDK send their spans, and each span of an LLM call
//! becomes an `llm_calls` row (`usage_source = 'otel'`) beside the agents'
//! records, in one Spend Map.
//!
//! `decode` (body -> OTLP request) -> `normalise` (span -> row, or why not)
//! -> `endpoint` (hold, match with agents' records, store, answer as OTLP
//! does, `answer`). `matcher` keeps the recent calls of both sources, so a
//! call seen by an agent and by an SDK is stored once (the agent's record wins).
pub mod answer;
pub mod decode;
pub mod endpoint;
pub mod matcher;
pub mod normalise;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
}

impl Otlp {
    pub fn new(match_keys: usize) -> Self {
        Self {
            matcher: Mutex::new(Matcher::new(match_keys)),
            held: AtomicU64::new(0),
            claimed: tokio::sync::Notify::new(),
        }
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
