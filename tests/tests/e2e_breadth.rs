//! Breadth of capture, end to end: HTTP/2 (curl, httpx with many concurrent
//! streams, Go net/http over Go's own crypto/tls), the Gemini and Bedrock SDKs,
//! and plaintext HTTP to Ollama- and vLLM-style endpoints (socket syscalls),
//! also from thousands of short-lived processes at ~440 calls/s; a Go read
//! under way when the probes attach, counted.
//! Every call must become exactly one record with the served token counts.
//! Needs root (fails, never skips, without it).
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokentap_e2e::*;
use tokentap_event::PriceTable;

/// Records of `pid` paired with what the server served; all exact.
fn check_exact(env: &Env, pid: u32, n: usize) -> Vec<(Value, Value)> {
    env.agent.wait_records(&[pid], n);
    // The agent handled the client's exit: nothing more can arrive for these
    // calls, so a duplicate would be in the file now.
    env.agent.wait_process_done(pid);
    let records = env.agent.records_of(&[pid]);
    assert_eq!(records.len(), n, "one record per call: {records:#?}");
    let served = env.server.served();
    let prices = PriceTable::shipped();
    let pairs = pair_with_served(&records, &served);
    for (r, s) in &pairs {
        assert_matches_served(r, s, &prices);
        assert_eq!(r["pid"], pid, "{r}");
    }
    pairs.into_iter().map(|(r, s)| (r.clone(), s.clone())).collect()
}

/// The JSON line of a client's output that has `key`.
fn line_with(out: &str, key: &str) -> Value {
    out.lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(|v| !v[key].is_null()))
        .unwrap_or_else(|| panic!("no {key} line: {out}"))
}

fn coverage_of(stats: &Value, pid: u32) -> Value {
    stats["coverage"]
        .as_array()
        .and_then(|c| c.iter().find(|p| p["pid"] == pid).cloned())
        .unwrap_or_else(|| panic!("no coverage entry for pid {pid}: {stats}"))
}

