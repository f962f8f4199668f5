use super::*;
use crate::opportunities::{detect, Thresholds as Detect};
use crate::{PriceTable, PromptFeatures};

/// A call at second `i` of the window.
fn call(i: usize, model: &str, input: u64, output: u64, cached: u64, f: PromptFeatures) -> LlmCall {
    let mut r = LlmCall {
        event_id: LlmCall::new_event_id(),
        ts: format!("2026-11-23T10:{:02}:{:02}Z", i / 60, i % 60),
        provider: "openai".into(),
        operation: "chat".into(),
        request_model: Some(model.into()),
        status: Some(200),
        input_tokens: Some(input),
        output_tokens: Some(output),
        cached_input_tokens: Some(cached),
        service: Some(if f.embedding_inputs.is_some() { "indexer" } else { "support" }.into()),
        features: Some(f),
        ..Default::default()
    };
    r.apply_cost(&PriceTable::shipped());
    r
}

fn prompt(h: &str) -> PromptFeatures {
    PromptFeatures { prompt_hash: Some(h.into()), message_count: 1, ..Default::default() }
}

fn prefixed(h: &str, prefix: &str, tokens: u64) -> PromptFeatures {
    PromptFeatures { prefix_hash: Some(prefix.into()), prefix_tokens: Some(tokens), ..prompt(h) }
}

/// Duplicates, an uncached 2,000-token prefix, yes/no calls on gpt-4o and
/// single-input embeddings; `fixed` remediates all four.
fn workload(fixed: bool) -> Vec<LlmCall> {
    let mut v = Vec::new();
    let repeats = if fixed { 1 } else { 5 };
    for _ in 0..repeats {
        v.push(call(v.len(), "gpt-4o-mini", 420, 120, 0, prompt("capital")));
    }
    for i in 0..10 {
        let cached = if fixed && i > 0 { 2000 } else { 0 };
        v.push(call(v.len(), "gpt-4o", 2060, 200, cached, prefixed(&format!("q{i}"), "sys", 2000)));
    }
    for i in 0..20 {
        let f = PromptFeatures { max_tokens: Some(1), ..prefixed(&format!("yn{i}"), "yesno", 5) };
        v.push(call(v.len(), if fixed { "gpt-4o-mini" } else { "gpt-4o" }, 300, 1, 0, f));
    }
    if fixed {
        let f = PromptFeatures { embedding_inputs: Some(15), ..prompt("batch") };
        v.push(call(v.len(), "text-embedding-3-small", 3000, 0, 0, f));
    } else {
        for i in 0..15 {
            let f = PromptFeatures { embedding_inputs: Some(1), ..prompt(&format!("e{i}")) };
            v.push(call(v.len(), "text-embedding-3-small", 200, 0, 0, f));
        }
    }
    v
}

fn cost(m: &str, i: u64, o: u64, cached: u64) -> f64 {
    PriceTable::shipped().lookup(m).unwrap().cost(i, o, cached, 0)
}

fn run(base: &[LlmCall], now: &[LlmCall]) -> Comparison {
    let p = PriceTable::shipped();
    let b = Baseline::build("b", base, &detect(base, &p, &Detect::default()));
    compare(&b, now, &detect(now, &p, &Detect::default()), &Thresholds::default())
}

fn item(c: &Comparison, k: Kind) -> &Progress {
    c.progress.iter().find(|p| p.kind == k).unwrap_or_else(|| panic!("{k:?} in {:#?}", c.progress))
}

#[test]
fn a_remediated_window_realises_each_saving_and_meets_each_target() {
    let c = run(&workload(false), &workload(true));
    // Truths from the prices, per month (both windows under an hour: x720).
    let truths = [
        (Kind::DuplicateCalls, 4.0 * cost("gpt-4o-mini", 420, 120, 0)),
        (
            Kind::PromptCaching,
            10.0 * cost("gpt-4o", 2060, 200, 0) - cost("gpt-4o", 2060, 200, 0) - 9.0 * cost("gpt-4o", 2060, 200, 2000),
        ),
        (Kind::ModelDowngrade, 20.0 * (cost("gpt-4o", 300, 1, 0) - cost("gpt-4o-mini", 300, 1, 0))),
        // Batching alone does not change the tokens billed.
        (Kind::EmbeddingBatching, 0.0),
    ];
    for (k, truth) in truths {
        let p = item(&c, k);
        let got = p.realised_monthly_savings_usd;
        assert!((got - truth * 720.0).abs() <= 1e-6 + 0.01 * truth * 720.0, "{k:?}: {got} vs {}", truth * 720.0);
        assert_eq!(p.status, Status::Done, "{p:#?}");
        assert!(p.target_met);
    }
    assert!(c.regressions.is_empty(), "{:#?}", c.regressions);
    assert!(c.new_opportunities.is_empty(), "{:#?}", c.new_opportunities);
    let s = &c.spend;
    assert!((s.volume_usd + s.mix_usd + s.unit_cost_usd - s.change_usd).abs() < 1e-9);
    assert!(s.change_usd < 0.0);
}

