//! The Remediation Roadmap with targets: each opportunity of the register
//! becomes an item with a success metric measured on the calls it is about
//! (its scope: keyed hashes, models, services from the detector's evidence),
//! the metric's baseline value, a target, and a sprint with dates (quick wins
//! first, structural changes last). `measure` evaluates the same metric on
//! any later window, which is what the compare report checks.
use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::baseline::{duplicate_counts, is_frontier, model_of};
use crate::opportunities::{conversations, max_repeat, sender, work_key, Effort, Kind, Opportunity, Thresholds};
use crate::LlmCall;

/// What an item's success is measured by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Calls repeating an identical earlier prompt / calls (all calls).
    DuplicateShare,
    /// Near-duplicate prompts / distinct prompts (all calls).
    NearDuplicateShare,
    /// Cached input tokens / input tokens on the named prefixes.
    PrefixCacheHitRatio,
    /// Short calls of the named work still on a frontier model / short calls of it.
    FrontierShortShare,
    /// Mean input tokens per call of the named conversations.
    InputTokensPerCall,
    /// Calls inside a tool loop / calls of the named conversations.
    LoopCallShare,
    /// Tokens a compact rendering would save / input tokens (all calls).
    MinifiableShare,
    /// Inputs per embeddings request of the named senders.
    EmbeddingsPerRequest,
}

impl Metric {
    pub fn describe(self) -> &'static str {
        match self {
            Self::DuplicateShare => "share of calls repeating an identical prompt",
            Self::NearDuplicateShare => "share of prompts that near-duplicate an earlier one",
            Self::PrefixCacheHitRatio => "cache-hit ratio (cached / input tokens) on the named prefixes",
            Self::FrontierShortShare => "share of the short classification calls still on a frontier model",
            Self::InputTokensPerCall => "input tokens per call of the bloated conversations",
            Self::LoopCallShare => "share of the agent's calls inside a repeated tool call",
            Self::MinifiableShare => "share of input tokens a compact format would not send",
            Self::EmbeddingsPerRequest => "embeddings inputs per request of the named senders",
        }
    }

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Self::PrefixCacheHitRatio | Self::EmbeddingsPerRequest)
    }

    pub fn is_share(self) -> bool {
        !matches!(self, Self::InputTokensPerCall | Self::EmbeddingsPerRequest)
    }

    /// A value in the metric's unit (`—` when there is none).
    pub fn format(self, v: Option<f64>) -> String {
        match v {
            None => "—".into(),
            Some(v) if self.is_share() => format!("{:.1} %", v * 100.0),
            Some(v) => format!("{v:.1}"),
        }
    }

    /// `≤ 1.0 %`, `≥ 8.0`.
    pub fn target_text(self, target: f64) -> String {
        let op = if self.higher_is_better() { "≥" } else { "≤" };
        format!("{op} {}", self.format(Some(target)))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoadmapItem {
    pub kind: Kind,
    pub title: String,
    pub effort: Effort,
    /// 1-based; quick-win sprints come before structural ones.
    pub sprint: u32,
    pub sprint_name: String,
    /// `quick_win` or `structural`.
    pub track: String,
    /// Sprint dates (YYYY-MM-DD): the item is due at the sprint's end.
    pub start: String,
    pub due: String,
    pub metric: Metric,
    /// The metric's value at baseline (None: nothing in scope).
    pub baseline_value: Option<f64>,
    pub target: f64,
    /// Keys of the calls the item is about (empty: all calls).
    pub scope: Vec<String>,
    /// Spend per month on the scope at baseline: what the realised saving is measured against.
    pub baseline_scope_monthly_usd: f64,
    pub estimated_monthly_savings_usd: f64,
}

impl RoadmapItem {
    pub fn met(&self, value: f64) -> bool {
        if self.metric.higher_is_better() {
            value >= self.target - 1e-12
        } else {
            value <= self.target + 1e-12
        }
    }
}

/// A metric evaluated on a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    /// None when nothing in the window is in scope.
    pub value: Option<f64>,
    pub scope_calls: u64,
    pub scope_spend_usd: f64,
}

fn metric_of(kind: Kind) -> Metric {
    match kind {
        Kind::DuplicateCalls => Metric::DuplicateShare,
        Kind::SemanticCache => Metric::NearDuplicateShare,
        Kind::PromptCaching => Metric::PrefixCacheHitRatio,
        Kind::ModelDowngrade => Metric::FrontierShortShare,
        Kind::ContextBloat => Metric::InputTokensPerCall,
        Kind::AgentLoop => Metric::LoopCallShare,
        Kind::VerboseFormat => Metric::MinifiableShare,
        Kind::EmbeddingBatching => Metric::EmbeddingsPerRequest,
    }
}

fn is_short(r: &LlmCall, t: &Thresholds) -> bool {
    let f = r.features.as_ref();
    r.output_tokens.is_some_and(|o| o <= t.short_output)
        || f.and_then(|f| f.max_tokens).is_some_and(|m| m <= t.short_output)
}