#[test]
fn curl_http2_sync_and_stream() {
    let _g = serial();
    require_tool("curl");
    let env = Env::start("curl-h2", Transport::H2, &[]);
    let url = format!("{}/chat/completions", env.openai_base());
    let mut pids = Vec::new();
    for body in [
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
    ] {
        let args: Vec<String> = [
            "-sS",
            "--fail",
            "--http2",
            "--cacert",
            &env.certs.ca.display().to_string(),
            "-H",
            &format!("Authorization: Bearer {SECRET_KEY}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (pid, out) = run_client(with_provider_hosts(&env.dir, "curl", &args));
        assert_eq!(out.trim(), "2", "curl negotiated HTTP/2");
        pids.push(pid);
    }
    for pid in &pids {
        for (r, _) in check_exact(&env, *pid, 1) {
            assert_eq!(r["http_version"], "2", "{r}");
            assert_eq!(r["provider"], "openai");
            assert_eq!(r["server"], "api.openai.com");
            assert_eq!(r["tls_library"], "openssl");
        }
    }
    let stats = env.finish();
    // curl's and the server's TCP sockets were seen by the socket hooks and
    // rejected in the kernel (TLS bytes are not HTTP): no double count.
    assert!(stats["kernel_sockets_not_http"].as_u64() > Some(0), "{stats}");
}

#[test]
fn httpx_http2_many_concurrent_streams_on_one_connection() {
    let _g = serial();
    let env = Env::start("httpx-h2", Transport::H2, &[]);
    let (pid, out) = run_client(py_breadth(&env.dir, &env.certs, &env.openai_base(), "httpx_h2"));
    assert!(out.contains("\"calls\": 20"), "{out}");
    let pairs = check_exact(&env, pid, 20);
    let conns: HashSet<String> = pairs.iter().map(|(_, s)| s["conn"].to_string()).collect();
    assert_eq!(conns.len(), 1, "the 20 calls were multiplexed on one connection: {conns:?}");
    assert!(pairs.iter().all(|(r, _)| r["http_version"] == "2"));
    assert_eq!(pairs.iter().filter(|(r, _)| r["stream"] == true).count(), 10);
    let stats = env.finish();
    assert_eq!(stats["dropped_unanswered"], 0, "{stats}");
    let cov = coverage_of(&stats, pid);
    assert_eq!(cov["records"]["openssl"], 20, "{cov}");
}

#[test]
fn go_net_http_over_crypto_tls_with_and_without_symbols() {
    let _g = serial();
    let dir = scratch("go-build");
    let bins = [build_go_client(&dir, false), build_go_client(&dir, true)];
    for bin in &bins {
        // The entry probes sit on the prologue's stack-check jump, which the
        // kernel emulates, not on the single-stepped first instruction; Write
        // is copied there on the way in, with no probe on its single-stepped
        // `RET`s (placement.rs).
        let go = tokentap_agent::discovery::inspect(bin).expect("inspect").go.expect("a Go TLS program");
        let code = std::fs::read(bin).unwrap();
        for at in [go.write, go.read] {
            let op = code[at as usize];
            assert!(
                matches!(op, 0x70..=0x7f) || (op == 0x0f && matches!(code[at as usize + 1], 0x80..=0x8f)),
                "{op:#x}"
            );
        }
        // Read is copied at its one `call runtime.memmove` (emulated), with no
        // probe on its `RET`s either.
        let copy = go.read_copy.expect("Read's copy found") as usize;
        assert_eq!(code[copy], 0xe8, "a call rel32");
        assert!(go.write_once && go.write_rets.is_empty() && go.read_rets.is_empty(), "{go:?}");
    }
    let env = Env::start("go", Transport::H2, &[]);
    for bin in &bins {
        // A new executable is probed when it first runs; a process that makes its
        // calls within milliseconds of that first exec can beat the attach
        // (docs/troubleshooting.md). Run it until its file is probed, as for
        // any service that was running before. The warm-up exits at once, so
        // on a busy machine one run can itself beat the attach: run it again.
        let warm = vec!["-n".to_string(), "0".into(), "-base".into(), "x".into(), "-ca".into()];
        let warm = [warm, vec![env.certs.ca.display().to_string(), "-key".into(), "k".into()]].concat();
        let name = bin.file_name().unwrap().to_string_lossy().into_owned();
        wait_for(&format!("{name} probed"), Duration::from_secs(30), || {
            let log = std::fs::read_to_string(&env.agent.stderr).unwrap_or_default();
            if log.lines().any(|l| l.contains(&format!("{name} ")) && l.contains("\"go\"")) {
                return Some(());
            }
            run_client(with_provider_hosts(&env.dir, &bin.display().to_string(), &warm));
            None
        });
        let args: Vec<String> =
            ["-base", &env.openai_base(), "-ca", &env.certs.ca.display().to_string(), "-key", SECRET_KEY, "-n", "10"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let (pid, out) = run_client(with_provider_hosts(&env.dir, &bin.display().to_string(), &args));
        assert!(out.contains("\"proto\":\"HTTP/2.0\""), "{out}");
        let pairs = check_exact(&env, pid, 10);
        for (r, _) in &pairs {
            assert_eq!(r["tls_library"], "go_tls", "{r}");
            assert_eq!(r["http_version"], "2", "{r}");
            assert_eq!(r["provider"], "openai", "{r}");
        }
        assert_eq!(pairs.iter().filter(|(r, _)| r["stream"] == true).count(), 5);
    }
    let stats = env.finish();
    assert!(stats["targets_attached"].as_u64() >= Some(2), "both Go binaries probed: {stats}");
}

/// A TLS server that sends a response's head and half its body, then holds
/// the rest until `release` exists: the client's goroutine waits inside
/// `(*tls.Conn).Read` meanwhile.
const HOLDING_SERVER: &str = r#"
import os, socket, ssl, sys, time
cert, key, held, release = sys.argv[1:5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn = ctx.wrap_socket(srv.accept()[0], server_side=True)
req = b""
while b"\r\n\r\n" not in req:
    chunk = conn.recv(4096)
    if not chunk:
        sys.exit("the client closed before its request's end")
    req += chunk
conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"a" * 1000)
open(held, "w").close()
deadline = time.time() + 60
while not os.path.exists(release) and time.time() < deadline:
    time.sleep(0.02)
conn.sendall(b"b" * 1000)
conn.close()
"#;

#[test]
fn a_go_read_under_way_when_the_probes_attach_is_counted_unmatched() {
    let _g = serial();
    require_root();
    let dir = scratch("go-unmatched");
    let certs = Certs::generate(&dir);
    let go = build_go_client(&dir, false);
    let (held, release) = (dir.join("held"), dir.join("release"));
    let mut server = std::process::Command::new("python3")
        .args(["-c", HOLDING_SERVER])
        .args([&certs.cert, &certs.key, &held, &release])
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let mut port = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut port).expect("port");
    let url = format!("https://localhost:{}/x", port.trim());
    let client = std::process::Command::new(&go)
        .args(["-download", &url, "-times", "1", "-ca"])
        .arg(&certs.ca)
        .stdout(Stdio::piped())
        .spawn()
        .expect("go client");
    wait_for("the server to hold the body's second half", Duration::from_secs(30), || held.exists().then_some(()));
    // Every thread of the client asleep with the first half sent: the
    // goroutine reading the body is blocked inside Read, past its entry
    // probe's place, so the agent starting now never saw that call begin.
    let pid = client.id();
    wait_for("the Go client to wait for the rest", Duration::from_secs(30), || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let states: Vec<String> = tasks
            .flatten()
            .map(|t| std::fs::read_to_string(t.path().join("stat")).unwrap_or_default())
            .map(|stat| stat.rsplit(") ").next().unwrap_or("").chars().take(1).collect())
            .collect();
        (!states.is_empty() && states.iter().all(|s| s == "S")).then_some(())
    });
    let agent = Agent::start(&dir, &[]);
    agent.wait_attached("go_client ", "\"go\"", Duration::from_secs(30));
    // The stats file the agent writes next: no Go copy yet.
    let before = agent.stats_from_now();
    assert_eq!(before["kernel_go_calls_unmatched"], 0, "{before}");
    std::fs::write(&release, "").unwrap();
    let out = client.wait_with_output().expect("go client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"bytes\":2000"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(server.wait().expect("server").success());
    // The Read that returned the second half found no call: counted, not a
    // loss (the call began before the agent); once, the client gone.
    agent.wait_stat("kernel_go_calls_unmatched", 1);
    let after = agent.stats_from_now();
    assert_eq!(after["kernel_go_calls_unmatched"], 1, "{after}");
}

#[test]
fn gemini_sdk_sync_and_stream() {
    let _g = serial();
    let env = Env::start("gemini", Transport::Https, &[]);
    let base = format!("{}/", env.origin("generativelanguage.googleapis.com"));
    let (pid, _) = run_client(py_breadth(&env.dir, &env.certs, &base, "gemini"));
    let pairs = check_exact(&env, pid, 2);
    for (r, _) in &pairs {
        assert_eq!(r["provider"], "google", "{r}");
        assert_eq!(r["operation"], "generate_content", "{r}");
        assert_eq!(r["request_model"], "gemini-2.5-flash", "model from the path: {r}");
    }
    assert!(pairs.iter().any(|(r, _)| r["stream"] == true && r["ttft_ms"].as_f64().is_some()));
    // `?key=` style credentials never reach the record's path.
    assert!(pairs.iter().all(|(r, _)| !r["path"].as_str().unwrap_or("").contains('?')));
    env.finish();
}

#[test]
fn boto3_bedrock_converse_and_invoke_sync_and_streamed() {
    let _g = serial();
    let env = Env::start("bedrock", Transport::Https, &[]);
    let base = env.origin("bedrock-runtime.us-east-1.amazonaws.com");
    let (pid, _) = run_client(py_breadth(&env.dir, &env.certs, &base, "bedrock"));
    let pairs = check_exact(&env, pid, 4);
    let ops: HashSet<(String, bool)> =
        pairs.iter().map(|(r, _)| (r["operation"].as_str().unwrap_or("").to_owned(), r["stream"] == true)).collect();
    let want: HashSet<(String, bool)> = [("converse", false), ("converse", true), ("invoke", false), ("invoke", true)]
        .iter()
        .map(|(o, s)| (o.to_string(), *s))
        .collect();
    assert_eq!(ops, want);
    for (r, _) in &pairs {
        assert_eq!(r["provider"], "bedrock", "{r}");
        assert_eq!(r["request_model"], "anthropic.claude-3-5-haiku-20241022-v1:0", "{r}");
    }
    let sources: HashSet<&str> = pairs.iter().filter_map(|(r, _)| r["usage_source"].as_str()).collect();
    assert!(sources.contains("headers"), "InvokeModel counted from its headers: {sources:?}");
    env.finish();
}

#[test]
fn plaintext_ollama_and_vllm_endpoints_through_socket_syscalls() {
    let _g = serial();
    let env = Env::start("plain", Transport::Plain, &[]);
    let (pid, _) = run_client(py_breadth(&env.dir, &env.certs, &env.origin("127.0.0.1"), "ollama"));
    let pairs = check_exact(&env, pid, 2);
    for (r, _) in &pairs {
        assert_eq!(r["provider"], "ollama", "{r}");
        assert_eq!(r["tls_library"], Value::Null, "{r}");
        assert_eq!(r["cost_usd"], Value::Null, "self-hosted: no price, not zero: {r}");
    }
    assert!(pairs.iter().any(|(r, _)| r["stream"] == true && r["operation"] == "chat"));
    assert!(pairs.iter().any(|(r, _)| r["stream"] == false && r["operation"] == "generate"));
    let (pid2, _) = run_client(py_breadth(&env.dir, &env.certs, &env.local_base(), "vllm"));
    for (r, _) in check_exact(&env, pid2, 2) {
        assert_eq!(r["provider"], "openai_compatible", "{r}");
        assert_eq!(r["http_version"], "1.1", "{r}");
    }
    let stats = env.finish();
    assert_eq!(coverage_of(&stats, pid2)["records"]["socket"], 2, "{stats}");
}

/// The kernel's socket filter (a byte per fd of the process, set when a thread
/// connects, one byte for every fd above 62) must pass each call: 8 threads
/// connect at the same moment, round after round, on fds below 63 and then
/// above (the client holds 70 files open).
#[test]
fn plaintext_calls_from_threads_connecting_at_once_on_low_and_high_fds_are_each_recorded() {
    let _g = serial();
    let env = Env::start("plain-threads", Transport::Plain, &[]);
    let (pid, out) = run_client(py_breadth(&env.dir, &env.certs, &env.local_base(), "plain_threads"));
    let fds: Vec<u64> =
        line_with(&out, "fds")["fds"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
    assert!(fds.iter().any(|&fd| fd < 63) && fds.iter().any(|&fd| fd > 63), "both ranges used: {fds:?}");
    for (r, _) in check_exact(&env, pid, 80) {
        assert_eq!(r["provider"], "openai_compatible", "{r}");
    }
    let stats = env.finish();
    assert_eq!(coverage_of(&stats, pid)["records"]["socket"], 80, "{stats}");
}

/// The kernel's socket filter counts, per slot of processes (tgid modulo
/// 4,096) and fd, the processes that watch it; a process's exit takes away
/// its own counts. Another process of the client's slot connecting a socket
/// on the client's fd number and exiting between two of its calls must not
/// take the client's count with it: every call on the keep-alive connection
/// is recorded, those after the neighbour's exit too.
#[test]
fn plaintext_calls_after_a_process_of_the_same_slot_and_fd_exits_are_recorded() {
    let _g = serial();
    let env = Env::start("plain-slot", Transport::Plain, &[]);
    let (pid, out) = run_client(py_breadth(&env.dir, &env.certs, &env.local_base(), "plain_slot_neighbour"));
    let line = line_with(&out, "neighbour");
    let neighbour = line["neighbour"].as_u64().expect("a pid");
    assert_eq!(neighbour % 4096, u64::from(pid) % 4096, "{line}");
    assert_ne!(neighbour, u64::from(pid), "{line}");
    for (r, _) in check_exact(&env, pid, 6) {
        assert_eq!(r["provider"], "openai_compatible", "{r}");
    }
    let stats = env.finish();
    assert_eq!(coverage_of(&stats, pid)["records"]["socket"], 6, "{stats}");
}

/// Plaintext capture at load from many short-lived processes: 4,500 children
/// of one client, 8 at a time, each connecting a socket of its own, making
/// two calls and exiting at once (~500 calls/s without the agent here), and 8
/// anchors that make one call at the start and one after them all. Every process
/// connects on fd 3, and the pids pass one turn of the kernel's 4,096 slots
/// of processes: children fall in the anchors' slots, and their exits must
/// take away their own counts only. Every call is recorded once, by its process.
#[test]
fn plaintext_calls_of_thousands_of_short_lived_processes_are_each_recorded_once() {
    let _g = serial();
    let env = Env::start("plain-many", Transport::Plain, &[]);
    let (_, out) = run_client(py_breadth(&env.dir, &env.certs, &env.local_base(), "plain_many_processes"));
    let line = line_with(&out, "children");
    let pids =
        |k: &str| -> HashSet<u64> { line[k].as_array().into_iter().flatten().filter_map(Value::as_u64).collect() };
    let (children, anchors) = (pids("children"), pids("anchors"));
    assert_eq!((children.len(), anchors.len()), (4500, 8));
    let anchor_slots: HashSet<u64> = anchors.iter().map(|p| p % 4096).collect();
    let neighbours = children.iter().filter(|p| anchor_slots.contains(&(*p % 4096))).count();
    assert!(neighbours > 0, "no child fell in an anchor's slot");
    let served = env.server.served();
    assert_eq!(served.len(), 9016);
    let (stats, records) = env.finish_with_records();
    eprintln!("{} calls/s with the agent; {neighbours} children in an anchor's slot", line["calls_per_second"]);
    let ours = |r: &&Value| r["pid"].as_u64().is_some_and(|p| children.contains(&p) || anchors.contains(&p));
    let theirs: Vec<&Value> = records.iter().filter(ours).collect();
    let lost: Vec<(&String, &Value)> = stats
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| (k.starts_with("kernel_") || k.starts_with("dropped")) && v.as_u64().is_some_and(|n| n > 0))
        .collect();
    assert_eq!(theirs.len(), 9016, "one record per call; counters: {lost:?}");
    let by_id: HashMap<&str, &Value> = served.iter().filter_map(|s| Some((s["response_id"].as_str()?, s))).collect();
    let prices = PriceTable::shipped();
    let mut ids = HashSet::new();
    let mut per_process: HashMap<u64, usize> = HashMap::new();
    for r in theirs {
        let id = r["response_id"].as_str().unwrap_or_else(|| panic!("no response id: {r}"));
        let s = by_id.get(id).unwrap_or_else(|| panic!("record matches nothing served: {r}"));
        assert!(ids.insert(id), "two records for one call: {r}");
        assert_matches_served(r, s, &prices);
        *per_process.entry(r["pid"].as_u64().unwrap_or(0)).or_default() += 1;
    }
    assert!(per_process.values().all(|&n| n == 2), "two records a process");
}

/// `unshare` and `sh` before the agent: `script` runs in a mount namespace of
/// the agent's own, then execs it.
const fn in_mount_ns(script: &'static str) -> [&'static str; 8] {
    ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
}

/// A mount namespace whose /sys/kernel is an empty read-only tmpfs but for
/// btf, where no tracefs is found and none can be mounted.
const NO_TRACEFS: [&str; 8] = in_mount_ns(
    "set -e; b=$(mktemp -d); mount --bind /sys/kernel/btf \"$b\"; mount -t tmpfs -o size=1m tmpfs /sys/kernel; \
     mkdir /sys/kernel/btf; mount --move \"$b\" /sys/kernel/btf; rmdir \"$b\"; mount -o remount,ro /sys/kernel; exec \"$@\"",
);

/// As [`NO_TRACEFS`], but writable, with an empty `/sys/kernel/tracing`:
/// no tracefs is found, and the agent may mount one there.
const UNMOUNTED_TRACEFS: [&str; 8] = in_mount_ns(
    "set -e; b=$(mktemp -d); mount --bind /sys/kernel/btf \"$b\"; mount -t tmpfs -o size=1m tmpfs /sys/kernel; \
     mkdir /sys/kernel/btf /sys/kernel/tracing; mount --move \"$b\" /sys/kernel/btf; rmdir \"$b\"; exec \"$@\"",
);

/// As [`NO_TRACEFS`], but `/sys/kernel/tracing` holds the syscalls'
/// tracepoint ids the socket programs use, copied from a real tracefs, all
/// right but `sys_enter_read`'s: the exit programs attach to their ten
/// tracepoints, then `sock_enter`'s first attach fails. The fallback must
/// take down what was attached before it.
const BAD_ENTER_READ_ID: [&str; 8] = in_mount_ns(
    "set -e; t=$(mktemp -d); s=$(mktemp -d); mount -t tracefs nodev \"$t\"; \
     for c in read write readv writev sendto recvfrom sendmsg recvmsg connect close; do for k in enter exit; do \
     mkdir \"$s/sys_${k}_$c\"; cat \"$t/events/syscalls/sys_${k}_$c/id\" > \"$s/sys_${k}_$c/id\"; done; done; \
     umount \"$t\"; b=$(mktemp -d); mount --bind /sys/kernel/btf \"$b\"; mount -t tmpfs -o size=1m tmpfs /sys/kernel; \
     mkdir /sys/kernel/btf; mount --move \"$b\" /sys/kernel/btf; rmdir \"$b\"; mkdir -p /sys/kernel/tracing/events/syscalls; \
     cp -r \"$s\"/. /sys/kernel/tracing/events/syscalls/; echo 2147483647 > /sys/kernel/tracing/events/syscalls/sys_enter_read/id; \
     rm -r \"$s\"; rmdir \"$t\"; mount -o remount,ro /sys/kernel; exec \"$@\"",
);

/// Names of the eBPF programs process `pid` holds: the ids in its fds'
/// fdinfo, named by bpftool.
fn programs_of(pid: u32) -> HashSet<String> {
    let ids: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("the agent's fdinfo")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok()))
        .collect();
    let out = std::process::Command::new("bpftool").args(["-j", "prog", "show"]).output().expect("bpftool");
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    let mine = |p: &&Value| p["id"].as_u64().is_some_and(|id| ids.contains(&id));
    progs.as_array().into_iter().flatten().filter(mine).filter_map(|p| p["name"].as_str().map(str::to_owned)).collect()
}

