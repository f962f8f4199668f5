//! `cargo xtask bench` part 3: what capture costs a client, by capture method.
//!
//! The same small HTTPS workload — sequential keep-alive POSTs, ~1 KB of JSON
//! each way, to a local nginx — from `node` (OpenSSL statically linked, probed
//! by its exported symbols), from `bun` (a stripped, statically linked
//! BoringSSL whose `SSL_write`/`SSL_read` the agent finds by analysing the
//! code), both with `fetch`, from the tests' reqwest + rustls client
//! (rustls found by symbol), from the tests' Go net/http client (Go's own
//! crypto/tls, probed in the executable: `Write` copied at its stack check,
//! `Read` at entry and at each `RET`), and from the tests' Java client
//! (`java.net.http.HttpClient` over JSSE, captured through the Java agent the
//! agent attaches; the JVM waits for the attach before its warm-up, so the
//! attach's own work is not timed), without and with the release agent, in
//! alternated rounds. The
//! cost is the client's own CPU (user + kernel, so its probe hits and eBPF
//! programs included) over the timed calls, as the client's getrusage reports
//! it. Results: target/bench/methods.md.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokentap_e2e::{Agent, Certs};

use crate::overhead::Nginx;
use crate::stats::median;

/// Calls timed per run, after untimed warm-up calls (JIT, TLS handshake).
const CALLS: u64 = 2000;
const WARM: u64 = 100;
/// Without/with rounds, alternated so that drift hits both sides alike.
const ROUNDS: usize = 3;

/// The client, for node and bun alike: prints its pid, the CPU time
/// (`process.cpuUsage()`: getrusage of the process, every thread, user +
/// system) and the wall time of the timed calls.
const CLIENT: &str = r#"const [url, n, warm] = [process.argv[2], +process.argv[3], +process.argv[4]];
const body = JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "x".repeat(950) }] });
const call = async () => {
  const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body });
  if (r.status !== 200 || (await r.text()).length < 900) throw new Error(`bad response ${r.status}`);
};
for (let i = 0; i < warm; i++) await call();
const c0 = process.cpuUsage(), t0 = performance.now();
for (let i = 0; i < n; i++) await call();
const c = process.cpuUsage(c0);
console.log(JSON.stringify({ pid: process.pid, cpu_us: c.user + c.system, secs: (performance.now() - t0) / 1000 }));
"#;

/// (label, executable, the coverage source its calls must show up under).
fn methods(dir: &Path) -> Result<Vec<(&'static str, PathBuf, &'static str)>> {
    let bun = crate::workspace_root().join("tests/clients/node_modules/@oven/bun-linux-x64/bin/bun");
    let out = Command::new("sh").args(["-c", "command -v node"]).output().context("looking for node")?;
    let node = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    for exe in [&bun, &node] {
        anyhow::ensure!(exe.is_file(), "{} missing (bun: npm ci in tests/clients)", exe.display());
    }
    let (rust, _) = tokentap_e2e::build_rust_client(dir);
    let go = tokentap_e2e::build_go_client(dir, false);
    let java = tokentap_e2e::java::jdk_home().join("bin/java");
    Ok(vec![
        ("node (OpenSSL, by symbol)", node, "openssl"),
        ("bun (BoringSSL, by code analysis)", bun, "boringssl"),
        ("reqwest (rustls, by symbol)", rust, "rustls"),
        ("Go net/http (crypto/tls, in the executable)", go, "go_tls"),
        ("java.net.http (JSSE, through the Java agent)", java, "java"),
    ])
}

/// Untimed calls first: more for the JVM, whose JIT compiles the hot path
/// (and the hooks) during the first thousand calls.
fn warm_for(exe: &Path) -> u64 {
    if exe.file_name().is_some_and(|f| f == "java") {
        1000
    } else {
        WARM
    }
}

