//! The Grafana dashboards (dashboards/*.json): each validates structurally, and
//! every panel's SQL — Grafana's ClickHouse macros and template variables
//! expanded as the grafana-clickhouse-datasource plugin does — runs against the
//! schema the collector creates, filled with test rows, and returns the shape
//! its panel needs. ClickHouse: `TOKENTAP_CLICKHOUSE_URL` or the embedded engine.
use std::collections::{BTreeMap, HashSet};
use std::process::Command;

use serde_json::Value;
use tokentap_e2e::*;

const FROM: &str = "2026-11-20 00:00:00";
const TO: &str = "2026-11-23 23:59:59";

/// A panel's SQL over the test rows' days, the interval fixed at one minute.
fn expand(sql: &str, vars: &BTreeMap<String, Vec<String>>) -> String {
    expand_in(sql, vars, FROM, TO)
}

fn expand_in(sql: &str, vars: &BTreeMap<String, Vec<String>>, from: &str, to: &str) -> String {
    grafana::expand(sql, &format!("toDateTime('{from}')"), &format!("toDateTime('{to}')"), 60, vars)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh engine in its own scratch directory named after `name` (its
/// database with `_` for `-`), the schema migrated and [`fill`]ed.
fn filled(name: &str) -> ClickHouse {
    let ch = ClickHouse::start(&scratch(name), &name.replace('-', "_"));
    ch.migrate();
    fill(&ch);
    ch
}

/// 600 calls over three days: two clusters, three namespaces, four services,
/// several providers/models, some errors and rate limits, every capture method.
fn fill(ch: &ClickHouse) {
    ch.query(
        "INSERT INTO llm_calls (event_id, ts, duration_ms, ttft_ms, provider, operation, request_model, response_model, \
         model, stream, status, input_tokens, output_tokens, cached_input_tokens, usage_source, cost_usd, tls_library, \
         comm, namespace, workload, service, labels, cluster, features) \
         SELECT generateUUIDv4(number), toDateTime64('2026-11-21 00:00:00', 6) + number * 397, 100 + number % 900, \
         if(number % 2 = 0, 50 + number % 200, NULL), \
         ['openai', 'anthropic', 'google', 'bedrock', 'ollama'][1 + number % 5], 'chat', \
         if(number % 7 = 3, 'text-embedding-3-small', ['gpt-4o', 'claude-sonnet-4-5', 'gemini-2.5-flash', 'anthropic.claude-3-5-haiku-20241022-v1:0', 'llama3.2'][1 + number % 5]), \
         NULL, \
         if(number % 7 = 3, 'text-embedding-3-small', ['gpt-4o', 'claude-sonnet-4-5', 'gemini-2.5-flash', 'anthropic.claude-3-5-haiku-20241022-v1:0', 'llama3.2'][1 + number % 5]), \
         number % 3 = 0, [200, 200, 200, 200, 200, 200, 429, 500][1 + number % 8], \
         1000 + number * 5, if(number % 10 = 0, 1, 50 + number % 100), if(number % 4 = 0, 0, number % 500), if(number % 7 = 0, 'estimated', 'reported'), \
         if(number % 5 = 4, NULL, (1000 + number) * 2.5e-6), [NULL, 'openssl', 'go_tls'][1 + number % 3], \
         ['python3', 'node', 'api-server'][1 + number % 3], ['payments', 'search', 'support'][1 + number % 3], \
         'wl', if(number % 7 = 3, 'indexer', ['checkout', 'ranker', 'bot', 'summarizer'][1 + number % 4]), map('team', 'a'), \
         ['prod-eu', 'prod-us'][1 + number % 2], \
         if(number % 7 = 3, '{\"prompt_hash\":\"e' || toString(number) || '\",\"embedding_inputs\":1,\"message_count\":0,\"json_share\":0,\"whitespace_share\":0,\"duplicate_chunk_share\":0}', \
            '{\"prompt_hash\":\"p' || toString(number % 40) || '\",\"prefix_hash\":\"s' || toString(number % 3) || \
            '\",\"prefix_tokens\":' || toString(if(number % 2 = 0, 2000, 100)) || \
            ',\"conversation_hash\":\"c' || toString(number % 25) || '\",\"message_count\":' || toString(number % 9) || \
            ',\"tool_calls\":' || if(number % 5 = 0, '[{\"name\":\"search\",\"args_hash\":\"a\"},{\"name\":\"search\",\"args_hash\":\"a\"}]', '[]') || \
            ',\"json_share\":0.5,\"whitespace_share\":0.2,\"minify_saved_tokens\":' || toString(number % 200) || \
            ',\"max_tokens\":null,\"duplicate_chunk_share\":0}') \
         FROM numbers(600)",
    );
    // LLM traffic: 200 connections, one in four not read (every other one of
    // those by a JVM-like process with no probed TLS).
    ch.query(
        "INSERT INTO llm_traffic (row_id, ts, first_seen, last_seen, provider_host, provider, decoded, capture, reason, \
         connections, bytes_sent, bytes_received, pid, comm, namespace, workload, service, cluster) \
         SELECT generateUUIDv4(number), toDateTime64('2026-11-21 00:00:00', 6) + number * 397, \
         toDateTime64('2026-11-21 00:00:00', 6) + number * 397 - 5, toDateTime64('2026-11-21 00:00:00', 6) + number * 397, \
         ['api.openai.com', 'api.anthropic.com'][1 + number % 2], ['openai', 'anthropic'][1 + number % 2], \
         number % 4 != 0, if(number % 4 != 0, 'openssl', ''), if(number % 4 = 0, 'no_plaintext_seen', ''), \
         1, 1000, 3000, number, ['python3', 'java'][1 + number % 2], ['payments', 'search', 'support'][1 + number % 3], \
         'wl', ['checkout', 'ranker', 'bot', 'summarizer'][1 + number % 4], ['prod-eu', 'prod-us'][1 + number % 2] \
         FROM numbers(200)",
    );
}

/// The test rows reach ClickHouse without a collector, so without their
/// repeated prompts and conversation turns: count them as an upgrade from
/// before migration 16 does, by its backfill (tests/tests/waste_rollup.rs
/// checks that the backfill and the collector agree).
fn backfill_waste(ch: &ClickHouse) {
    ch.forget_waste_rollups();
    ch.migrate();
}

/// The baseline's window: the first twelve hours of the test rows.
const BASELINE_SINCE: &str = "2026-11-21T00:00:00Z";
const BASELINE_UNTIL: &str = "2026-11-21T12:00:00Z";

/// A baseline named `before` saved from the first twelve hours of the test
/// rows (`tokentap-collector baseline save`), as the Track dashboard reads it.
fn fill_baseline(ch: &ClickHouse) {
    let out = Command::new(collector_bin())
        .args(["baseline", "save", "before", "--since", BASELINE_SINCE, "--until", BASELINE_UNTIL])
        .args(["--clickhouse-url", &ch.url, "--database", &ch.database])
        .output()
        .expect("collector baseline save");
    assert!(out.status.success(), "baseline save: {}", String::from_utf8_lossy(&out.stderr));
}

/// A variable's values: a query variable's rows ("All"), else its current value.
fn variable_values(ch: &ClickHouse, v: &Value) -> Vec<String> {
    if v["type"] != "query" {
        return v["current"]["value"].as_str().map(|s| vec![s.to_owned()]).unwrap_or_default();
    }
    let rows = ch.query(&expand(v["query"].as_str().expect("variable query"), &BTreeMap::new()));
    rows.iter().filter_map(|r| r.as_object()?.values().next()?.as_str().map(str::to_owned)).collect()
}

/// Every value a dashboard's query variables offer ("All").
fn all_values(ch: &ClickHouse, d: &Value) -> BTreeMap<String, Vec<String>> {
    let mut values = BTreeMap::new();
    for v in d["templating"]["list"].as_array().expect("templating").iter().filter(|v| v["type"] != "datasource") {
        values.insert(v["name"].as_str().unwrap().to_owned(), variable_values(ch, v));
    }
    values
}

#[test]
fn the_spend_map_shows_the_share_of_llm_traffic_not_decoded_beside_the_spend() {
    let ch = filled("dashboards-unread");
    let path = workspace_root().join("dashboards/spend_map.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let values = all_values(&ch, &d);
    let panel =
        |title: &str| d["panels"].as_array().unwrap().iter().find(|p| p["title"] == title).cloned().expect(title);
    let share = panel("LLM traffic not decoded");
    let spend = panel("Cost over time by service");
    assert_eq!(share["gridPos"]["y"], spend["gridPos"]["y"], "beside the spend");
    let rows = ch.query(&expand(share["targets"][0]["rawSql"].as_str().unwrap(), &values));
    assert_eq!(rows[0]["connections not decoded"], 0.25, "{rows:?}");
    assert_eq!(rows[0]["bytes not decoded"], 0.25, "{rows:?}");
    let table = panel("LLM traffic tokentap could not read");
    let rows = ch.query(&expand(table["targets"][0]["rawSql"].as_str().unwrap(), &values));
    // 64-bit integers: JSON numbers or strings, as the server's settings say.
    let n = |v: &Value| v.as_u64().or_else(|| v.as_str().and_then(|c| c.parse().ok())).unwrap_or(0);
    let total: u64 = rows.iter().map(|r| n(&r["connections"])).sum();
    assert_eq!(total, 50, "{rows:?}");
    assert!(rows.iter().all(|r| r["reason"] == "no_plaintext_seen"));
}

#[test]
fn every_panel_query_runs_on_the_schema_and_returns_its_shape() {
    let ch = filled("dashboards");
    backfill_waste(&ch);
    fill_baseline(&ch);
    let mut dashboards = 0;
    let mut prometheus_panels = 0;
    let mut uids = HashSet::new();
    for entry in std::fs::read_dir(workspace_root().join("dashboards")).expect("dashboards/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        dashboards += 1;
        let name = path.display().to_string();
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Structure Grafana needs to import it.
        assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "{name}: uid");
        assert!(uids.insert(d["uid"].as_str().unwrap().to_owned()), "{name}: duplicate uid");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{name}: title");
        assert!(d["schemaVersion"].as_u64().is_some(), "{name}: schemaVersion");
        let vars = d["templating"]["list"].as_array().unwrap_or_else(|| panic!("{name}: templating"));
        let var_names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        for want in ["datasource", "cluster", "namespace", "service"] {
            assert!(var_names.contains(&want), "{name}: template variable {want}");
        }
        // Variables: their own queries run; "All" is every value they return.
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for v in vars.iter().filter(|v| v["type"] != "datasource") {
            let vals = variable_values(&ch, v);
            assert!(!vals.is_empty(), "{name}: variable {} has no values", v["name"]);
            values.insert(v["name"].as_str().unwrap().to_owned(), vals);
        }
        let panels = d["panels"].as_array().unwrap_or_else(|| panic!("{name}: panels"));
        assert!(!panels.is_empty());
        let mut ids = HashSet::new();
        for p in panels {
            let title = format!("{name}: panel {:?}", p["title"]);
            assert!(ids.insert(p["id"].as_u64().expect("panel id")), "{title}: duplicate id");
            for k in ["x", "y", "w", "h"] {
                assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
            }
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{title}: no query");
            if p["datasource"]["type"] == "prometheus" {
                // The collectors' metrics: run on a real Prometheus by track_alerts.rs.
                assert_eq!(p["datasource"]["uid"], "${prometheus}", "{title}");
                assert!(var_names.contains(&"prometheus"), "{title}: a `prometheus` datasource variable");
                assert!(targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())), "{title}: expr");
                prometheus_panels += 1;
                continue;
            }
            assert_eq!(p["datasource"]["type"], "grafana-clickhouse-datasource", "{title}");
            for t in targets {
                let sql = expand(t["rawSql"].as_str().expect("rawSql"), &values);
                let rows = ch.query(&sql);
                assert!(!rows.is_empty(), "{title}: no rows from {sql}");
                let cols: Vec<&String> = rows[0].as_object().expect("row").keys().collect();
                if p["type"] == "timeseries" {
                    assert_eq!(t["format"], 0, "{title}: time series format");
                    assert!(cols.iter().any(|c| *c == "time"), "{title}: a `time` column: {cols:?}");
                    assert!(cols.len() >= 2, "{title}: a value column: {cols:?}");
                } else {
                    assert!(!cols.is_empty(), "{title}");
                }
            }
        }
    }
    assert_eq!(dashboards, 5, "Spend Map, Usage & latency, Agent health, Opportunities, Track");
    assert_eq!(prometheus_panels, 3, "Track's budget panels");
    // The provisioning files are there and name the dashboards directory and plugin.
    let prov = workspace_root().join("dashboards/provisioning");
    let ds = std::fs::read_to_string(prov.join("datasources/clickhouse.yaml")).expect("datasource provisioning");
    assert!(ds.contains("type: grafana-clickhouse-datasource"));
    let db = std::fs::read_to_string(prov.join("dashboards/tokentap.yaml")).expect("dashboard provisioning");
    assert!(db.contains("type: file"));
    let prom = std::fs::read_to_string(prov.join("datasources/prometheus.yaml")).expect("Prometheus datasource");
    assert!(prom.contains("type: prometheus") && prom.contains("uid: tokentap-prometheus"));
}

