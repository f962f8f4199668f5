//! What an SRE upgrading the DaemonSet relies on: with `--handover-dir`, a new
//! agent started beside the old one takes over with no gap. Calls keep flowing
//! at a steady rate over a keep-alive connection and over a new connection
//! each; the old agent is stopped once the new one is ready (what a surge
//! rollout does), and every call is recorded exactly once across the two;
//! over HTTP/2 too (a busy connection, and a new connection per call), whose
//! connections change agents with their decoding state, even one that ends
//! around the switch; WebSocket sessions (the Responses API, compressed)
//! with their framing, deflate context and calls in flight; and from a JVM, captured through the
//! Java agent; plaintext HTTP read at the socket syscalls, over keep-alive
//! connections opened before the new agent started. An old agent stopped
//! before the new one is ready waits for it.
//! After the last agent, and after `uninstall` for a killed one, no pin, map or
//! program of tokentap is left in the kernel (bpftool).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokentap_e2e::*;

/// A bpf filesystem of the test's own (each mount is a new instance), unmounted at the end.
struct BpfFs(PathBuf);

impl BpfFs {
    fn mount(dir: &Path) -> Self {
        let at = dir.join("bpffs");
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&at).status().expect("mount");
        assert!(ok.success(), "mount -t bpf");
        Self(at)
    }

    fn pins(&self) -> PathBuf {
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
    fn flag(&self) -> String {
        format!("--handover-dir={}", self.pins().display())
    }
}

