//! The collector sink's transport: POST a run of spooled batches to the
//! collector's ingest endpoint (`tokentap_event::wire`: zstd NDJSON, batch id
//! and version headers, bearer token, cluster name) and sort its answer into
//! what happens to the batches (docs/collector.md):
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
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokentap_event::wire;

use super::settings::CollectorSettings;
use crate::sinks::http_client::{self, TlsFiles};
use crate::sinks::spool::{Outcome, Request, RequestLimits, Transport};

/// Compressed bytes of one request, at most (a collector takes 32 MiB).
const MAX_REQUEST_BYTES: u64 = 16 << 20;
/// Decompressed bytes of a merged request, at most (a collector takes 64 MiB).
const MAX_REQUEST_RAW_BYTES: u64 = 48 << 20;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The HTTP client, with the collector's CA and our client certificate.
fn http_agent(cfg: &CollectorSettings) -> io::Result<ureq::Agent> {
    let client = cfg.client_cert().map(|(c, k)| (c.as_path(), k.as_path()));
    let tls = TlsFiles { ca: cfg.ca_file.as_deref(), client };
    http_client::agent(tls, Duration::from_secs(5), Duration::from_secs(90))
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
fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    let why = || format!("HTTP {status}: {}", body.trim().chars().take(512).collect::<String>());
    match status {
        200..=299 => Outcome::Delivered,
        422 => match serde_json::from_str::<PartialBody>(body) {
            Ok(p) => Outcome::Partial {
                accepted: p.accepted + p.duplicates,
                rejected: p.rejected,
                reasons: p.rejected_rows.iter().take(3).map(|r| format!("{}: {}", r.event_id, r.error)).collect(),
            },
            // Without the counts nothing is known to be written: as a 400.
            Err(_) => Outcome::Refused { status, why: why() },
        },
        400 | 413 | 415 => Outcome::Refused { status, why: why() },
        401 | 403 => Outcome::Unauthorized { status, why: format!("{} (check the token file)", why()) },
        _ => Outcome::Retry { why: why(), after: http_client::retry_after(retry_after, MAX_RETRY_AFTER) },
    }
}

/// Posts batches to one collector.
pub struct HttpTransport {
    agent: ureq::Agent,
    /// The ingest endpoint: base URL + `wire::PATH`.
    endpoint: String,
    token_file: Option<PathBuf>,
    cluster: String,
    merge_records: u64,
}

impl HttpTransport {
    /// Bad certificate paths are configuration errors: they fail here, at
    /// start, not per send.
    pub fn new(cfg: &CollectorSettings) -> io::Result<Self> {
        Self::for_path(cfg, wire::PATH)
    }

    /// Posting to another of the collector's endpoints (another row kind).
    pub fn for_path(cfg: &CollectorSettings, path: &str) -> io::Result<Self> {
        Ok(Self {
            agent: http_agent(cfg)?,
            endpoint: format!("{}{}", cfg.url.trim_end_matches('/'), path),
            token_file: cfg.token_file.clone(),
            cluster: cfg.cluster.clone(),
            merge_records: cfg.merge_records.clamp(1, wire::MAX_RECORDS) as u64,
        })
    }
}

/// At start, in the background: say at once when the collector does not
/// answer, rather than at the first record, which on a quiet node may come
/// hours later.
pub fn check_at_start(cfg: &CollectorSettings, output: &str) {
    let (cfg, output) = (cfg.clone(), output.to_owned());
    let checked = std::thread::Builder::new().name("collector-check".into()).spawn(move || match answers(&cfg) {
        Ok(()) => tracing::debug!(output, "the collector answers"),
        Err(error) => tracing::warn!(
            output,
            %error,
            "the collector does not answer at start: records wait in the spool until it does"
        ),
    });
    if let Err(e) = checked {
        tracing::debug!(error = %e, "no thread to check the collector");
    }
}

/// Whether the collector answers `GET /healthz` at all.
fn answers(cfg: &CollectorSettings) -> Result<(), String> {
    let url = format!("{}/healthz", cfg.url.trim_end_matches('/'));
    let agent = http_agent(cfg).map_err(|e| e.to_string())?;
    // Any status is an answer (the agent takes statuses as answers, not
    // errors): a proxy that wants a token, say, is at the right address; the
    // sends say what else is wrong.
    agent.get(&url).call().map(drop).map_err(|e| format!("{url}: {e}"))
}

