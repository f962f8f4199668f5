use super::*;
use crate::{PromptFeatures, ToolCall};

fn call(model: &str, input: u64, output: u64, f: PromptFeatures) -> LlmCall {
    let prices = PriceTable::shipped();
    let mut r = LlmCall {
        event_id: LlmCall::new_event_id(),
        ts: "2026-11-23T10:00:00Z".into(),
        provider: "openai".into(),
        operation: "chat".into(),
        request_model: Some(model.into()),
        status: Some(200),
        input_tokens: Some(input),
        output_tokens: Some(output),
        cached_input_tokens: Some(0),
        features: Some(f),
        ..Default::default()
    };
    r.apply_cost(&prices);
    r
}

fn f(prompt: &str) -> PromptFeatures {
    PromptFeatures { prompt_hash: Some(prompt.into()), message_count: 1, ..Default::default() }
}

fn find(o: &[Opportunity], k: Kind) -> Option<&Opportunity> {
    o.iter().find(|x| x.kind == k)
}

#[test]
fn clean_calls_give_nothing() {
    let rs: Vec<LlmCall> = (0..50).map(|i| call("gpt-4o-mini", 500, 200, f(&format!("p{i}")))).collect();
    assert!(detect(&rs, &PriceTable::shipped(), &Thresholds::default()).is_empty());
}

#[test]
fn duplicates_save_every_repeat() {
    let mut rs: Vec<LlmCall> = (0..5).map(|_| call("gpt-4o-mini", 500, 200, f("same"))).collect();
    rs.push(call("gpt-4o-mini", 500, 200, f("other")));
    let o = detect(&rs, &PriceTable::shipped(), &Thresholds::default());
    let d = find(&o, Kind::DuplicateCalls).expect("duplicates");
    assert_eq!(d.affected_calls, 4);
    let want = 4.0 * rs[0].cost_usd.unwrap();
    assert!((d.evidence["observed_savings_usd"].as_f64().unwrap() - want).abs() < 1e-12);
    // One hour observed (minimum): 720 hours a month.
    assert!((d.estimated_monthly_savings_usd - want * 720.0).abs() < 1e-9);
}

#[test]
fn prompt_caching_and_downgrade_use_prices() {
    let prices = PriceTable::shipped();
    let pf = |i: u32| PromptFeatures {
        prompt_hash: Some(format!("p{i}")),
        prefix_hash: Some("sys".into()),
        prefix_tokens: Some(2000),
        message_count: 1,
        ..Default::default()
    };
    let rs: Vec<LlmCall> = (0..10).map(|i| call("gpt-4o", 2100, 300, pf(i))).collect();
    let o = detect(&rs, &prices, &Thresholds::default());
    let p = prices.lookup("gpt-4o").unwrap();
    let want = 9.0 * 2000.0 * (p.input - p.cache_read.unwrap());
    let pc = find(&o, Kind::PromptCaching).expect("prompt caching");
    assert!((pc.evidence["observed_savings_usd"].as_f64().unwrap() - want).abs() < 1e-9);
    assert!(find(&o, Kind::ModelDowngrade).is_none(), "300-token outputs are not classification");
    let rs: Vec<LlmCall> = (0..10).map(|i| call("gpt-4o", 400, 1, f(&format!("q{i}")))).collect();
    let o = detect(&rs, &prices, &Thresholds::default());
    let m = prices.lookup("gpt-4o-mini").unwrap();
    let want: f64 = rs.iter().map(|r| r.cost_usd.unwrap() - m.cost(400, 1, 0, 0)).sum();
    let d = find(&o, Kind::ModelDowngrade).expect("downgrade");
    assert!((d.evidence["observed_savings_usd"].as_f64().unwrap() - want).abs() < 1e-12);
}

#[test]
fn loops_growth_verbose_and_embeddings() {
    let prices = PriceTable::shipped();
    let tc = ToolCall { name: "search".into(), args_hash: "a".into() };
    let rs: Vec<LlmCall> = (0..6)
        .map(|i| {
            let mut pf = f(&format!("loop{i}"));
            pf.conversation_hash = Some("conv".into());
            pf.message_count = 1 + 2 * i;
            pf.tool_calls = vec![tc.clone(); i as usize];
            call("gpt-4o-mini", 1000 + 10 * i as u64, 20, pf)
        })
        .collect();
    let o = detect(&rs, &prices, &Thresholds::default());
    let l = find(&o, Kind::AgentLoop).expect("loop");
    assert_eq!(l.affected_calls, 4, "calls 2..5 already repeat the tool call");
    assert!(find(&o, Kind::ContextBloat).is_none(), "growth below twice the first turn");

    let grow: Vec<LlmCall> = (0..10)
        .map(|i| {
            let mut pf = f(&format!("g{i}"));
            pf.conversation_hash = Some("c2".into());
            pf.message_count = 1 + 2 * i;
            call("gpt-4o", 1000 + 800 * i as u64, 50, pf)
        })
        .collect();
    let o = detect(&grow, &prices, &Thresholds::default());
    let c = find(&o, Kind::ContextBloat).expect("bloat");
    let want = 27_200.0 * prices.lookup("gpt-4o").unwrap().input;
    assert!((c.evidence["observed_savings_usd"].as_f64().unwrap() - want).abs() < 1e-9);

    let mut pf = f("v");
    pf.minify_saved_tokens = Some(300);
    let o = detect(&[call("gpt-4o-mini", 900, 50, pf)], &prices, &Thresholds::default());
    assert_eq!(find(&o, Kind::VerboseFormat).unwrap().affected_calls, 1);

    let emb: Vec<LlmCall> = (0..12)
        .map(|i| {
            let mut r = call(
                "text-embedding-3-small",
                50,
                0,
                PromptFeatures { prompt_hash: Some(format!("e{i}")), embedding_inputs: Some(1), ..Default::default() },
            );
            r.comm = Some("indexer".into());
            r
        })
        .collect();
    let o = detect(&emb, &prices, &Thresholds::default());
    let e = find(&o, Kind::EmbeddingBatching).expect("batching");
    let want: f64 = emb.iter().map(|r| r.cost_usd.unwrap()).sum::<f64>() * 0.5;
    assert!((e.evidence["observed_savings_usd"].as_f64().unwrap() - want).abs() < 1e-15);
}

#[test]
fn near_duplicates_cluster_by_simhash() {
    let mk = |h: &str, s: u64| {
        let mut pf = f(h);
        pf.simhash = Some(format!("{s:016x}"));
        call("gpt-4o-mini", 300, 100, pf)
    };
    let rs = vec![mk("a", 0b1111_0000), mk("b", 0b1111_0001), mk("c", 0b1111_0011), mk("d", u64::MAX)];
    let o = detect(&rs, &PriceTable::shipped(), &Thresholds::default());
    assert_eq!(find(&o, Kind::SemanticCache).unwrap().affected_calls, 2);
}
