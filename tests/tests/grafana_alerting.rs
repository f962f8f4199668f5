//! The Grafana alert provisioning (dashboards/provisioning/alerting/*.yaml)
//! checked against Grafana's file-provisioning format for alert rules
//! (apiVersion 1; Grafana's `AlertRuleGroupV1` / `AlertRuleV1` / `QueryV1`,
//! pkg/services/provisioning/alerting/rules_types.go, and the server-side
//! expressions' models): required fields and their types, no unknown fields,
//! durations Grafana parses, every rule's refIds unique and its condition and
//! expressions pointing at them, every datasource uid provisioned. No Grafana
//! runs here; the PromQL itself runs on a real Prometheus in track_alerts.rs.
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::process::Command;

use serde_json::{Map, Value};
use tokentap_e2e::{require_tool, workspace_root};

/// YAML -> JSON with PyYAML (as tests/deploy/validate.py reads YAML).
pub fn yaml(path: &Path) -> Value {
    require_tool("python3");
    let out = Command::new("python3")
        .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
        .arg(path)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The checks return the first problem found (so a test can show a spoiled
/// file is refused without panicking).
macro_rules! ensure {
    ($c:expr, $($m:tt)+) => {
        if !$c {
            return Err(format!($($m)+));
        }
    };
    ($c:expr) => {
        if !$c {
            return Err(stringify!($c).to_owned());
        }
    };
}

macro_rules! ensure_eq {
    ($a:expr, $b:expr, $($m:tt)+) => {
        if $a != $b {
            return Err(format!("{}: {:?} != {:?}", format!($($m)+), $a, $b));
        }
    };
}

type Check<T = ()> = Result<T, String>;

/// A duration as Prometheus' `model.ParseDuration` (which Grafana uses) reads it.
fn is_duration(s: &str) -> bool {
    if s == "0" {
        return true;
    }
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"].into_iter().find(|u| rest.starts_with(u));
        let Some(u) = unit else { return false };
        rest = &rest[u.len()..];
        any = true;
    }
    any
}

fn only_keys(o: &Map<String, Value>, allowed: &[&str], what: &str) -> Check {
    for k in o.keys() {
        ensure!(allowed.contains(&k.as_str()), "{what}: unknown field {k:?} (Grafana knows {allowed:?})");
    }
    Ok(())
}

fn text<'a>(o: &'a Map<String, Value>, k: &str, what: &str) -> Check<&'a str> {
    o.get(k).and_then(Value::as_str).filter(|s| !s.trim().is_empty()).ok_or_else(|| format!("{what}: {k} (text)"))
}

fn string_map(v: Option<&Value>, what: &str) -> Check {
    if let Some(v) = v {
        let m = v.as_object().ok_or_else(|| format!("{what}: a map"))?;
        ensure!(m.values().all(Value::is_string), "{what}: string values");
    }
    Ok(())
}

/// One server-side expression's model (datasource `__expr__`).
fn check_expression(model: &Map<String, Value>, before: &HashSet<String>, what: &str) -> Check {
    let kind = text(model, "type", what)?;
    let refers = |r: &str| -> Check {
        ensure!(before.contains(r), "{what}: expression {r:?} names no earlier query");
        Ok(())
    };
    match kind {
        "reduce" => {
            refers(text(model, "expression", what)?)?;
            let reducer = text(model, "reducer", what)?;
            ensure!(["last", "mean", "min", "max", "sum", "count"].contains(&reducer), "{what}: reducer {reducer}");
            if let Some(mode) = model.get("settings").and_then(|s| s.get("mode")) {
                let mode = mode.as_str().unwrap_or("?");
                ensure!(["", "dropNN", "replaceNN", "strict"].contains(&mode), "{what}: settings.mode {mode}");
            }
        }
        "threshold" => {
            refers(text(model, "expression", what)?)?;
            let conds =
                model.get("conditions").and_then(Value::as_array).ok_or_else(|| format!("{what}: conditions"))?;
            ensure!(!conds.is_empty(), "{what}: conditions");
            for c in conds {
                let ev = &c["evaluator"];
                let ty = ev["type"].as_str().ok_or_else(|| format!("{what}: evaluator.type"))?;
                let params = ev["params"].as_array().ok_or_else(|| format!("{what}: evaluator.params"))?;
                let n = match ty {
                    "gt" | "lt" | "gte" | "lte" | "eq" | "ne" => 1,
                    "within_range" | "outside_range" | "within_range_included" | "outside_range_included" => 2,
                    other => return Err(format!("{what}: evaluator type {other}")),
                };
                ensure!(params.len() >= n && params.iter().take(n).all(Value::is_number), "{what}: {n} numeric params");
            }
        }
        "math" => {
            let e = text(model, "expression", what)?;
            for r in e.split('$').skip(1) {
                let name: String = r.trim_start_matches('{').chars().take_while(|c| c.is_alphanumeric()).collect();
                refers(&name)?;
            }
        }
        "resample" | "classic_conditions" | "sql" => {}
        other => return Err(format!("{what}: expression type {other:?}")),
    }
    Ok(())
}

