//! Every connection to an LLM API host accounted for: a client whose TLS
//! tokentap does not read (tlslite-ng, TLS in pure Python) calls the local
//! endpoint as api.openai.com. It makes no record, and exactly one blind-spot
//! entry with its process, its connections and the bytes its sockets moved
//! (equal to what the client itself counted), and the reason: in the stats
//! file's coverage, on /metrics, in the report and in ClickHouse. A TLS
//! connection to another host makes no entry; the `openai` SDK over OpenSSL,
//! which tokentap decodes, makes records, no entry, and decoded traffic rows.
use std::time::Duration;

use serde_json::Value;
use tokentap_e2e::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port()
}

fn metrics(port: u16) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r = agent.get(format!("http://127.0.0.1:{port}/metrics")).call().expect("GET /metrics");
    r.body_mut().read_to_string().unwrap_or_default()
}

/// The tlslite client against the server as `sni`: its output.
fn tlslite(server: &Server, sni: &str, connections: u32, calls: u32) -> Value {
    let script = workspace_root().join("tests/clients/tlslite_client.py").display().to_string();
    let args = [
        script,
        "--port".into(),
        server.port.to_string(),
        "--sni".into(),
        sni.into(),
        "--connections".into(),
        connections.to_string(),
        "--calls".into(),
        calls.to_string(),
    ];
    let mut cmd = std::process::Command::new("python3");
    cmd.args(args);
    let (pid, out) = run_client(cmd);
    let v: Value = serde_json::from_str(out.trim()).expect("client output");
    assert_eq!(v["pid"], pid);
    v
}

