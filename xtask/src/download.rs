//! `cargo xtask bench --only-download`: what the agent costs busy TLS traffic
//! it records nothing of (issue #19, target: under 3 % throughput lost), for
//! each capture method. A client downloads a 300 MB file ten times over one
//! connection from a local nginx (its own libssl copy, `--exclude-process
//! nginx`): curl (libcurl on the system's OpenSSL, probed by symbol), the
//! tests' Go client (Go's crypto/tls, probed in the executable), node (static
//! OpenSSL) and bun (stripped BoringSSL, found by code analysis) with `fetch`,
//! the tests' reqwest + rustls client, the JDK's `java.net.http` client (JSSE,
//! through tokentap's Java agent), curl over plain HTTP (the socket
//! syscalls), and curl over HTTP/2 (`TOKENTAP_DOWNLOAD_CLIENTS=HTTP/2` runs
//! only the clients whose name has that word). Runs without and with the release agent alternate, and which
//! goes first swaps pair by pair, so drift on a shared machine hits both sides
//! alike; the client's own CPU time (the probes' cost lands in it) beside the
//! throughput. The agent must record nothing: the bytes are not an LLM API
//! call. It must not copy them either: each response body is muted in the
//! kernel once its head is parsed (agent `http/mute.rs`; over HTTP/2 each
//! stream after its first DATA frame, `h2_walk.rs`), so the bench fails
//! when more than a tenth of the bytes crossed the ring buffer
//! (`TOKENTAP_DOWNLOAD_AGENT_ARGS` adds flags to the agent's, e.g.
//! `--syscall-hooks tracepoints`; `TOKENTAP_DOWNLOAD_PAIRS` the pairs per
//! client, 9 by default). Each pair after the first runs the client a
//! third time with the agent's hooks placed again with nothing behind them
//! (`bare_probes.rs`; Java's in a JVM given tokentap's Java agent by an agent
//! run stopped before the timed one, [`java_hooks_alone`]): the floor no
//! program can go under. The verdict on the target rests on the 95 %
//! interval of the median of the pairs' ratios (`stats.rs`), not the median
//! alone: met when the whole interval loses under 3 %, not met when all of it
//! loses 3 % or more, undecided when it spans the line (the pairs of a busy
//! host spread that widely); beside it, the agent's client CPU against its
//! hooks alone, pair by pair: the programs' own work. Results:
//! target/bench/download.md.
use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokentap_e2e::{Agent, Certs};

use crate::bare_probes;
use crate::overhead::Nginx;
use crate::stats::{judge, median, median_interval, Verdict};

const BYTES: u64 = 300 << 20;
/// Downloaded until the agent copies bytes of the client: it is probed.
const SMALL: u64 = 1 << 20;
/// Downloads of the file per run (one connection): ~3 s a run here.
const TIMES: u64 = 10;
/// Pairs of runs per client, unless TOKENTAP_DOWNLOAD_PAIRS says otherwise:
/// on a busy 2-vCPU host one run's pairs spread ~0.6-1.4, so a reading of a
/// few percent wants more of them. 9: the median's 95 % interval is the
/// 2nd to 8th pair (from 6 to 8 it is every pair's range: one stray pair
/// decides), and the floor's 8 runs give one too.
const PAIRS: usize = 9;
/// The floor runs from the second pair on: one pair would have none.
const MIN_PAIRS: usize = 2;
/// 20-40 s a pair per client here: 100 pairs of the eight clients take 5-9 hours.
const MAX_PAIRS: usize = 100;

/// The pairs per client: TOKENTAP_DOWNLOAD_PAIRS, or [`PAIRS`] when unset or empty.
pub fn pairs_from_env() -> Result<usize> {
    pair_count(std::env::var("TOKENTAP_DOWNLOAD_PAIRS"))
}

