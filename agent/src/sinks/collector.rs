//! `--output collector:URL`: records go to a tokentap collector in compressed
//! batches (the wire format of `tokentap_event::wire`), through an on-disk spool
//! so that a collector outage, or an agent restart, loses nothing.
//!
//! The pipeline thread seals each batch into a spool file (written, then
//! renamed: a crash never leaves half a batch); a sender thread posts the files
//! oldest first and deletes each only on a 2xx answer, retrying with backoff on
//! errors, 429 and 5xx. A batch the collector rejects as malformed (other 4xx)
//! is moved to `rejected/` and counted, never retried forever. The spool is
//! bounded: past `spool_max_bytes` the oldest batches are dropped and counted.
//! Batches left at exit are sent by the next run.
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokentap_event::{wire, LlmCall};

use super::Sink;
use crate::stats::Stats;

#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// Collector base URL (`http://collector:8787`).
    pub url: String,
    /// Bearer token file (re-read per request: rotations apply without restart).
    pub token_file: Option<PathBuf>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// Records per batch, at most.
    pub batch_records: usize,
    /// Sent with every batch (`x-tokentap-cluster`): which cluster this node is in.
    pub cluster: String,
    /// How long the agent waits at exit for the spool to drain.
    pub drain_timeout: Duration,
    /// CA certificate(s) trusted for an `https://` collector (default: the
    /// public web PKI roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The HTTP client, with the collector's CA and our client certificate.
fn http_agent(cfg: &CollectorConfig) -> io::Result<ureq::Agent> {
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

pub struct CollectorSink {
    buf: Vec<LlmCall>,
    cfg: CollectorConfig,
    seq: u64,
    shared: Arc<Shared>,
    sender: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    /// Sealed batches waiting (a hint; the spool directory is the truth).
    wake: Mutex<bool>,
    cond: Condvar,
    stop: AtomicBool,
    stats: Arc<Stats>,
}

/// `<unix ms>-<seq>-<batch id>-<records>.zst`: names sort oldest first.
fn batch_name(seq: u64, records: usize) -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("{ms:013}-{seq:08}-{}-{records}.zst", uuid::Uuid::new_v4())
}

fn parse_name(name: &str) -> Option<(String, u64)> {
    let stem = name.strip_suffix(".zst")?;
    let mut parts = stem.splitn(3, '-');
    let (_, _, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let (id, n) = rest.rsplit_once('-')?;
    Some((id.to_owned(), n.parse().ok()?))
}

/// Spooled batches, oldest first, with their sizes.
fn spooled(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(PathBuf, u64)> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".zst"))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    v.sort();
    v
}

impl CollectorSink {
    pub fn new(cfg: CollectorConfig, stats: Arc<Stats>) -> io::Result<Self> {
        std::fs::create_dir_all(cfg.spool_dir.join("rejected"))?;
        // A batch half-written by a crash is not a batch.
        for e in std::fs::read_dir(&cfg.spool_dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let left = spooled(&cfg.spool_dir);
        if !left.is_empty() {
            tracing::info!(batches = left.len(), "collector spool has batches from a previous run; sending them");
        }
        let shared =
            Arc::new(Shared { wake: Mutex::new(true), cond: Condvar::new(), stop: AtomicBool::new(false), stats });
        // Bad certificate paths are configuration errors: fail at start, not per send.
        let agent = http_agent(&cfg)?;
        let sender = {
            let (cfg, shared) = (cfg.clone(), shared.clone());
            std::thread::Builder::new().name("collector".into()).spawn(move || send_loop(&cfg, &shared, &agent))?
        };
        Ok(Self { buf: Vec::new(), cfg, seq: 0, shared, sender: Some(sender) })
    }

    fn seal(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let body = wire::encode(&self.buf);
        self.seq += 1;
        let name = batch_name(self.seq, self.buf.len());
        let tmp = self.cfg.spool_dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, &body)?;
        std::fs::rename(&tmp, self.cfg.spool_dir.join(&name))?;
        self.buf.clear();
        self.enforce_bound();
        *self.shared.wake.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.cond.notify_one();
        Ok(())
    }

