//! Track: a later window against a saved baseline. The spend change split into
//! volume, mix and unit cost; each roadmap item's metric now, its target, the
//! saving realised against its estimate and a status; opportunities the
//! baseline did not have; and regressions (cost per call, cache-hit ratio,
//! duplicate share, frontier share of calls worse than the baseline by more than a
//! stated threshold). docs/track.md gives the formulas.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::baseline::{is_frontier, Baseline, GroupKey, Metrics};
use crate::facts::Facts;
use crate::opportunities::{Kind, Opportunity};
use crate::roadmap::{measure, Measured, Metric, RoadmapItem};
use crate::LlmCall;

/// How much worse than the baseline counts as a regression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Cost per call up by more than this fraction (0.10: +10 %).
    pub cost_per_call_rise: f64,
    /// Cache-hit ratio down by more than this many points (0.05: 5 points).
    pub cache_hit_drop: f64,
    /// Duplicate share up by more than this many points.
    pub duplicate_share_rise: f64,
    /// Share of calls on frontier models up by more than this many points.
    pub frontier_share_rise: f64,
    /// Fewest calls a service or group needs on both sides to be judged.
    pub min_calls: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            cost_per_call_rise: 0.10,
            cache_hit_drop: 0.05,
            duplicate_share_rise: 0.02,
            frontier_share_rise: 0.05,
            min_calls: 5,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub name: Option<String>,
    pub since: String,
    pub until: String,
    pub window_hours: f64,
    pub month_factor: f64,
    pub totals: Metrics,
    pub monthly_spend_usd: f64,
}

/// Monthly spend change = volume + mix + unit cost (exactly).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpendChange {
    pub baseline_monthly_usd: f64,
    pub now_monthly_usd: f64,
    pub change_usd: f64,
    /// More or fewer calls at the baseline's average cost per call.
    pub volume_usd: f64,
    /// Calls moving between services, models and features of different cost.
    pub mix_usd: f64,
    /// The same kind of call costing more or less.
    pub unit_cost_usd: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Done,
    Partial,
    NotStarted,
    Regressed,
    /// Nothing in the item's scope was called in this window.
    NotSeen,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Partial => "partial",
            Self::NotStarted => "not started",
            Self::Regressed => "regressed",
            Self::NotSeen => "not seen",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub kind: Kind,
    pub title: String,
    pub sprint: u32,
    pub due: String,
    pub metric: Metric,
    pub baseline_value: Option<f64>,
    pub now_value: Option<f64>,
    pub target: f64,
    pub target_met: bool,
    pub estimated_monthly_savings_usd: f64,
    pub realised_monthly_savings_usd: f64,
    pub status: Status,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Regression {
    /// `all calls`, `service checkout`, or `checkout / gpt-4o / (no feature) / openai`.
    pub scope: String,
    /// `cost_per_call`, `cache_hit_ratio`, `duplicate_share`, `frontier_call_share`.
    pub metric: String,
    pub baseline: f64,
    pub now: f64,
    pub threshold: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub baseline: Window,
    pub now: Window,
    pub spend: SpendChange,
    /// Monthly spend per service: (service, baseline, now).
    pub services: Vec<(String, f64, f64)>,
    pub progress: Vec<Progress>,
    pub new_opportunities: Vec<Opportunity>,
    pub regressions: Vec<Regression>,
    pub thresholds: Thresholds,
}

/// `now` (records and their register) against `base`.
pub fn compare(base: &Baseline, now: &[LlmCall], now_opps: &[Opportunity], t: &Thresholds) -> Comparison {
    let measures: Vec<Measured> = base.roadmap.iter().map(|i| measure(i.kind, &i.scope, now)).collect();
    compare_of(base, &Facts::of(now), &measures, now_opps, t)
}