/// One agent's plaintext capture: which programs it holds, calls recorded
/// exactly (the openai SDK's, and vectored calls after a non-blocking
/// connect), its log and final stats.
fn plaintext_run(env: Env) -> (HashSet<String>, String, Value) {
    let progs = programs_of(env.agent.pid());
    let (pid, _) = run_client(py_breadth(&env.dir, &env.certs, &env.local_base(), "vllm"));
    check_exact(&env, pid, 2);
    let (pid, _) = run_client(py_breadth(&env.dir, &env.certs, &env.local_base(), "plain_vectored"));
    check_exact(&env, pid, 4);
    let log = std::fs::read_to_string(&env.agent.stderr).unwrap();
    (progs, log, env.finish())
}

/// Socket capture runs on the raw sys_enter/sys_exit tracepoints (a program
/// on every syscall), or with `--syscall-hooks tracepoints` on the syscalls'
/// own (a program on the calls looked at alone), falling back to the raw
/// ones where tracefs can be neither found nor mounted, said in the log and
/// the stats. Calls are recorded exactly each way.
#[test]
fn plaintext_capture_runs_on_the_raw_tracepoints_or_on_the_syscalls_own() {
    let _g = serial();
    require_tool("bpftool");
    require_tool("unshare");
    let (progs, _, stats) = plaintext_run(Env::start("plain-raw", Transport::Plain, &[]));
    assert!(progs.contains("sys_enter") && progs.contains("sys_exit"), "the raw hooks: {progs:?}");
    assert!(!progs.contains("sock_enter"), "{progs:?}");
    assert_eq!(stats["socket_hooks_every_syscall"], 1, "{stats}");

    // Where no tracefs is mounted, the agent mounts one to read the
    // tracepoints' ids, and unmounts it once they are attached.
    let tracepoints = ["--syscall-hooks", "tracepoints"];
    let dir = scratch("plain-tp");
    let certs = Certs::generate(&dir);
    let server = Server::start_with(&dir, &certs, Transport::Plain);
    let agent = Agent::start_with(&dir, &tracepoints, &UNMOUNTED_TRACEFS);
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid())).unwrap();
    let (progs, log, stats) = plaintext_run(Env { dir, certs, server, agent, transport: Transport::Plain });
    for p in ["sock_enter", "sock_close", "sock_exit"] {
        assert!(progs.contains(p), "{p} loaded: {progs:?}");
    }
    assert!(!progs.contains("sys_enter") && !progs.contains("sys_exit"), "no raw hooks: {progs:?}");
    assert_eq!(stats["socket_hooks_every_syscall"], 0, "{stats}");
    assert!(log.contains("mounted tracefs") && log.contains("unmounted the tracefs mounted at start"), "{log}");
    // mountinfo: id, parent id, ..., mount point (a host's tracefs may lie
    // under the namespace's /sys/kernel, hidden).
    let fields: Vec<Vec<&str>> = mounts.lines().map(|l| l.split(' ').collect()).collect();
    let kernel = fields.iter().rev().find(|f| f.get(4) == Some(&"/sys/kernel")).expect("the namespace's /sys/kernel");
    let on_it = |f: &&Vec<&str>| f.get(1) == kernel.first() && f.get(4) == Some(&"/sys/kernel/tracing");
    assert!(!fields.iter().any(|f| on_it(&f)), "no tracefs left mounted while the agent runs: {mounts}");

    let dir = scratch("plain-no-tracefs");
    let certs = Certs::generate(&dir);
    let server = Server::start_with(&dir, &certs, Transport::Plain);
    let agent = Agent::start_with(&dir, &tracepoints, &NO_TRACEFS);
    let (progs, log, stats) = plaintext_run(Env { dir, certs, server, agent, transport: Transport::Plain });
    assert!(progs.contains("sys_enter") && progs.contains("sys_exit"), "the raw hooks: {progs:?}");
    assert!(!progs.contains("sock_enter"), "the tracepoints' programs unloaded: {progs:?}");
    assert!(log.contains("the raw sys_enter/sys_exit tracepoints are used instead"), "{log}");
    assert!(log.contains("no tracefs found, and mounting one at /sys/kernel/tracing failed"), "the cause: {log}");
    assert_eq!(stats["socket_hooks_every_syscall"], 1, "{stats}");
}

