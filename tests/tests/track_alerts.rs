//! Budgets and alerts end to end: a collector with a budgets file and a
//! tracked baseline over a real ClickHouse engine, scraped by a real
//! Prometheus (Debian's `prometheus`) evaluating the shipped rules; the rules
//! themselves checked and unit-tested with `promtool`.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use serde_json::Value;
use tokentap_e2e::prometheus::{sample, Prometheus};
use tokentap_e2e::*;
use tokentap_event::{wire, LlmCall};

fn alerts_dir() -> PathBuf {
    workspace_root().join("deploy/alerts")
}

fn promtool(args: &[&str]) -> String {
    require_tool("promtool");
    let out = Command::new("promtool").args(args).current_dir(alerts_dir()).output().expect("promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn shipped_rules_pass_promtool_check_and_their_unit_tests() {
    let text = promtool(&["check", "rules", "prometheus-rules.yaml"]);
    assert!(text.contains("SUCCESS: 15 rules found"), "{text}");
    let text = promtool(&["test", "rules", "prometheus-rules.test.yaml"]);
    assert!(text.contains("SUCCESS"), "{text}");
    // Every alert has a unit test that expects it to fire.
    let rules = std::fs::read_to_string(alerts_dir().join("prometheus-rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(alerts_dir().join("prometheus-rules.test.yaml")).unwrap();
    for name in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {name}\n")), "{name} has no promtool test");
    }
}

/// The shipped rules with every `for:` at 0s: the real Prometheus shows the
/// expressions fire (promtool's tests cover the `for` durations).
fn rules_without_for(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(alerts_dir().join("prometheus-rules.yaml")).unwrap();
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 0s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_owned(),
        })
        .collect();
    let p = dir.join("rules.yaml");
    std::fs::write(&p, out.join("\n")).unwrap();
    p
}