/// `now` (a window's facts, each baseline roadmap item measured on it, in
/// the roadmap's order, and its register) against `base`.
pub fn compare_of(
    base: &Baseline,
    now: &Facts,
    measures: &[Measured],
    now_opps: &[Opportunity],
    t: &Thresholds,
) -> Comparison {
    let (since, until, hours) = now.span();
    let (_, f1) = now.window();
    let totals = now.totals.clone();
    let now_groups: BTreeMap<GroupKey, Metrics> =
        now.groups.iter().map(|g| (g.key.clone(), g.metrics.clone())).collect();
    let base_groups: BTreeMap<GroupKey, Metrics> =
        base.groups.iter().map(|g| (g.key.clone(), g.metrics.clone())).collect();
    let f0 = base.month_factor;
    Comparison {
        baseline: Window {
            name: Some(base.name.clone()),
            since: base.since.clone(),
            until: base.until.clone(),
            window_hours: base.window_hours,
            month_factor: f0,
            monthly_spend_usd: base.totals.spend_usd * f0,
            totals: base.totals.clone(),
        },
        now: Window {
            name: None,
            since,
            until,
            window_hours: hours,
            month_factor: f1,
            monthly_spend_usd: totals.spend_usd * f1,
            totals: totals.clone(),
        },
        spend: split(&base_groups, f0, &now_groups, f1),
        services: services(&base_groups, f0, &now_groups, f1),
        progress: base.roadmap.iter().zip(measures).map(|(i, m)| progress(i, base, m.clone(), now_opps, f1)).collect(),
        new_opportunities: {
            let had: BTreeSet<Kind> = base.opportunities.iter().map(|o| o.kind).collect();
            now_opps.iter().filter(|o| !had.contains(&o.kind)).cloned().collect()
        },
        regressions: regressions(base, &totals, &base_groups, &now_groups, t),
        thresholds: t.clone(),
    }
}

/// Price-volume-mix over groups, in monthly calls and spend. A group new in
/// `now` is valued at its own unit cost (it shows as mix, not unit cost).
fn split(b: &BTreeMap<GroupKey, Metrics>, f0: f64, n: &BTreeMap<GroupKey, Metrics>, f1: f64) -> SpendChange {
    let q0: f64 = b.values().map(|m| m.calls as f64 * f0).sum();
    let q1: f64 = n.values().map(|m| m.calls as f64 * f1).sum();
    let s0: f64 = b.values().map(|m| m.spend_usd * f0).sum();
    let s1: f64 = n.values().map(|m| m.spend_usd * f1).sum();
    let avg0 = if q0 > 0.0 { s0 / q0 } else { 0.0 };
    let keys: BTreeSet<&GroupKey> = b.keys().chain(n.keys()).collect();
    // Unit costs from each group's own spend and calls (a baseline file's
    // stored cost_per_call is not trusted to agree with them).
    let unit = |m: &Metrics| if m.calls > 0 { m.spend_usd / m.calls as f64 } else { 0.0 };
    let mut mix = 0.0;
    for k in keys {
        let (m0, m1) = (b.get(k), n.get(k));
        let share =
            |m: Option<&Metrics>, f: f64, q: f64| m.map_or(0.0, |m| if q > 0.0 { m.calls as f64 * f / q } else { 0.0 });
        let (sh0, sh1) = (share(m0, f0, q0), share(m1, f1, q1));
        let c0 = m0.map_or_else(|| m1.map_or(0.0, unit), unit);
        mix += q1 * (sh1 - sh0) * c0;
    }
    let volume = if q0 > 0.0 { (q1 - q0) * avg0 } else { 0.0 };
    if q0 == 0.0 {
        // No baseline calls: everything is new work.
        mix = s1 - s0;
    }
    // Unit cost = q1 x sum s1 (c1 - c0): the rest of the change, which it is
    // exactly when every group's spend matches its calls (then the identity
    // holds by construction; any spend without calls lands here too).
    SpendChange {
        baseline_monthly_usd: s0,
        now_monthly_usd: s1,
        change_usd: s1 - s0,
        volume_usd: volume,
        mix_usd: mix,
        unit_cost_usd: (s1 - s0) - volume - mix,
    }
}

