//! The Opportunity Register: detectors over records (their `features`, tokens
//! and cost), each giving an estimated monthly saving in USD and the evidence
//! behind it. Plain functions over `&[LlmCall]`, so the agent's audit and the
//! report from ClickHouse run the same code.
//!
//! Savings are measured on the observed calls (`evidence.observed_savings_usd`)
//! and extrapolated to a 30-day month from the observed window (at least one
//! hour, so a short demo does not multiply by thousands). docs/opportunities.md
//! gives each detector's rule and formula.
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub mod evidence;

use crate::{LlmCall, PriceTable, Prices};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    DuplicateCalls,
    SemanticCache,
    PromptCaching,
    ModelDowngrade,
    ContextBloat,
    AgentLoop,
    VerboseFormat,
    EmbeddingBatching,
}

/// Rough work to take the saving: 1 a setting or flag, 2 a code change, 3 a design change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effort {
    Low = 1,
    Medium = 2,
    High = 3,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Opportunity {
    pub kind: Kind,
    pub title: String,
    pub estimated_monthly_savings_usd: f64,
    pub affected_calls: u64,
    pub effort: Effort,
    /// What to do about it.
    pub action: String,
    pub evidence: Value,
}

/// Thresholds of the detectors (docs/opportunities.md).
#[derive(Clone, Debug)]
pub struct Thresholds {
    /// SimHash bits two prompts may differ by to count as near-duplicates.
    pub simhash_bits: u32,
    /// Smallest static prefix worth caching (providers' minimum is ~1,024 tokens).
    pub min_cacheable_prefix: u64,
    /// Output tokens at or below which a call looks like classification/extraction.
    pub short_output: u64,
    /// Conversation calls before growth is judged.
    pub min_turns: usize,
    /// Same tool call this many times in one conversation: a loop.
    pub loop_repeats: usize,
    /// Single-input embeddings calls from one process before batching pays.
    pub min_single_embeddings: usize,
    /// Tokens a reformatting must save on a call to count.
    pub min_minify_tokens: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            simhash_bits: 3,
            min_cacheable_prefix: 1024,
            short_output: 16,
            min_turns: 4,
            loop_repeats: 3,
            min_single_embeddings: 10,
            min_minify_tokens: 20,
        }
    }
}

fn model(r: &LlmCall) -> &str {
    r.response_model.as_deref().or(r.request_model.as_deref()).unwrap_or("")
}

fn cost(r: &LlmCall) -> f64 {
    r.cost_usd.unwrap_or(0.0)
}

fn ts_secs(r: &LlmCall) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(&r.ts).ok().map(|t| t.timestamp_micros() as f64 / 1e6)
}

/// Observed window in hours (at least 1) and the factor to a 30-day month.
pub fn window(records: &[LlmCall]) -> (f64, f64) {
    let ts: Vec<f64> = records.iter().filter_map(ts_secs).collect();
    let span = match (ts.iter().cloned().reduce(f64::min), ts.iter().cloned().reduce(f64::max)) {
        (Some(a), Some(b)) => (b - a) / 3600.0,
        _ => 0.0,
    };
    let hours = span.max(1.0);
    (hours, 720.0 / hours)
}

/// A cheaper model of the same family for over-specified calls, if priced.
pub fn cheaper_model(model: &str) -> Option<&'static str> {
    let m = model.to_ascii_lowercase();
    let rules: &[(&str, &str)] = &[
        ("gpt-4o-mini", ""),
        ("gpt-4.1-mini", ""),
        ("gpt-4.1-nano", ""),
        ("gpt-4o", "gpt-4o-mini"),
        ("gpt-4.1", "gpt-4.1-mini"),
        ("gpt-4-turbo", "gpt-4o-mini"),
        ("gpt-5-mini", ""),
        ("gpt-5-nano", ""),
        ("gpt-5", "gpt-5-mini"),
        ("o1", "o3-mini"),
        ("o3", "o4-mini"),
        ("claude-opus-4", "claude-haiku-4-5"),
        ("claude-sonnet-4", "claude-haiku-4-5"),
        ("claude-3-opus", "claude-3-5-haiku"),
        ("claude-3-5-sonnet", "claude-3-5-haiku"),
        ("claude-3-7-sonnet", "claude-3-5-haiku"),
        ("gemini-2.5-pro", "gemini-2.5-flash"),
        ("gemini-1.5-pro", "gemini-1.5-flash"),
    ];
    rules.iter().find(|(p, _)| m.starts_with(p)).map(|(_, c)| *c).filter(|c| !c.is_empty())
}

