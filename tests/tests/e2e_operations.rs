//! What an SRE checks: the agent runs with only the documented capabilities
//! (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYS_ADMIN — uprobe creation through
//! perf_event_open needs the last on current kernels) and still captures; it serves
//! /metrics, /healthz and /readyz; on exit no program of it stays loaded; and
//! agents that would each record every call on a host say so.
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use tokentap_e2e::*;

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn curl_call(dir: &std::path::Path, certs: &Certs, port: u16) -> u32 {
    let args: Vec<String> = [
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        "--cacert",
        &certs.ca.display().to_string(),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        &format!("https://api.openai.com:{port}/v1/chat/completions"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    run_client(with_provider_hosts(dir, "curl", &args)).0
}

#[test]
fn captures_with_only_the_documented_capabilities_and_serves_metrics() {
    let _g = serial();
    require_root();
    require_tool("setpriv");
    let dir = scratch("caps");
    let certs = Certs::generate(&dir);
    let server = Server::start(&dir, &certs);
    let port = free_port();
    let listen = format!("--metrics-listen=127.0.0.1:{port}");
    // Every capability but these is gone from the agent's bounding set.
    let wrapper = ["setpriv", "--inh-caps=-all", "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace,+sys_admin", "--"];
    let mut agent = Agent::start_with(&dir, &[&listen, "--ring-buffer-bytes=8388608"], &wrapper);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap().split_whitespace().nth(1).unwrap().to_owned();
    let mask = u64::from_str_radix(&eff, 16).unwrap();
    assert_eq!(mask, 1 << 19 | 1 << 21 | 1 << 38 | 1 << 39, "effective capabilities: {eff}");
    let pid = curl_call(&dir, &certs, server.port);
    let records = agent.wait_records(&[pid], 1);
    assert_eq!(records[0]["input_tokens"], server.served()[0]["expected"]["input"]);

    assert!(http_get(port, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(http_get(port, "/readyz").starts_with("HTTP/1.1 200"));
    let m = wait_for("records in /metrics", Duration::from_secs(10), || {
        let m = http_get(port, "/metrics");
        m.contains("tokentap_agent_records_total 1\n").then_some(m)
    });
    for name in [
        "tokentap_agent_dropped_unanswered_total",
        "tokentap_agent_kernel_ring_full_total",
        "process_resident_memory_bytes",
    ] {
        assert!(m.contains(name), "{name} in /metrics");
    }
    // The kernel's skipped runs of the agent's programs, read from the
    // kernel: none on a kernel whose syscall tracepoints are not preempted.
    assert!(m.contains("\ntokentap_agent_kernel_program_misses_total 0\n"), "{m}");
    // The ring buffer's size and its fill level over the last second (a gauge).
    let gauge = |name: &str| -> u64 {
        let line = m.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}:\n{m}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert!(m.contains("# TYPE tokentap_agent_ring_buffer_fill_bytes gauge"), "{m}");
    assert_eq!(gauge("tokentap_agent_ring_buffer_size_bytes"), 8_388_608);
    assert!(gauge("tokentap_agent_ring_buffer_fill_bytes") < 8_388_608);
    assert!(agent.stop().success());
}

#[test]
fn nothing_stays_loaded_after_exit() {
    let _g = serial();
    require_root();
    require_tool("bpftool");
    let dir = scratch("detach");
    let ours = |out: &str| {
        out.lines().filter(|l| l.contains("ssl_write") || l.contains("go_tls_") || l.contains("sys_enter")).count()
    };
    let mut agent = Agent::start(&dir, &[]);
    let loaded = Command::new("bpftool").args(["prog", "show"]).output().expect("bpftool");
    let loaded = String::from_utf8_lossy(&loaded.stdout).into_owned();
    assert!(ours(&loaded) >= 3, "the agent's programs are loaded while it runs:\n{loaded}");
    assert!(agent.stop().success());
    let after = wait_for("programs unloaded", Duration::from_secs(10), || {
        let o = Command::new("bpftool").args(["prog", "show"]).output().ok()?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        (ours(&text) == 0).then_some(text)
    });
    assert_eq!(ours(&after), 0);
}

#[test]
fn agent_restart_with_traffic_in_flight() {
    let _g = serial();
    require_root();
    let dir = scratch("restart");
    let certs = Certs::generate(&dir);
    let server = Server::start(&dir, &certs);
    // About 100 calls/s for 15 s: the restart (a few seconds) happens in the middle.
    const CALLS: usize = 1500;
    let calls: Vec<serde_json::Value> = (0..CALLS as u64)
        .map(|i| {
            let mut c = tokentap_e2e::calibrate::call(
                "chat",
                serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("call {i}")}]}),
                100 + i,
                10,
            );
            c["pause"] = serde_json::json!(0.008);
            c
        })
        .collect();
    let first_dir = dir.join("first");
    let second_dir = dir.join("second");
    std::fs::create_dir_all(&first_dir).unwrap();
    std::fs::create_dir_all(&second_dir).unwrap();
    let mut first = Agent::start(&first_dir, &[]);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let client = py_workload(&dir, &certs, &base, "restart", &calls)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("client");
    let pid = client.id();
    wait_for("some calls captured by the first agent", Duration::from_secs(30), || {
        (first.records_of(&[pid]).len() >= 20).then_some(())
    });
    // A rolling restart: the old agent stops (flushes), the new one starts, calls keep coming.
    let t = std::time::Instant::now();
    assert!(first.stop().success());
    let stopped = t.elapsed();
    let mut second = Agent::start(&second_dir, &[]);
    let started = t.elapsed();
    let out = client.wait_with_output().expect("client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let served = server.served();
    assert_eq!(served.len(), CALLS);
    // Stopping the new agent drains every event of the (exited) client and
    // writes its last records and final stats.
    assert!(second.stop().success());
    let a = first.records_of(&[pid]);
    let b = second.records_of(&[pid]);
    assert!(!b.is_empty(), "the new agent captures the calls made after it started");
    // Every record is exact and no call is recorded twice across the two agents.
    let all: Vec<serde_json::Value> = a.iter().chain(&b).cloned().collect();
    let prices = tokentap_event::PriceTable::shipped();
    for (r, s) in pair_with_served(&all, &served) {
        assert_matches_served(r, s, &prices);
    }
    let missed = CALLS - all.len();
    let stats = second.stats();
    // The old agent read events until its probes were gone: a call its
    // detach cut is counted, not silently lost.
    let old = first.stats();
    let at_exit = old["dropped_at_exit"].as_u64().unwrap_or(0);
    eprintln!(
        "restart: first agent {} records ({at_exit} cut by its exit), second {} records, {missed} not \
         recorded (old agent stopped in {stopped:?}, new one ready {started:?} after the stop began)",
        a.len(),
        b.len()
    );
    assert!(at_exit <= 1, "one connection, so at most one call in flight at the detach: {at_exit}");
    assert!(missed as u64 >= at_exit);
    assert_eq!(stats["decode_errors"], 0);
}

/// Agents on one host that share no `--handover-dir` each record every call
/// (two DaemonSets, a test run beside the deployed one). Each counts the
/// agents it does not share a directory with on its gauge
/// `other_agents_unshared` (stats file and /metrics) once it has seen them so
/// for a minute, and names their pids in its log; agents that share one are
/// not counted; when the other stops, the gauge goes back to 0.
#[test]
fn agents_that_share_no_handover_dir_count_each_other() {
    let _g = serial();
    require_root();
    let dir = scratch("unshared");
    let fs = tokentap_e2e::upgrade::BpfFs::mount(&dir);
    let dirs = ["shared-a", "shared-c", "alone-b"].map(|d| dir.join(d));
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    // Agents already on this host (none in CI) are counted by every agent here.
    let before = tokentap_agent::peers::capturing_agents(std::path::Path::new("/proc"), 0).len() as u64;
    let port = free_port();
    let listen = format!("--metrics-listen=127.0.0.1:{port}");
    let mut a = Agent::start(&dirs[0], &[&fs.flag(), &listen]);
    let mut c = Agent::start(&dirs[1], &[&fs.flag()]);
    let b_started = std::time::Instant::now();
    let mut b = Agent::start(&dirs[2], &[]);
    let unshared = |agent: &Agent| agent.stats()["other_agents_unshared"].as_u64();
    let counted = |agent: &Agent, n: u64| {
        wait_for(&format!("other_agents_unshared {n}"), Duration::from_secs(150), || {
            (unshared(agent) == Some(n + before)).then_some(())
        })
    };
    counted(&a, 1);
    // Not before a minute of looks: an agent starting beside this one may
    // still be about to register in its directory.
    assert!(b_started.elapsed() >= Duration::from_secs(60), "counted after {:?}", b_started.elapsed());
    counted(&c, 1);
    counted(&b, 2);
    let m = http_get(port, "/metrics");
    assert!(m.contains("# TYPE tokentap_agent_other_agents_unshared gauge"), "{m}");
    assert_eq!(metric_value(&m, "tokentap_agent_other_agents_unshared"), (1 + before) as f64);
    let logged = |agent: &Agent, pids: &[u32]| {
        let log = std::fs::read_to_string(&agent.stderr).unwrap();
        let lines = log.lines().filter(|l| l.contains("other tokentap agents capture on this host"));
        let named: Vec<u32> = lines
            .filter_map(|l| l.split("pids=[").nth(1)?.split(']').next())
            .flat_map(|list| list.split(", ").filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
            .collect();
        for p in pids {
            assert!(named.contains(p), "pid {p} named: {named:?}\n{log}");
        }
    };
    let (a_pid, b_pid, c_pid) = (a.pid(), b.pid(), c.pid());
    logged(&a, &[b_pid]);
    logged(&c, &[b_pid]);
    logged(&b, &[a_pid, c_pid]);
    assert!(b.stop().success());
    counted(&a, 0);
    counted(&c, 0);
    assert!(std::fs::read_to_string(&a.stderr).unwrap().contains("other tokentap agents no longer capture unshared"));
    assert!(c.stop().success());
    assert!(a.stop().success());
}