fn services(
    b: &BTreeMap<GroupKey, Metrics>,
    f0: f64,
    n: &BTreeMap<GroupKey, Metrics>,
    f1: f64,
) -> Vec<(String, f64, f64)> {
    let mut by: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let name = |k: &GroupKey| k.service.clone().unwrap_or_else(|| "(unattributed)".into());
    for (k, m) in b {
        by.entry(name(k)).or_default().0 += m.spend_usd * f0;
    }
    for (k, m) in n {
        by.entry(name(k)).or_default().1 += m.spend_usd * f1;
    }
    let mut v: Vec<(String, f64, f64)> = by.into_iter().map(|(s, (x, y))| (s, x, y)).collect();
    v.sort_by(|a, b| (b.1.max(b.2)).total_cmp(&a.1.max(a.2)));
    v
}

fn progress(item: &RoadmapItem, base: &Baseline, m: Measured, now_opps: &[Opportunity], f1: f64) -> Progress {
    let now_est = |k: Kind| now_opps.iter().find(|o| o.kind == k).map_or(0.0, |o| o.estimated_monthly_savings_usd);
    let realised = match item.kind {
        // No scope of calls to follow: the waste itself, then and now.
        Kind::SemanticCache | Kind::VerboseFormat => item.estimated_monthly_savings_usd - now_est(item.kind),
        Kind::ContextBloat => {
            // The conversations' spend, plus chunks repeated inside prompts (not tied to a conversation).
            let chunks = |o: Option<&Opportunity>, f: f64| {
                o.and_then(|o| o.evidence["repeated_chunk_savings_usd"].as_f64()).unwrap_or(0.0) * f
            };
            let b = base.opportunities.iter().find(|o| o.kind == Kind::ContextBloat);
            let n = now_opps.iter().find(|o| o.kind == Kind::ContextBloat);
            item.baseline_scope_monthly_usd - m.scope_spend_usd * f1 + chunks(b, base.month_factor) - chunks(n, f1)
        }
        _ => item.baseline_scope_monthly_usd - m.scope_spend_usd * f1,
    };
    let met = m.value.is_some_and(|v| item.met(v));
    let worse = match (item.baseline_value, m.value) {
        (Some(b), Some(v)) => {
            let d = if item.metric.higher_is_better() { b - v } else { v - b };
            if item.metric.is_share() {
                d > 0.02
            } else {
                d > 0.10 * b.abs()
            }
        }
        _ => false,
    };
    // Part of the way to the target, by the metric or by the money.
    let moved = match (item.baseline_value, m.value) {
        (Some(b), Some(v)) if (b - item.target).abs() > 1e-12 => (b - v) / (b - item.target) >= 0.10,
        _ => false,
    };
    let est = item.estimated_monthly_savings_usd;
    let status = if m.value.is_none() && m.scope_calls == 0 {
        Status::NotSeen
    } else if met {
        Status::Done
    } else if worse || realised < -0.10 * est {
        Status::Regressed
    } else if moved || realised >= 0.10 * est {
        Status::Partial
    } else {
        Status::NotStarted
    };
    Progress {
        kind: item.kind,
        title: item.title.clone(),
        sprint: item.sprint,
        due: item.due.clone(),
        metric: item.metric,
        baseline_value: item.baseline_value,
        now_value: m.value,
        target: item.target,
        target_met: met,
        estimated_monthly_savings_usd: est,
        realised_monthly_savings_usd: realised,
        status,
    }
}

/// Spend, calls, input and cached tokens and frontier calls add up across
/// groups; a service's ratios come from them.
#[derive(Default)]
struct Sums {
    calls: u64,
    spend: f64,
    input: u64,
    cached: u64,
    frontier_calls: u64,
}

