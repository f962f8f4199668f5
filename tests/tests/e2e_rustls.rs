//! End to end through rustls: a reqwest + rustls client built by the test from
//! crates.io (fat LTO, as services ship), HTTP/1.1 and HTTP/2, many calls at
//! once, half of them streamed, one with a 300 KB prompt. The agent finds
//! rustls's plaintext functions by symbol, and in a stripped copy by their
//! code; every call must become exactly one record with the served tokens and
//! `tls_library` `rustls`, none doubled by the socket capture. A copy altered
//! so that one function loses its signature is not probed and is listed in
//! coverage with the reason. Codex CLI's stripped binary and litellm's Rust
//! core (a Python extension linking two rustls versions) are driven the same
//! way. Needs root.
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokentap_e2e::*;
use tokentap_event::PriceTable;

fn inspect(bin: &Path) -> Value {
    let out = Command::new(agent_bin()).arg("inspect").arg(bin).output().unwrap();
    serde_json::from_slice(&out.stdout).expect("inspect output")
}

/// A client process that makes no call and waits on its stdin: found by
/// discovery while it lives.
fn idle(env: &Env, bin: &Path) -> std::process::Child {
    let ca = env.certs.ca.display().to_string();
    Command::new(bin)
        .args(["x", &ca, "k", "0", "h1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the idle client")
}

/// A copy of `src` whose `take_received_plaintext` stores 33, not 32, into
/// its key-update counter (the program still runs: the counter only limits a
/// peer's key updates): the function no longer has its signature.
fn unverifiable_copy(src: &Path, dst: &Path) -> usize {
    let mut b = std::fs::read(src).unwrap();
    let mut n = 0;
    for i in 0..b.len().saturating_sub(7) {
        // mov byte [rdi + disp32], 0x20
        if b[i] == 0xc6 && b[i + 1] == 0x87 && b[i + 4] == 0 && b[i + 5] == 0 && b[i + 6] == 0x20 {
            b[i + 6] = 0x21;
            n += 1;
        }
    }
    std::fs::write(dst, &b).unwrap();
    std::fs::set_permissions(dst, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    n
}

fn probes(found: &Value) -> Vec<(String, String)> {
    let list = found["probes"].as_array().unwrap();
    list.iter().map(|p| (p["program"].as_str().unwrap().into(), p["offset"].as_str().unwrap().into())).collect()
}

#[test]
fn reqwest_over_rustls_with_and_without_symbols_over_http1_and_http2() {
    let _g = serial();
    let dir = scratch("rustls-build");
    let (bin, stripped) = build_rust_client(&dir);
    let found = inspect(&bin);
    assert_eq!(found["tls_library"], "rustls", "{found}");
    let programs: Vec<String> = probes(&found).into_iter().map(|(p, _)| p).collect();
    assert_eq!(programs, ["rustls_send_chunks", "rustls_send_ret", "rustls_recv"], "{found}");
    // Both functions start with `push` (of rbp or r12-r15), which the kernel
    // emulates: no single-step per hit.
    let code = std::fs::read(&bin).unwrap();
    for (_, off) in probes(&found) {
        let at = u64::from_str_radix(off.trim_start_matches("0x"), 16).unwrap() as usize;
        let push = matches!(code[at], 0x50..=0x57) || (code[at] == 0x41 && matches!(code[at + 1], 0x50..=0x57));
        assert!(push, "{off}: not on a push");
    }
    // Stripped, the same functions are found by their code.
    let by_code = inspect(&stripped);
    assert_eq!(by_code["not_probed"], Value::Null, "{by_code}");
    assert_eq!(probes(&by_code), probes(&found), "{by_code}");
    let odd = dir.join("rust_client_altered");
    assert_eq!(unverifiable_copy(&stripped, &odd), 1, "one key-update counter store");
    let refused = inspect(&odd);
    assert_eq!(refused["tls_library"], "rustls", "{refused}");
    assert!(probes(&refused).is_empty(), "{refused}");
    assert!(refused["not_probed"].as_str().unwrap().ends_with("CommonState::take_received_plaintext not found"));

    let env = Env::start("rustls", Transport::H2, &[]);
    let prices = PriceTable::shipped();
    for (bin, how) in [(&bin, "symbols"), (&stripped, "analysed")] {
        // Probes are per file, placed when a process maps it: a process started
        // within milliseconds of the attach can make its calls first.
        let name = bin.display().to_string();
        let mut warm = idle(&env, bin);
        env.agent.wait_attached(&name, how, Duration::from_secs(60));
        let _ = warm.kill();
        let _ = warm.wait();
        for (mode, version) in [("h1", "1.1"), ("h2", "2")] {
            // The first call's prompt is 300 KB: many TLS records, many chunks.
            let args: Vec<String> = [
                env.openai_base(),
                env.certs.ca.display().to_string(),
                SECRET_KEY.into(),
                "8".into(),
                mode.into(),
                "300000".into(),
            ]
            .into();
            let (pid, out) = run_client(with_provider_hosts(&env.dir, &name, &args));
            let out: Value = serde_json::from_str(out.trim()).expect("client output");
            assert_eq!(out["calls"], 8);
            assert_eq!(out["proto"], if mode == "h1" { "HTTP/1.1" } else { "HTTP/2.0" }, "{out}");
            env.agent.wait_records(&[pid], 8);
            // The agent handled the client's exit: a duplicate would be there now.
            let stats = env.agent.wait_process_done(pid);
            let records = env.agent.records_of(&[pid]);
            assert_eq!(records.len(), 8, "{name} {mode}: one record per call, none doubled: {records:#?}");
            let served = env.server.served();
            let pairs = pair_with_served(&records, &served);
            assert_eq!(pairs.len(), 8);
            for (r, s) in &pairs {
                assert_matches_served(r, s, &prices);
                assert_eq!(r["tls_library"], "rustls", "{r}");
                assert_eq!(r["http_version"], version, "{r}");
                assert_eq!(r["provider"], "openai", "{r}");
                assert_eq!(r["server"], "api.openai.com", "{r}");
            }
            assert_eq!(records.iter().filter(|r| r["stream"] == true).count(), 4, "{records:#?}");
            let cov = coverage_of(&stats, pid);
            assert_eq!(cov["records"]["rustls"], 8, "{cov}");
            assert!(cov["records"].get("socket").is_none(), "{cov}");
        }
    }
    // The altered copy: not probed, listed, logged once; its calls are served
    // and leave no record.
    let mut idle_odd = idle(&env, &odd);
    let odd_pid = idle_odd.id();
    env.agent.wait_stats("the altered client listed as not probed", |s| {
        coverage_of(s, odd_pid)["not_probed"].as_object().is_some_and(|m| {
            m.iter().any(|(k, v)| {
                k.starts_with("rustls: ")
                    && v.as_str().is_some_and(|v| v.ends_with("CommonState::take_received_plaintext not found"))
            })
        })
    });
    let _ = idle_odd.kill();
    let _ = idle_odd.wait();
    let before = env.server.served().len();
    let args: Vec<String> =
        [env.openai_base(), env.certs.ca.display().to_string(), SECRET_KEY.into(), "2".into(), "h2".into()].into();
    let (pid, _) = run_client(with_provider_hosts(&env.dir, &odd.display().to_string(), &args));
    assert_eq!(env.server.served().len(), before + 2);
    let log = std::fs::read_to_string(&env.agent.stderr).unwrap();
    let odd_name = odd.display().to_string();
    let refusals = log.lines().filter(|l| l.contains("rustls present but not probed") && l.contains(&odd_name));
    assert_eq!(refusals.count(), 1, "logged once per file");
    // Stopping the agent drains what it captured: nothing can arrive later.
    let (stats, records) = env.finish_with_records();
    assert!(records.iter().all(|r| r["pid"] != pid), "no record from a binary that is not probed");
    assert_eq!(records.len(), 32, "{records:#?}");
    assert_eq!(stats["attach_failures"], 0);
}

/// Codex CLI's native binary from npm (static-pie, musl, stripped; rustls
/// 0.23 inside), `codex exec` with a custom provider speaking the Responses API
/// over HTTPS with SSE (its WebSocket transport off) against the local endpoint.
#[test]
fn codex_cli_exec_is_captured_through_its_stripped_rustls() {
    let _g = serial();
    let env = Env::start("codex", Transport::Https, &[]);
    let codex = Codex::new(&env, false);
    let found = inspect(&codex.bin);
    assert_eq!(found["tls_library"], "rustls", "{found}");
    assert_eq!(probes(&found).len(), 3, "{found}");
    codex.probe_first(&env.agent);
    let cmd = codex.exec(&env, "Say hello.");
    let (pid, _) = run_client(cmd);
    let stats = env.agent.wait_process_done(pid);
    let records = env.agent.records_of(&[pid]);
    let served = env.server.served();
    assert!(!served.is_empty(), "codex made no call to the local endpoint");
    assert_eq!(records.len(), served.len(), "one record per call: {records:#?} served {served:#?}");
    let prices = PriceTable::shipped();
    for (r, s) in pair_with_served(&records, &served) {
        assert_matches_served(r, s, &prices);
        assert_eq!(r["tls_library"], "rustls", "{r}");
        assert_eq!(r["provider"], "openai", "{r}");
        assert_eq!(r["operation"], "responses", "{r}");
        assert_eq!(r["stream"], true, "{r}");
    }
    let cov = coverage_of(&stats, pid);
    assert_eq!(cov["records"]["rustls"].as_u64(), Some(records.len() as u64), "{cov}");
    assert!(cov["records"].get("socket").is_none(), "{cov}");
    env.finish();
}

/// The venv `cargo xtask test` installs litellm-core into.
fn litellm_core_python() -> PathBuf {
    let p = workspace_root().join("target/litellm-core-venv/bin/python");
    assert!(p.exists(), "{} missing: run `cargo xtask test`, which installs litellm-core", p.display());
    p
}

/// litellm's Rust core (`litellm-core` from PyPI, `LITELLM_RUST=1`): its
/// extension links rustls 0.23 (stripped, `send_appdata_encrypt` inlined into
/// `buffer_plaintext`) and rustls 0.21. Anthropic Messages calls, concurrent,
/// half streamed, one with a 300 KB prompt, each one record; the older rustls
/// is listed in coverage as not captured.
#[test]
fn litellm_rust_core_is_captured_beside_the_older_rustls_it_links() {
    let _g = serial();
    let python = litellm_core_python();
    let out = Command::new(&python)
        .args(["-c", "import litellm.rust_bridge._native as m; print(m.__file__)"])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .output()
        .expect("run the litellm-core venv's python");
    let so = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(so.is_file(), "litellm's extension not found: {}", String::from_utf8_lossy(&out.stderr));
    let found = inspect(&so);
    assert_eq!(found["tls_library"], "rustls", "{found}");
    let programs: Vec<String> = probes(&found).into_iter().map(|(p, _)| p).collect();
    assert_eq!(programs, ["rustls_send_chunks", "rustls_send_ret", "rustls_recv"], "{found}");
    let partly = found["not_probed"].as_str().unwrap_or_default().to_owned();
    assert!(partly.starts_with("rustls 0.21.") && partly.ends_with("its calls are not captured"), "{found}");

    let env = Env::start("litellm-rust", Transport::Https, &[]);
    let script = workspace_root().join("tests/clients/litellm_rust.py").display().to_string();
    let args = [script, env.anthropic_base(), SECRET_KEY.into(), "12".into(), "300000".into()];
    let mut cmd = with_provider_hosts(&env.dir, &python.display().to_string(), &args);
    cmd.env("LITELLM_RUST", "1")
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("SSL_CERT_FILE", &env.certs.ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(env.dir.join("litellm.stderr")).unwrap());
    let mut child = cmd.spawn().expect("start litellm_rust.py");
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "loaded", "see {}", env.dir.join("litellm.stderr").display());
    // The extension is mapped: calls wait until the agent has probed it.
    let name = so.display().to_string();
    env.agent.wait_attached(&name, "analysed", Duration::from_secs(60));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "litellm_rust.py: {status}, see {}", env.dir.join("litellm.stderr").display());
    let out: Value = serde_json::from_str(line.trim()).expect("client output");
    assert_eq!((out["calls"].as_u64(), out["streamed"].as_u64()), (Some(12), Some(6)), "{out}");

    let stats = env.agent.wait_process_done(pid);
    let records = env.agent.records_of(&[pid]);
    let served = env.server.served();
    assert_eq!(served.len(), 12, "{served:#?}");
    assert_eq!(records.len(), 12, "one record per call, none doubled: {records:#?}");
    let prices = PriceTable::shipped();
    let pairs = pair_with_served(&records, &served);
    assert_eq!(pairs.len(), 12);
    for (r, s) in &pairs {
        assert_matches_served(r, s, &prices);
        assert_eq!(r["tls_library"], "rustls", "{r}");
        assert_eq!(r["provider"], "anthropic", "{r}");
        assert_eq!(r["server"], "api.anthropic.com", "{r}");
    }
    assert_eq!(records.iter().filter(|r| r["stream"] == true).count(), 6);
    let cov = coverage_of(&stats, pid);
    assert_eq!(cov["records"]["rustls"].as_u64(), Some(12), "{cov}");
    assert!(cov["records"].get("socket").is_none(), "{cov}");
    let listed = cov["not_probed"].as_object().map(|m| m.values().any(|v| v == partly.as_str())).unwrap_or(false);
    assert!(listed, "the older rustls listed as not captured: {cov}");
    env.finish();
}
