//! The collector sink against a stand-in collector (the real one is exercised
//! in tests/tests/e2e_collector.rs): a socket that answers each request as a
//! script says and records what it received and how many requests were open
//! at once. Tests wait for facts with deadlines, never for fixed times.
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokentap_event::{wire, LlmCall};

use super::{CollectorSettings, CollectorSink};
use crate::sinks::spool::{batch_name, parse_name};
use crate::sinks::Sink;
use crate::stats::Stats;

#[derive(Clone, Debug)]
struct Req {
    batch_id: String,
    /// Sent with `X-Tokentap-Retry`.
    retry: bool,
    auth: Option<String>,
    records: Vec<LlmCall>,
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

/// 200 with the contract's counts.
fn ok(req: &Req) -> Reply {
    Reply { status: 200, headers: Vec::new(), body: format!(r#"{{"accepted":{},"duplicates":0}}"#, req.records.len()) }
}

fn status(status: u16, headers: &[(&'static str, &str)], body: &str) -> Reply {
    Reply { status, headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(), body: body.into() }
}

/// Request number (from 0) and request -> answer.
type Script = dyn Fn(usize, &Req) -> Reply + Send + Sync;

#[derive(Default)]
struct Log {
    /// Every request with the status it got, in arrival order.
    answered: Mutex<Vec<(Req, u16)>>,
    /// Requests open, and whether the gate was reached once (then it stays open).
    open: Mutex<(usize, bool)>,
    changed: Condvar,
    max_open: AtomicUsize,
}

struct StandIn {
    url: String,
    log: Arc<Log>,
}

impl StandIn {
    fn start(script: impl Fn(usize, &Req) -> Reply + Send + Sync + 'static) -> Self {
        Self::gated(script, 0)
    }

    /// Each request waits (10 s at most) until `gate` requests are open: a
    /// client sending one at a time shows as `max_open` 1.
    fn gated(script: impl Fn(usize, &Req) -> Reply + Send + Sync + 'static, gate: usize) -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let log = Arc::new(Log::default());
        let script: Arc<Script> = Arc::new(script);
        let counter = Arc::new(AtomicUsize::new(0));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (log, script, counter) = (log2.clone(), script.clone(), counter.clone());
                std::thread::spawn(move || serve(s, &log, &*script, &counter, gate));
            }
        });
        Self { url, log }
    }

    fn answered(&self) -> Vec<(Req, u16)> {
        self.log.answered.lock().unwrap().clone()
    }

    /// Event ids of the records in requests answered 2xx, in arrival order.
    fn delivered(&self) -> Vec<String> {
        let a = self.answered();
        a.iter().filter(|(_, s)| *s < 300).flat_map(|(r, _)| r.records.iter().map(|c| c.event_id.clone())).collect()
    }
}

fn serve(s: std::net::TcpStream, log: &Log, script: &Script, counter: &AtomicUsize, gate: usize) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let (mut len, mut batch_id, mut auth, mut retry) = (0, String::new(), None, false);
    let mut first = true;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        // The sink's check at start: answered, not a batch.
        if std::mem::take(&mut first) && line.starts_with("GET /healthz ") {
            let mut w = s;
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n");
            return;
        }
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim().to_owned();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.parse().unwrap_or(0),
            wire::HEADER_BATCH_ID => batch_id = v,
            "authorization" => auth = Some(v),
            wire::HEADER_RETRY => retry = true,
            _ => {}
        }
    }
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    let records = wire::decode(Some("zstd"), &body, 1 << 30, &wire::Limits::now(None)).expect("a valid batch");
    let req = Req { batch_id, retry, auth, records };
    {
        let mut open = log.open.lock().unwrap();
        open.0 += 1;
        open.1 |= open.0 >= gate;
        log.max_open.fetch_max(open.0, Ordering::SeqCst);
        log.changed.notify_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !open.1 && Instant::now() < deadline {
            open = log.changed.wait_timeout(open, Duration::from_millis(100)).unwrap().0;
        }
    }
    let reply = script(counter.fetch_add(1, Ordering::SeqCst), &req);
    let mut head =
        format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n", reply.status, reply.body.len());
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    // Logged before answering: once the agent has the answer, the log has the request.
    log.answered.lock().unwrap().push((req, reply.status));
    let mut s = s;
    let _ = s.write_all(format!("{head}\r\n{}", reply.body).as_bytes());
    log.open.lock().unwrap().0 -= 1;
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