/// The old and the new agent's directories.
fn agent_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    let (first, second) = (dir.join("first"), dir.join("second"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    (first, second)
}

/// What an upgrade test starts from: its directory and certificates, the
/// LLM server, a bpf filesystem of its own and the two agents' directories.
struct Upgrade {
    dir: PathBuf,
    certs: Certs,
    server: Server,
    fs: BpfFs,
    first: PathBuf,
    second: PathBuf,
}

impl Upgrade {
    fn new(name: &str, transport: Transport) -> Self {
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
fn handed_on_before_detaching(old: &Agent) {
    let log = java::agent_log(old);
    let at = |what: &str| log.lines().position(|l| l.contains(what));
    let (handed, detached) = (at("decoding states handed on"), at("probes detached"));
    assert!(matches!((handed, detached), (Some(h), Some(d)) if h < d), "{log}");
}

/// Neither agent's stats count any of `counters` (calls cut, lost or garbled).
fn none_of(agents: &[&serde_json::Value], counters: &[&str]) {
    for s in agents {
        let seen: Vec<&&str> = counters.iter().filter(|k| s[**k].as_u64().unwrap_or(0) != 0).collect();
        assert!(seen.is_empty(), "{seen:?} counted: {s}");
    }
}

/// Every call the server served, recorded exactly once across the two
/// agents (none twice: `pair_with_served`; none missing), each checked by
/// `check` (record, served); how many each agent recorded.
fn recorded_once(
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
fn priced_once(server: &Server, agents: (&Agent, &Agent), pids: &[u32]) -> (usize, usize) {
    let prices = tokentap_event::PriceTable::shipped();
    recorded_once(server, agents, pids, |r, s| assert_matches_served(r, s, &prices))
}

/// A client making its calls in the background.
fn spawn(mut c: Command) -> std::process::Child {
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("client")
}

/// Wait until a client has made all its calls, successfully.
fn finish(c: std::process::Child) {
    let out = c.wait_with_output().expect("client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The pinned `OVERLAP` flag (bpftool), if it can be read.
fn overlap(fs: &BpfFs) -> Option<u32> {
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
fn ours_in_kernel() -> Vec<String> {
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

fn calls(n: u64, from: u64, pause: f64, fresh: bool) -> Vec<serde_json::Value> {
    (from..from + n)
        .map(|i| {
            let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("call {i}")}]});
            let mut c = tokentap_e2e::calibrate::call("chat", body, 100 + i, 10);
            c["pause"] = serde_json::json!(pause);
            c["fresh"] = serde_json::json!(fresh);
            c
        })
        .collect()
}

#[test]
fn a_rolling_upgrade_records_every_call_exactly_once() {
    let _g = serial();
    require_root();
    require_tool("bpftool");
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover", Transport::Https);
    let flag = fs.flag();
    let flag = [flag.as_str()];
    let mut first = Agent::start(&first_dir, &flag);
    for name in tokentap_agent::handover::PINNED {
        assert!(fs.pins().join(name).exists(), "{name} pinned while an agent runs");
    }
    // About 100 calls/s on one keep-alive connection and 30/s on a new
    // connection each, for ~12 s: the upgrade happens in the middle.
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let (kept, fresh) = (calls(1200, 0, 0.008, false), calls(300, 100_000, 0.03, true));
    let total = kept.len() + fresh.len();
    let workload = |name: &str, calls: &[serde_json::Value]| spawn(py_workload(&dir, &certs, &base, name, calls));
    let (a, b) = (workload("kept", &kept), workload("fresh", &fresh));
    first.wait_records(&[a.id(), b.id()], 50);
    // A streamed call of several seconds that the old agent sees begin: still
    // in flight when the old agent is stopped, which waits for it.
    let body = serde_json::json!({"model": "slow-stream", "messages": [{"role": "user", "content": "slow"}],
        "stream": true, "stream_options": {"include_usage": true}});
    let slow = workload("slow", &[tokentap_e2e::calibrate::call("chat", body, 0, 0)]);
    wait_for("the slow stream to begin", Duration::from_secs(30), || {
        server.served().iter().any(|s| s["model"].as_str().is_some_and(|m| m.starts_with("slow-stream"))).then_some(())
    });
    let total = total + 1;
    let pids = [a.id(), b.id(), slow.id()];
    // The surge: the new agent starts beside the old one and is ready; only
    // then is the old one stopped.
    let t = Instant::now();
    let mut second = Agent::start(&second_dir, &flag);
    let ready = t.elapsed();
    // The kernel keeps turns for straddled calls while two agents overlap
    // (set by the new agent before its probes attach).
    assert_eq!(overlap(&fs), Some(1), "OVERLAP set while both agents run");
    second.wait_records(&pids, 20);
    let t = Instant::now();
    assert!(first.stop().success());
    let drained = t.elapsed();
    [a, b, slow].into_iter().for_each(finish);
    assert_eq!(server.served().len(), total);
    // The slow stream's process made no call the new agent saw: the old
    // agent recorded it before it exited.
    for pid in &pids[..2] {
        second.wait_process_done(*pid);
    }
    // Alone for 5 s, the new agent turns them off (one array read a call).
    wait_for("OVERLAP cleared by the agent left alone", Duration::from_secs(20), || {
        (overlap(&fs) == Some(0)).then_some(())
    });
    assert!(second.stop().success());

    let (old, new) = (first.stats(), second.stats());
    let (by_old, by_new) = (first.records_of(&pids), second.records_of(&pids));
    let all: Vec<serde_json::Value> = by_old.iter().chain(&by_new).cloned().collect();
    let prices = tokentap_event::PriceTable::shipped();
    // One record per served call: none twice (pair_with_served), none missing.
    let served = server.served();
    for (r, s) in pair_with_served(&all, &served) {
        if s["model"] == "slow-stream" {
            // A test model with no price: its tokens are what was served.
            assert_eq!((&r["input_tokens"], &r["output_tokens"]), (&s["expected"]["input"], &s["expected"]["output"]));
        } else {
            assert_matches_served(r, s, &prices);
        }
    }
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    eprintln!(
        "handover: old agent {} records, new {} records of {total}; new ready in {ready:?}, old drained and exited \
         in {drained:?}; keep-alive connections handed over {}, taken from the exited agent {}, calls skipped as \
         the other's: old {} new {}",
        by_old.len(),
        by_new.len(),
        n(&new, "kernel_handover_received"),
        n(&new, "kernel_handover_from_exited"),
        n(&old, "kernel_owned_elsewhere"),
        n(&new, "kernel_owned_elsewhere"),
    );
    assert_eq!(all.len(), total, "every call recorded exactly once across the two agents");
    assert!(by_old.len() >= 50 && by_new.len() >= 20, "both agents recorded calls");
    let slow_by_old = by_old.iter().any(|r| r["request_model"] == "slow-stream");
    assert!(slow_by_old, "the call in flight at the stop was finished by the old agent");
    assert!(n(&new, "kernel_handover_received") >= 1, "the keep-alive connection moved at a request: {new}");
    assert!(n(&new, "kernel_owned_elsewhere") > 0, "the new agent skipped the old one's calls while both ran");
    none_of(&[&old, &new], &["dropped_at_exit", "joined_mid_stream", "dropped_unanswered"]);
    // Each server-side connection (one a fresh call, the kept one, the slow
    // one) was seen by one agent. An ignore that reached the kernel after its
    // connection ended once hid the next one under the same SSL* (~2 in 5
    // here), and the kept one at times: the new agent then met it mid-request.
    let server_side = n(&old, "ignored_server_side") + n(&new, "ignored_server_side");
    assert!(server_side >= fresh.len() as u64 + 2, "server-side connections seen: {server_side}");
    // The last agent to stop took the pins with it, and nothing of tokentap stays loaded.
    assert!(!fs.pins().exists(), "pins removed by the last agent");
    let left = wait_for("tokentap's maps and programs gone", Duration::from_secs(10), || {
        let l = ours_in_kernel();
        l.is_empty().then_some(l)
    });
    assert!(left.is_empty());
}

/// Plaintext HTTP (a self-hosted model, a sidecar that terminates TLS) is
/// read at the socket syscalls, whose tables each agent fills at `connect`:
/// a keep-alive connection opened before the new agent started moves to it
/// at its next request all the same, and the new agent copies it from there.
/// As deployed: the agents hold the DaemonSet's capabilities alone, and the
/// keep-alive client (curl, one connection for all its calls) runs as
/// another user, whose open sockets the new agent must list all the same.
#[test]
fn a_plain_http_keep_alive_connection_opened_before_the_new_agent_moves_to_it() {
    let _g = serial();
    require_root();
    require_tool("setpriv");
    require_tool("curl");
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-plain", Transport::Plain);
    let flag = fs.flag();
    let flag = [flag.as_str()];
    let caps = format!("--bounding-set={DAEMONSET_CAPS}");
    let as_daemonset = ["setpriv", "--inh-caps=-all", caps.as_str(), "--"];
    let mut first = Agent::start_with(&first_dir, &flag, &as_daemonset);
    let base = format!("http://api.openai.com:{}/v1", server.port);
    // ~40 calls/s on one connection for ~15 s, as user nobody.
    let kept = 600;
    let mut curl: Vec<String> =
        ["--reuid=65534", "--regid=65534", "--clear-groups", "--", "curl", "-sS", "--rate", "40/s"]
            .map(str::to_owned)
            .to_vec();
    for i in 0..kept {
        let body =
            serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("kept {i}")}]});
        let auth = format!("Authorization: Bearer {SECRET_KEY}");
        let url = format!("{base}/chat/completions");
        curl.extend(["--json".into(), body.to_string(), "-H".into(), auth, "-o".into(), "/dev/null".into(), url]);
        if i + 1 < kept {
            curl.push("--next".into());
        }
    }
    let fresh = calls(150, 100_000, 0.04, true);
    let (a, b) =
        (spawn(with_provider_hosts(&dir, "setpriv", &curl)), spawn(py_workload(&dir, &certs, &base, "fresh", &fresh)));
    let pids = [a.id(), b.id()];
    first.wait_records(&pids[..1], 40);
    let mut second = Agent::start_with(&second_dir, &flag, &as_daemonset);
    second.wait_records(&pids[..1], 10);
    assert!(first.stop().success());
    [a, b].into_iter().for_each(finish);
    assert_eq!(server.served().len(), kept + fresh.len());
    for pid in pids {
        second.wait_process_done(pid);
    }
    assert!(second.stop().success());
    let (old, new) = (first.stats(), second.stats());
    let (o, n) = priced_once(&server, (&first, &second), &pids);
    let kept_by_new = second.records_of(&pids[..1]).len();
    let k = |s: &serde_json::Value, c: &str| s[c].as_u64().unwrap_or(0);
    eprintln!(
        "plain HTTP handover: old agent {o} records, new {n} (of the keep-alive connection: {kept_by_new}); \
         sockets adopted at start {}, processes unreadable {}, handed over {}, calls skipped as the other's: old {} \
         new {}",
        k(&new, "sockets_adopted_at_start"),
        k(&new, "processes_unreadable_at_start"),
        k(&new, "kernel_handover_received"),
        k(&old, "kernel_owned_elsewhere"),
        k(&new, "kernel_owned_elsewhere"),
    );
    assert_eq!(o + n, kept + fresh.len(), "every call recorded exactly once across the two agents");
    // Any client socket of the host counts here; the handover and the calls
    // the new agent recorded are the keep-alive connection's alone (the other
    // client makes one call per connection).
    assert!(k(&new, "sockets_adopted_at_start") >= 1, "the keep-alive connection found open at start: {new}");
    assert!(k(&new, "kernel_handover_received") >= 1, "the keep-alive connection moved at a request: {new}");
    assert!(kept_by_new >= 20, "the new agent copies the keep-alive connection it was handed: {kept_by_new}");
    none_of(&[&old, &new], &["dropped_at_exit", "joined_mid_stream", "dropped_unanswered"]);
}

