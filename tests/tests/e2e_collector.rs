//! Real probes -> agent -> collector -> ClickHouse: rows equal the calls made,
//! once each, tokens and cost exact; rollups agree with raw rows; outages of the
//! collector and of ClickHouse lose nothing and duplicate nothing; bad batches
//! get a clear 4xx and change nothing. ClickHouse is the server at
//! `TOKENTAP_CLICKHOUSE_URL` or the embedded engine (see `ClickHouse`).
use std::time::Duration;

use serde_json::Value;
use tokentap_e2e::*;
use tokentap_event::{wire, LlmCall, PriceTable};

struct World {
    env: Env,
    ch: ClickHouse,
    collector: Collector,
}

fn world(name: &str) -> World {
    require_root();
    let dir = scratch(name);
    let ch = ClickHouse::start(&dir, name);
    let collector = Collector::start(&dir, &ch);
    // The agent goes last (Env::start), pointed at the collector.
    let output = format!("collector:{}", collector.url);
    let token_file = std::env::temp_dir().join(format!("tt-agent-token-{}-{name}", std::process::id()));
    std::fs::write(&token_file, &collector.token).expect("token");
    let spool = std::env::temp_dir().join(format!("tt-spool-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let args = [
        "--output".to_string(),
        output,
        "--collector-token-file".into(),
        token_file.display().to_string(),
        "--spool-dir".into(),
        spool.display().to_string(),
        "--cluster-name".into(),
        "e2e".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = Env::start(&format!("{name}-agent"), Transport::Https, &args);
    World { env, ch, collector }
}

fn rows_of(ch: &ClickHouse, pid: u32) -> Vec<Value> {
    ch.query(&format!("SELECT * FROM llm_calls FINAL WHERE pid = {pid} ORDER BY ts"))
}

fn wait_rows(ch: &ClickHouse, pid: u32, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} rows of pid {pid} in ClickHouse"), Duration::from_secs(60), || {
        let r = rows_of(ch, pid);
        (r.len() >= n).then_some(r)
    })
}

fn run_py(w: &World, scenario: &str) -> (u32, usize) {
    let (pid, out) =
        run_client(py_client(&w.env.dir, &w.env.certs, &w.env.openai_base(), &w.env.anthropic_base(), scenario));
    let v: Value = serde_json::from_str(out.trim()).expect("client output");
    (pid, v["calls"].as_u64().unwrap_or(0) as usize)
}

/// Every row matches what the server served, once (rows carry the record's fields).
fn check_rows(agent: &Agent, ch: &ClickHouse, pid: u32, n: usize, served: &[Value]) {
    let rows = wait_rows(ch, pid, n);
    // The agent handled the client's exit and has nothing left to send or
    // resend: a duplicate row would be in ClickHouse now.
    agent.wait_delivered(pid);
    assert_eq!(ch.count(&format!("SELECT count() FROM llm_calls WHERE pid = {pid}")), n as u64, "no duplicate rows");
    let records: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            // ClickHouse's JSON: 64-bit integers as strings, UInt16 as numbers.
            for k in ["input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens"]
            {
                if let Some(s) = r[k].as_str() {
                    r[k] = Value::from(s.parse::<u64>().expect("token count"));
                }
            }
            r
        })
        .collect();
    let prices = PriceTable::shipped();
    for (r, s) in pair_with_served(&records, served) {
        assert_matches_served(r, s, &prices);
        assert_eq!(r["cluster"], "e2e");
    }
}

