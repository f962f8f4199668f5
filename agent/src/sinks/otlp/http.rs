//! The OTLP sink's transport (OTLP/HTTP, binary protobuf): a run of spooled
//! batches (zstd NDJSON records, one zstd frame per batch) becomes one
//! `ExportTraceServiceRequest` or `ExportMetricsServiceRequest`, posted to the
//! signal's URL. Answers, after the OTLP specification, in the spool's terms:
//!
//! - 2xx: delivered. A `partial_success` naming rejected spans: those are
//!   refused for good (counted), the rest delivered; rejected data points are
//!   counted and logged.
//! - 401, 403: credentials (a wrong or rotated header): retried, never rejected.
//! - 404, 405: a wrong endpoint URL: retried, so fixing the URL loses nothing.
//! - 408, 429, 5xx, transport errors: retried with backoff, honouring
//!   `Retry-After`. (The specification lists 502, 503 and 504 as retryable;
//!   tokentap retries any 5xx, as a server-side failure says nothing about
//!   the data.)
//! - Other 4xx: the data is refused; a merged request is resent one batch at
//!   a time, a single batch moved to `rejected/`: never retried forever.
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tokentap_event::LlmCall;

use super::counters::OtlpCounters;
use super::semconv::Host;
use super::settings::{self, Compression, OtlpSettings, Signal};
use super::{metrics, traces};
use crate::sinks::http_client::{self, TlsFiles};
use crate::sinks::spool::{Outcome, Request, RequestLimits, Transport};

/// Compressed spool bytes of one request, at most.
const MAX_REQUEST_BYTES: u64 = 8 << 20;
/// NDJSON bytes of one request, at most (protobuf is smaller than the JSON).
const MAX_REQUEST_RAW_BYTES: u64 = 24 << 20;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A spooled run's records, one list per batch (zstd frame).
pub fn decode_batches(body: &[u8]) -> io::Result<Vec<Vec<LlmCall>>> {
    let mut batches = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let n = zstd::zstd_safe::find_frame_compressed_size(rest)
            .map_err(|c| io::Error::other(format!("not a zstd frame: {}", zstd::zstd_safe::get_error_name(c))))?;
        let (frame, tail) = rest.split_at(n.min(rest.len()));
        let ndjson = zstd::stream::decode_all(frame)?;
        let records = ndjson
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(serde_json::from_slice::<LlmCall>)
            .collect::<Result<Vec<_>, _>>()?;
        batches.push(records);
        rest = tail;
    }
    Ok(batches)
}

/// Posts one signal to one OTLP endpoint.
pub struct OtlpTransport {
    agent: ureq::Agent,
    signal: Signal,
    url: String,
    headers: Vec<(String, String)>,
    headers_file: Option<PathBuf>,
    compression: Compression,
    merge_records: u64,
    host: Host,
    counters: Arc<OtlpCounters>,
}

impl OtlpTransport {
    /// Bad certificate paths are configuration errors: they fail here, at start.
    pub fn new(cfg: &OtlpSettings, signal: Signal, host: Host, counters: Arc<OtlpCounters>) -> io::Result<Self> {
        let client = cfg.client_cert().map(|(c, k)| (c.as_path(), k.as_path()));
        let tls = TlsFiles { ca: cfg.ca_file.as_deref(), client };
        let connect = cfg.timeout().min(Duration::from_secs(5));
        Ok(Self {
            agent: http_client::agent(tls, connect, cfg.timeout())?,
            signal,
            url: cfg.url(signal),
            headers: cfg.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            headers_file: cfg.headers_file.clone(),
            compression: cfg.compression,
            merge_records: cfg.merge_records as u64,
            host,
            counters,
        })
    }

    /// The request body (protobuf, compressed as configured).
    pub fn encode(&self, batches: &[Vec<LlmCall>]) -> io::Result<Vec<u8>> {
        let proto = match self.signal {
            Signal::Traces => traces::request(&batches.concat(), &self.host).encode_to_vec(),
            Signal::Metrics => metrics::request(batches, &self.host).encode_to_vec(),
        };
        match self.compression {
            Compression::None => Ok(proto),
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&proto)?;
                gz.finish()
            }
        }
    }

    /// The configured headers, then the headers file's (which win).
    fn headers(&self) -> Result<Vec<(String, String)>, String> {
        let mut all = self.headers.clone();
        if let Some(f) = &self.headers_file {
            let text = std::fs::read_to_string(f).map_err(|e| format!("headers file {}: {e}", f.display()))?;
            let more = settings::parse_headers_file(&text).map_err(|e| format!("headers file {}: {e}", f.display()))?;
            all.retain(|(k, _)| !more.iter().any(|(m, _)| m.eq_ignore_ascii_case(k)));
            all.extend(more);
        }
        Ok(all)
    }

    /// The answer -> what becomes of the batches.
    fn classify(&self, status: u16, retry_after: Option<&str>, body: &[u8], records: u64) -> Outcome {
        let text = || {
            let t: String = String::from_utf8_lossy(body).chars().filter(|c| !c.is_control()).take(512).collect();
            format!("HTTP {status}: {}", t.trim())
        };
        match status {
            200..=299 => self.partial(body, records),
            401 | 403 => Outcome::Unauthorized { status, why: format!("{} (check the headers)", text()) },
            404 | 405 => {
                Outcome::Retry { why: format!("{} (check the endpoint URL {})", text(), self.url), after: None }
            }
            408 | 429 | 500..=599 => {
                Outcome::Retry { why: text(), after: http_client::retry_after(retry_after, MAX_RETRY_AFTER) }
            }
            400..=499 => Outcome::Refused { status, why: text() },
            _ => Outcome::Retry { why: text(), after: None },
        }
    }

    /// A 2xx answer's `partial_success`, if any (an empty or unreadable body
    /// is a full success).
    fn partial(&self, body: &[u8], records: u64) -> Outcome {
        match self.signal {
            Signal::Traces => {
                let p = ExportTraceServiceResponse::decode(body).ok().and_then(|r| r.partial_success);
                match p {
                    Some(p) if p.rejected_spans > 0 => {
                        let rejected = (p.rejected_spans as u64).min(records);
                        Outcome::Partial { accepted: records - rejected, rejected, reasons: vec![p.error_message] }
                    }
                    _ => Outcome::Delivered,
                }
            }
            Signal::Metrics => {
                let p = ExportMetricsServiceResponse::decode(body).ok().and_then(|r| r.partial_success);
                if let Some(p) = p.filter(|p| p.rejected_data_points > 0) {
                    let n = self
                        .counters
                        .metric_points_rejected
                        .fetch_add(p.rejected_data_points as u64, Ordering::Relaxed);
                    if n == 0 || p.rejected_data_points as u64 >= 100 {
                        tracing::warn!(url = %self.url, points = p.rejected_data_points, why = %p.error_message, "OTLP receiver refused metric points");
                    }
                }
                Outcome::Delivered
            }
        }
    }
}