impl Transport for HttpTransport {
    fn limits(&self) -> RequestLimits {
        RequestLimits { records: self.merge_records, bytes: MAX_REQUEST_BYTES, raw_bytes: MAX_REQUEST_RAW_BYTES }
    }

    fn send(&self, r: &Request<'_>) -> Outcome {
        let mut req = self
            .agent
            .post(&self.endpoint)
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "zstd")
            .header(wire::HEADER_VERSION, wire::VERSION)
            .header(wire::HEADER_BATCH_ID, r.id)
            .header("x-tokentap-cluster", &self.cluster);
        if r.retried {
            req = req.header(wire::HEADER_RETRY, "1");
        }
        if let Some(f) = &self.token_file {
            match std::fs::read_to_string(f) {
                Ok(t) => req = req.header("authorization", format!("Bearer {}", t.trim())),
                Err(e) => return Outcome::Retry { why: format!("token file {}: {e}", f.display()), after: None },
            }
        }
        match req.send(r.body) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let text = resp.body_mut().with_config().limit(256 * 1024).read_to_string().unwrap_or_default();
                classify(status, retry_after.as_deref(), &text)
            }
            Err(e) => Outcome::Retry { why: e.to_string(), after: None },
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
        let retry = |after: Option<u64>| move |a: &Outcome| matches!(a, Outcome::Retry { after: x, .. } if *x == after.map(Duration::from_secs));
        type Check = Box<dyn Fn(&Outcome) -> bool>;
        let cases: Vec<(u16, Option<&str>, &str, Check)> = vec![
            (200, None, r#"{"accepted":3,"duplicates":0}"#, Box::new(|a| *a == Outcome::Delivered)),
            (204, None, "", Box::new(|a| *a == Outcome::Delivered)),
            (
                422,
                None,
                partial,
                Box::new(
                    |a| matches!(a, Outcome::Partial { accepted: 8, rejected: 2, reasons } if reasons[0] == "e1: Code: 53"),
                ),
            ),
            (422, None, "not json", Box::new(|a| matches!(a, Outcome::Refused { status: 422, .. }))),
            (400, None, "bad", Box::new(|a| matches!(a, Outcome::Refused { status: 400, .. }))),
            (413, None, "", Box::new(|a| matches!(a, Outcome::Refused { status: 413, .. }))),
            (415, None, "", Box::new(|a| matches!(a, Outcome::Refused { status: 415, .. }))),
            (401, None, "", Box::new(|a| matches!(a, Outcome::Unauthorized { status: 401, .. }))),
            (403, None, "", Box::new(|a| matches!(a, Outcome::Unauthorized { status: 403, .. }))),
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

#[cfg(test)]
mod check_tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_collector_that_does_not_answer_is_told_from_one_that_does() {
        let dir = std::env::temp_dir().join("tt-collector-check");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let served = std::thread::spawn(move || {
            let mut heads = Vec::new();
            // A collector, then a proxy before it that wants a token: both answer.
            for status in ["200 OK", "401 Unauthorized"] {
                let (mut c, _) = l.accept().unwrap();
                let mut head = [0u8; 1024];
                let n = c.read(&mut head).unwrap();
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n");
                c.write_all(reply.as_bytes()).unwrap();
                heads.push(String::from_utf8_lossy(&head[..n]).into_owned());
            }
            heads
        });
        for _ in 0..2 {
            answers(&CollectorSettings::new(format!("http://127.0.0.1:{port}/"), dir.clone())).unwrap();
        }
        assert!(served.join().unwrap().iter().all(|h| h.starts_with("GET /healthz HTTP/1.1")));
        // Nothing listens there now.
        let e = answers(&CollectorSettings::new(format!("http://127.0.0.1:{port}"), dir)).unwrap_err();
        assert!(e.starts_with(&format!("http://127.0.0.1:{port}/healthz: ")), "{e}");
    }
}
