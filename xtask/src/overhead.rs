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

pub(crate) struct Nginx(pub(crate) Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master stops its workers (a killed master
        // leaves them running, still serving and still mapping their libssl).
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub(crate) fn nginx(dir: &Path, certs: &Certs, port: u16) -> Result<Nginx> {
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
    let location = format!(
        "location / {{ root {root}; default_type application/json; error_page 405 =200 $uri; }}",
        root = dir.join("www").display()
    );
    Nginx::start(dir, certs, port, "nginx", &location, "")
}

impl Nginx {
    /// nginx on 127.0.0.1:`port` over TLS, one worker, with `location` as its
    /// only location block (and `servers`, more server blocks, if any); files
    /// `{name}.conf/.pid/.err` in `dir`. The server
    /// gets its own copy of libssl, like a server in its own container image:
    /// with `--exclude-process nginx` the agent then probes only the client,
    /// as on a node calling a remote LLM API.
    pub(crate) fn start(
        dir: &Path,
        certs: &Certs,
        port: u16,
        name: &str,
        location: &str,
        servers: &str,
    ) -> Result<Self> {
        let err = dir.join(format!("{name}.err"));
        let conf = format!(
            "worker_processes 1;\npid {pid};\nerror_log {err} warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  server {{\n    listen 127.0.0.1:{port} ssl;\n\
             ssl_certificate {cert};\n    ssl_certificate_key {key};\n    client_body_buffer_size 16k;\n\
             {location}\n  }}\n{servers}\n}}\n",
            pid = dir.join(format!("{name}.pid")).display(),
            err = err.display(),
            cert = certs.cert.display(),
            key = certs.key.display(),
        );
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf)?;
        let lib_dir = dir.join("server-lib");
        std::fs::create_dir_all(&lib_dir)?;
        std::fs::copy(system_libssl()?, lib_dir.join("libssl.so.3")).context("copying libssl for nginx")?;
        let child = Command::new("nginx")
            .env("LD_LIBRARY_PATH", &lib_dir)
            .args(["-e", &err.display().to_string(), "-g", "daemon off;", "-c"])
            .arg(&path)
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let n = Nginx(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start: {}", std::fs::read_to_string(&err).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(n)
    }
}

/// The libssl.so.3 nginx links against.
pub(crate) fn system_libssl() -> Result<std::path::PathBuf> {
    let nginx = Command::new("sh").args(["-c", "ldd \"$(command -v nginx)\""]).output().context("ldd nginx")?;
    String::from_utf8_lossy(&nginx.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("libssl.so.3 => ")?.split_whitespace().next().map(Into::into))
        .context("nginx is not linked against libssl.so.3")
}

/// wrk's result: (requests/s, mean latency in µs, requests, client CPU µs per call).
/// wrk's CPU time per call in µs comes from the rusage of reaped children (wrk
/// is the only child reaped meanwhile): the traced client's own cost, kernel time
/// in its probes included, and much steadier than latency on a shared machine.
pub(crate) type WrkRun = (f64, f64, u64, f64);

fn children_cpu_us() -> f64 {
    // SAFETY: a zeroed rusage for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn wrk(dir: &Path, port: u16, conns: u32, secs: u32, delay_ms: Option<u32>) -> Result<WrkRun> {
    wrk_url(dir, &format!("https://127.0.0.1:{port}/v1/chat/completions"), conns, secs, delay_ms)
}

fn wrk_url(dir: &Path, url: &str, conns: u32, secs: u32, delay_ms: Option<u32>) -> Result<WrkRun> {
    let body = format!(
        "{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "x".repeat(1950)
    );
    wrk_body(dir, url, conns, secs, delay_ms, &body)
}

/// wrk posting `body` (JSON without single quotes) to `url`.
pub(crate) fn wrk_body(
    dir: &Path,
    url: &str,
    conns: u32,
    secs: u32,
    delay_ms: Option<u32>,
    body: &str,
) -> Result<WrkRun> {
    let delay = delay_ms.map(|d| format!("function delay() return {d} end\n")).unwrap_or_default();
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = \"Bearer sk-bench\"\n{delay}"
        ),
    )?;
    let cpu0 = children_cpu_us();
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
    let cpu = (children_cpu_us() - cpu0) / (total.max(1) as f64);
    Ok((rps, lat, total, cpu))
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
pub(crate) const PACED: &[(&str, u32, u32)] = &[("100/s", 1, 10), ("1,000/s", 4, 4), ("5,000/s", 17, 3)];

/// Set the CPU affinity of every thread of `pid` (children inherit it).
fn pin(pid: u32, cpus: &str) -> Result<()> {
    let ok = Command::new("taskset").args(["-a", "-pc", cpus, &pid.to_string()]).stdout(Stdio::null()).status()?;
    anyhow::ensure!(ok.success(), "taskset {cpus} {pid}");
    Ok(())
}

/// The nginx master and its workers.
fn nginx_pids(master: u32) -> Vec<u32> {
    let out = Command::new("pgrep").args(["-P", &master.to_string()]).output().map(|o| o.stdout).unwrap_or_default();
    std::iter::once(master)
        .chain(String::from_utf8_lossy(&out).split_whitespace().filter_map(|p| p.parse().ok()))
        .collect()
}

/// Without/with pairs at ~1,000 calls/s, alternated so that drift on a shared
/// machine hits both sides alike: (median added latency, median added client
/// CPU, median throughput ratio).
fn interleaved(dir: &Path, port: u16, pairs: usize, pin_agent: bool) -> Result<(f64, f64, f64)> {
    let (_, conns, delay) = PACED[1];
    let (mut lat, mut cpu, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        let (b_rps, b_lat, _, b_cpu) = wrk(dir, port, conns, 8, Some(delay))?;
        let agent_dir = dir.join(format!("agent-pair-{i}"));
        let _ = std::fs::remove_dir_all(&agent_dir);
        std::fs::create_dir_all(&agent_dir)?;
        let mut agent = Agent::start(&agent_dir, &["--exclude-process", "nginx"]);
        if pin_agent {
            pin(agent.pid(), "1")?;
        }
        let (rps, l, _, c) = wrk(dir, port, conns, 8, Some(delay))?;
        anyhow::ensure!(agent.stop().success(), "agent exit");
        lat.push(l - b_lat);
        cpu.push(c - b_cpu);
        ratio.push(rps / b_rps);
    }
    Ok((crate::stats::median(lat), crate::stats::median(cpu), crate::stats::median(ratio)))
}

/// What `--handover-dir` (the chart's default) adds per call: the agent
/// with and without it, alternated, 3 pairs at the maximum rate (median
/// throughput ratio). It costs a few map lookups per copied call.
fn handover_cost(dir: &Path, port: u16, secs: u32) -> Result<String> {
    let fs = dir.join("bpffs");
    std::fs::create_dir_all(&fs)?;
    let mounted = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&fs).status()?.success();
    anyhow::ensure!(mounted, "mount -t bpf {}", fs.display());
    let pins = format!("--handover-dir={}", fs.join("tokentap").display());
    let mut ratios = Vec::new();
    let once = |i: usize, extra: Option<&str>| -> Result<f64> {
        let d = dir.join(format!("agent-handover-{i}-{}", extra.is_some()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        let mut args = vec!["--exclude-process", "nginx"];
        args.extend(extra);
        let mut agent = Agent::start(&d, &args);
        // Both arms time an agent of the same age: with --handover-dir, past
        // its start's overlap bookkeeping (5 s from before its probes
        // attach); without, as long after its start.
        std::thread::sleep(Duration::from_secs(6));
        agent.wait_steady();
        let (rps, _, _, _) = wrk(dir, port, 4, secs, None)?;
        anyhow::ensure!(agent.stop().success(), "agent exit");
        Ok(rps)
    };
    for i in 0..3 {
        let without = once(i, None)?;
        let with = once(i, Some(&pins))?;
        ratios.push(with / without);
    }
    let _ = Command::new("umount").arg(&fs).status();
    let pairs = ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", ");
    Ok(format!(
        "**`--handover-dir` (the chart's default), 3 pairs at the maximum rate, the agent without it first in \
         each: {:+.1}% throughput against the agent without it (median; pairs {pairs}).**\n",
        (crate::stats::median(ratios) - 1.0) * 100.0,
    ))
}

pub fn run(agent_bin: &Path, dir: &Path, long: bool) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let certs = Certs::generate(dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let nginx = nginx(dir, &certs, port)?;
    let nginx_pid = nginx.0.id();
    let secs = if long { 20 } else { 10 };
    let mut md = String::from("| measurement | without agent | with agent | ratio / delta |\n|---|--:|--:|--:|\n");
    // Warm-up (TLS session setup, nginx caches).
    wrk(dir, port, 4, 2, None)?;
    let (base_rps, base_lat, _, _) = wrk(dir, port, 4, secs, None)?;
    let mut paced_base = Vec::new();
    for (_, conns, delay) in PACED {
        let (rps, lat, _, cpu) = wrk(dir, port, *conns, secs, Some(*delay))?;
        paced_base.push((rps, lat, cpu));
    }
    let agent_dir = dir.join("agent");
    let _ = std::fs::remove_dir_all(&agent_dir);
    std::fs::create_dir_all(&agent_dir)?;
    // SAFETY: single-threaded here; the harness reads it when spawning the agent.
    unsafe { std::env::set_var("TOKENTAP_AGENT_BIN", agent_bin) };
    let mut agent = Agent::start(&agent_dir, &["--exclude-process", "nginx"]);
    let (ag_rps, ag_lat, ag_total, _) = wrk(dir, port, 4, secs, None)?;
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
        "\n| offered rate | achieved without / with agent (calls/s) | mean latency without / with (µs) | added per call | client CPU per call without / with (µs) | agent CPU (% of one core) | agent RSS (MiB) | records / calls |\n|---|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let mut paced_with = Vec::new();
    for (i, (label, conns, delay)) in PACED.iter().enumerate() {
        let (b_rps, b_lat, b_cpu) = paced_base[i];
        let before = agent.record_count() as u64;
        let (c0, _) = usage(agent.pid());
        let t = Instant::now();
        let (rps, lat, total, cpu) = wrk(dir, port, *conns, secs, Some(*delay))?;
        std::thread::sleep(Duration::from_secs(2));
        let (c1, rss) = usage(agent.pid());
        let cpu_pct = (c1 - c0) / t.elapsed().as_secs_f64() * 100.0;
        let got = agent.record_count() as u64 - before;
        paced_with.push(lat);
        rates.push_str(&format!(
            "| {label} | {b_rps:.0} / {rps:.0} | {b_lat:.0} / {lat:.0} | {:+.0} µs | {b_cpu:.1} / {cpu:.1} | {cpu_pct:.1} | {:.0} | {got} / {total} |\n",
            lat - b_lat,
            rss as f64 / (1 << 20) as f64
        ));
    }
    let sustained = if long { 120 } else { 60 };
    let before = agent.record_count() as u64;
    let (rps, _, total, _) = wrk(dir, port, 4, sustained, Some(4))?;
    std::thread::sleep(Duration::from_secs(2));
    let got = agent.record_count() as u64 - before;
    rates.push_str(&format!(
        "\nSustained {rps:.0} calls/s for {sustained} s: {got} records for {total} calls ({} lost).\n",
        total.saturating_sub(got)
    ));
    let (cpu1, _) = usage(agent.pid());
    anyhow::ensure!(agent.stop().success(), "agent exit");
    // Both ends on this node and both traced (the server's probes fire too).
    let both_dir = dir.join("agent-both");
    let _ = std::fs::remove_dir_all(&both_dir);
    std::fs::create_dir_all(&both_dir)?;
    let mut both = Agent::start(&both_dir, &[]);
    let mut both_rows = String::from(
        "\nWith the server traced as well (no `--exclude-process`; both ends of each call take probe hits):\n\n\
         | offered rate | achieved without / with agent (calls/s) | mean latency without / with (µs) | added per call | client CPU per call without / with (µs) |\n|---|--:|--:|--:|--:|\n",
    );
    for (i, (label, conns, delay)) in PACED.iter().enumerate().take(2) {
        let (b_rps, b_lat, b_cpu) = paced_base[i];
        let (rps, lat, _, cpu) = wrk(dir, port, *conns, secs, Some(*delay))?;
        both_rows.push_str(&format!(
            "| {label} | {b_rps:.0} / {rps:.0} | {b_lat:.0} / {lat:.0} | {:+.0} µs | {b_cpu:.1} / {cpu:.1} |\n",
            lat - b_lat
        ));
    }
    anyhow::ensure!(both.stop().success(), "agent exit");
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
    rates.push_str(&both_rows);
    // Overdriven: a ring buffer far too small for the rate. Losses must show in
    // the counters, and every record written must still be exact.
    let over_dir = dir.join("agent-overdriven");
    let _ = std::fs::remove_dir_all(&over_dir);
    std::fs::create_dir_all(&over_dir)?;
    let mut over = Agent::start(&over_dir, &["--exclude-process", "nginx", "--ring-buffer-bytes", "65536"]);
    let (o_rps, _, o_total, _) = wrk(dir, port, 4, 5, None)?;
    std::thread::sleep(Duration::from_secs(2));
    anyhow::ensure!(over.stop().success(), "agent exit");
    let o = over.stats();
    let o_records = o["records"].as_u64().unwrap_or(0);
    let wrong = over.records().iter().filter(|r| r["input_tokens"] != 512 || r["output_tokens"] != 2000).count();
    rates.push_str(&format!(
        "\nOverdriven (64 KiB ring buffer, {o_rps:.0} calls/s for 5 s): {o_records} records for {o_total} calls; \
         counted: kernel_ring_full {} chunks, dropped_unanswered {}, joined_mid_stream {}, ignored_desync {}; \
         records with wrong tokens: {wrong}.\n",
        o["kernel_ring_full"], o["dropped_unanswered"], o["joined_mid_stream"], o["ignored_desync"]
    ));
    let pairs = 5;
    let (i_lat, i_cpu, i_ratio) = interleaved(dir, port, pairs, false)?;
    rates.push_str(&format!(
        "\n**At ~1,000 calls/s, {pairs} without/with pairs alternated (medians; the agent started and \
         stopped for each pair): {:+.1}% throughput, {i_lat:+.0} µs latency, {i_cpu:+.1} µs of the \
         client's CPU per call.**\n",
        (i_ratio - 1.0) * 100.0
    ));
    rates.push_str(&handover_cost(dir, port, secs)?);
    // The same with the agent on its own CPU, client and server on another: what
    // is left is the probes' cost in the client, without CPU sharing.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        let all = format!("0-{}", cpus - 1);
        let me = std::process::id();
        let procs: Vec<u32> = std::iter::once(me).chain(nginx_pids(nginx_pid)).collect();
        for p in &procs {
            pin(*p, "0")?;
        }
        let pinned = interleaved(dir, port, 3, true);
        for p in &procs {
            pin(*p, &all)?;
        }
        let (p_lat, p_cpu, p_ratio) = pinned?;
        rates.push_str(&format!(
            "**The same, 3 pairs, with client and server on CPU 0 and the agent on CPU 1: {:+.1}% throughput, \
             {p_lat:+.0} µs latency, {p_cpu:+.1} µs of the client's CPU per call.**\n",
            (p_ratio - 1.0) * 100.0
        ));
    }
    let hit = match crate::uprobe_cost::measure() {
        Ok((single, emulated)) => format!(
            "One uprobe hit on this machine: {single:.2} µs when the kernel single-steps the probed \
             instruction, {emulated:.2} µs when it emulates it (the agent probes emulated instructions \
             where the code allows: `probes=\"internal\"` in its log).\n\n"
        ),
        Err(e) => format!("(uprobe hit cost not measured: {e})\n\n"),
    };
    let machine = format!(
        "Machine: {} CPUs, kernel {}; wrk and nginx (OpenSSL 3) on loopback; the agent runs with \
         `--exclude-process nginx` (nginx has its own libssl copy), so only the client is traced, \
         unless said otherwise.\n\n{hit}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    // The usual alternative, a gateway proxy, on the same workload (no agent running).
    let mut gateway = String::new();
    if let Some(mut proxy) = litellm(dir, &certs, port)? {
        let lport: u16 = std::fs::read_to_string(dir.join("litellm.port"))?.trim().parse()?;
        let url = format!("http://127.0.0.1:{lport}/v1/chat/completions");
        wrk_url(dir, &url, 4, 3, None)?;
        let (g_rps, g_lat, _, _) = wrk_url(dir, &url, 4, secs, None)?;
        let (_, g100, _, _) = wrk_url(dir, &url, PACED[0].1, secs, Some(PACED[0].2))?;
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
