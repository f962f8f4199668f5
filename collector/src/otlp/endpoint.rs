//! `POST /v1/traces`: the same checks as the agents' endpoint (token, body
//! cap and deadline, shared budget of bytes in flight, decoding on bounded
//! threads), then each GenAI span's row is held until its call is a few
//! seconds old (`otlp_hold`), matched against the agents' records, and stored
//! on the call records' path (admission, dedup by event id, group commit).
//!
//! A request is all or nothing for the rows it accepts: it is answered 200
//! only once they are stored; a 4xx writes nothing; a 503 (queue full,
//! ClickHouse slow) is retried by the exporter, and the retry waits for the
//! same rows rather than storing them twice (event ids are derived from trace
//! and span ids).
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use tokentap_event::wire;

use super::answer;
use super::decode::{DecodeError, Format};
use super::matcher::{self, Claim};
use super::normalise::SpanCall;
use crate::metrics::Metrics;
use crate::server::{self, Refusal, Shared, Speaks};
use crate::store::CallRow;

pub async fn traces(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    // An unknown content type is answered in JSON: readable whatever the sender is.
    let format = match Format::of(header("content-type")) {
        Ok(f) => f,
        Err(e) => {
            server::drain(body).await;
            return answer::refused(&shared, Format::Json, refusal(e));
        }
    };
    let (length, encoding) = match server::check_headers(&shared, headers, Speaks::Otlp) {
        Ok(x) => x,
        Err(r) => {
            server::drain(body).await;
            return answer::refused(&shared, format, r);
        }
    };
    let (bytes, reserved) = match server::read_body(&shared, body, length).await {
        Ok(x) => x,
        Err(r) => return answer::refused(&shared, format, r),
    };
    let batch = {
        // Decoding is CPU work: on blocking threads, a few at a time.
        let Ok(_slot) = shared.decoders.acquire().await else {
            return answer::refused(&shared, format, Refusal::busy("shutting down"));
        };
        let limits = wire::Limits::now(Some(shared.cfg.retention_days));
        let (max, prices) = (shared.cfg.max_batch_bytes, shared.cfg.prices.clone());
        let cluster = header("x-tokentap-cluster").unwrap_or("").to_owned();
        let decoded = tokio::task::spawn_blocking(move || {
            super::read_request(format, encoding.as_deref(), &bytes, max, &prices, &limits, &cluster)
        })
        .await;
        match decoded {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return answer::refused(&shared, format, refusal(e)),
            Err(_) => return answer::refused(&shared, format, Refusal::busy("decoder failed")),
        }
    };
    drop(reserved);
    let m = &shared.metrics.otlp;
    Metrics::add(&m.requests, 1);
    Metrics::add(&m.spans_received, batch.spans as u64);
    Metrics::add(&m.spans_skipped_not_genai, batch.not_genai as u64);
    Metrics::add(&m.spans_skipped_not_call, batch.not_a_call as u64);
    Metrics::add(&m.spans_rejected_invalid, batch.invalid as u64);
    let (mut rejected, mut message) = (batch.rejected() as u64, batch.message());
    if batch.calls.is_empty() {
        return answer::accepted(format, rejected, message);
    }
    let Some(_held) = Held::take(&shared, batch.calls.len()) else {
        return answer::refused(&shared, format, Refusal::busy("too many spans held: ClickHouse is slow or away"));
    };
    hold(&shared, &batch.calls).await;
    // Calls an agent's record stored through another replica: one query for the flush.
    let calls: Vec<(u128, String, i64)> =
        batch.calls.iter().filter_map(|c| Some((key_of(&c.row)?, c.row.response_id.clone()?, c.row.ts))).collect();
    if !calls.is_empty() {
        shared.otlp.learn_from_peers(super::peers::Side::Agents, calls, &shared.metrics).await;
    }
    let (rows, claims) = claim(&shared, batch.calls);
    let stored = match server::store(&shared, rows, false).await {
        Ok(s) => s,
        Err(r) => {
            // Queue full: nothing of this request is queued; the retry claims again.
            if r.status == StatusCode::SERVICE_UNAVAILABLE && r.msg.starts_with("queue full") {
                release(&shared, &claims, |_| true);
            }
            return answer::refused(&shared, format, r);
        }
    };
    Metrics::add(&m.spans_stored, stored.accepted as u64);
    if stored.accepted > 0 {
        shared.otlp.stored_spans();
    }
    Metrics::add(&m.spans_resent, stored.duplicates as u64);
    if !stored.rejected.is_empty() {
        let refused: std::collections::HashSet<u128> = stored.rejected.iter().map(|r| r.0).collect();
        release(&shared, &claims, |id| refused.contains(&id));
        Metrics::add(&m.spans_rejected_by_clickhouse, refused.len() as u64);
        rejected += refused.len() as u64;
        let first = &stored.rejected[0].1;
        let sep = if message.is_empty() { "" } else { "; " };
        message = format!("{message}{sep}{} spans refused by ClickHouse (first: {first})", refused.len());
    }
    answer::accepted(format, rejected, message)
}