/// Whether `r` is among the calls an item of `kind` with `scope` is about.
fn in_scope(kind: Kind, scope: &HashSet<&str>, r: &LlmCall, t: &Thresholds) -> bool {
    let f = r.features.as_ref();
    let has = |k: Option<&str>| k.is_some_and(|k| scope.contains(k));
    match kind {
        Kind::DuplicateCalls => f
            .and_then(|f| f.prompt_hash.as_deref())
            .is_some_and(|h| scope.contains(format!("{}|{h}", model_of(r)).as_str())),
        Kind::PromptCaching => has(f.and_then(|f| f.prefix_hash.as_deref())),
        Kind::ModelDowngrade => is_short(r, t) && scope.contains(work_key(r).as_str()),
        Kind::ContextBloat | Kind::AgentLoop => has(f.and_then(|f| f.conversation_hash.as_deref())),
        Kind::EmbeddingBatching => {
            f.is_some_and(|f| f.embedding_inputs.is_some())
                && scope.contains(format!("{}|{}", sender(r), model_of(r)).as_str())
        }
        Kind::SemanticCache | Kind::VerboseFormat => true,
    }
}

fn share(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// The item's metric on `records`, and the calls and spend in its scope.
pub fn measure(kind: Kind, scope: &[String], records: &[LlmCall]) -> Measured {
    let t = Thresholds::default();
    let keys: HashSet<&str> = scope.iter().map(String::as_str).collect();
    let ok: Vec<&LlmCall> = records.iter().filter(|r| r.status.is_none_or(|s| (200..300).contains(&s))).collect();
    let rs: Vec<&LlmCall> = ok.iter().copied().filter(|r| in_scope(kind, &keys, r, &t)).collect();
    let sum = |f: &dyn Fn(&LlmCall) -> f64| rs.iter().map(|r| f(r)).sum::<f64>();
    let value = match kind {
        Kind::DuplicateCalls => {
            let (d, n) = duplicate_counts(&ok);
            share(d as f64, n as f64)
        }
        Kind::SemanticCache => near_duplicate_share(&ok, &t),
        Kind::PromptCaching => {
            share(sum(&|r| r.cached_input_tokens.unwrap_or(0) as f64), sum(&|r| r.input_tokens.unwrap_or(0) as f64))
        }
        Kind::ModelDowngrade => share(rs.iter().filter(|r| is_frontier(&model_of(r))).count() as f64, rs.len() as f64),
        Kind::ContextBloat => share(sum(&|r| r.input_tokens.unwrap_or(0) as f64), rs.len() as f64),
        Kind::AgentLoop => share(rs.iter().filter(|r| max_repeat(r) >= 2).count() as f64, rs.len() as f64),
        Kind::VerboseFormat => share(
            sum(&|r| r.features.as_ref().and_then(|f| f.minify_saved_tokens).unwrap_or(0) as f64),
            sum(&|r| r.input_tokens.unwrap_or(0) as f64),
        ),
        Kind::EmbeddingBatching => {
            share(sum(&|r| r.features.as_ref().and_then(|f| f.embedding_inputs).unwrap_or(0) as f64), rs.len() as f64)
        }
    };
    Measured { value, scope_calls: rs.len() as u64, scope_spend_usd: sum(&|r| r.cost_usd.unwrap_or(0.0)) }
}

/// Near-duplicates among distinct single-turn prompts, as the semantic-cache
/// detector finds them (its `hit_rate`).
fn near_duplicate_share(rs: &[&LlmCall], t: &Thresholds) -> Option<f64> {
    crate::opportunities::semantic(rs, 1.0, t)
        .first()
        .map(|o| o.evidence["hit_rate"].as_f64().unwrap_or(0.0))
        .or_else(|| rs.iter().any(|r| r.features.as_ref().is_some_and(|f| f.simhash.is_some())).then_some(0.0))
}

/// Targets: an "at most" share falls to a fifth of the baseline or to the
/// named level, whichever is lower; an "at least" level is what the scope can
/// reach (docs/opportunities.md). `reach` gives that level's (numerator,
/// denominator) over the scope; it is asked only for the kinds that need it.
pub fn target_of(kind: Kind, baseline: Option<f64>, reach: impl FnOnce() -> (f64, f64)) -> f64 {
    let b = baseline.unwrap_or(0.0);
    let at_most = |level: f64| level.min(b * 0.2);
    let reached = |(a, b): (f64, f64)| share(a, b).unwrap_or(0.0);
    match kind {
        Kind::DuplicateCalls => at_most(0.01),
        Kind::SemanticCache => at_most(0.05),
        Kind::ModelDowngrade => at_most(0.10),
        Kind::AgentLoop => at_most(0.05),
        Kind::VerboseFormat => at_most(0.01),
        Kind::EmbeddingBatching => 8.0,
        // Cacheable prefix tokens over input tokens: a prefix sent n times
        // can be read from the cache n - 1 times; 80 % of that.
        Kind::PromptCaching => 0.8 * reached(reach()),
        // Input tokens with history capped at twice the first turn (as the
        // detector assumes) over calls; 5 % slack: a window is rarely cut at
        // exactly the cap.
        Kind::ContextBloat => 1.05 * reached(reach()),
    }
}

/// [`target_of`] over the scope's records.
fn target(kind: Kind, baseline: Option<f64>, records: &[&LlmCall], scope: &HashSet<&str>) -> f64 {
    target_of(kind, baseline, || match kind {
        Kind::PromptCaching => {
            let mut by: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
            for r in records {
                let Some(f) = r.features.as_ref() else { continue };
                if let (Some(h), Some(p)) = (f.prefix_hash.as_deref(), f.prefix_tokens) {
                    if scope.contains(h) {
                        let e = by.entry(h).or_default();
                        e.0 += 1;
                        e.1 += p;
                        e.2 += r.input_tokens.unwrap_or(0);
                    }
                }
            }
            by.values().fold((0.0, 0.0), |(c, i), (n, p, inp)| {
                (c + (*n as f64 - 1.0) / *n as f64 * *p as f64, i + *inp as f64)
            })
        }
        _ => {
            let convs = conversations(records);
            let caps: f64 = convs
                .iter()
                .filter(|(h, _)| scope.contains(*h))
                .map(|(_, v)| {
                    let first = v[0].input_tokens.unwrap_or(0) as f64;
                    v.iter().map(|r| (r.input_tokens.unwrap_or(0) as f64).min(first * 2.0)).sum::<f64>()
                })
                .sum();
            let calls: usize = convs.iter().filter(|(h, _)| scope.contains(*h)).map(|(_, v)| v.len()).sum();
            (caps, calls as f64)
        }
    })
}

const SPRINTS: [(u32, &str, &str, i64, i64); 3] = [
    (1, "Sprint 1: quick wins (settings and caches)", "quick_win", 0, 14),
    (2, "Sprint 2: quick wins (code changes)", "quick_win", 14, 28),
    (3, "Sprint 3: structural changes (design changes)", "structural", 28, 56),
];

/// What the roadmap needs of the baseline window for one opportunity: its
/// metric and scope there, and the target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scoped {
    pub measured: Measured,
    pub target: f64,
}