/// The old agent leaves (its drain of 1 s ran out) while a plaintext stream
/// of 20 s is in flight on a keep-alive connection the new agent found open
/// (adopted, left to the old agent): that call is cut, and counted, and
/// nothing of it is recorded or garbled by the new agent; every later call of
/// the client (the SDK may reconnect after a cut stream) is recorded once,
/// by the new agent.
#[test]
fn a_plain_http_stream_cut_by_the_old_agent_leaving_is_counted_and_the_client_s_later_calls_recorded_once() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-plain-cut", Transport::Plain);
    let flag = fs.flag();
    let mut first = Agent::start(&first_dir, &[flag.as_str(), "--handover-drain-secs", "1"]);
    let base = format!("http://api.openai.com:{}/v1", server.port);
    let body = serde_json::json!({"model": "slow-stream", "messages": [{"role": "user", "content": "slow"}],
        "stream": true, "stream_options": {"include_usage": true}});
    let mut work = calls(3, 0, 0.0, false);
    // Twenty chunks a second apart: the new agent's start and the old one's
    // drain of 1 s fall well inside it, on a slow host too.
    let mut slow = tokentap_e2e::calibrate::call("chat", body, 0, 0);
    slow["words"] = serde_json::json!(20);
    work.push(slow);
    let after = calls(40, 1000, 0.02, false);
    work.extend(after.iter().cloned());
    let client = spawn(py_workload(&dir, &certs, &base, "cut", &work));
    let pid = client.id();
    first.wait_records(&[pid], 3);
    wait_for("the slow stream to begin", Duration::from_secs(30), || {
        server.served().iter().any(|s| s["model"].as_str().is_some_and(|m| m.starts_with("slow-stream"))).then_some(())
    });
    let mut second = Agent::start(&second_dir, &[flag.as_str()]);
    assert!(first.stop().success());
    finish(client);
    second.wait_process_done(pid);
    assert!(second.stop().success());
    let (old, new) = (first.stats(), second.stats());
    let (by_old, by_new) = (first.records_of(&[pid]), second.records_of(&[pid]));
    let all: Vec<serde_json::Value> = by_old.iter().chain(&by_new).cloned().collect();
    let served = server.served();
    let prices = tokentap_event::PriceTable::shipped();
    for (r, s) in pair_with_served(&all, &served) {
        assert_matches_served(r, s, &prices);
    }
    let k = |s: &serde_json::Value, c: &str| s[c].as_u64().unwrap_or(0);
    let later = by_new.iter().filter(|r| r["request_model"] == "gpt-4o-mini").count();
    eprintln!(
        "plain stream cut at the leave: old agent {} records, new {} ({later} after the stream); old dropped at \
         exit {}, new joined midway {}, taken from the exited agent {}",
        by_old.len(),
        by_new.len(),
        k(&old, "dropped_at_exit"),
        k(&new, "joined_mid_stream"),
        k(&new, "kernel_handover_from_exited"),
    );
    assert!(all.iter().all(|r| r["request_model"] != "slow-stream"), "the cut stream is not recorded");
    assert!(k(&old, "dropped_at_exit") + k(&new, "joined_mid_stream") >= 1, "the cut stream is counted");
    assert_eq!(later, after.len(), "every call after the cut recorded by the new agent");
    none_of(&[&new], &["dropped_unanswered", "ignored_not_http", "decode_errors"]);
    assert_eq!(all.len(), work.len() - 1);
}