    /// Drop the oldest batches while the spool is over its size limit.
    fn enforce_bound(&self) {
        let files = spooled(&self.cfg.spool_dir);
        let mut total: u64 = files.iter().map(|(_, n)| n).sum();
        for (path, size) in files {
            if total <= self.cfg.spool_max_bytes {
                break;
            }
            let records = path.file_name().and_then(|n| parse_name(&n.to_string_lossy())).map_or(0, |(_, n)| n);
            if std::fs::remove_file(&path).is_ok() {
                total -= size;
                Stats::add(&self.shared.stats.collector_spool_dropped_records, records);
                tracing::warn!(records, "collector spool full: oldest batch dropped");
            }
        }
    }
}

impl Sink for CollectorSink {
    fn write(&mut self, record: &LlmCall) -> io::Result<()> {
        self.buf.push(record.clone());
        if self.buf.len() >= self.cfg.batch_records {
            self.seal()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.seal()
    }
}

impl Drop for CollectorSink {
    fn drop(&mut self) {
        if let Err(e) = self.seal() {
            tracing::warn!(error = %e, "could not spool the last batch");
        }
        // Give the sender a moment to drain, then leave the rest for the next run.
        let deadline = Instant::now() + self.cfg.drain_timeout;
        while Instant::now() < deadline && !spooled(&self.cfg.spool_dir).is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.cond.notify_one();
        if let Some(h) = self.sender.take() {
            let _ = h.join();
        }
        let left = spooled(&self.cfg.spool_dir).len();
        if left > 0 {
            tracing::warn!(batches = left, dir = %self.cfg.spool_dir.display(), "batches left in the collector spool for the next run");
        }
    }
}

enum Outcome {
    Sent,
    Rejected(u16, String),
    Retry(String),
}

fn post(agent: &ureq::Agent, cfg: &CollectorConfig, path: &Path) -> Outcome {
    let Some((batch_id, _)) = path.file_name().and_then(|n| parse_name(&n.to_string_lossy())) else {
        return Outcome::Rejected(0, "unreadable spool file name".into());
    };
    let body = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let mut req = agent
        .post(format!("{}{}", cfg.url.trim_end_matches('/'), wire::PATH))
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "zstd")
        .header(wire::HEADER_VERSION, wire::VERSION)
        .header(wire::HEADER_BATCH_ID, &batch_id)
        .header("x-tokentap-cluster", &cfg.cluster);
    if let Some(f) = &cfg.token_file {
        match std::fs::read_to_string(f) {
            Ok(t) => req = req.header("authorization", format!("Bearer {}", t.trim())),
            Err(e) => return Outcome::Retry(format!("token file {}: {e}", f.display())),
        }
    }
    match req.send(&body[..]) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let text = resp.body_mut().with_config().limit(64 * 1024).read_to_string().unwrap_or_default();
            match status {
                200..=299 => Outcome::Sent,
                408 | 429 | 500..=599 => Outcome::Retry(format!("HTTP {status}: {}", text.trim())),
                _ => Outcome::Rejected(status, text.trim().to_owned()),
            }
        }
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

