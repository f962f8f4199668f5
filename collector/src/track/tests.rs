use super::*;
use crate::budgets::Scope;

const GOOD: &str = "[[budget]]\nname = \"search\"\nmonthly_usd = 100\nscope = \"team\"\nvalue = \"search\"\n";

fn budget(name: &str, scope: Scope, value: &str, monthly: f64) -> Budget {
    Budget { name: name.into(), monthly_usd: monthly, scope, value: value.into() }
}

#[test]
fn a_bad_reload_keeps_the_budgets_and_is_counted_once() {
    let dir = std::env::temp_dir().join(format!("tt-track-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("budgets.toml");
    std::fs::write(&path, GOOD).unwrap();
    let t = Track::default();
    let (b, text) = budgets::load(&path).unwrap();
    t.set_budgets(b, text);
    t.reload(&path);
    assert_eq!(t.file_reloads.load(Ordering::Relaxed), 0, "unchanged file: nothing to do");
    std::fs::write(&path, GOOD.replace("100", "-1")).unwrap();
    t.reload(&path);
    t.reload(&path);
    assert_eq!(t.file_errors.load(Ordering::Relaxed), 1, "counted once per bad version");
    assert_eq!(t.lock().budgets[0].monthly_usd, 100.0, "the old budgets stay");
    std::fs::write(&path, GOOD.replace("100", "250")).unwrap();
    t.reload(&path);
    assert_eq!(t.lock().budgets[0].monthly_usd, 250.0);
    assert_eq!(t.file_reloads.load(Ordering::Relaxed), 1);
    std::fs::remove_file(&path).unwrap();
    t.reload(&path);
    t.reload(&path);
    assert_eq!(t.file_errors.load(Ordering::Relaxed), 2, "a vanished file is an error, counted once");
    assert_eq!(t.lock().budgets.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn renders_budget_and_baseline_gauges() {
    let t = Track::default();
    t.set_budgets(
        vec![budget("search", Scope::Team, "search", 100.0), budget("ck\"x", Scope::Service, "checkout", 10.0)],
        String::new(),
    );
    {
        let mut s = t.lock();
        s.numbers.insert("search".into(), forecast::Numbers { month_to_date: 50.0, daily_rate: 5.0, forecast: 150.0 });
        s.last_refresh = Some(1_700_000_000.0);
        let mut b = BTreeMap::new();
        b.insert("checkout".into(), baseline::Point { cost_per_call: Some(0.01), cache_hit_ratio: Some(0.4) });
        s.baseline = Some(Some(b));
        s.current.insert("checkout".into(), baseline::Point { cost_per_call: Some(0.02), cache_hit_ratio: None });
    }
    *t.baseline_name.lock().unwrap() = Some("before".into());
    let mut m = String::new();
    t.render(&mut m);
    let l = "budget=\"search\",scope=\"team\",scope_value=\"search\"";
    assert!(m.contains(&format!("tokentap_budget_forecast_ratio{{{l}}} 1.5\n")), "{m}");
    assert!(m.contains(&format!("tokentap_budget_month_to_date_usd{{{l}}} 50\n")), "{m}");
    assert!(m.contains(&format!("tokentap_budget_forecast_usd{{{l}}} 150\n")), "{m}");
    assert!(m.contains(&format!("tokentap_budget_month_to_date_ratio{{{l}}} 0.5\n")), "{m}");
    assert!(
        m.contains("tokentap_budget_monthly_usd{budget=\"ck\\\"x\",scope=\"service\",scope_value=\"checkout\"} 10\n")
    );
    assert!(!m.contains("tokentap_budget_forecast_usd{budget=\"ck"), "no numbers before a refresh: {m}");
    assert!(m.contains("tokentap_budgets 2\n"), "{m}");
    assert!(m.contains("tokentap_budget_last_refresh_timestamp_seconds 1700000000\n"), "{m}");
    let b = "baseline=\"before\",service=\"checkout\"";
    assert!(m.contains(&format!("tokentap_track_baseline_cost_per_call_usd{{{b}}} 0.01\n")), "{m}");
    assert!(m.contains(&format!("tokentap_track_current_cost_per_call_usd{{{b}}} 0.02\n")), "{m}");
    assert!(m.contains(&format!("tokentap_track_baseline_cache_hit_ratio{{{b}}} 0.4\n")), "{m}");
    assert!(!m.contains("tokentap_track_current_cache_hit_ratio{"), "unknown: no sample: {m}");
    assert!(m.contains("tokentap_track_baseline_found{baseline=\"before\"} 1\n"), "{m}");
    // Every sample line parses as `name{labels} value` or `name value`.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let v = line.rsplit(' ').next().unwrap();
        assert!(v.parse::<f64>().is_ok(), "{line}");
    }
}

#[test]
fn a_missing_baseline_says_so() {
    let t = Track::default();
    t.lock().baseline = Some(None);
    *t.baseline_name.lock().unwrap() = Some("gone".into());
    let mut m = String::new();
    t.render(&mut m);
    assert!(m.contains("tokentap_track_baseline_found{baseline=\"gone\"} 0\n"), "{m}");
    assert!(!m.contains("tokentap_track_baseline_cost_per_call_usd{"), "{m}");
}