#[test]
fn uninstall_removes_the_pins_a_killed_agent_left() {
    let _g = serial();
    require_root();
    require_tool("bpftool");
    let dir = scratch("uninstall");
    let fs = BpfFs::mount(&dir);
    let pins = fs.pins().display().to_string();
    let mut agent = Agent::start(&dir, &["--handover-dir", pins.as_str()]);
    // SIGKILL: no clean exit, the pins stay (a crash, an OOM kill).
    agent.kill();
    assert!(fs.pins().join("CONN_OWNERS").exists(), "a killed agent leaves its pins");
    let ring =
        std::fs::read_dir(fs.pins()).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("ring-f"));
    assert!(ring, "and its ring buffer, for the agent after it to read");
    assert!(!ours_in_kernel().is_empty(), "the pinned maps hold kernel memory");
    // A map a later version pinned (a rollback ran this older agent last),
    // and another tool's pin in the same directory.
    let pin_map = |name: &str| {
        let path = fs.pins().join(name).display().to_string();
        let args = ["map", "create", &path, "type", "array", "key", "4", "value", "8", "entries", "1", "name", name];
        let out = Command::new("bpftool").args(args).output().unwrap();
        assert!(out.status.success(), "bpftool map create: {}", String::from_utf8_lossy(&out.stderr));
    };
    pin_map("A_LATER_VERSION");
    pin_map("other_tool");
    let out = Command::new(agent_bin()).args(["uninstall", "--handover-dir", pins.as_str()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("removed 12 pinned maps"), "{text}");
    assert!(text.contains("left other_tool: not a map tokentap pinned"), "{text}");
    assert!(!text.contains("still runs"), "the killed agent is not reported running: {text}");
    let left: Vec<String> =
        std::fs::read_dir(fs.pins()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["other_tool"], "the other tool's pin stays, and so does the directory holding it");
    std::fs::remove_file(fs.pins().join("other_tool")).unwrap();
    std::fs::remove_dir(fs.pins()).unwrap();
    let left = wait_for("tokentap's maps and programs gone", Duration::from_secs(10), || {
        let l = ours_in_kernel();
        l.is_empty().then_some(l)
    });
    assert!(left.is_empty());
    // Again: nothing to remove is not an error.
    let out = Command::new(agent_bin()).args(["uninstall", "--handover-dir", pins.as_str()]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 0 pinned maps"));
}

#[test]
fn an_http2_connection_changes_agents_with_its_state_and_calls_in_flight() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-h2", Transport::H2);
    let flag = fs.flag();
    let flag = [flag.as_str()];
    let mut first = Agent::start(&first_dir, &flag);
    // One HTTP/2 connection kept busy (as fast as the test server answers,
    // ~20 calls/s): a call is in flight most of the time. And a new HTTP/2
    // connection per call, each ending right after its call: one that the
    // new agent takes over may end before the old one has handed it on.
    // A 512 KB download after every other call on the busy one, over ~40 ms,
    // muted in the kernel after its first DATA frame: the switch likely falls
    // inside one, after reads the kernel walked without copying them, and the
    // new agent goes on with the kernel's walk of the connection, its count
    // moved on past them.
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let (mut work, fresh) = (calls(400, 0, 0.005, false), calls(200, 1000, 0.0, true));
    work.iter_mut().step_by(2).for_each(|c| {
        c["download"] = serde_json::json!(512 * 1024);
        c["download_pause_ms"] = serde_json::json!(5);
    });
    let client = |name: &str, work: &[serde_json::Value]| {
        let mut cmd = py_workload(&dir, &certs, &base, name, work);
        cmd.arg("--http2");
        spawn(cmd)
    };
    let (kept, each) = (client("h2", &work), client("h2-fresh", &fresh));
    let pids = [kept.id(), each.id()];
    first.wait_records(&pids[..1], 50);
    first.wait_records(&pids[1..], 10);
    let mut second = Agent::start(&second_dir, &flag);
    let t = Instant::now();
    assert!(first.stop().success());
    let stopped = t.elapsed();
    [kept, each].into_iter().for_each(finish);
    pids.iter().for_each(|p| drop(second.wait_process_done(*p)));
    assert!(second.stop().success());
    let total = work.len() + fresh.len();
    assert_eq!(server.served().len(), total);
    let (by_old, by_new) = priced_once(&server, (&first, &second), &pids);
    let (old, new) = (first.stats(), second.stats());
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    eprintln!(
        "handover over HTTP/2: old agent {by_old} records, new {by_new} of {total}; old stopped in {stopped:?}; \
         states sent {}, received {}, missing {}; walks taken over past reads not copied {}",
        n(&old, "handoff_states_sent"),
        n(&new, "handoff_states_received"),
        n(&new, "handoff_states_missing"),
        n(&new, "kernel_h2_walk_moved_on"),
    );
    assert!(by_old >= 50 && by_new >= 50, "both agents recorded calls");
    assert!(n(&old, "handoff_states_sent") >= 1 && n(&new, "handoff_states_received") >= 1, "{old}\n{new}");
    assert_eq!(n(&new, "handoff_states_missing") + n(&new, "handoff_states_unusable"), 0, "{new}");
    handed_on_before_detaching(&first);
    none_of(&[&old, &new], &["dropped_at_exit", "joined_mid_stream", "ignored_http2_joined", "ignored_desync"]);
    assert!(n(&old, "kernel_muted_reads") > 0 && n(&new, "kernel_muted_reads") > 0, "downloads muted: {old}\n{new}");
    assert_eq!(n(&old, "kernel_h2_walk_stopped") + n(&new, "kernel_h2_walk_stopped"), 0, "{old}\n{new}");
}