#[test]
fn the_same_window_again_saves_nothing_and_regresses_nothing() {
    let c = run(&workload(false), &workload(false));
    for p in &c.progress {
        assert!(p.realised_monthly_savings_usd.abs() < 1e-9, "{p:#?}");
        assert_eq!(p.status, Status::NotStarted, "{p:#?}");
    }
    assert!(c.regressions.is_empty() && c.new_opportunities.is_empty());
    assert!(c.spend.change_usd.abs() < 1e-9 && c.spend.volume_usd.abs() < 1e-9);
}

#[test]
fn twice_the_calls_is_volume_not_mix_or_unit_cost() {
    let base = workload(false);
    let mut now = base.clone();
    // The same calls again in the same window: twice the volume.
    now.extend(base.iter().cloned());
    let c = run(&base, &now);
    let s = &c.spend;
    assert!((s.volume_usd - s.baseline_monthly_usd).abs() < 1e-9 * s.baseline_monthly_usd, "{s:#?}");
    assert!(s.mix_usd.abs() < 1e-9 && s.unit_cost_usd.abs() < 1e-9, "{s:#?}");
}

#[test]
fn the_same_calls_at_twice_the_price_are_unit_cost() {
    let base = workload(false);
    let mut now = base.clone();
    for r in &mut now {
        r.cost_usd = r.cost_usd.map(|c| c * 2.0);
    }
    let s = run(&base, &now).spend;
    assert!((s.unit_cost_usd - s.baseline_monthly_usd).abs() < 1e-9 * s.baseline_monthly_usd, "{s:#?}");
    assert!(s.volume_usd.abs() < 1e-12 && s.mix_usd.abs() < 1e-9, "{s:#?}");
    // The cheap embeddings calls gone: fewer calls (volume, down), the rest
    // dearer on average (mix, up), each kind costing what it did (unit, 0).
    let fewer: Vec<LlmCall> = base.iter().filter(|r| r.service.as_deref() != Some("indexer")).cloned().collect();
    let s = run(&base, &fewer).spend;
    assert!(s.volume_usd < 0.0 && s.mix_usd > 0.0 && s.unit_cost_usd.abs() < 1e-9, "{s:#?}");
}

#[test]
fn going_back_to_the_wasteful_window_is_flagged() {
    let c = run(&workload(true), &workload(false));
    let flagged: BTreeSet<&str> =
        c.regressions.iter().filter(|r| r.scope == "all calls").map(|r| r.metric.as_str()).collect();
    for m in ["cost_per_call", "cache_hit_ratio", "duplicate_share", "frontier_call_share"] {
        assert!(flagged.contains(m), "{m} not flagged: {:#?}", c.regressions);
    }
    let r = c.regressions.iter().find(|r| r.scope == "all calls" && r.metric == "frontier_call_share").unwrap();
    // 10 of 32 calls on gpt-4o, then 30 of 50.
    assert!((r.baseline - 10.0 / 32.0).abs() < 1e-12 && (r.now - 30.0 / 50.0).abs() < 1e-12, "{r:#?}");
    let kinds: BTreeSet<Kind> = c.new_opportunities.iter().map(|o| o.kind).collect();
    assert!(kinds.contains(&Kind::DuplicateCalls) && kinds.contains(&Kind::ModelDowngrade), "{kinds:?}");
}

#[test]
fn half_done_is_partial_and_worse_is_regressed() {
    let base = workload(false);
    // Half the yes/no calls moved to the small model.
    let mut half = base.clone();
    for r in half.iter_mut().filter(|r| r.output_tokens == Some(1)).take(10) {
        r.request_model = Some("gpt-4o-mini".into());
        r.apply_cost(&PriceTable::shipped());
    }
    assert_eq!(item(&run(&base, &half), Kind::ModelDowngrade).status, Status::Partial);
    // More duplicates than before.
    let mut worse = base.clone();
    for _ in 0..10 {
        worse.push(call(worse.len(), "gpt-4o-mini", 420, 120, 0, prompt("capital")));
    }
    let p = run(&base, &worse);
    assert_eq!(item(&p, Kind::DuplicateCalls).status, Status::Regressed);
    assert!(item(&p, Kind::DuplicateCalls).realised_monthly_savings_usd < 0.0);
    // The embeddings sender gone: nothing to judge.
    let gone: Vec<LlmCall> = base.iter().filter(|r| r.service.as_deref() != Some("indexer")).cloned().collect();
    assert_eq!(item(&run(&base, &gone), Kind::EmbeddingBatching).status, Status::NotSeen);
}
