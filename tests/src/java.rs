//! Java clients for the end-to-end tests: the JDK's own `java.net.http`
//! client (tests/clients/java/LlmClient.java, compiled once with javac) in
//! real JVMs, held at a "ready" line until the test says go.
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::{require_tool, wait_for, workspace_root, Agent};

/// The JDK the tests run (`java` on PATH, symlinks resolved).
pub fn jdk_home() -> PathBuf {
    require_tool("java");
    let out = Command::new("sh").args(["-c", "command -v java"]).output().expect("which java");
    let java = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let real = java.canonicalize().expect("java resolves");
    real.parent().and_then(Path::parent).expect("JDK home").to_path_buf()
}

/// LlmClient compiled into `target/java_client` (again when its source is newer).
pub fn client_classes() -> PathBuf {
    require_tool("javac");
    let src = workspace_root().join("tests/clients/java/LlmClient.java");
    let out = workspace_root().join("target/java_client");
    let class = out.join("LlmClient.class");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&class).is_none() || modified(&class) < modified(&src) {
        // For Java 11: the classes serve every JDK the tests run (any javac).
        let st = Command::new("javac").args(["--release", "11", "-d"]).arg(&out).arg(&src).status().expect("javac");
        assert!(st.success(), "javac LlmClient.java failed");
    }
    out
}

/// `java [jvm_args] -cp CLASSES LlmClient BASE CA KEY MODE CALLS wait`.
pub fn client_args(jvm_args: &[&str], classes: &Path, base: &str, ca: &Path, mode: &str, calls: u32) -> Vec<String> {
    let mut a: Vec<String> = jvm_args.iter().map(|s| s.to_string()).collect();
    a.extend(["-cp".into(), classes.display().to_string(), "LlmClient".into(), base.into()]);
    a.extend([ca.display().to_string(), crate::SECRET_KEY.into(), mode.into(), calls.to_string(), "wait".into()]);
    a
}

/// A running client JVM, waiting for its go.
pub struct Jvm {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Jvm {
    /// Start `cmd` and wait (60 s) for its "ready" line.
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut jvm = Self { child, lines, stderr: Some(stderr) };
        let first = jvm.lines.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        if first != "ready" {
            let _ = jvm.child.kill();
            let err = jvm.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
            panic!("the JVM did not get ready (first line {first:?}): {cmd:?}\n{err}");
        }
        jvm
    }

    /// The pid of the process started (the JVM, unless started through a wrapper).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running (not exited, not a zombie).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|s| s.is_none())
    }

    /// One round of calls, the JVM staying up; returns its JSON result line.
    pub fn round(&mut self) -> Value {
        self.begin_round();
        self.end_round()
    }

    /// Tell the JVM to make a round of calls, without waiting for them.
    pub fn begin_round(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").and_then(|_| stdin.flush()).expect("tell the JVM to go");
    }

    /// The JSON result line of the round begun.
    pub fn end_round(&mut self) -> Value {
        let line = self.lines.recv_timeout(Duration::from_secs(120)).unwrap_or_default();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("client output {line:?}: {e}"))
    }

    /// A last round of calls, then the JVM exits; returns its JSON result
    /// line and its stderr.
    pub fn go(mut self) -> (Value, String) {
        let mut stdin = self.child.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("tell the JVM to go");
        drop(stdin);
        let line = self.lines.recv_timeout(Duration::from_secs(120)).unwrap_or_default();
        let status = wait_for("the Java client to exit", Duration::from_secs(60), || self.child.try_wait().ok()?);
        let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        assert!(status.success(), "Java client failed: {status}\n{line}\n{stderr}");
        let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("client output {line:?}: {e}\n{stderr}"));
        (v, stderr)
    }
}

impl Drop for Jvm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's log without colour codes.
pub fn agent_log(agent: &Agent) -> String {
    let raw = std::fs::read_to_string(&agent.stderr).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The agent's log lines saying `what` about process `pid`.
pub fn log_lines(agent: &Agent, what: &str, pid: u32) -> Vec<String> {
    let pid = format!("pid={pid} ");
    agent_log(agent).lines().filter(|l| l.contains(what) && l.contains(&pid)).map(str::to_owned).collect()
}

/// Wait until the agent logs that it attached its Java agent to `pid`.
pub fn wait_jvm_attached(agent: &Agent, pid: u32) -> String {
    wait_for(&format!("the Java agent attached to pid {pid}"), Duration::from_secs(60), || {
        log_lines(agent, "java agent attached", pid).into_iter().next()
    })
}

/// The process whose parent is `parent` (a JVM started through `unshare`).
pub fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim().parse::<u32>().ok()?;
        (ppid == parent).then_some(pid)
    })
}
