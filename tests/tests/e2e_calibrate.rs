//! The assessment end to end: `tokentap-agent audit` captures a workload with
//! planted inefficiencies of known size (real SDK calls through the real
//! probes), then writes events.jsonl, opportunities.json, report.md and
//! report.html. Every planted case must appear with its saving within 10% of
//! the planted truth; a clean workload must yield no opportunity; the HTML
//! renders in headless Chromium with its charts.
use std::process::Command;

use serde_json::Value;
use tokentap_e2e::calibrate;
use tokentap_e2e::*;
use tokentap_event::PriceTable;

/// Run `calls` under `tokentap-agent audit`; the audit directory's opportunities.
fn audit(name: &str, calls: &[Value]) -> (std::path::PathBuf, Vec<Value>) {
    require_root();
    let dir = scratch(name);
    let certs = Certs::generate(&dir);
    let server = Server::start(&dir, &certs);
    let out = dir.join("audit");
    let out_s = out.display().to_string();
    let mut agent = Agent::start(&dir, &["audit", "--out", &out_s]);
    let base = format!("https://api.openai.com:{}/v1", server.port);
    let (pid, stdout) = run_client(py_workload(&dir, &certs, &base, name, calls));
    assert!(stdout.contains(&format!("\"calls\": {}", calls.len())), "{stdout}");
    agent.wait_records(&[pid], calls.len());
    // Ctrl-C ends the audit; the report is still written.
    let status = agent.stop();
    assert!(status.success(), "audit exit {status}");
    for f in ["events.jsonl", "opportunities.json", "report.md", "report.html"] {
        assert!(out.join(f).exists(), "{f} written");
    }
    assert!(!agent.all_output().contains(SECRET_KEY));
    let events = std::fs::read_to_string(out.join("events.jsonl")).unwrap();
    assert!(
        !events.contains("Summarise these orders") && !events.contains("capital of France"),
        "no prompt text stored"
    );
    let opps: Vec<Value> = serde_json::from_slice(&std::fs::read(out.join("opportunities.json")).unwrap()).unwrap();
    (out, opps)
}

#[test]
fn planted_inefficiencies_are_found_with_their_savings() {
    let _g = serial();
    let prices = PriceTable::shipped();
    let (calls, truths) = calibrate::planted(&prices);
    let (out, opps) = audit("calibrate-planted", &calls);
    for (kind, truth) in &truths {
        let o = opps.iter().find(|o| o["kind"] == *kind).unwrap_or_else(|| panic!("{kind} not found in {opps:#?}"));
        let got = o["evidence"]["observed_savings_usd"].as_f64().expect("observed savings");
        assert!(((got - truth) / truth).abs() <= 0.10, "{kind}: detected {got}, planted {truth}\n{o:#}");
        // Extrapolated to a month from the (minimum one-hour) window.
        let monthly = o["estimated_monthly_savings_usd"].as_f64().unwrap();
        assert!((monthly - got * 720.0).abs() <= 1e-9 * monthly.max(1.0), "{kind}: monthly {monthly}");
        assert!(o["affected_calls"].as_u64() > Some(0) && o["title"].as_str().is_some_and(|t| !t.is_empty()));
    }
    // Ranked by saving per effort, best first.
    let score = |o: &Value| {
        let e = match o["effort"].as_str() {
            Some("low") => 1.0,
            Some("medium") => 2.0,
            _ => 3.0,
        };
        o["estimated_monthly_savings_usd"].as_f64().unwrap() / e
    };
    assert!(opps.windows(2).all(|w| score(&w[0]) >= score(&w[1])), "register ranked");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for part in ["## Spend Map", "## Opportunity Register", "## Remediation Roadmap", "### Quick wins"] {
        assert!(md.contains(part), "report.md: {part}");
    }
    // `tokentap-agent report` renders the same register again from the events file.
    let again = scratch("calibrate-rerender");
    let o = Command::new(agent_bin())
        .args(["report", &out.join("events.jsonl").display().to_string(), "--out", &again.display().to_string()])
        .output()
        .expect("report");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let opps2: Vec<Value> = serde_json::from_slice(&std::fs::read(again.join("opportunities.json")).unwrap()).unwrap();
    let kinds = |v: &[Value]| v.iter().map(|o| o["kind"].to_string()).collect::<Vec<_>>();
    assert_eq!(kinds(&opps2), kinds(&opps));
    screenshot_has_charts(&out.join("report.html"));
    same_register_from_clickhouse(&out, &opps);
}

