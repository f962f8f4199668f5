//! Calls a client is blocked in across a whole upgrade: an answer the server
//! gives only after the old agent left (the client blocked in its read), and
//! a request body larger than the sockets' buffers that the server reads only
//! then (the client blocked in its write), over TLS and plaintext HTTP, with
//! and without the SDK's timeout. Each call is recorded exactly once across
//! the two agents.
use std::time::Duration;

use tokentap_e2e::upgrade::*;
use tokentap_e2e::*;

/// Two synchronous clients (the openai SDK over httpx) wait for answers that
/// come only after the whole upgrade: the old agent's drain of 1 s runs out,
/// it leaves, hands on each HTTP/1.1 exchange in flight and exits, and only
/// then does the server answer. One client has the SDK's timeout: Python's
/// `ssl` waits in `poll`, and reads the answer with an `SSL_read_ex` begun
/// under the new agent, which decodes on from the state and records the
/// call, once. The other has no timeout (as `requests` without one): it
/// blocks inside an `SSL_read_ex` begun under the old agent, whose return a
/// perf-event uretprobe of the new agent's would not run for (Linux 6.12 on:
/// it runs for the calls whose entry it saw); the new agent's return-only
/// `uprobe_multi` link runs for it, finds the call's arguments in the map the
/// agents share, and records the answer, once. Four
/// more have no timeout either, over plaintext HTTP: each blocks in a `recvfrom`
/// begun under the old agent, which the new one finds at its start
/// (`/proc/PID/task/TID/syscall`) and hands to its socket programs, whose
/// `sys_exit` runs for every syscall: the new agent records those calls.
/// Every other call is recorded once.
#[test]
fn calls_answered_after_the_whole_upgrade_are_recorded_by_the_new_agent() {
    answered_after_the_upgrade("handover-held", "raw", 4, "auto");
}

/// The same with the new agent's socket programs behind the syscalls' own
/// tracepoints, whose exit records carry the syscall's number but no fd.
#[test]
fn a_blocked_plaintext_read_is_recorded_with_the_syscalls_own_tracepoints_too() {
    answered_after_the_upgrade("handover-held-tp", "tracepoints", 1, "auto");
}

/// The new agent on perf-event uretprobes (`--return-probes uretprobe`, as
/// on a kernel without `uprobe_multi`): on Linux 6.12 and later the blocked
/// TLS read's return runs only the old agent's probe, which has left, so its
/// answer is copied by no agent: counted (`dropped_at_handover`), never
/// recorded wrong; the other calls are recorded once. (Before 6.12 the
/// kernel runs every return probe there, and the new agent records it.)
#[test]
fn with_perf_event_uretprobes_a_tls_read_blocked_across_the_upgrade_is_counted() {
    answered_after_the_upgrade("handover-held-uret", "raw", 0, "uretprobe");
}

