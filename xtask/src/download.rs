//! `cargo xtask bench --only-download`: what the agent costs busy TLS traffic
//! it records nothing of (issue #19, target: under 3 % throughput lost). curl
//! (libcurl on the system's OpenSSL, probed) downloads a 300 MB file ten times
//! over one HTTPS connection from a local nginx (its own libssl copy,
//! `--exclude-process nginx`), runs without and with the release agent
//! alternated, and which goes first swapped pair by pair, so drift on a shared
//! machine hits both sides alike; curl's own CPU time (the probes' cost lands
//! in it) beside the throughput. The agent must record nothing: the bytes are
//! not an LLM API call. It must not copy them either: each response body is
//! muted in the kernel once its head is parsed (agent `http/mute.rs`), so the
//! bench fails when more than a tenth of the bytes crossed the ring buffer.
//! Results: target/bench/download.md.
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use tokentap_e2e::{Agent, Certs};

use crate::overhead::Nginx;

const BYTES: u64 = 300 << 20;
/// Downloads of the file per run (one connection): ~3 s a run here.
const TIMES: u64 = 10;
const PAIRS: usize = 7;

/// One run: MB/s and curl's own CPU seconds (user + system).
fn curl(ca: &Path, port: u16) -> Result<(f64, f64)> {
    let cpu = |who| {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        s(u.ru_utime) + s(u.ru_stime)
    };
    let before = cpu(libc::RUSAGE_CHILDREN);
    let t = Instant::now();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http1.1", "--cacert"]).arg(ca).args(["-w", "%{size_download}\n"]);
    for _ in 0..TIMES {
        cmd.args(["-o", "/dev/null"]).arg(format!("https://localhost:{port}/big"));
    }
    let out = cmd.output().context("running curl")?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let got: u64 = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse::<u64>().ok()).sum();
    ensure!(got == BYTES * TIMES, "downloaded {got} bytes of {}", BYTES * TIMES);
    Ok((got as f64 / 1e6 / secs, cpu(libc::RUSAGE_CHILDREN) - before))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(agent_bin: &Path, dir: &Path) -> Result<()> {
    let work = dir.join("download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("www"))?;
    let certs = Certs::generate(&work);
    // Random bytes: nothing along the way gets to compress them.
    let status = Command::new("head")
        .args(["-c", &BYTES.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(work.join("www/big"))?)
        .status()?;
    ensure!(status.success(), "writing the file to serve");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let location = format!("location / {{ root {}; }}", work.join("www").display());
    let _nginx = Nginx::start(&work, &certs, port, "nginx-download", &location, "")?;
    // SAFETY: set before any agent starts; xtask runs one bench at a time.
    unsafe { std::env::set_var("TOKENTAP_AGENT_BIN", agent_bin) };
    curl(&certs.ca, port)?;
    let mut md = String::from(
        "| pair | without agent | with agent | ratio | curl CPU without / with | bytes copied | reads muted |\n\
         |--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let (mut ratios, mut cpu_ratios, mut records, mut copied) = (Vec::new(), Vec::new(), 0, Vec::new());
    for i in 0..PAIRS {
        // Odd pairs run the agent first: a second run that is faster for
        // being second (warm caches) favours neither side.
        let agent_first = i % 2 == 1;
        let mut without = if agent_first { None } else { Some(curl(&certs.ca, port)?) };
        let agent_dir = work.join(format!("agent-{i}"));
        std::fs::create_dir_all(&agent_dir)?;
        let mut agent = Agent::start(&agent_dir, &["--exclude-process", "nginx"]);
        let (with, with_cpu) = curl(&certs.ca, port)?;
        ensure!(agent.stop().success(), "agent exit");
        if without.is_none() {
            without = Some(curl(&certs.ca, port)?);
        }
        let (base, base_cpu) = without.expect("run above");
        records += agent.records().len();
        let stats = agent.stats();
        let share = stats["bytes"].as_u64().unwrap_or(u64::MAX) as f64 / (BYTES * TIMES) as f64;
        let muted = stats["kernel_muted_reads"].as_u64().unwrap_or(0);
        eprintln!("download: pair {i}: {base:.0} MB/s without, {with:.0} MB/s with the agent; {share:.4} copied");
        md.push_str(&format!(
            "| {} | {base:.0} MB/s | {with:.0} MB/s | {:.3} | {base_cpu:.2} / {with_cpu:.2} s | {:.2} % | {muted} |\n",
            i + 1,
            with / base,
            share * 100.0
        ));
        copied.push(share);
        ratios.push(with / base);
        cpu_ratios.push(with_cpu / base_cpu);
    }
    let (ratio, cpu_ratio) = (median(ratios), median(cpu_ratios));
    let verdict = if 1.0 - ratio < 0.03 { "met" } else { "NOT met" };
    let text = format!(
        "# A 300 MB HTTPS download with and without the agent\n\n\
         curl (the system's OpenSSL, probed) from a local nginx (its own libssl, excluded), \
         the file {TIMES} times over one connection a run, {PAIRS} pairs alternated (the agent first in even-numbered pairs). The agent \
         records nothing of it (records: {records}).\n\n{md}\n\
         Median ratio {ratio:.3}: {:.1} % throughput lost. Target under 3 %: {verdict}. \
         Median curl CPU ratio {cpu_ratio:.2}.\n",
        (1.0 - ratio) * 100.0
    );
    ensure!(records == 0, "the agent recorded {records} calls of a plain download");
    let most = copied.iter().copied().fold(0.0, f64::max);
    ensure!(most < 0.1, "the agent copied {:.1} % of a download's bytes: response bodies are not muted", most * 100.0);
    std::fs::write(dir.join("download.md"), &text)?;
    std::fs::remove_file(work.join("www/big"))?;
    eprintln!("{text}");
    Ok(())
}