#[test]
fn agent_to_collector_to_clickhouse_exact_rows_and_rollups() {
    let _g = serial();
    let w = world("ch-exact");
    let (pid, n) = run_py(&w, "all_ops");
    assert_eq!(n, 9);
    check_rows(&w.env.agent, &w.ch, pid, n, &w.env.server.served());
    // Rollups (fed by materialized views) agree with the raw rows.
    let raw = w.ch.query(
        "SELECT count() AS calls, sum(ifNull(input_tokens, 0)) AS input, sum(ifNull(output_tokens, 0)) AS output, \
         round(sum(ifNull(cost_usd, 0)), 9) AS cost FROM llm_calls FINAL WHERE cluster = 'e2e'",
    );
    for rollup in ["llm_calls_1m", "llm_calls_1h"] {
        let agg = w.ch.query(&format!(
            "SELECT sum(calls) AS calls, sum(input_tokens) AS input, sum(output_tokens) AS output, \
             round(sum(cost_usd), 9) AS cost FROM {rollup} WHERE cluster = 'e2e'"
        ));
        assert_eq!(agg, raw, "{rollup} agrees with llm_calls");
    }
    let q =
        w.ch.query("SELECT quantilesIfMerge(0.5, 0.9, 0.99)(duration_ms) AS q FROM llm_calls_1h WHERE cluster = 'e2e'");
    assert!(q[0]["q"].as_array().is_some_and(|a| a.len() == 3), "{q:?}");
    // The report reads the same rows back through the shared report code.
    let out = std::process::Command::new(collector_bin())
        .args(["report", "--since", "1d", "--clickhouse-url", &w.ch.url, "--database", &w.ch.database])
        .output()
        .expect("report");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("gpt-4o-mini-2024-07-18") && text.contains("claude-sonnet-4-5-20250929"), "{text}");
    assert!(text.contains("## Opportunity Register") && text.contains("## Remediation Roadmap"), "{text}");
    let stats = w.env.finish();
    assert_eq!(stats["collector_records_sent"], 9, "{stats}");
    assert!(!w.collector.log().contains(SECRET_KEY));
}

#[test]
fn collector_and_clickhouse_outages_lose_nothing_and_duplicate_nothing() {
    let _g = serial();
    let mut w = world("ch-outage");
    // ClickHouse away: the collector holds the rows (agents wait, then retry).
    w.ch.set_away(true);
    let (pid1, n1) = run_py(&w, "all_ops");
    wait_for("the collector to see ClickHouse away", Duration::from_secs(30), || {
        w.collector.metrics().contains("tokentap_collector_ready 0").then_some(())
    });
    w.ch.set_away(false);
    // Collector killed (SIGKILL) while agents have calls to deliver.
    w.collector.kill();
    let (pid2, n2) = run_py(&w, "concurrent");
    w.env.agent.wait_stat("collector_send_errors", 1);
    w.collector.restart();
    let served = w.env.server.served();
    check_rows(&w.env.agent, &w.ch, pid1, n1, &served);
    check_rows(&w.env.agent, &w.ch, pid2, n2, &served);

    // The same batch delivered twice (an acknowledgement lost in transit).
    let records: Vec<LlmCall> = rows_of(&w.ch, pid1)
        .into_iter()
        .map(|r| LlmCall {
            event_id: r["event_id"].as_str().unwrap().to_owned(),
            ts: now_ts(),
            provider: "openai".into(),
            operation: "chat".into(),
            ..Default::default()
        })
        .collect();
    let body = wire::encode(&records);
    let auth = format!("Bearer {}", w.collector.token);
    let h = [("authorization", auth.as_str()), ("content-encoding", "zstd"), (wire::HEADER_VERSION, wire::VERSION)];
    for _ in 0..2 {
        let (status, text) = w.collector.post(&body, &h);
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(&format!("\"duplicates\":{}", records.len())), "{text}");
    }
    // Both answered 200 (every row in ClickHouse, none new), and nothing else is
    // on its way in: the agent's deliveries settled in check_rows.
    w.collector.wait_idle();
    assert_eq!(w.ch.count(&format!("SELECT count() FROM llm_calls WHERE pid = {pid1}")), n1 as u64);
    let stats = w.env.finish();
    assert_eq!(stats["collector_records_sent"].as_u64(), Some((n1 + n2) as u64), "{stats}");
    assert_eq!(stats["collector_spool_dropped_records"], 0);
}