/// The answer to a body that can't be decoded.
fn refusal(e: DecodeError) -> Refusal {
    if e.too_large() {
        Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
    } else if e.unsupported() {
        let reason = if matches!(e, DecodeError::ContentType(_)) { "content_type" } else { "encoding" };
        Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, reason, e.to_string())
    } else {
        Refusal::new(StatusCode::BAD_REQUEST, "malformed", e.to_string())
    }
}

/// Spans held at once, at most the queue's size: memory stays bounded while
/// ClickHouse is slow and requests pile up in the hold.
struct Held<'a> {
    shared: &'a Shared,
    n: u64,
}

impl<'a> Held<'a> {
    fn take(shared: &'a Shared, n: usize) -> Option<Self> {
        let (n, max) = (n as u64, shared.cfg.max_queue_records as u64);
        shared
            .otlp
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| (cur + n <= max).then_some(cur + n))
            .ok()?;
        shared.metrics.otlp.held_spans.store(shared.otlp.held.load(Ordering::Relaxed), Ordering::Relaxed);
        Some(Self { shared, n })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let left = self.shared.otlp.held.fetch_sub(self.n, Ordering::AcqRel) - self.n;
        self.shared.metrics.otlp.held_spans.store(left, Ordering::Relaxed);
    }
}

/// Wait until the newest call in the request ended `otlp_hold` ago (never
/// longer than the hold from now), or until agents' records have claimed
/// every call that could still be matched. Spans exported in batches (the
/// SDKs' default: every 5 s) are usually past the hold on arrival.
async fn hold(shared: &Shared, calls: &[SpanCall]) {
    let hold = shared.cfg.otlp_hold;
    if hold.is_zero() {
        return;
    }
    let mut deadline = None;
    loop {
        // Created before the check, so a claim made in between still wakes us.
        let claimed = shared.otlp.claimed.notified();
        let newest_open = {
            let m = shared.otlp.matcher();
            calls.iter().filter(|c| key_of(&c.row).is_some_and(|k| !m.is_ebpf(k))).map(|c| c.end_unix_nanos).max()
        };
        let Some(newest) = newest_open else { return };
        let deadline = *deadline.get_or_insert_with(|| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            let left = Duration::from_nanos(newest.saturating_add(hold.as_nanos() as u64).saturating_sub(now));
            tokio::time::Instant::now() + left.min(hold)
        });
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = claimed => {}
        }
    }
}

fn key_of(row: &CallRow) -> Option<u128> {
    matcher::key(&row.provider, row.response_id.as_deref())
}

/// Claim each span's call; the rows to store, and the claims made (key, event id).
fn claim(shared: &Shared, calls: Vec<SpanCall>) -> (Vec<CallRow>, Vec<(u128, u128)>) {
    let mut m = shared.otlp.matcher();
    let (mut rows, mut claims) = (Vec::with_capacity(calls.len()), Vec::new());
    let (mut of_ebpf, mut of_otel) = (0u64, 0u64);
    for c in calls {
        let id = c.row.event_id.as_u128();
        match key_of(&c.row).map(|k| (k, m.otel(k, id))) {
            Some((_, Claim::DuplicateOfEbpf)) => of_ebpf += 1,
            Some((_, Claim::DuplicateOfOtel)) => of_otel += 1,
            Some((k, Claim::Store)) => {
                claims.push((k, id));
                rows.push(c.row);
            }
            Some((_, Claim::Again)) | None => rows.push(c.row),
        }
    }
    let metrics = &shared.metrics.otlp;
    metrics.match_keys.store(m.len() as u64, Ordering::Relaxed);
    Metrics::add(&metrics.spans_duplicate_of_ebpf, of_ebpf);
    Metrics::add(&metrics.spans_duplicate_of_otel, of_otel);
    (rows, claims)
}

fn release(shared: &Shared, claims: &[(u128, u128)], which: impl Fn(u128) -> bool) {
    let mut m = shared.otlp.matcher();
    for &(key, id) in claims.iter().filter(|c| which(c.1)) {
        m.release(key, id);
    }
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