#[test]
fn rollups_agree_with_raw_rows_on_the_test_data() {
    let ch = filled("rollups");
    let raw = ch.query(
        "SELECT count() AS calls, countIf(status >= 400) AS errors, countIf(status = 429) AS rate_limited, \
         sum(ifNull(input_tokens, 0)) AS input, round(sum(ifNull(cost_usd, 0)), 9) AS cost FROM llm_calls",
    );
    for t in ["llm_calls_1m", "llm_calls_1h"] {
        let agg = ch.query(&format!(
            "SELECT sum(calls) AS calls, sum(errors) AS errors, sum(rate_limited) AS rate_limited, \
             sum(input_tokens) AS input, round(sum(cost_usd), 9) AS cost FROM {t}"
        ));
        assert_eq!(agg, raw, "{t}");
    }
    // Quantiles from the rollup states equal quantiles over the raw rows.
    let raw_q = ch.query(
        "SELECT quantilesIf(0.5, 0.9, 0.99)(ifNull(duration_ms, 0), isNotNull(duration_ms)) AS q FROM llm_calls",
    );
    let agg_q = ch.query("SELECT quantilesIfMerge(0.5, 0.9, 0.99)(duration_ms) AS q FROM llm_calls_1h");
    assert_eq!(raw_q, agg_q);
}

