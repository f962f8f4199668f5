//! An upgrade carries every capture method, not only OpenSSL through Python
//! (`e2e_handover.rs`): Go's crypto/tls (probes at its functions' returns),
//! rustls (a static Rust binary), node's static OpenSSL and bun's stripped
//! BoringSSL (both probed inside the runtime's own binary), each a real client
//! making calls at a steady rate over one keep-alive connection (Go and
//! rustls also over a new connection each, Go also over HTTP/2) while the new agent starts beside
//! the old one and the old one is stopped. Every call is recorded exactly
//! once across the two agents, and none is counted as cut.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokentap_e2e::upgrade::*;
use tokentap_e2e::*;

/// The pause between a client's calls: ~170 calls/s in all. Each client calls
/// until its stdin closes: after the new agent alone has recorded some of its
/// calls, however long its start took.
const PAUSE_MS: u64 = 30;

fn bun() -> PathBuf {
    let p = workspace_root().join("tests/clients/node_modules/@oven/bun-linux-x64/bin/bun");
    assert!(p.exists(), "{} missing: run `cargo xtask test`, which installs the pinned test clients", p.display());
    p
}

/// One client: its binary (the file the agent probes), what the agent calls
/// that library in its `attached` line, how to start it idle, how to start
/// its paced calls.
struct Client {
    name: &'static str,
    /// A new connection for each call (else one keep-alive connection).
    fresh: bool,
    /// Over HTTP/2: its connection stays with the old agent until it leaves.
    h2: bool,
    file: PathBuf,
    library: &'static str,
    idle: Vec<String>,
    paced: Vec<String>,
}

impl Client {
    fn command(&self, dir: &Path, ca: &Path, args: &[String]) -> Command {
        let mut c = with_provider_hosts(dir, &self.file.display().to_string(), args);
        c.env("NODE_EXTRA_CA_CERTS", ca);
        c
    }
}

#[test]
fn go_rustls_node_and_bun_clients_change_agents_with_calls_in_flight_over_kept_and_new_connections() {
    let _g = serial();
    require_root();
    require_tool("node");
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-methods", Transport::H2);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let clients = clients(&dir, &certs, &base, Pace::Every(PAUSE_MS));
    let flag = fs.flag();
    let mut first = Agent::start(&first_dir, &[flag.as_str()]);
    warm_up(&first, &dir, &certs.ca, &clients);
    let mut running = start(&dir, &certs.ca, &clients);
    let pids: Vec<u32> = running.iter().map(|c| c.id()).collect();
    for pid in &pids {
        first.wait_records(&[*pid], 10);
    }
    // The surge: the new agent starts beside the old one and records each
    // client's calls (HTTP/2's connection stays with the old agent until it
    // leaves); only then is the old one stopped.
    let t = Instant::now();
    let second = Agent::start(&second_dir, &[flag.as_str()]);
    let ready = t.elapsed();
    for (_, pid) in clients.iter().zip(&pids).filter(|(c, _)| !c.h2) {
        second.wait_records(&[*pid], 10);
    }
    let recording = t.elapsed();
    assert!(first.stop().success(), "the old agent exits cleanly");
    // Then the new agent alone records ten more calls of each.
    for pid in &pids {
        let had = second.records_of(&[*pid]).len();
        second.wait_records(&[*pid], had + 10);
    }
    // Stdin closed: each client finishes the call it is in and exits.
    for c in &mut running {
        drop(c.stdin.take());
    }
    let calls = finish_all(&clients, running);
    for pid in &pids {
        second.wait_process_done(*pid);
    }
    assert_eq!(server.served().len(), calls.iter().sum::<usize>());
    let (by_old, by_new) = priced_once(&server, (&first, &second), &pids);
    let (old, new) = (first.stats(), second.stats());
    for ((c, pid), calls) in clients.iter().zip(&pids).zip(&calls) {
        let (o, n) = (first.records_of(&[*pid]).len(), second.records_of(&[*pid]).len());
        eprintln!("handover, {}: {calls} calls; old agent {o} records, new {n}", c.name);
        assert!(o >= 10 && n >= 10, "{}: both agents recorded its calls (old {o}, new {n})", c.name);
    }
    over_http2(&clients, &pids, (&first, &second));
    eprintln!(
        "handover of four capture methods, seven clients: old agent {by_old} records, new {by_new}; the new agent \
         ready in {ready:?}, recording every client's calls in {recording:?}"
    );
    none_of(&[&old, &new], &["dropped_at_exit", "joined_mid_stream", "dropped_unanswered", "dropped_at_handover"]);
}