impl Transport for OtlpTransport {
    fn limits(&self) -> RequestLimits {
        RequestLimits { records: self.merge_records, bytes: MAX_REQUEST_BYTES, raw_bytes: MAX_REQUEST_RAW_BYTES }
    }

    fn send(&self, r: &Request<'_>) -> Outcome {
        // Our own spool files: one that does not decode never will.
        let body = match decode_batches(r.body).and_then(|b| self.encode(&b)) {
            Ok(b) => b,
            Err(e) => return Outcome::Refused { status: 0, why: format!("spooled batch unreadable: {e}") },
        };
        let headers = match self.headers() {
            Ok(h) => h,
            Err(why) => return Outcome::Retry { why, after: None },
        };
        let mut req = self.agent.post(&self.url).header("content-type", "application/x-protobuf");
        if self.compression == Compression::Gzip {
            req = req.header("content-encoding", "gzip");
        }
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send(&body[..]) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let answer = resp.body_mut().with_config().limit(256 * 1024).read_to_vec().unwrap_or_default();
                self.classify(status, retry_after.as_deref(), &answer, r.records)
            }
            Err(e) => Outcome::Retry { why: e.to_string(), after: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

    use super::*;

    fn transport(signal: Signal) -> OtlpTransport {
        let cfg = OtlpSettings::new("http://127.0.0.1:9", "/nonexistent");
        OtlpTransport::new(&cfg, signal, Host::default(), Arc::default()).unwrap()
    }

    #[test]
    fn answers_follow_the_otlp_specification() {
        let t = transport(Signal::Traces);
        let partial = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess { rejected_spans: 2, error_message: "too old".into() }),
        }
        .encode_to_vec();
        assert_eq!(t.classify(200, None, b"", 5), Outcome::Delivered);
        assert_eq!(
            t.classify(200, None, &partial, 5),
            Outcome::Partial { accepted: 3, rejected: 2, reasons: vec!["too old".into()] }
        );
        assert!(matches!(t.classify(400, None, b"bad", 5), Outcome::Refused { status: 400, .. }));
        assert!(matches!(t.classify(413, None, b"", 5), Outcome::Refused { status: 413, .. }));
        assert!(matches!(t.classify(401, None, b"", 5), Outcome::Unauthorized { status: 401, .. }));
        assert!(matches!(t.classify(404, None, b"", 5), Outcome::Retry { after: None, .. }));
        assert!(
            matches!(t.classify(503, Some("2"), b"", 5), Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(2))
        );
        assert!(
            matches!(t.classify(429, Some("9999"), b"", 5), Outcome::Retry { after: Some(d), .. } if d == MAX_RETRY_AFTER)
        );
        assert!(matches!(t.classify(500, None, b"", 5), Outcome::Retry { .. }));
        let m = transport(Signal::Metrics);
        let partial = ExportMetricsServiceResponse {
            partial_success: Some(opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess {
                rejected_data_points: 4,
                error_message: "x".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(m.classify(200, None, &partial, 5), Outcome::Delivered);
        assert_eq!(m.counters.metric_points_rejected.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn batches_are_read_frame_by_frame() {
        let rec = |i: u32| LlmCall { event_id: format!("e{i}"), ..Default::default() };
        let frame = |rs: &[LlmCall]| {
            let mut nd = Vec::new();
            for r in rs {
                serde_json::to_writer(&mut nd, r).unwrap();
                nd.push(b'\n');
            }
            zstd::bulk::compress(&nd, 3).unwrap()
        };
        let body = [frame(&[rec(1), rec(2)]), frame(&[rec(3)])].concat();
        let got = decode_batches(&body).unwrap();
        assert_eq!(got, vec![vec![rec(1), rec(2)], vec![rec(3)]]);
        assert!(decode_batches(b"not zstd").is_err());
    }
}
