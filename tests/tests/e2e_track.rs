//! Track end to end: the planted-waste workload captured by `tokentap-agent
//! audit` (real SDK calls through the real probes) is the baseline
//! (baseline.json); the same work remediated, the planted workload again and
//! a worse workload are captured the same way and compared with it by
//! `tokentap-agent report --baseline`. Each realised saving must be within
//! 10 % of the truth the workloads compute from the price table. Then the
//! same comparison from ClickHouse (`tokentap-collector baseline save` and
//! `report --baseline`) must equal the one from the files.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tokentap_e2e::calibrate;
use tokentap_e2e::*;
use tokentap_event::PriceTable;

/// `calls` under `tokentap-agent audit --out DIR/name` (one key secret for
/// the whole test: the prompt hashes of all windows are comparable).
fn capture(dir: &Path, certs: &Certs, server: &Server, name: &str, calls: &[Value]) -> PathBuf {
    let out = dir.join(name);
    let out_s = out.display().to_string();
    let mut agent = Agent::start(dir, &["audit", "--out", &out_s]);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let (pid, stdout) = run_client(py_workload(dir, certs, &base, name, calls));
    assert!(stdout.contains(&format!("\"calls\": {}", calls.len())), "{stdout}");
    agent.wait_records(&[pid], calls.len());
    assert!(agent.stop().success(), "audit {name}");
    for f in ["events.jsonl", "baseline.json", "report.md"] {
        assert!(out.join(f).exists(), "{name}: {f} written");
    }
    out
}

/// `tokentap-agent report EVENTS --baseline FILE`: its compare.json.
fn compare_files(events_dir: &Path, baseline: &Path, out: &Path) -> Value {
    let o = Command::new(agent_bin())
        .arg("report")
        .arg(events_dir.join("events.jsonl"))
        .arg("--baseline")
        .arg(baseline)
        .arg("--out")
        .arg(out)
        .output()
        .expect("agent report");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["compare.md", "compare.html"] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert!(String::from_utf8_lossy(&o.stdout).contains("## Roadmap targets"));
    serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap()
}

