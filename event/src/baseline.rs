//! The Calibrate baseline as a saved artefact: what one window of calls cost
//! and how, per service, model, feature and provider, with the window's
//! Opportunity Register and its Remediation Roadmap (targets included), so a
//! later window can be compared with it (`compare`). Built from records only,
//! so the agent's audit (files) and the collector (ClickHouse rows) build the
//! same baseline from the same calls. No prompt text: the roadmap's scopes are
//! the records' keyed hashes.
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::facts::Facts;
use crate::opportunities::{cheaper_model, Opportunity};
use crate::roadmap::{self, RoadmapItem};
use crate::LlmCall;

/// The baseline document's format; readers refuse a newer one.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; None without values.
    pub fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[Self::rank(q, v.len()) - 1];
        Some(Self { p50: at(0.5), p90: at(0.9), p99: at(0.99) })
    }

    /// The 1-based rank of quantile `q` among `n` values.
    fn rank(q: f64, n: usize) -> usize {
        ((q * n as f64).ceil() as usize).clamp(1, n)
    }
}

/// What a set of calls cost and how. Ratios are 0 when their denominator is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub calls: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub spend_usd: f64,
    pub cost_per_call: f64,
    /// cached input tokens / input tokens.
    pub cache_hit_ratio: f64,
    /// Share of spend on models that have a cheaper sibling (`cheaper_model`).
    pub frontier_spend_share: f64,
    /// Share of calls on such models: what routing changes move (the spend
    /// share saturates when a few large calls dominate).
    #[serde(default)]
    pub frontier_call_share: f64,
    /// Share of calls repeating an identical earlier prompt to the same model.
    pub duplicate_share: f64,
    pub error_rate: f64,
    pub latency_ms: Option<Percentiles>,
    pub ttft_ms: Option<Percentiles>,
}

/// The grouping a baseline keeps (None: the record did not say).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupKey {
    pub service: Option<String>,
    pub model: String,
    pub feature: Option<String>,
    pub provider: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    #[serde(flatten)]
    pub key: GroupKey,
    pub metrics: Metrics,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub format: u32,
    pub name: String,
    /// When it was saved (RFC 3339).
    pub created_at: String,
    /// First and last call of the window (RFC 3339), and the real span.
    pub since: String,
    pub until: String,
    pub window_hours: f64,
    /// Observed -> 30-day month, as the Opportunity Register extrapolates
    /// (`opportunities::window`, at least one hour).
    pub month_factor: f64,
    pub totals: Metrics,
    pub groups: Vec<Group>,
    pub opportunities: Vec<Opportunity>,
    pub roadmap: Vec<RoadmapItem>,
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("not a tokentap baseline: {0}")]
    Json(#[from] serde_json::Error),
    #[error("baseline format {0} is newer than this tokentap reads ({FORMAT}): upgrade tokentap")]
    Format(u32),
}

impl Baseline {
    /// The baseline of `records` and their register `opps` (from
    /// `opportunities::detect` over the same records).
    pub fn build(name: &str, records: &[LlmCall], opps: &[Opportunity]) -> Self {
        let facts = Facts::of(records);
        let (_, until, _) = facts.span();
        Self::assemble(name, &facts, opps, roadmap::plan(records, opps, &until))
    }