/// A download in flight on an HTTP/2 connection when the old agent leaves:
/// muted in the kernel, most of its reads not copied at all, so the decoding
/// state the old agent hands on is as of a read well before the switch. The
/// client is paused mid-download (SIGSTOP) while the old agent leaves, so
/// the switch falls there for certain. The new agent's kernel goes on with
/// the walk, its count moved on past the reads walked and not copied, and
/// the calls after the download, on the same connection, are the new
/// agent's: each recorded once, nothing garbled.
#[test]
fn an_http2_download_in_flight_when_the_old_agent_leaves_goes_on_in_the_new_one() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-h2-download", Transport::H2);
    let flag = fs.flag();
    let flag = [flag.as_str()];
    let mut first = Agent::start(&first_dir, &flag);
    // A call; once the new agent runs, a call and a 32 MB download in 64 KiB
    // pieces 10 ms apart (~5 s); then 20 calls; one connection.
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let go = dir.join("go");
    let mut work = calls(22, 0, 0.0, false);
    work[1]["wait_for"] = serde_json::json!(go);
    work[1]["download"] = serde_json::json!(32 << 20);
    work[1]["download_pause_ms"] = serde_json::json!(10);
    let mut cmd = py_workload(&dir, &certs, &base, "h2-download", &work);
    cmd.arg("--http2");
    let client = spawn(cmd);
    let pid = client.id();
    first.wait_records(&[pid], 1);
    let mut second = Agent::start(&second_dir, &flag);
    std::fs::write(&go, b"").unwrap();
    let muted = |a: &Agent| a.stats()["kernel_muted_reads"].as_u64().unwrap_or(0);
    tokentap_e2e::wait_for("the download muted in the old agent's kernel", Duration::from_secs(20), || {
        (muted(&first) > 20).then_some(())
    });
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill");
        assert!(ok.success(), "kill {sig}");
    };
    signal("-STOP");
    assert_eq!(server.served().len(), 2, "paused inside the download (the machine too slow for its ~5 s?)");
    assert!(first.stop().success());
    signal("-CONT");
    finish(client);
    drop(second.wait_process_done(pid));
    assert!(second.stop().success());
    let (by_old, by_new) = priced_once(&server, (&first, &second), &[pid]);
    let (old, new) = (first.stats(), second.stats());
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    eprintln!(
        "download across the switch: old agent {by_old} records, new {by_new}; reads muted: old {}, new {}; \
         walks moved on {}",
        muted(&first),
        muted(&second),
        n(&new, "kernel_h2_walk_moved_on")
    );
    assert_eq!((by_old, by_new), (2, 20), "the calls after the download are the new agent's");
    assert!(n(&new, "handoff_states_received") >= 1, "{new}");
    assert!(n(&new, "kernel_muted_reads") > 0, "the new agent's kernel went on muting: {new}");
    // The one connection walked, moved on unless the old agent's last read of
    // it was copied (one in ~16 crosses a mark): the model test in
    // agent/src/http/h2_mute_tests.rs tries every switch point.
    assert!(n(&new, "kernel_h2_walk_moved_on") <= 1, "{new}");
    none_of(&[&old, &new], &["dropped_at_exit", "joined_mid_stream", "ignored_http2_joined", "ignored_desync"]);
    assert_eq!(n(&old, "kernel_h2_walk_stopped") + n(&new, "kernel_h2_walk_stopped"), 0, "{old}\n{new}");
}