#[test]
fn the_track_dashboard_compares_the_saved_baseline_with_now() {
    let ch = filled("dashboards-track");
    fill_baseline(&ch);
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace_root().join("dashboards/track.json")).unwrap())
            .unwrap();
    let values = all_values(&ch, &d);
    assert_eq!(values["baseline"], ["before"]);
    let sql = |title: &str| {
        let p = d["panels"].as_array().unwrap().iter().find(|p| p["title"] == title).expect(title);
        expand(p["targets"][0]["rawSql"].as_str().unwrap(), &values)
    };
    let f = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("a number: {v}"));
    // Per service: the baseline's numbers (its window's rows), and now's (the range's).
    let window = format!(
        "ts >= '{}' AND ts <= '{}'",
        &BASELINE_SINCE[..19].replace('T', " "),
        &BASELINE_UNTIL[..19].replace('T', " ")
    );
    let unit = |filter: &str| {
        ch.query(&format!(
            "SELECT sum(ifNull(cost_usd, 0)) / count() AS cpc, sum(ifNull(cached_input_tokens, 0)) / sum(ifNull(input_tokens, 0)) AS hit \
             FROM llm_calls WHERE {filter}"
        ))[0]
            .clone()
    };
    let rows = ch.query(&sql("Baseline vs now, by service"));
    let services: HashSet<&str> = rows.iter().filter_map(|r| r["service"].as_str()).collect();
    assert_eq!(services.len(), 5, "every service of the baseline: {rows:?}");
    let checkout = rows.iter().find(|r| r["service"] == "checkout").unwrap();
    let (base, now) = (unit(&format!("service = 'checkout' AND {window}")), unit("service = 'checkout'"));
    assert!(f(&base["cpc"]) != f(&now["cpc"]), "the test needs a baseline unlike now: {base} {now}");
    for (col, want) in [
        ("baseline_cost_per_call", &base["cpc"]),
        ("baseline_cache_hit_ratio", &base["hit"]),
        ("now_cost_per_call", &now["cpc"]),
        ("now_cache_hit_ratio", &now["hit"]),
    ] {
        assert!((f(&checkout[col]) - f(want)).abs() < 1e-12, "{col}: {checkout} vs {want}");
    }
    let change = f(&now["cpc"]) / f(&base["cpc"]) - 1.0;
    assert!((f(&checkout["cost_per_call_change"]) - change).abs() < 1e-9);
    // Target progress over every service against the target of 20 %.
    let t = &ch.query(&sql("Target progress: cost per call"))[0];
    let reduction = 1.0 - f(&unit("1")["cpc"]) / f(&unit(&window)["cpc"]);
    assert!((f(&t["reduction_so_far"]) - reduction).abs() < 1e-9, "{t}");
    assert!((f(&t["progress"]) - reduction / 0.2).abs() < 1e-9, "{t}: target 20 %");
    // The baseline's roadmap, item by item, with targets and due dates.
    let items = ch.query(&sql("Roadmap targets (from the baseline)"));
    let saved =
        ch.count("SELECT length(JSONExtractArrayRaw(body, 'roadmap')) FROM baselines FINAL WHERE name = 'before'");
    assert!(saved > 0, "the test rows give the baseline a roadmap");
    assert_eq!(items.len() as u64, saved, "{items:?}");
    assert!(
        items.iter().all(|i| i["target"].is_number() && i["due"].as_str().is_some_and(|d| d.len() == 10)),
        "{items:?}"
    );
    // Month to date as of the range's end (23 November): the month's rows so far.
    let mtd = ch.query(&sql("Month-to-date spend by service"));
    let total: f64 = mtd.iter().map(|r| f(&r["month_to_date_usd"])).sum();
    let want =
        f(&ch.query("SELECT sum(ifNull(cost_usd, 0)) AS c FROM llm_calls WHERE ts <= '2026-11-23 23:59:59'")[0]["c"]);
    assert!((total - want).abs() < 1e-9, "{total} vs {want}");
}

