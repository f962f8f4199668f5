//! End to end through rustls: a reqwest + rustls client built by the test from
//! crates.io (fat LTO, as services ship), HTTP/1.1 and HTTP/2, many calls at
//! once, half of them streamed. The agent finds rustls's plaintext functions by
//! symbol; every call must become exactly one record with the served tokens and
//! `tls_library` `rustls`, none doubled by the socket capture. The same binary
//! stripped has no names to find: it is not probed and is listed in coverage
//! with the reason. Needs root.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokentap_e2e::*;
use tokentap_event::PriceTable;

fn coverage_of(stats: &Value, pid: u32) -> Value {
    stats["coverage"].as_array().and_then(|c| c.iter().find(|p| p["pid"] == pid)).cloned().unwrap_or(Value::Null)
}

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

#[test]
fn reqwest_over_rustls_is_captured_by_symbol_over_http1_and_http2() {
    let _g = serial();
    let dir = scratch("rustls-build");
    let (bin, stripped) = build_rust_client(&dir);
    let found = inspect(&bin);
    assert_eq!(found["tls_library"], "rustls", "{found}");
    let programs: Vec<&str> =
        found["probes"].as_array().unwrap().iter().map(|p| p["program"].as_str().unwrap()).collect();
    assert_eq!(programs, ["rustls_send_chunks", "rustls_send_ret", "rustls_recv"], "{found}");
    // Both functions start with `push` (of rbp or r12-r15), which the kernel
    // emulates: no single-step per hit.
    let code = std::fs::read(&bin).unwrap();
    for p in found["probes"].as_array().unwrap() {
        let at = u64::from_str_radix(p["offset"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap() as usize;
        let push = matches!(code[at], 0x50..=0x57) || (code[at] == 0x41 && matches!(code[at + 1], 0x50..=0x57));
        assert!(push, "{p}: not on a push");
    }
    let refused = inspect(&stripped);
    assert_eq!(refused["tls_library"], "rustls", "{refused}");
    assert!(refused["probes"].as_array().unwrap().is_empty(), "{refused}");
    assert!(refused["not_probed"].as_str().unwrap().contains("stripped (no symbols)"), "{refused}");

    let env = Env::start("rustls", Transport::H2, &[]);
    // Probes are per file, placed when a process maps it: a process started
    // within milliseconds of the attach can make its calls first.
    let mut warm = idle(&env, &bin);
    wait_for("the agent to probe rust_client", Duration::from_secs(60), || {
        let log = std::fs::read_to_string(&env.agent.stderr).unwrap_or_default();
        log.lines()
            .any(|l| l.contains("attached") && l.contains("\"rustls\"") && l.contains("rust_client"))
            .then_some(())
    });
    let _ = warm.kill();
    let _ = warm.wait();
    let prices = PriceTable::shipped();
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
        let (pid, out) = run_client(with_provider_hosts(&env.dir, &bin.display().to_string(), &args));
        let out: Value = serde_json::from_str(out.trim()).expect("client output");
        assert_eq!(out["calls"], 8);
        assert_eq!(out["proto"], if mode == "h1" { "HTTP/1.1" } else { "HTTP/2.0" }, "{out}");
        env.agent.wait_records(&[pid], 8);
        // The agent handled the client's exit: a duplicate would be there now.
        let stats = env.agent.wait_process_done(pid);
        let records = env.agent.records_of(&[pid]);
        assert_eq!(records.len(), 8, "one record per call, none doubled: {records:#?}");
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
    // Stripped: not probed, listed, logged once; its calls are served and
    // leave no record.
    let mut odd = idle(&env, &stripped);
    let odd_pid = odd.id();
    env.agent.wait_stats("the stripped client listed as not probed", |s| {
        coverage_of(s, odd_pid)["not_probed"].as_object().is_some_and(|m| {
            m.iter().any(|(k, v)| {
                k.starts_with("rustls: ") && v.as_str().is_some_and(|v| v.contains("stripped (no symbols)"))
            })
        })
    });
    let _ = odd.kill();
    let _ = odd.wait();
    let before = env.server.served().len();
    let args: Vec<String> =
        [env.openai_base(), env.certs.ca.display().to_string(), SECRET_KEY.into(), "2".into(), "h2".into()].into();
    let (pid, _) = run_client(with_provider_hosts(&env.dir, &stripped.display().to_string(), &args));
    assert_eq!(env.server.served().len(), before + 2);
    let log = std::fs::read_to_string(&env.agent.stderr).unwrap();
    let name = stripped.display().to_string();
    let refusals = log.lines().filter(|l| l.contains("rustls present but not probed") && l.contains(&name));
    assert_eq!(refusals.count(), 1, "logged once per file");
    // Stopping the agent drains what it captured: nothing can arrive later.
    let (stats, records) = env.finish_with_records();
    assert!(records.iter().all(|r| r["pid"] != pid), "no record from a binary that is not probed");
    assert_eq!(records.len(), 16, "{records:#?}");
    assert_eq!(stats["attach_failures"], 0);
}
