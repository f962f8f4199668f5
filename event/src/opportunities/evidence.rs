//! A detector's aggregates turned into its Opportunity Register entry: the
//! title, the saving (observed, and per month) and the evidence. The
//! detectors over records (opportunities.rs) and the collector's GROUP BYs in
//! ClickHouse (collector/src/analysis/detect.rs) both end here, so an entry
//! reads the same whichever computed it.
use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{Effort, Kind, Opportunity, Thresholds, MAX_SCOPE_KEYS};
use crate::PriceTable;

pub(super) fn opportunity(
    kind: Kind,
    title: String,
    observed: f64,
    factor: f64,
    calls: u64,
    evidence: Value,
) -> Opportunity {
    let (effort, action) = match kind {
        Kind::DuplicateCalls => (Effort::Low, "Cache responses for identical requests (key: model + prompt)."),
        Kind::SemanticCache => (Effort::High, "Add a semantic cache (embedding similarity) in front of these calls."),
        Kind::PromptCaching => (
            Effort::Low,
            "Enable the provider's prompt caching for the shared prefix (cache_control / stable prefix first).",
        ),
        Kind::ModelDowngrade => (
            Effort::Medium,
            "Route these short classification/extraction calls to the cheaper model; check quality on a sample.",
        ),
        Kind::ContextBloat => {
            (Effort::High, "Summarise or window conversation history; de-duplicate retrieved chunks before sending.")
        }
        Kind::AgentLoop => {
            (Effort::Medium, "Stop the agent repeating the same tool call: memoise tool results, cap iterations.")
        }
        Kind::VerboseFormat => {
            (Effort::Medium, "Minify JSON and collapse whitespace in prompts (or use a compact format).")
        }
        Kind::EmbeddingBatching => {
            (Effort::Medium, "Batch embeddings (many inputs per request, or the Batch API at half price).")
        }
    };
    let mut evidence = evidence;
    evidence["observed_savings_usd"] = json!(observed);
    Opportunity {
        kind,
        title,
        estimated_monthly_savings_usd: observed * factor,
        affected_calls: calls,
        effort,
        action: action.to_owned(),
        evidence,
    }
}

/// `1 call repeats`, `4 calls repeat`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn scope(keys: impl IntoIterator<Item = String>) -> Value {
    Value::Array(keys.into_iter().take(MAX_SCOPE_KEYS).map(Value::String).collect())
}

/// Identical prompts to one model, over the groups that repeat.
#[derive(Clone, Debug, Default)]
pub struct Duplicates {
    /// Groups of one model and prompt hash with more than one call.
    pub groups: u64,
    /// Calls after each group's first.
    pub calls: u64,
    /// Their cost.
    pub saved: f64,
    /// The five largest groups, largest first: model, service, repeats.
    pub top: Vec<Value>,
    /// `model|prompt hash` of the groups, largest first.
    pub scope: Vec<String>,
}

pub fn duplicates(d: Duplicates, factor: f64) -> Vec<Opportunity> {
    if d.groups == 0 {
        return Vec::new();
    }
    vec![opportunity(
        Kind::DuplicateCalls,
        format!(
            "{} an identical prompt ({})",
            plural(d.calls as usize, "call repeats", "calls repeat"),
            plural(d.groups as usize, "distinct prompt", "distinct prompts")
        ),
        d.saved,
        factor,
        d.calls,
        json!({"duplicate_groups": d.groups, "top": d.top, "scope": scope(d.scope)}),
    )]
}

/// A distinct single-turn prompt: its model, SimHash and the cost of its first call.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub model: String,
    pub simhash: u64,
    pub cost: f64,
}

