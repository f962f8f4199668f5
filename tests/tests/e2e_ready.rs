//! Readiness tells the truth: an agent short of a capability it needs says so
//! at start and exits non-zero (never a healthy agent capturing nothing); with
//! the documented set it is ready and has probes attached. And a Bedrock
//! InvokeModel answer the client never reads is recorded from its headers.
//! Every eBPF program verifies with a wide margin under the verifier's budget.
//! Needs root (fails, never skips, without it).
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokentap_e2e::*;

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The documented set (docs/operations.md), as setpriv names them.
const DOCUMENTED: [&str; 4] = ["bpf", "perfmon", "sys_ptrace", "sys_admin"];

/// Run the agent under `setpriv` with these capabilities (setpriv's names)
/// and `extra` flags until it exits on its own: its status, its log, whether
/// it was ever ready, and whether its /metrics port ever answered.
fn run_until_exit(dir: &std::path::Path, caps: &[&str], extra: &[String]) -> (std::process::ExitStatus, String, bool) {
    let bounding =
        format!("--bounding-set=-all,{}", caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(","));
    let port = free_port();
    let ready = dir.join("ready");
    let stderr = dir.join("agent.stderr");
    let mut child = Command::new("setpriv")
        .args(["--inh-caps=-all", &bounding, "--"])
        .arg(agent_bin())
        .arg(format!("--output=jsonl:{}", dir.join("records.jsonl").display()))
        .arg(format!("--ready-file={}", ready.display()))
        .arg(format!("--metrics-listen=127.0.0.1:{port}"))
        .arg(format!("--key-secret-file={}", dir.join("key-secret").display()))
        .arg("--duration=60")
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("setpriv");
    let status = wait_for("the agent to exit on its own", Duration::from_secs(30), || child.try_wait().unwrap());
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "no /readyz to answer 200");
    (status, log, ready.exists())
}