fn send_loop(cfg: &CollectorConfig, shared: &Shared, agent: &ureq::Agent) {
    let mut attempt: u32 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let files = spooled(&cfg.spool_dir);
        Stats::set(&shared.stats.collector_spool_bytes, files.iter().map(|(_, n)| n).sum());
        let Some((path, _)) = files.into_iter().next() else {
            let mut wake = shared.wake.lock().unwrap_or_else(|e| e.into_inner());
            if !*wake {
                wake = shared
                    .cond
                    .wait_timeout(wake, Duration::from_secs(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            *wake = false;
            continue;
        };
        let records = path.file_name().and_then(|n| parse_name(&n.to_string_lossy())).map_or(0, |(_, n)| n);
        match post(agent, cfg, &path) {
            Outcome::Sent => {
                attempt = 0;
                let _ = std::fs::remove_file(&path);
                Stats::inc(&shared.stats.collector_batches_sent);
                Stats::add(&shared.stats.collector_records_sent, records);
            }
            Outcome::Rejected(status, why) => {
                tracing::error!(status, %why, file = %path.display(), "collector rejected a batch; kept in rejected/");
                Stats::inc(&shared.stats.collector_batches_rejected);
                if let Some(name) = path.file_name() {
                    let _ = std::fs::rename(&path, cfg.spool_dir.join("rejected").join(name));
                }
            }
            Outcome::Retry(why) => {
                Stats::inc(&shared.stats.collector_send_errors);
                let wait = Duration::from_millis((100u64 << attempt.min(7)).min(10_000));
                if attempt.is_multiple_of(10) {
                    tracing::warn!(%why, retry_in_ms = wait.as_millis() as u64, "collector unavailable; batches kept in the spool");
                }
                attempt = attempt.saturating_add(1);
                let deadline = Instant::now() + wait;
                while Instant::now() < deadline && !shared.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_names_sort_and_parse() {
        let a = batch_name(1, 10);
        let b = batch_name(2, 3);
        assert!(a < b);
        let (id, n) = parse_name(&a).unwrap();
        assert_eq!(n, 10);
        assert!(uuid::Uuid::parse_str(&id).is_ok());
        assert_eq!(parse_name("garbage.zst"), None);
    }

    /// A stand-in collector (a real one is in tests/tests/e2e_collector.rs): a
    /// socket that answers every request 200 and hands back the bodies.
    fn fake_collector() -> (String, std::sync::mpsc::Receiver<Vec<u8>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let _ = tx.send(body);
                let mut s = s;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
            }
        });
        (url, rx)
    }

    fn record(i: u64) -> LlmCall {
        LlmCall {
            event_id: LlmCall::new_event_id(),
            ts: LlmCall::format_ts(i as i128),
            provider: "openai".into(),
            operation: "chat".into(),
            ..Default::default()
        }
    }

    #[test]
    fn batches_left_by_a_previous_run_are_sent_by_the_next() {
        let dir = std::env::temp_dir().join(format!("tt-spool-replay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = |url: &str| CollectorConfig {
            url: url.into(),
            token_file: None,
            spool_dir: dir.clone(),
            spool_max_bytes: 1 << 20,
            batch_records: 10,
            cluster: "c".into(),
            drain_timeout: Duration::from_millis(10),
            ca_file: None,
            client_cert: None,
        };
        // First run: the collector is down; 25 records stay in the spool.
        let mut first = CollectorSink::new(cfg("http://127.0.0.1:9"), Arc::new(Stats::default())).unwrap();
        let sent: Vec<LlmCall> = (0..25).map(record).collect();
        for r in &sent {
            first.write(r).unwrap();
        }
        drop(first);
        assert_eq!(spooled(&dir).len(), 3);
        // Next run (an agent restart): they go out, oldest first, and leave the spool.
        let (url, bodies) = fake_collector();
        let stats = Arc::new(Stats::default());
        let second = CollectorSink::new(cfg(&url), stats.clone()).unwrap();
        let mut got = Vec::new();
        while got.len() < 25 {
            let b = bodies.recv_timeout(Duration::from_secs(10)).expect("a replayed batch");
            got.extend(tokentap_event::wire::decode(Some("zstd"), &b, 1 << 20).unwrap());
        }
        let ids = |v: &[LlmCall]| v.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&sent), "every record once, in order");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !spooled(&dir).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(spooled(&dir).is_empty());
        assert_eq!(stats.snapshot().collector_records_sent, 25);
        drop(second);
    }

    #[test]
    fn spool_is_bounded_and_survives_without_a_collector() {
        let dir = std::env::temp_dir().join(format!("tt-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let stats = Arc::new(Stats::default());
        let cfg = CollectorConfig {
            url: "http://127.0.0.1:9".into(), // nothing listens: every send fails
            token_file: None,
            spool_dir: dir.clone(),
            spool_max_bytes: 4096,
            batch_records: 50,
            cluster: String::new(),
            drain_timeout: Duration::from_millis(10),
            ca_file: None,
            client_cert: None,
        };
        let mut s = CollectorSink::new(cfg, stats.clone()).unwrap();
        for i in 0..400u64 {
            let r = LlmCall {
                event_id: LlmCall::new_event_id(),
                ts: LlmCall::format_ts(i as i128),
                provider: "openai".into(),
                operation: "chat".into(),
                request_model: Some(format!("model-{i}")),
                ..Default::default()
            };
            s.write(&r).unwrap();
        }
        drop(s);
        let left: u64 = spooled(&dir).iter().map(|(_, n)| n).sum();
        assert!(left <= 4096, "spool bounded: {left}");
        let kept: u64 =
            spooled(&dir).iter().filter_map(|(p, _)| parse_name(&p.file_name()?.to_string_lossy())).map(|x| x.1).sum();
        let dropped = stats.snapshot().collector_spool_dropped_records;
        assert_eq!(kept + dropped, 400, "every record is either spooled or counted as dropped");
        assert!(dropped > 0);
        assert!(stats.snapshot().collector_send_errors > 0);
    }
}