/// Greedy clustering of the first [`super::MAX_SEMANTIC_PROMPTS`] prompts
/// (earliest first) around each cluster's first member; `seen` distinct
/// prompts in the window.
pub fn semantic(items: &[Prompt], seen: u64, factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    let mut clusters: Vec<Vec<&Prompt>> = Vec::new();
    for p in items.iter().take(super::MAX_SEMANTIC_PROMPTS) {
        match clusters
            .iter_mut()
            .find(|c| c[0].model == p.model && (c[0].simhash ^ p.simhash).count_ones() <= t.simhash_bits)
        {
            Some(c) => c.push(p),
            None => clusters.push(vec![p]),
        }
    }
    let hits: Vec<&Vec<&Prompt>> = clusters.iter().filter(|c| c.len() > 1).collect();
    if hits.is_empty() {
        return Vec::new();
    }
    let calls: usize = hits.iter().map(|c| c.len() - 1).sum();
    let saved: f64 = hits.iter().map(|c| c[1..].iter().map(|p| p.cost).sum::<f64>()).sum();
    let considered = clusters.iter().map(Vec::len).sum::<usize>().max(1);
    vec![opportunity(
        Kind::SemanticCache,
        format!("{} of an earlier prompt", plural(calls, "call is a near-duplicate", "calls are near-duplicates")),
        saved,
        factor,
        calls as u64,
        json!({"clusters": hits.len(), "hit_rate": calls as f64 / considered as f64, "simhash_max_bits": t.simhash_bits,
               "prompts_compared": considered, "prompts_seen": seen}),
    )]
}

/// A cacheable prefix sent more than once without a cache read.
#[derive(Clone, Debug)]
pub struct Prefix {
    pub provider: String,
    pub model: String,
    pub hash: String,
    /// Its tokens, as the first such call counted them.
    pub tokens: u64,
    pub calls: u64,
}

/// `prefixes` in (provider, model, hash) order.
pub fn prompt_caching(prefixes: &[Prefix], prices: &PriceTable, factor: f64) -> Vec<Opportunity> {
    let mut saved = 0.0;
    let mut calls = 0;
    let mut top = Vec::new();
    let mut hashes = Vec::new();
    for x in prefixes {
        let (Some(p), true) = (prices.lookup(&x.model), x.calls > 1) else { continue };
        let read = p.cache_read.unwrap_or(p.input * 0.1);
        let s = (x.calls - 1) as f64 * x.tokens as f64 * (p.input - read).max(0.0);
        saved += s;
        calls += x.calls - 1;
        hashes.push(x.hash.clone());
        top.push(json!({"provider": x.provider, "model": x.model, "prefix_tokens": x.tokens, "calls": x.calls,
                        "savings_usd": s}));
    }
    if calls == 0 {
        return Vec::new();
    }
    vec![opportunity(
        Kind::PromptCaching,
        format!("{} a cacheable prefix without prompt caching", plural(calls as usize, "call resends", "calls resend")),
        saved,
        factor,
        calls,
        json!({"prefixes": top, "scope": scope(hashes)}),
    )]
}

