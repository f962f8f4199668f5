//! The Spend Map's numbers beyond totals: where spend concentrates, cost per
//! end user and per conversation, prompt-cache hits, cost per 1k tokens and
//! latency percentiles. Plain functions over records; spend_map.rs renders them.
use std::collections::BTreeMap;

use super::model_of;
use crate::summary::Key;
use crate::LlmCall;

/// The share of spend the concentration line accounts for ("N areas hold
/// 80 %+"): the usual Pareto cut.
pub const CONCENTRATION_SHARE: f64 = 0.8;

/// Spend of one service x model x feature.
#[derive(Clone, Debug, PartialEq)]
pub struct Area {
    pub service: String,
    pub model: String,
    pub feature: String,
    pub calls: u64,
    pub cost: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Concentration {
    /// Most expensive first.
    pub areas: Vec<Area>,
    pub total: f64,
    /// The fewest areas holding at least [`CONCENTRATION_SHARE`] of spend (0 without spend).
    pub n: usize,
    /// The share of spend those hold.
    pub share: f64,
}

pub(crate) fn concentration(records: &[LlmCall]) -> Concentration {
    let mut by: BTreeMap<(String, String, String), (u64, f64)> = BTreeMap::new();
    for r in records {
        let key = (
            r.service.clone().unwrap_or_else(|| "(unattributed)".into()),
            model_of(r),
            r.feature.clone().unwrap_or_else(|| "(none)".into()),
        );
        let e = by.entry(key).or_default();
        e.0 += 1;
        e.1 += r.cost_usd.unwrap_or(0.0);
    }
    concentrate(by)
}

/// The concentration of (service, model, feature) -> (calls, spend).
pub fn concentrate(by: BTreeMap<(String, String, String), (u64, f64)>) -> Concentration {
    let mut areas: Vec<Area> = by
        .into_iter()
        .map(|((service, model, feature), (calls, cost))| Area { service, model, feature, calls, cost })
        .collect();
    areas.sort_by(|a, b| b.cost.total_cmp(&a.cost).then(b.calls.cmp(&a.calls)));
    let total: f64 = areas.iter().map(|a| a.cost).sum();
    let (mut n, mut held) = (0, 0.0);
    if total > 0.0 {
        for a in &areas {
            n += 1;
            held += a.cost;
            // Relative slack: summing in another order must not miss 100 %.
            if held >= CONCENTRATION_SHARE * total * (1.0 - 1e-12) {
                break;
            }
        }
    }
    Concentration { areas, total, n, share: if total > 0.0 { held / total } else { 0.0 } }
}

/// Spend of one end user or one conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Spender {
    pub key: String,
    pub calls: u64,
    pub cost: f64,
}

/// Spend per value of a field, over the records that carry it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spenders {
    /// Distinct values.
    pub distinct: u64,
    /// Records carrying the field.
    pub calls: u64,
    pub cost: f64,
    /// The [`TOP_SPENDERS`] most expensive first (ties: more calls, then the value).
    pub items: Vec<Spender>,
}

/// Rows of the top-spender tables: all a report shows, so all a window keeps.
pub const TOP_SPENDERS: usize = 5;

impl Spenders {
    /// Mean cost per distinct value (0 when none).
    pub fn mean(&self) -> f64 {
        if self.distinct == 0 {
            0.0
        } else {
            self.cost / self.distinct as f64
        }
    }
}

pub(crate) fn spenders(records: &[LlmCall], key: fn(&LlmCall) -> Option<&str>) -> Spenders {
    let mut by: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
    for r in records {
        if let Some(k) = key(r) {
            let e = by.entry(k).or_default();
            e.0 += 1;
            e.1 += r.cost_usd.unwrap_or(0.0);
        }
    }
    let mut items: Vec<Spender> =
        by.into_iter().map(|(k, (calls, cost))| Spender { key: k.to_string(), calls, cost }).collect();
    items.sort_by(|a, b| b.cost.total_cmp(&a.cost).then(b.calls.cmp(&a.calls)));
    let (calls, cost) = (items.iter().map(|i| i.calls).sum(), items.iter().map(|i| i.cost).sum());
    let distinct = items.len() as u64;
    items.truncate(TOP_SPENDERS);
    Spenders { distinct, calls, cost, items }
}

pub(crate) fn end_user(r: &LlmCall) -> Option<&str> {
    r.end_user.as_deref().filter(|u| !u.is_empty())
}

pub(crate) fn conversation(r: &LlmCall) -> Option<&str> {
    r.features.as_ref()?.conversation_hash.as_deref().filter(|h| !h.is_empty())
}

/// Token counts and the priced part of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub input: u64,
    pub cached: u64,
    /// Tokens (input + output) of the calls that have a price.
    pub priced_tokens: u64,
    pub priced_cost: f64,
}

