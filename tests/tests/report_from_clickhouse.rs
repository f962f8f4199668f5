//! The collector's report, baseline and comparison are computed in ClickHouse
//! (GROUP BYs, collector/src/analysis); the agent's are computed from records
//! (event crate). Two days of calls that trip every detector, sent through a
//! real collector into the engine: `tokentap-collector report` must write the
//! same report.md as the event crate writes from the same calls, the same
//! opportunities and baseline (numbers within 1e-9), and `report --baseline`
//! the same comparison; no scratch table is left behind.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokentap_e2e::*;
use tokentap_event::opportunities::{detect, Thresholds};
use tokentap_event::{baseline::Baseline, compare, report, LlmCall, PriceTable, PromptFeatures, ToolCall};

/// Calls per day.
const DAY: u64 = 1500;
const MODELS: [(&str, &str); 7] = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("openai", "text-embedding-3-small"),
    ("openai", "gpt-4.1"),
    ("local", "mystery-model"),
];

/// Day `d` (0 or 1) of calls: duplicates, near-duplicates, cacheable
/// prefixes, short calls on frontier models, growing conversations, tool
/// loops, padded JSON, one-input embeddings and repeated chunks, with errors,
/// streams, end users, unattributed and unpriced calls.
fn day(d: u64, prices: &PriceTable) -> Vec<LlmCall> {
    let start_us = 1_795_392_000_000_000i64 + d as i64 * 86_400_000_000; // 2026-11-21 + d
    (0..DAY)
        .map(|j| {
            let i = d * 7 + j; // the second day shifts every pattern a little
            let (provider, model) = MODELS[(i % 7) as usize];
            let embeds = model.starts_with("text-embedding");
            // Conversations: 40 of them, turn k = j / 60, input growing with
            // the turn, except in every tenth, which shrinks once.
            let (conv, turn) = (j % 60, j / 60);
            let input = match () {
                _ if embeds => 20 + i % 30,
                _ if conv % 10 == 9 && turn == 3 => 150,
                _ => 400 * (turn + 1) + conv * 3,
            };
            let features = if embeds {
                PromptFeatures {
                    prompt_hash: Some(format!("e{i}")),
                    embedding_inputs: Some(if i.is_multiple_of(5) { 3 } else { 1 }),
                    ..Default::default()
                }
            } else {
                PromptFeatures {
                    prompt_hash: Some(format!("p{}", i % 700)),
                    prefix_hash: Some(format!("s{}", i % 3)),
                    prefix_tokens: Some(if i.is_multiple_of(2) { 2000 } else { 300 }),
                    conversation_hash: (conv < 40).then(|| format!("{:064x}", 0xc0ffee + conv)),
                    simhash: Some(format!("{:016x}", 0xabcd_ef01_2345_6789u64 ^ (1 << (i % 3)) ^ ((i % 50) << 20))),
                    message_count: if conv < 40 { 2 * turn as u32 + 1 } else { 1 },
                    tool_calls: if conv < 8 {
                        (0..turn).map(|_| ToolCall { name: "search".into(), args_hash: "a1".into() }).collect()
                    } else {
                        Vec::new()
                    },
                    json_share: 0.4,
                    whitespace_share: 0.1,
                    minify_saved_tokens: (i.is_multiple_of(4)).then_some(i % 120),
                    max_tokens: (i.is_multiple_of(9)).then_some(10),
                    duplicate_chunk_share: if i.is_multiple_of(13) { 0.25 } else { 0.0 },
                    embedding_inputs: None,
                }
            };
            let us = start_us + (j as i64) * 57_600_000 + ((i * 7919) % 1_000_000) as i64;
            let mut r = LlmCall {
                event_id: LlmCall::new_event_id(),
                ts: LlmCall::format_ts(us as i128 * 1000),
                provider: provider.into(),
                operation: if embeds { "embeddings" } else { "chat" }.into(),
                request_model: Some(model.into()),
                response_model: (i.is_multiple_of(3)).then(|| model.to_string()),
                stream: !embeds && i.is_multiple_of(2),
                status: match i {
                    _ if i.is_multiple_of(29) => Some(500),
                    _ if i.is_multiple_of(31) => Some(429),
                    _ if i.is_multiple_of(37) => None,
                    _ => Some(200),
                },
                input_tokens: Some(input),
                output_tokens: Some(if embeds {
                    0
                } else if i.is_multiple_of(5) {
                    3
                } else {
                    100 + i % 400
                }),
                cached_input_tokens: Some(if i.is_multiple_of(6) { input / 2 } else { 0 }),
                cache_write_tokens: (i.is_multiple_of(11)).then_some(input / 4),
                duration_ms: Some(200.0 + ((i * 53) % 997) as f64 + 0.25),
                ttft_ms: (!embeds && i.is_multiple_of(2)).then(|| 50.0 + ((i * 31) % 211) as f64),
                service: [Some("checkout"), Some("search"), Some("support"), None][(i % 4) as usize].map(String::from),
                feature: (!i.is_multiple_of(3)).then(|| ["summarise", "classify"][(i % 2) as usize].to_string()),
                end_user: (i.is_multiple_of(3)).then(|| format!("user-{}", i % 17)),
                comm: Some(if i.is_multiple_of(2) { "python3" } else { "node" }.into()),
                features: Some(features),
                ..Default::default()
            };
            r.apply_cost(prices);
            r
        })
        .collect()
}