fn pair_count(var: Result<String, std::env::VarError>) -> Result<usize> {
    let v = match var {
        Err(std::env::VarError::NotPresent) => return Ok(PAIRS),
        Err(std::env::VarError::NotUnicode(v)) => bail!("TOKENTAP_DOWNLOAD_PAIRS={v:?}: not a number"),
        // Set but empty (`TOKENTAP_DOWNLOAD_PAIRS= cargo xtask ...`): the default.
        Ok(v) if v.trim().is_empty() => return Ok(PAIRS),
        Ok(v) => v,
    };
    match v.trim().parse::<usize>() {
        Ok(n) if (MIN_PAIRS..=MAX_PAIRS).contains(&n) => Ok(n),
        _ => bail!("TOKENTAP_DOWNLOAD_PAIRS={v:?}: expected a number of pairs from {MIN_PAIRS} to {MAX_PAIRS}"),
    }
}

/// node and bun: download URL TIMES times with `fetch` (keep-alive), reading
/// each body to its end; print the bytes and the process's CPU (getrusage,
/// every thread) over the downloads.
const JS_CLIENT: &str = r#"const [url, times] = [process.argv[2], +process.argv[3]];
let bytes = 0;
const c0 = process.cpuUsage();
for (let i = 0; i < times; i++) {
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`status ${r.status}`);
  const reader = r.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    bytes += value.length;
  }
}
const c = process.cpuUsage(c0);
console.log(JSON.stringify({ bytes, cpu_us: c.user + c.system }));
"#;

/// The local server: its CA, its TLS port, its TLS port offering HTTP/2 and
/// its plain HTTP port.
struct Server {
    ca: PathBuf,
    tls: u16,
    h2: u16,
    plain: u16,
}

/// How curl reaches the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Tls,
    /// HTTP/2 over TLS: its bodies are muted by stream (the kernel follows its frames).
    H2,
    Plain,
}

/// A downloading client, one per capture method.
enum Client {
    Curl(Via),
    Go(PathBuf),
    /// node or bun running `JS_CLIENT`.
    Js {
        label: &'static str,
        exe: PathBuf,
        script: PathBuf,
    },
    Rust(PathBuf),
    /// One JVM per side of a pair (see [`Jvm`]).
    Java {
        classes: PathBuf,
        jvm: RefCell<Option<Jvm>>,
    },
}

/// tests/clients/java/LlmClient.java in its download mode: one JVM serves
/// every run of one side of a pair, so that tokentap's Java agent, loaded
/// into it once (asynchronously, a second or more after its start), sees the
/// timed run from its first byte, and the JIT warms up alike on both sides.
/// A side without the agent gets a JVM that never carried it.
struct Jvm {
    child: Child,
    stdin: ChildStdin,
    /// Its stdout's lines, read by a thread of their own so that a JVM that
    /// hangs fails the bench within [`JVM_ANSWER`] instead of stopping it.
    lines: Receiver<String>,
}

/// How long the Java client may take to answer (ready, or a run's result).
const JVM_ANSWER: Duration = Duration::from_secs(300);

impl Jvm {
    /// Started and warmed up with one download of the small file.
    fn start(classes: &Path, srv: &Server) -> Result<Self> {
        let mut child = Command::new(tokentap_e2e::java::jdk_home().join("bin/java"))
            .arg("-cp")
            .arg(classes)
            .args(["LlmClient", "-"])
            .arg(&srv.ca)
            .args(["-", "download", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the Java client")?;
        let stdin = child.stdin.take().context("the JVM's stdin")?;
        let out = BufReader::new(child.stdout.take().context("the JVM's stdout")?);
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut jvm = Self { child, stdin, lines };
        let ready = jvm.answer()?;
        ensure!(ready.trim() == "ready", "the Java client said {ready:?}");
        jvm.download(&format!("https://localhost:{}/small", srv.tls), 1)?;
        Ok(jvm)
    }

    /// (bytes, CPU seconds of the JVM) of `times` downloads of `url`.
    fn download(&mut self, url: &str, times: u64) -> Result<(u64, f64)> {
        writeln!(self.stdin, "{url} {times}")?;
        let line = self.answer()?;
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("the Java client's output {line:?}"))?;
        Ok((v["bytes"].as_u64().unwrap_or(0), v["cpu_us"].as_f64().unwrap_or(0.0) / 1e6))
    }
}

impl Jvm {
    /// The client's next line, within [`JVM_ANSWER`].
    fn answer(&self) -> Result<String> {
        match self.lines.recv_timeout(JVM_ANSWER) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => bail!("the Java client did not answer within {JVM_ANSWER:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("the Java client ended without answering"),
        }
    }
}

impl Drop for Jvm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Client {
    fn name(&self) -> &'static str {
        match self {
            Client::Curl(Via::Tls) => "curl (OpenSSL)",
            Client::Curl(Via::H2) => "curl over HTTP/2 (OpenSSL)",
            Client::Curl(Via::Plain) => "curl over plain HTTP (socket syscalls)",
            Client::Go(_) => "Go net/http (crypto/tls)",
            Client::Js { label, .. } => label,
            Client::Rust(_) => "reqwest (rustls)",
            Client::Java { .. } => "java.net.http (JSSE, through the Java agent)",
        }
    }

