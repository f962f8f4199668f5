use super::*;
use crate::opportunities::detect;
use crate::{PriceTable, PromptFeatures};

fn call(i: usize, model: &str, input: u64, output: u64, f: PromptFeatures) -> LlmCall {
    let mut r = LlmCall {
        event_id: LlmCall::new_event_id(),
        ts: format!("2026-11-23T23:{:02}:{:02}Z", i / 60, i % 60),
        provider: "openai".into(),
        operation: "chat".into(),
        request_model: Some(model.into()),
        status: Some(200),
        input_tokens: Some(input),
        output_tokens: Some(output),
        service: Some("support".into()),
        features: Some(f),
        ..Default::default()
    };
    r.apply_cost(&PriceTable::shipped());
    r
}

/// A 2,000-token prefix sent 10 times uncached (quick win), and one
/// conversation growing 800 tokens a turn (structural).
fn records() -> Vec<LlmCall> {
    let mut v = Vec::new();
    for i in 0..10 {
        let f = PromptFeatures {
            prompt_hash: Some(format!("q{i}")),
            prefix_hash: Some("sys".into()),
            prefix_tokens: Some(2000),
            message_count: 2,
            ..Default::default()
        };
        v.push(call(v.len(), "gpt-4o", 2060, 200, f));
    }
    for i in 0..10u64 {
        let f = PromptFeatures {
            prompt_hash: Some(format!("c{i}")),
            conversation_hash: Some("conv".into()),
            message_count: 1 + 2 * i as u32,
            ..Default::default()
        };
        v.push(call(v.len(), "gpt-4o", 1000 + 800 * i, 100, f));
    }
    v
}

#[test]
fn items_get_metrics_targets_and_dated_sprints_quick_wins_first() {
    let rs = records();
    let opps = detect(&rs, &PriceTable::shipped(), &Thresholds::default());
    let items = plan(&rs, &opps, "2026-11-23T23:59:00Z");
    let kinds: Vec<Kind> = items.iter().map(|i| i.kind).collect();
    assert_eq!(kinds, [Kind::PromptCaching, Kind::ContextBloat], "{items:#?}");
    let (cache, bloat) = (&items[0], &items[1]);
    assert_eq!((cache.sprint, cache.track.as_str(), cache.start.as_str()), (1, "quick_win", "2026-11-24"));
    assert_eq!(cache.due, "2026-12-07");
    assert_eq!((bloat.sprint, bloat.track.as_str(), bloat.start.as_str()), (3, "structural", "2026-12-22"));
    // Nothing cached yet; 9 of 10 prefixes cacheable, 80 % of that.
    assert_eq!(cache.metric, Metric::PrefixCacheHitRatio);
    assert_eq!(cache.baseline_value, Some(0.0));
    let want = 0.8 * (0.9 * 2000.0 * 10.0) / (2060.0 * 10.0);
    assert!((cache.target - want).abs() < 1e-12, "{} vs {want}", cache.target);
    assert_eq!(cache.scope, ["sys"]);
    assert!(!cache.met(0.0) && cache.met(0.9));
    // History capped at twice the first turn: 1000, 1800, then 2000 a turn; 5 % slack.
    assert_eq!(bloat.metric, Metric::InputTokensPerCall);
    assert_eq!(bloat.baseline_value, Some((0..10).map(|i| 1000.0 + 800.0 * i as f64).sum::<f64>() / 10.0));
    assert!((bloat.target - 1.05 * 1880.0).abs() < 1e-9, "{}", bloat.target);
    let spend: f64 = rs[10..].iter().map(|r| r.cost_usd.unwrap()).sum();
    assert!((bloat.baseline_scope_monthly_usd - spend * 720.0).abs() < 1e-9);
}

#[test]
fn measuring_follows_the_scope_not_the_model() {
    let yes_no = |i: usize, model: &str| {
        let f = PromptFeatures {
            prompt_hash: Some(format!("y{i}")),
            prefix_hash: Some("yn".into()),
            max_tokens: Some(1),
            ..Default::default()
        };
        call(i, model, 300, 1, f)
    };
    let scope = vec!["prefix:yn".to_owned()];
    let before: Vec<LlmCall> = (0..20).map(|i| yes_no(i, "gpt-4o")).collect();
    let after: Vec<LlmCall> = (0..20).map(|i| yes_no(i, if i < 15 { "gpt-4o-mini" } else { "gpt-4o" })).collect();
    let (b, a) = (measure(Kind::ModelDowngrade, &scope, &before), measure(Kind::ModelDowngrade, &scope, &after));
    assert_eq!((b.value, b.scope_calls), (Some(1.0), 20));
    assert_eq!((a.value, a.scope_calls), (Some(0.25), 20));
    assert!(a.scope_spend_usd < b.scope_spend_usd);
    // Another prefix is another scope.
    let other = measure(Kind::ModelDowngrade, &["prefix:zz".to_owned()], &after);
    assert_eq!((other.value, other.scope_calls), (None, 0));
}