/// As the chart deploys it: both agents send to the collector through one
/// spool directory on the host. The collector is down across the upgrade, so
/// the old agent exits with batches unsent; the new one adopts them once the
/// old one is gone, and every call reaches ClickHouse once.
#[test]
fn an_upgrade_with_the_collector_down_delivers_every_call_once_through_the_shared_spool() {
    let _g = serial();
    require_root();
    let dir = scratch("handover-spool");
    let certs = Certs::generate(&dir);
    let server = Server::start(&dir, &certs);
    let ch = ClickHouse::start(&dir, "handover_spool");
    let mut collector = Collector::start(&dir, &ch);
    let fs = BpfFs::mount(&dir);
    let (spool, token) = (dir.join("spool"), dir.join("token"));
    std::fs::write(&token, &collector.token).unwrap();
    let args = [
        fs.flag(),
        format!("--output=collector:{}", collector.url),
        format!("--collector-token-file={}", token.display()),
        format!("--spool-dir={}", spool.display()),
        "--cluster-name=e2e".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (first_dir, second_dir) = agent_dirs(&dir);
    let mut first = Agent::start(&first_dir, &args);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let work = calls(600, 0, 0.008, false);
    let client = spawn(py_workload(&dir, &certs, &base, "spool", &work));
    let pid = client.id();
    first.wait_records(&[pid], 30);
    collector.kill();
    let mut second = Agent::start(&second_dir, &args);
    second.wait_records(&[pid], 20);
    assert!(first.stop().success());
    let old = first.stats();
    let left = old["collector_spool_batches"].as_u64().unwrap_or(0);
    assert!(left > 0, "the old agent exits with batches it could not send: {old}");
    finish(client);
    collector.restart();
    let total = work.len() as u64;
    let count = |sql: &str| ch.count(&sql.replace("PID", &pid.to_string()));
    wait_for("every call in ClickHouse", Duration::from_secs(90), || {
        (count("SELECT count() FROM llm_calls FINAL WHERE pid = PID") >= total).then_some(())
    });
    second.wait_delivered(pid);
    let new = second.stats();
    let log = std::fs::read_to_string(&second.stderr).unwrap_or_default();
    eprintln!(
        "handover with the collector down: old agent left {left} batches ({} records recorded), the new one adopted \
         them: {}",
        first.records_of(&[pid]).len(),
        log.lines().filter(|l| l.contains("adopted")).collect::<Vec<_>>().join(" | ")
    );
    assert!(log.contains("its batches adopted"), "the new agent adopted the old one's batches");
    assert_eq!(count("SELECT count() FROM llm_calls WHERE pid = PID"), total, "each call once, no batch sent twice");
    assert_eq!(new["collector_spool_dropped_records"], 0, "{new}");
    assert!(second.stop().success());
}

/// The old agent is killed (an OOM kill, a node drain gone wrong) while the
/// new one runs: the kernel sees it die and its connections go to the new
/// agent at their next call. A keep-alive HTTP/1.1 connection loses at most
/// the call in flight; an HTTP/2 one, with no state handed on, is joined
/// midway and counted.
#[test]
fn a_killed_agent_s_connections_go_to_its_successor_at_once() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-kill", Transport::Https);
    std::fs::create_dir_all(dir.join("h2")).unwrap();
    let h2 = Server::start_with(&dir.join("h2"), &certs, Transport::H2);
    let flag = fs.flag();
    let flag = [flag.as_str()];
    let mut first = Agent::start(&first_dir, &flag);
    let workload = |name: &str, port: u16, work: &[serde_json::Value], http2: bool| {
        let base = format!("https://api.openai.com:{port}/v1");
        let mut c = py_workload(&dir, &certs, &base, name, work);
        if http2 {
            c.arg("--http2");
        }
        spawn(c)
    };
    let (kept, multiplexed) = (calls(600, 0, 0.008, false), calls(150, 10_000, 0.02, false));
    let (a, b) = (workload("kept", server.port, &kept, false), workload("h2", h2.port, &multiplexed, true));
    let (pa, pb) = (a.id(), b.id());
    first.wait_records(&[pa], 20);
    first.wait_records(&[pb], 5);
    let mut second = Agent::start(&second_dir, &flag);
    first.kill();
    [a, b].into_iter().for_each(finish);
    second.wait_process_done(pa);
    second.wait_process_done(pb);
    assert!(second.stop().success());
    let prices = tokentap_event::PriceTable::shipped();
    let mut recorded = Vec::new();
    for (pid, srv) in [(pa, &server), (pb, &h2)] {
        let all: Vec<serde_json::Value> =
            first.records_of(&[pid]).into_iter().chain(second.records_of(&[pid])).collect();
        let served = srv.served();
        for (r, s) in pair_with_served(&all, &served) {
            assert_matches_served(r, s, &prices);
        }
        recorded.push(all.len());
    }
    let new = second.stats();
    let n = |k: &str| new[k].as_u64().unwrap_or(0);
    eprintln!(
        "old agent killed: keep-alive HTTP/1.1 {} of {}, HTTP/2 {} of {} recorded; the new agent took {} \
         connections from it, states missing {}, HTTP/2 joined midway {}",
        recorded[0],
        kept.len(),
        recorded[1],
        multiplexed.len(),
        n("kernel_handover_from_exited"),
        n("handoff_states_missing"),
        n("ignored_http2_joined")
    );
    assert!(n("kernel_handover_from_exited") >= 2, "both connections taken from the killed agent: {new}");
    assert!(recorded[0] + 1 >= kept.len(), "HTTP/1.1 loses at most the call in flight at the kill");
    // Killed, it handed nothing on: the HTTP/2 connection is joined midway,
    // counted, and its later calls are not decoded (none recorded twice):
    // from the first of its records the killed agent left unread, or else
    // from the new agent's first, with no state.
    assert!(n("ignored_http2_joined") >= 1, "{new}");
    assert!(n("handoff_states_missing") + n("handover_orphan_records") >= 1, "{new}");
    assert!(recorded[1] < multiplexed.len());
}

/// Send `sig` to process `pid`.
fn signal(pid: u32, sig: i32) {
    // SAFETY: a plain syscall on a child process of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill({pid}, {sig})");
}

#[test]
fn what_a_hung_agent_copied_and_never_read_is_recorded_by_the_agent_after_it_once_it_is_killed() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-hung", Transport::Https);
    let flag = fs.flag();
    let flag = [flag.as_str()];
    let mut first = Agent::start(&first_dir, &flag);
    let kept = calls(500, 0, 0.008, false);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let client = spawn(py_workload(&dir, &certs, &base, "kept", &kept));
    let pid = client.id();
    first.wait_records(&[pid], 20);
    // The old agent's reader hangs (stopped): its probes go on copying each
    // call into its ring buffer, which nobody reads. A new agent starts and
    // the keep-alive connection moves to it at a request; then the hung
    // agent is killed (a liveness probe, a grace period run out).
    signal(first.pid(), libc::SIGSTOP);
    let hung_at = server.served().len();
    wait_for("calls made while the old agent hangs", Duration::from_secs(30), || {
        (server.served().len() >= hung_at + 60).then_some(())
    });
    let mut second = Agent::start(&second_dir, &flag);
    first.kill();
    finish(client);
    second.wait_process_done(pid);
    assert!(second.stop().success());
    let by_old = first.records_of(&[pid]);
    let all: Vec<serde_json::Value> = by_old.iter().cloned().chain(second.records_of(&[pid])).collect();
    let prices = tokentap_event::PriceTable::shipped();
    for (r, s) in pair_with_served(&all, &server.served()) {
        assert_matches_served(r, s, &prices);
    }
    let new = second.stats();
    let n = |k: &str| new[k].as_u64().unwrap_or(0);
    eprintln!(
        "hung, then killed: {} of {} calls recorded, {} by the old agent; the new one read {} records from {} ring \
         it left, joined midway {}",
        all.len(),
        kept.len(),
        by_old.len(),
        n("handover_orphan_records"),
        n("handover_orphan_rings"),
        n("joined_mid_stream")
    );
    // Each call made while it hung is two records (request, response) at least.
    assert_eq!(n("handover_orphan_rings"), 1, "{new}");
    assert!(n("handover_orphan_records") >= 120, "{new}");
    assert_eq!(n("handover_orphan_records_unreadable"), 0);
    // The hung agent may have held one call half read, and one pass's
    // records decoded and not yet written, when it stopped.
    assert!(all.len() + 2 >= kept.len(), "{} of {} recorded", all.len(), kept.len());
    // The last agent took every pin with it, the ring it read too.
    assert!(!fs.pins().exists(), "pins removed by the last agent");
}

