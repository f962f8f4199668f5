//! One test's world and the clients run in it: the SDKs, curl, the Go and Rust
//! clients and Codex, in a mount namespace whose /etc/hosts names the providers.
use super::*;

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

/// A curl command line that, after its calls, stays alive in one more transfer
/// to a listener that never accepts, until [`HeldCurl::release`]: a process
/// still running when its records are read (what the agent reads of /proc/PID
/// then is the live process's). Killed and reaped if dropped unreleased.
pub struct HeldCurl {
    child: Option<Child>,
    listener: Option<std::net::TcpListener>,
}

impl HeldCurl {
    /// `cmd` runs curl (directly, or through a wrapper that execs it) with
    /// its calls; the held transfer is appended.
    pub fn spawn(mut cmd: Command) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener to hold curl");
        let port = listener.local_addr().expect("its port").port();
        // --fail-early is global: a failed call ends curl at once, not after the held transfer.
        cmd.args(["--fail-early", "--next", "-o", "/dev/null"]).arg(format!("http://127.0.0.1:{port}/held"));
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Self { child: Some(child), listener: Some(listener) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("spawned").id()
    }

    /// Whether curl still runs (in the held transfer, once its calls are done).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().expect("spawned").try_wait().expect("curl's status").is_none()
    }

    /// Close the listener (the held transfer is reset, or refused if it had
    /// not connected yet) and wait for curl; panics unless that is how it ended.
    pub fn release(mut self) {
        drop(self.listener.take());
        let out = self.child.take().expect("spawned").wait_with_output().expect("curl's output");
        // 7: could not connect, 52: empty reply, 56: reset while receiving.
        assert!(
            matches!(out.status.code(), Some(7 | 52 | 56)),
            "curl ended otherwise than in its held transfer: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for HeldCurl {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