    /// The next run starts a side of a pair afresh (a new JVM for Java).
    fn fresh(&self) {
        if let Client::Java { jvm, .. } = self {
            jvm.borrow_mut().take();
        }
    }

    /// A short name for the agent's directory.
    fn slug(&self) -> String {
        self.name().split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join("-")
    }

    /// Download `file` `times` times: (bytes, MB/s, the client's own CPU seconds).
    fn run(&self, srv: &Server, file: &str, times: u64) -> Result<(u64, f64, f64)> {
        let url = match self {
            Client::Curl(Via::Plain) => format!("http://127.0.0.1:{}/{file}", srv.plain),
            Client::Curl(Via::H2) => format!("https://localhost:{}/{file}", srv.h2),
            _ => format!("https://localhost:{}/{file}", srv.tls),
        };
        if let Client::Java { classes, jvm } = self {
            if jvm.borrow().is_none() {
                *jvm.borrow_mut() = Some(Jvm::start(classes, srv)?);
            }
        }
        let t = Instant::now();
        let json = |out: std::process::Output| -> Result<(u64, f64)> {
            ensure!(out.status.success(), "{}: {}", self.name(), String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("client output")?;
            Ok((v["bytes"].as_u64().unwrap_or(0), v["cpu_us"].as_f64().unwrap_or(0.0) / 1e6))
        };
        let (got, cpu) = match self {
            Client::Curl(via) => {
                let before = children_cpu();
                let mut cmd = Command::new("curl");
                cmd.args(["-sS", if *via == Via::H2 { "--http2" } else { "--http1.1" }, "--cacert"])
                    .arg(&srv.ca)
                    .args(["-w", "%{size_download}\n"]);
                for _ in 0..times {
                    cmd.args(["-o", "/dev/null"]).arg(&url);
                }
                let out = cmd.output().context("running curl")?;
                ensure!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
                let text = String::from_utf8_lossy(&out.stdout);
                (text.lines().filter_map(|l| l.trim().parse::<u64>().ok()).sum(), children_cpu() - before)
            }
            Client::Go(bin) => {
                let mut cmd = Command::new(bin);
                cmd.args(["-download", &url, "-times", &times.to_string(), "-ca"]).arg(&srv.ca);
                json(cmd.output().context("running the Go client")?)?
            }
            Client::Js { exe, script, .. } => {
                let mut cmd = Command::new(exe);
                cmd.arg(script).args([&url, &times.to_string()]).env("NODE_EXTRA_CA_CERTS", &srv.ca);
                json(cmd.output().with_context(|| format!("running {}", exe.display()))?)?
            }
            Client::Rust(bin) => {
                let mut cmd = Command::new(bin);
                cmd.arg(&url).arg(&srv.ca).args(["-", &times.to_string(), "download"]);
                json(cmd.output().context("running the Rust client")?)?
            }
            Client::Java { jvm, .. } => jvm.borrow_mut().as_mut().expect("started above").download(&url, times)?,
        };
        Ok((got, got as f64 / 1e6 / t.elapsed().as_secs_f64(), cpu))
    }

    /// Before a side's timed run (with the agent, once it copies the
    /// client's bytes): Java downloads the file once, untimed on both sides,
    /// for the JIT to compile JSSE's code (again, once the Java agent
    /// retransformed it) outside the timed run.
    fn warm(&self, srv: &Server) -> Result<()> {
        if let Client::Java { .. } = self {
            self.run(srv, "big", 1)?;
        }
        Ok(())
    }

    /// One timed run of the big file: MB/s and the client's CPU seconds.
    fn timed(&self, srv: &Server) -> Result<(f64, f64)> {
        let (got, mbs, cpu) = self.run(srv, "big", TIMES)?;
        ensure!(got == BYTES * TIMES, "{}: downloaded {got} bytes of {}", self.name(), BYTES * TIMES);
        Ok((mbs, cpu))
    }

    /// Small downloads until the agent copies some of this client's bytes,
    /// so that the timed run is probed from its start (a new executable is
    /// probed after its first exec; bun's analysis takes about a second).
    fn until_probed(&self, srv: &Server, agent: &Agent) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.run(srv, "small", 1)?;
            // The stats file is rewritten every second.
            let seen = Instant::now() + Duration::from_secs(3);
            while Instant::now() < seen {
                let copied = agent.stats()["bytes"].as_u64().unwrap_or(0);
                if copied > 0 {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if Instant::now() > deadline {
                bail!("{}: the agent copied none of its bytes in 60 s (see {})", self.name(), agent.stderr.display());
            }
        }
    }
}

/// Java's floor: a new JVM gets tokentap's Java agent (its bytecode hooks in
/// JSSE, which stay for the JVM's life) from an agent run that is then
/// stopped, so the hooks call a native function no program is behind; the
/// hooks returned are that run's (its uprobe on the native function, the
/// socket hooks), to be placed again bare. What is left of the agent's cost
/// is then the JVM's side (the hooks' bookkeeping, the JNI call), the
/// uprobe's hit (a trap, or a call where the kernel optimises the native
/// function's 5-byte NOP) and the socket hooks: this capture method's floor.
fn java_hooks_alone(client: &Client, srv: &Server, dir: &Path, args: &[&str]) -> Result<Vec<bare_probes::Target>> {
    std::fs::create_dir_all(dir)?;
    let mut agent = Agent::start(dir, args);
    client.until_probed(srv, &agent)?;
    let targets = bare_probes::of_agent(&agent.stderr)?;
    ensure!(agent.stop().success(), "agent exit (Java's floor)");
    Ok(targets)
}

/// CPU seconds (user + system) of this process's waited-for children.
fn children_cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// `pair_total`: pairs of runs per client ([`pairs_from_env`]).
pub fn run(agent_bin: &Path, dir: &Path, pair_total: usize) -> Result<()> {
    let work = dir.join("download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("www"))?;
    let certs = Certs::generate(&work);
    // Random bytes: nothing along the way gets to compress them.
    for (name, size) in [("big", BYTES), ("small", SMALL)] {
        let status = Command::new("head")
            .args(["-c", &size.to_string(), "/dev/urandom"])
            .stdout(std::fs::File::create(work.join("www").join(name))?)
            .status()?;
        ensure!(status.success(), "writing the file to serve");
    }
    let free_port = || -> Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let srv = Server { ca: certs.ca.clone(), tls: free_port()?, h2: free_port()?, plain: free_port()? };
    let root = work.join("www");
    let location = format!("location / {{ root {}; }}", root.display());
    let more = format!(
        "  server {{\n    listen 127.0.0.1:{plain};\n    {location}\n  }}\n  server {{\n    listen 127.0.0.1:{h2} ssl http2;\n    \
         ssl_certificate {cert};\n    ssl_certificate_key {key};\n    {location}\n  }}",
        plain = srv.plain,
        h2 = srv.h2,
        cert = certs.cert.display(),
        key = certs.key.display(),
    );
    let _nginx = Nginx::start(&work, &certs, srv.tls, "nginx-download", &location, &more)?;
    // SAFETY: set before any agent starts; xtask runs one bench at a time.
    unsafe { std::env::set_var("TOKENTAP_AGENT_BIN", agent_bin) };
    // Each uprobe's place, in the agent's log (`bare_probes.rs`).
    // SAFETY: as above.
    unsafe { std::env::set_var("TOKENTAP_TEST_LOG", "info,tokentap_agent::probes=debug") };
    let script = work.join("download.mjs");
    std::fs::write(&script, JS_CLIENT)?;
    let bun = crate::workspace_root().join("tests/clients/node_modules/@oven/bun-linux-x64/bin/bun");
    ensure!(bun.is_file(), "{} missing (npm ci in tests/clients)", bun.display());
    let clients = [
        Client::Curl(Via::Tls),
        Client::Go(tokentap_e2e::build_go_client(&work, false)),
        Client::Js { label: "node fetch (static OpenSSL)", exe: "node".into(), script: script.clone() },
        Client::Js { label: "bun fetch (stripped BoringSSL, by code analysis)", exe: bun, script },
        Client::Rust(tokentap_e2e::build_rust_client(&work).0),
        Client::Java { classes: tokentap_e2e::java::client_classes(), jvm: RefCell::new(None) },
        Client::Curl(Via::Plain),
        Client::Curl(Via::H2),
    ];
    let mut text = String::from("# A 300 MB download with and without the agent, per capture method\n\n");
    // TOKENTAP_DOWNLOAD_AGENT_ARGS: more flags for the agent (to measure a
    // mode, say `--syscall-hooks tracepoints`).
    let extra = std::env::var("TOKENTAP_DOWNLOAD_AGENT_ARGS").unwrap_or_default();
    let mut args = vec!["--exclude-process", "nginx"];
    args.extend(extra.split_whitespace());
    text.push_str(&format!("The agent runs with `{}`.\n\n", args.join(" ")));
    text.push_str(&format!(
        "A client downloads the file {TIMES} times over one connection a run from a local nginx \
         (its own libssl, excluded); {pair_total} pairs alternated (the agent first in even-numbered pairs).\n"
    ));
    let mut summary = String::from(
        "\n## Summary\n\n| client (capture method) | throughput lost: target under 3 % | client CPU with / without | \
         its hooks alone: lost / CPU | client CPU, the agent against its hooks alone |\n|---|--:|--:|--:|--:|\n",
    );
    let mut failures = Vec::new();
    // TOKENTAP_DOWNLOAD_CLIENTS: only the clients whose name contains one of
    // these comma-separated words (to measure one capture method again).
    let only = std::env::var("TOKENTAP_DOWNLOAD_CLIENTS").unwrap_or_default();
    let wanted = |c: &Client| only.is_empty() || only.split(',').any(|w| c.name().contains(w.trim()));
    for client in clients.iter().filter(|c| wanted(c)) {
        client.timed(&srv)?;
        let (section, line, ok) = pairs(client, &work, &srv, &args, pair_total)?;
        text.push_str(&section);
        summary.push_str(&line);
        failures.extend(ok.err());
    }
    text.push_str(&summary);
    std::fs::write(dir.join("download.md"), &text)?;
    std::fs::remove_file(work.join("www/big"))?;
    eprintln!("{text}");
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

/// The pairs of runs of one client: its section of the results, its line of
/// the summary, and whether the agent kept its hands off (nothing recorded,
/// almost nothing copied).
fn pairs(
    client: &Client,
    work: &Path,
    srv: &Server,
    args: &[&str],
    pair_total: usize,
) -> Result<(String, String, Result<(), String>)> {
    let name = client.name();
    let mut md = String::from(
        "| pair | without agent | with agent | ratio | client CPU without / with | bytes copied | reads muted | \
         same hooks, nothing behind them: ratio, client CPU |\n|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let (mut ratios, mut cpu_ratios, mut records, mut copied) = (Vec::new(), Vec::new(), 0, Vec::new());
    let (mut floor_ratios, mut floor_cpu_ratios, mut over_floor) = (Vec::new(), Vec::new(), Vec::new());
    let mut bare: Option<Vec<bare_probes::Target>> = None;
    let mut unmuted = 0;
    for i in 0..pair_total {
        // Odd pairs run the agent first: a second run that is faster for
        // being second (warm caches) favours neither side. The agent's
        // hooks with nothing behind them run between the two.
        let agent_first = i % 2 == 1;
        let without_agent = || -> Result<(f64, f64)> {
            client.fresh();
            client.warm(srv)?;
            client.timed(srv)
        };
        let bare_run = |targets: &[bare_probes::Target]| -> Result<Option<(f64, f64)>> {
            if targets.is_empty() {
                return Ok(None);
            }
            client.fresh();
            let java;
            let targets = match client {
                Client::Java { .. } => {
                    java = java_hooks_alone(client, srv, &work.join(format!("agent-java-floor-{i}")), args)?;
                    &java[..]
                }
                _ => targets,
            };
            let (_placed, n) = bare_probes::place(targets)?;
            ensure!(n > 0, "{name}: none of the agent's hooks could be placed again: {targets:?}");
            client.warm(srv)?;
            Ok(Some(client.timed(srv)?))
        };
        let mut without = if agent_first { None } else { Some(without_agent()?) };
        let mut floor = None;
        if let (false, Some(t)) = (agent_first, &bare) {
            floor = bare_run(t)?;
        }
        client.fresh();
        let agent_dir = work.join(format!("agent-{}-{i}", client.slug()));
        std::fs::create_dir_all(&agent_dir)?;
        let mut agent = Agent::start(&agent_dir, args);
        client.until_probed(srv, &agent)?;
        if bare.is_none() {
            // The hooks placed for this client (and every other TLS library
            // found, and the socket hooks): taken once, with the client probed.
            bare = Some(bare_probes::of_agent(&agent.stderr)?);
        }
        client.warm(srv)?;
        agent.wait_steady();
        let counted = agent.stats_from_now();
        let before = counted["bytes"].as_u64().unwrap_or(0);
        let muted_before = counted["kernel_muted_reads"].as_u64().unwrap_or(0);
        let (with, with_cpu) = client.timed(srv)?;
        client.fresh();
        ensure!(agent.stop().success(), "agent exit");
        if without.is_none() {
            floor = bare_run(bare.as_deref().unwrap_or(&[]))?;
            without = Some(without_agent()?);
        }
        let (base, base_cpu) = without.expect("run above");
        records += agent.records().len();
        let stats = agent.stats();
        let bytes = stats["bytes"].as_u64().unwrap_or(u64::MAX).saturating_sub(before);
        let share = bytes as f64 / (BYTES * TIMES) as f64;
        let muted = stats["kernel_muted_reads"].as_u64().unwrap_or(0).saturating_sub(muted_before);
        eprintln!("download, {name}: pair {i}: {base:.0} MB/s without, {with:.0} MB/s with; {share:.4} copied");
        let floor_cell = match floor {
            Some((mbs, cpu)) => {
                floor_ratios.push(mbs / base);
                floor_cpu_ratios.push(cpu / base_cpu);
                over_floor.push(with_cpu / cpu);
                format!("{:.3}, {cpu:.2} s", mbs / base)
            }
            None => "-".into(),
        };
        md.push_str(&format!(
            "| {} | {base:.0} MB/s | {with:.0} MB/s | {:.3} | {base_cpu:.2} / {with_cpu:.2} s | {:.2} % | {muted} | {floor_cell} |\n",
            i + 1,
            with / base,
            share * 100.0
        ));
        ratios.push(with / base);
        cpu_ratios.push(with_cpu / base_cpu);
        copied.push(share);
        unmuted += usize::from(muted == 0);
    }
    let (interval, verdict) = judge(&ratios, TARGET);
    let (ratio, cpu_ratio) = (median(ratios), median(cpu_ratios));
    let lost = (1.0 - ratio) * 100.0;
    // Two decimals: a bound of 2.96 % would read "3.0 %" beside "met".
    let lost_range = interval.map_or_else(String::new, |r| {
        format!(" (95 % interval {:.2} to {:.2} %)", (1.0 - r.hi) * 100.0, (1.0 - r.lo) * 100.0)
    });
    // The agent's run against its floor's in the same pair: the programs'
    // own work, which a change to them can move.
    let (over_text, over_cell) = if over_floor.is_empty() {
        (String::new(), "-".to_string())
    } else {
        let range = median_interval(over_floor.clone());
        let m = median(over_floor);
        (
            format!(
                " The agent against its hooks alone, pair by pair: client CPU x{m:.2}{}.",
                range.map_or_else(String::new, |r| format!(" (95 % interval x{:.2} to x{:.2})", r.lo, r.hi))
            ),
            format!("{m:.2}{}", range.map_or_else(String::new, |r| format!(" ({:.2}-{:.2})", r.lo, r.hi))),
        )
    };
    let targets = bare.unwrap_or_default();
    let raw = targets.iter().filter(|t| matches!(t, bare_probes::Target::RawSyscalls(_))).count();
    let uprobes = targets.len() - raw;
    let (floor_text, floor_cell) = if floor_ratios.is_empty() {
        (" No floor run: no hooks of the agent's to place again.".to_string(), "-".to_string())
    } else {
        let (f, fc) = (median(floor_ratios), median(floor_cpu_ratios));
        let without_raw = if raw == 0 { " (no raw syscall tracepoints: the socket hooks are not in it)" } else { "" };
        (
            format!(
                " The agent's {uprobes} uprobes and {raw} raw syscall tracepoints alone{without_raw}, placed \
                 again with nothing behind them (uprobes without a program, the tracepoints with an empty \
                 one: the kernel's part, `bare_probes.rs`): median ratio {f:.3}, {:.1} % lost, client CPU \
                 ratio {fc:.2}.",
                (1.0 - f) * 100.0
            ),
            format!("{:.1} % / {fc:.2}", (1.0 - f) * 100.0),
        )
    };
    let section = format!(
        "\n## {name}\n\nThe agent records nothing of it (records: {records}).\n\n{md}\n\
         Median ratio {ratio:.3}: {lost:.1} % throughput lost{lost_range}. Target under 3 %: {}.{} \
         Median client CPU ratio {cpu_ratio:.2}.{floor_text}{over_text}\n",
        verdict.says(),
        if verdict == Verdict::Undecided { " More pairs (TOKENTAP_DOWNLOAD_PAIRS) narrow it." } else { "" }
    );
    let line = format!(
        "| {name} | {lost:.1} %{lost_range}: {} | {cpu_ratio:.2} | {floor_cell} | {over_cell} |\n",
        verdict.word()
    );
    let most = copied.iter().copied().fold(0.0, f64::max);
    let ok = if records != 0 {
        Err(format!("{name}: the agent recorded {records} calls of a plain download"))
    } else if unmuted > 0 {
        Err(format!("{name}: in {unmuted} pairs no read was muted: the bodies were not muted in the kernel"))
    } else if most >= 0.1 {
        Err(format!("{name}: the agent copied {:.1} % of a download's bytes: bodies not muted", most * 100.0))
    } else {
        Ok(())
    };
    Ok((section, line, ok))
}

/// The target: under 3 % of the throughput lost.
const TARGET: f64 = 0.03;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_count_defaults_and_refuses_what_is_not_a_count() {
        use std::env::VarError;
        assert_eq!(pair_count(Err(VarError::NotPresent)).unwrap(), PAIRS);
        assert_eq!(pair_count(Ok(" ".into())).unwrap(), PAIRS);
        assert_eq!(pair_count(Ok(" 15 ".into())).unwrap(), 15);
        assert_eq!(pair_count(Ok("2".into())).unwrap(), 2);
        assert_eq!(pair_count(Ok("100".into())).unwrap(), 100);
        for bad in ["0", "1", "-3", "seven", "101"] {
            let e = pair_count(Ok(bad.into())).unwrap_err().to_string();
            assert!(e.contains(&format!("TOKENTAP_DOWNLOAD_PAIRS={bad:?}")), "{e}");
        }
        let e = pair_count(Err(VarError::NotUnicode(std::ffi::OsString::from("x")))).unwrap_err();
        assert!(e.to_string().contains("not a number"), "{e}");
    }
}
