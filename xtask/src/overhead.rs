//! `cargo xtask bench` part 2: what the agent costs a traced TLS client.
//!
//! An LLM-shaped HTTPS workload — 2 KB JSON request, 8 KB JSON response with
//! usage, keep-alive — from `wrk` (OpenSSL) to a local `nginx` (OpenSSL), first
//! without the agent, then with the release agent capturing every call, in the
//! same run (these machines are noisy: only ratios within one run mean much).
//! Then the agent's CPU and RSS at paced rates, records lost at a sustained
//! rate, and the drop counters when overdriven. Results: target/bench/overhead.md.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokentap_e2e::{Agent, Certs};

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx(dir: &Path, certs: &Certs, port: u16) -> Result<Nginx> {
    // An 8 KB chat completion with usage: the agent parses it like OpenAI's.
    let filler = "lorem ipsum dolor sit amet ".repeat(290);
    let body = format!(
        "{{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{filler}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":512,\"completion_tokens\":2000,\"total_tokens\":2512}}}}"
    );
    // Served as a file: nginx answers a POST to a static file with 405, which
    // error_page turns into the file itself (a `return` string can't be 8 KB).
    let www = dir.join("www/v1/chat");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("completions"), &body)?;
    let conf = format!(
        "worker_processes 1;\npid {pid};\nerror_log {err} warn;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  server {{\n    listen 127.0.0.1:{port} ssl;\n\
         ssl_certificate {cert};\n    ssl_certificate_key {key};\n    client_body_buffer_size 16k;\n\
         location / {{ root {root}; default_type application/json; error_page 405 =200 $uri; }}\n  }}\n}}\n",
        root = dir.join("www").display(),
        pid = dir.join("nginx.pid").display(),
        err = dir.join("nginx.err").display(),
        cert = certs.cert.display(),
        key = certs.key.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = Command::new("nginx")
        .args(["-e", &dir.join("nginx.err").display().to_string(), "-g", "daemon off;", "-c"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let n = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nginx did not start: {}", std::fs::read_to_string(dir.join("nginx.err")).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(n)
}

/// wrk's result: (requests/s, mean latency in µs, requests).
fn wrk(dir: &Path, port: u16, conns: u32, secs: u32, delay_ms: Option<u32>) -> Result<(f64, f64, u64)> {
    wrk_url(dir, &format!("https://127.0.0.1:{port}/v1/chat/completions"), conns, secs, delay_ms)
}

fn wrk_url(dir: &Path, url: &str, conns: u32, secs: u32, delay_ms: Option<u32>) -> Result<(f64, f64, u64)> {
    let body = format!(
        "{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "x".repeat(1950)
    );
    let delay = delay_ms.map(|d| format!("function delay() return {d} end\n")).unwrap_or_default();
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = \"Bearer sk-bench\"\n{delay}"
        ),
    )?;
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s"), "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:").map(|v| v.trim().parse::<f64>().unwrap_or(0.0)))
        .with_context(|| format!("wrk output: {text}"))?;
    let lat = text
        .lines()
        .find(|l| l.trim_start().starts_with("Latency") && !l.contains("Distribution"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(parse_latency_us)
        .unwrap_or(0.0);
    let total = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok((rps, lat, total))
}

fn parse_latency_us(s: &str) -> f64 {
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1000.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e6)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().unwrap_or(0.0) * mult
}

/// (CPU seconds, RSS bytes) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0;
    let cpu = (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / ticks;
    let rss = f.get(21).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 4096;
    (cpu, rss)
}

/// The LiteLLM proxy (a venv under target/bench, created by `bench_tools`) in
/// front of the same nginx; wrk -> proxy over plain HTTP -> nginx over TLS.
fn litellm(dir: &Path, certs: &Certs, upstream: u16) -> Result<Option<Child>> {
    let bin = dir.join("litellm-venv/bin/litellm");
    if !bin.exists() {
        return Ok(None);
    }
    let port = 4000 + upstream % 1000;
    let cfg = dir.join("litellm.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      \
             api_base: https://127.0.0.1:{upstream}/v1\n      api_key: sk-bench\nlitellm_settings:\n  telemetry: false\n"
        ),
    )?;
    let child = Command::new(bin)
        .args(["--config", &cfg.display().to_string(), "--port", &port.to_string(), "--num_workers", "1"])
        .env("SSL_CERT_FILE", &certs.ca)
        .env("LITELLM_LOG", "ERROR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("litellm.stderr"))?)
        .spawn()
        .context("starting litellm")?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("litellm did not start: see {}", dir.join("litellm.stderr").display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(dir.join("litellm.port"), port.to_string())?;
    Ok(Some(child))
}

/// (label, connections, per-connection delay in ms): wrk's pacing of ~100,
/// ~1,000 and ~5,000 calls/s.
const PACED: &[(&str, u32, u32)] = &[("100/s", 1, 10), ("1,000/s", 4, 4), ("5,000/s", 16, 3)];

pub fn run(agent_bin: &Path, dir: &Path, long: bool) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let certs = Certs::generate(dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _nginx = nginx(dir, &certs, port)?;
    let secs = if long { 20 } else { 10 };
    let mut md = String::from("| measurement | without agent | with agent | ratio / delta |\n|---|--:|--:|--:|\n");
    // Warm-up (TLS session setup, nginx caches).
    wrk(dir, port, 4, 2, None)?;
    let (base_rps, base_lat, _) = wrk(dir, port, 4, secs, None)?;
    let mut paced_base = Vec::new();
    for (_, conns, delay) in PACED {
        let (rps, lat, _) = wrk(dir, port, *conns, secs, Some(*delay))?;
        paced_base.push((rps, lat));
    }
    let agent_dir = dir.join("agent");
    let _ = std::fs::remove_dir_all(&agent_dir);
    std::fs::create_dir_all(&agent_dir)?;
    // SAFETY: single-threaded here; the harness reads it when spawning the agent.
    unsafe { std::env::set_var("TOKENTAP_AGENT_BIN", agent_bin) };
    let mut agent = Agent::start(&agent_dir, &[]);
    let (ag_rps, ag_lat, ag_total) = wrk(dir, port, 4, secs, None)?;
    std::thread::sleep(Duration::from_secs(2));
    let captured = agent.record_count() as u64;
    let (cpu0, _) = usage(agent.pid());
    md.push_str(&format!(
        "| max throughput, 4 keep-alive connections (calls/s) | {base_rps:.0} | {ag_rps:.0} | {:.3} ({:+.1}%) |\n",
        ag_rps / base_rps,
        (ag_rps / base_rps - 1.0) * 100.0
    ));
    md.push_str(&format!(
        "| mean latency per call (µs) | {base_lat:.0} | {ag_lat:.0} | {:+.0} µs |\n",
        ag_lat - base_lat
    ));
    md.push_str(&format!("| calls captured at max rate | | {captured} of {ag_total} | |\n"));
    // The stats file is rewritten every second.
    std::thread::sleep(Duration::from_millis(1100));
    let bytes = agent.stats()["bytes"].as_u64().unwrap_or(0);
    md.push_str(&format!(
        "| plaintext through the ring buffer at max rate (MB/s) | | {:.1} | |\n",
        bytes as f64 / secs as f64 / 1e6
    ));
    // Paced rates: the same runs without the agent (measured first, before it
    // started) give the latency each call gains; with it, its CPU and RSS.
    let mut rates = String::from(
        "\n| offered rate | achieved without / with agent (calls/s) | mean latency without / with (µs) | added per call | agent CPU (% of one core) | agent RSS (MiB) | records / calls |\n|---|--:|--:|--:|--:|--:|--:|\n",
    );
    let mut paced_with = Vec::new();
    for (i, (label, conns, delay)) in PACED.iter().enumerate() {
        let (b_rps, b_lat) = paced_base[i];
        let before = agent.record_count() as u64;
        let (c0, _) = usage(agent.pid());
        let t = Instant::now();
        let (rps, lat, total) = wrk(dir, port, *conns, secs, Some(*delay))?;
        std::thread::sleep(Duration::from_secs(2));
        let (c1, rss) = usage(agent.pid());
        let cpu_pct = (c1 - c0) / t.elapsed().as_secs_f64() * 100.0;
        let got = agent.record_count() as u64 - before;
        paced_with.push(lat);
        rates.push_str(&format!(
            "| {label} | {b_rps:.0} / {rps:.0} | {b_lat:.0} / {lat:.0} | {:+.0} µs | {cpu_pct:.1} | {:.0} | {got} / {total} |\n",
            lat - b_lat,
            rss as f64 / (1 << 20) as f64
        ));
    }
    let sustained = if long { 60 } else { 20 };
    let before = agent.record_count() as u64;
    let (rps, _, total) = wrk(dir, port, 4, sustained, Some(4))?;
    std::thread::sleep(Duration::from_secs(2));
    let got = agent.record_count() as u64 - before;
    rates.push_str(&format!(
        "\nSustained {rps:.0} calls/s for {sustained} s: {got} records for {total} calls ({} lost).\n",
        total.saturating_sub(got)
    ));
    let (cpu1, _) = usage(agent.pid());
    anyhow::ensure!(agent.stop().success(), "agent exit");
    // Final counters, written at exit.
    let stats = agent.stats();
    let drops: u64 = ["dropped_unanswered", "dropped_parse_error", "kernel_ring_full", "connections_shed"]
        .iter()
        .map(|k| stats[k].as_u64().unwrap_or(0))
        .sum();
    rates.push_str(&format!(
        "Agent CPU over the paced runs: {:.1} s. Drop and loss counters at the end: {drops} \
         (dropped_unanswered {}, kernel_ring_full {}).\n",
        cpu1 - cpu0,
        stats["dropped_unanswered"],
        stats["kernel_ring_full"]
    ));
    let machine = format!(
        "Machine: {} CPUs, kernel {}; wrk and nginx (OpenSSL 3) on loopback, both traced.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    // The usual alternative, a gateway proxy, on the same workload (no agent running).
    let mut gateway = String::new();
    if let Some(mut proxy) = litellm(dir, &certs, port)? {
        let lport: u16 = std::fs::read_to_string(dir.join("litellm.port"))?.trim().parse()?;
        let url = format!("http://127.0.0.1:{lport}/v1/chat/completions");
        wrk_url(dir, &url, 4, 3, None)?;
        let (g_rps, g_lat, _) = wrk_url(dir, &url, 4, secs, None)?;
        let (_, g100, _) = wrk_url(dir, &url, PACED[0].1, secs, Some(PACED[0].2))?;
        let _ = proxy.kill();
        let _ = proxy.wait();
        gateway = format!(
            "\n| same workload | max calls/s (4 connections) | mean latency at 100/s (µs) |\n|---|--:|--:|\n\
             | direct, no agent | {base_rps:.0} | {:.0} |\n| direct, tokentap agent capturing | {ag_rps:.0} | {:.0} |\n\
             | through the LiteLLM proxy (1 worker) | {g_rps:.0} | {g100:.0} |\n(LiteLLM mean latency at its max rate: {g_lat:.0} µs)\n",
            paced_base[0].1, paced_with[0]
        );
    }
    let report = format!("# tokentap overhead (cargo xtask bench)\n\n{machine}{md}{rates}{gateway}");
    std::fs::write(dir.join("overhead.md"), &report)?;
    println!("\n{report}");
    Ok(())
}
