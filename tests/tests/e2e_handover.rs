//! What an SRE upgrading the DaemonSet relies on: with `--handover-dir`, a new
//! agent started beside the old one takes over with no gap. Calls keep flowing
//! at a steady rate over a keep-alive connection and over a new connection
//! each; the old agent is stopped once the new one is ready (what a surge
//! rollout does), and every call is recorded exactly once across the two;
//! plaintext HTTP read at the socket syscalls, over keep-alive connections
//! opened before the new agent started; through the collector while it is
//! down. An old agent stopped before the new one is ready waits for it.
//! After the last agent, and after `uninstall` for a killed one, no pin, map or
//! program of tokentap is left in the kernel (bpftool). Connections that carry
//! decoding state (HTTP/2, WebSocket, a JVM's) are in `e2e_handover_state.rs`,
//! killed and hung agents in `e2e_handover_killed.rs`, the other capture
//! methods (Go, rustls, node, bun) and idle keep-alive connections in
//! `e2e_handover_methods.rs`.
use std::process::Command;
use std::time::{Duration, Instant};

use tokentap_e2e::upgrade::*;
use tokentap_e2e::*;

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
    // Past its start's bookkeeping: its gauge is then 1 again only because
    // another agent runs.
    let gauge = |s: &serde_json::Value| s["handover_overlap"].as_u64();
    first.wait_stats("the first agent's gauge showing it alone", |s| gauge(s) == Some(0));
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
        server.served().iter().any(|s| s["stream"] == true).then_some(())
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
    first.wait_stats("the old agent's gauge showing the overlap", |s| gauge(s) == Some(1));
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
    second.wait_stats("the new agent's gauge showing it alone", |s| gauge(s) == Some(0));
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
    none_of(&[&old, &new], &["dropped_at_exit", "joined_mid_stream", "dropped_unanswered", "dropped_at_handover"]);
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
    none_of(&[&old, &new], &["dropped_at_exit", "joined_mid_stream", "dropped_unanswered", "dropped_at_handover"]);
}