/// [`Scoped`] for an opportunity over the records it came from.
pub fn scoped(o: &Opportunity, records: &[LlmCall]) -> Scoped {
    let t = Thresholds::default();
    let scope = scope_of(o);
    let keys: HashSet<&str> = scope.iter().map(String::as_str).collect();
    let measured = measure(o.kind, &scope, records);
    let in_it: Vec<&LlmCall> = records
        .iter()
        .filter(|r| r.status.is_none_or(|s| (200..300).contains(&s)) && in_scope(o.kind, &keys, r, &t))
        .collect();
    let target = target(o.kind, measured.value, &in_it, &keys);
    Scoped { measured, target }
}

/// The keys an opportunity is about (its evidence's `scope`).
pub fn scope_of(o: &Opportunity) -> Vec<String> {
    o.evidence["scope"]
        .as_array()
        .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The roadmap of a register over the records it came from; sprints start
/// the day after `until` (the baseline's last call, RFC 3339).
pub fn plan(records: &[LlmCall], opps: &[Opportunity], until: &str) -> Vec<RoadmapItem> {
    let (_, factor) = crate::opportunities::window(records);
    let scoped: Vec<Scoped> = opps.iter().map(|o| scoped(o, records)).collect();
    plan_of(opps, &scoped, factor, until)
}

/// The roadmap of a register, given each opportunity's [`Scoped`] (in the
/// register's order) and the window's factor to a month.
pub fn plan_of(opps: &[Opportunity], scoped: &[Scoped], factor: f64, until: &str) -> Vec<RoadmapItem> {
    let day0 = chrono::DateTime::parse_from_rfc3339(until)
        .map(|d| d.date_naive())
        .unwrap_or_else(|_| chrono::Utc::now().date_naive())
        + chrono::Duration::days(1);
    let mut items: Vec<RoadmapItem> = opps
        .iter()
        .zip(scoped)
        .map(|(o, s)| {
            let m = &s.measured;
            let sprint = match o.effort {
                Effort::Low => 0,
                Effort::Medium => 1,
                Effort::High => 2,
            };
            let (n, name, track, from, to) = SPRINTS[sprint];
            let date = |d: i64| (day0 + chrono::Duration::days(d)).format("%Y-%m-%d").to_string();
            RoadmapItem {
                kind: o.kind,
                title: o.title.clone(),
                effort: o.effort,
                sprint: n,
                sprint_name: name.to_owned(),
                track: track.to_owned(),
                start: date(from),
                due: date(to - 1),
                metric: metric_of(o.kind),
                baseline_value: m.value,
                target: s.target,
                scope: scope_of(o),
                baseline_scope_monthly_usd: m.scope_spend_usd * factor,
                estimated_monthly_savings_usd: o.estimated_monthly_savings_usd,
            }
        })
        .collect();
    items.sort_by_key(|i| i.sprint);
    items
}

#[cfg(test)]
mod tests;