/// The fallback after a partial attach: the syscalls' tracepoints found, the
/// exit programs attached to theirs, then one attach refused. Every
/// tracepoint program goes, with its links (a link's fdinfo names its
/// program too), and the raw pair records the calls exactly.
#[test]
fn a_syscall_tracepoint_refused_midway_leaves_only_the_raw_hooks() {
    let _g = serial();
    require_tool("bpftool");
    require_tool("unshare");
    let dir = scratch("plain-tp-partial");
    let certs = Certs::generate(&dir);
    let server = Server::start_with(&dir, &certs, Transport::Plain);
    let agent = Agent::start_with(&dir, &["--syscall-hooks", "tracepoints"], &BAD_ENTER_READ_ID);
    let (progs, log, stats) = plaintext_run(Env { dir, certs, server, agent, transport: Transport::Plain });
    assert!(progs.contains("sys_enter") && progs.contains("sys_exit"), "the raw hooks: {progs:?}");
    for p in ["sock_enter", "sock_close", "sock_exit"] {
        assert!(!progs.contains(p), "{p} and its links gone: {progs:?}");
    }
    let warning = log.lines().find(|l| l.contains("the raw sys_enter/sys_exit tracepoints are used instead"));
    let warning = warning.unwrap_or_else(|| panic!("no fallback warning: {log}"));
    assert!(warning.contains("eBPF program sock_enter"), "the cause names the program refused: {warning}");
    assert!(!log.contains("mounted tracefs"), "the namespace's tracefs was used: {log}");
    assert_eq!(stats["socket_hooks_every_syscall"], 1, "{stats}");
}