/// nginx answering every POST with the same ~1 KB chat completion (with usage,
/// so the agent parses and records each call), from its own copy of libssl
/// (with `--exclude-process nginx` only the client is probed). The answer
/// comes from a second server on a Unix socket (not watched by the socket
/// capture) behind `proxy_pass`, which reads the whole request body first, as
/// an LLM API does: nginx's `return` alone answers before the body arrives,
/// and a client that writes its body separately (the JDK's HttpClient) would
/// then have its answer captured ahead of its body.
fn nginx(dir: &Path, certs: &Certs, port: u16) -> Result<Nginx> {
    let answer = format!(
        "{{\"id\":\"chatcmpl-m\",\"object\":\"chat.completion\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":300,\"completion_tokens\":200,\"total_tokens\":500}}}}",
        "lorem ipsum dolor sit amet ".repeat(32)
    );
    let sock = dir.join("nginx-m.sock");
    let _ = std::fs::remove_file(&sock);
    let sock = sock.display();
    let location = format!("location / {{ proxy_pass http://unix:{sock}:; }}");
    let answer = format!(
        "server {{ listen unix:{sock}; location / {{ default_type application/json; return 200 '{answer}'; }} }}"
    );
    Nginx::start(dir, certs, port, "nginx-m", &location, &answer)
}

/// One client run: (pid, CPU µs per timed call, timed calls/s). With an
/// agent running, the Java client waits until the agent attached to it.
fn client(
    exe: &Path,
    script: &Path,
    certs: &Certs,
    port: u16,
    n: u64,
    warm: u64,
    agent: Option<&Agent>,
) -> Result<(u32, f64, f64)> {
    let url = format!("https://127.0.0.1:{port}/v1/chat/completions");
    let mut cmd = Command::new(exe);
    if exe.file_name().is_some_and(|f| f == "java") {
        let classes = tokentap_e2e::java::client_classes();
        cmd.arg("-cp").arg(classes).args(["LlmClient", &format!("https://127.0.0.1:{port}/v1")]);
        cmd.arg(&certs.ca).args(["-", "bench", &n.to_string(), &warm.to_string()]);
        if let Some(agent) = agent {
            cmd.arg("wait");
            let mut jvm = tokentap_e2e::java::Jvm::start(cmd);
            tokentap_e2e::java::wait_jvm_attached(agent, jvm.pid());
            let v = jvm.round();
            let (n, f) = (n.max(1) as f64, |k: &str| v[k].as_f64().unwrap_or(0.0));
            return Ok((f("pid") as u32, f("cpu_us") / n, n / f("secs")));
        }
    } else if exe.file_name().is_some_and(|f| f == "go_client") {
        let base = format!("https://127.0.0.1:{port}/v1");
        cmd.args(["-base", &base, "-key", "-", "-bench", &n.to_string(), "-warm", &warm.to_string(), "-ca"]);
        cmd.arg(&certs.ca);
    } else if exe.file_name().is_some_and(|f| f == "rust_client") {
        let ca = certs.ca.display().to_string();
        cmd.args([url, ca, "-".into(), n.to_string(), "bench".into(), warm.to_string()]);
    } else {
        cmd.arg(script).args([url, n.to_string(), warm.to_string()]).env("NODE_EXTRA_CA_CERTS", &certs.ca);
    }
    let out = cmd.output().with_context(|| format!("running {}", exe.display()))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} output: {}", exe.display(), String::from_utf8_lossy(&out.stderr)))?;
    let (n, f) = (n.max(1) as f64, |k: &str| v[k].as_f64().unwrap_or(0.0));
    Ok((f("pid") as u32, f("cpu_us") / n, n / f("secs")))
}