#[test]
fn malformed_oversized_and_unauthenticated_batches_get_4xx_and_change_nothing() {
    let _g = serial();
    let dir = scratch("ch-bad");
    let ch = ClickHouse::start(&dir, "ch_bad");
    let collector = Collector::start(&dir, &ch);
    let before = ch.count("SELECT count() FROM llm_calls");
    let good = wire::encode(&[LlmCall {
        event_id: LlmCall::new_event_id(),
        ts: now_ts(),
        provider: "openai".into(),
        operation: "chat".into(),
        ..Default::default()
    }]);
    let auth = format!("Bearer {}", collector.token);
    let zstd_h = [("authorization", auth.as_str()), ("content-encoding", "zstd")];
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        ("no token", good.clone(), vec![("content-encoding", "zstd")], 401),
        ("wrong token", good.clone(), vec![("authorization", "Bearer nope"), ("content-encoding", "zstd")], 401),
        ("not zstd", b"garbage".to_vec(), zstd_h.to_vec(), 400),
        ("not records", zstd::bulk::compress(b"{\"x\":1}\n", 3).unwrap(), zstd_h.to_vec(), 400),
        ("bad event_id", zstd::bulk::compress(br#"{"event_id":"x"}"#, 3).unwrap(), zstd_h.to_vec(), 400),
        ("unknown encoding", good.clone(), vec![("authorization", auth.as_str()), ("content-encoding", "br")], 415),
        (
            "future version",
            good.clone(),
            vec![("authorization", auth.as_str()), ("content-encoding", "zstd"), (wire::HEADER_VERSION, "9")],
            415,
        ),
        ("zstd bomb", zstd::bulk::compress(&vec![b' '; 300 << 20], 19).unwrap(), zstd_h.to_vec(), 413),
    ];
    // Records that parse but that the table cannot store, sum or keep.
    let spoiled = |f: fn(&mut LlmCall)| {
        let mut r = LlmCall {
            event_id: LlmCall::new_event_id(),
            ts: now_ts(),
            provider: "openai".into(),
            operation: "chat".into(),
            ..Default::default()
        };
        f(&mut r);
        wire::encode(&[r])
    };
    let mut cases = cases;
    for (what, f) in [
        ("10 MB model name", (|r| r.request_model = Some("m".repeat(10 << 20))) as fn(&mut LlmCall)),
        ("10 MB label", |r| {
            r.labels.insert("team".into(), "x".repeat(10 << 20));
        }),
        ("u64::MAX tokens", |r| r.input_tokens = Some(u64::MAX)),
        ("cost 1e300", |r| r.cost_usd = Some(1e300)),
        ("ts in 1970", |r| r.ts = "1970-01-01T00:00:00Z".into()),
        ("ts before the retention", |r| r.ts = "2020-01-01T00:00:00Z".into()),
        ("ts in 2200", |r| r.ts = "2200-01-01T00:00:00Z".into()),
    ] {
        cases.push((what, spoiled(f), zstd_h.to_vec(), 400));
    }
    for (what, body, headers, want) in cases {
        let (status, text) = collector.post(&body, &headers);
        assert_eq!(status, want, "{what}: {text}");
        assert!(text.contains("\"error\""), "{what}: a clear error body: {text}");
    }
    // A body over the limit (32 MiB) is refused with 413 once the limit is
    // crossed; the rest is never read.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", collector.port)).expect("connect");
        let len = 40usize << 20;
        write!(s, "POST /v1/records HTTP/1.1\r\nHost: c\r\nAuthorization: {auth}\r\nContent-Length: {len}\r\n\r\n")
            .expect("head");
        let mut w = s.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..40 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("response");
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 413"), "oversized body: {head}");
        drop(s);
        let _ = writer.join();
    }
    // Every batch above was refused before anything was stored, and none is
    // still being received.
    collector.wait_idle();
    assert_eq!(ch.count("SELECT count() FROM llm_calls"), before, "nothing was written");
    let m = collector.metrics();
    assert!(m.contains("tokentap_collector_batches_rejected_total{reason=\"unauthorized\"} 2"), "{m}");
    assert!(m.contains("tokentap_collector_records_inserted_total 0"), "{m}");
}