impl Usage {
    fn add(&mut self, r: &LlmCall) {
        let (input, output) = (r.input_tokens.unwrap_or(0), r.output_tokens.unwrap_or(0));
        self.input += input;
        self.cached += r.cached_input_tokens.unwrap_or(0);
        // Unpriced calls would make tokens look cheaper than they are.
        if let Some(c) = r.cost_usd {
            self.priced_tokens += input + output;
            self.priced_cost += c;
        }
    }

    /// Share of input tokens read from the provider's prompt cache.
    pub fn cache_hit(&self) -> Option<f64> {
        (self.input > 0).then(|| self.cached as f64 / self.input as f64)
    }

    /// USD per 1,000 tokens (input + output), over priced calls.
    pub fn per_1k(&self) -> Option<f64> {
        (self.priced_tokens > 0).then(|| self.priced_cost / self.priced_tokens as f64 * 1000.0)
    }
}

/// Usage per (provider, model) (the keys of `summary::summarize`) and overall.
pub(crate) fn usage(records: &[LlmCall]) -> (BTreeMap<Key, Usage>, Usage) {
    let mut by: BTreeMap<Key, Usage> = BTreeMap::new();
    let mut total = Usage::default();
    for r in records {
        by.entry((r.provider.clone(), model_of(r))).or_default().add(r);
        total.add(r);
    }
    (by, total)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// Nearest rank: the smallest value with at least `p` % of the values at or
/// below it (a value that was observed, never an interpolation).
fn nearest_rank(sorted: &[f64], p: usize) -> f64 {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

impl Percentiles {
    /// Nearest-rank percentiles of sorted values; None without any.
    pub fn of_sorted(sorted: &[f64]) -> Option<Self> {
        (!sorted.is_empty()).then(|| Percentiles {
            n: sorted.len(),
            p50: nearest_rank(sorted, 50),
            p90: nearest_rank(sorted, 90),
            p99: nearest_rank(sorted, 99),
        })
    }
}

/// Models with the most values first (then by name).
pub fn rank_percentiles(by: BTreeMap<String, Percentiles>) -> Vec<(String, Percentiles)> {
    let mut out: Vec<(String, Percentiles)> = by.into_iter().collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.1.n));
    out
}

/// Percentiles of `value` per model, models with the most values first.
pub(crate) fn percentiles_by_model(
    records: &[LlmCall],
    value: fn(&LlmCall) -> Option<f64>,
) -> Vec<(String, Percentiles)> {
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in records {
        if let Some(v) = value(r).filter(|v| v.is_finite()) {
            by.entry(model_of(r)).or_default().push(v);
        }
    }
    rank_percentiles(
        by.into_iter()
            .filter_map(|(m, mut v)| {
                v.sort_by(f64::total_cmp);
                Percentiles::of_sorted(&v).map(|p| (m, p))
            })
            .collect(),
    )
}

/// Time to first token of a streamed call.
pub(crate) fn ttft(r: &LlmCall) -> Option<f64> {
    r.ttft_ms.filter(|_| r.stream)
}

