//! Sending spooled batches: a sender thread takes a run of consecutive
//! batches from the spool, POSTs their files concatenated (zstd frames
//! concatenate into one valid stream: nothing is re-encoded), and sorts the
//! collector's answer into what happens to the batches (docs/collector.md):
//!
//! - 2xx: durable; deleted.
//! - 422 `rejected_rows`: the accepted rows are durable, the others refused for
//!   good (data errors); deleted, never resent.
//! - 400, 413, 415: nothing written. A merged request is resent one batch at a
//!   time; a single batch is moved to `rejected/`.
//! - 401, 403: configuration (a wrong or rotated token): retried, never rejected.
//! - 408, 429, 5xx, transport errors, anything else: retried with backoff,
//!   honouring `Retry-After`, and marked `X-Tokentap-Retry` (the first copy
//!   may have been stored).
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokentap_event::wire;

use super::spool::{Done, Spool, Taken};
use super::CollectorConfig;
use crate::stats::Stats;

/// Compressed bytes of one request, at most (a collector takes 32 MiB).
const MAX_REQUEST_BYTES: u64 = 16 << 20;
/// Decompressed bytes of a merged request, at most (a collector takes 64 MiB).
const MAX_REQUEST_RAW_BYTES: u64 = 48 << 20;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The HTTP client, with the collector's CA and our client certificate.
pub(super) fn http_agent(cfg: &CollectorConfig) -> io::Result<ureq::Agent> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let bad = |what: &str, p: &Path, e: String| io::Error::other(format!("{what} {}: {e}", p.display()));
    let certs = |p: &Path| -> io::Result<Vec<Certificate<'static>>> {
        let pem = std::fs::read(p).map_err(|e| bad("reading", p, e.to_string()))?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(bad("no certificate in", p, String::new()));
        }
        Ok(certs)
    };
    let mut tls = TlsConfig::builder();
    if let Some(ca) = &cfg.ca_file {
        tls = tls.root_certs(RootCerts::Specific(Arc::new(certs(ca)?)));
    }
    if let Some((cert, key)) = &cfg.client_cert {
        let pem = std::fs::read(key).map_err(|e| bad("reading", key, e.to_string()))?;
        let key = PrivateKey::from_pem(&pem).map_err(|e| bad("key", key, e.to_string()))?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&certs(cert)?, key)));
    }
    Ok(ureq::Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into())
}

/// What the collector's answer means for the batches of a request.
#[derive(Debug, PartialEq)]
pub(super) enum Answer {
    Delivered,
    /// 422: `accepted` rows (new and duplicates) are durable, `rejected`
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
    /// 401/403: the token is wrong; retried until it is fixed.
    Unauthorized {
        status: u16,
        why: String,
    },
    Retry {
        why: String,
        after: Option<Duration>,
    },
}

#[derive(serde::Deserialize)]
struct PartialBody {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    duplicates: u64,
    rejected: u64,
    #[serde(default)]
    rejected_rows: Vec<RejectedRow>,
}

#[derive(serde::Deserialize)]
struct RejectedRow {
    #[serde(default)]
    event_id: String,
    #[serde(default)]
    error: String,
}

/// Status, `Retry-After` and body -> what to do.
pub(super) fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Answer {
    let why = || format!("HTTP {status}: {}", body.trim().chars().take(512).collect::<String>());
    match status {
        200..=299 => Answer::Delivered,
        422 => match serde_json::from_str::<PartialBody>(body) {
            Ok(p) => Answer::Partial {
                accepted: p.accepted + p.duplicates,
                rejected: p.rejected,
                reasons: p.rejected_rows.iter().take(3).map(|r| format!("{}: {}", r.event_id, r.error)).collect(),
            },
            // Without the counts nothing is known to be written: as a 400.
            Err(_) => Answer::Refused { status, why: why() },
        },
        400 | 413 | 415 => Answer::Refused { status, why: why() },
        401 | 403 => Answer::Unauthorized { status, why: why() },
        _ => Answer::Retry {
            why: why(),
            after: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER)),
        },
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

fn post(agent: &ureq::Agent, cfg: &CollectorConfig, taken: &Taken, body: &[u8]) -> Answer {
    let mut req = agent
        .post(format!("{}{}", cfg.url.trim_end_matches('/'), wire::PATH))
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "zstd")
        .header(wire::HEADER_VERSION, wire::VERSION)
        .header(wire::HEADER_BATCH_ID, request_id(taken))
        .header("x-tokentap-cluster", &cfg.cluster);
    if taken.retried() {
        req = req.header(wire::HEADER_RETRY, "1");
    }
    if let Some(f) = &cfg.token_file {
        match std::fs::read_to_string(f) {
            Ok(t) => req = req.header("authorization", format!("Bearer {}", t.trim())),
            Err(e) => return Answer::Retry { why: format!("token file {}: {e}", f.display()), after: None },
        }
    }
    match req.send(body) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let text = resp.body_mut().with_config().limit(256 * 1024).read_to_string().unwrap_or_default();
            classify(status, retry_after.as_deref(), &text)
        }
        Err(e) => Answer::Retry { why: e.to_string(), after: None },
    }
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