#[test]
fn a_tls_stack_tokentap_cannot_read_is_accounted_for_everywhere() {
    let _g = serial();
    require_root();
    let ok = std::process::Command::new("python3").args(["-c", "import tlslite"]).status().is_ok_and(|s| s.success());
    assert!(
        ok,
        "tlslite-ng is needed (pip install tlslite-ng; `cargo xtask test` installs tests/clients/requirements.txt)"
    );
    let dir = scratch("blind-spots");
    let ch = ClickHouse::start(&dir, "blind_spots");
    let collector = Collector::start(&dir, &ch);
    let token_file = dir.join("agent-token");
    std::fs::write(&token_file, &collector.token).expect("token");
    let port = free_port();
    let args = [
        format!("--output=collector:{}", collector.url),
        format!("--collector-token-file={}", token_file.display()),
        format!("--spool-dir={}", dir.join("spool").display()),
        "--cluster-name=e2e".into(),
        format!("--metrics-listen=127.0.0.1:{port}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let certs = Certs::generate(&dir);
    let server = Server::start(&dir, &certs);
    let mut agent = Agent::start(&dir, &args);

    // Two connections of three calls each, through a TLS tokentap can't read.
    let served_before = server.served().len();
    let blind = tlslite(&server, "api.openai.com", 2, 3);
    let pid = blind["pid"].as_u64().expect("pid");
    // A TLS connection to a host that is no LLM API's.
    let other = tlslite(&server, "example.internal", 1, 1);
    let other_pid = other["pid"].as_u64().expect("pid");
    assert_eq!(server.served().len(), served_before + 7, "the server answered every call");
    // The openai SDK over OpenSSL, which tokentap decodes.
    let (sdk_pid, out) = run_client(py_client(
        &dir,
        &certs,
        &format!("https://api.openai.com:{}/v1", server.port),
        "https://api.anthropic.com:1",
        "chat",
    ));
    let sdk_calls = serde_json::from_str::<Value>(out.trim()).expect("client output")["calls"].as_u64().unwrap_or(0);
    assert!(sdk_calls >= 1);

    // Coverage: exactly one entry, with the process, the counts and the reason.
    let stats = agent.wait_stats("the tlslite client's blind spot, final", |s| {
        blind_spots_of(s, &[pid]).iter().any(|e| e["exited"] == true) && process_exited(s, sdk_pid)
    });
    let spots = blind_spots_of(&stats, &[pid]);
    assert_eq!(spots.len(), 1, "one entry: {spots:?}");
    let e = &spots[0];
    assert_eq!((e["provider_host"].as_str(), e["provider"].as_str()), (Some("api.openai.com"), Some("openai")));
    assert_eq!(e["comm"], "python3");
    assert!(e["exe"].as_str().is_some_and(|x| x.contains("python")), "{e}");
    assert_eq!(e["connections"], 2);
    // Exactly the bytes the client's sockets sent and received: the kernel
    // adds up the same syscall results (handshake and alerts included).
    assert_eq!(
        (e["bytes_sent"].clone(), e["bytes_received"].clone()),
        (blind["bytes_sent"].clone(), blind["bytes_received"].clone())
    );
    assert_eq!(e["reason"], "no_plaintext_seen");
    assert!(e["reason_text"].as_str().is_some_and(|t| t.contains("plaintext")), "{e}");
    assert!(blind_spots_of(&stats, &[other_pid]).is_empty(), "no entry for another host");
    assert!(blind_spots_of(&stats, &[sdk_pid.into()]).is_empty(), "no entry for a decoded client");
    assert_eq!(stats["blind_spots"].as_array().map(Vec::len), Some(1), "{}", stats["blind_spots"]);
    assert!(stats["tls_connections_named"].as_u64().unwrap_or(0) >= 4, "2 + 1 tlslite connections and the SDK's");
    assert!(stats["llm_connections_decoded"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(stats["llm_connections_unread"], 2);

    // Records: none for the unread client, one per call for the SDK.
    assert!(agent.records_of(&[pid as u32, other_pid as u32]).is_empty(), "no record is invented");
    assert_eq!(agent.records_of(&[sdk_pid]).len() as u64, sdk_calls);

    // /metrics: labelled by host, process name and reason.
    let m = metrics(port);
    let labels = r#"provider_host="api.openai.com",comm="python3",reason="no_plaintext_seen""#;
    assert_eq!(metric_value(&m, &format!("tokentap_agent_undecoded_llm_connections_total{{{labels}}}")), 2.0, "{m}");
    for (dir_label, key) in [("sent", "bytes_sent"), ("received", "bytes_received")] {
        let series = format!("tokentap_agent_undecoded_llm_bytes_total{{direction=\"{dir_label}\",{labels}}}");
        assert_eq!(metric_value(&m, &series), blind[key].as_f64().unwrap_or(-1.0), "{series}");
    }
    assert!(
        m.contains("tokentap_agent_decoded_llm_connections_total{provider_host=\"api.openai.com\",comm=\"python3\"}"),
        "{m}"
    );
    assert!(!m.contains("example.internal"));

    // ClickHouse: the traffic rows add up to the same, decoded or not
    // (64-bit integers come back as JSON strings).
    let num = |v: &Value| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(u64::MAX);
    let q = |pid: u64, decoded: u8| {
        format!(
            "SELECT sum(connections) AS c, sum(bytes_sent) AS s, sum(bytes_received) AS r, \
             groupUniqArray(reason) AS reasons, groupUniqArray(provider_host) AS hosts, any(cluster) AS cluster \
             FROM llm_traffic FINAL WHERE pid = {pid} AND decoded = {decoded}"
        )
    };
    let row = wait_for("the unread client's traffic rows in ClickHouse", Duration::from_secs(60), || {
        let r = ch.query(&q(pid, 0)).into_iter().next()?;
        (num(&r["c"]) == 2).then_some(r)
    });
    assert_eq!((num(&row["s"]), num(&row["r"])), (num(&blind["bytes_sent"]), num(&blind["bytes_received"])));
    assert_eq!(row["reasons"], serde_json::json!(["no_plaintext_seen"]));
    assert_eq!(row["hosts"], serde_json::json!(["api.openai.com"]));
    assert_eq!(row["cluster"], "e2e");
    let decoded = wait_for("the SDK's decoded traffic rows in ClickHouse", Duration::from_secs(60), || {
        let r = ch.query(&q(sdk_pid.into(), 1)).into_iter().next()?;
        (1..u64::MAX).contains(&num(&r["c"])).then_some(r)
    });
    assert_eq!(decoded["reasons"], serde_json::json!([""]));
    assert_eq!(ch.count(&format!("SELECT count() FROM llm_traffic WHERE pid = {sdk_pid} AND NOT decoded")), 0);
    assert_eq!(ch.count(&format!("SELECT count() FROM llm_traffic WHERE pid = {other_pid}")), 0);
    assert_eq!(ch.count(&format!("SELECT count() FROM llm_calls WHERE pid = {pid}")), 0);

    // The collector's report, from ClickHouse, has the same line.
    let out = std::process::Command::new(collector_bin())
        .args(["report", "--since", "1d", "--clickhouse-url", &ch.url, "--database", &ch.database])
        .output()
        .expect("collector report");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let want = format!("| 2 | {} | {} |", num(&blind["bytes_sent"]), num(&blind["bytes_received"]));
    let line = text.lines().find(|l| l.contains(&format!("pid {pid}"))).unwrap_or_else(|| panic!("{text}"));
    assert!(line.starts_with("| api.openai.com | python3 (pid ") && line.contains(&want), "{line}");

    // The report: its section lists the host, the process, the counts and the reason.
    let status = agent.stop();
    assert!(status.success(), "agent exit {status}");
    let out = std::process::Command::new(agent_bin())
        .arg("report")
        .arg(&agent.records)
        .arg("--out")
        .arg(dir.join("report"))
        .output()
        .expect("tokentap-agent report");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = std::fs::read_to_string(dir.join("report/report.md")).expect("report.md");
    let section = md
        .split("## LLM traffic tokentap could not read")
        .nth(1)
        .expect("the section")
        .split("\n## ")
        .next()
        .unwrap_or("");
    let line = section
        .lines()
        .find(|l| l.contains(&format!("pid {pid}")))
        .unwrap_or_else(|| panic!("no line for pid {pid}:\n{md}"));
    let cells: Vec<&str> = line.split(" | ").map(str::trim).collect();
    assert_eq!(cells[0], "| api.openai.com", "{line}");
    assert!(cells[1].starts_with("python3 (pid "), "{line}");
    assert_eq!(
        &cells[3..6],
        [&*2.to_string(), &*num(&blind["bytes_sent"]).to_string(), &*num(&blind["bytes_received"]).to_string()],
        "{line}"
    );
    assert!(cells[6].contains("`no_plaintext_seen`"), "{line}");
    assert_eq!(
        section.lines().filter(|l| l.starts_with("| api.") || l.starts_with("| example")).count(),
        1,
        "{section}"
    );
    let html = std::fs::read_to_string(dir.join("report/report.html")).expect("report.html");
    assert!(html.contains("<h2>LLM traffic tokentap could not read</h2>"));
}