/// `plain_clients`: how many plaintext clients with no timeout; `returns`:
/// the new agent's `--return-probes`.
fn answered_after_the_upgrade(name: &str, hooks: &str, plain_clients: u64, returns: &str) {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } = Upgrade::new(name, Transport::Https);
    let flag = fs.flag();
    let mut first = Agent::start(&first_dir, &[flag.as_str(), "--handover-drain-secs", "1"]);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    // Calls numbered from `from`: the held one's input is 100 + from + 3.
    let work = |from: u64| {
        let mut w = calls(3, from, 0.0, false);
        let mut held = calls(1, from + 3, 0.0, false).remove(0);
        held["hold_until"] = serde_json::json!(dir.join(format!("answer{from}")).display().to_string());
        w.push(held);
        w.extend(calls(10, from + 4, 0.02, false));
        w
    };
    std::fs::create_dir_all(dir.join("plain")).unwrap();
    let plain = Server::start_with(&dir.join("plain"), &certs, Transport::Plain);
    let plain_base = format!("http://api.openai.com:{}/v1", plain.port);
    // Clients numbered by `from` (0 polling, 100 blocking on TLS, 200 on
    // are blocking on plaintext): each made its own process, as a pool of
    // workers blocked on a slow self-hosted model.
    let froms: Vec<u64> = (0..2 + plain_clients).map(|i| 100 * i).collect();
    let works: Vec<Vec<serde_json::Value>> = froms.iter().map(|&from| work(from)).collect();
    let clients: Vec<_> = froms
        .iter()
        .zip(&works)
        .map(|(&from, w)| {
            let base = if from >= 200 { &plain_base } else { &base };
            let mut c = py_workload(&dir, &certs, base, &format!("client{from}"), w);
            if from > 0 {
                c.arg("--no-timeout");
            }
            spawn(c)
        })
        .collect();
    let pids: Vec<u32> = clients.iter().map(|c| c.id()).collect();
    first.wait_records(&pids, 3 * pids.len());
    wait_for("the held calls to reach the servers", Duration::from_secs(30), || {
        froms.iter().all(|from| dir.join(format!("answer{from}.held")).exists()).then_some(())
    });
    let mut second = Agent::start(&second_dir, &[flag.as_str(), "--syscall-hooks", hooks, "--return-probes", returns]);
    assert!(first.stop().success());
    for from in &froms {
        std::fs::write(dir.join(format!("answer{from}")), b"").expect("answer file");
    }
    let Outcome { old, new, by_old, by_new, served } =
        after_the_upgrade(clients, &pids, (&first, &mut second), &[&server, &plain]);
    assert_eq!(served.len(), works.iter().map(Vec::len).sum::<usize>());
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    // The held call's input: 100 + from + 3.
    let held = |from: u64| by_new.iter().filter(|r| r["input_tokens"] == 103 + from).count();
    let plain_held: Vec<usize> = froms[2..].iter().map(|&from| held(from)).collect();
    eprintln!(
        "answered after the upgrade: old agent {} records, new {} of {}; states handed on {}, received {}; held \
         calls recorded: polling {}, blocking {} (dropped_at_handover {}), blocking over plaintext {plain_held:?} \
         (reads adopted at start {})",
        by_old.len(),
        by_new.len(),
        served.len(),
        n(&old, "handoff_states_sent"),
        n(&new, "handoff_states_received"),
        held(0),
        held(100),
        n(&new, "dropped_at_handover"),
        n(&new, "reads_adopted_at_start"),
    );
    assert_eq!(n(&new, "socket_hooks_every_syscall"), u64::from(hooks == "raw"), "--syscall-hooks {hooks}: {new}");
    assert_eq!(by_old.len(), 3 * pids.len(), "each client's first three calls, by the old agent");
    assert_eq!(held(0), 1, "the polling client's held call, by the new agent");
    // `uprobe_multi` from Linux 6.6; a perf-event uretprobe runs only for
    // the calls whose entry it saw from 6.12.
    let multi = returns == "auto" && kernel_at_least(6, 6);
    assert_eq!(n(&new, "return_probes_multi"), u64::from(multi), "--return-probes {returns}: {new}");
    let blocked = (held(100), n(&new, "dropped_at_handover"), n(&new, "dropped_unanswered"));
    let copied = multi || !kernel_at_least(6, 12);
    if copied {
        assert_eq!(blocked, (1, 0, 0), "the blocked TLS read's answer, by the new agent: {new}");
    } else {
        assert_eq!(blocked, (0, 1, 0), "the blocked TLS read's answer: counted as the upgrade's: {new}");
    }
    assert!(plain_held.iter().all(|&h| h == 1), "each blocked plaintext read's answer, by the new agent");
    assert!(n(&new, "reads_adopted_at_start") > plain_clients, "the blocked reads found at start: {new}");
    assert_eq!(by_old.len() + by_new.len(), served.len() - usize::from(!copied), "every other call recorded once");
    let states = 2 + plain_clients;
    assert!(n(&old, "handoff_states_sent") >= states && n(&new, "handoff_states_received") >= states, "{old}\n{new}");
    none_of(&[&old, &new], &["dropped_at_exit", "joined_mid_stream", "handoff_states_missing"]);
}

