//! `cargo xtask demo`: `tokentap-agent audit` captures a built-in workload — a
//! local HTTPS endpoint speaking the OpenAI and Anthropic formats, driven by the
//! real Python SDKs, Node's openai package and curl, with planted inefficiencies
//! (duplicates, an uncached 2k-token system prompt, a frontier model doing
//! yes/no, a tool loop, a growing conversation, pretty JSON, one-by-one
//! embeddings) — and writes the assessment: report.md (printed), report.html,
//! opportunities.json, baseline.json. Then Track: the same planted work with
//! every remediation applied is captured again and compared with that
//! baseline (compare.md printed, compare.html, compare.json).
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use tokentap_e2e::{
    calibrate, py_client, py_workload, run_client, with_provider_hosts, Agent, Certs, Server, SECRET_KEY,
};
use tokentap_event::LlmCall;

pub fn run(out: &Path, agent_bin: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let out = out.canonicalize()?;
    // SAFETY: single-threaded at this point; the harness reads it when spawning.
    unsafe { std::env::set_var("TOKENTAP_AGENT_BIN", agent_bin) };
    for f in ["records.jsonl", "stats.json", "served.jsonl"] {
        let _ = std::fs::remove_file(out.join(f));
    }
    eprintln!("demo: starting a local LLM endpoint and the agent (needs root for eBPF)");
    let certs = Certs::generate(&out);
    let server = Server::start(&out, &certs);
    let audit = out.join("audit");
    let audit_s = audit.display().to_string();
    let mut agent = Agent::start(&out, &["audit", "--out", &audit_s]);
    let openai = format!("https://api.openai.com:{}/v1", server.port);
    let anthropic = format!("https://api.anthropic.com:{}", server.port);

    eprintln!("demo: Python openai + anthropic SDKs, every operation");
    run_client(py_client(&out, &certs, &openai, &anthropic, "all_ops"));
    eprintln!("demo: 40 concurrent calls from 8 threads");
    run_client(py_client(&out, &certs, &openai, &anthropic, "concurrent"));
    eprintln!("demo: Node openai package");
    let mut node = with_provider_hosts(
        &out,
        "node",
        &[
            crate::workspace_root().join("tests/clients/node_client.mjs").display().to_string(),
            openai,
            SECRET_KEY.into(),
        ],
    );
    node.env("NODE_EXTRA_CA_CERTS", &certs.ca);
    run_client(node);
    eprintln!("demo: curl");
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--fail", "-o", "/dev/null", "--cacert"])
        .arg(&certs.ca)
        .arg(format!("https://127.0.0.1:{}/v1/chat/completions", server.port))
        .args(["-d", r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#]);
    run_client(curl);

    eprintln!("demo: a workload with planted inefficiencies (openai SDK)");
    let (workload, _) = calibrate::planted(&tokentap_event::PriceTable::shipped());
    run_client(py_workload(&out, &certs, &format!("https://api.openai.com:{}/v1", server.port), "workload", &workload));

    let served = server.served().len();
    tokentap_e2e::wait_for("the agent to record every call", std::time::Duration::from_secs(30), || {
        (agent.records().len() >= served).then_some(())
    });
    let status = agent.stop();
    anyhow::ensure!(status.success(), "agent exited with {status}");
    let records: Vec<LlmCall> = std::fs::read_to_string(&agent.records)
        .context("reading records")?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    println!("\ntokentap captured {} LLM calls ({} served by the endpoint):\n", records.len(), served);
    print!("{}", std::fs::read_to_string(audit.join("report.md")).context("reading report.md")?);
    let stats = agent.stats();
    println!(
        "\nassessment: {}/{{report.md,report.html,opportunities.json,events.jsonl}}\nagent counters: {}\nagent log: {}",
        audit.display(),
        agent.stats.display(),
        agent.stderr.display()
    );
    println!(
        "dropped calls: {}, kernel losses: {}",
        [
            "dropped_unanswered",
            "dropped_at_exit",
            "dropped_at_handover",
            "dropped_truncated_body",
            "dropped_body_decode",
            "dropped_parse_error"
        ]
        .iter()
        .map(|k| stats[k].as_u64().unwrap_or(0))
        .sum::<u64>(),
        stats["kernel_ring_full"].as_u64().unwrap_or(0)
    );
    track(&out, &certs, &server, &audit, agent_bin)
}

/// The remediated workload captured and compared with the audit's baseline.
fn track(out: &Path, certs: &Certs, server: &Server, audit: &Path, agent_bin: &Path) -> Result<()> {
    eprintln!("\ndemo: Track — the same work with every remediation applied, compared with the baseline");
    let now = out.join("track-now");
    let now_s = now.display().to_string();
    let mut agent = Agent::start(out, &["audit", "--out", &now_s]);
    let (workload, _) = calibrate::remediated(&tokentap_event::PriceTable::shipped());
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let (pid, _) = run_client(py_workload(out, certs, &base, "remediated", &workload));
    agent.wait_records(&[pid], workload.len());
    let status = agent.stop();
    anyhow::ensure!(status.success(), "agent exited with {status}");
    let compare = out.join("compare");
    let o = Command::new(agent_bin)
        .arg("report")
        .arg(now.join("events.jsonl"))
        .arg("--baseline")
        .arg(audit.join("baseline.json"))
        .arg("--out")
        .arg(&compare)
        .output()
        .context("tokentap-agent report --baseline")?;
    anyhow::ensure!(o.status.success(), "report --baseline: {}", String::from_utf8_lossy(&o.stderr));
    print!("\n{}", String::from_utf8_lossy(&o.stdout));
    println!(
        "\nbaseline: {}\ncomparison: {}/{{compare.md,compare.html,compare.json}}",
        audit.join("baseline.json").display(),
        compare.display()
    );
    Ok(())
}