/// Datasource uids (and types) the provisioning creates.
fn provisioned_datasources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("datasources/") {
        let p = e.expect("entry").path();
        if p.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        for ds in yaml(&p)["datasources"].as_array().cloned().unwrap_or_default() {
            out.push((ds["uid"].as_str().expect("uid").to_owned(), ds["type"].as_str().expect("type").to_owned()));
        }
    }
    out
}

/// Check one alerting provisioning document; the rule titles.
pub fn check(doc: &Value, datasources: &[(String, String)]) -> Check<BTreeSet<String>> {
    let top = doc.as_object().ok_or("file: not a map")?;
    only_keys(top, &["apiVersion", "groups", "deleteRules"], "file")?;
    ensure_eq!(top.get("apiVersion").and_then(Value::as_i64), Some(1), "apiVersion: 1");
    let groups = top["groups"].as_array().ok_or("groups")?;
    ensure!(!groups.is_empty());
    let (mut uids, mut titles) = (HashSet::new(), BTreeSet::new());
    for g in groups {
        let g = g.as_object().ok_or("group: not a map")?;
        let gname = text(g, "name", "group")?.to_owned();
        let what = format!("group {gname}");
        only_keys(g, &["orgId", "name", "folder", "interval", "rules"], &what)?;
        if let Some(org) = g.get("orgId") {
            ensure!(org.as_i64().is_some_and(|o| o >= 1), "{what}: orgId");
        }
        text(g, "folder", &what)?;
        ensure!(is_duration(text(g, "interval", &what)?), "{what}: interval");
        let rules = g["rules"].as_array().ok_or_else(|| format!("{what}: rules"))?;
        ensure!(!rules.is_empty(), "{what}: rules");
        for r in rules {
            let r = r.as_object().ok_or("rule: not a map")?;
            let title = text(r, "title", &what)?.to_owned();
            let what = format!("{what}: rule {title}");
            only_keys(
                r,
                &[
                    "uid",
                    "title",
                    "condition",
                    "data",
                    "dasboardUid",
                    "dashboardUid",
                    "panelId",
                    "noDataState",
                    "execErrState",
                    "for",
                    "keepFiringFor",
                    "missing_series_evals_to_resolve",
                    "annotations",
                    "labels",
                    "isPaused",
                    "notification_settings",
                    "record",
                ],
                &what,
            )?;
            let uid = text(r, "uid", &what)?;
            ensure!(uid.len() <= 40, "{what}: uid at most 40 characters");
            ensure!(uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{what}: uid characters");
            ensure!(uids.insert(uid.to_owned()), "{what}: uid {uid} used twice");
            ensure!(titles.insert(title.clone()), "{what}: title used twice");
            let data = r["data"].as_array().ok_or_else(|| format!("{what}: data"))?;
            ensure!(!data.is_empty(), "{what}: no data");
            let mut refs = HashSet::new();
            for q in data {
                let q = q.as_object().ok_or("query: not a map")?;
                only_keys(q, &["refId", "queryType", "relativeTimeRange", "datasourceUid", "model"], &what)?;
                let ref_id = text(q, "refId", &what)?.to_owned();
                let what = format!("{what}: query {ref_id}");
                let range = q["relativeTimeRange"].as_object().ok_or_else(|| format!("{what}: relativeTimeRange"))?;
                let (from, to) =
                    (range["from"].as_i64().ok_or("from (seconds)")?, range["to"].as_i64().ok_or("to (seconds)")?);
                ensure!(from >= to && to >= 0, "{what}: relativeTimeRange from >= to >= 0");
                let model = q["model"].as_object().ok_or_else(|| format!("{what}: model"))?;
                if let Some(m) = model.get("refId") {
                    ensure_eq!(m.as_str(), Some(ref_id.as_str()), "{what}: model.refId");
                }
                let ds = text(q, "datasourceUid", &what)?;
                if ds == "__expr__" {
                    check_expression(model, &refs, &what)?;
                } else {
                    let (_, ty) = datasources
                        .iter()
                        .find(|(u, _)| u == ds)
                        .ok_or_else(|| format!("{what}: datasource {ds} is not provisioned"))?;
                    ensure!(from > 0, "{what}: a datasource query needs a time range");
                    if ty == "prometheus" {
                        text(model, "expr", &what)?;
                    }
                }
                ensure!(refs.insert(ref_id), "{what}: refId used twice");
            }
            let cond = text(r, "condition", &what)?;
            ensure!(refs.contains(cond), "{what}: condition {cond} is no refId of its data");
            for (k, allowed) in [
                ("noDataState", &["NoData", "Alerting", "OK", "KeepLast"][..]),
                ("execErrState", &["Error", "Alerting", "OK", "KeepLast"][..]),
            ] {
                if let Some(v) = r.get(k) {
                    ensure!(v.as_str().is_some_and(|s| allowed.contains(&s)), "{what}: {k} one of {allowed:?}");
                }
            }
            for k in ["for", "keepFiringFor"] {
                if let Some(v) = r.get(k) {
                    ensure!(v.as_str().is_some_and(is_duration), "{what}: {k} a duration");
                }
            }
            if let Some(p) = r.get("isPaused") {
                ensure!(p.is_boolean(), "{what}: isPaused");
            }
            string_map(r.get("labels"), &format!("{what}: labels"))?;
            string_map(r.get("annotations"), &format!("{what}: annotations"))?;
        }
    }
    Ok(titles)
}

#[test]
fn grafana_alert_provisioning_follows_grafanas_format_and_mirrors_the_prometheus_rules() {
    let prov = workspace_root().join("dashboards/provisioning");
    let datasources = provisioned_datasources(&prov.join("datasources"));
    assert!(datasources.contains(&("tokentap-prometheus".into(), "prometheus".into())), "{datasources:?}");
    let titles = check(&yaml(&prov.join("alerting/tokentap.yaml")), &datasources).unwrap_or_else(|e| panic!("{e}"));
    // The same alerts as the Prometheus rule file.
    let rules = yaml(&workspace_root().join("deploy/alerts/prometheus-rules.yaml"));
    let names: BTreeSet<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter().filter_map(|r| r["alert"].as_str().map(str::to_owned)))
        .collect();
    assert_eq!(titles, names);
}

