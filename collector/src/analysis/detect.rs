//! The Opportunity Register from GROUP BYs over the scratch table: each
//! detector of `opportunities.rs` as aggregates per prompt, prefix,
//! conversation or sender, handed to the event crate's `evidence` functions
//! that word and price the entry. Only what an entry shows leaves
//! ClickHouse (at most `MAX_SCOPE_KEYS` keys, the top five groups), never a
//! row per call.
use std::collections::BTreeMap;

use clickhouse::Row;
use serde::Deserialize;
use serde_json::json;
use tokentap_event::facts::Facts;
use tokentap_event::opportunities::evidence::{self, Bloat, Loop, Loops, Prefix, Prompt, Sender};
use tokentap_event::opportunities::{
    cheaper_model, rank, Opportunity, Thresholds, MAX_SCOPE_KEYS, MAX_SEMANTIC_PROMPTS,
};
use tokentap_event::PriceTable;

use super::{Result, Window};

/// The calls the detectors read (`ok`), with features.
const OK: &str = "ok AND has_f";

pub(super) async fn detect(w: &Window, facts: &Facts, prices: &PriceTable, t: &Thresholds) -> Result<Vec<Opportunity>> {
    let (hours, factor) = facts.window();
    let mut out = Vec::new();
    out.extend(duplicates(w, factor).await?);
    out.extend(semantic(w, factor, t).await?);
    out.extend(prompt_caching(w, prices, factor, t).await?);
    out.extend(downgrade(w, prices, factor, t).await?);
    out.extend(context_bloat(w, prices, factor, t).await?);
    out.extend(agent_loops(w, factor, t).await?);
    out.extend(verbose(w, prices, factor, t).await?);
    out.extend(embeddings(w, factor, t).await?);
    Ok(rank(out, hours))
}

#[derive(Row, Deserialize)]
struct Repeats {
    groups: u64,
    calls: u64,
    saved: f64,
}

#[derive(Row, Deserialize)]
struct Repeated {
    model: String,
    hash: String,
    n: u64,
    service: String,
}

/// Per model and prompt: the calls, their cost and the first call's.
const PROMPTS: &str = "SELECT dmodel, assumeNotNull(prompt_hash) AS hash, count() AS n, \
    sum(ifNull(cost, 0)) AS c, argMin(ifNull(cost, 0), us) AS c1, argMin(service, us) AS svc \
    FROM {t} WHERE ok AND has_f AND prompt_hash IS NOT NULL AND embedding_inputs IS NULL \
    GROUP BY dmodel, hash HAVING n > 1";

async fn duplicates(w: &Window, factor: f64) -> Result<Vec<Opportunity>> {
    let r: Repeats = w
        .query(&format!(
            "SELECT count() AS groups, toUInt64(sum(n - 1)) AS calls, sum(c - c1) AS saved FROM ({PROMPTS})"
        ))
        .fetch_one()
        .await?;
    let listed: Vec<Repeated> = w
        .query(&format!(
            "SELECT dmodel AS m, hash, n, svc FROM ({PROMPTS}) ORDER BY n DESC, m, hash \
             LIMIT {MAX_SCOPE_KEYS}"
        ))
        .fetch_all()
        .await?;
    let service = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok(evidence::duplicates(
        evidence::Duplicates {
            groups: r.groups,
            calls: r.calls,
            saved: r.saved,
            top: listed
                .iter()
                .take(5)
                .map(|g| json!({"model": g.model, "service": service(&g.service), "repeats": g.n}))
                .collect(),
            scope: listed.iter().map(|g| format!("{}|{}", g.model, g.hash)).collect(),
        },
        factor,
    ))
}

#[derive(Row, Deserialize)]
struct First {
    model: String,
    simhash: String,
    cost: f64,
}