fn progress<'a>(c: &'a Value, kind: &str) -> &'a Value {
    c["progress"].as_array().unwrap().iter().find(|p| p["kind"] == kind).unwrap_or_else(|| panic!("{kind} in {c:#}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("number: {v}"))
}

#[test]
fn savings_against_the_baseline_are_realised_tracked_and_regressions_flagged() {
    let _g = serial();
    require_root();
    let prices = PriceTable::shipped();
    let dir = scratch("track");
    let certs = Certs::generate(&dir);
    let server = Server::start(&dir, &certs);
    let (planted_calls, planted_truths) = calibrate::planted(&prices);
    let (fixed_calls, realised_truths) = calibrate::remediated(&prices);
    let planted = capture(&dir, &certs, &server, "planted", &planted_calls);
    let fixed = capture(&dir, &certs, &server, "remediated", &fixed_calls);
    let baseline = planted.join("baseline.json");
    let b: Value = serde_json::from_slice(&std::fs::read(&baseline).unwrap()).unwrap();
    assert_eq!(b["name"], "planted");
    assert_eq!(b["totals"]["calls"].as_u64(), Some(planted_calls.len() as u64));
    assert_eq!(b["opportunities"].as_array().unwrap().len(), b["roadmap"].as_array().unwrap().len());
    let md = std::fs::read_to_string(planted.join("report.md")).unwrap();
    assert!(md.contains("### Quick wins: sprint 1") && md.contains("### Structural changes: sprint 3"), "{md}");
    assert_eq!(md.matches("Success metric:").count(), planted_truths.len(), "{md}");
    for (kind, _) in &planted_truths {
        let item = b["roadmap"].as_array().unwrap().iter().find(|i| i["kind"] == *kind).expect(kind);
        assert!(item["target"].is_number() && item["due"].is_string() && item["metric"].is_string(), "{item:#}");
    }

    // Remediated: every item done, each realised saving within 10 % of the truth.
    let c = compare_files(&fixed, &baseline, &dir.join("cmp-remediated"));
    for (kind, truth) in &realised_truths {
        let p = progress(&c, kind);
        let got = f(&p["realised_monthly_savings_usd"]);
        // Both windows are under an hour: a month is 720 times the window.
        let want = truth * 720.0;
        assert!((got - want).abs() <= 0.10 * want.abs() + 1e-9, "{kind}: realised {got}, truth {want}\n{p:#}");
        assert_eq!(p["status"], "done", "{kind}: {p:#}");
    }
    assert_eq!(c["regressions"].as_array().unwrap().len(), 0, "{c:#}");
    assert!(f(&c["spend"]["change_usd"]) < 0.0);
    let s = &c["spend"];
    let parts = f(&s["volume_usd"]) + f(&s["mix_usd"]) + f(&s["unit_cost_usd"]);
    assert!((parts - f(&s["change_usd"])).abs() <= 1e-9 * f(&s["baseline_monthly_usd"]), "{s:#}");

    // The planted workload again: nothing saved, nothing regressed.
    let again = capture(&dir, &certs, &server, "planted-again", &planted_calls);
    let c2 = compare_files(&again, &baseline, &dir.join("cmp-again"));
    for p in c2["progress"].as_array().unwrap() {
        let est = f(&p["estimated_monthly_savings_usd"]);
        assert!(f(&p["realised_monthly_savings_usd"]).abs() <= 0.10 * est, "{p:#}");
        assert_eq!(p["status"], "not_started", "{p:#}");
    }
    assert_eq!(c2["regressions"].as_array().unwrap().len(), 0, "{c2:#}");
    assert_eq!(c2["new_opportunities"].as_array().unwrap().len(), 0, "{c2:#}");

    // Worse than the remediated baseline: each regression flagged.
    let worse = capture(&dir, &certs, &server, "worse", &calibrate::worse(&prices));
    let c3 = compare_files(&worse, &fixed.join("baseline.json"), &dir.join("cmp-worse"));
    let flagged: Vec<&str> = c3["regressions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["scope"] == "all calls")
        .map(|r| r["metric"].as_str().unwrap())
        .collect();
    for m in ["cost_per_call", "cache_hit_ratio", "duplicate_share", "frontier_call_share"] {
        assert!(flagged.contains(&m), "{m} not flagged: {:#}", c3["regressions"]);
    }
    let new: Vec<&str> =
        c3["new_opportunities"].as_array().unwrap().iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert!(new.contains(&"duplicate_calls") && new.contains(&"prompt_caching"), "{new:?}");

    same_comparison_from_clickhouse(&dir, &planted, &fixed, &c);
}

/// The planted and remediated events through a collector into ClickHouse;
/// the baseline saved there from the planted window; the remediated window
/// compared with it: the same comparison as from the files.
fn same_comparison_from_clickhouse(dir: &Path, planted: &Path, fixed: &Path, from_files: &Value) {
    let ch = ClickHouse::start(dir, "track");
    let collector = Collector::start(dir, &ch);
    let auth = format!("Bearer {}", collector.token);
    let mut windows = Vec::new();
    for d in [planted, fixed] {
        let text = std::fs::read_to_string(d.join("events.jsonl")).unwrap();
        let records: Vec<tokentap_event::LlmCall> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let (status, body) = collector.post(
            &tokentap_event::wire::encode(&records),
            &[("authorization", auth.as_str()), ("content-encoding", "zstd")],
        );
        assert_eq!(status, 200, "{body}");
        let mut ts: Vec<&str> = records.iter().map(|r| r.ts.as_str()).collect();
        ts.sort();
        windows.push((ts[0].to_owned(), ts[ts.len() - 1].to_owned(), records.len()));
    }
    let cli = |args: &[&str]| {
        let o = Command::new(collector_bin())
            .args(args)
            .args(["--clickhouse-url", &ch.url, "--database", &ch.database])
            .output()
            .expect("tokentap-collector");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // Stored once acknowledged; a deadline all the same.
    let total = (windows[0].2 + windows[1].2) as u64;
    wait_for("rows stored", std::time::Duration::from_secs(60), || {
        (ch.count("SELECT count() FROM llm_calls FINAL") == total).then_some(())
    });
    let (ok, out, err) = cli(&["baseline", "save", "planted", "--since", &windows[0].0, "--until", &windows[0].1]);
    assert!(ok && out.contains("saved baseline planted"), "{out}{err}");
    let (ok, out, _) = cli(&["baseline", "list"]);
    assert!(ok && out.lines().any(|l| l.starts_with("planted\t")), "{out}");
    let report_dir = dir.join("cmp-clickhouse");
    let rd = report_dir.display().to_string();
    let (ok, out, err) =
        cli(&["report", "--since", &windows[1].0, "--until", &windows[1].1, "--baseline", "planted", "--out", &rd]);
    assert!(ok && out.contains("## Roadmap targets"), "{out}{err}");
    let c: Value = serde_json::from_slice(&std::fs::read(report_dir.join("compare.json")).unwrap()).unwrap();
    let (a, b) = (from_files["progress"].as_array().unwrap(), c["progress"].as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x["kind"], &x["status"]), (&y["kind"], &y["status"]));
        // Sums in ClickHouse run in another order: equal to the last few bits.
        for k in ["target", "realised_monthly_savings_usd", "estimated_monthly_savings_usd"] {
            let (p, q) = (f(&x[k]), f(&y[k]));
            assert!((p - q).abs() <= 1e-6 * p.abs().max(1e-9), "{}: {k} {p} vs {q}", x["kind"]);
        }
    }
    for k in ["baseline_monthly_usd", "now_monthly_usd", "volume_usd", "mix_usd", "unit_cost_usd"] {
        let (p, q) = (f(&from_files["spend"][k]), f(&c["spend"][k]));
        assert!((p - q).abs() <= 1e-6 * p.abs().max(1e-9), "spend {k}: {p} vs {q}");
    }
    assert_eq!(c["regressions"], from_files["regressions"]);
    let (ok, out, _) = cli(&["baseline", "delete", "planted"]);
    assert!(ok && out.contains("deleted baseline planted"));
    let (ok, out, _) = cli(&["baseline", "list"]);
    assert!(ok && !out.contains("planted\t"), "{out}");
    let (ok, _, err) = cli(&["report", "--since", "30d", "--baseline", "planted"]);
    assert!(!ok && err.contains("no baseline named \"planted\""), "{err}");
}