fn price_of<'a>(prices: &'a PriceTable, model: &str) -> Option<&'a Prices> {
    prices.lookup(model)
}

/// Every detector over the records, ranked by saving per unit of effort.
pub fn detect(records: &[LlmCall], prices: &PriceTable, t: &Thresholds) -> Vec<Opportunity> {
    let (hours, factor) = window(records);
    let ok: Vec<&LlmCall> = records.iter().filter(|r| r.status.is_none_or(|s| (200..300).contains(&s))).collect();
    let mut out = Vec::new();
    out.extend(duplicates(&ok, factor));
    out.extend(semantic(&ok, factor, t));
    out.extend(prompt_caching(&ok, prices, factor, t));
    out.extend(downgrade(&ok, prices, factor, t));
    out.extend(context_bloat(&ok, prices, factor, t));
    out.extend(agent_loops(&ok, factor, t));
    out.extend(verbose(&ok, prices, factor, t));
    out.extend(embeddings(&ok, factor, t));
    rank(out, hours)
}

/// The register from every detector's entries: the window noted, entries
/// without a saving left out, ranked by saving per unit of effort.
pub fn rank(mut out: Vec<Opportunity>, hours: f64) -> Vec<Opportunity> {
    for o in &mut out {
        o.evidence["window_hours"] = json!(hours);
    }
    out.retain(|o| o.estimated_monthly_savings_usd > 0.0);
    out.sort_by(|a, b| {
        let ka = a.estimated_monthly_savings_usd / a.effort as i32 as f64;
        let kb = b.estimated_monthly_savings_usd / b.effort as i32 as f64;
        kb.total_cmp(&ka)
    });
    out
}

/// Keys naming the calls an opportunity is about (keyed hashes, models,
/// services: never text), so a later window can measure the same calls
/// (`roadmap`). Bounded: a register stays small.
pub const MAX_SCOPE_KEYS: usize = 10_000;

/// Who sends embeddings: the service, else the process name.
pub fn sender(r: &LlmCall) -> String {
    r.service.clone().or_else(|| r.comm.clone()).unwrap_or_default()
}

/// The work a call does, model aside: its static prefix, else its service
/// and feature. A call moved to a cheaper model keeps it.
pub fn work_key(r: &LlmCall) -> String {
    match feat(r).and_then(|f| f.prefix_hash.as_deref()) {
        Some(h) => format!("prefix:{h}"),
        None => format!("service:{}|{}", r.service.as_deref().unwrap_or(""), r.feature.as_deref().unwrap_or("")),
    }
}

fn feat(r: &LlmCall) -> Option<&crate::PromptFeatures> {
    r.features.as_ref()
}

/// Identical prompt to the same model: every call after the first could be served from a cache.
fn duplicates(rs: &[&LlmCall], factor: f64) -> Vec<Opportunity> {
    let mut groups: HashMap<(&str, &str), Vec<&LlmCall>> = HashMap::new();
    for r in rs {
        if let Some(h) = feat(r).and_then(|f| f.prompt_hash.as_deref()) {
            if feat(r).is_some_and(|f| f.embedding_inputs.is_none()) {
                groups.entry((model(r), h)).or_default().push(r);
            }
        }
    }
    let mut dup: Vec<(&(&str, &str), &Vec<&LlmCall>)> = groups.iter().filter(|(_, v)| v.len() > 1).collect();
    // Most repeated first, then by key: the same top and scope from ClickHouse.
    dup.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    evidence::duplicates(
        evidence::Duplicates {
            groups: dup.len() as u64,
            calls: dup.iter().map(|(_, v)| v.len() as u64 - 1).sum(),
            saved: dup.iter().map(|(_, v)| v[1..].iter().map(|r| cost(r)).sum::<f64>()).sum(),
            top: dup
                .iter()
                .take(5)
                .map(|(_, v)| json!({"model": model(v[0]), "service": v[0].service, "repeats": v.len()}))
                .collect(),
            scope: dup.iter().take(MAX_SCOPE_KEYS).map(|((m, h), _)| format!("{m}|{h}")).collect(),
        },
        factor,
    )
}

/// Distinct single-turn prompts the near-duplicate search compares, the
/// earliest first: the greedy clustering is quadratic in the worst case.
pub const MAX_SEMANTIC_PROMPTS: usize = 20_000;