/// Bytes added to a held call's body: more than the sockets' buffers hold
/// (the client's send buffer and the server's receive buffer), so that the
/// client is still writing when the server stops reading.
const PAD: u64 = 8 << 20;

/// Four synchronous clients (the openai SDK over httpx, a process each),
/// over TLS and over plaintext HTTP, each with the SDK's timeout and with
/// none, send a fourth call whose body (8 MiB) the server reads only after
/// the whole upgrade: the old agent copies the call's head, its drain of 1 s
/// runs out, it leaves with the exchange's state handed on and exits, and
/// only then does the server read on. With the timeout the client waits in
/// `poll` and writes the rest of the body with calls begun under the new
/// agent. With none it is blocked inside one write begun under the old
/// agent: over TLS an `SSL_write_ex`, whose return the new agent's
/// `uprobe_multi` link copies with the arguments in the map the agents
/// share; over plaintext a `sendto`, which the new agent finds at its start
/// (`/proc/PID/task/TID/syscall`, `writes_adopted_at_start`) and hands to its
/// socket programs. Every call is recorded once, the held ones by the new
/// agent, priced as served.
#[test]
fn request_bodies_a_client_is_blocked_writing_across_the_upgrade_are_recorded() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-held-body", Transport::Https);
    let flag = fs.flag();
    // A ring buffer raised for uploads of megabytes (`kernel_ring_full` in
    // docs/operations.md): a TLS write of 8 MiB is copied at its return at
    // once, and once in CI the debug build's default 16 MiB filled with it
    // (every LLM call recorded, 8 chunks counted lost).
    let ring = "--ring-buffer-bytes=67108864";
    let mut first = Agent::start(&first_dir, &[flag.as_str(), ring, "--handover-drain-secs", "1"]);
    std::fs::create_dir_all(dir.join("plain")).unwrap();
    let plain = Server::start_with(&dir.join("plain"), &certs, Transport::Plain);
    let tls_base = format!("https://api.openai.com:{}/v1", server.port);
    let plain_base = format!("http://api.openai.com:{}/v1", plain.port);
    // Clients numbered by `from` (the held call's input is 100 + from + 3):
    // (from, over plaintext, with no timeout).
    let kinds = [(0, false, false), (100, false, true), (200, true, false), (300, true, true)];
    let work = |from: u64| {
        let mut w = calls(3, from, 0.0, false);
        let mut held = calls(1, from + 3, 0.0, false).remove(0);
        held["hold_body"] = serde_json::json!(dir.join(format!("body{from}")).display().to_string());
        held["pad"] = serde_json::json!(PAD);
        w.push(held);
        w.extend(calls(10, from + 4, 0.02, false));
        w
    };
    let works: Vec<Vec<serde_json::Value>> = kinds.iter().map(|&(from, ..)| work(from)).collect();
    let clients: Vec<_> = kinds
        .iter()
        .zip(&works)
        .map(|(&(from, plaintext, no_timeout), w)| {
            let base = if plaintext { &plain_base } else { &tls_base };
            let mut c = py_workload(&dir, &certs, base, &format!("client{from}"), w);
            if no_timeout {
                c.arg("--no-timeout");
            }
            spawn(c)
        })
        .collect();
    let pids: Vec<u32> = clients.iter().map(|c| c.id()).collect();
    first.wait_records(&pids, 3 * pids.len());
    wait_for("the held bodies' heads to reach the servers", Duration::from_secs(30), || {
        kinds.iter().all(|(from, ..)| dir.join(format!("body{from}.held")).exists()).then_some(())
    });
    // The clients with no timeout inside their write (a full socket buffer),
    // so that the new agent meets a write begun before it.
    let blocking: Vec<u32> =
        kinds.iter().zip(&pids).filter(|((.., no_timeout), _)| *no_timeout).map(|(_, &p)| p).collect();
    wait_for("the clients with no timeout to block in a write", Duration::from_secs(30), || {
        blocking.iter().all(|&pid| in_a_write(pid)).then_some(())
    });
    let mut second = Agent::start(&second_dir, &[flag.as_str(), ring]);
    assert!(first.stop().success());
    // One body at a time, each read by the new agent before the next: 8 MiB
    // copied in one call each, not 32 MiB at once into the agent's 16 MiB
    // ring buffer.
    for (from, ..) in kinds {
        std::fs::write(dir.join(format!("body{from}")), b"").expect("body file");
        wait_for("the held call to be recorded", Duration::from_secs(60), || {
            second.records_of(&pids).iter().any(|r| r["input_tokens"] == 103 + from).then_some(())
        });
    }
    let Outcome { old, new, by_old, by_new, served } =
        after_the_upgrade(clients, &pids, (&first, &mut second), &[&server, &plain]);
    assert_eq!(served.len(), works.iter().map(Vec::len).sum::<usize>());
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    let held: Vec<usize> =
        kinds.iter().map(|(from, ..)| by_new.iter().filter(|r| r["input_tokens"] == 103 + from).count()).collect();
    eprintln!(
        "bodies written after the upgrade: old agent {} records, new {} of {}; states handed on {}, received {}; \
         held calls recorded by the new agent (TLS polling, TLS blocking, plaintext polling, plaintext blocking) \
         {held:?}; writes adopted at start {}",
        by_old.len(),
        by_new.len(),
        served.len(),
        n(&old, "handoff_states_sent"),
        n(&new, "handoff_states_received"),
        n(&new, "writes_adopted_at_start"),
    );
    assert_eq!(by_old.len(), 3 * pids.len(), "each client's first three calls, by the old agent");
    // Over plaintext with a timeout the old agent copied the megabytes sent
    // before the buffers filled: its state, over the 1 MiB a state held
    // before, is handed on whole.
    assert_eq!(held, [1, 1, 1, 1], "the held calls (TLS polling, TLS blocking, plaintext polling, plaintext blocking)");
    assert_eq!(by_old.len() + by_new.len(), served.len(), "every call recorded once");
    // Both blocked writes: the plaintext one's bytes copied from there, the
    // TLS one's (ciphertext) given up as at any first call.
    assert!(n(&new, "writes_adopted_at_start") >= 2, "the blocked writes found at start: {new}");
    assert!(n(&old, "handoff_states_sent") >= 3 && n(&new, "handoff_states_received") >= 3, "{old}\n{new}");
    none_of(&[&old, &new], &["dropped_unanswered", "dropped_at_handover", "dropped_at_exit", "kernel_ring_full"]);
    none_of(&[&old, &new], &["handoff_states_not_sent", "joined_mid_stream", "handoff_states_missing"]);
}