/// Records the agent wrote for `pid` under `source`, once the stats file
/// (rewritten every second) shows at least `want` of them, or after 20 s.
fn captured(agent: &Agent, pid: u32, source: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = agent.stats();
        let cov = s["coverage"].as_array().and_then(|c| c.iter().find(|p| p["pid"] == pid)).cloned();
        let got = cov.map_or(0, |c| c["records"][source].as_u64().unwrap_or(0));
        if got >= want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn run(agent_bin: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let certs = Certs::generate(dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _nginx = nginx(dir, &certs, port)?;
    let script = dir.join("method_client.mjs");
    std::fs::write(&script, CLIENT)?;
    let methods = methods(dir)?;
    // SAFETY: single-threaded here; the harness reads it when spawning the agent.
    unsafe { std::env::set_var("TOKENTAP_AGENT_BIN", agent_bin) };
    // Per method: (CPU without, CPU with, probe cost, calls/s without, calls/s with), per round.
    let mut runs = vec![Vec::new(); methods.len()];
    let mut capture = vec![(0, 0); methods.len()];
    for round in 0..ROUNDS {
        let base: Vec<_> =
            methods.iter().map(|(_, exe, _)| client(exe, &script, &certs, port, CALLS, warm_for(exe), None)).collect();
        let agent_dir = dir.join(format!("agent-methods-{round}"));
        let _ = std::fs::remove_dir_all(&agent_dir);
        std::fs::create_dir_all(&agent_dir)?;
        let mut agent = Agent::start(&agent_dir, &["--exclude-process", "nginx"]);
        for (i, (label, exe, source)) in methods.iter().enumerate() {
            // Until the agent has probed this executable (bun's analysis takes
            // about a second after its first exec), its calls are not seen.
            let deadline = Instant::now() + Duration::from_secs(60);
            while captured(&agent, client(exe, &script, &certs, port, 0, 20, Some(&agent))?.0, source, 20) < 20 {
                if Instant::now() > deadline {
                    bail!("{label}: the agent did not capture the warm-up calls (see {})", agent.stderr.display());
                }
            }
            let (pid, cpu, rps) = client(exe, &script, &certs, port, CALLS, warm_for(exe), Some(&agent))?;
            let got = captured(&agent, pid, source, CALLS + warm_for(exe));
            capture[i] = (capture[i].0 + got, capture[i].1 + CALLS + warm_for(exe));
            let (_, b_cpu, b_rps) = base[i].as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            runs[i].push([*b_cpu, cpu, cpu - b_cpu, *b_rps, rps]);
            eprintln!("xtask: round {round}, {label}: {b_cpu:.1} -> {cpu:.1} µs/call, {got} records");
        }
        anyhow::ensure!(agent.stop().success(), "agent exit");
    }
    let mut md = String::from(
        "| client (capture method) | client CPU per call without agent (µs) | with agent (µs) | probe cost per call (µs) | calls/s without / with | records / calls (under the method) |\n\
         |---|--:|--:|--:|--:|--:|\n"
    );
    for (i, (label, _, source)) in methods.iter().enumerate() {
        let col = |k: usize| median(runs[i].iter().map(|r| r[k]).collect());
        md.push_str(&format!(
            "| {label} | {:.1} | {:.1} | {:+.1} | {:.0} / {:.0} | {} / {} (`{source}`) |\n",
            col(0),
            col(1),
            col(2),
            col(3),
            col(4),
            capture[i].0,
            capture[i].1
        ));
    }
    let report = format!(
        "# Client CPU per call by capture method (cargo xtask bench)\n\n\
         {CALLS} sequential keep-alive HTTPS POSTs (`fetch` in node and bun, reqwest in the Rust client, net/http (HTTP/1.1) in the Go client, `java.net.http.HttpClient` (HTTP/1.1) in the JVM; ~1 KB JSON request, ~1 KB JSON response) to a \
         local nginx, after {WARM} untimed (1000 in the JVM, for its JIT); the client's CPU (user + kernel, the process's own accounting: getrusage in node, bun and Go, /proc/self/stat in the Rust client, the JVM's process CPU time, every thread) over the timed calls. \
         Medians of {ROUNDS} without/with rounds (probe cost: median of the per-round differences); the release \
         agent with `--exclude-process nginx` (only the client probed). Machine: {} CPUs, kernel {}.\n\n{md}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    std::fs::write(dir.join("methods.md"), &report)?;
    println!("\n{report}");
    Ok(())
}