/// Near-identical prompts (SimHash within a few bits) that are not exact duplicates.
pub(crate) fn semantic(rs: &[&LlmCall], factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    // One representative per exact prompt: exact repeats are the duplicates detector's.
    let mut seen = std::collections::HashSet::new();
    let mut items: Vec<evidence::Prompt> = Vec::new();
    for r in rs {
        let Some(f) = feat(r) else { continue };
        let (Some(h), Some(s)) = (f.prompt_hash.as_deref(), f.simhash.as_deref()) else { continue };
        if f.message_count > 1 || !seen.insert((model(r), h)) {
            continue;
        }
        if let Ok(simhash) = u64::from_str_radix(s, 16) {
            items.push(evidence::Prompt { model: model(r).to_owned(), simhash, cost: cost(r) });
        }
    }
    evidence::semantic(&items, items.len() as u64, factor, t)
}

/// A large static prefix (system prompt + tools) sent again and again without
/// cache reads: the provider's prompt cache would bill it at the cache-read price.
fn prompt_caching(rs: &[&LlmCall], prices: &PriceTable, factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    let mut groups: BTreeMap<(String, String, String), Vec<&LlmCall>> = BTreeMap::new();
    for r in rs {
        let Some(f) = feat(r) else { continue };
        let (Some(h), Some(n)) = (f.prefix_hash.as_deref(), f.prefix_tokens) else { continue };
        if n >= t.min_cacheable_prefix && r.cached_input_tokens.unwrap_or(0) == 0 {
            groups.entry((r.provider.clone(), model(r).to_owned(), h.to_owned())).or_default().push(r);
        }
    }
    let prefixes = groups
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|((provider, model, hash), v)| evidence::Prefix {
            tokens: v[0].features.as_ref().and_then(|f| f.prefix_tokens).unwrap_or(0),
            calls: v.len() as u64,
            provider,
            model,
            hash,
        })
        .collect::<Vec<_>>();
    evidence::prompt_caching(&prefixes, prices, factor)
}

/// A frontier model doing short classification/extraction work.
fn downgrade(rs: &[&LlmCall], prices: &PriceTable, factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    let mut routes: BTreeMap<(String, &'static str), (u64, f64)> = BTreeMap::new();
    let mut keys = std::collections::BTreeSet::new();
    for r in rs {
        let (Some(out), Some(inp)) = (r.output_tokens, r.input_tokens) else { continue };
        let short = out <= t.short_output || feat(r).and_then(|f| f.max_tokens).is_some_and(|m| m <= t.short_output);
        if !short || feat(r).is_some_and(|f| f.embedding_inputs.is_some()) {
            continue;
        }
        let Some(cheap) = cheaper_model(model(r)) else { continue };
        let Some(p) = price_of(prices, cheap) else { continue };
        let cheaper = p.cost(inp, out, r.cached_input_tokens.unwrap_or(0), r.cache_write_tokens.unwrap_or(0));
        keys.insert(work_key(r));
        let e = routes.entry((model(r).to_owned(), cheap)).or_default();
        e.0 += 1;
        e.1 += (cost(r) - cheaper).max(0.0);
    }
    evidence::downgrade(&routes, keys.into_iter().take(MAX_SCOPE_KEYS).collect(), factor, t)
}

/// Calls by conversation (same start), each conversation in turn order.
pub(crate) fn conversations<'a>(rs: &[&'a LlmCall]) -> HashMap<&'a str, Vec<&'a LlmCall>> {
    let mut convs: HashMap<&str, Vec<&LlmCall>> = HashMap::new();
    for r in rs {
        if let Some(h) = feat(r).and_then(|f| f.conversation_hash.as_deref()) {
            convs.entry(h).or_default().push(r);
        }
    }
    for v in convs.values_mut() {
        v.sort_by_key(|r| feat(r).map_or(0, |f| f.message_count));
    }
    convs
}