fn call(ts: &str, service: &str, namespace: &str, cost: f64, cached: u64) -> LlmCall {
    LlmCall {
        event_id: LlmCall::new_event_id(),
        ts: ts.to_owned(),
        provider: "openai".into(),
        operation: "chat".into(),
        request_model: Some("gpt-4o".into()),
        response_model: Some("gpt-4o".into()),
        status: Some(200),
        input_tokens: Some(1000),
        output_tokens: Some(100),
        cached_input_tokens: Some(cached),
        cost_usd: Some(cost),
        service: Some(service.into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

fn send(c: &Collector, calls: &[LlmCall]) {
    let auth = format!("Bearer {}", c.token);
    let h = [("authorization", auth.as_str()), ("content-encoding", "zstd"), (wire::HEADER_VERSION, wire::VERSION)];
    let (status, text) = c.post(&wire::encode(calls), &h);
    assert_eq!(status, 200, "{text}");
}

fn budgets(search_monthly: f64) -> String {
    let b = |name: &str, monthly: f64, scope: &str, value: &str| {
        format!("[[budget]]\nname = \"{name}\"\nmonthly_usd = {monthly}\nscope = \"{scope}\"\nvalue = \"{value}\"\n\n")
    };
    [
        b("search-team", search_monthly, "team", "search"),
        b("ci-key", 1.5, "api_key_id", "k-ci"),
        b("shop", 1e6, "namespace", "shop"),
        b("checkout-svc", 1e6, "service", "checkout"),
        b("payments", 10.0, "namespace", "payments"),
    ]
    .concat()
}

fn series(budget: &str, scope: &str, value: &str) -> String {
    format!("{{budget=\"{budget}\",scope=\"{scope}\",scope_value=\"{value}\"}}")
}

/// Names of the budgets (or services) an alert fires for.
fn firing_for(p: &Prometheus, alert: &str, label: &str) -> Vec<String> {
    let mut v: Vec<String> = p.firing(alert).iter().filter_map(|l| l[label].as_str().map(str::to_owned)).collect();
    v.sort();
    v
}

#[test]
fn budgets_scraped_by_prometheus_alert_before_the_budget_is_blown() {
    let dir = scratch("track-alerts");
    let ch = ClickHouse::start(&dir, "track_alerts");
    let now = Utc::now();
    let (y, m) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
    let days_left = (Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).unwrap() - now).num_seconds() as f64 / 86_400.0;
    assert!(days_left > 0.02, "the forecast needs some of the month left: run again after midnight UTC");
    // 3 USD spent today by team `search`; over 24 h the daily rate is at least
    // 3 / (25/24) USD (the window starts at an hour's start), so the forecast
    // is at least 3 + 2.88 x days left. A budget halfway: not spent, forecast over.
    let search_monthly = 3.0 + 1.44 * days_left;
    let budgets_file = dir.join("budgets.toml");
    std::fs::write(&budgets_file, budgets(search_monthly)).unwrap();
    let collector = Collector::start_args(
        &dir,
        &ch,
        &[
            "--budgets",
            budgets_file.to_str().unwrap(),
            "--budget-refresh-secs",
            "1",
            "--budget-rate-window-hours",
            "24",
            "--track-baseline",
            "before",
            "--track-window-hours",
            "24",
        ],
    );
    // The baseline's window, two days ago: search-api cheap and well cached.
    let then = LlmCall::format_ts((now - chrono::Duration::days(2)).timestamp_nanos_opt().unwrap() as i128);
    let old: Vec<LlmCall> = (0..10)
        .flat_map(|_| [call(&then, "search-api", "old", 0.1, 500), call(&then, "checkout", "old", 0.5, 500)])
        .collect();
    send(&collector, &old);
    let since = (now - chrono::Duration::days(3)).to_rfc3339();
    let until = (now - chrono::Duration::days(1)).to_rfc3339();
    let out = Command::new(collector_bin())
        .args(["baseline", "save", "before", "--since", &since, "--until", &until])
        .args(["--clickhouse-url", &ch.url, "--database", &ch.database])
        .output()
        .unwrap();
    assert!(out.status.success(), "baseline save: {}", String::from_utf8_lossy(&out.stderr));
    // Today: search-api ten times dearer per call and barely cached.
    let ts = now_ts();
    let mut today = Vec::new();
    for _ in 0..3 {
        let mut c = call(&ts, "search-api", "search", 1.0, 100);
        c.labels.insert("team".into(), "search".into());
        c.api_key_id = Some("k-search".into());
        today.push(c);
    }
    for _ in 0..2 {
        let mut c = call(&ts, "ci-runner", "ci", 1.0, 0);
        c.api_key_id = Some("k-ci".into());
        c.labels.insert("team".into(), "platform".into());
        today.push(c);
    }
    today.push(call(&ts, "checkout", "shop", 0.5, 500));
    send(&collector, &today);

    // The collector's own numbers, from ClickHouse.
    let search = series("search-team", "team", "search");
    wait_for("search-team's month-to-date spend", Duration::from_secs(60), || {
        (collector.metric(&format!("tokentap_budget_month_to_date_usd{search}")) == 3.0).then_some(())
    });
    let m = collector.metrics();
    let v = |s: &str| metric_value(&m, s);
    let rate = v(&format!("tokentap_budget_daily_rate_usd{search}"));
    assert!((3.0 / (25.0 / 24.0) - 1e-9..=3.0 + 1e-9).contains(&rate), "daily rate {rate}\n{m}");
    let forecast = v(&format!("tokentap_budget_forecast_usd{search}"));
    // days_left was measured a few seconds before the collector's refresh.
    let want = 3.0 + rate * days_left;
    assert!((forecast - want).abs() < rate * 60.0 / 86_400.0, "forecast {forecast}, want {want}");
    assert!(v(&format!("tokentap_budget_forecast_ratio{search}")) > 1.0);
    assert!(v(&format!("tokentap_budget_month_to_date_ratio{search}")) < 1.0);
    assert_eq!(v(&format!("tokentap_budget_month_to_date_usd{}", series("ci-key", "api_key_id", "k-ci"))), 2.0);
    assert_eq!(v(&format!("tokentap_budget_month_to_date_usd{}", series("shop", "namespace", "shop"))), 0.5);
    assert_eq!(v(&format!("tokentap_budget_forecast_usd{}", series("payments", "namespace", "payments"))), 0.0);
    assert_eq!(v("tokentap_budgets"), 5.0);
    // Spend counters of the rows this collector stored.
    let spend =
        |svc: &str| v(&format!("tokentap_spend_usd_total{{service=\"{svc}\",model=\"gpt-4o\",provider=\"openai\"}}"));
    assert!((spend("search-api") - 4.0).abs() < 1e-9, "10 x 0.1 then 3 x 1: {m}");
    assert!((spend("checkout") - 5.5).abs() < 1e-9, "{m}");
    // The baseline beside now.
    let b = "{baseline=\"before\",service=\"search-api\"}";
    wait_for("the baseline's gauges", Duration::from_secs(30), || {
        (collector.metric(&format!("tokentap_track_current_cost_per_call_usd{b}")) == 1.0).then_some(())
    });
    let m = collector.metrics();
    let v = |s: &str| metric_value(&m, s);
    assert!((v(&format!("tokentap_track_baseline_cost_per_call_usd{b}")) - 0.1).abs() < 1e-12, "{m}");
    assert_eq!(v(&format!("tokentap_track_baseline_cache_hit_ratio{b}")), 0.5, "{m}");
    assert_eq!(v(&format!("tokentap_track_current_cache_hit_ratio{b}")), 0.1, "{m}");
    assert_eq!(v("tokentap_track_baseline_found{baseline=\"before\"}"), 1.0);

    // A real Prometheus scraping it, with the shipped rules.
    let prom = Prometheus::start(&dir, &[format!("127.0.0.1:{}", collector.port)], &rules_without_for(&dir));
    wait_for("the budget alerts to fire", Duration::from_secs(60), || {
        let over = firing_for(&prom, "TokentapBudgetForecastOver", "budget");
        (over == ["ci-key", "search-team"]).then_some(())
    });
    assert_eq!(firing_for(&prom, "TokentapBudgetExceeded", "budget"), ["ci-key"], "search-team not yet spent");
    // search-api regressed, and so did the whole (every call: 0.30 -> 0.92 USD
    // per call, 50 % -> 13 % cached); checkout is as in the baseline.
    wait_for("the regression alerts", Duration::from_secs(30), || {
        let cpc = firing_for(&prom, "TokentapCostPerCallRegression", "service");
        let hit = firing_for(&prom, "TokentapCacheHitRatioRegression", "service");
        (cpc == ["(all)", "search-api"] && hit == ["(all)", "search-api"]).then_some(())
    });
    let names: Vec<String> =
        prom.alerts().iter().filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned)).collect();
    for quiet in ["TokentapBaselineMissing", "TokentapBudgetDataStale", "TokentapBudgetsFileRefused"] {
        assert!(!names.iter().any(|n| n == quiet), "{quiet} fired: {names:?}");
    }
    let r = prom.query(&format!("tokentap_budget_month_to_date_usd{search}"));
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(sample(&r[0]), 3.0);

    // Every Prometheus query of the Track dashboard and of the Grafana alert
    // rules runs on it; the budget ones return data.
    let track: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace_root().join("dashboards/track.json")).unwrap())
            .unwrap();
    for p in track["panels"].as_array().unwrap().iter().filter(|p| p["datasource"]["type"] == "prometheus") {
        for t in p["targets"].as_array().unwrap() {
            let rows = prom.query(t["expr"].as_str().unwrap());
            assert!(!rows.is_empty(), "{}: {} returned nothing", p["title"], t["expr"]);
        }
    }
    let grafana = yaml_json(&workspace_root().join("dashboards/provisioning/alerting/tokentap.yaml"));
    for g in grafana["groups"].as_array().unwrap() {
        for rule in g["rules"].as_array().unwrap() {
            let expr = rule["data"][0]["model"]["expr"].as_str().expect("expr");
            let rows = prom.query(expr); // A PromQL error fails here.
            if rule["title"] == "TokentapBudgetForecastOver" {
                let over: Vec<&str> =
                    rows.iter().filter(|r| sample(r) > 1.0).filter_map(|r| r["metric"]["budget"].as_str()).collect();
                assert_eq!(over.len(), 2, "{rows:?}");
            }
        }
    }

    // A bad budgets file is refused, counted, and the budgets stay.
    std::fs::write(&budgets_file, budgets(search_monthly).replace("monthly_usd = 1.5", "monthly_usd = -1")).unwrap();
    wait_for("the bad file to be counted", Duration::from_secs(30), || {
        (collector.metric("tokentap_budget_file_errors_total") == 1.0).then_some(())
    });
    assert_eq!(collector.metric("tokentap_budgets"), 5.0);
    assert!(collector.log().contains("budget #2 (\"ci-key\"): monthly_usd must be a number above 0"));
    // A good one replaces the budgets: search-team's raised, its alert resolves.
    std::fs::write(&budgets_file, budgets(1e6)).unwrap();
    wait_for("the forecast alert to resolve for search-team", Duration::from_secs(60), || {
        (firing_for(&prom, "TokentapBudgetForecastOver", "budget") == ["ci-key"]).then_some(())
    });
    assert_eq!(collector.metric(&format!("tokentap_budget_monthly_usd{search}")), 1e6);
    assert_eq!(collector.metric("tokentap_budget_file_reloads_total"), 1.0);
    drop(prom);
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}