/// One sender thread: take, post, settle; until the spool stops.
pub(super) fn send_loop(cfg: &CollectorConfig, spool: &Spool, agent: &ureq::Agent, stats: &Stats) {
    let max_records = cfg.merge_records.clamp(1, wire::MAX_RECORDS) as u64;
    while let Some(taken) = spool.take(max_records, MAX_REQUEST_BYTES, MAX_REQUEST_RAW_BYTES) {
        let answer = match read_bodies(spool, &taken) {
            Ok(body) => post(agent, cfg, &taken, &body),
            Err(Ok(lost)) => {
                spool.done(taken, Done::Lost(lost));
                continue;
            }
            Err(Err(e)) => Answer::Retry { why: format!("reading the spool: {e}"), after: None },
        };
        settle(spool, taken, answer, stats);
    }
}

fn settle(spool: &Spool, taken: Taken, answer: Answer, stats: &Stats) {
    let (files, records) = (taken.len() as u64, taken.records());
    match answer {
        // Counted before the spool changes: whoever sees the spool settled sees the counts.
        Answer::Delivered => {
            Stats::add(&stats.collector_batches_sent, files);
            Stats::add(&stats.collector_records_sent, records);
            spool.done(taken, Done::Delivered);
        }
        Answer::Partial { accepted, rejected, reasons } => {
            Stats::add(&stats.collector_batches_sent, files);
            Stats::add(&stats.collector_records_sent, accepted);
            Stats::add(&stats.collector_records_rejected, rejected);
            spool.done(taken, Done::Delivered);
            tracing::error!(accepted, rejected, first = ?reasons, "the collector refused some records for good");
        }
        Answer::Refused { status, why } if files > 1 => {
            spool.done(taken, Done::Split);
            tracing::warn!(status, %why, batches = files, "collector refused a merged request; sending its batches one by one");
        }
        Answer::Refused { status, why } => {
            let file = taken.batches().next().map(|b| b.name.to_string()).unwrap_or_default();
            Stats::inc(&stats.collector_batches_rejected);
            Stats::add(&stats.collector_records_rejected, records);
            spool.done(taken, Done::Rejected);
            tracing::error!(status, %why, %file, records, "collector rejected a batch; kept in rejected/");
        }
        Answer::Unauthorized { status, why } => {
            Stats::inc(&stats.collector_send_errors);
            let attempt = spool.done(taken, Done::Retry(None));
            if attempt % 10 == 1 {
                tracing::error!(status, %why, attempt, "collector refused our credentials (check the token file); batches kept in the spool");
            }
        }
        Answer::Retry { why, after } => {
            Stats::inc(&stats.collector_send_errors);
            let attempt = spool.done(taken, Done::Retry(after));
            if attempt % 10 == 1 {
                tracing::warn!(%why, attempt, "collector unavailable; batches kept in the spool");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_the_contract() {
        let partial = r#"{"error":"x","reason":"rejected_rows","accepted":7,"duplicates":1,"rejected":2,
            "rejected_rows":[{"event_id":"e1","error":"Code: 53"},{"event_id":"e2","error":"Code: 117"}]}"#;
        let retry = |after: Option<u64>| move |a: &Answer| matches!(a, Answer::Retry { after: x, .. } if *x == after.map(Duration::from_secs));
        type Check = Box<dyn Fn(&Answer) -> bool>;
        let cases: Vec<(u16, Option<&str>, &str, Check)> = vec![
            (200, None, r#"{"accepted":3,"duplicates":0}"#, Box::new(|a| *a == Answer::Delivered)),
            (204, None, "", Box::new(|a| *a == Answer::Delivered)),
            (
                422,
                None,
                partial,
                Box::new(
                    |a| matches!(a, Answer::Partial { accepted: 8, rejected: 2, reasons } if reasons[0] == "e1: Code: 53"),
                ),
            ),
            (422, None, "not json", Box::new(|a| matches!(a, Answer::Refused { status: 422, .. }))),
            (400, None, "bad", Box::new(|a| matches!(a, Answer::Refused { status: 400, .. }))),
            (413, None, "", Box::new(|a| matches!(a, Answer::Refused { status: 413, .. }))),
            (415, None, "", Box::new(|a| matches!(a, Answer::Refused { status: 415, .. }))),
            (401, None, "", Box::new(|a| matches!(a, Answer::Unauthorized { status: 401, .. }))),
            (403, None, "", Box::new(|a| matches!(a, Answer::Unauthorized { status: 403, .. }))),
            (503, Some("2"), "", Box::new(retry(Some(2)))),
            (429, Some("600"), "", Box::new(retry(Some(30)))),
            (408, None, "", Box::new(retry(None))),
            (500, Some("Wed, 21 Oct 2015 07:28:00 GMT"), "", Box::new(retry(None))),
            (404, None, "", Box::new(retry(None))),
        ];
        for (status, after, body, ok) in cases {
            let a = classify(status, after, body);
            assert!(ok(&a), "{status} {after:?}: {a:?}");
        }
    }
}