/// Conversations whose input grows turn after turn without summarisation, and
/// prompts repeating their own chunks.
fn context_bloat(rs: &[&LlmCall], prices: &PriceTable, factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    let convs = conversations(rs);
    let mut b = evidence::Bloat::default();
    let mut grown = Vec::new();
    for (h, v) in &convs {
        if v.len() < t.min_turns {
            continue;
        }
        let inputs: Vec<u64> = v.iter().map(|r| r.input_tokens.unwrap_or(0)).collect();
        if !inputs.windows(2).all(|w| w[1] >= w[0]) || inputs[0] == 0 {
            continue;
        }
        // History beyond twice the first turn's size could have been summarised.
        let cap = inputs[0] * 2;
        let Some(p) = price_of(prices, model(v[0])) else { continue };
        let excess: u64 = inputs.iter().map(|i| i.saturating_sub(cap)).sum();
        if excess == 0 {
            continue;
        }
        b.growing += 1;
        grown.push(h.to_string());
        b.history_saved += excess as f64 * p.input;
        b.history_calls += inputs.iter().filter(|i| **i > cap).count() as u64;
    }
    grown.sort();
    grown.truncate(MAX_SCOPE_KEYS);
    b.scope = grown;
    // Retrieval chunks repeated inside one prompt.
    for r in rs {
        let Some(f) = feat(r) else { continue };
        if f.duplicate_chunk_share >= 0.1 {
            if let (Some(p), Some(i)) = (price_of(prices, model(r)), r.input_tokens) {
                b.chunk_saved += i as f64 * f.duplicate_chunk_share * p.input;
                b.chunk_calls += 1;
            }
        }
    }
    evidence::context_bloat(b, factor)
}

/// How often the most repeated tool call (name and arguments) is already in a
/// call's history.
pub(crate) fn max_repeat(r: &LlmCall) -> usize {
    let mut n: HashMap<(&str, &str), usize> = HashMap::new();
    for c in feat(r).map(|f| f.tool_calls.as_slice()).unwrap_or_default() {
        *n.entry((c.name.as_str(), c.args_hash.as_str())).or_default() += 1;
    }
    n.values().copied().max().unwrap_or(0)
}

/// The same tool call (name and arguments) again and again in one conversation.
fn agent_loops(rs: &[&LlmCall], factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    let convs = conversations(rs);
    let mut loops = Vec::new();
    for (h, v) in &convs {
        // A call is in the loop once its history already repeats a tool call;
        // the conversation counts when some call repeats it `loop_repeats` times.
        if v.iter().map(|r| max_repeat(r)).max().unwrap_or(0) < t.loop_repeats {
            continue;
        }
        let in_loop: Vec<&&LlmCall> = v.iter().filter(|r| max_repeat(r) >= 2).collect();
        loops.push(evidence::Loop {
            conversation: h.to_string(),
            tool: feat(v[v.len() - 1]).and_then(|f| f.tool_calls.first()).map(|c| c.name.clone()),
            service: v[0].service.clone(),
            calls: in_loop.len() as u64,
            cost: in_loop.iter().map(|r| cost(r)).sum::<f64>(),
        });
    }
    loops.sort_by(|a, b| a.conversation.cmp(&b.conversation));
    let l = evidence::Loops {
        conversations: loops.len() as u64,
        calls: loops.iter().map(|l| l.calls).sum(),
        cost: loops.iter().map(|l| l.cost).sum(),
        shown: loops.into_iter().take(MAX_SCOPE_KEYS).collect(),
    };
    evidence::agent_loops(l, factor)
}

/// JSON and whitespace in prompts that a compact rendering would not send.
fn verbose(rs: &[&LlmCall], prices: &PriceTable, factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    let (mut tokens, mut saved, mut calls) = (0u64, 0.0, 0u64);
    for r in rs {
        let Some(n) = feat(r).and_then(|f| f.minify_saved_tokens).filter(|n| *n >= t.min_minify_tokens) else {
            continue;
        };
        let Some(p) = price_of(prices, model(r)) else { continue };
        tokens += n;
        saved += n as f64 * p.input;
        calls += 1;
    }
    evidence::verbose(tokens, saved, calls, factor)
}

/// Embeddings sent one input per request, many times, from one process.
fn embeddings(rs: &[&LlmCall], factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    let mut by: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for r in rs {
        if feat(r).and_then(|f| f.embedding_inputs) == Some(1) {
            let e = by.entry((sender(r), model(r).to_owned())).or_default();
            e.0 += 1;
            e.1 += cost(r);
        }
    }
    let senders: Vec<evidence::Sender> = by
        .into_iter()
        .filter(|(_, (n, _))| *n as usize >= t.min_single_embeddings)
        .map(|((who, model), (calls, cost))| evidence::Sender { who, model, calls, cost })
        .collect();
    evidence::embeddings(&senders, factor)
}

#[cfg(test)]
mod tests;