/// A change that makes a good file bad.
type Spoil = Box<dyn Fn(&mut Value)>;

fn rule0(d: &mut Value) -> &mut Value {
    &mut d["groups"][0]["rules"][0]
}

#[test]
fn the_checker_refuses_what_grafana_refuses() {
    let datasources = vec![("tokentap-prometheus".to_owned(), "prometheus".to_owned())];
    let good = yaml(&workspace_root().join("dashboards/provisioning/alerting/tokentap.yaml"));
    check(&good, &datasources).unwrap_or_else(|e| panic!("{e}"));
    let refused = |f: &dyn Fn(&mut Value)| {
        let mut d = good.clone();
        f(&mut d);
        check(&d, &datasources).is_err()
    };
    let cases: Vec<(&str, Spoil)> = vec![
        ("apiVersion 2", Box::new(|d| d["apiVersion"] = 2.into())),
        (
            "no folder",
            Box::new(|d| {
                d["groups"][0].as_object_mut().unwrap().remove("folder");
            }),
        ),
        ("bad interval", Box::new(|d| d["groups"][0]["interval"] = "1 minute".into())),
        ("condition not a refId", Box::new(|d| rule0(d)["condition"] = "Z".into())),
        ("unknown datasource", Box::new(|d| rule0(d)["data"][0]["datasourceUid"] = "nope".into())),
        ("reduce of a later refId", Box::new(|d| rule0(d)["data"][1]["model"]["expression"] = "C".into())),
        ("unknown field", Box::new(|d| rule0(d)["severity"] = "x".into())),
        ("bad noDataState", Box::new(|d| rule0(d)["noDataState"] = "Ok".into())),
        ("duplicate uid", Box::new(|d| d["groups"][0]["rules"][1]["uid"] = d["groups"][0]["rules"][0]["uid"].clone())),
    ];
    let took: Vec<&str> = cases.iter().filter(|(_, f)| !refused(&**f)).map(|(w, _)| *w).collect();
    assert!(took.is_empty(), "the checker took files with: {took:?}");
}