/// A Go client (net/http over crypto/tls, one keep-alive connection) sends
/// a fourth call whose body of 8 MiB net/http writes 4 KiB at a time, which
/// the server reads only after the whole upgrade. The old agent copied the
/// ~4 MiB written before the buffers filled: its decoding state, over the
/// 1 MiB a state held before (that call was then counted at its exit, and the
/// new agent joined the connection inside the body: see the pipeline's unit
/// tests of a body in many calls joined midway), is handed on whole. The new
/// agent decodes the ~1,000 writes left from it and records that call and
/// the later ones, priced as served.
#[test]
fn a_body_written_in_many_calls_across_the_upgrade_is_recorded_with_the_connection_s_later_calls() {
    let _g = serial();
    require_root();
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-held-go", Transport::Https);
    let flag = fs.flag();
    let go = build_go_client(&dir, false).display().to_string();
    let mut first = Agent::start(&first_dir, &[flag.as_str(), "--handover-drain-secs", "1"]);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let args = ["-base", &base, "-ca", &certs.ca.display().to_string(), "-key", SECRET_KEY, "-each-line"];
    let mut client = with_provider_hosts(&dir, &go, &args.map(String::from))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("go client");
    let pid = client.id();
    first.wait_attached("go_client ", "\"go\"", Duration::from_secs(30));
    let mut stdin = client.stdin.take().expect("stdin");
    let mut line = |l: &str| std::io::Write::write_all(&mut stdin, format!("{l}\n").as_bytes()).expect("a line");
    (0..3).for_each(|_| line("call"));
    first.wait_records(&[pid], 3);
    let held = dir.join("body");
    line(&format!("hold {}", held.display()));
    wait_for("the held body's head to reach the server", Duration::from_secs(30), || {
        dir.join("body.held").exists().then_some(())
    });
    // Past the 1 MiB a state held before: the buffers filled with the body.
    wait_for("the old agent to copy megabytes of the body", Duration::from_secs(30), || {
        (first.stats()["bytes"].as_u64().unwrap_or(0) > 2 << 20).then_some(())
    });
    let mut second = Agent::start(&second_dir, &[flag.as_str()]);
    assert!(first.stop().success());
    std::fs::write(&held, b"").expect("body file");
    (0..5).for_each(|_| line("call"));
    drop(stdin);
    let Outcome { old, new, by_old, by_new, served } =
        after_the_upgrade(vec![client], &[pid], (&first, &mut second), &[&server]);
    assert_eq!(served.len(), 9);
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    eprintln!(
        "a body in many writes across the upgrade: old agent {} records, new {} of 9; old: states handed on {}, \
         not {}; new: states received {}, missing {}",
        by_old.len(),
        by_new.len(),
        n(&old, "handoff_states_sent"),
        n(&old, "handoff_states_not_sent"),
        n(&new, "handoff_states_received"),
        n(&new, "handoff_states_missing"),
    );
    assert_eq!(
        (by_old.len(), by_new.len()),
        (3, 6),
        "the calls before, by the old agent; the held one and after, by the new"
    );
    // The Go connection's, and the server side's verdict (ignored).
    let (sent, received) = (n(&old, "handoff_states_sent"), n(&new, "handoff_states_received"));
    assert!(sent >= 1 && sent == received, "{old}\n{new}");
    none_of(
        &[&old, &new],
        &["handoff_states_not_sent", "dropped_at_exit", "dropped_at_handover", "dropped_unanswered"],
    );
    none_of(&[&new], &["handoff_states_missing", "joined_mid_stream", "ignored_not_http"]);
}