/// The old agent leaves (its drain of 1 s ran out) while a plaintext stream
/// of 20 s is in flight on a keep-alive connection the new agent found open
/// (adopted, left to the old agent): the old agent hands on the HTTP/1.1
/// exchange in flight, and the new one decodes the rest of the stream from
/// there and records the call, once; every later call of the client is
/// recorded once, by the new agent.
#[test]
fn a_plain_http_stream_in_flight_when_the_old_agent_leaves_is_recorded_once_by_the_new_one() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-plain-cut", Transport::Plain);
    let flag = fs.flag();
    let mut first = Agent::start(&first_dir, &[flag.as_str(), "--handover-drain-secs", "1"]);
    let base = format!("http://api.openai.com:{}/v1", server.port);
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}],
        "stream": true, "stream_options": {"include_usage": true}});
    let mut work = calls(3, 0, 0.0, false);
    // Twenty chunks a second apart: the new agent's start and the old one's
    // drain of 1 s fall well inside it, on a slow host too.
    let mut slow = tokentap_e2e::calibrate::call("chat", body, 0, 0);
    slow["words"] = serde_json::json!(20);
    slow["word_pause_ms"] = serde_json::json!(1000);
    work.push(slow);
    let after = calls(40, 1000, 0.02, false);
    work.extend(after.iter().cloned());
    let client = spawn(py_workload(&dir, &certs, &base, "cut", &work));
    let pid = client.id();
    first.wait_records(&[pid], 3);
    wait_for("the slow stream to begin", Duration::from_secs(30), || {
        server.served().iter().any(|s| s["stream"] == true).then_some(())
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
    let later = by_new.iter().filter(|r| r["stream"] == false && r["request_model"] == "gpt-4o-mini").count();
    eprintln!(
        "plain stream in flight at the leave: old agent {} records, new {} ({later} after the stream); states \
         handed on {}, received {}; taken from the exited agent {}",
        by_old.len(),
        by_new.len(),
        k(&old, "handoff_states_sent"),
        k(&new, "handoff_states_received"),
        k(&new, "kernel_handover_from_exited"),
    );
    assert_eq!(by_new.iter().filter(|r| r["stream"] == true).count(), 1, "the stream recorded by the new agent");
    assert!(by_old.iter().all(|r| r["stream"] == false), "and not by the old one");
    assert!(k(&old, "handoff_states_sent") >= 1 && k(&new, "handoff_states_received") >= 1, "{old}\n{new}");
    assert_eq!(later, after.len(), "every call after the stream recorded by the new agent");
    none_of(&[&old, &new], &LOSSES);
    none_of(&[&new], &["ignored_not_http", "decode_errors"]);
    assert_eq!(all.len(), work.len());
}

#[test]
fn uninstall_removes_the_pins_a_killed_agent_left() {
    let _g = serial();
    require_root();
    require_tool("bpftool");
    let dir = scratch("uninstall");
    let fs = BpfFs::mount(&dir);
    let pins = fs.pins().display().to_string();
    let uninstall = |more: &[&str]| {
        let out = Command::new(agent_bin()).args(["uninstall", "--handover-dir", pins.as_str()]).args(more).output();
        let out = out.unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    // While an agent runs: refused (the next upgrade finds it by its pins),
    // nothing removed; --force removes them, and says it still runs.
    let mut agent = Agent::start(&dir, &["--handover-dir", pins.as_str()]);
    let (ok, text) = uninstall(&[]);
    assert!(!ok, "{text}");
    assert!(text.contains(&format!("agent(s) [{}] still run", agent.pid())), "{text}");
    assert!(text.contains("--force") && text.contains("nothing was removed"), "{text}");
    assert!(fs.pins().join("AGENTS").exists() && fs.pins().join("CONN_OWNERS").exists());
    // From a PID namespace of its own (a pod without hostPID), whose /proc
    // shows no agent: it cannot tell, and removes nothing.
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(agent_bin())
        .args(["uninstall", "--handover-dir", pins.as_str()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cannot tell whether the agents registered here still run"), "{text}");
    assert!(text.contains("in a PID namespace of its own"), "{text}");
    assert!(fs.pins().join("AGENTS").exists() && fs.pins().join("CONN_OWNERS").exists(), "nothing removed");
    let (ok, text) = uninstall(&["--force"]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("agent {} still runs", agent.pid())), "{text}");
    assert!(!fs.pins().join("AGENTS").exists(), "{text}");
    // An agent started since pins its maps afresh; the first one, stopped
    // last, leaves them to it (they are not the maps it registered in).
    let dir2 = dir.join("second");
    std::fs::create_dir_all(&dir2).unwrap();
    let agent2 = Agent::start(&dir2, &["--handover-dir", pins.as_str()]);
    assert!(fs.pins().join("AGENTS").exists());
    assert!(agent.stop().success(), "an agent whose pins were removed under it exits cleanly");
    assert!(agent.all_output().contains("the handover pins are not this agent's any more"), "{}", agent.all_output());
    assert!(fs.pins().join("AGENTS").exists(), "the running agent's pins stay");
    let (ok, text) = uninstall(&[]);
    assert!(!ok && text.contains(&format!("agent(s) [{}] still run", agent2.pid())), "{text}");
    let mut agent = agent2;
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
    let (ok, text) = uninstall(&[]);
    assert!(ok, "a killed agent does not hold the pins: {text}");
    // Every map tokentap pins, the killed agent's ring and the later version's map.
    let removed = tokentap_agent::handover::PINNED.len() + 2;
    assert!(text.contains(&format!("removed {removed} pinned maps")), "{text}");
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
    // Again: nothing to remove is not an error, and says so.
    let (ok, text) = uninstall(&[]);
    assert!(ok && text.contains("nothing to remove: ") && text.contains("does not exist"), "{text}");
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
    none_of(
        &[&first.stats(), &second.stats()],
        &["dropped_at_exit", "joined_mid_stream", "dropped_unanswered", "dropped_at_handover"],
    );
}