pub(super) async fn semantic(w: &Window, factor: f64, t: &Thresholds) -> Result<Vec<Opportunity>> {
    // The first call of each distinct single-turn prompt, earliest first.
    let firsts = "SELECT dmodel AS m, assumeNotNull(prompt_hash) AS hash, \
        argMin(assumeNotNull(simhash), us) AS sim, argMin(ifNull(cost, 0), us) AS usd, min(us) AS at \
        FROM {t} WHERE ok AND has_f AND prompt_hash IS NOT NULL AND simhash IS NOT NULL AND message_count <= 1 \
        GROUP BY m, hash";
    let seen: u64 = w.query(&format!("SELECT count() FROM ({firsts})")).fetch_one().await?;
    let rows: Vec<First> = w
        .query(&format!("SELECT m, sim, usd FROM ({firsts}) ORDER BY at, m, hash LIMIT {MAX_SEMANTIC_PROMPTS}"))
        .fetch_all()
        .await?;
    let items: Vec<Prompt> = rows
        .into_iter()
        .filter_map(|r| {
            let simhash = u64::from_str_radix(&r.simhash, 16).ok()?;
            Some(Prompt { model: r.model, simhash, cost: r.cost })
        })
        .collect();
    Ok(evidence::semantic(&items, seen, factor, t))
}

#[derive(Row, Deserialize)]
struct PrefixRow {
    provider: String,
    model: String,
    hash: String,
    tokens: u64,
    calls: u64,
}

async fn prompt_caching(w: &Window, prices: &PriceTable, factor: f64, t: &Thresholds) -> Result<Vec<Opportunity>> {
    let rows: Vec<PrefixRow> = w
        .query(&format!(
            "SELECT provider, dmodel AS m, assumeNotNull(prefix_hash) AS hash, \
             argMin(assumeNotNull(prefix_tokens), us) AS tokens, count() AS n FROM {{t}} \
             WHERE {OK} AND prefix_hash IS NOT NULL AND prefix_tokens >= {min} AND ifNull(cached, 0) = 0 \
             GROUP BY provider, m, hash HAVING n > 1 ORDER BY provider, m, hash",
            min = t.min_cacheable_prefix
        ))
        .fetch_all()
        .await?;
    let prefixes: Vec<Prefix> = rows
        .into_iter()
        .map(|r| Prefix { provider: r.provider, model: r.model, hash: r.hash, tokens: r.tokens, calls: r.calls })
        .collect();
    Ok(evidence::prompt_caching(&prefixes, prices, factor))
}

/// Short calls (as `downgrade` in opportunities.rs): an output or a bound at
/// or below the threshold, usage known, not embeddings.
fn short(t: &Thresholds) -> String {
    format!(
        "ok AND input IS NOT NULL AND output IS NOT NULL \
         AND (assumeNotNull(output) <= {s} OR ifNull(max_tokens <= {s}, 0)) \
         AND NOT (has_f AND embedding_inputs IS NOT NULL)",
        s = t.short_output
    )
}

#[derive(Row, Deserialize)]
struct Route {
    calls: u64,
    saved: f64,
}

