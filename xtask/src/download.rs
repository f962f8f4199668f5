//! `cargo xtask bench --only-download`: what the agent costs busy TLS traffic
//! it records nothing of (issue #19, target: under 3 % throughput lost). A
//! client downloads a 300 MB file ten times over one HTTPS connection from a
//! local nginx (its own libssl copy, `--exclude-process nginx`): curl (libcurl
//! on the system's OpenSSL, probed by symbol), then the tests' Go client (Go's
//! crypto/tls, probed in the executable, whose `Read` returns take a
//! single-stepped probe hit each). Runs without and with the release agent
//! alternate, and which goes first swaps pair by pair, so drift on a shared
//! machine hits both sides alike; the client's own CPU time (the probes' cost
//! lands in it) beside the throughput. The agent must record nothing: the
//! bytes are not an LLM API call. It must not copy them either: each response
//! body is muted in the kernel once its head is parsed (agent `http/mute.rs`),
//! so the bench fails when more than a tenth of the bytes crossed the ring
//! buffer. Results: target/bench/download.md.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use tokentap_e2e::{Agent, Certs};

use crate::overhead::Nginx;

const BYTES: u64 = 300 << 20;
/// Downloads of the file per run (one connection): ~3 s a run here.
const TIMES: u64 = 10;
const PAIRS: usize = 7;

/// A downloading client: curl, or the tests' Go client.
enum Client {
    Curl,
    Go(PathBuf),
}

impl Client {
    fn name(&self) -> &'static str {
        match self {
            Client::Curl => "curl (OpenSSL)",
            Client::Go(_) => "Go net/http (crypto/tls)",
        }
    }

    /// One run: MB/s and the client's own CPU seconds (user + system).
    fn run(&self, ca: &Path, port: u16) -> Result<(f64, f64)> {
        let url = format!("https://localhost:{port}/big");
        let t = Instant::now();
        let (got, cpu) = match self {
            Client::Curl => {
                let before = children_cpu();
                let mut cmd = Command::new("curl");
                cmd.args(["-sS", "--http1.1", "--cacert"]).arg(ca).args(["-w", "%{size_download}\n"]);
                for _ in 0..TIMES {
                    cmd.args(["-o", "/dev/null"]).arg(&url);
                }
                let out = cmd.output().context("running curl")?;
                ensure!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
                let text = String::from_utf8_lossy(&out.stdout);
                (text.lines().filter_map(|l| l.trim().parse::<u64>().ok()).sum(), children_cpu() - before)
            }
            Client::Go(bin) => {
                let mut cmd = Command::new(bin);
                cmd.args(["-download", &url, "-times", &TIMES.to_string(), "-ca"]).arg(ca);
                let out = cmd.output().context("running the Go client")?;
                ensure!(out.status.success(), "Go client: {}", String::from_utf8_lossy(&out.stderr));
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("Go client output")?;
                (v["bytes"].as_u64().unwrap_or(0), v["cpu_us"].as_f64().unwrap_or(0.0) / 1e6)
            }
        };
        let secs = t.elapsed().as_secs_f64();
        ensure!(got == BYTES * TIMES, "{}: downloaded {got} bytes of {}", self.name(), BYTES * TIMES);
        Ok((got as f64 / 1e6 / secs, cpu))
    }
}

/// CPU seconds (user + system) of this process's waited-for children.
fn children_cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
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
    let clients = [Client::Curl, Client::Go(tokentap_e2e::build_go_client(&work, false))];
    let mut text = String::from("# A 300 MB HTTPS download with and without the agent\n\n");
    text.push_str(&format!(
        "A client downloads the file {TIMES} times over one connection a run from a local nginx \
         (its own libssl, excluded); {PAIRS} pairs alternated (the agent first in even-numbered pairs).\n"
    ));
    let mut failures = Vec::new();
    for client in &clients {
        client.run(&certs.ca, port)?;
        let (section, ok) = pairs(client, &work, &certs.ca, port)?;
        text.push_str(&section);
        failures.extend(ok.err());
    }
    std::fs::write(dir.join("download.md"), &text)?;
    std::fs::remove_file(work.join("www/big"))?;
    eprintln!("{text}");
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

/// The pairs of runs of one client: its section of the results, and whether
/// the agent kept its hands off (nothing recorded, almost nothing copied).
fn pairs(client: &Client, work: &Path, ca: &Path, port: u16) -> Result<(String, Result<(), String>)> {
    let name = client.name();
    let mut md = String::from(
        "| pair | without agent | with agent | ratio | client CPU without / with | bytes copied | reads muted |\n\
         |--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let (mut ratios, mut cpu_ratios, mut records, mut copied) = (Vec::new(), Vec::new(), 0, Vec::new());
    let mut unprobed = 0;
    for i in 0..PAIRS {
        // Odd pairs run the agent first: a second run that is faster for
        // being second (warm caches) favours neither side.
        let agent_first = i % 2 == 1;
        let mut without = if agent_first { None } else { Some(client.run(ca, port)?) };
        let agent_dir = work.join(format!("agent-{}-{i}", if matches!(client, Client::Curl) { "curl" } else { "go" }));
        std::fs::create_dir_all(&agent_dir)?;
        let mut agent = Agent::start(&agent_dir, &["--exclude-process", "nginx"]);
        let (with, with_cpu) = client.run(ca, port)?;
        ensure!(agent.stop().success(), "agent exit");
        if without.is_none() {
            without = Some(client.run(ca, port)?);
        }
        let (base, base_cpu) = without.expect("run above");
        records += agent.records().len();
        let stats = agent.stats();
        let share = stats["bytes"].as_u64().unwrap_or(u64::MAX) as f64 / (BYTES * TIMES) as f64;
        let muted = stats["kernel_muted_reads"].as_u64().unwrap_or(0);
        eprintln!("download, {name}: pair {i}: {base:.0} MB/s without, {with:.0} MB/s with; {share:.4} copied");
        md.push_str(&format!(
            "| {} | {base:.0} MB/s | {with:.0} MB/s | {:.3} | {base_cpu:.2} / {with_cpu:.2} s | {:.2} % | {muted} |\n",
            i + 1,
            with / base,
            share * 100.0
        ));
        ratios.push(with / base);
        cpu_ratios.push(with_cpu / base_cpu);
        copied.push(share);
        // No read muted: the client ran unprobed (a new executable is probed
        // as it starts), and the pair measured nothing.
        unprobed += usize::from(muted == 0);
    }
    let (ratio, cpu_ratio) = (median(ratios), median(cpu_ratios));
    let verdict = if 1.0 - ratio < 0.03 { "met" } else { "NOT met" };
    let section = format!(
        "\n## {name}\n\nThe agent records nothing of it (records: {records}).\n\n{md}\n\
         Median ratio {ratio:.3}: {:.1} % throughput lost. Target under 3 %: {verdict}. \
         Median client CPU ratio {cpu_ratio:.2}.\n",
        (1.0 - ratio) * 100.0
    );
    let most = copied.iter().copied().fold(0.0, f64::max);
    let ok = if records != 0 {
        Err(format!("{name}: the agent recorded {records} calls of a plain download"))
    } else if unprobed > 0 {
        Err(format!("{name}: in {unprobed} pairs no read was muted: the client was not probed"))
    } else if most >= 0.1 {
        Err(format!("{name}: the agent copied {:.1} % of a download's bytes: bodies not muted", most * 100.0))
    } else {
        Ok(())
    };
    Ok((section, ok))
}