#[test]
fn a_jvm_s_calls_change_agents_at_a_request_boundary_none_lost_none_twice() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-java", Transport::Https);
    let flag = fs.flag();
    let first = Agent::start(&first_dir, &[flag.as_str()]);
    // java.net.http over HTTP/1.1 keep-alive, captured through JSSE by the Java
    // agent the first agent loads into the JVM; rounds of calls, half streamed.
    const ROUND: u32 = 10;
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let args = java::client_args(&[], &java::client_classes(), &base, &certs.ca, "h1", ROUND);
    let mut jvm = java::Jvm::start(with_provider_hosts(&dir, "java", &args));
    let pid = jvm.pid();
    java::wait_jvm_attached(&first, pid);
    let mut rounds = 1;
    assert_eq!(jvm.round()["calls"], ROUND);
    first.wait_records(&[pid], ROUND as usize);
    // The upgrade in the background while the JVM keeps calling: the new
    // agent finds the Java agent already loaded and probes its library; the
    // old one is stopped once the new one is ready.
    let switch = std::thread::spawn(move || {
        let second = Agent::start(&second_dir, &[flag.as_str()]);
        let mut first = first;
        let stopped = first.stop().success();
        (first, second, stopped)
    });
    while !switch.is_finished() {
        assert_eq!(jvm.round()["calls"], ROUND);
        rounds += 1;
    }
    let (first, second, stopped) = switch.join().expect("the switch");
    assert!(stopped, "the old agent exits cleanly");
    // Only the new agent now.
    for _ in 0..3 {
        assert_eq!(jvm.round()["calls"], ROUND);
        rounds += 1;
    }
    let (out, stderr) = jvm.go();
    assert_eq!(out["calls"], ROUND, "{stderr}");
    rounds += 1;
    second.wait_process_done(pid);
    let total = (rounds * ROUND) as usize;
    assert_eq!(server.served().len(), total);
    let prices = tokentap_event::PriceTable::shipped();
    let (by_old, by_new) = recorded_once(&server, (&first, &second), &[pid], |r, s| {
        assert_matches_served(r, s, &prices);
        assert_eq!(r["tls_library"], "java", "{r}");
    });
    eprintln!("handover, java: {rounds} rounds of {ROUND} calls; old agent {by_old}, new {by_new}");
    assert!(by_old > ROUND as usize && by_new >= 4 * ROUND as usize, "both agents recorded calls");
    assert!(java::log_lines(&second, "java agent attached", pid).is_empty(), "the Java agent loaded once");
    let (old, new) = (first.stats(), second.stats());
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    none_of(&[&old, &new], &["dropped_at_exit", "joined_mid_stream", "dropped_unanswered"]);
    // The test server's side of the connection, ignored by the old agent: its
    // verdict went with it, at once (the new agent holds its bytes meanwhile).
    assert!(n(&new, "handoff_states_received") >= 1 && n(&new, "handoff_states_missing") == 0, "{new}");
    handed_on_before_detaching(&first);
}

#[test]
fn websocket_sessions_change_agents_with_their_deflate_context_and_calls_in_flight() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-ws", Transport::Https);
    let flag = fs.flag();
    let flag = [flag.as_str()];
    let mut first = Agent::start(&first_dir, &flag);
    // Sessions of the Responses API over WebSocket, compressed with the
    // context kept (each message refers back into the ones before), one
    // response every ~20 ms for ~8 s: through the openai SDK and through the
    // websockets package, two connections each.
    let base = format!("https://api.openai.com:{}", server.port);
    let client = |mode: &str| {
        let args = ["--url-base", &base, "--api", "responses", mode, "--deflate", "on", "--calls", "300"];
        let more = ["--pause", "0.02", "--connections", "2", "--timeout", "120"];
        let all: Vec<String> =
            std::iter::once(workspace_root().join("tests/clients/ws_client.py").display().to_string())
                .chain(args.iter().chain(&more).map(|s| s.to_string()))
                .collect();
        let mut cmd = with_provider_hosts(&dir, "python3", &all);
        cmd.env("SSL_CERT_FILE", &certs.ca);
        spawn(cmd)
    };
    let (sdk, raw) = (client("--sdk"), client("--raw"));
    let pids = [sdk.id(), raw.id()];
    first.wait_records(&pids, 40);
    // The surge, with the sessions mid-way.
    let mut second = Agent::start(&second_dir, &flag);
    assert!(first.stop().success());
    let outs: Vec<String> = [sdk, raw]
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("client");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    let calls: usize = outs.iter().map(|o| o.lines().filter(|l| !l.trim().is_empty()).count()).sum();
    assert_eq!(calls, 4 * 300);
    for pid in pids {
        second.wait_process_done(pid);
    }
    assert!(second.stop().success());
    assert_eq!(server.served().len(), calls);
    let prices = tokentap_event::PriceTable::shipped();
    let (by_old, by_new) = recorded_once(&server, (&first, &second), &pids, |r, s| {
        assert_matches_served(r, s, &prices);
        assert_eq!(r["stream"], true, "{r}");
    });
    let (old, new) = (first.stats(), second.stats());
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    eprintln!(
        "handover, websocket: {calls} responses; old agent {by_old}, new {by_new}; states sent {}, received {}",
        n(&old, "handoff_states_sent"),
        n(&new, "handoff_states_received")
    );
    assert!(by_old >= 40 && by_new >= 40, "both agents recorded responses");
    // The four sessions (and the test server's side of them, ignored: its
    // verdict is handed on too), each taken up.
    assert!(n(&old, "handoff_states_sent") >= 4, "each session handed on: {old}");
    assert_eq!(n(&new, "handoff_states_received"), n(&old, "handoff_states_sent"), "and taken up: {new}");
    handed_on_before_detaching(&first);
    let lost = ["dropped_at_exit", "joined_mid_stream", "dropped_unanswered", "handoff_states_unusable"];
    none_of(&[&old, &new], &lost);
    none_of(&[&old, &new], &["ignored_websocket_malformed"]);
}

