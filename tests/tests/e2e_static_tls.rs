//! End to end through TLS stacks that export no SSL symbols: Bun's statically
//! linked, stripped BoringSSL (the `bun` runtime from npm running the `openai`
//! SDK, and Claude Code's native binary from npm, itself a Bun program). The
//! agent finds `SSL_write`/`SSL_read` by analysing the machine code; every call
//! must become exactly one record with the served tokens and `tls_library`
//! `boringssl`, none doubled by the socket capture; a connection Bun closes
//! (`SSL_shutdown`, also found by analysis) ends there. A Bun whose code fails the
//! analysis's checks is never probed and is listed in coverage, as is a process
//! linking a stripped rustls the code search cannot single out. Needs root.
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokentap_e2e::*;
use tokentap_event::PriceTable;

fn bun() -> PathBuf {
    let p = workspace_root().join("tests/clients/node_modules/@oven/bun-linux-x64/bin/bun");
    assert!(p.exists(), "{} missing: run `cargo xtask test`, which installs the pinned test clients", p.display());
    p
}

fn claude() -> PathBuf {
    let p = workspace_root().join("tests/clients/node_modules/@anthropic-ai/claude-code-linux-x64/claude");
    assert!(p.exists(), "{} missing: run `cargo xtask test`, which installs the pinned test clients", p.display());
    p
}