/// A keep-alive connection of each client idle across the whole upgrade, its
/// next call after the old agent left (node's and bun's fetch may close theirs
/// while idle, and connect again). Go's HTTP client keeps a read pending
/// on every idle keep-alive connection (begun as the last response ended):
/// it began under the old agent, before the new agent's probes were
/// attached, and returns with the next response: the new agent copies it
/// from the calls in flight the agents share. It lost that response before
/// (`dropped_unanswered`), with a map of Go's calls of its own. Go over HTTP/2
/// too: its connection's read loop always has a read pending, which the
/// decoding state the old agent hands on meets.
#[test]
fn keep_alive_connections_idle_across_the_upgrade_have_their_next_calls_recorded() {
    let _g = serial();
    require_root();
    require_tool("node");
    let Upgrade { dir, certs, server, fs, first: first_dir, second: second_dir } =
        Upgrade::new("handover-idle", Transport::H2);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    // Keep-alive only: a new connection per call has nothing pending.
    let clients: Vec<Client> = clients(&dir, &certs, &base, Pace::EachLine).into_iter().filter(|c| !c.fresh).collect();
    let flag = fs.flag();
    let mut first = Agent::start(&first_dir, &[flag.as_str()]);
    warm_up(&first, &dir, &certs.ca, &clients);
    let mut running = start(&dir, &certs.ca, &clients);
    let pids: Vec<u32> = running.iter().map(|c| c.id()).collect();
    let mut lines: Vec<_> = running.iter_mut().map(|c| c.stdin.take().expect("stdin")).collect();
    let call = |lines: &mut Vec<std::process::ChildStdin>| lines.iter_mut().for_each(|l| writeln!(l).unwrap());
    call(&mut lines);
    for pid in &pids {
        first.wait_records(&[*pid], 1);
    }
    // The connections idle (Go's with its next response's read pending)
    // while the new agent starts and the old one is stopped.
    let second = Agent::start(&second_dir, &[flag.as_str()]);
    assert!(first.stop().success(), "the old agent exits cleanly");
    assert_eq!(server.served().len(), clients.len(), "no call during the upgrade");
    // The next call of each (streamed) and one more: over the same connection
    // for Go and rustls; node's and bun's fetch may have closed theirs, idle
    // for seconds, and connect again.
    call(&mut lines);
    call(&mut lines);
    for pid in &pids {
        second.wait_records(&[*pid], 2);
    }
    drop(lines);
    assert!(finish_all(&clients, running).iter().all(|&n| n == 3), "each client made its three calls");
    for pid in &pids {
        second.wait_process_done(*pid);
    }
    let (by_old, by_new) = priced_once(&server, (&first, &second), &pids);
    assert_eq!((by_old, by_new), (clients.len(), 2 * clients.len()));
    over_http2(&clients, &pids, (&first, &second));
    let (old, new) = (first.stats(), second.stats());
    none_of(&[&old, &new], &["dropped_at_exit", "joined_mid_stream", "dropped_unanswered", "dropped_at_handover"]);
}

/// How a client paces its calls: every so many ms until stdin closes, or one
/// for each line read from stdin.
#[derive(Clone, Copy)]
enum Pace {
    Every(u64),
    EachLine,
}