#[test]
fn plaintext_capture_can_be_turned_off() {
    let _g = serial();
    let env = Env::start("plain-off", Transport::Plain, &["--no-socket-capture"]);
    let (pid, _) = run_client(py_breadth(&env.dir, &env.certs, &env.local_base(), "vllm"));
    // The agent stops after the client exited: its shutdown drains every
    // event of the client, so any record of it would be written by then.
    let (stats, records) = env.finish_with_records();
    assert!(records.iter().all(|r| r["pid"] != pid), "{records:?}");
    assert_eq!(stats["kernel_sockets_not_http"], 0, "no socket hooks attached: {stats}");
}

#[test]
fn http2_connection_opened_before_the_agent_is_skipped_and_counted() {
    let _g = serial();
    require_root();
    let dir = scratch("h2-joined");
    let certs = Certs::generate(&dir);
    let server = Server::start_with(&dir, &certs, Transport::H2);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    // The client opens its connection and makes a call before the agent runs.
    let mut client = py_breadth(&dir, &certs, &base, "h2_joined")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("client");
    let mut lines = BufReader::new(client.stdout.take().expect("stdout")).lines();
    let ready = lines.next().expect("client ready line").expect("read");
    assert!(ready.contains("ready"), "{ready}");
    let pid = client.id();
    let agent = Agent::start(&dir, &[]);
    // Three more calls on the same (already open) HTTP/2 connection.
    writeln!(client.stdin.take().expect("stdin")).expect("go");
    assert!(client.wait().expect("client").success());
    agent.wait_stat("ignored_http2_joined", 1);
    // The client's exit handled: no record of it can still come.
    let stats = agent.wait_process_done(pid);
    // HPACK state unknown: nothing is guessed, the blind spot is reported.
    assert!(agent.records_of(&[pid]).is_empty(), "{:?}", agent.records_of(&[pid]));
    let cov = coverage_of(&stats, pid);
    assert!(cov["not_decoded"]["http2_joined"].as_u64() >= Some(1), "{cov}");
    assert!(std::fs::read_to_string(&agent.stderr).unwrap_or_default().contains("http2_joined"));
    // The four calls were made (one before the agent started).
    assert_eq!(server.served().len(), 4);
}