/// Start `exe` (kept alive: a process that exits before discovery reads its
/// mappings is never looked at) and wait until the agent has analysed and
/// probed its binary: the analysis takes about a second, and a process's calls
/// made before its binary is probed are not seen (as for any process started
/// that quickly). Probes are per file: later processes are covered at exec.
fn warm_up(env: &Env, mut cmd: Command) {
    let name = std::path::Path::new(cmd.get_program()).file_name().unwrap().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the warm-up process");
    env.agent.wait_attached(&name, "analysed", Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bun_running_the_openai_sdk_is_captured_through_its_stripped_boringssl() {
    let _g = serial();
    let env = Env::start("bun-openai", Transport::Https, &[]);
    let bun = bun();
    // Where the analysis puts the probes: on `push rbp`, which the kernel
    // emulates (no single-step per call).
    let out = Command::new(agent_bin()).arg("inspect").arg(&bun).output().unwrap();
    let found: Value = serde_json::from_slice(&out.stdout).expect("inspect output");
    assert_eq!(found["tls_library"], "boringssl", "{found}");
    let code = std::fs::read(&bun).unwrap();
    let probes = found["probes"].as_array().unwrap();
    let programs: Vec<&str> = probes.iter().map(|p| p["program"].as_str().unwrap()).collect();
    assert!(programs.contains(&"boringssl_shutdown"), "{found}");
    assert_eq!(probes.len(), 5, "{found}");
    for p in probes {
        let off = u64::from_str_radix(p["offset"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
        assert_eq!(code[off as usize], 0x55, "{p}: not on push rbp");
    }
    let mut idle = Command::new(&bun);
    idle.args(["-e", "setTimeout(() => {}, 120000)"]);
    warm_up(&env, idle);
    let script = workspace_root().join("tests/clients/node_client.mjs").display().to_string();
    let mut cmd =
        with_provider_hosts(&env.dir, &bun.display().to_string(), &[script, env.openai_base(), SECRET_KEY.into()]);
    cmd.env("NODE_EXTRA_CA_CERTS", &env.certs.ca);
    let (pid, out) = run_client(cmd);
    let out: Value = serde_json::from_str(out.trim()).expect("client output");
    assert_eq!(out["pid"], pid);
    let n = out["calls"].as_u64().unwrap() as usize;
    assert_eq!(n, 4, "chat, streamed chat (include_usage), responses, embeddings");
    env.agent.wait_records(&[pid], n);
    let stats = env.agent.wait_process_done(pid);
    let records = env.agent.records_of(&[pid]);
    assert_eq!(records.len(), n, "one record per call, none doubled: {records:?}");
    let served = env.server.served();
    let prices = PriceTable::shipped();
    let pairs = pair_with_served(&records, &served);
    assert_eq!(pairs.len(), n);
    for (r, s) in pairs {
        assert_matches_served(r, s, &prices);
        assert_eq!(r["tls_library"], "boringssl", "{r}");
        assert_eq!(r["provider"], "openai", "{r}");
        assert_eq!(r["server"], "api.openai.com");
        // (The executable is read from /proc when the record is made: a client
        // as quick as this one may be gone by then.)
        assert!(r["exe"].is_null() || r["exe"].as_str().is_some_and(|e| e.ends_with("/bun")), "{r}");
    }
    assert_eq!(records.iter().filter(|r| r["operation"] == "chat" && r["stream"] == true).count(), 1);
    let cov = coverage_of(&stats, pid);
    assert_eq!(cov["records"]["boringssl"], 4, "{cov}");
    assert!(cov["records"].get("socket").is_none(), "{cov}");
    // Each socket was read (Bun reuses its SSL objects): none is a blind spot.
    assert_eq!(blind_spots_of(&stats, &[pid.into()]), Vec::<Value>::new());

    // A connection Bun closes (`Connection: close`) ends at its SSL_shutdown,
    // seen while the process lives on.
    let script = "const r = await fetch(Bun.env.BASE + '/chat/completions', {method: 'POST', \
        headers: {'content-type': 'application/json', authorization: 'Bearer ' + Bun.env.KEY, connection: 'close'}, \
        body: JSON.stringify({model: 'gpt-4o-mini', messages: [{role: 'user', content: 'hi'}]})}); \
        await r.text(); console.log('done'); \
        await new Promise((ok) => process.stdin.once('data', ok));";
    let mut cmd = with_provider_hosts(&env.dir, &bun.display().to_string(), &["-e".into(), script.into()]);
    cmd.env("BASE", env.openai_base())
        .env("KEY", SECRET_KEY)
        .env("NODE_EXTRA_CA_CERTS", &env.certs.ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("start bun");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done");
    let stats = env.agent.wait_stats("the closed connection's end seen while bun lives", |s| {
        let cov = coverage_of(s, pid);
        cov["closed"]["boringssl"].as_u64() >= Some(1) && cov["records"]["boringssl"] == 1
    });
    assert_eq!(coverage_of(&stats, pid)["exited"], false);
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());
    env.finish();
}

#[test]
fn claude_code_native_binary_is_captured_through_its_stripped_boringssl() {
    let _g = serial();
    let env = Env::start("claude-code", Transport::Https, &[]);
    let claude = claude();
    let home = env.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    // `claude -p` without a prompt waits for one on stdin.
    let mut idle = Command::new(&claude);
    idle.arg("-p").env("HOME", &home).env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    idle.env("DISABLE_AUTOUPDATER", "1").env("DISABLE_TELEMETRY", "1");
    warm_up(&env, idle);
    let mut cmd = with_provider_hosts(&env.dir, &claude.display().to_string(), &["-p".into(), "Say hello.".into()]);
    cmd.env("HOME", &home)
        .env("ANTHROPIC_BASE_URL", env.anthropic_base())
        .env("ANTHROPIC_API_KEY", SECRET_KEY)
        .env("NODE_EXTRA_CA_CERTS", &env.certs.ca)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_TELEMETRY", "1");
    let (pid, _) = run_client(cmd);
    let stats = env.agent.wait_process_done(pid);
    let records = env.agent.records_of(&[pid]);
    let served = env.server.served();
    assert!(!served.is_empty(), "claude made no call to the local endpoint");
    assert_eq!(records.len(), served.len(), "one record per call: {records:?} served {served:?}");
    let prices = PriceTable::shipped();
    for (r, s) in pair_with_served(&records, &served) {
        assert_matches_served(r, s, &prices);
        assert_eq!(r["tls_library"], "boringssl", "{r}");
        assert_eq!(r["provider"], "anthropic", "{r}");
        assert_eq!(r["operation"], "messages", "{r}");
    }
    let cov = coverage_of(&stats, pid);
    assert_eq!(cov["records"]["boringssl"].as_u64(), Some(records.len() as u64), "{cov}");
    assert_eq!(blind_spots_of(&stats, &[pid.into()]), Vec::<Value>::new());
    env.finish();
}

/// `mov ecx, <file>; mov edi, ERR_LIB_SSL; xor esi, esi; mov edx, BAD_LENGTH`:
/// each such error site gets another reason code. Only error paths change, so
/// the program still runs, but `SSL_write` no longer has its signature.
fn unverifiable_copy(src: &Path, dst: &Path) -> usize {
    let mut b = std::fs::read(src).unwrap();
    let head = [0xbf, 0x10, 0, 0, 0, 0x31, 0xf6, 0xba, 0x6f, 0, 0, 0];
    let mut n = 0;
    for i in 5..b.len().saturating_sub(head.len()) {
        if b[i - 5] == 0xb9 && b[i..i + head.len()] == head {
            b[i + 8] = 0x70;
            n += 1;
        }
    }
    std::fs::write(dst, &b).unwrap();
    std::fs::set_permissions(dst, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    n
}

#[test]
fn a_bun_that_fails_verification_is_not_probed_and_is_listed_in_coverage() {
    let _g = serial();
    let env = Env::start("bun-refused", Transport::Https, &[]);
    let odd = env.dir.join("bun");
    assert!(unverifiable_copy(&bun(), &odd) >= 1, "no BAD_LENGTH error site to alter");
    let script = workspace_root().join("tests/clients/node_client.mjs").display().to_string();
    let mut cmd =
        with_provider_hosts(&env.dir, &odd.display().to_string(), &[script, env.openai_base(), SECRET_KEY.into()]);
    cmd.env("NODE_EXTRA_CA_CERTS", &env.certs.ca);
    // A running process keeps its mapping: the agent finds it while it runs.
    let (pid, out) = run_client(cmd);
    assert!(out.contains("\"calls\":4"), "{out}");
    // Scanned at exec (and again later): analysed, refused, listed.
    let stats = env.agent.wait_stats("the altered bun listed as not probed", |s| {
        s["files_not_probed"].as_u64() >= Some(1)
            && coverage_of(s, pid)["not_probed"]
                .as_object()
                .is_some_and(|m| m.iter().any(|(k, v)| k.starts_with("boringssl: ") && v == "SSL_write not found"))
    });
    assert_eq!(env.server.served().len(), 4);
    assert!(env.agent.records_of(&[pid]).is_empty(), "no record from a binary that is not probed");
    let log = std::fs::read_to_string(&env.agent.stderr).unwrap();
    let odd_path = odd.display().to_string();
    let refusals = log.lines().filter(|l| l.contains("BoringSSL present but not probed") && l.contains(&odd_path));
    assert_eq!(refusals.count(), 1, "logged once per file");
    assert_eq!(stats["attach_failures"], 0);
    // A stripped rustls whose functions the code search cannot single out is
    // recognised but not probed: a Python process whose Rust extension links
    // one (chdb's, next to ClickHouse's C++, where the send shape is met by
    // several functions) is listed with the rustls version and the reason
    // instead of being absent.
    let mut py = Command::new("python3")
        .args(["-c", "import chdb, sys; sys.stdin.read()"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with chdb (installed by cargo xtask test)");
    let py_pid = py.id();
    env.agent.wait_stats("a Python process linking rustls listed as not probed", |s| {
        coverage_of(s, py_pid)["not_probed"].as_object().is_some_and(|m| {
            m.iter().any(|(k, v)| {
                k.starts_with("rustls: ")
                    && v.as_str()
                        .is_some_and(|v| v.starts_with("rustls 0.") && v.ends_with("matched more than one function"))
            })
        })
    });
    let _ = py.kill();
    let _ = py.wait();
    let stats = env.finish();
    assert_eq!(stats["records"], 0);
}
