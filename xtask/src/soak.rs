//! `cargo xtask soak [--minutes N]`: the agent under mixed traffic for N
//! minutes — Python SDKs over HTTPS (HTTP/1.1, 40 concurrent calls), Go over
//! HTTP/2, plaintext Ollama-style calls — sampling its RSS. Fails if records
//! are lost or RSS keeps growing (last minute more than 25% + 16 MiB over the
//! first minute). Needs root.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tokentap_e2e::{
    build_go_client, py_breadth, py_client, run_client, with_provider_hosts, Agent, Certs, Server, Transport,
    SECRET_KEY,
};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn run(agent_bin: &Path, dir: &Path, minutes: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    // SAFETY: single-threaded here; the harness reads it when spawning the agent.
    unsafe { std::env::set_var("TOKENTAP_AGENT_BIN", agent_bin) };
    let certs = Certs::generate(&dir);
    let tls = Server::start_with(&dir, &certs, Transport::H2);
    let plain_dir = dir.join("plain");
    std::fs::create_dir_all(&plain_dir)?;
    let plain = Server::start_with(&plain_dir, &certs, Transport::Plain);
    let go = build_go_client(&dir, false);
    let mut agent = Agent::start(&dir, &[]);
    let pid = agent.pid();
    let openai = format!("https://api.openai.com:{}/v1", tls.port);
    let anthropic = format!("https://api.anthropic.com:{}", tls.port);
    let round = || {
        run_client(py_client(&dir, &certs, &openai, &anthropic, "concurrent"));
        let args: Vec<String> =
            ["-base", &openai, "-ca", &certs.ca.display().to_string(), "-key", SECRET_KEY, "-n", "10"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        run_client(with_provider_hosts(&dir, &go.display().to_string(), &args));
        run_client(py_breadth(&dir, &certs, &format!("http://127.0.0.1:{}", plain.port), "ollama"));
    };
    // One round first, not counted: a new executable (the Go client) is probed
    // when it first runs, and a process that calls within milliseconds of that
    // first exec can beat the attach (docs/coverage.md). Steady state is measured.
    round();
    std::thread::sleep(Duration::from_secs(3));
    let served_before = tls.served().len() + plain.served().len();
    let records_before = agent.records().len();
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let start = Instant::now();
    let mut rounds = 0;
    while Instant::now() < deadline {
        round();
        rounds += 1;
        samples.push((start.elapsed().as_secs_f64(), rss_kib(pid)));
        if rounds % 10 == 0 {
            eprintln!(
                "soak: {:.0} s, {rounds} rounds, agent RSS {} MiB",
                start.elapsed().as_secs_f64(),
                rss_kib(pid) / 1024
            );
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let served = tls.served().len() + plain.served().len() - served_before;
    let records = agent.records().len() - records_before;
    let stats = agent.stats();
    ensure!(agent.stop().success(), "agent exit");
    let window = |from: f64, to: f64| {
        let v: Vec<u64> = samples.iter().filter(|(t, _)| *t >= from && *t < to).map(|s| s.1).collect();
        v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
    };
    let total = start.elapsed().as_secs_f64();
    let first = window(0.0, 60.0f64.min(total / 2.0));
    let last = window((total - 60.0).max(total / 2.0), total + 1.0);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let report = format!(
        "soak: {minutes} min, {rounds} rounds, {served} calls served, {records} records; agent RSS first minute \
         {:.1} MiB, last minute {:.1} MiB, max {:.1} MiB; dropped_unanswered {}, kernel_ring_full {}",
        first / 1024.0,
        last / 1024.0,
        max as f64 / 1024.0,
        stats["dropped_unanswered"],
        stats["kernel_ring_full"]
    );
    println!("{report}");
    std::fs::write(dir.join("soak.txt"), format!("{report}\n"))?;
    ensure!(records == served, "records {records} != calls served {served}");
    ensure!(last <= first * 1.25 + 16.0 * 1024.0, "agent RSS grew: {report}");
    Ok(())
}
