//! `--track-baseline NAME`: a saved baseline's cost per call and cache-hit
//! ratio per service, beside the same numbers now (the trailing
//! `--track-window-hours`, from `llm_calls_1h`), as gauges with the same
//! labels, so an alert rule compares them.
//!
//! The baseline is read with [`crate::baselines::load`] (table `baselines`).
//! Per service its groups (service x model x feature x provider) are summed:
//! cost per call = spend_usd / calls, cache-hit ratio = cached input tokens /
//! input tokens, as [`tokentap_event::baseline::Metrics`] defines them; its
//! totals are the series with `service="(all)"`. Now: the same sums over the
//! window of the hourly rollup. Calls without a service are in the totals only.
use std::collections::BTreeMap;

use serde::Deserialize;
use tokentap_event::baseline::Baseline;

/// The `service` label of the totals.
pub const ALL: &str = "(all)";

/// Cost per call and cache-hit ratio (None: no calls, or no input tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    pub cost_per_call: Option<f64>,
    pub cache_hit_ratio: Option<f64>,
}

impl Point {
    fn of(calls: u64, spend: f64, cached: u64, input: u64) -> Self {
        Self {
            cost_per_call: (calls > 0).then(|| spend / calls as f64),
            cache_hit_ratio: (input > 0).then(|| cached as f64 / input as f64),
        }
    }
}

/// The baseline's points per service (and [`ALL`]).
pub fn per_service(b: &Baseline) -> BTreeMap<String, Point> {
    let mut acc: BTreeMap<&str, (u64, f64, u64, u64)> = BTreeMap::new();
    for g in &b.groups {
        let Some(service) = g.key.service.as_deref() else { continue };
        let (m, e) = (&g.metrics, acc.entry(service).or_default());
        e.0 += m.calls;
        e.1 += m.spend_usd;
        e.2 += m.cached_input_tokens;
        e.3 += m.input_tokens;
    }
    let mut out: BTreeMap<String, Point> = acc
        .into_iter()
        .map(|(s, (calls, spend, cached, input))| (s.to_owned(), Point::of(calls, spend, cached, input)))
        .collect();
    let t = &b.totals;
    out.insert(ALL.into(), Point::of(t.calls, t.spend_usd, t.cached_input_tokens, t.input_tokens));
    out
}

/// The saved baseline `name`'s points, None when there is none.
pub async fn load(
    client: &clickhouse::Client,
    name: &str,
) -> Result<Option<BTreeMap<String, Point>>, crate::baselines::StoreError> {
    Ok(crate::baselines::load(client, name).await?.map(|b| per_service(&b)))
}

#[derive(clickhouse::Row, Deserialize)]
struct NowRow {
    service: String,
    calls: u64,
    cost: f64,
    cached: u64,
    input: u64,
}

/// The same points over the last `window_secs`, for `services` (and [`ALL`]:
/// every call of the window).
pub async fn current(
    client: &clickhouse::Client,
    services: &[&str],
    window_secs: u64,
) -> Result<BTreeMap<String, Point>, clickhouse::error::Error> {
    let rows: Vec<NowRow> = client
        .query(
            "SELECT service, sum(calls) AS calls, sum(cost_usd) AS cost, sum(cached_input_tokens) AS cached, \
             sum(input_tokens) AS input FROM llm_calls_1h WHERE t >= now() - toIntervalSecond(?) GROUP BY service",
        )
        .bind(window_secs)
        .fetch_all()
        .await?;
    let wanted: std::collections::HashSet<&str> = services.iter().copied().collect();
    let mut all = (0, 0.0, 0, 0);
    let mut out = BTreeMap::new();
    for r in rows {
        all = (all.0 + r.calls, all.1 + r.cost, all.2 + r.cached, all.3 + r.input);
        if wanted.contains(r.service.as_str()) {
            out.insert(r.service, Point::of(r.calls, r.cost, r.cached, r.input));
        }
    }
    out.insert(ALL.into(), Point::of(all.0, all.1, all.2, all.3));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokentap_event::LlmCall;

    fn call(service: Option<&str>, model: &str, cost: f64, input: u64, cached: u64) -> LlmCall {
        LlmCall {
            event_id: LlmCall::new_event_id(),
            ts: LlmCall::format_ts(1_763_900_000_000_000_000),
            provider: "openai".into(),
            operation: "chat".into(),
            response_model: Some(model.into()),
            service: service.map(str::to_owned),
            cost_usd: Some(cost),
            input_tokens: Some(input),
            output_tokens: Some(10),
            cached_input_tokens: Some(cached),
            ..Default::default()
        }
    }

    #[test]
    fn groups_of_a_service_are_summed() {
        let calls = [
            call(Some("checkout"), "gpt-4o", 0.02, 1000, 500),
            call(Some("checkout"), "gpt-4o-mini", 0.001, 3000, 0),
            call(Some("checkout"), "gpt-4o-mini", 0.003, 1000, 500),
            call(None, "gpt-4o", 1.0, 10, 0),
        ];
        let b = Baseline::build("before", &calls, &[]);
        let p = per_service(&b);
        let c = p["checkout"];
        assert!((c.cost_per_call.unwrap() - 0.008).abs() < 1e-12, "{c:?}");
        assert!((c.cache_hit_ratio.unwrap() - 0.2).abs() < 1e-12, "{c:?}");
        let all = p[ALL];
        assert!((all.cost_per_call.unwrap() - 1.024 / 4.0).abs() < 1e-12, "{all:?}");
        assert_eq!(p.len(), 2, "calls without a service are in the totals only: {p:?}");
    }
}
