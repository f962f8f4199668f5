//! Harness for the end-to-end tests: certificates, the local LLM server, the
//! agent, clients in a mount namespace whose /etc/hosts points the providers'
//! hosts at 127.0.0.1, and waiting with deadlines (never fixed sleeps).
//!
//! Everything here is real: the agent loads its eBPF programs into this kernel,
//! the clients are the real SDKs and curl over real TLS. The tests need root and
//! fail (not skip) with a clear message when it or a tool is missing.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod calibrate;
pub mod grafana;
pub mod java;
pub mod prometheus;

/// The capabilities the DaemonSet grants the agent (deploy/manifests), as
/// setpriv's `--bounding-set` names them: the agent runs with no other.
pub const DAEMONSET_CAPS: &str = "-all,+bpf,+perfmon,+sys_ptrace,+sys_admin,+setuid,+setgid";

/// A distinctive fake credential: tests grep every output for it.
pub const SECRET_KEY: &str = "sk-tokentap-test-SECRET-9f8e7d6c5b4a";

static SERIAL: Mutex<()> = Mutex::new(());

/// End-to-end tests run one at a time: each loads its own probes and would see
/// the others' traffic, and the machine has two cores.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn require_root() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("end-to-end tests load eBPF programs and need root: run `sudo cargo xtask test`");
    }
}

pub fn require_tool(name: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "`{name}` is needed by the end-to-end tests: run `cargo xtask test`, which installs it");
}

/// The agent binary: `TOKENTAP_AGENT_BIN` (set by `cargo xtask test`), else the
/// debug or release build in target/.
pub fn agent_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TOKENTAP_AGENT_BIN") {
        return p.into();
    }
    let root = workspace_root();
    for profile in ["debug", "release"] {
        let p = root.join("target").join(profile).join("tokentap-agent");
        if p.exists() {
            return p;
        }
    }
    panic!("tokentap-agent is not built: run `cargo xtask test` (or `cargo xtask build`) first");
}

/// Poll `f` until it returns Some, or panic with `what` at the deadline.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tokentap-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The providers' real host names the tests use; a private /etc/hosts maps them
/// to 127.0.0.1 (see [`in_mount_namespace`]).
pub const PROVIDER_HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "bedrock-runtime.us-east-1.amazonaws.com",
];

fn san() -> String {
    let mut names: Vec<String> = PROVIDER_HOSTS.iter().map(|h| format!("DNS:{h}")).collect();
    names.push("DNS:localhost".into());
    names.push("IP:127.0.0.1".into());
    names.join(",")
}

/// A throwaway CA and a server certificate for the providers' hosts and 127.0.0.1.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn generate(dir: &Path) -> Self {
        require_tool("openssl");
        let ext = dir.join("san.cnf");
        std::fs::write(&ext, format!("[ext]\nsubjectAltName={}\nbasicConstraints=CA:FALSE\n", san()))
            .expect("write san.cnf");
        let p = |n: &str| dir.join(n);
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
            .args([
                "-subj",
                "/CN=tokentap-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=keyCertSign",
                "-keyout",
            ])
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")));
        run(Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout"])
            .arg(p("srv.key"))
            .arg("-out")
            .arg(p("srv.csr")));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-extensions", "ext", "-in"])
            .arg(p("srv.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(p("srv.pem")));
        Self { ca: p("ca.pem"), cert: p("srv.pem"), key: p("srv.key") }
    }

    /// A client certificate (for mutual TLS) signed by the same CA: (cert, key).
    pub fn client(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key, csr) = (dir.join("client.pem"), dir.join("client.key"), dir.join("client.csr"));
        let ext = dir.join("client.cnf");
        std::fs::write(&ext, "[ext]\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n").expect("client.cnf");
        run(Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=tokentap-agent", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-extensions", "ext", "-extfile"])
            .arg(&ext)
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&self.ca)
            .arg("-CAkey")
            .arg(self.ca.with_file_name("ca.key"))
            .arg("-CAcreateserial")
            .arg("-out")
            .arg(&cert));
        (cert, key)
    }
}

/// The local LLM server (tests/server/llm_server.py).
pub struct Server {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

/// How the test server talks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS, HTTP/1.1 only.
    Https,
    /// HTTPS offering HTTP/2 by ALPN (then HTTP/1.1).
    H2,
    /// Plaintext HTTP/1.1.
    Plain,
}

impl Server {
    /// HTTPS/1.1.
    pub fn start(dir: &Path, certs: &Certs) -> Self {
        Self::start_with(dir, certs, Transport::Https)
    }