/// Run the agent with the documented capabilities but `dropped`; it must exit
/// non-zero on its own, with one error naming `dropped` and the whole set,
/// never having been ready.
fn refuses_to_run_without(dropped: &str) {
    let _g = serial();
    require_root();
    require_tool("setpriv");
    let dir = scratch(&format!("no-{dropped}"));
    let kept: Vec<&str> = DOCUMENTED.iter().copied().filter(|c| *c != dropped).collect();
    let (status, log, ready) = run_until_exit(&dir, &kept, &[]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(!ready, "never ready");
    let name = format!("CAP_{}", dropped.to_uppercase());
    let want = format!("missing capabilities {name}: the agent needs {}", tokentap_agent::caps::needs());
    assert!(log.contains(&want), "one error naming {name} and the set:\n{log}");
    assert!(
        want.contains("CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE + CAP_SYS_ADMIN"),
        "the set of docs/operations.md: {want}"
    );
    assert!(!log.contains("probes attached"), "nothing was loaded:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `--handover-dir` the agent cannot use is named with why, at start: not
/// on a bpf filesystem (what to mount; nothing made on the way), a file, or a
/// directory its user may not write (its mode, not the capabilities or the
/// kernel, which a load failure blamed before). Each error once, not chained
/// again after itself.
#[test]
fn a_handover_dir_the_agent_cannot_use_is_named_with_why_at_start() {
    let _g = serial();
    require_root();
    require_tool("setpriv");
    let dir = scratch("handover-dir-refused");
    let with_handover: Vec<&str> = DOCUMENTED.iter().copied().chain(["setuid", "setgid"]).collect();
    let refused = |extra: String, want: &str| {
        let (status, log, ready) = run_until_exit(&dir, &with_handover, &[extra]);
        assert_eq!((status.code(), ready), (Some(1), false), "{log}");
        assert!(log.contains(want), "{want}:\n{log}");
        assert!(!log.contains("loading eBPF failed"), "not blamed on the load:\n{log}");
        log
    };
    let nowhere = dir.join("not-bpffs/tokentap");
    refused(format!("--handover-dir={}", nowhere.display()), "not on a bpf filesystem (mount one: `mount -t bpf");
    assert!(!dir.join("not-bpffs").exists(), "nothing made on the way");
    let file = dir.join("a-file");
    std::fs::write(&file, b"").unwrap();
    refused(format!("--handover-dir={}", file.display()), "a-file: not a directory");
    // A bpffs directory of another user's, read-only to others: root without
    // CAP_DAC_OVERRIDE (not in the documented set) may not pin there.
    let fs = tokentap_e2e::upgrade::BpfFs::mount(&dir);
    let pins = fs.pins();
    std::fs::create_dir_all(&pins).unwrap();
    std::os::unix::fs::chown(&pins, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&pins, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    let want = format!("--handover-dir {}: pinning the map", pins.display());
    let log = refused(fs.flag(), &want);
    assert!(log.contains("Permission denied"), "the cause:\n{log}");
    assert_eq!(log.matches("Permission denied").count(), 2, "once in the log line, once on stderr:\n{log}");
    assert_eq!(std::fs::read_dir(&pins).unwrap().count(), 0, "nothing pinned");
    drop(fs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_cap_sys_admin_the_agent_names_it_and_exits_non_zero() {
    refuses_to_run_without("sys_admin");
}

#[test]
fn without_cap_sys_ptrace_the_agent_names_it_and_exits_non_zero() {
    refuses_to_run_without("sys_ptrace");
}

/// Run the agent under `unshare` with these namespaces until it exits on
/// its own: its status, its log, and whether it was ever ready.
fn unshared_agent(dir: &std::path::Path, namespaces: &[&str]) -> (std::process::ExitStatus, String, bool) {
    let ready = dir.join("ready");
    let out = Command::new("unshare")
        .args(namespaces)
        .arg("--")
        .arg(agent_bin())
        .arg(format!("--output=jsonl:{}", dir.join("records.jsonl").display()))
        .arg(format!("--key-secret-file={}", dir.join("key-secret").display()))
        .arg(format!("--ready-file={}", ready.display()))
        .arg("--duration=60")
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned(), ready.exists())
}

/// Root of a user namespace has every capability there, none that counts for
/// eBPF: named at start, exit 1, not a load error deep in the kernel's maps.
#[test]
fn in_a_user_namespace_the_agent_says_so_and_exits_non_zero() {
    let _g = serial();
    require_root();
    require_tool("unshare");
    let dir = scratch("userns");
    let (status, log, _) = unshared_agent(&dir, &["--user", "--map-root-user"]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("running in a user namespace") && log.contains("in the host's user namespace"), "{log}");
    assert!(log.contains(&tokentap_agent::caps::needs()), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// In a PID namespace of its own with its own /proc (a container without
/// `hostPID`), where the kernel's pids name no process the agent can see:
/// named at start, exit 1, never an agent that runs and attributes nothing.
/// Its /proc's `NSpid` lists one pid there, as the host's does: not what tells.
#[test]
fn in_a_pid_namespace_of_its_own_the_agent_says_so_and_exits_non_zero() {
    let _g = serial();
    require_root();
    require_tool("unshare");
    let dir = scratch("pidns");
    let (status, log, ready) = unshared_agent(&dir, &["--pid", "--fork", "--mount-proc"]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("running in a PID namespace of its own") && log.contains("hostPID: true"), "{log}");
    assert!(!log.contains("probes attached") && !ready, "nothing loaded, never ready:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every capability, but `perf_event_open` refused (a container runtime's
/// seccomp profile does this): no probe attaches, so the agent is not ready,
/// says why on /readyz, writes no ready file and exits 1 — never 200 and 0.
#[test]
fn with_perf_event_open_refused_the_agent_is_not_ready_and_exits_non_zero() {
    let _g = serial();
    require_root();
    let dir = scratch("seccomp");
    let port = free_port();
    let ready = dir.join("ready");
    let stats = dir.join("stats.json");
    let stderr = dir.join("agent.stderr");
    let wrapper = workspace_root().join("tests/clients/deny_syscall.py");
    let mut child = Command::new("python3")
        .arg(&wrapper)
        .args(["perf_event_open", "--"])
        .arg(agent_bin())
        .arg(format!("--output=jsonl:{}", dir.join("records.jsonl").display()))
        .arg(format!("--stats-file={}", stats.display()))
        .arg(format!("--ready-file={}", ready.display()))
        .arg(format!("--metrics-listen=127.0.0.1:{port}"))
        .arg(format!("--key-secret-file={}", dir.join("key-secret").display()))
        .arg("--duration=8")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("deny_syscall.py");
    // Once the initial discovery is done, /readyz says not ready, and why
    // (before, 503 "attaching probes").
    let r = wait_for("/readyz to give the reason", Duration::from_secs(30), || {
        // An agent that died at start (a load error) fails here, with its log.
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the agent exited ({st}) before /readyz answered:\n{}", std::fs::read_to_string(&stderr).unwrap());
        }
        let r = std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| http_get(port, "/readyz"))?;
        r.contains("no probe could be attached").then_some(r)
    });
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("permission_denied"), "{r}");
    let status = wait_for("the agent to exit", Duration::from_secs(30), || child.try_wait().unwrap());
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(!ready.exists(), "never ready");
    let s: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(s["targets_attached"], 0, "{s}");
    assert!(s["attach_failures_permission_denied"].as_u64() > Some(0), "the system libssl and loader: {s}");
    assert_eq!(s["attach_failures"], s["attach_failures_permission_denied"], "{s}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The documented set is enough: ready, with probes attached and no attach
/// refused (the contrast to the two above).
#[test]
fn with_the_documented_set_the_agent_is_ready_with_probes_attached() {
    let _g = serial();
    require_root();
    require_tool("setpriv");
    let dir = scratch("documented-caps");
    let port = free_port();
    let listen = format!("--metrics-listen=127.0.0.1:{port}");
    let bounding = format!("--bounding-set=-all,{}", DOCUMENTED.map(|c| format!("+{c}")).join(","));
    let mut agent = Agent::start_with(&dir, &[&listen], &["setpriv", "--inh-caps=-all", &bounding, "--"]);
    let r = http_get(port, "/readyz");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // The stats file is written every 200 ms here, the first maybe before the attach.
    let stats = agent.wait_stat("targets_attached", 1);
    let n = |k: &str| stats[k].as_u64().unwrap_or_else(|| panic!("{k} in {stats}"));
    assert_eq!(n("attach_failures_permission_denied"), 0, "{stats}");
    // Processes the agent may not read even so (a non-dumpable one, an LSM's)
    // are counted, not skipped silently.
    n("processes_unreadable");
    let m = http_get(port, "/metrics");
    for c in
        ["attach_failures_permission_denied", "attach_failures_gone", "attach_failures_other", "records_body_unread"]
    {
        assert!(m.contains(&format!("tokentap_agent_{c}_total ")), "{c} in /metrics");
    }
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every eBPF program verifies well inside the verifier's budget of a million
/// instructions a program, so a kernel whose verifier works harder eats into a
/// margin rather than refusing to load (Linux 6.18.44 refused two of them at
/// the limit before the copy became a global function: architecture.md).
#[test]
fn every_ebpf_program_verifies_in_under_a_quarter_of_the_verifiers_budget() {
    let _g = serial();
    require_root();
    let dir = scratch("verifier-budget");
    let mut verified: Vec<(String, u64)> = Vec::new();
    // The socket hooks' two sets of programs: the raw pair, the syscalls' tracepoints.
    for hooks in ["raw", "tracepoints"] {
        let out = Command::new(agent_bin())
            .args(["--duration", "1s", "--syscall-hooks", hooks, "--output"])
            .arg(format!("jsonl:{}", dir.join("records.jsonl").display()))
            .env("RUST_LOG", "tokentap_agent::probes=debug")
            .env("NO_COLOR", "1")
            .output()
            .expect("run tokentap-agent");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        let before = verified.len();
        verified.extend(log.lines().filter(|l| l.contains("eBPF program loaded")).map(|l| {
            let field = |k: &str| {
                let rest = &l[l.find(k).unwrap_or_else(|| panic!("{k} in {l}")) + k.len()..];
                rest.split_whitespace().next().unwrap_or("").trim_matches('"').to_string()
            };
            let n = field("verified_insns=").parse().unwrap_or_else(|_| panic!("a count in {l}"));
            (field("program="), n)
        }));
        // Every capture method's programs, the process tracepoints and the socket hooks.
        assert!(verified.len() - before >= 30, "{verified:?}\n{log}");
    }
    for p in ["sys_enter", "sys_exit", "sock_enter", "sock_close", "sock_exit"] {
        assert!(verified.iter().any(|(name, _)| name == p), "{p} verified: {verified:?}");
    }
    for (program, n) in &verified {
        assert!(*n > 0 && *n < 250_000, "{program}: {n} instructions verified");
    }
    eprintln!("verified instructions, most: {:?}", verified.iter().max_by_key(|(_, n)| *n));
    let _ = std::fs::remove_dir_all(&dir);
}

/// boto3's `invoke_model` returns a StreamingBody; a caller that never reads
/// it still made (and pays for) the call: recorded from the response headers.
#[test]
fn an_invoke_model_body_never_read_is_recorded_from_its_headers() {
    let _g = serial();
    let env = Env::start("bedrock-unread", Transport::Https, &[]);
    let base = env.origin("bedrock-runtime.us-east-1.amazonaws.com");
    let (pid, _) = run_client(py_breadth(&env.dir, &env.certs, &base, "bedrock_unread"));
    env.agent.wait_process_done(pid);
    let records = env.agent.records_of(&[pid]);
    assert_eq!(records.len(), 1, "{records:#?}\n{}", env.agent.stats());
    let r = &records[0];
    let served = env.server.served();
    let s = served.iter().find(|s| s["request_id"] == r["request_id"]).unwrap_or_else(|| panic!("{r}: {served:?}"));
    assert_eq!(s["api"], "bedrock_invoke");
    assert_eq!(r["usage_source"], "headers", "{r}");
    assert_eq!(r["input_tokens"], s["expected"]["input"], "{r}");
    assert_eq!(r["output_tokens"], s["expected"]["output"], "{r}");
    assert_eq!(r["operation"], "invoke");
    assert_eq!(r["response_id"], Value::Null, "the body (with the id) was never read: {r}");
    assert!(r["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{r}");
    let dir = env.dir.clone();
    let stats = env.finish();
    assert!(stats["records_body_unread"].as_u64() >= Some(1), "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stats file the agent cannot write is an error at start that names the
/// path, not a warning every second behind an agent that looks ready (a
/// directory not there yet is made: `StatsFile::prepare`'s unit test).
#[test]
fn a_stats_file_the_agent_cannot_write_stops_it_at_start() {
    let _g = serial();
    require_root();
    require_tool("setpriv");
    let dir = scratch("stats-file-refused");
    let (status, log, ready) =
        run_until_exit(&dir, &DOCUMENTED, &["--stats-file=/proc/tokentap-nowhere/stats.json".to_owned()]);
    assert_eq!((status.code(), ready), (Some(1), false), "{log}");
    assert!(log.contains("--stats-file /proc/tokentap-nowhere/stats.json: "), "{log}");
    // A file mounted on its own (a pod's `subPath`) takes a write but not the
    // rename that replaces it: refused at start too, with what to do.
    require_tool("mount");
    let mounted = dir.join("mounted.json");
    std::fs::write(&mounted, b"{}").unwrap();
    let bound = Command::new("mount").arg("--bind").arg(&mounted).arg(&mounted).status().unwrap();
    assert!(bound.success(), "bind-mount {}", mounted.display());
    /// Unmounts the file however the test ends.
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let unmount = Unmount(&mounted);
    let (status, log, ready) = run_until_exit(&dir, &DOCUMENTED, &[format!("--stats-file={}", mounted.display())]);
    drop(unmount);
    assert_eq!((status.code(), ready), (Some(1), false), "{log}");
    assert!(log.contains("a mount point") && log.contains("mount its directory instead"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