/// The events through a collector into ClickHouse, then `tokentap-collector
/// report`: the same register as the audit's.
fn same_register_from_clickhouse(out: &std::path::Path, opps: &[Value]) {
    let dir = scratch("calibrate-clickhouse");
    let ch = ClickHouse::start(&dir, "calibrate");
    let collector = Collector::start(&dir, &ch);
    let events = std::fs::read_to_string(out.join("events.jsonl")).unwrap();
    let records: Vec<tokentap_event::LlmCall> = events.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let auth = format!("Bearer {}", collector.token);
    let (status, text) = collector.post(
        &tokentap_event::wire::encode(&records),
        &[("authorization", auth.as_str()), ("content-encoding", "zstd")],
    );
    assert_eq!(status, 200, "{text}");
    let report_dir = dir.join("report");
    let mut c = Command::new(collector_bin());
    c.args(["report", "--since", "30d", "--clickhouse-url", &ch.url, "--database", &ch.database])
        .args(["--out", &report_dir.display().to_string()]);
    let o = c.output().expect("collector report");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let from_ch: Vec<Value> =
        serde_json::from_slice(&std::fs::read(report_dir.join("opportunities.json")).unwrap()).unwrap();
    assert_eq!(from_ch.len(), opps.len(), "{from_ch:#?}");
    for (a, b) in opps.iter().zip(&from_ch) {
        assert_eq!(a["kind"], b["kind"]);
        assert_eq!(a["affected_calls"], b["affected_calls"]);
        let (x, y) = (
            a["estimated_monthly_savings_usd"].as_f64().unwrap(),
            b["estimated_monthly_savings_usd"].as_f64().unwrap(),
        );
        assert!((x - y).abs() <= 1e-6 * x.max(1e-9), "{}: {x} vs {y}", a["kind"]);
    }
}

#[test]
fn a_clean_workload_yields_no_opportunities() {
    let _g = serial();
    let (out, opps) = audit("calibrate-clean", &calibrate::clean());
    assert!(opps.is_empty(), "nothing to report on a clean workload: {opps:#?}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("No opportunities found"));
}

/// report.html in headless Chromium: a screenshot in which the chart colours
/// appear, and the rendered DOM holds every chart.
fn screenshot_has_charts(html: &std::path::Path) {
    let chromium = ["chromium", "chromium-browser"]
        .iter()
        .find(|c| {
            Command::new("sh").args(["-c", &format!("command -v {c}")]).output().is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| panic!("chromium is needed for the report test: run `cargo xtask test`, which installs it"));
    let profile = html.with_file_name("chromium-profile");
    let shot = html.with_file_name("report.png");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ];
    let url = format!("file://{}", html.display());
    let o = Command::new(chromium)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=1100,1600", &url])
        .output()
        .expect("chromium");
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
    let dom = Command::new(chromium)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", &url])
        .output()
        .expect("chromium dump-dom");
    let dom = String::from_utf8_lossy(&dom.stdout);
    for chart in ["spend-over-time", "spend-by-service", "spend-by-model", "top-opportunities"] {
        assert!(dom.contains(&format!("data-chart=\"{chart}\"")), "rendered DOM lacks {chart}");
    }
    // Decode the PNG and look for the charts' first two colours.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().expect("png");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("frame");
    let px = info.color_type.samples();
    let has = |rgb: [u8; 3]| buf[..info.buffer_size()].chunks(px).any(|p| p[..3] == rgb);
    assert!(has([0x4e, 0x79, 0xa7]) && has([0xf2, 0x8e, 0x2b]), "chart colours visible in the screenshot");
}
