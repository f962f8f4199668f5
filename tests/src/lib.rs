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
pub mod upgrade;

mod certs;
pub use certs::*;
mod server;
pub use server::*;
mod agent;
pub use agent::*;
mod clients;
pub use clients::*;
mod served;
pub use served::*;
mod clickhouse;
pub use clickhouse::*;
mod collector;
pub use collector::*;

/// The capabilities the DaemonSet grants the agent (deploy/manifests), as
/// setpriv's `--bounding-set` names them: the agent runs with no other.
pub const DAEMONSET_CAPS: &str = "-all,+bpf,+perfmon,+sys_ptrace,+sys_admin,+setuid,+setgid,+dac_read_search";

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