/// Duration of a call that did not fail: a fast 429 is not the model's latency.
pub(crate) fn latency(r: &LlmCall) -> Option<f64> {
    r.duration_ms.filter(|_| r.status.is_none_or(|s| s < 400))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PromptFeatures;

    /// Calls over three services, two models and two features, with end
    /// users, conversations, cache reads and timings that vary per call.
    fn fixture() -> Vec<LlmCall> {
        (0..60u64)
            .map(|i| LlmCall {
                provider: if i % 5 == 0 { "anthropic" } else { "openai" }.into(),
                request_model: Some(if i % 5 == 0 { "claude-sonnet-4" } else { "gpt-4o" }.into()),
                service: Some(["search", "chat", "billing"][(i % 3) as usize].into()),
                feature: (i % 4 != 0).then(|| "summarise".to_string()),
                input_tokens: Some(1000 + 10 * i),
                cached_input_tokens: Some(if i % 2 == 0 { 500 } else { 0 }),
                output_tokens: Some(20 + i),
                cost_usd: (i != 7).then(|| 0.001 * ((i * 37) % 11 + 1) as f64),
                end_user: (i % 6 != 0).then(|| format!("user-{}", i % 4)),
                features: Some(PromptFeatures {
                    conversation_hash: (i < 40).then(|| format!("{:064x}", i / 8)),
                    ..Default::default()
                }),
                stream: i % 2 == 1,
                ttft_ms: Some(((i * 53) % 97) as f64),
                duration_ms: Some(((i * 29) % 61) as f64 + 100.0),
                status: Some(if i == 11 { 429 } else { 200 }),
                ..Default::default()
            })
            .collect()
    }

    /// The smallest observed value with at least p % of values at or below it,
    /// by counting rather than by rank.
    fn by_counting(values: &[f64], p: usize) -> f64 {
        values
            .iter()
            .copied()
            .filter(|v| values.iter().filter(|x| *x <= v).count() * 100 >= p * values.len())
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn concentration_is_the_fewest_areas_over_80_percent() {
        let rs = fixture();
        let c = concentration(&rs);
        let mut costs: BTreeMap<(Option<String>, String, Option<String>), f64> = BTreeMap::new();
        for r in &rs {
            *costs.entry((r.service.clone(), model_of(r), r.feature.clone())).or_default() += r.cost_usd.unwrap_or(0.0);
        }
        let total: f64 = costs.values().sum();
        assert_eq!(c.areas.len(), costs.len());
        assert!((c.total - total).abs() < 1e-12);
        // Any n areas hold at most what the n most expensive hold; the n
        // found must reach 80 % and n - 1 must not.
        let mut desc: Vec<f64> = costs.values().copied().collect();
        desc.sort_by(|a, b| b.total_cmp(a));
        let top = |n: usize| desc[..n].iter().sum::<f64>();
        assert!(top(c.n) >= 0.8 * total && top(c.n - 1) < 0.8 * total, "n = {}", c.n);
        assert!((c.share - top(c.n) / total).abs() < 1e-12);
        assert!(c.areas.windows(2).all(|w| w[0].cost >= w[1].cost));
        assert_eq!(c.areas.iter().map(|a| a.calls).sum::<u64>(), rs.len() as u64);
        assert_eq!(concentration(&[]).n, 0);
    }

    #[test]
    fn cost_per_end_user_and_per_conversation() {
        let rs = fixture();
        let users = spenders(&rs, end_user);
        let with_user: Vec<&LlmCall> = rs.iter().filter(|r| r.end_user.is_some()).collect();
        let mut distinct: Vec<&str> = with_user.iter().map(|r| r.end_user.as_deref().unwrap()).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(users.calls, with_user.len() as u64);
        assert_eq!(users.items.len(), distinct.len());
        let cost: f64 = with_user.iter().map(|r| r.cost_usd.unwrap_or(0.0)).sum();
        assert!((users.mean() - cost / distinct.len() as f64).abs() < 1e-12);
        let top = &users.items[0];
        for u in &distinct {
            let c: f64 =
                with_user.iter().filter(|r| r.end_user.as_deref() == Some(u)).map(|r| r.cost_usd.unwrap_or(0.0)).sum();
            assert!(top.cost >= c - 1e-12, "{u} spent more than the top spender");
        }
        let convs = spenders(&rs, conversation);
        let with_conv = rs.iter().filter(|r| r.features.as_ref().unwrap().conversation_hash.is_some()).count();
        assert_eq!(convs.calls, with_conv as u64);
        assert_eq!(
            convs.items.len(),
            rs.iter().filter_map(conversation).collect::<std::collections::BTreeSet<_>>().len()
        );
        let none = spenders(&[LlmCall::default()], end_user);
        assert_eq!((none.calls, none.items.len(), none.mean()), (0, 0, 0.0));
    }

    #[test]
    fn cache_hits_and_cost_per_1k_tokens() {
        let rs = fixture();
        let (by, total) = usage(&rs);
        let input: u64 = rs.iter().map(|r| r.input_tokens.unwrap()).sum();
        let cached: u64 = rs.iter().map(|r| r.cached_input_tokens.unwrap()).sum();
        assert!((total.cache_hit().unwrap() - cached as f64 / input as f64).abs() < 1e-12);
        let key = ("openai".to_string(), "gpt-4o".to_string());
        let line: Vec<&LlmCall> = rs.iter().filter(|r| r.provider == "openai").collect();
        let priced: Vec<&&LlmCall> = line.iter().filter(|r| r.cost_usd.is_some()).collect();
        let tokens: u64 = priced.iter().map(|r| r.input_tokens.unwrap() + r.output_tokens.unwrap()).sum();
        let cost: f64 = priced.iter().map(|r| r.cost_usd.unwrap()).sum();
        assert!(priced.len() < line.len(), "the fixture has an unpriced call on this line");
        assert!((by[&key].per_1k().unwrap() - cost * 1000.0 / tokens as f64).abs() < 1e-12);
        assert_eq!(Usage::default().cache_hit(), None);
        assert_eq!(Usage::default().per_1k(), None);
    }

    #[test]
    fn ttft_and_latency_percentiles_by_model() {
        let rs = fixture();
        // (what the report uses, which values it should take: streamed calls'
        // TTFT; durations of the calls that succeeded).
        type Value = fn(&LlmCall) -> Option<f64>;
        let cases: [(Value, Value); 2] = [
            (ttft, |r| if r.stream { r.ttft_ms } else { None }),
            (latency, |r| if r.status == Some(200) { r.duration_ms } else { None }),
        ];
        for (value, expected) in cases {
            let got = percentiles_by_model(&rs, value);
            assert_eq!(got.len(), 2);
            assert!(got[0].1.n >= got[1].1.n);
            for (model, p) in &got {
                let vals: Vec<f64> = rs.iter().filter(|r| &model_of(r) == model).filter_map(expected).collect();
                assert_eq!(p.n, vals.len(), "{model}");
                assert_eq!(
                    (p.p50, p.p90, p.p99),
                    (by_counting(&vals, 50), by_counting(&vals, 90), by_counting(&vals, 99)),
                    "{model}"
                );
            }
        }
    }
}