#[test]
fn mutual_tls_between_agent_and_collector() {
    let _g = serial();
    require_root();
    let dir = scratch("ch-mtls");
    let certs = Certs::generate(&dir);
    let (client_cert, client_key) = certs.client(&dir);
    let ch = ClickHouse::start(&dir, "ch_mtls");
    let tls = CollectorTls { certs: &certs, client: Some((client_cert.clone(), client_key.clone())) };
    let collector = Collector::start_with(&dir, &ch, Some(tls));
    assert!(collector.url.starts_with("https://"));
    let token_file = dir.join("agent-token");
    std::fs::write(&token_file, &collector.token).expect("token");
    let args = [
        format!("--output=collector:{}", collector.url),
        format!("--collector-token-file={}", token_file.display()),
        format!("--collector-ca-file={}", certs.ca.display()),
        format!("--collector-cert-file={}", client_cert.display()),
        format!("--collector-key-file={}", client_key.display()),
        format!("--spool-dir={}", dir.join("spool").display()),
        "--cluster-name=e2e".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = Env::start("ch-mtls-agent", Transport::Https, &args);
    let (pid, out) = run_client(py_client(&env.dir, &env.certs, &env.openai_base(), &env.anthropic_base(), "chat"));
    assert!(out.contains("\"calls\": 1"), "{out}");
    check_rows(&env.agent, &ch, pid, 1, &env.server.served());
    // Without a client certificate the handshake fails: nothing reaches the endpoint.
    let no_cert = std::process::Command::new("curl")
        .args(["-sS", "--cacert", &certs.ca.display().to_string(), "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/healthz", collector.url))
        .output()
        .expect("curl");
    assert!(!no_cert.status.success(), "a client without a certificate was served");
    assert!(collector.metrics().contains("reason=\"tls_handshake\"} 1"), "{}", collector.metrics());
    env.finish();
}

/// An agent killed (SIGKILL, the OOM killer, a grace period run out) while
/// records wait in its open batch, not yet sealed: the next agent to own the
/// spool directory seals them from the journal the killed one kept there,
/// and sends them, each once.
#[test]
fn the_open_batch_of_a_killed_agent_reaches_clickhouse_through_the_next_agent() {
    let _g = serial();
    require_root();
    let dir = scratch("collector-killed");
    let certs = Certs::generate(&dir);
    let server = Server::start(&dir, &certs);
    let ch = ClickHouse::start(&dir, "collector_killed");
    let collector = Collector::start(&dir, &ch);
    let (spool, token) = (dir.join("spool"), dir.join("token"));
    std::fs::write(&token, &collector.token).unwrap();
    let args = [
        format!("--output=collector:{}", collector.url),
        format!("--collector-token-file={}", token.display()),
        format!("--spool-dir={}", spool.display()),
        "--cluster-name=e2e".into(),
        // Nothing is sealed while the test runs: the open batch holds every record.
        "--collector-batch-age-ms=600000".into(),
        "--collector-batch-records=100000".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (first_dir, second_dir) = (dir.join("first"), dir.join("second"));
    for d in [&first_dir, &second_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut first = Agent::start(&first_dir, &args);
    const N: usize = 120;
    let work: Vec<Value> = (0..N)
        .map(|i| {
            let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("call {i}")}]});
            let mut c = tokentap_e2e::calibrate::call("chat", body, 100 + i as u64, 10);
            c["pause"] = serde_json::json!(0.005);
            c
        })
        .collect();
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let (pid, _) = run_client(py_workload(&dir, &certs, &base, "killed", &work));
    first.wait_process_done(pid);
    let journaled = wait_for("the open batch in the journal", Duration::from_secs(30), || {
        let lines: usize = std::fs::read_dir(&spool)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("open-"))
            .map(|e| std::fs::read(e.path()).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()))
            .sum();
        (lines >= N).then_some(lines)
    });
    let count = || ch.count(&format!("SELECT count() FROM llm_calls WHERE pid = {pid}"));
    assert_eq!(count(), 0, "nothing sealed, nothing sent before the kill");
    first.kill();
    let mut second = Agent::start(&second_dir, &args);
    let rows = wait_rows(&ch, pid, N);
    let new = second.wait_stat("collector_records_sent", N as u64);
    eprintln!(
        "killed with {journaled} records journaled: {} rows in ClickHouse through the next agent; {}",
        rows.len(),
        [
            "collector_spool_recovered_records",
            "collector_traffic_spool_recovered_rows",
            "collector_spool_dropped_records"
        ]
        .map(|k| format!("{k} {}", new[k]))
        .join(", ")
    );
    assert_eq!(new["collector_spool_recovered_records"], N as u64, "{new}");
    assert_eq!(new["collector_spool_dropped_records"], 0, "{new}");
    let served = server.served();
    let ids: std::collections::HashSet<&str> = rows.iter().filter_map(|r| r["response_id"].as_str()).collect();
    assert_eq!(ids.len(), N, "each call once");
    assert!(served.iter().all(|s| s["response_id"].as_str().is_some_and(|id| ids.contains(id))));
    assert!(second.stop().success());
    assert_eq!(count(), N as u64, "no row twice");
    let left: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("open-"))
        .collect();
    assert!(left.is_empty(), "journals left: {left:?}");
}