#[test]
fn time_series_read_the_minute_rollup_up_to_two_days_and_the_hourly_one_beyond_per_minute_either_way() {
    let ch = filled("dashboards-ranges");
    let path = workspace_root().join("dashboards/usage_latency.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let values = all_values(&ch, &d);
    let panel = d["panels"].as_array().unwrap().iter().find(|p| p["title"] == "Calls per minute by provider").unwrap();
    let sql = panel["targets"][0]["rawSql"].as_str().unwrap();
    assert!(sql.contains("llm_calls_1m") && sql.contains("llm_calls_1h"), "{sql}");
    // One day: minute buckets (the interval, 60 s), calls per minute = calls per bucket.
    // Four days: hourly buckets, calls per minute = calls per bucket / 60.
    for ((from, to), minutes_per_bucket) in [(("2026-11-21 00:00:00", "2026-11-21 23:59:59"), 1.0), ((FROM, TO), 60.0)]
    {
        let rows = ch.query(&expand_in(sql, &values, from, to));
        let f = |v: &Value| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0.0);
        let calls: f64 = rows.iter().map(|r| f(&r["calls"]) * minutes_per_bucket).sum();
        let raw = ch.count(&format!(
            "SELECT count() FROM llm_calls WHERE ts >= toDateTime('{from}') AND ts <= toDateTime('{to}')"
        ));
        assert!((calls - raw as f64).abs() < 1e-6, "{from}..{to}: {calls} from the panel, {raw} calls");
        let step = |r: &Value| r["time"].as_str().map(|t| t[14..16].to_owned());
        let hourly = rows.iter().all(|r| step(r).as_deref() == Some("00"));
        assert_eq!(hourly, minutes_per_bucket == 60.0, "{rows:?}");
    }
}