#[test]
fn an_agent_stopped_while_its_successor_starts_waits_for_it_none_lost_none_twice() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-early-stop", Transport::Https);
    let flag = fs.flag();
    let mut first = Agent::start(&first_dir, &[flag.as_str()]);
    // About 100 calls/s on one keep-alive connection for ~6 s.
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let kept = calls(600, 0, 0.008, false);
    let client = spawn(py_workload(&dir, &certs, &base, "kept", &kept));
    let pid = client.id();
    first.wait_records(&[pid], 50);
    // The new agent starts; the old one is stopped as soon as the new one
    // has registered, while it still attaches its probes (not ready: not
    // yet the one new connections go to).
    let second_log = second_dir.join("agent.stderr");
    let starting = std::thread::spawn(move || Agent::start(&second_dir, &[flag.as_str()]));
    wait_for("the new agent to register", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&second_log).unwrap_or_default();
        log.contains("another agent runs on this node").then_some(())
    });
    assert!(!starting.is_finished(), "stopped before the new agent was ready");
    assert!(first.stop().success());
    let mut second = starting.join().expect("the new agent");
    finish(client);
    second.wait_process_done(pid);
    assert!(second.stop().success());
    assert_eq!(server.served().len(), kept.len());
    let (by_old, by_new) = priced_once(&server, (&first, &second), &[pid]);
    let log = java::agent_log(&first);
    eprintln!("handover, stopped early: old agent {by_old}, new {by_new} of {}", kept.len());
    assert!(log.contains("waiting until it is ready to take over") && log.contains("handing over"), "{log}");
    assert!(by_new >= 20, "the new agent took the connection over");
    none_of(&[&first.stats(), &second.stats()], &["dropped_at_exit", "joined_mid_stream", "dropped_unanswered"]);
}

/// A connection that ends after the old agent handed its state on, but
/// before the new agent has read it: the kernel keeps the state for the new
/// agent (which holds the connection's bytes) and the new agent reads it at
/// the end. To make that order certain, the new agent is paused (SIGSTOP)
/// from before the old one leaves until after the client has closed its
/// connection; its probes copy meanwhile, into its ring buffer.
#[test]
fn a_connection_that_ends_before_the_new_agent_reads_its_state_keeps_it() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-h2-end", Transport::H2);
    let flag = fs.flag();
    let flag = [flag.as_str()];
    let mut first = Agent::start(&first_dir, &flag);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let work = calls(150, 0, 0.005, false);
    let mut cmd = py_workload(&dir, &certs, &base, "h2-end", &work);
    cmd.arg("--http2");
    let client = spawn(cmd);
    let pid = client.id();
    first.wait_records(&[pid], 20);
    let mut second = Agent::start(&second_dir, &flag);
    let signal = |sig: &str, agent: &Agent| {
        let ok = Command::new("kill").args([sig, &agent.pid().to_string()]).status().expect("kill");
        assert!(ok.success(), "kill {sig}");
    };
    signal("-STOP", &second);
    assert!(first.stop().success());
    let log = java::agent_log(&first);
    assert!(log.contains("decoding states handed on sent=") && !log.contains("handed on sent=0"), "{log}");
    // The client goes on with the new agent's probes, then closes.
    finish(client);
    signal("-CONT", &second);
    second.wait_process_done(pid);
    assert!(second.stop().success());
    assert_eq!(server.served().len(), work.len());
    let (by_old, by_new) = priced_once(&server, (&first, &second), &[pid]);
    let new = second.stats();
    let n = |k: &str| new[k].as_u64().unwrap_or(0);
    eprintln!(
        "ended before its state was read: old agent {by_old} records, new {by_new} of {}; received {}, missing {}",
        work.len(),
        n("handoff_states_received"),
        n("handoff_states_missing")
    );
    // The client's connection, and the test server's side (its verdict, ignored).
    assert!(n("handoff_states_received") >= 1, "{new}");
    assert_eq!(n("handoff_states_missing") + n("handoff_states_unusable"), 0, "{new}");
    assert!(by_new >= 20, "the new agent recorded the calls after the switch");
    none_of(&[&first.stats(), &new], &["dropped_at_exit", "joined_mid_stream", "ignored_http2_joined"]);
}
