//! The fleet path under load and under attack: real probes -> agent ->
//! collector -> ClickHouse (the collector's production defaults, lz4 inserts
//! included). Calls at a steady rate arrive within seconds; a batch ClickHouse
//! refuses in part cannot stop the collector; a batch retried after a timeout
//! is stored once in the raw table, FINAL and the rollups; floods of
//! unauthenticated bodies and idle connections do not take memory or the
//! endpoint away from valid agents.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokentap_e2e::*;
use tokentap_event::{wire, LlmCall};

fn record(ts: String, provider: &str) -> LlmCall {
    LlmCall {
        event_id: LlmCall::new_event_id(),
        ts,
        provider: provider.into(),
        operation: "chat".into(),
        request_model: Some("gpt-4o-mini".into()),
        input_tokens: Some(100),
        output_tokens: Some(10),
        cost_usd: Some(0.0001),
        status: Some(200),
        ..Default::default()
    }
}

fn post(c: &Collector, records: &[LlmCall], extra: &[(&str, &str)]) -> (u16, Value) {
    let auth = format!("Bearer {}", c.token);
    let mut h: Vec<(&str, &str)> = vec![("authorization", auth.as_str()), ("content-encoding", "zstd")];
    h.extend(extra);
    let (status, text) = c.post(&wire::encode(records), &h);
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn count_ids(ch: &ClickHouse, table: &str, records: &[LlmCall]) -> u64 {
    let ids: Vec<String> = records.iter().map(|r| format!("'{}'", r.event_id)).collect();
    ch.count(&format!("SELECT count() FROM {table} WHERE event_id IN ({})", ids.join(",")))
}

#[test]
fn sdk_calls_at_a_steady_rate_are_rows_within_seconds() {
    let _g = serial();
    let dir = scratch("fleet-steady");
    let ch = ClickHouse::start(&dir, "fleet_steady");
    let collector = Collector::start(&dir, &ch);
    let token_file = dir.join("agent-token");
    std::fs::write(&token_file, &collector.token).expect("token");
    let args = [
        format!("--output=collector:{}", collector.url),
        format!("--collector-token-file={}", token_file.display()),
        format!("--spool-dir={}", dir.join("spool").display()),
        "--cluster-name=steady".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = Env::start("fleet-steady-agent", Transport::Https, &args);
    // 25 calls/s for 8 s from the real SDKs over keep-alive TLS.
    let (pid, out) = run_client(py_client(&env.dir, &env.certs, &env.openai_base(), &env.anthropic_base(), "steady"));
    let v: Value = serde_json::from_str(out.trim()).expect("client output");
    let calls = v["calls"].as_u64().expect("calls");
    assert_eq!(calls, 200);
    let done = Instant::now();
    // Every call is a row within a few seconds of the last call.
    wait_for(&format!("{calls} rows of pid {pid}"), Duration::from_secs(5), || {
        (ch.count(&format!("SELECT count() FROM llm_calls WHERE pid = {pid}")) >= calls).then_some(())
    });
    eprintln!("all {calls} rows stored {:.2} s after the last call", done.elapsed().as_secs_f64());
    assert_eq!(ch.count(&format!("SELECT count() FROM llm_calls FINAL WHERE pid = {pid}")), calls, "once each");
    let m = collector.metrics();
    let lag_count = collector.metric("tokentap_collector_record_lag_seconds_count");
    assert!(lag_count >= calls as f64, "{m}");
    // Batches were combined: far fewer inserts than calls.
    let inserts = collector.metric("tokentap_collector_inserts_total");
    assert!(inserts > 0.0 && inserts < calls as f64 / 2.0, "{inserts} inserts for {calls} calls");
    let stats = env.finish();
    assert_eq!(stats["collector_records_sent"], calls, "{stats}");
    assert_eq!(stats["collector_spool_bytes"], 0, "{stats}");
}

#[test]
fn a_batch_clickhouse_refuses_in_part_cannot_stop_the_collector() {
    let _g = serial();
    let dir = scratch("fleet-poison");
    let ch = ClickHouse::start(&dir, "fleet_poison");
    let collector = Collector::start(&dir, &ch);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128;
    // 101 records dated on 101 different days: more partitions than one
    // ClickHouse insert takes (100). All are valid and all are stored.
    let days: Vec<LlmCall> =
        (0..101).map(|d| record(LlmCall::format_ts(now - d as i128 * 86_400_000_000_000), "openai")).collect();
    let (status, body) = post(&collector, &days, &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 101);
    assert_eq!(count_ids(&ch, "llm_calls", &days), 101);

    // Rows the real engine refuses: a constraint, as a stand-in for any data
    // error validation cannot foresee. The good rows are stored, the bad ones
    // named in a 422 and counted.
    ch.query("ALTER TABLE llm_calls ADD CONSTRAINT no_poison CHECK provider != 'poison'");
    let mut mixed: Vec<LlmCall> = (0..50).map(|_| record(now_ts(), "openai")).collect();
    for i in [7, 31, 32] {
        mixed[i].provider = "poison".into();
    }
    let (status, body) = post(&collector, &mixed, &[]);
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["accepted"], 47, "{body}");
    assert_eq!(body["rejected"], 3, "{body}");
    let named: std::collections::HashSet<&str> =
        body["rejected_rows"].as_array().unwrap().iter().filter_map(|r| r["event_id"].as_str()).collect();
    let poison: std::collections::HashSet<&str> =
        mixed.iter().filter(|r| r.provider == "poison").map(|r| r.event_id.as_str()).collect();
    assert_eq!(named, poison);
    assert!(body["rejected_rows"][0]["error"].as_str().is_some_and(|e| e.contains("469")), "{body}");
    assert_eq!(count_ids(&ch, "llm_calls", &mixed), 47);

    // Later batches are unaffected and the collector is ready.
    let later: Vec<LlmCall> = (0..20).map(|_| record(now_ts(), "openai")).collect();
    let (status, body) = post(&collector, &later, &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(count_ids(&ch, "llm_calls", &later), 20);
    let ready = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}/readyz", collector.url)])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "200");
    assert_eq!(collector.metric("tokentap_collector_records_rejected_total"), 3.0);
    assert_eq!(collector.metric("tokentap_collector_ready"), 1.0);
}

#[test]
fn a_batch_retried_after_timeouts_is_stored_once_in_raw_final_and_rollups() {
    let _g = serial();
    let dir = scratch("fleet-retry");
    let ch = ClickHouse::start(&dir, "fleet_retry");
    assert!(ch.embedded(), "needs the embedded engine's slow answers");
    // The insert is abandoned after 1 s; the agent's request after 1 s.
    let collector = Collector::start_args(&dir, &ch, &["--clickhouse-timeout-secs", "2", "--ack-timeout-secs", "1"]);
    // Another replica, up before the batch is stored (its dedup window knows nothing of it).
    let other = Collector::start(&scratch("fleet-retry-2"), &ch);
    let records: Vec<LlmCall> = (0..20).map(|_| record(now_ts(), "openai")).collect();
    // ClickHouse commits the insert, then answers 3 s later: the collector's
    // insert times out (uncertain), and so does the agent's request (503).
    ch.set_slow(3);
    let (status, body) = post(&collector, &records, &[]);
    assert_eq!(status, 503, "{body}");
    // The agent retries while the first copy is still in flight, then again.
    let (status, body) = post(&collector, &records, &[(wire::HEADER_RETRY, "1")]);
    assert!(status == 200 || status == 503, "{status} {body}");
    ch.set_slow(0);
    let body = wait_for("the retried batch acknowledged", Duration::from_secs(30), || {
        let (status, body) = post(&collector, &records, &[(wire::HEADER_RETRY, "1")]);
        (status == 200).then_some(body)
    });
    assert_eq!(body["accepted"].as_u64().unwrap() + body["duplicates"].as_u64().unwrap(), 20, "{body}");
    // The other replica gets the same batch as a retry: it finds the rows
    // stored and stores nothing.
    let (status, body) = post(&other, &records, &[(wire::HEADER_RETRY, "1")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(other.metric("tokentap_collector_records_already_stored_total"), 20.0);
    assert_eq!(other.metric("tokentap_collector_records_inserted_total"), 0.0);

    let raw = count_ids(&ch, "llm_calls", &records);
    let fin = count_ids(&ch, "llm_calls FINAL", &records);
    assert_eq!((raw, fin), (20, 20), "raw and FINAL");
    for rollup in ["llm_calls_1m", "llm_calls_1h"] {
        let calls = ch.count(&format!("SELECT sum(calls) FROM {rollup}"));
        assert_eq!(calls, 20, "{rollup} counts each call once");
    }
}

/// Connect and send nothing: an idle client of a request, then hold the connection.
fn idle_connection(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    s
}

#[test]
fn floods_of_unauthenticated_bodies_and_idle_connections_leave_room_for_agents() {
    let _g = serial();
    let dir = scratch("fleet-flood");
    let ch = ClickHouse::start(&dir, "fleet_flood");
    let collector = Collector::start_args(
        &dir,
        &ch,
        &[
            "--max-connections",
            "64",
            "--header-timeout-secs",
            "2",
            "--body-timeout-secs",
            "3",
            "--max-inflight-bytes",
            "67108864",
        ],
    );
    let base_rss = collector.peak_rss_kib();
    // 100 clients each announce a 31 MiB body without a token and start
    // sending it: each is refused from its headers, before its body is read.
    let port = collector.port;
    let flood: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20))).ok();
                let len = 31usize << 20;
                let head = format!("POST /v1/records HTTP/1.1\r\nHost: c\r\nContent-Length: {len}\r\n\r\n");
                if s.write_all(head.as_bytes()).is_err() {
                    return String::new();
                }
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..4 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).unwrap_or(0);
                String::from_utf8_lossy(&buf[..n]).into_owned()
            })
        })
        .collect();
    let answers: Vec<String> = flood.into_iter().map(|t| t.join().expect("flood thread")).collect();
    // A refused client may see its answer or, as the collector closes with its
    // body unread, a reset: the collector's counters are the record.
    let m = collector.metrics();
    let unauthorized = metric_value(&m, "tokentap_collector_batches_rejected_total{reason=\"unauthorized\"}");
    let refused = collector.metric("tokentap_collector_connections_refused_total");
    assert_eq!(unauthorized + refused, 100.0, "every flood request refused from its headers: {m}\n{answers:?}");
    let peak = collector.peak_rss_kib();
    eprintln!("collector peak RSS: {base_rss} KiB before the flood, {peak} KiB after");
    assert!(peak < base_rss + 100 * 1024, "100 x 31 MiB unauthenticated bodies raised RSS to {peak} KiB");

    // An authenticated flood is bounded by --max-inflight-bytes: bodies past
    // the budget are refused with 503 before they are read.
    let auth = format!("Bearer {}", collector.token);
    let big: Vec<_> = (0..8)
        .map(|_| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20))).ok();
                let head = format!(
                    "POST /v1/records HTTP/1.1\r\nHost: c\r\nAuthorization: {auth}\r\nContent-Encoding: zstd\r\nContent-Length: {}\r\n\r\n",
                    31usize << 20
                );
                let _ = s.write_all(head.as_bytes());
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).unwrap_or(0);
                String::from_utf8_lossy(&buf[..n]).into_owned()
            })
        })
        .collect();
    let answers: Vec<String> = big.into_iter().map(|t| t.join().expect("thread")).collect();
    // 64 MiB of budget holds two 31 MiB bodies: the others are refused at once;
    // the two admitted wait for bodies that never come, until the body timeout.
    let busy = answers.iter().filter(|a| a.starts_with("HTTP/1.1 503")).count();
    let timed_out = answers.iter().filter(|a| a.starts_with("HTTP/1.1 408")).count();
    assert_eq!((busy, timed_out), (6, 2), "{answers:?}");
    assert_eq!(collector.metric("tokentap_collector_inflight_bytes"), 0.0, "the budget is given back");

    // 300 idle connections against a limit of 64: the extra ones are refused
    // at once, the held ones closed after the header timeout, and a valid
    // agent gets through within seconds.
    let idle: Vec<TcpStream> = (0..300).map(|_| idle_connection(port)).collect();
    let records: Vec<LlmCall> = (0..10).map(|_| record(now_ts(), "openai")).collect();
    let t = Instant::now();
    let auth = format!("Bearer {}", collector.token);
    let body = wait_for("a valid batch through the idle flood", Duration::from_secs(20), || {
        let r = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .new_agent()
            .post(format!("{}/v1/records", collector.url))
            .header("authorization", &auth)
            .header("content-encoding", "zstd")
            .send(&wire::encode(&records)[..]);
        // Refused (503) or cut off: wait_for tries again, as an agent would.
        match r {
            Ok(mut resp) if resp.status() == 200 => Some(resp.body_mut().read_to_string().unwrap_or_default()),
            _ => None,
        }
    });
    eprintln!("valid batch stored {:.1} s into the idle flood: {body}", t.elapsed().as_secs_f64());
    assert_eq!(count_ids(&ch, "llm_calls", &records), 10);
    // Every idle connection was closed by the collector (held ones after the
    // header timeout, extra ones with a 503): none is held forever.
    let closed = idle
        .into_iter()
        .filter(|s| {
            let mut s = s;
            let mut b = [0u8; 256];
            s.read(&mut b).is_ok()
        })
        .count();
    assert_eq!(closed, 300, "idle connections are closed or answered, never held forever");
    assert!(collector.metric("tokentap_collector_connections_refused_total") > 0.0);
}