/// The panels moved to the health rollups (`llm_health_1h`, `llm_ingest_1h`)
/// answer as the raw-row queries they replaced did (rows compared as sets:
/// ties may order differently).
#[test]
fn health_rollup_panels_answer_as_the_raw_queries_they_replaced() {
    let ch = filled("dashboards-health");
    let replaced: &[(&str, &str, &str)] = &[
        ("agent_health.json", "Capture method share (coverage)", "SELECT ifNull(tls_library, 'plaintext socket') AS method, count() AS records FROM llm_calls WHERE $__timeFilter(ts) AND cluster IN (${cluster:singlequote}) AND namespace IN (${namespace:singlequote}) AND service IN (${service:singlequote}) GROUP BY method ORDER BY records DESC"),
        ("agent_health.json", "Data quality: calls without usage or price", "SELECT provider, model, count() AS calls, countIf(usage_source IS NULL) AS no_usage, countIf(usage_source = 'estimated') AS estimated, countIf(cost_usd IS NULL) AS unpriced FROM llm_calls WHERE $__timeFilter(ts) AND cluster IN (${cluster:singlequote}) AND namespace IN (${namespace:singlequote}) AND service IN (${service:singlequote}) GROUP BY provider, model ORDER BY unpriced DESC, no_usage DESC LIMIT 50"),
        ("agent_health.json", "Processes seen by capture method", "SELECT cluster, comm, ifNull(tls_library, 'socket') AS method, count() AS records, max(ts) AS last_seen FROM llm_calls WHERE $__timeFilter(ts) AND cluster IN (${cluster:singlequote}) AND namespace IN (${namespace:singlequote}) AND service IN (${service:singlequote}) GROUP BY cluster, comm, method ORDER BY records DESC LIMIT 100"),
        ("usage_latency.json", "Error responses", "SELECT provider, model, status, count() AS calls FROM llm_calls WHERE $__timeFilter(ts) AND status >= 400 AND cluster IN (${cluster:singlequote}) AND namespace IN (${namespace:singlequote}) AND service IN (${service:singlequote}) GROUP BY provider, model, status ORDER BY calls DESC LIMIT 50"),
        ("opportunities.json", "Frontier models on short outputs (downgrade candidates)", "SELECT service, model, count() AS calls, round(sum(ifNull(cost_usd, 0)), 6) AS cost_usd FROM llm_calls WHERE $__timeFilter(ts) AND features != '' AND cluster IN (${cluster:singlequote}) AND namespace IN (${namespace:singlequote}) AND service IN (${service:singlequote}) AND (ifNull(output_tokens, 0) <= 16 OR ifNull(JSONExtract(features, 'max_tokens', 'Nullable(UInt64)'), 1000000) <= 16) AND match(model, '(?i)^(gpt-4o|gpt-4\\\\.1|gpt-4-turbo|gpt-5|o1|o3|claude-opus-4|claude-sonnet-4|claude-3-opus|claude-3-5-sonnet|claude-3-7-sonnet|gemini-2\\\\.5-pro|gemini-1\\\\.5-pro)') AND NOT match(model, '(?i)(mini|nano)') AND isNull(JSONExtract(features, 'embedding_inputs', 'Nullable(UInt32)')) GROUP BY service, model ORDER BY cost_usd DESC LIMIT 50"),
        ("opportunities.json", "Verbose formats (tokens a compact prompt saves)", "SELECT service, model, count() AS calls, sum(JSONExtract(features, 'minify_saved_tokens', 'Nullable(UInt64)')) AS tokens_saved FROM llm_calls WHERE $__timeFilter(ts) AND features != '' AND cluster IN (${cluster:singlequote}) AND namespace IN (${namespace:singlequote}) AND service IN (${service:singlequote}) AND ifNull(JSONExtract(features, 'minify_saved_tokens', 'Nullable(UInt64)'), 0) >= 20 GROUP BY service, model ORDER BY tokens_saved DESC LIMIT 50"),
        ("opportunities.json", "Embeddings sent one input at a time", "SELECT service, model, count() AS calls, round(sum(ifNull(cost_usd, 0)) * 0.5, 6) AS batch_api_savings_usd FROM llm_calls WHERE $__timeFilter(ts) AND features != '' AND cluster IN (${cluster:singlequote}) AND namespace IN (${namespace:singlequote}) AND service IN (${service:singlequote}) AND JSONExtract(features, 'embedding_inputs', 'Nullable(UInt32)') = 1 GROUP BY service, model HAVING count() >= 10 ORDER BY calls DESC LIMIT 50"),
    ];
    let mut compared = 0;
    for (file, title, raw_sql) in replaced {
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(workspace_root().join("dashboards").join(file)).unwrap())
                .unwrap();
        let values = all_values(&ch, &d);
        let p = d["panels"].as_array().unwrap().iter().find(|p| p["title"] == *title).expect(title);
        let sql = p["targets"][0]["rawSql"].as_str().unwrap();
        assert!(sql.contains("FROM llm_health_1h") && !sql.contains("FROM llm_calls "), "{title}: {sql}");
        let sorted = |mut rows: Vec<Value>| {
            let mut s: Vec<String> = rows.drain(..).map(|r| r.to_string()).collect();
            s.sort();
            s
        };
        let now = sorted(ch.query(&expand(sql, &values)));
        let before = sorted(ch.query(&expand(raw_sql, &values)));
        assert!(!before.is_empty(), "{title}: the test rows give it rows");
        assert_eq!(now, before, "{title}");
        compared += 1;
    }
    assert_eq!(compared, 7);
    // Ingest delay over four days: hourly buckets from the rollup's states,
    // the raw rows' quantiles per hour.
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace_root().join("dashboards/agent_health.json")).unwrap())
            .unwrap();
    let values = all_values(&ch, &d);
    let p = d["panels"].as_array().unwrap().iter().find(|p| p["title"] == "Ingest delay (call -> ClickHouse), seconds");
    let sql = p.unwrap()["targets"][0]["rawSql"].as_str().unwrap();
    let now = ch.query(&expand(sql, &values));
    let raw = ch.query(&format!(
        "SELECT toStartOfInterval(ts, INTERVAL 3600 second) AS time, quantile(0.5)(dateDiff('millisecond', ts, \
         inserted_at) / 1000) AS p50, quantile(0.99)(dateDiff('millisecond', ts, inserted_at) / 1000) AS p99 FROM \
         llm_calls WHERE ts >= toDateTime('{FROM}') AND ts <= toDateTime('{TO}') GROUP BY time ORDER BY time"
    ));
    assert!(raw.len() > 24, "{raw:?}");
    assert_eq!(now, raw);
}