/// Short calls per (model, cheaper model): calls and the saving; `keys` the
/// work keys of those calls, sorted.
pub fn downgrade(
    routes: &BTreeMap<(String, &'static str), (u64, f64)>,
    keys: Vec<String>,
    factor: f64,
    t: &Thresholds,
) -> Vec<Opportunity> {
    let calls: u64 = routes.values().map(|v| v.0).sum();
    let saved: f64 = routes.values().map(|v| v.1).sum();
    if calls == 0 {
        return Vec::new();
    }
    let pairs: Vec<Value> = routes
        .iter()
        .map(|((m, c), (n, s))| json!({"model": m, "cheaper_model": c, "calls": n, "savings_usd": s}))
        .collect();
    vec![opportunity(
        Kind::ModelDowngrade,
        format!(
            "{} a frontier model",
            plural(
                calls as usize,
                "short classification/extraction-shaped call uses",
                "short classification/extraction-shaped calls use"
            )
        ),
        saved,
        factor,
        calls,
        json!({"short_output_tokens": t.short_output, "routes": pairs, "scope": scope(keys)}),
    )]
}

/// Growing conversations and prompts repeating their own chunks.
#[derive(Clone, Debug, Default)]
pub struct Bloat {
    pub growing: u64,
    /// Calls over the cap, and the cost of their input above it.
    pub history_calls: u64,
    pub history_saved: f64,
    pub chunk_calls: u64,
    pub chunk_saved: f64,
    /// The growing conversations' hashes, sorted.
    pub scope: Vec<String>,
}

pub fn context_bloat(b: Bloat, factor: f64) -> Vec<Opportunity> {
    if b.history_calls + b.chunk_calls == 0 {
        return Vec::new();
    }
    let mut parts = Vec::new();
    if b.growing > 0 {
        parts.push(format!(
            "{} without summarisation",
            plural(b.growing as usize, "conversation grows", "conversations grow")
        ));
    }
    if b.chunk_calls > 0 {
        parts.push(format!("{} their own chunks", plural(b.chunk_calls as usize, "prompt repeats", "prompts repeat")));
    }
    vec![opportunity(
        Kind::ContextBloat,
        parts.join("; "),
        b.history_saved + b.chunk_saved,
        factor,
        b.history_calls + b.chunk_calls,
        json!({"growing_conversations": b.growing, "history_savings_usd": b.history_saved,
               "repeated_chunk_calls": b.chunk_calls, "repeated_chunk_savings_usd": b.chunk_saved,
               "scope": scope(b.scope)}),
    )]
}

/// One looping conversation: its hash, the last call's first tool, the
/// first call's service, and its calls in the loop and their cost.
#[derive(Clone, Debug)]
pub struct Loop {
    pub conversation: String,
    pub tool: Option<String>,
    pub service: Option<String>,
    pub calls: u64,
    pub cost: f64,
}

/// The looping conversations: how many, their calls in the loop and the
/// cost of those, and the first [`MAX_SCOPE_KEYS`] of them by hash.
#[derive(Clone, Debug, Default)]
pub struct Loops {
    pub conversations: u64,
    pub calls: u64,
    pub cost: f64,
    pub shown: Vec<Loop>,
}

pub fn agent_loops(l: Loops, factor: f64) -> Vec<Opportunity> {
    if l.calls == 0 {
        return Vec::new();
    }
    let shown: Vec<Value> =
        l.shown.iter().map(|l| json!({"tool": l.tool, "calls_in_loop": l.calls, "service": l.service})).collect();
    vec![opportunity(
        Kind::AgentLoop,
        format!(
            "{} the same tool call",
            plural(l.conversations as usize, "agent conversation repeats", "agent conversations repeat")
        ),
        l.cost,
        factor,
        l.calls,
        json!({"loops": shown, "scope": scope(l.shown.iter().map(|l| l.conversation.clone()))}),
    )]
}

pub fn verbose(tokens: u64, saved: f64, calls: u64, factor: f64) -> Vec<Opportunity> {
    if calls == 0 {
        return Vec::new();
    }
    vec![opportunity(
        Kind::VerboseFormat,
        format!(
            "{} pretty-printed JSON or padding whitespace",
            plural(calls as usize, "prompt carries", "prompts carry")
        ),
        saved,
        factor,
        calls,
        json!({"tokens_saved": tokens, "measured_with": "o200k_base tokenizer"}),
    )]
}

/// A sender of one-input embeddings requests, with enough of them to batch.
#[derive(Clone, Debug)]
pub struct Sender {
    pub who: String,
    pub model: String,
    pub calls: u64,
    pub cost: f64,
}

/// `senders` in (who, model) order.
pub fn embeddings(senders: &[Sender], factor: f64) -> Vec<Opportunity> {
    if senders.is_empty() {
        return Vec::new();
    }
    let calls: u64 = senders.iter().map(|s| s.calls).sum();
    // The Batch API bills embeddings at half price.
    let saved: f64 = senders.iter().map(|s| s.cost * 0.5).sum();
    let who: Vec<Value> = senders.iter().map(|s| json!({"who": s.who, "model": s.model, "calls": s.calls})).collect();
    vec![opportunity(
        Kind::EmbeddingBatching,
        format!("{} a single input", plural(calls as usize, "embeddings request carries", "embeddings requests carry")),
        saved,
        factor,
        calls,
        json!({"senders": who, "batch_discount": 0.5,
               "scope": scope(senders.iter().map(|s| format!("{}|{}", s.who, s.model)))}),
    )]
}