/// Numbers equal within 1e-9 (relative), everything else exactly; `skip`
/// keys are not compared.
fn same(a: &Value, b: &Value, path: &str, skip: &[&str]) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-12), "{path}: {x} vs {y}");
        }
        (Value::Object(x), Value::Object(y)) => {
            let keys: Vec<&String> = x.keys().filter(|k| !skip.contains(&k.as_str())).collect();
            assert_eq!(keys, y.keys().filter(|k| !skip.contains(&k.as_str())).collect::<Vec<_>>(), "{path}");
            for k in keys {
                same(&x[k], &y[k], &format!("{path}.{k}"), skip);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: lengths");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                same(p, q, &format!("{path}[{i}]"), skip);
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

#[test]
fn the_report_from_clickhouse_equals_the_report_from_records() {
    let dir = scratch("report-from-clickhouse");
    let prices = PriceTable::shipped();
    let days = [day(0, &prices), day(1, &prices)];
    let ch = ClickHouse::start(&dir, "report_from_clickhouse");
    let collector = Collector::start(&dir, &ch);
    let auth = format!("Bearer {}", collector.token);
    for d in &days {
        let (status, body) = collector
            .post(&tokentap_event::wire::encode(d), &[("authorization", auth.as_str()), ("content-encoding", "zstd")]);
        assert_eq!(status, 200, "{body}");
    }
    wait_for("rows stored", Duration::from_secs(60), || {
        (ch.count("SELECT count() FROM llm_calls FINAL") == 2 * DAY).then_some(())
    });
    let cli = |args: &[&str]| {
        let o = Command::new(collector_bin())
            .args(args)
            .args(["--clickhouse-url", &ch.url, "--database", &ch.database])
            .output()
            .expect("tokentap-collector");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{args:?}: {err}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let window = |d: &[LlmCall]| (d[0].ts.clone(), d[d.len() - 1].ts.clone());

    // The report of day one, both ways.
    let (since, until) = window(&days[0]);
    let out = dir.join("from-clickhouse");
    let stdout = cli(&["report", "--since", &since, "--until", &until, "--out", &out.display().to_string()]);
    let opps = detect(&days[0], &prices, &Thresholds::default());
    let kinds: Vec<String> = opps.iter().map(|o| serde_json::to_value(o.kind).unwrap().to_string()).collect();
    assert_eq!(opps.len(), 8, "every detector fires on the fixture: {kinds:?}");
    let md = report::markdown_with(&days[0], &opps, Some(&[]));
    let from_ch = std::fs::read_to_string(out.join("report.md")).unwrap();
    if from_ch != md {
        let first = md.lines().zip(from_ch.lines()).position(|(a, b)| a != b);
        panic!("report.md differs at line {first:?}:\n--- records\n{md}\n--- clickhouse\n{from_ch}");
    }
    assert_eq!(stdout, md, "stdout is the report");
    same(&serde_json::to_value(&opps).unwrap(), &json(&out.join("opportunities.json")), "opportunities", &[]);
    let base = Baseline::build("report", &days[0], &opps);
    same(&serde_json::to_value(&base).unwrap(), &json(&out.join("baseline.json")), "baseline", &["created_at"]);

    // Day one saved as a baseline; day two compared with it, both ways.
    let saved = cli(&["baseline", "save", "day-one", "--since", &since, "--until", &until]);
    assert!(saved.contains(&format!("saved baseline day-one: {DAY} calls")), "{saved}");
    let (since2, until2) = window(&days[1]);
    let out2 = dir.join("compare-from-clickhouse");
    cli(&[
        "report",
        "--since",
        &since2,
        "--until",
        &until2,
        "--baseline",
        "day-one",
        "--out",
        &out2.display().to_string(),
    ]);
    let base = Baseline::build("day-one", &days[0], &opps);
    let now_opps = detect(&days[1], &prices, &Thresholds::default());
    let c = compare::compare(&base, &days[1], &now_opps, &Default::default());
    assert!(!c.progress.is_empty() && c.progress.len() == base.roadmap.len());
    same(&serde_json::to_value(&c).unwrap(), &json(&out2.join("compare.json")), "compare", &["created_at"]);

    let left = "SELECT count() FROM system.tables WHERE name LIKE 'tokentap_window_%'";
    assert_eq!(ch.count(left), 0, "scratch tables dropped");
}

/// 12,000 prompts sent twice each: the duplicates entry names 10,000 of them
/// (`MAX_SCOPE_KEYS`, ~850 KB of keys), more than a query's text may carry
/// by default (256 KiB). The baseline's roadmap measures that scope all the same.
#[test]
fn a_roadmap_scope_of_ten_thousand_keys_is_measured() {
    let dir = scratch("report-large-scope");
    let prices = PriceTable::shipped();
    let start_us = 1_795_392_000_000_000i64;
    let calls: Vec<LlmCall> = (0..24_000u64)
        .map(|i| {
            let mut r = LlmCall {
                event_id: LlmCall::new_event_id(),
                ts: LlmCall::format_ts((start_us + i as i64 * 1_000_000) as i128 * 1000),
                provider: "openai".into(),
                operation: "chat".into(),
                request_model: Some("gpt-4o-mini".into()),
                status: Some(200),
                input_tokens: Some(200),
                output_tokens: Some(50),
                service: Some("checkout".into()),
                features: Some(PromptFeatures {
                    prompt_hash: Some(format!("{:064x}", (i % 12_000).wrapping_mul(0x9e37_79b9_7f4a_7c15))),
                    message_count: 1,
                    ..Default::default()
                }),
                ..Default::default()
            };
            r.apply_cost(&prices);
            r
        })
        .collect();
    let ch = ClickHouse::start(&dir, "report_large_scope");
    let collector = Collector::start(&dir, &ch);
    let auth = format!("Bearer {}", collector.token);
    for part in calls.chunks(4000) {
        let (status, body) = collector.post(
            &tokentap_event::wire::encode(part),
            &[("authorization", auth.as_str()), ("content-encoding", "zstd")],
        );
        assert_eq!(status, 200, "{body}");
    }
    wait_for("rows stored", Duration::from_secs(60), || {
        (ch.count("SELECT count() FROM llm_calls FINAL") == calls.len() as u64).then_some(())
    });
    let out = dir.join("out");
    let o = Command::new(collector_bin())
        .args(["report", "--since", &calls[0].ts, "--until", &calls[calls.len() - 1].ts])
        .args(["--out", &out.display().to_string()])
        .args(["--clickhouse-url", &ch.url, "--database", &ch.database])
        .output()
        .expect("tokentap-collector");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let base = json(&out.join("baseline.json"));
    let item = base["roadmap"].as_array().unwrap().iter().find(|i| i["kind"] == "duplicate_calls").expect("item");
    assert_eq!(item["scope"].as_array().unwrap().len(), 10_000);
    assert_eq!(item["baseline_value"], 0.5, "half the calls repeat a prompt: {item}");
    let opps = detect(&calls, &prices, &Thresholds::default());
    let rust = Baseline::build("report", &calls, &opps);
    same(&serde_json::to_value(&rust).unwrap(), &base, "baseline", &["created_at"]);
}