fn records(n: u64) -> Vec<LlmCall> {
    (0..n).map(record).collect()
}

fn ids(v: &[LlmCall]) -> Vec<String> {
    v.iter().map(|r| r.event_id.clone()).collect()
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tt-spool-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path, url: &str) -> CollectorSettings {
    CollectorSettings { drain_timeout: Duration::from_secs(10), ..CollectorSettings::new(url, dir) }
}

/// Nothing listens there: every send fails.
const DOWN: &str = "http://127.0.0.1:9";

/// Batches as a previous run leaves them in the spool.
fn spool_batches(dir: &Path, batches: &[Vec<LlmCall>]) {
    for (i, b) in batches.iter().enumerate() {
        std::fs::write(dir.join(batch_name(i as u64 + 1, b.len())), wire::encode(b)).unwrap();
    }
}

/// The spool directory's batch files (path, bytes), by name.
fn list_dir(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".zst"))
        .map(|e| (e.path(), e.metadata().unwrap().len()))
        .collect();
    v.sort();
    v
}

fn records_in(files: &[(PathBuf, u64)]) -> Vec<u64> {
    files.iter().map(|(p, _)| parse_name(&p.file_name().unwrap().to_string_lossy()).unwrap().1).collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn batches_left_by_a_previous_run_are_sent_by_the_next() {
    let dir = fresh_dir("replay");
    let cfg = |url: &str| CollectorSettings {
        batch_records: 10,
        drain_timeout: Duration::from_millis(10),
        ..config(&dir, url)
    };
    // First run: the collector is down; 25 records stay in the spool.
    let mut first = CollectorSink::new(cfg(DOWN), Arc::new(Stats::default())).unwrap();
    let sent = records(25);
    for r in &sent {
        first.write(r).unwrap();
    }
    drop(first);
    assert_eq!(list_dir(&dir).len(), 3);
    // Next run (an agent restart): they go out, oldest first, and leave the spool.
    let c = StandIn::start(|_, r| ok(r));
    let stats = Arc::new(Stats::default());
    let second = CollectorSink::new(cfg(&c.url), stats.clone()).unwrap();
    wait_for("25 records sent", || stats.snapshot().get("collector_records_sent") == 25);
    assert_eq!(c.delivered(), ids(&sent), "every record once, in order");
    wait_for("an empty spool", || list_dir(&dir).is_empty());
    drop(second);
}

#[test]
fn spool_is_bounded_and_survives_without_a_collector() {
    let dir = fresh_dir("bounded");
    let stats = Arc::new(Stats::default());
    let cfg = CollectorSettings {
        spool_max_bytes: 4096,
        batch_records: 50,
        drain_timeout: Duration::from_millis(10),
        ..config(&dir, DOWN)
    };
    let mut s = CollectorSink::new(cfg, stats.clone()).unwrap();
    for i in 0..400u64 {
        let r = LlmCall { request_model: Some(format!("model-{i}")), ..record(i) };
        s.write(&r).unwrap();
    }
    drop(s);
    let left: u64 = list_dir(&dir).iter().map(|(_, n)| n).sum();
    assert!(left <= 4096, "spool bounded: {left}");
    let kept: u64 = records_in(&list_dir(&dir)).iter().sum();
    let dropped = stats.snapshot().get("collector_spool_dropped_records");
    assert_eq!(kept + dropped, 400, "every record is either spooled or counted as dropped");
    assert!(dropped > 0);
    assert!(stats.snapshot().get("collector_send_errors") > 0);
}

#[test]
fn batches_are_sealed_by_size_and_by_age_not_per_flush() {
    let dir = fresh_dir("seal-size");
    let hour = 3_600_000;
    let cfg = CollectorSettings {
        batch_records: 10,
        batch_age_ms: hour,
        drain_timeout: Duration::ZERO,
        ..config(&dir, DOWN)
    };
    let mut s = CollectorSink::new(cfg, Arc::new(Stats::default())).unwrap();
    for r in records(25) {
        s.write(&r).unwrap();
        s.flush().unwrap();
    }
    assert_eq!(records_in(&list_dir(&dir)), [10, 10], "sealed at 10 records; a flush does not seal");
    assert_eq!(s.buffered(), 5);
    drop(s);

    let dir = fresh_dir("seal-age");
    let age = Duration::from_millis(50);
    let cfg = CollectorSettings {
        batch_records: 1000,
        batch_age_ms: age.as_millis() as u64,
        drain_timeout: Duration::ZERO,
        ..config(&dir, DOWN)
    };
    let mut s = CollectorSink::new(cfg, Arc::new(Stats::default())).unwrap();
    let opened = Instant::now();
    for r in records(3) {
        s.write(&r).unwrap();
    }
    assert_eq!(s.buffered(), 3, "writes alone seal by size only");
    wait_for("the batch sealed by age", || {
        s.flush().unwrap();
        s.buffered() == 0
    });
    assert!(opened.elapsed() >= age);
    assert_eq!(records_in(&list_dir(&dir)), [3]);
}

#[test]
fn spooled_batches_are_merged_into_one_request_in_order() {
    let dir = fresh_dir("merge");
    let batches: Vec<Vec<LlmCall>> = (0..5).map(|_| records(7)).collect();
    spool_batches(&dir, &batches);
    let part_ids: Vec<String> =
        list_dir(&dir).iter().map(|(p, _)| parse_name(&p.file_name().unwrap().to_string_lossy()).unwrap().0).collect();
    let c = StandIn::start(|_, r| ok(r));
    let stats = Arc::new(Stats::default());
    let s = CollectorSink::new(config(&dir, &c.url), stats.clone()).unwrap();
    wait_for("35 records sent", || stats.snapshot().get("collector_records_sent") == 35);
    let answered = c.answered();
    assert_eq!(answered.len(), 1, "one request for five batches");
    assert!(answered[0].0.retry, "a previous run's batches may have reached the collector");
    assert_eq!(ids(&answered[0].0.records), ids(&batches.concat()), "all records, in order");
    let id = &answered[0].0.batch_id;
    assert!(uuid::Uuid::parse_str(id).is_ok() && !part_ids.contains(id), "a batch id of its own: {id}");
    assert_eq!(stats.snapshot().get("collector_batches_sent"), 5);
    wait_for("an empty spool", || list_dir(&dir).is_empty());
    drop(s);

    // At most `merge_records` per request.
    let dir = fresh_dir("merge-limit");
    spool_batches(&dir, &batches);
    let c = StandIn::start(|_, r| ok(r));
    let stats = Arc::new(Stats::default());
    let cfg = CollectorSettings { merge_records: 14, max_in_flight: 1, ..config(&dir, &c.url) };
    let s = CollectorSink::new(cfg, stats.clone()).unwrap();
    wait_for("35 records sent", || stats.snapshot().get("collector_records_sent") == 35);
    let sizes: Vec<usize> = c.answered().iter().map(|(r, _)| r.records.len()).collect();
    assert_eq!(sizes, [14, 14, 7]);
    assert_eq!(c.delivered(), ids(&batches.concat()));
    drop(s);
}

#[test]
fn a_refused_merge_is_resent_batch_by_batch_and_only_the_bad_one_is_rejected() {
    let dir = fresh_dir("split");
    let mut batches: Vec<Vec<LlmCall>> = (0..3).map(|_| records(4)).collect();
    batches[1][2].request_model = Some("poison".into());
    spool_batches(&dir, &batches);
    let c = StandIn::start(|_, r| {
        if r.records.iter().any(|x| x.request_model.as_deref() == Some("poison")) {
            status(400, &[], r#"{"error":"line 3: bad"}"#)
        } else {
            ok(r)
        }
    });
    let stats = Arc::new(Stats::default());
    let s = CollectorSink::new(config(&dir, &c.url), stats.clone()).unwrap();
    wait_for("the spool settled", || list_dir(&dir).is_empty() && stats.snapshot().get("collector_in_flight") == 0);
    let sizes: Vec<usize> = c.answered().iter().map(|(r, _)| r.records.len()).collect();
    assert_eq!(sizes, [12, 4, 4, 4], "the merged request, then each batch alone");
    let (mut got, mut good) = (c.delivered(), [ids(&batches[0]), ids(&batches[2])].concat());
    got.sort();
    good.sort();
    assert_eq!(got, good);
    let rejected = std::fs::read_dir(dir.join("rejected")).unwrap().flatten().map(|e| e.path()).collect::<Vec<_>>();
    assert_eq!(rejected.len(), 1);
    let kept = wire::decode(Some("zstd"), &std::fs::read(&rejected[0]).unwrap(), 1 << 20, &wire::Limits::now(None));
    assert_eq!(ids(&kept.unwrap()), ids(&batches[1]), "only the bad batch is in rejected/");
    let st = stats.snapshot();
    assert_eq!((st.get("collector_records_sent"), st.get("collector_batches_sent")), (8, 2));
    assert_eq!((st.get("collector_batches_rejected"), st.get("collector_records_rejected")), (1, 4));
    drop(s);
}

#[test]
fn a_422_counts_accepted_and_rejected_rows_and_is_never_resent() {
    let dir = fresh_dir("422");
    spool_batches(&dir, &[records(10)]);
    let c = StandIn::start(|_, _| {
        status(
            422,
            &[],
            r#"{"error":"2 rows refused","reason":"rejected_rows","accepted":7,"duplicates":1,"rejected":2,
               "rejected_rows":[{"event_id":"a","error":"Code: 53"},{"event_id":"b","error":"Code: 53"}]}"#,
        )
    });
    let stats = Arc::new(Stats::default());
    let s = CollectorSink::new(config(&dir, &c.url), stats.clone()).unwrap();
    wait_for("the batch settled", || list_dir(&dir).is_empty() && stats.snapshot().get("collector_in_flight") == 0);
    let st = stats.snapshot();
    assert_eq!(
        (st.get("collector_records_sent"), st.get("collector_records_rejected"), st.get("collector_batches_rejected")),
        (8, 2, 0)
    );
    assert!(list_dir(&dir).is_empty(), "deleted: the accepted rows are durable, the others refused for good");
    assert_eq!(std::fs::read_dir(dir.join("rejected")).unwrap().count(), 0);
    drop(s);
    assert_eq!(c.answered().len(), 1, "never resent");
}

#[test]
fn unauthorized_is_retried_and_never_rejected() {
    let dir = fresh_dir("401");
    let token = dir.join("token");
    std::fs::write(&token, "old\n").unwrap();
    let sent = records(6);
    spool_batches(&dir, std::slice::from_ref(&sent));
    let c = StandIn::start(|_, r| match r.auth.as_deref() {
        Some("Bearer new") => ok(r),
        _ => status(401, &[], r#"{"error":"unauthorized"}"#),
    });
    let stats = Arc::new(Stats::default());
    let cfg = CollectorSettings { token_file: Some(token.clone()), ..config(&dir, &c.url) };
    let s = CollectorSink::new(cfg, stats.clone()).unwrap();
    wait_for("two refusals", || c.answered().len() >= 2);
    assert_eq!(list_dir(&dir).len(), 1, "still in the spool");
    // The token rotates: the next attempt reads it again.
    std::fs::write(&token, "new\n").unwrap();
    wait_for("delivered", || stats.snapshot().get("collector_records_sent") == 6);
    assert_eq!(c.delivered(), ids(&sent));
    let st = stats.snapshot();
    assert_eq!((st.get("collector_batches_rejected"), st.get("collector_records_rejected")), (0, 0));
    assert!(st.get("collector_send_errors") >= 2);
    assert_eq!(std::fs::read_dir(dir.join("rejected")).unwrap().count(), 0);
    drop(s);
}

#[test]
fn unavailable_then_ok_delivers_each_record_exactly_once() {
    let dir = fresh_dir("503");
    let early = records(8);
    spool_batches(&dir, &[early[..4].to_vec(), early[4..].to_vec()]);
    let c = StandIn::start(|n, r| if n == 0 { status(503, &[("Retry-After", "1")], "busy") } else { ok(r) });
    let stats = Arc::new(Stats::default());
    let cfg = CollectorSettings { batch_records: 5, ..config(&dir, &c.url) };
    let mut s = CollectorSink::new(cfg, stats.clone()).unwrap();
    let live = records(20);
    for r in &live {
        s.write(r).unwrap();
    }
    drop(s); // seals the rest and waits for the spool to drain
    let mut want = ids(&[early, live].concat());
    let mut got = c.delivered();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every record exactly once");
    let answered = c.answered();
    let refused: Vec<&Req> = answered.iter().filter(|(_, s)| *s == 503).map(|(r, _)| r).collect();
    assert_eq!(refused.len(), 1);
    let resent = answered.iter().filter(|(r, s)| *s == 200 && r.records.contains(&refused[0].records[0]));
    assert!(resent.map(|(r, _)| r.retry).eq([true]), "sent again once, marked as a retry");
    assert!(list_dir(&dir).is_empty());
    assert_eq!(stats.snapshot().get("collector_records_sent"), 28);
    assert_eq!(stats.snapshot().get("collector_send_errors"), 1);
}

#[test]
fn several_requests_are_in_flight_at_once() {
    let dir = fresh_dir("in-flight");
    let batches: Vec<Vec<LlmCall>> = (0..8).map(|_| records(5)).collect();
    spool_batches(&dir, &batches);
    let c = StandIn::gated(|_, r| ok(r), 2);
    let stats = Arc::new(Stats::default());
    let cfg = CollectorSettings { merge_records: 5, max_in_flight: 4, ..config(&dir, &c.url) };
    let s = CollectorSink::new(cfg, stats.clone()).unwrap();
    wait_for("40 records sent", || stats.snapshot().get("collector_records_sent") == 40);
    assert!(c.log.max_open.load(Ordering::SeqCst) >= 2, "requests overlap");
    let (mut got, mut want) = (c.delivered(), ids(&batches.concat()));
    got.sort();
    want.sort();
    assert_eq!(got, want);
    drop(s);
}

#[test]
fn invalid_records_are_counted_not_sent() {
    let dir = fresh_dir("invalid");
    let c = StandIn::start(|_, r| ok(r));
    let stats = Arc::new(Stats::default());
    let mut s = CollectorSink::new(config(&dir, &c.url), stats.clone()).unwrap();
    let good = records(5);
    let bad = [
        LlmCall { event_id: "not-a-uuid".into(), ..record(1) },
        LlmCall { cost_usd: Some(f64::NAN), ..record(2) },
        LlmCall { input_tokens: Some(1), cached_input_tokens: Some(9), ..record(3) },
    ];
    for (i, r) in good.iter().enumerate() {
        s.write(r).unwrap();
        if let Some(b) = bad.get(i) {
            s.write(b).unwrap();
        }
    }
    drop(s);
    assert_eq!(c.delivered(), ids(&good));
    assert!(c.answered().iter().all(|(r, _)| !r.retry), "first sends are not marked as retries");
    let st = stats.snapshot();
    assert_eq!((st.get("collector_records_invalid"), st.get("collector_records_sent")), (3, 5));
}

#[test]
fn the_spool_index_matches_the_directory_after_sends_and_drops() {
    let dir = fresh_dir("index");
    // Two requests go through, then the collector is away for longer than the test.
    let c = StandIn::start(|n, r| if n < 2 { ok(r) } else { status(503, &[("Retry-After", "30")], "") });
    let stats = Arc::new(Stats::default());
    let cfg = CollectorSettings {
        batch_records: 5,
        merge_records: 5,
        max_in_flight: 2,
        spool_max_bytes: 4000,
        drain_timeout: Duration::ZERO,
        ..config(&dir, &c.url)
    };
    let mut s = CollectorSink::new(cfg, stats.clone()).unwrap();
    for i in 0..300 {
        let r = LlmCall { request_model: Some(format!("model-{i}")), ..record(i) };
        s.write(&r).unwrap();
    }
    wait_for("the collector's refusal, nothing in flight", || {
        let st = stats.snapshot();
        st.get("collector_send_errors") >= 1 && st.get("collector_in_flight") == 0
    });
    let files = list_dir(&dir);
    assert_eq!(s.delivery.index(), files);
    let st = stats.snapshot();
    assert_eq!(st.get("collector_spool_bytes"), files.iter().map(|(_, n)| n).sum::<u64>());
    assert_eq!(st.get("collector_spool_batches"), files.len() as u64);
    assert!(st.get("collector_spool_dropped_records") > 0 && st.get("collector_records_sent") == 10);
    let spooled: u64 = records_in(&files).iter().sum();
    assert_eq!(st.get("collector_records_sent") + st.get("collector_spool_dropped_records") + spooled, 300);
    drop(s);
}