fn by_service(groups: &BTreeMap<GroupKey, Metrics>) -> BTreeMap<String, Sums> {
    let mut by: BTreeMap<String, Sums> = BTreeMap::new();
    for (k, m) in groups {
        let s = by.entry(k.service.clone().unwrap_or_else(|| "(unattributed)".into())).or_default();
        s.calls += m.calls;
        s.spend += m.spend_usd;
        s.input += m.input_tokens;
        s.cached += m.cached_input_tokens;
        if is_frontier(&k.model) {
            s.frontier_calls += m.calls;
        }
    }
    by
}

fn regressions(
    base: &Baseline,
    now: &Metrics,
    b: &BTreeMap<GroupKey, Metrics>,
    n: &BTreeMap<GroupKey, Metrics>,
    t: &Thresholds,
) -> Vec<Regression> {
    let mut out = Vec::new();
    let mut check = |scope: &str, metric: &str, before: f64, after: f64| {
        let (bad, threshold) = match metric {
            "cost_per_call" => (
                after > before * (1.0 + t.cost_per_call_rise) && after > 0.0,
                format!("+{:.0} %", t.cost_per_call_rise * 100.0),
            ),
            "cache_hit_ratio" => {
                (before - after > t.cache_hit_drop, format!("-{:.0} points", t.cache_hit_drop * 100.0))
            }
            "duplicate_share" => {
                (after - before > t.duplicate_share_rise, format!("+{:.0} points", t.duplicate_share_rise * 100.0))
            }
            _ => (after - before > t.frontier_share_rise, format!("+{:.0} points", t.frontier_share_rise * 100.0)),
        };
        if bad {
            out.push(Regression {
                scope: scope.to_owned(),
                metric: metric.to_owned(),
                baseline: before,
                now: after,
                threshold,
            });
        }
    };
    let bt = &base.totals;
    if bt.calls >= t.min_calls && now.calls >= t.min_calls {
        check("all calls", "cost_per_call", bt.cost_per_call, now.cost_per_call);
        check("all calls", "cache_hit_ratio", bt.cache_hit_ratio, now.cache_hit_ratio);
        check("all calls", "duplicate_share", bt.duplicate_share, now.duplicate_share);
        check("all calls", "frontier_call_share", bt.frontier_call_share, now.frontier_call_share);
    }
    let (sb, sn) = (by_service(b), by_service(n));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    for (svc, x) in &sb {
        let Some(y) = sn.get(svc) else { continue };
        if x.calls < t.min_calls || y.calls < t.min_calls || sb.len() < 2 {
            continue;
        }
        let scope = format!("service {svc}");
        check(&scope, "cost_per_call", ratio(x.spend, x.calls as f64), ratio(y.spend, y.calls as f64));
        check(
            &scope,
            "cache_hit_ratio",
            ratio(x.cached as f64, x.input as f64),
            ratio(y.cached as f64, y.input as f64),
        );
        check(
            &scope,
            "frontier_call_share",
            ratio(x.frontier_calls as f64, x.calls as f64),
            ratio(y.frontier_calls as f64, y.calls as f64),
        );
    }
    for (k, x) in b {
        let Some(y) = n.get(k) else { continue };
        if x.calls < t.min_calls || y.calls < t.min_calls {
            continue;
        }
        let scope = format!(
            "{} / {} / {} / {}",
            k.service.as_deref().unwrap_or("(unattributed)"),
            k.model,
            k.feature.as_deref().unwrap_or("(no feature)"),
            k.provider
        );
        // Not cost per call here: work moving off a model (the cheap calls to
        // a smaller one) raises what the rest cost per call without anything
        // getting worse. The service and the total judge cost per call.
        check(&scope, "cache_hit_ratio", x.cache_hit_ratio, y.cache_hit_ratio);
        check(&scope, "duplicate_share", x.duplicate_share, y.duplicate_share);
    }
    out
}

#[cfg(test)]
mod tests;