/// Go (over one keep-alive connection, a new connection each call, HTTP/2),
/// rustls (one keep-alive connection, a new one each call), node, bun.
fn clients(dir: &Path, certs: &Certs, base: &str, pace: Pace) -> Vec<Client> {
    let ca = certs.ca.display().to_string();
    let script = workspace_root().join("tests/clients/paced.mjs").display().to_string();
    let js_pace = match pace {
        Pace::Every(ms) => ms.to_string(),
        Pace::EachLine => "each-line".into(),
    };
    let js = |file: PathBuf, name, library| Client {
        name,
        fresh: false,
        h2: false,
        file,
        library,
        idle: vec!["-e".into(), "setTimeout(() => {}, 120000)".into()],
        paced: vec![script.clone(), base.into(), SECRET_KEY.into(), js_pace.clone()],
    };
    let go_bin = build_go_client(dir, false);
    let go = |name, fresh: bool, h2: bool| {
        let mut paced: Vec<String> = ["-base", base, "-ca", &ca, "-key", SECRET_KEY].map(String::from).to_vec();
        match pace {
            Pace::Every(ms) => paced.extend(["-paced".into(), "-every".into(), format!("{ms}ms")]),
            Pace::EachLine => paced.push("-each-line".into()),
        }
        if fresh {
            paced.push("-fresh".into());
        }
        if h2 {
            paced.push("-h2".into());
        }
        Client {
            name,
            fresh,
            h2,
            file: go_bin.clone(),
            library: "\"go\"",
            idle: vec!["-idle".into(), "-ca".into(), ca.clone()],
            paced,
        }
    };
    let rust_bin = build_rust_client(dir).0;
    let rustls = |name, fresh: bool| {
        let mode = match (pace, fresh) {
            (Pace::EachLine, _) => "each-line",
            (Pace::Every(_), false) => "paced",
            (Pace::Every(_), true) => "paced-fresh",
        };
        let ms = match pace {
            Pace::Every(ms) => ms.to_string(),
            Pace::EachLine => String::new(),
        };
        Client {
            name,
            fresh,
            h2: false,
            file: rust_bin.clone(),
            library: "rustls",
            idle: [base, &ca, SECRET_KEY, "0", "h1"].map(String::from).to_vec(),
            paced: [base, &ca, SECRET_KEY, "0", mode, &ms].map(String::from).to_vec(),
        }
    };
    vec![
        go("go", false, false),
        go("go, a new connection each", true, false),
        // Its connection's read loop always has a read pending.
        go("go over HTTP/2", false, true),
        rustls("rustls", false),
        rustls("rustls, a new connection each", true),
        js(std::fs::canonicalize(which("node")).unwrap(), "node", "openssl"),
        js(bun(), "bun", "boringssl"),
    ]
}

/// The Go HTTP/2 client's calls went over HTTP/2 (the server offers it by ALPN).
fn over_http2(clients: &[Client], pids: &[u32], (old, new): (&Agent, &Agent)) {
    let i = clients.iter().position(|c| c.h2).expect("the Go HTTP/2 client");
    let records = [old.records_of(&[pids[i]]), new.records_of(&[pids[i]])].concat();
    assert!(!records.is_empty() && records.iter().all(|r| r["http_version"] == "2"), "{records:?}");
}

/// Each client making its calls, stdin, stdout and stderr piped.
fn start(dir: &Path, ca: &Path, clients: &[Client]) -> Vec<Child> {
    let spawn = |c: &Client| {
        let mut cmd = c.command(dir, ca, &c.paced);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().unwrap_or_else(|e| panic!("{}: {e}", c.name))
    };
    clients.iter().map(spawn).collect()
}

/// Wait for each client to exit successfully; the calls each made.
fn finish_all(clients: &[Client], running: Vec<Child>) -> Vec<usize> {
    let finish = |(c, p): (&Client, Child)| {
        let out = p.wait_with_output().expect("client");
        assert!(out.status.success(), "{}: {}", c.name, String::from_utf8_lossy(&out.stderr));
        let out: serde_json::Value = serde_json::from_slice(&out.stdout).expect("client output");
        out["calls"].as_u64().unwrap_or_else(|| panic!("{}: {out}", c.name)) as usize
    };
    clients.iter().zip(running).map(finish).collect()
}

/// Probes are per file, placed when a process maps it: each client's binary
/// is probed (from an idle process of it) before the client making calls
/// starts, which could otherwise make its first calls unseen.
fn warm_up(agent: &Agent, dir: &Path, ca: &Path, clients: &[Client]) {
    let mut idle: Vec<_> = clients
        .iter()
        .map(|c| {
            let mut cmd = c.command(dir, ca, &c.idle);
            cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
            cmd.spawn().expect("an idle client")
        })
        .collect();
    for c in clients {
        agent.wait_attached(&c.file.display().to_string(), c.library, Duration::from_secs(90));
    }
    for mut p in idle.drain(..) {
        let _ = p.kill();
        let _ = p.wait();
    }
}

fn which(tool: &str) -> PathBuf {
    let out = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().expect("sh");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
