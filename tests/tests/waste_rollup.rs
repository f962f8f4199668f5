//! The four Opportunities panels that read the waste rollups
//! (schema/016_waste_rollup.sql): calls posted through a real collector, which
//! finds repeated prompts and conversation turns as they arrive, give the
//! numbers computed here from the same records; and a database upgraded from
//! before the rollups (its rows stored without repeats) is backfilled by the
//! migration to the same numbers. ClickHouse: `TOKENTAP_CLICKHOUSE_URL` or the
//! embedded engine.
use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use tokentap_e2e::*;
use tokentap_event::{wire, LlmCall, PromptFeatures, ToolCall};

const FROM: &str = "2026-11-21 00:00:00";
const TO: &str = "2026-11-21 23:59:59";
const PANELS: [&str; 4] = [
    "Duplicate prompts (response caching)",
    "Cacheable prefixes sent without prompt caching",
    "Conversations growing without summarisation",
    "Agent loops (repeated tool calls)",
];

/// 400 calls, one a minute from 02:00: two services x two models; a third of
/// the prompts drawn from seven repeated ones; conversations of five turns
/// with growing input; failed calls without usage; embeddings (never
/// repeats); tool loops; long and short static prefixes, some cached.
fn calls() -> Vec<LlmCall> {
    (0..400u32)
        .map(|i| {
            let embedding = i % 11 == 5;
            let failed = i % 13 == 7;
            let input = (!failed).then_some(if embedding { 8 } else { 100 + u64::from(i % 20) * 40 });
            let tool = ToolCall { name: "search".into(), args_hash: "a1".into() };
            let features = if embedding {
                PromptFeatures {
                    prompt_hash: Some(format!("e{}", i % 2)),
                    embedding_inputs: Some(1),
                    ..Default::default()
                }
            } else {
                PromptFeatures {
                    prompt_hash: Some(if i % 3 == 0 { format!("dup{}", i % 7) } else { format!("u{i}") }),
                    prefix_hash: Some(format!("sys{}", i % 3)),
                    prefix_tokens: Some(if i % 2 == 0 { 2000 } else { 300 }),
                    conversation_hash: Some(format!("c{}", i / 20)),
                    message_count: 1 + 2 * (i % 5),
                    tool_calls: if i % 9 == 0 { vec![tool.clone(), tool] } else { Vec::new() },
                    ..Default::default()
                }
            };
            LlmCall {
                event_id: LlmCall::new_event_id(),
                ts: format!("2026-11-21T{:02}:{:02}:00Z", 2 + i / 60, i % 60),
                provider: "openai".into(),
                operation: if embedding { "embeddings" } else { "chat" }.into(),
                response_model: Some(
                    if embedding { "text-embedding-3-small" } else { ["gpt-4o", "gpt-4.1"][(i as usize / 2) % 2] }
                        .into(),
                ),
                status: Some(if failed { 500 } else { 200 }),
                input_tokens: input,
                output_tokens: input.map(|_| 20),
                cached_input_tokens: input.map(|n| if i % 5 == 0 { n / 2 } else { 0 }),
                cost_usd: input.map(|n| n as f64 * 2.5e-6 + 0.0002),
                namespace: Some("shop".into()),
                service: Some(["checkout", "search"][i as usize % 2].into()),
                features: Some(features),
                ..Default::default()
            }
        })
        .collect()
}

fn model(r: &LlmCall) -> String {
    r.response_model.clone().unwrap()
}