    pub fn start_with(dir: &Path, certs: &Certs, transport: Transport) -> Self {
        require_tool("python3");
        let port_file = dir.join("server.port");
        let log = dir.join("served.jsonl");
        // A port file left by an earlier run in the same directory would be read first.
        let _ = std::fs::remove_file(&port_file);
        let child = Command::new("python3")
            .arg(workspace_root().join("tests/server/llm_server.py"))
            .arg("--cert")
            .arg(&certs.cert)
            .arg("--key")
            .arg(&certs.key)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .args(match transport {
                Transport::Https => None,
                Transport::H2 => Some("--h2"),
                Transport::Plain => Some("--plain"),
            })
            .stderr(std::fs::File::create(dir.join("server.stderr")).expect("server log"))
            .spawn()
            .expect("start llm_server.py");
        let port = wait_for("the test server's port file", Duration::from_secs(20), || {
            std::fs::read_to_string(&port_file).ok()?.trim().parse().ok()
        });
        Self { child, port, log }
    }

    /// What the server served so far.
    pub fn served(&self) -> Vec<Value> {
        read_jsonl(&self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Complete lines of a JSONL file another process may be writing: a last line
/// without its newline is still being written and is left for the next read.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A running agent writing JSONL.
pub struct Agent {
    child: Option<Child>,
    pub records: PathBuf,
    pub stats: PathBuf,
    pub stderr: PathBuf,
}

impl Agent {
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with(dir, extra, &[])
    }

    /// Started through `wrapper` (e.g. `setpriv ... --`), when not empty.
    pub fn start_with(dir: &Path, extra: &[&str], wrapper: &[&str]) -> Self {
        let records = dir.join("records.jsonl");
        let stats = dir.join("stats.json");
        let ready = dir.join("ready");
        let stderr = dir.join("agent.stderr");
        // Left by an agent that was killed: it would look ready at once.
        let _ = std::fs::remove_file(&ready);
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        let mut child = cmd
            .arg("--output")
            .arg(format!("jsonl:{}", records.display()))
            .arg("--stats-file")
            .arg(&stats)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--key-secret-file")
            .arg(dir.join("key-secret"))
            .args(extra)
            .env("RUST_LOG", std::env::var("TOKENTAP_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stderr(std::fs::File::create(&stderr).expect("agent log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start tokentap-agent");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tokentap-agent exited with {status} before it was ready:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "tokentap-agent not ready after 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child: Some(child), records, stats, stderr }
    }

    /// Wait until the agent logs probes attached to `file` (a path, or the
    /// end of one) placed `how` (`symbols`, `analysed`, …): probes are per
    /// file, placed when a process maps it, so a process started within
    /// milliseconds of that could make its calls first.
    pub fn wait_attached(&self, file: &str, how: &str, timeout: Duration) {
        wait_for(&format!("the agent to probe {file}"), timeout, || {
            let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            log.lines().any(|l| l.contains("attached") && l.contains(how) && l.contains(file)).then_some(())
        });
    }

    /// The agent's pid (while running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    pub fn records(&self) -> Vec<Value> {
        read_jsonl(&self.records)
    }

    /// Complete records written so far (counted, not parsed).
    pub fn record_count(&self) -> usize {
        std::fs::read(&self.records).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
    }

    /// Records of the given processes.
    pub fn records_of(&self, pids: &[u32]) -> Vec<Value> {
        self.records().into_iter().filter(|r| r["pid"].as_u64().is_some_and(|p| pids.contains(&(p as u32)))).collect()
    }

    /// Wait until the processes have at least `n` records.
    pub fn wait_records(&self, pids: &[u32], n: usize) -> Vec<Value> {
        wait_for(&format!("{n} records from pids {pids:?}"), Duration::from_secs(30), || {
            let r = self.records_of(pids);
            (r.len() >= n).then_some(r)
        })
    }

    pub fn stats(&self) -> Value {
        serde_json::from_slice(&std::fs::read(&self.stats).unwrap_or_default()).unwrap_or(Value::Null)
    }

    /// Wait until the stats file shows `counter >= n`.
    pub fn wait_stat(&self, counter: &str, n: u64) -> Value {
        self.wait_stats(&format!("stats {counter} >= {n}"), |s| s[counter].as_u64().unwrap_or(0) >= n)
    }

    /// Wait until a stats file the agent wrote satisfies `pred` (it writes one
    /// every second); return it.
    pub fn wait_stats(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, Duration::from_secs(60), || {
            let s = self.stats();
            pred(&s).then_some(s)
        })
    }

    /// Wait until the agent has handled the exit of `pid` (its coverage entry
    /// says `exited`): every connection of the process is closed and every
    /// record it will produce is written, since sinks are flushed before each
    /// stats write. After this, no further record of `pid` can appear.
    pub fn wait_process_done(&self, pid: u32) -> Value {
        self.wait_stats(&format!("the agent to handle the exit of pid {pid}"), |s| process_exited(s, pid))
    }

    /// [`wait_process_done`](Self::wait_process_done), then wait until the
    /// collector sink has nothing left to send: every record written was
    /// acknowledged (or refused for good, invalid or dropped: counted), the
    /// spool is empty and no request is in flight. After this the agent sends
    /// nothing more of `pid`, retries included.
    pub fn wait_delivered(&self, pid: u32) -> Value {
        self.wait_stats(&format!("pid {pid} handled and every record delivered to the collector"), |s| {
            let n = |k: &str| s[k].as_u64().unwrap_or(0);
            let settled = n("collector_records_sent")
                + n("collector_records_rejected")
                + n("collector_records_invalid")
                + n("collector_spool_dropped_records");
            process_exited(s, pid)
                && settled >= n("records")
                && n("collector_spool_batches") == 0
                && n("collector_in_flight") == 0
        })
    }

    /// SIGINT, wait for a clean exit (flush), return the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().expect("wait agent") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tokentap-agent did not exit within 30 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (no clean exit: what a crash or an OOM kill leaves) and reap.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("agent running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Every file the agent wrote, as text (for secret greps).
    pub fn all_output(&self) -> String {
        [&self.records, &self.stats, &self.stderr]
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The stats file's blind-spot entries (LLM connections no capture read) of these
/// processes: tests look only at their own clients, the agent sees the whole host.
pub fn blind_spots_of(stats: &Value, pids: &[u64]) -> Vec<Value> {
    let mine = |e: &&Value| e["pid"].as_u64().is_some_and(|p| pids.contains(&p));
    stats["blind_spots"].as_array().map(|b| b.iter().filter(mine).cloned().collect()).unwrap_or_default()
}

/// A process's entry in the stats file's coverage list (null when absent).
pub fn coverage_of(stats: &Value, pid: u32) -> Value {
    stats["coverage"].as_array().and_then(|c| c.iter().find(|p| p["pid"] == pid)).cloned().unwrap_or(Value::Null)
}

/// Whether a stats file's coverage shows that the agent handled the exit of `pid`.
pub fn process_exited(stats: &Value, pid: u32) -> bool {
    stats["coverage"].as_array().is_some_and(|c| c.iter().any(|p| p["pid"] == pid && p["exited"] == true))
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One test's world: certificates, the server, the agent (started last, so
/// it is ready before any client runs).
pub struct Env {
    pub dir: PathBuf,
    pub certs: Certs,
    pub server: Server,
    pub agent: Agent,
    pub transport: Transport,
}

impl Env {
    pub fn start(name: &str, transport: Transport, agent_args: &[&str]) -> Self {
        require_root();
        let dir = scratch(name);
        let certs = Certs::generate(&dir);
        let server = Server::start_with(&dir, &certs, transport);
        let agent = Agent::start(&dir, agent_args);
        Self { dir, certs, server, agent, transport }
    }

    /// `scheme://host:port` of the server under a provider's host name.
    pub fn origin(&self, host: &str) -> String {
        let scheme = if self.transport == Transport::Plain { "http" } else { "https" };
        format!("{scheme}://{host}:{}", self.server.port)
    }

    pub fn openai_base(&self) -> String {
        format!("{}/v1", self.origin("api.openai.com"))
    }

    pub fn anthropic_base(&self) -> String {
        self.origin("api.anthropic.com")
    }

    pub fn local_base(&self) -> String {
        format!("{}/v1", self.origin("127.0.0.1"))
    }

    /// Stop the agent cleanly, check no credential reached any of its output,
    /// return its final stats.
    pub fn finish(self) -> Value {
        self.finish_with_records().0
    }

    /// [`finish`](Self::finish), and every record the agent wrote: its shutdown
    /// drained the ring buffer, closed every connection and flushed the sinks,
    /// so these are all the records of the processes run so far.
    pub fn finish_with_records(mut self) -> (Value, Vec<Value>) {
        let status = self.agent.stop();
        assert!(status.success(), "agent exit status {status}");
        let out = self.agent.all_output();
        assert!(!out.contains(SECRET_KEY), "the API key leaked into the agent's output");
        assert!(!out.contains("Bearer"), "an Authorization value leaked into the agent's output");
        (self.agent.stats(), self.agent.records())
    }
}

/// A command run in a private mount namespace whose /etc/hosts maps the providers'
/// hosts to 127.0.0.1, so clients use the real hostnames (and SNI) against the
/// local server. The process keeps its pid through the `exec`.
pub fn with_provider_hosts(dir: &Path, program: &str, args: &[String]) -> Command {
    in_mount_namespace(dir, &[], program, args)
}

/// Like [`with_provider_hosts`], with extra `(source, target)` bind mounts: a
/// process that sees other files at the usual paths, as in a container.
pub fn in_mount_namespace(dir: &Path, binds: &[(PathBuf, PathBuf)], program: &str, args: &[String]) -> Command {
    require_tool("unshare");
    let hosts = dir.join("hosts");
    let text = format!("127.0.0.1 localhost {}\n", PROVIDER_HOSTS.join(" "));
    // Never rewritten in place: clients started before have it mounted as
    // their /etc/hosts, and one resolving while it is truncated fails.
    if std::fs::read_to_string(&hosts).ok().as_deref() != Some(text.as_str()) {
        let next = dir.join("hosts.next");
        std::fs::write(&next, text).expect("hosts file");
        std::fs::rename(&next, &hosts).expect("hosts file");
    }
    let mut script = String::from("set -e\n");
    for (src, dst) in binds {
        script.push_str(&format!("mount --bind '{}' '{}'\n", src.display(), dst.display()));
    }
    script.push_str("mount --bind \"$0\" /etc/hosts\nexec \"$@\"\n");
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"]).arg(script).arg(&hosts).arg(program).args(args);
    c
}

/// The system libssl the clients load (from curl's dynamic dependencies).
pub fn system_libssl() -> PathBuf {
    require_tool("ldd");
    let curl = Command::new("sh").args(["-c", "command -v curl"]).output().expect("which curl");
    let curl = String::from_utf8_lossy(&curl.stdout).trim().to_owned();
    let out = Command::new("ldd").arg(&curl).output().expect("ldd curl");
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let (name, rest) = l.trim().split_once(" => ")?;
            let path = rest.split_whitespace().next()?;
            name.starts_with("libssl.so").then(|| PathBuf::from(path))
        })
        .expect("curl links a libssl.so");
    // The path /proc/PID/maps shows (no symlinked directories such as /lib).
    path.canonicalize().unwrap_or(path)
}

/// Run a client to completion; returns its pid and stdout. Panics on failure.
pub fn run_client(mut cmd: Command) -> (u32, String) {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("client output");
    assert!(
        out.status.success(),
        "client {cmd:?} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Python SDK client (tests/clients/py_client.py) against the given bases.
pub fn py_client(dir: &Path, certs: &Certs, openai_base: &str, anthropic_base: &str, scenario: &str) -> Command {
    with_provider_hosts(dir, "python3", &py_client_args(certs, openai_base, anthropic_base, scenario))
}

pub fn py_client_args(certs: &Certs, openai_base: &str, anthropic_base: &str, scenario: &str) -> Vec<String> {
    vec![
        workspace_root().join("tests/clients/py_client.py").display().to_string(),
        "--openai-base".into(),
        openai_base.into(),
        "--anthropic-base".into(),
        anthropic_base.into(),
        "--ca".into(),
        certs.ca.display().to_string(),
        "--key".into(),
        SECRET_KEY.into(),
        scenario.into(),
    ]
}

/// The breadth client (tests/clients/py_breadth.py): `scenario` against `base`.
pub fn py_breadth(dir: &Path, certs: &Certs, base: &str, scenario: &str) -> Command {
    let script = workspace_root().join("tests/clients/py_breadth.py").display().to_string();
    let args = [script, "--base".into(), base.into(), "--ca".into(), certs.ca.display().to_string()];
    let mut args = args.to_vec();
    args.extend(["--key".into(), SECRET_KEY.into(), scenario.into()]);
    with_provider_hosts(dir, "python3", &args)
}

/// The workload runner (tests/clients/py_workload.py) on `calls`, written to `dir`.
pub fn py_workload(dir: &Path, certs: &Certs, base: &str, name: &str, calls: &[Value]) -> Command {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_vec(calls).expect("workload")).expect("workload file");
    let script = workspace_root().join("tests/clients/py_workload.py").display().to_string();
    let args: Vec<String> = [
        script,
        "--base".into(),
        base.into(),
        "--ca".into(),
        certs.ca.display().to_string(),
        "--key".into(),
        SECRET_KEY.into(),
        file.display().to_string(),
    ]
    .to_vec();
    with_provider_hosts(dir, "python3", &args)
}

/// Build the Go net/http client (tests/clients/go_client) into `dir`; `stripped`
/// builds with `-ldflags=-s -w` (no symbol table: functions found via .gopclntab).
pub fn build_go_client(dir: &Path, stripped: bool) -> PathBuf {
    require_tool("go");
    let out = dir.join(if stripped { "go_client_stripped" } else { "go_client" });
    let mut cmd = Command::new("go");
    cmd.current_dir(workspace_root().join("tests/clients/go_client")).args(["build", "-o"]).arg(&out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    // Offline: the client uses only the standard library.
    cmd.env("GOFLAGS", "-mod=mod").env("GOPROXY", "off");
    run(cmd.arg("."));
    out
}

/// Build the reqwest + rustls client (tests/clients/rust_client, pinned by its
/// Cargo.lock, from crates.io) and copy it into `dir` twice: as built (symbols
/// kept, as `cargo build --release` leaves them) and stripped with `strip`.
/// The build directory is kept under the workspace's target, so only the first
/// run pays for the compile.
pub fn build_rust_client(dir: &Path) -> (PathBuf, PathBuf) {
    require_tool("cargo");
    require_tool("strip");
    let target = workspace_root().join("target/rust_client");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root().join("tests/clients/rust_client"))
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(&target)
        // Not the workspace's settings (the agent's dev profile, the eBPF build).
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    run(&mut cmd);
    let built = target.join("release/rust_client");
    let (kept, stripped) = (dir.join("rust_client"), dir.join("rust_client_stripped"));
    std::fs::copy(&built, &kept).expect("copy rust_client");
    std::fs::copy(&built, &stripped).expect("copy rust_client");
    run(Command::new("strip").arg(&stripped));
    (kept, stripped)
}

/// Compare one record with what the server served; panics with both on mismatch.
pub fn assert_matches_served(record: &Value, served: &Value, prices: &tokentap_event::PriceTable) {
    let e = &served["expected"];
    let ctx = || format!("\nrecord: {record}\nserved: {served}");
    let field = |k: &str| record[k].clone();
    // Gemini Live's server never names its model: the session's setup does.
    let answered = if record["operation"] == "live" { field("request_model") } else { field("response_model") };
    assert_eq!(answered, served["model"], "response_model{}", ctx());
    assert_eq!(field("stream"), served["stream"], "stream{}", ctx());
    assert_eq!(field("status"), Value::from(200), "status{}", ctx());
    assert_eq!(field("usage_source"), e["usage_source"], "usage_source{}", ctx());
    for (rk, ek) in [
        ("input_tokens", "input"),
        ("output_tokens", "output"),
        ("cached_input_tokens", "cached"),
        ("cache_write_tokens", "cache_write"),
        ("reasoning_tokens", "reasoning"),
    ] {
        if e["usage_source"] == "estimated" && rk == "input_tokens" {
            assert!(record[rk].as_u64().unwrap_or(0) > 0, "estimated input{}", ctx());
            continue;
        }
        assert_eq!(record[rk], e[ek], "{rk}{}", ctx());
    }
    // Cost: exactly the price table applied to the served tokens; null for a
    // model with no price (self-hosted), never zero.
    let model = served["model"].as_str().unwrap_or_default();
    if served["priced"] == false {
        assert_eq!(record["cost_usd"], Value::Null, "unpriced model must have null cost{}", ctx());
        return;
    }
    let p = prices.lookup(model).unwrap_or_else(|| panic!("no price for {model}"));
    let n = |k: &str| record[k].as_u64().unwrap_or(0);
    // Audio parts (Realtime, Gemini Live): as served, and priced at audio rates.
    for (rk, ek) in [
        ("input_audio_tokens", "input_audio"),
        ("cached_audio_tokens", "cached_audio"),
        ("output_audio_tokens", "output_audio"),
    ] {
        if let Some(want) = e.get(ek) {
            assert_eq!(&record[rk], want, "{rk}{}", ctx());
        }
    }
    let audio = tokentap_event::cost::Use {
        input: n("input_tokens"),
        output: n("output_tokens"),
        cached: n("cached_input_tokens"),
        cache_write: n("cache_write_tokens"),
        audio_input: n("input_audio_tokens"),
        audio_cached: n("cached_audio_tokens"),
        audio_output: n("output_audio_tokens"),
        ..Default::default()
    };
    let want = if audio.audio_input + audio.audio_output > 0 {
        p.cost_of(&audio)
    } else {
        p.cost(n("input_tokens"), n("output_tokens"), n("cached_input_tokens"), n("cache_write_tokens"))
    };
    let got = record["cost_usd"].as_f64().unwrap_or_else(|| panic!("no cost_usd{}", ctx()));
    assert!((got - want).abs() <= 1e-12 + want * 1e-9, "cost {got} != {want}{}", ctx());
    assert!(record["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "duration{}", ctx());
    assert!(record["event_id"].as_str().is_some_and(|s| s.len() == 36), "event_id{}", ctx());
}

/// Pair each record with the served entry it reports (by response id; embeddings,
/// which have none, by their unique input count). Asserts one record per call.
pub fn pair_with_served<'a>(records: &'a [Value], served: &'a [Value]) -> Vec<(&'a Value, &'a Value)> {
    let mut pairs = Vec::new();
    let mut used = std::collections::HashSet::new();
    for r in records {
        let hit =
            served.iter().enumerate().find(|(_, s)| match (s["response_id"].as_str(), s["request_id"].as_str()) {
                (Some(id), _) => r["response_id"].as_str() == Some(id),
                // No response id (Bedrock Converse, Ollama): the request id header.
                (None, Some(id)) => r["request_id"].as_str() == Some(id),
                // No id at all (embeddings, Gemini Live turns): the unique input count.
                (None, None) => {
                    matches!(r["operation"].as_str(), Some("embeddings" | "live"))
                        && r["input_tokens"] == s["expected"]["input"]
                }
            });
        let (i, s) = hit.unwrap_or_else(|| panic!("record matches nothing served: {r}"));
        assert!(used.insert(i), "two records for one served call: {s}");
        pairs.push((r, s));
    }
    pairs
}

/// Now as a record's `ts` (records sent to a collector must be inside its retention).
pub fn now_ts() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    tokentap_event::LlmCall::format_ts(nanos as i128)
}

/// One series' value in a Prometheus text (`name` or `name{labels}`); 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A ClickHouse for the collector tests: the server at `TOKENTAP_CLICKHOUSE_URL`
/// when set, else the real ClickHouse engine (chdb-core) behind
/// tests/server/clickhouse_http.py — a test-harness stand-in for the server
/// process only; SQL, engines and views are ClickHouse's own.
pub struct ClickHouse {
    child: Option<Child>,
    pub url: String,
    pub database: String,
    /// While this file exists the embedded endpoint answers 503 (ClickHouse "away").
    fail_file: PathBuf,
    /// While this file holds N, the embedded endpoint answers inserts N seconds
    /// after committing them (a lost answer, for forced retries).
    slow_file: PathBuf,
}

impl ClickHouse {
    pub fn start(dir: &Path, name: &str) -> Self {
        let database = format!("tokentap_e2e_{}_{}", std::process::id(), name.replace('-', "_"));
        let fail_file = dir.join("clickhouse-away");
        let slow_file = dir.join("clickhouse-slow");
        let _ = std::fs::remove_file(&slow_file);
        if let Ok(url) = std::env::var("TOKENTAP_CLICKHOUSE_URL") {
            return Self { child: None, url, database, fail_file, slow_file };
        }
        require_tool("python3");
        let ok = Command::new("python3").args(["-c", "import chdb"]).status().is_ok_and(|s| s.success());
        assert!(ok, "chdb-core is needed for the ClickHouse tests: run `cargo xtask test`, which installs it");
        let port_file = dir.join("clickhouse.port");
        let _ = std::fs::remove_file(&port_file);
        let child = Command::new("python3")
            .arg(workspace_root().join("tests/server/clickhouse_http.py"))
            .arg("--data")
            .arg(dir.join("clickhouse-data"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--fail-file")
            .arg(&fail_file)
            .arg("--slow-file")
            .arg(&slow_file)
            .stderr(std::fs::File::create(dir.join("clickhouse.stderr")).expect("log"))
            .spawn()
            .expect("start clickhouse_http.py");
        let port: u16 = wait_for("the ClickHouse endpoint", Duration::from_secs(60), || {
            std::fs::read_to_string(&port_file).ok()?.trim().parse().ok()
        });
        Self { child: Some(child), url: format!("http://127.0.0.1:{port}"), database, fail_file, slow_file }
    }

    /// The embedded engine's process (None for a server at `TOKENTAP_CLICKHOUSE_URL`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether this is the embedded engine (outages and slow answers can be simulated).
    pub fn embedded(&self) -> bool {
        self.child.is_some()
    }

    /// Answer inserts `secs` after committing them (embedded endpoint only); 0: at once.
    pub fn set_slow(&self, secs: u32) {
        assert!(self.child.is_some(), "slow answers are simulated with the embedded engine only");
        if secs > 0 {
            std::fs::write(&self.slow_file, secs.to_string()).expect("slow file");
        } else {
            let _ = std::fs::remove_file(&self.slow_file);
        }
    }

    /// Make ClickHouse unavailable (embedded endpoint only) or available again.
    pub fn set_away(&self, away: bool) {
        assert!(self.child.is_some(), "outages are simulated with the embedded engine only");
        if away {
            std::fs::write(&self.fail_file, b"").expect("fail file");
        } else {
            let _ = std::fs::remove_file(&self.fail_file);
        }
    }

    /// Run SQL; the rows as JSON objects (JSONEachRow).
    pub fn query(&self, sql: &str) -> Vec<Value> {
        self.try_query(sql).unwrap_or_else(|e| panic!("ClickHouse {sql}: {e}"))
    }

    /// Run SQL; the rows, or ClickHouse's error text (benchmarks go on after a
    /// query that hit its time limit).
    pub fn try_query(&self, sql: &str) -> Result<Vec<Value>, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("{}/?database={}&default_format=JSONEachRow", self.url, self.database);
        let mut resp = agent.post(&url).send(sql.as_bytes()).map_err(|e| e.to_string())?;
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if resp.status().as_u16() != 200 {
            return Err(text);
        }
        Ok(text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("JSON row")).collect())
    }

    /// One number from a one-row, one-column query.
    pub fn count(&self, sql: &str) -> u64 {
        let rows = self.query(sql);
        let v = rows.first().and_then(|r| r.as_object()).and_then(|o| o.values().next().cloned());
        match v {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            _ => 0,
        }
    }

    /// The collector's migrations (`tokentap-collector migrate`).
    pub fn migrate(&self) {
        let out = Command::new(collector_bin())
            .args(["migrate", "--clickhouse-url", &self.url, "--database", &self.database])
            .output()
            .expect("collector migrate");
        assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Undo migration 16-17's rollups and its record (its columns stay), so
    /// the next migrate creates and backfills them as an upgrade does.
    pub fn forget_waste_rollups(&self) {
        for t in ["llm_waste_1h_mv", "llm_prefixes_1h_mv", "llm_waste_1h", "llm_prefixes_1h"] {
            self.query(&format!("DROP TABLE {t}"));
        }
        self.query("ALTER TABLE schema_migrations DELETE WHERE version IN (16, 17) SETTINGS mutations_sync = 1");
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn collector_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TOKENTAP_COLLECTOR_BIN") {
        return p.into();
    }
    let p = agent_bin().with_file_name("tokentap-collector");
    assert!(p.exists(), "tokentap-collector is not built: run `cargo xtask test` (or `cargo xtask build`) first");
    p
}

/// A running tokentap-collector writing to `ch`.
pub struct Collector {
    child: Option<Child>,
    pub url: String,
    pub port: u16,
    pub token: String,
    args: Vec<String>,
    stderr: PathBuf,
    http: ureq::Agent,
}

/// TLS for the collector: its certificate, and whether agents must present one.
pub struct CollectorTls<'a> {
    pub certs: &'a Certs,
    /// Client certificate and key the harness itself uses (mutual TLS).
    pub client: Option<(PathBuf, PathBuf)>,
}

fn http_agent(tls: Option<&CollectorTls>) -> ureq::Agent {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let mut b = ureq::Agent::config_builder().http_status_as_error(false);
    if let Some(t) = tls {
        let pem = |p: &Path| -> Vec<Certificate<'static>> {
            let bytes = std::fs::read(p).expect("pem");
            ureq::tls::parse_pem(&bytes)
                .filter_map(|i| match i {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect()
        };
        let mut cfg = TlsConfig::builder().root_certs(RootCerts::Specific(std::sync::Arc::new(pem(&t.certs.ca))));
        if let Some((cert, key)) = &t.client {
            let key = PrivateKey::from_pem(&std::fs::read(key).expect("key")).expect("key pem");
            cfg = cfg.client_cert(Some(ClientCert::new_with_certs(&pem(cert), key)));
        }
        b = b.tls_config(cfg.build());
    }
    b.build().into()
}

impl Collector {
    pub fn start(dir: &Path, ch: &ClickHouse) -> Self {
        Self::start_with(dir, ch, None)
    }

    pub fn start_with(dir: &Path, ch: &ClickHouse, tls: Option<CollectorTls>) -> Self {
        Self::start_full(dir, ch, tls, &[])
    }

    /// With extra command-line flags (limits and timeouts under test).
    pub fn start_args(dir: &Path, ch: &ClickHouse, extra: &[&str]) -> Self {
        Self::start_full(dir, ch, None, extra)
    }

    fn start_full(dir: &Path, ch: &ClickHouse, tls: Option<CollectorTls>, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let token = "collector-token-5f4e3d2c1b".to_string();
        std::fs::write(dir.join("collector-token"), &token).expect("token file");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--clickhouse-url".into(),
            ch.url.clone(),
            "--database".into(),
            ch.database.clone(),
            "--token-file".into(),
            dir.join("collector-token").display().to_string(),
        ];
        // Production defaults otherwise (lz4 inserts included): the embedded
        // endpoint speaks ClickHouse's compressed framing.
        args.extend(extra.iter().map(|a| a.to_string()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        if let Some(t) = &tls {
            for (flag, path) in [("--tls-cert", &t.certs.cert), ("--tls-key", &t.certs.key)] {
                args.extend([flag.to_string(), path.display().to_string()]);
            }
            if t.client.is_some() {
                args.extend(["--tls-client-ca".to_string(), t.certs.ca.display().to_string()]);
            }
        }
        let mut c = Self {
            child: None,
            url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            token,
            args,
            stderr: dir.join("collector.stderr"),
            http: http_agent(tls.as_ref()),
        };
        c.restart();
        c
    }

    /// (Re)start the process and wait until it answers /readyz.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr).expect("collector log");
        let child = Command::new(collector_bin())
            .args(&self.args)
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .expect("start tokentap-collector");
        self.child = Some(child);
        let ready = format!("{}/readyz", self.url);
        wait_for("the collector to be ready", Duration::from_secs(60), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("collector exited with {st}:\n{}", std::fs::read_to_string(&self.stderr).unwrap_or_default());
            }
            let r = self.http.get(&ready).call().ok()?;
            (r.status().as_u16() == 200).then_some(())
        });
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// POST a raw batch; (status, body).
    pub fn post(&self, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
        let (status, body) = self.post_to("/v1/records", body, headers);
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// POST a raw body to `path` (e.g. `/v1/traces`); (status, body bytes).
    pub fn post_to(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
        let mut req = self.http.post(format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.send(body).expect("post");
        let status = resp.status().as_u16();
        (status, resp.body_mut().with_config().limit(16 << 20).read_to_vec().unwrap_or_default())
    }

    pub fn metrics(&self) -> String {
        let mut r = self.http.get(format!("{}/metrics", self.url)).call().expect("metrics");
        r.body_mut().read_to_string().unwrap_or_default()
    }

    /// One series' value from /metrics (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// Wait until no request body is being read or decoded
    /// (`tokentap_collector_inflight_bytes` 0): no batch is still being
    /// received. (A batch answered 200 has its rows in ClickHouse already.)
    pub fn wait_idle(&self) {
        wait_for("the collector to have no body in flight", Duration::from_secs(30), || {
            (self.metric("tokentap_collector_inflight_bytes") == 0.0).then_some(())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("collector running")
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Codex CLI's native binary from npm (static-pie, musl, stripped; rustls 0.23
/// inside), configured with a custom provider pointing at the local endpoint.
pub struct Codex {
    pub bin: PathBuf,
    home: PathBuf,
    ca: PathBuf,
}

impl Codex {
    /// `websockets`: its default transport (the Responses API over a
    /// WebSocket) or HTTPS with SSE.
    pub fn new(env: &Env, websockets: bool) -> Self {
        let bin = workspace_root()
            .join("tests/clients/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex");
        assert!(
            bin.exists(),
            "{} missing: run `cargo xtask test`, which installs the pinned test clients",
            bin.display()
        );
        let home = env.dir.join("codex-home");
        std::fs::create_dir_all(&home).unwrap();
        let config = format!(
            "model = \"gpt-4.1\"\nmodel_provider = \"local\"\n\n[model_providers.local]\nname = \"local\"\n\
             base_url = \"{}\"\nenv_key = \"OPENAI_API_KEY\"\nwire_api = \"responses\"\nsupports_websockets = {websockets}\n",
            env.openai_base()
        );
        std::fs::write(home.join("config.toml"), config).unwrap();
        Self { bin, home, ca: env.certs.ca.clone() }
    }

    fn setup(&self, cmd: &mut Command) {
        cmd.env("HOME", &self.home)
            .env("CODEX_HOME", &self.home)
            .env("OPENAI_API_KEY", SECRET_KEY)
            .env("CODEX_CA_CERTIFICATE", &self.ca)
            .stdin(Stdio::null());
    }

    /// Start a `codex exec` that waits for its prompt, until the agent has
    /// probed the binary (its 300 MB are analysed once), then stop it.
    pub fn probe_first(&self, agent: &Agent) {
        let mut warm = Command::new(&self.bin);
        self.setup(&mut warm);
        let mut warm = warm
            .args(["exec", "--skip-git-repo-check"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start codex");
        agent.wait_attached(&self.bin.display().to_string(), "analysed", Duration::from_secs(120));
        let _ = warm.kill();
        let _ = warm.wait();
    }

    /// `codex exec PROMPT`, the provider hosts resolving to the local endpoint.
    pub fn exec(&self, env: &Env, prompt: &str) -> Command {
        let args = ["exec".into(), "--skip-git-repo-check".into(), prompt.into()];
        let mut cmd = with_provider_hosts(&env.dir, &self.bin.display().to_string(), &args);
        self.setup(&mut cmd);
        cmd
    }
}