    /// The baseline of a window's facts, its register and its roadmap
    /// (`roadmap::plan` or, from ClickHouse, `roadmap::plan_of`).
    pub fn assemble(name: &str, facts: &Facts, opps: &[Opportunity], roadmap: Vec<RoadmapItem>) -> Self {
        let (since, until, span_h) = facts.span();
        let (_, factor) = facts.window();
        Self {
            format: FORMAT,
            name: name.to_owned(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            since,
            until,
            window_hours: span_h,
            month_factor: factor,
            totals: facts.totals.clone(),
            groups: facts.groups.clone(),
            opportunities: opps.to_vec(),
            roadmap,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a baseline serialises") + "\n"
    }

    pub fn from_json(text: &str) -> Result<Self, BaselineError> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let format = v.get("format").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
        if format > FORMAT {
            return Err(BaselineError::Format(format));
        }
        Ok(serde_json::from_value(v)?)
    }
}

pub fn model_of(r: &LlmCall) -> String {
    r.response_model.clone().or_else(|| r.request_model.clone()).unwrap_or_else(|| "(unknown)".into())
}

/// The metrics of all `records`, and per group, the most expensive group first.
pub fn group_metrics(records: &[LlmCall]) -> (Metrics, Vec<Group>) {
    let mut by: BTreeMap<GroupKey, Vec<&LlmCall>> = BTreeMap::new();
    for r in records {
        by.entry(key_of(r)).or_default().push(r);
    }
    let all: Vec<&LlmCall> = records.iter().collect();
    let mut groups: Vec<Group> = by.into_iter().map(|(key, rs)| Group { key, metrics: metrics(&rs) }).collect();
    groups.sort_by(|a, b| b.metrics.spend_usd.total_cmp(&a.metrics.spend_usd));
    (metrics(&all), groups)
}

pub fn key_of(r: &LlmCall) -> GroupKey {
    GroupKey {
        service: r.service.clone(),
        model: model_of(r),
        feature: r.feature.clone(),
        provider: r.provider.clone(),
    }
}

/// First and last call (RFC 3339) and the real span in hours.
pub fn span(records: &[LlmCall]) -> (String, String, f64) {
    let mut ts: Vec<(i64, &str)> = records
        .iter()
        .filter_map(|r| chrono::DateTime::parse_from_rfc3339(&r.ts).ok().map(|t| (t.timestamp_micros(), r.ts.as_str())))
        .collect();
    ts.sort();
    match (ts.first(), ts.last()) {
        (Some(a), Some(b)) => (a.1.to_owned(), b.1.to_owned(), (b.0 - a.0) as f64 / 3.6e9),
        _ => (String::new(), String::new(), 0.0),
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Calls repeating an identical earlier prompt to the same model (embeddings
/// aside, as the duplicates detector counts them), and the calls that could.
pub fn duplicate_counts(rs: &[&LlmCall]) -> (u64, u64) {
    let mut seen: HashMap<(String, &str), u64> = HashMap::new();
    let (mut dup, mut n) = (0, 0);
    for r in rs {
        let Some(f) = r.features.as_ref() else { continue };
        let Some(h) = f.prompt_hash.as_deref() else { continue };
        if f.embedding_inputs.is_some() {
            continue;
        }
        n += 1;
        let c = seen.entry((model_of(r), h)).or_default();
        if *c > 0 {
            dup += 1;
        }
        *c += 1;
    }
    (dup, n)
}

pub fn is_frontier(model: &str) -> bool {
    cheaper_model(model).is_some()
}

/// What adds up over a set of calls; [`Metrics`] derive from it.
#[derive(Clone, Debug, Default)]
pub struct Sums {
    pub calls: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub spend_usd: f64,
    /// Spend and calls on models with a cheaper sibling.
    pub frontier_usd: f64,
    pub frontier_calls: u64,
    /// Calls repeating an earlier identical prompt, of the calls that could ([`duplicate_counts`]).
    pub duplicates: u64,
    pub dedupable: u64,
}

impl Sums {
    pub fn metrics(&self, latency_ms: Option<Percentiles>, ttft_ms: Option<Percentiles>) -> Metrics {
        Metrics {
            calls: self.calls,
            errors: self.errors,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cached_input_tokens,
            spend_usd: self.spend_usd,
            cost_per_call: ratio(self.spend_usd, self.calls as f64),
            cache_hit_ratio: ratio(self.cached_input_tokens as f64, self.input_tokens as f64),
            frontier_spend_share: ratio(self.frontier_usd, self.spend_usd),
            frontier_call_share: ratio(self.frontier_calls as f64, self.calls as f64),
            duplicate_share: ratio(self.duplicates as f64, self.dedupable as f64),
            error_rate: ratio(self.errors as f64, self.calls as f64),
            latency_ms,
            ttft_ms,
        }
    }
}

/// The metrics of a set of calls.
pub fn metrics(rs: &[&LlmCall]) -> Metrics {
    let mut m = Sums::default();
    for r in rs {
        m.calls += 1;
        if r.status.is_some_and(|s| s >= 400) {
            m.errors += 1;
        }
        m.input_tokens += r.input_tokens.unwrap_or(0);
        m.output_tokens += r.output_tokens.unwrap_or(0);
        m.cached_input_tokens += r.cached_input_tokens.unwrap_or(0);
        let c = r.cost_usd.unwrap_or(0.0);
        m.spend_usd += c;
        if is_frontier(&model_of(r)) {
            m.frontier_usd += c;
            m.frontier_calls += 1;
        }
    }
    (m.duplicates, m.dedupable) = duplicate_counts(rs);
    m.metrics(
        Percentiles::of(rs.iter().filter_map(|r| r.duration_ms).collect()),
        Percentiles::of(rs.iter().filter_map(|r| r.ttft_ms).collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opportunities::{detect, Thresholds};
    use crate::{PriceTable, PromptFeatures};

    fn call(i: u32, model: &str, prompt: &str, cached: u64) -> LlmCall {
        let mut r = LlmCall {
            event_id: LlmCall::new_event_id(),
            ts: format!("2026-11-23T10:00:{:02}Z", i),
            provider: "openai".into(),
            operation: "chat".into(),
            request_model: Some(model.into()),
            status: Some(if i == 7 { 500 } else { 200 }),
            input_tokens: Some(1000),
            output_tokens: Some(10),
            cached_input_tokens: Some(cached),
            duration_ms: Some(100.0 + i as f64),
            service: Some("svc".into()),
            features: Some(PromptFeatures { prompt_hash: Some(prompt.into()), ..Default::default() }),
            ..Default::default()
        };
        r.apply_cost(&PriceTable::shipped());
        r
    }

    #[test]
    fn metrics_of_a_known_set() {
        // 10 calls: 4 on gpt-4o (frontier), the prompt "a" five times (4 repeats).
        let rs: Vec<LlmCall> = (0..10)
            .map(|i| {
                let model = if i < 4 { "gpt-4o" } else { "gpt-4o-mini" };
                let prompt = if i < 5 { "a".to_owned() } else { format!("p{i}") };
                call(i, model, &prompt, if i % 2 == 0 { 500 } else { 0 })
            })
            .collect();
        let refs: Vec<&LlmCall> = rs.iter().collect();
        let m = metrics(&refs);
        assert_eq!((m.calls, m.errors, m.input_tokens, m.cached_input_tokens), (10, 1, 10_000, 2_500));
        assert!((m.cache_hit_ratio - 0.25).abs() < 1e-12);
        // "a" on gpt-4o: calls 0-3 (3 repeats); "a" on gpt-4o-mini: call 4 alone.
        assert!((m.duplicate_share - 0.3).abs() < 1e-12, "{}", m.duplicate_share);
        let frontier: f64 = rs[..4].iter().map(|r| r.cost_usd.unwrap()).sum();
        let total: f64 = rs.iter().map(|r| r.cost_usd.unwrap()).sum();
        assert!((m.frontier_spend_share - frontier / total).abs() < 1e-12);
        assert!((m.frontier_call_share - 0.4).abs() < 1e-12);
        assert!((m.cost_per_call - total / 10.0).abs() < 1e-12 && (m.error_rate - 0.1).abs() < 1e-12);
        let l = m.latency_ms.unwrap();
        assert_eq!((l.p50, l.p90, l.p99), (104.0, 108.0, 109.0));
        assert!(m.ttft_ms.is_none());
    }

    #[test]
    fn a_baseline_round_trips_and_refuses_a_newer_format() {
        let rs: Vec<LlmCall> = (0..12).map(|i| call(i, "gpt-4o-mini", "same", 0)).collect();
        let opps = detect(&rs, &PriceTable::shipped(), &Thresholds::default());
        let b = Baseline::build("q4", &rs, &opps);
        assert_eq!(b.totals.calls, 12);
        assert_eq!(b.groups.len(), 1);
        assert!((b.window_hours - 11.0 / 3600.0).abs() < 1e-9, "the real span, not the one-hour floor");
        assert_eq!(b.month_factor, 720.0);
        assert_eq!(b.since, "2026-11-23T10:00:00Z");
        assert!(!b.opportunities.is_empty() && !b.roadmap.is_empty());
        let back = Baseline::from_json(&b.to_json()).unwrap();
        assert_eq!(back, b);
        let newer = b.to_json().replace("\"format\": 1", "\"format\": 9");
        assert!(matches!(Baseline::from_json(&newer), Err(BaselineError::Format(9))));
        assert!(Baseline::from_json("{\"format\": 1}").is_err());
    }
}