/// What each panel must show, computed from the records in arrival order.
fn expected(calls: &[LlmCall]) -> BTreeMap<&'static str, Vec<Value>> {
    #[derive(Default)]
    struct Waste {
        repeats: u64,
        prompts: u64,
        repeat_cost: f64,
        conversations: u64,
        growing: u64,
        excess: u64,
        longest: u64,
        growing_cost: f64,
        loops: u64,
        loop_cost: f64,
    }
    let mut by: BTreeMap<(String, String), Waste> = BTreeMap::new();
    /// Service, model and a hash.
    type Key = (String, String, String);
    let mut prompts: HashMap<Key, u64> = HashMap::new();
    // Turns, first input tokens, grown yet.
    let mut convs: HashMap<Key, (u64, Option<u64>, bool)> = HashMap::new();
    let mut prefixes: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for r in calls {
        let f = r.features.as_ref().unwrap();
        let (svc, m) = (r.service.clone().unwrap(), model(r));
        let w = by.entry((svc.clone(), m.clone())).or_default();
        let cost = r.cost_usd.unwrap_or(0.0);
        if f.embedding_inputs.is_none() {
            let seen = prompts.entry((svc.clone(), m.clone(), f.prompt_hash.clone().unwrap())).or_default();
            if *seen > 0 {
                w.repeats += 1;
                w.prompts += u64::from(*seen == 1);
                w.repeat_cost += cost;
            }
            *seen += 1;
        }
        if let Some(c) = &f.conversation_hash {
            let (turns, first, grew) = convs.entry((svc.clone(), m.clone(), c.clone())).or_default();
            *turns += 1;
            if first.is_none() {
                *first = r.input_tokens;
            }
            let input = r.input_tokens.unwrap_or(0);
            if *turns >= 4 && first.is_some_and(|f| input > 2 * f) {
                w.growing += 1;
                w.conversations += u64::from(!*grew);
                *grew = true;
                w.excess += input - first.unwrap();
                w.longest = w.longest.max(*turns);
                w.growing_cost += cost;
            }
        }
        let tools = &f.tool_calls;
        if (1..tools.len()).any(|i| tools[..i].contains(&tools[i])) {
            w.loops += 1;
            w.loop_cost += cost;
        }
        if f.prefix_tokens.unwrap_or(0) >= 1024 && r.cached_input_tokens.unwrap_or(0) == 0 {
            let p = prefixes.entry((m.clone(), f.prefix_hash.clone().unwrap())).or_default();
            p.0 = p.0.max(f.prefix_tokens.unwrap());
            p.1 += 1;
        }
    }
    let usd = |x: f64| (x * 1e6).round() / 1e6;
    let mut out: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for ((svc, m), w) in &by {
        let mut add = |panel, v: Value| out.entry(panel).or_default().push(v);
        if w.repeats > 0 {
            add(
                PANELS[0],
                json!({"service": svc, "model": m, "repeats": w.repeats, "prompts": w.prompts,
                       "observed_savings_usd": usd(w.repeat_cost)}),
            );
        }
        if w.growing > 0 {
            add(
                PANELS[2],
                json!({"service": svc, "model": m, "conversations": w.conversations, "calls": w.growing,
                       "tokens_over_first_turn": w.excess, "longest_turn": w.longest, "cost_usd": usd(w.growing_cost)}),
            );
        }
        if w.loops > 0 {
            add(PANELS[3], json!({"service": svc, "model": m, "calls_in_loop": w.loops, "cost_usd": usd(w.loop_cost)}));
        }
    }
    for ((m, p), (tokens, n)) in prefixes.into_iter().filter(|(_, (_, n))| *n > 1) {
        out.entry(PANELS[1])
            .or_default()
            .push(json!({"provider": "openai", "model": m, "prefix": p, "prefix_tokens": tokens, "calls": n}));
    }
    out
}

