//! Upgrades of connections whose decoding has state: over HTTP/2 (a busy
//! connection, a new connection per call, a download in flight, one that ends
//! around the switch) connections change agents with their HPACK tables and
//! partial frames; WebSocket sessions (the Responses API, compressed) with
//! their framing, deflate context and calls in flight; a JVM's calls,
//! captured through the Java agent, at a request boundary; and busy HTTP/1.1
//! connections left without a drain, with their exchanges' states (calls a
//! client is blocked in across the upgrade: `e2e_handover_blocked`). Each
//! call is recorded exactly once across the two agents.
use std::process::Command;
use std::time::{Duration, Instant};

use tokentap_e2e::upgrade::*;
use tokentap_e2e::*;

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
    none_of(&[&old, &new], &LOSSES);
    none_of(&[&old, &new], &["ignored_http2_joined", "ignored_desync"]);
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
    none_of(&[&old, &new], &LOSSES);
    none_of(&[&old, &new], &["ignored_http2_joined", "ignored_desync"]);
    assert_eq!(n(&old, "kernel_h2_walk_stopped") + n(&new, "kernel_h2_walk_stopped"), 0, "{old}\n{new}");
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
    none_of(&[&old, &new], &["dropped_at_exit", "joined_mid_stream", "dropped_unanswered", "dropped_at_handover"]);
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
    let lost = [
        "dropped_at_exit",
        "joined_mid_stream",
        "dropped_unanswered",
        "dropped_at_handover",
        "handoff_states_unusable",
    ];
    none_of(&[&old, &new], &lost);
    none_of(&[&old, &new], &["ignored_websocket_malformed"]);
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
    none_of(&[&first.stats(), &new], &LOSSES);
    none_of(&[&first.stats(), &new], &["ignored_http2_joined"]);
}

/// No drain (`--handover-drain-secs 0`): the old agent leaves at once, with
/// an HTTP/1.1 keep-alive connection busy at ~100 calls/s (a call in flight
/// most of the time), a new connection per call beside it, and a stream of
/// several seconds in flight. Each connection amid an exchange is handed on
/// with its state, and every call is recorded exactly once, priced as served.
#[test]
fn busy_http1_connections_left_without_a_drain_hand_their_calls_in_flight_on() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-h1-busy", Transport::Https);
    let flag = fs.flag();
    let mut first = Agent::start(&first_dir, &[flag.as_str(), "--handover-drain-secs", "0"]);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let (kept, fresh) = (calls(800, 0, 0.008, false), calls(200, 100_000, 0.03, true));
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}],
        "stream": true, "stream_options": {"include_usage": true}});
    let mut slow = tokentap_e2e::calibrate::call("chat", body, 0, 0);
    (slow["words"], slow["word_pause_ms"]) = (serde_json::json!(8), serde_json::json!(1000));
    let clients: Vec<_> = [("kept", kept), ("fresh", fresh), ("slow", vec![slow])]
        .iter()
        .map(|(name, work)| spawn(py_workload(&dir, &certs, &base, name, work)))
        .collect();
    let pids: Vec<u32> = clients.iter().map(|c| c.id()).collect();
    first.wait_records(&pids, 50);
    wait_for("the slow stream to begin", Duration::from_secs(30), || {
        server.served().iter().any(|s| s["stream"] == true).then_some(())
    });
    let mut second = Agent::start(&second_dir, &[flag.as_str()]);
    assert!(first.stop().success());
    clients.into_iter().for_each(finish);
    for &pid in &pids {
        second.wait_process_done(pid);
    }
    assert!(second.stop().success());
    let (by_old, by_new) = priced_once(&server, (&first, &second), &pids);
    let (old, new) = (first.stats(), second.stats());
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    eprintln!(
        "no drain: old agent {by_old} records, new {by_new} of {}; states handed on {}, received {}",
        server.served().len(),
        n(&old, "handoff_states_sent"),
        n(&new, "handoff_states_received"),
    );
    assert!(n(&old, "handoff_states_sent") >= 1 && n(&new, "handoff_states_received") >= 1, "{old}\n{new}");
    assert!(by_new >= 20, "the new agent recorded the calls after the switch");
    none_of(&[&old, &new], &LOSSES);
}