async fn downgrade(w: &Window, prices: &PriceTable, factor: f64, t: &Thresholds) -> Result<Vec<Opportunity>> {
    let short = short(t);
    let models: Vec<String> =
        w.query(&format!("SELECT DISTINCT dmodel FROM {{t}} WHERE {short} ORDER BY dmodel")).fetch_all().await?;
    let mut routes: BTreeMap<(String, &'static str), (u64, f64)> = BTreeMap::new();
    let mut routed = Vec::new();
    for m in models {
        let Some(cheap) = cheaper_model(&m) else { continue };
        let Some(p) = prices.lookup(cheap) else { continue };
        // `Prices::cost` of the cheaper model, per call, in the same order of operations.
        let cheaper = format!(
            "toFloat64(greatest(toInt64(assumeNotNull(input)) - toInt64(ifNull(cached, 0)) \
             - toInt64(ifNull(cache_write, 0)), 0)) * {pin:?} + toFloat64(ifNull(cached, 0)) * {read:?} \
             + toFloat64(ifNull(cache_write, 0)) * {write:?} + toFloat64(assumeNotNull(output)) * {pout:?}",
            pin = p.input,
            read = p.cache_read.unwrap_or(p.input),
            write = p.cache_write.unwrap_or(p.input),
            pout = p.output
        );
        let r: Route = w
            .query(&format!(
                "SELECT count() AS calls, sum(greatest(ifNull(cost, 0) - ({cheaper}), 0)) AS saved FROM {{t}} \
                 WHERE {short} AND dmodel = ?"
            ))
            .bind(&m)
            .fetch_one()
            .await?;
        routes.insert((m.clone(), cheap), (r.calls, r.saved));
        routed.push(m);
    }
    let keys: Vec<String> = if routed.is_empty() {
        Vec::new()
    } else {
        w.query(&format!(
            "SELECT DISTINCT work_key FROM {{t}} WHERE {short} AND has(?, dmodel) ORDER BY work_key \
             LIMIT {MAX_SCOPE_KEYS}"
        ))
        .bind(&routed)
        .fetch_all()
        .await?
    };
    Ok(evidence::downgrade(&routes, keys, factor, t))
}

/// The conversations whose hash the query `which` selects, each one's calls in
/// turn order (message count, then time) as `opportunities::conversations`
/// sorts them: (input tokens, model, cost, max_repeat, first tool, service)
/// per turn. `which` keeps the turns in memory to the conversations that can count.
fn conversations(which: &str) -> String {
    format!(
        "SELECT assumeNotNull(conv) AS hash, arrayMap(x -> x.3, arraySort(x -> (x.1, x.2), groupArray((message_count, us, \
         (ifNull(input, 0), dmodel, ifNull(cost, 0), max_repeat, tuple(first_tool), service))))) AS turns \
         FROM {{t}} WHERE ok AND has_f AND conv IS NOT NULL AND conv IN ({which}) GROUP BY hash"
    )
}

#[derive(Row, Deserialize)]
struct Growth {
    model: String,
    growing: u64,
    excess: u64,
    over: u64,
}

#[derive(Row, Deserialize)]
struct Chunks {
    model: String,
    calls: u64,
    tokens: f64,
}

async fn context_bloat(w: &Window, prices: &PriceTable, factor: f64, t: &Thresholds) -> Result<Vec<Opportunity>> {
    // Conversations of `min_turns` or more whose input never shrinks: the
    // input above twice the first turn's, and the calls above it.
    let growing = format!(
        "SELECT hash, turns[1].2 AS m, arrayMap(x -> x.1, turns) AS inputs, inputs[1] * 2 AS cap, \
         arraySum(arrayMap(i -> if(i > cap, i - cap, 0), inputs)) AS excess, \
         toUInt64(arrayCount(i -> i > cap, inputs)) AS over FROM ({}) \
         WHERE length(turns) >= {min} AND inputs[1] > 0 \
         AND arrayAll((a, b) -> b >= a, arrayPopBack(inputs), arrayPopFront(inputs)) AND excess > 0",
        // Growth past twice the first turn needs an input over twice the smallest.
        conversations(&format!(
            "SELECT conv FROM {{t}} WHERE ok AND has_f AND conv IS NOT NULL GROUP BY conv \
             HAVING count() >= {min} AND max(ifNull(input, 0)) > 2 * min(ifNull(input, 0))",
            min = t.min_turns
        )),
        min = t.min_turns
    );
    let rows: Vec<Growth> = w
        .query(&format!(
            "SELECT m, count() AS n, toUInt64(sum(excess)) AS tokens, toUInt64(sum(over)) AS calls \
             FROM ({growing}) GROUP BY m ORDER BY m"
        ))
        .fetch_all()
        .await?;
    let mut b = Bloat::default();
    let mut priced = Vec::new();
    for r in rows {
        let Some(p) = prices.lookup(&r.model) else { continue };
        b.growing += r.growing;
        b.history_saved += r.excess as f64 * p.input;
        b.history_calls += r.over;
        priced.push(r.model);
    }
    if !priced.is_empty() {
        b.scope = w
            .query(&format!("SELECT hash FROM ({growing}) WHERE has(?, m) ORDER BY hash LIMIT {MAX_SCOPE_KEYS}"))
            .bind(&priced)
            .fetch_all()
            .await?;
    }
    let chunks: Vec<Chunks> = w
        .query(&format!(
            "SELECT dmodel AS m, count() AS n, sum(toFloat64(assumeNotNull(input)) * dup_chunk) AS tokens \
             FROM {{t}} WHERE {OK} AND dup_chunk >= 0.1 AND input IS NOT NULL GROUP BY m ORDER BY m"
        ))
        .fetch_all()
        .await?;
    for c in chunks {
        if let Some(p) = prices.lookup(&c.model) {
            b.chunk_saved += c.tokens * p.input;
            b.chunk_calls += c.calls;
        }
    }
    Ok(evidence::context_bloat(b, factor))
}

#[derive(Row, Deserialize)]
struct LoopTotals {
    conversations: u64,
    calls: u64,
    cost: f64,
}

#[derive(Row, Deserialize)]
struct LoopRow {
    conv: String,
    tool: (Option<String>,),
    service: String,
    calls: u64,
    cost: f64,
}

async fn agent_loops(w: &Window, factor: f64, t: &Thresholds) -> Result<Vec<Opportunity>> {
    // Conversations where some call's history repeats a tool call
    // `loop_repeats` times; the calls in the loop already repeat one.
    let looping = format!(
        "SELECT hash, turns[length(turns)].5 AS tool, turns[1].6 AS svc, \
         toUInt64(arrayCount(x -> x.4 >= 2, turns)) AS calls, \
         arraySum(arrayMap(x -> if(x.4 >= 2, x.3, 0.), turns)) AS usd FROM ({}) \
         WHERE arrayMax(arrayMap(x -> x.4, turns)) >= {n}",
        conversations(&format!("SELECT conv FROM {{t}} WHERE ok AND has_f AND max_repeat >= {n}", n = t.loop_repeats)),
        n = t.loop_repeats
    );
    let totals: LoopTotals = w
        .query(&format!("SELECT count() AS n, toUInt64(sum(calls)) AS n_calls, sum(usd) AS total FROM ({looping})"))
        .fetch_one()
        .await?;
    let shown: Vec<LoopRow> = w
        .query(&format!("SELECT hash, tool, svc, calls, usd FROM ({looping}) ORDER BY hash LIMIT {MAX_SCOPE_KEYS}"))
        .fetch_all()
        .await?;
    let shown = shown
        .into_iter()
        .map(|r| Loop {
            conversation: r.conv,
            tool: r.tool.0,
            service: (!r.service.is_empty()).then_some(r.service),
            calls: r.calls,
            cost: r.cost,
        })
        .collect();
    Ok(evidence::agent_loops(
        Loops { conversations: totals.conversations, calls: totals.calls, cost: totals.cost, shown },
        factor,
    ))
}

#[derive(Row, Deserialize)]
struct Minified {
    model: String,
    calls: u64,
    tokens: u64,
}

async fn verbose(w: &Window, prices: &PriceTable, factor: f64, t: &Thresholds) -> Result<Vec<Opportunity>> {
    let rows: Vec<Minified> = w
        .query(&format!(
            "SELECT dmodel AS m, count() AS n, toUInt64(sum(assumeNotNull(minify))) AS tokens FROM {{t}} \
             WHERE {OK} AND minify >= {min} GROUP BY m ORDER BY m",
            min = t.min_minify_tokens
        ))
        .fetch_all()
        .await?;
    let (mut tokens, mut saved, mut calls) = (0, 0.0, 0);
    for r in rows {
        let Some(p) = prices.lookup(&r.model) else { continue };
        tokens += r.tokens;
        saved += r.tokens as f64 * p.input;
        calls += r.calls;
    }
    Ok(evidence::verbose(tokens, saved, calls, factor))
}

#[derive(Row, Deserialize)]
struct SenderRow {
    who: String,
    model: String,
    calls: u64,
    cost: f64,
}

async fn embeddings(w: &Window, factor: f64, t: &Thresholds) -> Result<Vec<Opportunity>> {
    let rows: Vec<SenderRow> = w
        .query(&format!(
            "SELECT sender AS who, dmodel AS m, count() AS n, sum(ifNull(cost, 0)) AS usd FROM {{t}} \
             WHERE {OK} AND embedding_inputs = 1 GROUP BY who, m HAVING n >= {min} ORDER BY who, m",
            min = t.min_single_embeddings
        ))
        .fetch_all()
        .await?;
    let senders: Vec<Sender> =
        rows.into_iter().map(|r| Sender { who: r.who, model: r.model, calls: r.calls, cost: r.cost }).collect();
    Ok(evidence::embeddings(&senders, factor))
}