/// What two agents made of an upgrade: their stats and records, and the
/// calls the servers served.
struct Outcome {
    old: serde_json::Value,
    new: serde_json::Value,
    by_old: Vec<serde_json::Value>,
    by_new: Vec<serde_json::Value>,
    served: Vec<serde_json::Value>,
}

/// The clients finish, the new agent has handled each and stops; every
/// record of the two agents is a call one of `servers` served, priced as
/// served.
fn after_the_upgrade(
    clients: Vec<std::process::Child>,
    pids: &[u32],
    (first, second): (&Agent, &mut Agent),
    servers: &[&Server],
) -> Outcome {
    clients.into_iter().for_each(finish);
    for &pid in pids {
        second.wait_process_done(pid);
    }
    assert!(second.stop().success());
    let served: Vec<serde_json::Value> = servers.iter().flat_map(|s| s.served()).collect();
    let (by_old, by_new) = (first.records_of(pids), second.records_of(pids));
    let all: Vec<serde_json::Value> = by_old.iter().chain(&by_new).cloned().collect();
    let prices = tokentap_event::PriceTable::shipped();
    for (r, s) in pair_with_served(&all, &served) {
        assert_matches_served(r, s, &prices);
    }
    Outcome { old: first.stats(), new: second.stats(), by_old, by_new, served }
}

/// Is `pid`'s main thread (the client's calls) in a write to a socket:
/// `write`, `writev`, `sendto` or `sendmsg`?
fn in_a_write(pid: u32) -> bool {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    matches!(text.split_whitespace().next(), Some("1" | "20" | "44" | "46"))
}

/// Is the running kernel at least `major.minor`?
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("the kernel's release");
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}