/// Rows as (their exact columns as text, their dollar columns), sorted: ties
/// may order differently, ClickHouse quotes 64-bit integers, and dollars are
/// sums whose order differs.
fn normal(rows: &[Value]) -> Vec<(BTreeMap<String, String>, BTreeMap<String, f64>)> {
    let mut out: Vec<_> = rows
        .iter()
        .map(|r| {
            let (mut exact, mut usd) = (BTreeMap::new(), BTreeMap::new());
            for (k, v) in r.as_object().expect("row") {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                if k.ends_with("_usd") {
                    usd.insert(k.clone(), text.parse::<f64>().expect("dollars"));
                } else {
                    exact.insert(k.clone(), text);
                }
            }
            (exact, usd)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn assert_same(got: &[Value], want: &[Value], what: &str) {
    let (got, want) = (normal(got), normal(want));
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0, "{what}");
        for (k, x) in &w.1 {
            // Both rounded to 6 decimals: a sum on a rounding edge may differ by one.
            assert!((g.1[k] - x).abs() <= 1.5e-6, "{what}: {k} {} vs {x}", g.1[k]);
        }
    }
}

/// Each panel's rows.
fn panels(ch: &ClickHouse) -> BTreeMap<&'static str, Vec<Value>> {
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace_root().join("dashboards/opportunities.json")).unwrap())
            .unwrap();
    let vars = BTreeMap::from([
        ("cluster".to_owned(), vec![String::new()]),
        ("namespace".to_owned(), vec!["shop".to_owned()]),
        ("service".to_owned(), vec!["checkout".to_owned(), "search".to_owned()]),
    ]);
    let mut out = BTreeMap::new();
    for title in PANELS {
        let p = d["panels"].as_array().unwrap().iter().find(|p| p["title"] == title).expect(title);
        let sql = p["targets"][0]["rawSql"].as_str().unwrap();
        assert!(!sql.contains("FROM llm_calls"), "{title} reads a rollup: {sql}");
        let sql = grafana::expand(sql, &format!("toDateTime('{FROM}')"), &format!("toDateTime('{TO}')"), 60, &vars)
            .unwrap_or_else(|e| panic!("{e}"));
        out.insert(title, ch.query(&sql));
    }
    out
}

#[test]
fn the_waste_panels_show_what_the_records_hold_live_and_after_a_backfill() {
    let dir = scratch("waste-rollup");
    let ch = ClickHouse::start(&dir, "waste_rollup");
    let collector = Collector::start(&dir, &ch);
    let calls = calls();
    let auth = format!("Bearer {}", collector.token);
    let h = [("authorization", auth.as_str()), ("content-encoding", "zstd"), (wire::HEADER_VERSION, wire::VERSION)];
    // In order, a batch at a time: each answered once its rows are stored.
    for batch in calls.chunks(37) {
        let (status, text) = collector.post(&wire::encode(batch), &h);
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(ch.count("SELECT count() FROM llm_calls"), calls.len() as u64);
    assert!(collector.metric("tokentap_collector_repeat_keys") > 0.0);

    let want = expected(&calls);
    assert_eq!(want.len(), 4, "the records give every panel rows: {want:?}");
    let live = panels(&ch);
    for title in PANELS {
        assert_same(&live[title], &want[title], title);
    }
    // Every growing conversation and every repeated prompt is counted once:
    // the test's numbers are not all zeros or ones.
    let total = |p: &str, k: &str| -> u64 { normal(&live[p]).iter().map(|r| r.0[k].parse::<u64>().unwrap()).sum() };
    assert!(total(PANELS[0], "prompts") >= 14 && total(PANELS[0], "repeats") > total(PANELS[0], "prompts"));
    assert!(total(PANELS[2], "conversations") >= 10 && total(PANELS[2], "calls") > total(PANELS[2], "conversations"));

    // As a database from before migration 16: rows without their repeats,
    // no waste rollups. Upgrading backfills them from the rows.
    drop(collector);
    ch.forget_waste_rollups();
    ch.query(
        "ALTER TABLE llm_calls DROP COLUMN prompt_repeat, DROP COLUMN conversation_turn, \
         DROP COLUMN conversation_first_input, DROP COLUMN conversation_growing",
    );
    ch.migrate();
    assert_eq!(ch.count("SELECT max(prompt_repeat) FROM llm_calls"), 0, "old rows keep no repeats");
    let upgraded = panels(&ch);
    for title in PANELS {
        assert_same(&upgraded[title], &want[title], &format!("{title} after the backfill"));
    }
}
