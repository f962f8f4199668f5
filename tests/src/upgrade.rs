//! What the upgrade tests share: a bpf filesystem of a test's own, the two
//! agents' directories, and the checks that every call was recorded once.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::*;

/// A bpf filesystem of the test's own (each mount is a new instance), unmounted at the end.
pub struct BpfFs(pub PathBuf);

impl BpfFs {
    pub fn mount(dir: &Path) -> Self {
        let at = dir.join("bpffs");
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&at).status().expect("mount");
        assert!(ok.success(), "mount -t bpf");
        Self(at)
    }

    pub fn pins(&self) -> PathBuf {
        self.0.join("tokentap")
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

impl BpfFs {
    /// `--handover-dir` into this filesystem.
    pub fn flag(&self) -> String {
        format!("--handover-dir={}", self.pins().display())
    }
}

/// The old and the new agent's directories.
pub fn agent_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    let (first, second) = (dir.join("first"), dir.join("second"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    (first, second)
}

/// What an upgrade test starts from: its directory and certificates, the
/// LLM server, a bpf filesystem of its own and the two agents' directories.
pub struct Upgrade {
    pub dir: PathBuf,
    pub certs: Certs,
    pub server: Server,
    pub fs: BpfFs,
    pub first: PathBuf,
    pub second: PathBuf,
}

impl Upgrade {
    pub fn new(name: &str, transport: Transport) -> Self {
        let dir = scratch(name);
        let certs = Certs::generate(&dir);
        let server = Server::start_with(&dir, &certs, transport);
        let fs = BpfFs::mount(&dir);
        let (first, second) = agent_dirs(&dir);
        Upgrade { dir, certs, server, fs, first, second }
    }
}

/// The agent that left handed on its decoding states a few reader passes
/// after leaving, before its probes were detached (which takes seconds on a
/// busy host, while the new agent holds those connections' bytes).
pub fn handed_on_before_detaching(old: &Agent) {
    let log = java::agent_log(old);
    let at = |what: &str| log.lines().position(|l| l.contains(what));
    let (handed, detached) = (at("decoding states handed on"), at("probes detached"));
    assert!(matches!((handed, detached), (Some(h), Some(d)) if h < d), "{log}");
}

/// The counters of calls an upgrade may lose: none may grow where every
/// call is expected once.
pub const LOSSES: [&str; 5] =
    ["dropped_at_exit", "joined_mid_stream", "dropped_unanswered", "dropped_at_handover", "handoff_states_missing"];

/// Neither agent's stats count any of `counters` (calls cut, lost or garbled).
pub fn none_of(agents: &[&serde_json::Value], counters: &[&str]) {
    for s in agents {
        let seen: Vec<&&str> = counters.iter().filter(|k| s[**k].as_u64().unwrap_or(0) != 0).collect();
        assert!(seen.is_empty(), "{seen:?} counted: {s}");
    }
}

/// Every call the server served, recorded exactly once across the two
/// agents (none twice: `pair_with_served`; none missing), each checked by
/// `check` (record, served); how many each agent recorded.
pub fn recorded_once(
    server: &Server,
    (old, new): (&Agent, &Agent),
    pids: &[u32],
    check: impl Fn(&serde_json::Value, &serde_json::Value),
) -> (usize, usize) {
    let served = server.served();
    let (by_old, by_new) = (old.records_of(pids), new.records_of(pids));
    let all: Vec<serde_json::Value> = by_old.iter().chain(&by_new).cloned().collect();
    for (r, s) in pair_with_served(&all, &served) {
        check(r, s);
    }
    let (o, n) = (by_old.len(), by_new.len());
    assert_eq!(all.len(), served.len(), "every call recorded exactly once across the two agents (old {o}, new {n})");
    (o, n)
}

/// [`recorded_once`], each record checked against what was served.
pub fn priced_once(server: &Server, agents: (&Agent, &Agent), pids: &[u32]) -> (usize, usize) {
    let prices = tokentap_event::PriceTable::shipped();
    recorded_once(server, agents, pids, |r, s| assert_matches_served(r, s, &prices))
}

/// A client making its calls in the background.
pub fn spawn(mut c: Command) -> std::process::Child {
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("client")
}

/// Wait until a client has made all its calls, successfully.
pub fn finish(c: std::process::Child) {
    let out = c.wait_with_output().expect("client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The pinned `OVERLAP` flag (bpftool), if it can be read.
pub fn overlap(fs: &BpfFs) -> Option<u32> {
    let path = fs.pins().join("OVERLAP");
    let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&path).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let value = &v.as_array()?.first()?["value"];
    match value {
        // Raw bytes ("0x01", ...), little-endian.
        serde_json::Value::Array(bytes) => {
            let b: Vec<u8> = bytes
                .iter()
                .filter_map(|x| u8::from_str_radix(x.as_str()?.trim_start_matches("0x"), 16).ok())
                .collect();
            Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
        }
        other => other.as_u64().map(|n| n as u32),
    }
}

/// Names of tokentap's maps and programs that bpftool lists (kernel names are
/// cut at 15 bytes).
pub fn ours_in_kernel() -> Vec<String> {
    let mut found = Vec::new();
    for what in ["map", "prog"] {
        let out = Command::new("bpftool").args([what, "show"]).output().expect("bpftool");
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let hit =
                ["name AGENTS ", "name CURRENT_AGENT ", "name CONN_OWNERS ", "name ssl_write ", "name go_tls_read "]
                    .iter()
                    .any(|n| format!("{l} ").contains(n));
            if hit {
                found.push(l.to_owned());
            }
        }
    }
    found
}

pub fn calls(n: u64, from: u64, pause: f64, fresh: bool) -> Vec<serde_json::Value> {
    (from..from + n)
        .map(|i| {
            let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("call {i}")}]});
            let mut c = crate::calibrate::call("chat", body, 100 + i, 10);
            c["pause"] = serde_json::json!(pause);
            c["fresh"] = serde_json::json!(fresh);
            c
        })
        .collect()
}

/// Send `sig` to process `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: a plain syscall on a child process of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill({pid}, {sig})");
}
