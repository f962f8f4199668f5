//! LLM APIs over WebSocket, end to end: the real eBPF probes, real clients
//! over real TLS (and plaintext), the local endpoint speaking the Responses
//! API, OpenAI Realtime and Gemini Live over WebSocket (tests/server/ws_server.py)
//! with permessage-deflate on and off, messages fragmented both ways.
//!
//! Clients: Codex CLI from npm with its default WebSocket transport, the
//! `openai` SDK (`responses.connect`, `realtime.connect`), `google-genai`
//! (`aio.live.connect`) and the `websockets` package directly
//! (tests/clients/ws_client.py). Every served response is one record with its
//! exact tokens (audio parts included) and cost; nothing is dropped.
use std::process::Command;

use serde_json::Value;
use tokentap_e2e::*;
use tokentap_event::PriceTable;

fn ws_client(env: &Env, args: &[&str]) -> Command {
    let mut all = vec![workspace_root().join("tests/clients/ws_client.py").display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let mut cmd = with_provider_hosts(&env.dir, "python3", &all);
    cmd.env("SSL_CERT_FILE", &env.certs.ca);
    cmd
}

/// Run one client (`args` after `--url-base base`) to completion; its records
/// must be exactly what the server served it, read with the same numbers.
/// Returns its records.
fn check_run(env: &Env, label: &str, base: &str, args: &str) -> Vec<Value> {
    let before = env.server.served().len();
    let args: Vec<&str> = ["--url-base", base].into_iter().chain(args.split_whitespace()).collect();
    let (pid, out) = run_client(ws_client(env, &args));
    let stats = env.agent.wait_process_done(pid);
    let served: Vec<Value> = env.server.served().split_off(before);
    let calls = out.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(!served.is_empty(), "{label}: nothing served");
    assert_eq!(calls, served.len(), "{label}: the client's calls and the server's\n{out}");
    assert!(served.iter().all(|s| s["transport"] == "websocket"), "{label}: {served:#?}");
    let records = env.agent.records_of(&[pid]);
    assert_eq!(records.len(), served.len(), "{label}: one record per response: {records:#?}\nserved {served:#?}");
    // `error` events: a record each, with their status and no usage.
    let (failed, records): (Vec<Value>, Vec<Value>) = records.into_iter().partition(|r| r["status"] != 200);
    let errors: Vec<&Value> = served.iter().filter(|s| s["expected"].is_null()).collect();
    let statuses = |v: Vec<&Value>| v.into_iter().map(|x| x["status"].as_u64()).collect::<Vec<_>>();
    assert_eq!(statuses(failed.iter().collect()), statuses(errors), "{label}: {failed:#?}");
    assert!(failed.iter().all(|r| r["input_tokens"].is_null() && r["cost_usd"].is_null()), "{label}: {failed:#?}");
    let served: Vec<Value> = served.into_iter().filter(|s| !s["expected"].is_null()).collect();
    let prices = PriceTable::shipped();
    for (r, s) in pair_with_served(&records, &served) {
        assert_matches_served(r, s, &prices);
        assert_eq!(r["stream"], true, "{label}: {r}");
        // A first token wherever something was generated (not a warm-up's).
        let generated = r["output_tokens"].as_u64().is_some_and(|n| n > 0);
        assert_eq!(r["ttft_ms"].as_f64().is_some(), generated, "{label}: time to first token: {r}");
        if env.transport == Transport::Plain {
            assert_eq!(r["tls_library"], Value::Null, "{label}: {r}");
        } else {
            assert_eq!(r["tls_library"], "openssl", "{label}: {r}");
        }
    }
    let cov = coverage_of(&stats, pid);
    assert!(cov["not_decoded"].as_object().is_none_or(|m| m.is_empty()), "{label}: {cov}");
    [records, failed].concat()
}

#[test]
fn python_clients_over_websocket_every_response_one_exact_record() {
    let _g = serial();
    let env = Env::start("ws-python", Transport::Https, &[]);
    let openai = env.origin("api.openai.com");
    let google = env.origin("generativelanguage.googleapis.com");
    // (label, host, client arguments)
    let runs = [
        // The openai SDK's Responses WebSocket, compressed, with warm-ups, two at once.
        ("responses sdk", &openai, "--api responses --sdk --deflate on --warmup --calls 3 --connections 2"),
        // Raw: uncompressed, client messages in 50-byte frames, server's in 100-byte frames.
        (
            "responses raw fragmented",
            &openai,
            "--api responses --raw --deflate off --fragment 50 --server-fragment 100 --calls 3",
        ),
        // Deflate negotiated, the server sending uncompressed anyway; compressed fragments up.
        (
            "responses raw deflate",
            &openai,
            "--api responses --raw --deflate on --fragment 64 --server-compress 0 --calls 3 --connections 2",
        ),
        // Load: 8 connections at once, 10 responses each, compressed.
        ("responses raw load", &openai, "--api responses --raw --deflate on --calls 10 --connections 8"),
        ("responses error", &openai, "--api responses --raw --model ws-error --expect-error --calls 2"),
        // Realtime through the SDK, audio out (most bytes are audio deltas).
        ("realtime sdk audio", &openai, "--api realtime --sdk --audio --calls 3 --connections 2"),
        ("realtime raw deflate", &openai, "--api realtime --raw --deflate on --server-fragment 300 --calls 3"),
        // Gemini Live through google-genai (binary frames down), and raw.
        ("live sdk", &google, "--api gemini_live --sdk --calls 3"),
        (
            "live raw fragmented",
            &google,
            "--api gemini_live --raw --deflate off --fragment 30 --calls 3 --connections 2",
        ),
    ];
    let mut all = Vec::new();
    for (label, base, args) in runs {
        all.extend(check_run(&env, label, base, args));
    }
    let ops = |op: &str| all.iter().filter(|r| r["operation"] == op).count();
    assert_eq!((ops("responses"), ops("realtime"), ops("live")), (6 * 2 + 3 + 3 * 2 + 80 + 2, 3 * 2 + 3, 3 + 3 * 2));
    assert!(all.iter().any(|r| r["input_audio_tokens"].as_u64().is_some_and(|n| n > 0)), "audio counted");
    let stats = env.finish();
    for counter in ["ignored_websocket_malformed", "ignored_upgraded", "dropped_unanswered", "ignored_desync"] {
        assert_eq!(stats[counter], 0, "{counter}: {stats}");
    }
    // Every WebSocket to an LLM host was read: none of the clients is a blind spot.
    let pids: Vec<u64> = all.iter().filter_map(|r| r["pid"].as_u64()).collect();
    assert_eq!(blind_spots_of(&stats, &pids), Vec::<Value>::new(), "{}", stats["blind_spots"]);
    assert!(stats["llm_connections_decoded"].as_u64() >= Some(10), "{stats}");
}

/// The same APIs over plaintext HTTP/1.1, read at the socket syscalls.
#[test]
fn websocket_over_plaintext_sockets() {
    let _g = serial();
    let env = Env::start("ws-plain", Transport::Plain, &[]);
    let openai = env.origin("api.openai.com");
    let google = env.origin("generativelanguage.googleapis.com");
    check_run(&env, "responses", &openai, "--api responses --raw --deflate on --warmup --calls 3");
    check_run(&env, "realtime", &openai, "--api realtime --raw --deflate off --audio --calls 2");
    check_run(&env, "live", &google, "--api gemini_live --raw --deflate on --calls 2");
    let stats = env.finish();
    assert_eq!(
        (stats["ignored_websocket_malformed"].as_u64(), stats["dropped_unanswered"].as_u64()),
        (Some(0), Some(0))
    );
}

/// Codex CLI from npm with its default transport: the Responses API over a
/// WebSocket (permessage-deflate offered, context kept), through its stripped
/// rustls. Every response is one record; none came over HTTPS.
#[test]
fn codex_cli_default_websocket_transport_is_captured_exactly() {
    let _g = serial();
    let env = Env::start("codex-ws", Transport::Https, &[]);
    let codex = Codex::new(&env, true);
    codex.probe_first(&env.agent);
    let mut all = Vec::new();
    let mut codex_pids = Vec::new();
    for prompt in ["Say hello.", "Say goodbye."] {
        let before = env.server.served().len();
        let (pid, _) = run_client(codex.exec(&env, prompt));
        codex_pids.push(u64::from(pid));
        let stats = env.agent.wait_process_done(pid);
        let served: Vec<Value> = env.server.served().split_off(before);
        assert!(!served.is_empty(), "codex made no call to the local endpoint");
        assert!(
            served.iter().all(|s| s["transport"] == "websocket"),
            "codex fell back from its WebSocket transport: {served:#?}"
        );
        let records = env.agent.records_of(&[pid]);
        assert_eq!(records.len(), served.len(), "one record per response: {records:#?} served {served:#?}");
        let prices = PriceTable::shipped();
        for (r, s) in pair_with_served(&records, &served) {
            assert_matches_served(r, s, &prices);
            assert_eq!(
                (&r["tls_library"], &r["operation"], &r["path"]),
                (&"rustls".into(), &"responses".into(), &"/v1/responses".into()),
                "{r}"
            );
        }
        let cov = coverage_of(&stats, pid);
        assert_eq!(cov["records"]["rustls"].as_u64(), Some(records.len() as u64), "{cov}");
        all.extend(served);
    }
    let stats = env.finish();
    assert_eq!(
        (stats["ignored_websocket_malformed"].as_u64(), stats["dropped_unanswered"].as_u64()),
        (Some(0), Some(0))
    );
    // Its sockets (moved rustls objects included) were read: no blind spot.
    assert_eq!(blind_spots_of(&stats, &codex_pids), Vec::<Value>::new(), "{}", stats["blind_spots"]);
    eprintln!(
        "codex over WebSocket: {} responses ({} warm-ups)",
        all.len(),
        all.iter().filter(|s| s["warmup"] == true).count()
    );
}