/// YAML -> JSON with PyYAML.
fn yaml_json(path: &Path) -> Value {
    let out = Command::new("python3")
        .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
        .arg(path)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_bad_budgets_file_stops_the_start_and_a_missing_baseline_is_reported() {
    let dir = scratch("track-bad");
    let bad = dir.join("budgets.toml");
    std::fs::write(&bad, "[[budget]]\nname = \"x\"\nmonthly_usd = 5\nscope = \"pod\"\nvalue = \"y\"\n").unwrap();
    let out = Command::new(collector_bin())
        .args(["--budgets", bad.to_str().unwrap(), "--clickhouse-url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("budgets file") && err.contains("unknown variant `pod`"), "{err}");
    // No such baseline: said once in the log, a gauge at 0, the collector serves on.
    let ch = ClickHouse::start(&dir, "track_bad");
    let c = Collector::start_args(&dir, &ch, &["--track-baseline", "never-saved", "--budget-refresh-secs", "1"]);
    wait_for("the missing baseline gauge", Duration::from_secs(30), || {
        (c.metrics().contains("tokentap_track_baseline_found{baseline=\"never-saved\"} 0\n")).then_some(())
    });
    wait_for("a second refresh", Duration::from_secs(30), || {
        (c.metric("tokentap_budget_refreshes_total") >= 2.0).then_some(())
    });
    assert_eq!(c.log().matches("no such baseline").count(), 1, "{}", c.log());
    assert_eq!(c.metric("tokentap_budget_refresh_errors_total"), 0.0);
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}
