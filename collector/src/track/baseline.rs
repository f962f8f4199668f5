//! `--track-baseline NAME`: a saved baseline's cost per call and cache-hit
//! ratio per service, beside the same numbers now (the trailing
//! `--track-window-hours`, from `llm_calls_1h`), as gauges with the same
//! labels, so an alert rule compares them.
//!
//! Per service, the baseline's groups of that service are combined: cost per
//! call = sum of `spend_usd` / sum of `calls`; cache-hit ratio = the groups'
//! ratios weighted by their calls. The baseline's `totals` are the series
//! with `service="(all)"`. Now: cost per call = sum(cost_usd) / sum(calls);
//! cache-hit ratio = sum(cached_input_tokens) / sum(input_tokens).
use std::collections::BTreeMap;

use serde::Deserialize;

/// The `service` label of the totals.
pub const ALL: &str = "(all)";

/// Cost per call and cache-hit ratio (None: no calls, or no input tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    pub cost_per_call: Option<f64>,
    pub cache_hit_ratio: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
struct MetricsDoc {
    #[serde(default)]
    calls: f64,
    #[serde(default)]
    spend_usd: f64,
    #[serde(default)]
    cost_per_call: Option<f64>,
    #[serde(default)]
    cache_hit_ratio: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct GroupDoc {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    metrics: MetricsDoc,
}

#[derive(Debug, Deserialize)]
struct BaselineDoc {
    #[serde(default)]
    groups: Vec<GroupDoc>,
    #[serde(default)]
    totals: MetricsDoc,
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("reading baseline {name:?}: {source}")]
    Query { name: String, source: clickhouse::error::Error },
    #[error("baseline {name:?} is not a baseline document: {source}")]
    Document { name: String, source: serde_json::Error },
}

/// The baseline's points per service (and [`ALL`]), from its JSON document.
pub fn per_service(doc: &serde_json::Value) -> Result<BTreeMap<String, Point>, serde_json::Error> {
    let b = BaselineDoc::deserialize(doc)?;
    let mut acc: BTreeMap<String, (f64, f64, f64, f64)> = BTreeMap::new();
    for g in &b.groups {
        let Some(service) = g.service.as_deref() else { continue };
        let m = &g.metrics;
        let e = acc.entry(service.to_owned()).or_default();
        e.0 += m.calls;
        e.1 += m.spend_usd;
        if let Some(r) = m.cache_hit_ratio.filter(|r| r.is_finite()) {
            e.2 += r * m.calls;
            e.3 += m.calls;
        }
    }
    let mut out: BTreeMap<String, Point> = acc
        .into_iter()
        .map(|(s, (calls, spend, hit, hit_calls))| {
            let p = Point {
                cost_per_call: (calls > 0.0).then(|| spend / calls),
                cache_hit_ratio: (hit_calls > 0.0).then(|| hit / hit_calls),
            };
            (s, p)
        })
        .collect();
    let t = &b.totals;
    let total_cpc = t.cost_per_call.or_else(|| (t.calls > 0.0).then(|| t.spend_usd / t.calls));
    out.insert(ALL.into(), Point { cost_per_call: total_cpc, cache_hit_ratio: t.cache_hit_ratio });
    Ok(out)
}

#[derive(clickhouse::Row, Deserialize)]
struct DocRow {
    doc: String,
}

/// The newest saved document of baseline `name`, None when there is none.
pub async fn load(client: &clickhouse::Client, name: &str) -> Result<Option<BTreeMap<String, Point>>, BaselineError> {
    let rows: Vec<DocRow> = client
        .query("SELECT doc FROM baselines WHERE name = ? ORDER BY created_at DESC LIMIT 1")
        .bind(name)
        .fetch_all()
        .await
        .map_err(|source| BaselineError::Query { name: name.into(), source })?;
    let Some(row) = rows.into_iter().next() else { return Ok(None) };
    let doc: serde_json::Value =
        serde_json::from_str(&row.doc).map_err(|source| BaselineError::Document { name: name.into(), source })?;
    per_service(&doc).map(Some).map_err(|source| BaselineError::Document { name: name.into(), source })
}

#[derive(clickhouse::Row, Deserialize)]
struct NowRow {
    service: String,
    calls: u64,
    cost: f64,
    cached: u64,
    input: u64,
}

/// The same points over the last `window_secs`, for `services` (and [`ALL`]).
pub async fn current(
    client: &clickhouse::Client,
    services: &[&str],
    window_secs: u64,
) -> Result<BTreeMap<String, Point>, clickhouse::error::Error> {
    let rows: Vec<NowRow> = client
        .query(
            "SELECT if(grouping(service) = 1, ?, service) AS service, sum(calls) AS calls, sum(cost_usd) AS cost, \
             sum(cached_input_tokens) AS cached, sum(input_tokens) AS input FROM llm_calls_1h \
             WHERE t >= now() - toIntervalSecond(?) GROUP BY service WITH ROLLUP",
        )
        .bind(ALL)
        .bind(window_secs)
        .fetch_all()
        .await?;
    let wanted: std::collections::HashSet<&str> = services.iter().copied().chain([ALL]).collect();
    Ok(rows
        .into_iter()
        .filter(|r| wanted.contains(r.service.as_str()))
        .map(|r| {
            let p = Point {
                cost_per_call: (r.calls > 0).then(|| r.cost / r.calls as f64),
                cache_hit_ratio: (r.input > 0).then(|| r.cached as f64 / r.input as f64),
            };
            (r.service, p)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_a_service_are_combined_by_calls() {
        let doc = serde_json::json!({
            "name": "before",
            "groups": [
                {"service": "checkout", "model": "gpt-4o", "metrics": {"calls": 100, "spend_usd": 2.0, "cache_hit_ratio": 0.5}},
                {"service": "checkout", "model": "gpt-4o-mini", "metrics": {"calls": 300, "spend_usd": 0.4, "cache_hit_ratio": 0.1}},
                {"service": "search", "metrics": {"calls": 0, "spend_usd": 0.0}},
                {"model": "no-service", "metrics": {"calls": 5, "spend_usd": 1.0}}
            ],
            "totals": {"calls": 405, "spend_usd": 3.4, "cost_per_call": 0.0084, "cache_hit_ratio": 0.2}
        });
        let p = per_service(&doc).unwrap();
        let c = p["checkout"];
        assert!((c.cost_per_call.unwrap() - 0.006).abs() < 1e-12, "{c:?}");
        assert!((c.cache_hit_ratio.unwrap() - 0.2).abs() < 1e-12, "{c:?}");
        assert_eq!(p["search"], Point::default(), "no calls: no numbers");
        assert_eq!(p[ALL].cost_per_call, Some(0.0084));
        assert_eq!(p.len(), 3);
        assert!(per_service(&serde_json::json!({"groups": 3})).is_err());
    }
}