/// Rows stored before the health rollups existed are backfilled by their
/// migration, once: an upgrade shows the past on the panels that moved.
#[test]
fn the_health_rollup_migration_backfills_rows_stored_before_it_once() {
    let ch = filled("dashboards-backfill");
    // As a database that predates migration 14: its rollups and record gone.
    for t in ["llm_health_1h_mv", "llm_ingest_1h_mv", "llm_health_1h", "llm_ingest_1h"] {
        ch.query(&format!("DROP TABLE {t}"));
    }
    ch.query("ALTER TABLE schema_migrations DELETE WHERE version IN (14, 15) SETTINGS mutations_sync = 1");
    let raw = ch.count("SELECT count() FROM llm_calls");
    ch.migrate();
    assert_eq!(ch.count("SELECT sum(calls) FROM llm_health_1h"), raw);
    let groups = "uniqExact(toStartOfHour(ts), cluster, namespace, service)";
    assert_eq!(
        ch.count("SELECT uniqExact(t, cluster, namespace, service) FROM llm_ingest_1h"),
        ch.count(&format!("SELECT {groups} FROM llm_calls"))
    );
    // New rows reach it through the view, and only through it.
    fill(&ch);
    assert_eq!(ch.count("SELECT sum(calls) FROM llm_health_1h"), 2 * raw);
}
