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

fn opportunity(kind: Kind, title: String, observed: f64, factor: f64, calls: u64, evidence: Value) -> Opportunity {
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

fn scope(keys: impl IntoIterator<Item = String>) -> Value {
    Value::Array(keys.into_iter().take(MAX_SCOPE_KEYS).map(Value::String).collect())
}

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

/// `1 call repeats`, `4 calls repeat`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
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
    let dup: Vec<(&(&str, &str), &Vec<&LlmCall>)> = groups.iter().filter(|(_, v)| v.len() > 1).collect();
    if dup.is_empty() {
        return Vec::new();
    }
    let saved: f64 = dup.iter().map(|(_, v)| v[1..].iter().map(|r| cost(r)).sum::<f64>()).sum();
    let calls: usize = dup.iter().map(|(_, v)| v.len() - 1).sum();
    let top: Vec<Value> =
        top_groups(&dup, |v| json!({"model": model(v[0]), "service": v[0].service, "repeats": v.len()}));
    vec![opportunity(
        Kind::DuplicateCalls,
        format!(
            "{} an identical prompt ({})",
            plural(calls, "call repeats", "calls repeat"),
            plural(dup.len(), "distinct prompt", "distinct prompts")
        ),
        saved,
        factor,
        calls as u64,
        json!({"duplicate_groups": dup.len(), "top": top,
               "scope": scope(dup.iter().map(|((m, h), _)| format!("{m}|{h}")))}),
    )]
}

fn top_groups<K>(groups: &[(&K, &Vec<&LlmCall>)], f: impl Fn(&Vec<&LlmCall>) -> Value) -> Vec<Value> {
    let mut g: Vec<&Vec<&LlmCall>> = groups.iter().map(|(_, v)| *v).collect();
    g.sort_by_key(|v| std::cmp::Reverse(v.len()));
    g.into_iter().take(5).map(f).collect()
}

/// Near-identical prompts (SimHash within a few bits) that are not exact duplicates.
pub(crate) fn semantic(rs: &[&LlmCall], factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    // One representative per exact prompt: exact repeats are the duplicates detector's.
    let mut seen = std::collections::HashSet::new();
    let mut items: Vec<(&LlmCall, u64)> = Vec::new();
    for r in rs {
        let Some(f) = feat(r) else { continue };
        let (Some(h), Some(s)) = (f.prompt_hash.as_deref(), f.simhash.as_deref()) else { continue };
        if f.message_count > 1 || !seen.insert((model(r), h)) {
            continue;
        }
        if let Ok(v) = u64::from_str_radix(s, 16) {
            items.push((r, v));
        }
    }
    // Greedy clustering around the first member.
    let mut clusters: Vec<Vec<(&LlmCall, u64)>> = Vec::new();
    for (r, h) in items {
        match clusters.iter_mut().find(|c| model(c[0].0) == model(r) && (c[0].1 ^ h).count_ones() <= t.simhash_bits) {
            Some(c) => c.push((r, h)),
            None => clusters.push(vec![(r, h)]),
        }
    }
    let hits: Vec<&Vec<(&LlmCall, u64)>> = clusters.iter().filter(|c| c.len() > 1).collect();
    if hits.is_empty() {
        return Vec::new();
    }
    let calls: usize = hits.iter().map(|c| c.len() - 1).sum();
    let saved: f64 = hits.iter().map(|c| c[1..].iter().map(|(r, _)| cost(r)).sum::<f64>()).sum();
    let considered = clusters.iter().map(Vec::len).sum::<usize>().max(1);
    vec![opportunity(
        Kind::SemanticCache,
        format!("{} of an earlier prompt", plural(calls, "call is a near-duplicate", "calls are near-duplicates")),
        saved,
        factor,
        calls as u64,
        json!({"clusters": hits.len(), "hit_rate": calls as f64 / considered as f64, "simhash_max_bits": t.simhash_bits}),
    )]
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
    let mut saved = 0.0;
    let mut calls = 0;
    let mut top = Vec::new();
    let mut prefixes = Vec::new();
    for ((provider, m, h), v) in &groups {
        let (Some(p), true) = (price_of(prices, m), v.len() > 1) else { continue };
        let read = p.cache_read.unwrap_or(p.input * 0.1);
        let prefix = v[0].features.as_ref().and_then(|f| f.prefix_tokens).unwrap_or(0);
        let s = (v.len() - 1) as f64 * prefix as f64 * (p.input - read).max(0.0);
        saved += s;
        calls += v.len() - 1;
        prefixes.push(h.clone());
        top.push(
            json!({"provider": provider, "model": m, "prefix_tokens": prefix, "calls": v.len(), "savings_usd": s}),
        );
    }
    if calls == 0 {
        return Vec::new();
    }
    vec![opportunity(
        Kind::PromptCaching,
        format!("{} a cacheable prefix without prompt caching", plural(calls, "call resends", "calls resend")),
        saved,
        factor,
        calls as u64,
        json!({"prefixes": top, "scope": scope(prefixes)}),
    )]
}

/// A frontier model doing short classification/extraction work.
fn downgrade(rs: &[&LlmCall], prices: &PriceTable, factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    let mut by: BTreeMap<(String, &'static str), (u64, f64)> = BTreeMap::new();
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
        let e = by.entry((model(r).to_owned(), cheap)).or_default();
        e.0 += 1;
        e.1 += (cost(r) - cheaper).max(0.0);
    }
    let calls: u64 = by.values().map(|v| v.0).sum();
    let saved: f64 = by.values().map(|v| v.1).sum();
    if calls == 0 {
        return Vec::new();
    }
    let pairs: Vec<Value> = by
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
    let mut convs = conversations(rs);
    let mut saved = 0.0;
    let mut calls = 0u64;
    let mut growing = 0;
    let mut grown = Vec::new();
    for (h, v) in convs.iter_mut() {
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
        growing += 1;
        grown.push(h.to_string());
        saved += excess as f64 * p.input;
        calls += inputs.iter().filter(|i| **i > cap).count() as u64;
    }
    // Retrieval chunks repeated inside one prompt.
    let mut dup_saved = 0.0;
    let mut dup_calls = 0u64;
    for r in rs {
        let Some(f) = feat(r) else { continue };
        if f.duplicate_chunk_share >= 0.1 {
            if let (Some(p), Some(i)) = (price_of(prices, model(r)), r.input_tokens) {
                dup_saved += i as f64 * f.duplicate_chunk_share * p.input;
                dup_calls += 1;
            }
        }
    }
    if calls + dup_calls == 0 {
        return Vec::new();
    }
    let mut parts = Vec::new();
    if growing > 0 {
        parts.push(format!("{} without summarisation", plural(growing, "conversation grows", "conversations grow")));
    }
    if dup_calls > 0 {
        parts.push(format!("{} their own chunks", plural(dup_calls as usize, "prompt repeats", "prompts repeat")));
    }
    vec![opportunity(
        Kind::ContextBloat,
        parts.join("; "),
        saved + dup_saved,
        factor,
        calls + dup_calls,
        json!({"growing_conversations": growing, "history_savings_usd": saved,
               "repeated_chunk_calls": dup_calls, "repeated_chunk_savings_usd": dup_saved,
               "scope": scope(grown)}),
    )]
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
    let mut convs = conversations(rs);
    let mut saved = 0.0;
    let mut calls = 0u64;
    let mut loops = Vec::new();
    let mut looping = Vec::new();
    for (h, v) in convs.iter_mut() {
        // A call is in the loop once its history already repeats a tool call;
        // the conversation counts when some call repeats it `loop_repeats` times.
        if v.iter().map(|r| max_repeat(r)).max().unwrap_or(0) < t.loop_repeats {
            continue;
        }
        let in_loop: Vec<&&LlmCall> = v.iter().filter(|r| max_repeat(r) >= 2).collect();
        looping.push(h.to_string());
        saved += in_loop.iter().map(|r| cost(r)).sum::<f64>();
        calls += in_loop.len() as u64;
        let name = feat(v[v.len() - 1]).and_then(|f| f.tool_calls.first()).map(|c| c.name.clone());
        loops.push(json!({"tool": name, "calls_in_loop": in_loop.len(), "service": v[0].service}));
    }
    if calls == 0 {
        return Vec::new();
    }
    vec![opportunity(
        Kind::AgentLoop,
        format!(
            "{} the same tool call",
            plural(loops.len(), "agent conversation repeats", "agent conversations repeat")
        ),
        saved,
        factor,
        calls,
        json!({"loops": loops, "scope": scope(looping)}),
    )]
}

/// JSON and whitespace in prompts that a compact rendering would not send.
fn verbose(rs: &[&LlmCall], prices: &PriceTable, factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    let mut tokens = 0u64;
    let mut saved = 0.0;
    let mut calls = 0u64;
    for r in rs {
        let Some(n) = feat(r).and_then(|f| f.minify_saved_tokens).filter(|n| *n >= t.min_minify_tokens) else {
            continue;
        };
        let Some(p) = price_of(prices, model(r)) else { continue };
        tokens += n;
        saved += n as f64 * p.input;
        calls += 1;
    }
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

/// Embeddings sent one input per request, many times, from one process.
fn embeddings(rs: &[&LlmCall], factor: f64, t: &Thresholds) -> Vec<Opportunity> {
    let mut by: BTreeMap<(String, String), Vec<&LlmCall>> = BTreeMap::new();
    for r in rs {
        if feat(r).and_then(|f| f.embedding_inputs) == Some(1) {
            by.entry((sender(r), model(r).to_owned())).or_default().push(r);
        }
    }
    let hits: Vec<(&(String, String), &Vec<&LlmCall>)> =
        by.iter().filter(|(_, v)| v.len() >= t.min_single_embeddings).collect();
    if hits.is_empty() {
        return Vec::new();
    }
    let calls: usize = hits.iter().map(|(_, v)| v.len()).sum();
    // The Batch API bills embeddings at half price.
    let saved: f64 = hits.iter().map(|(_, v)| v.iter().map(|r| cost(r)).sum::<f64>() * 0.5).sum();
    let who: Vec<Value> = hits.iter().map(|((w, m), v)| json!({"who": w, "model": m, "calls": v.len()})).collect();
    vec![opportunity(
        Kind::EmbeddingBatching,
        format!("{} a single input", plural(calls, "embeddings request carries", "embeddings requests carry")),
        saved,
        factor,
        calls as u64,
        json!({"senders": who, "batch_discount": 0.5, "scope": scope(hits.iter().map(|((w, m), _)| format!("{w}|{m}")))}),
    )]
}

#[cfg(test)]
mod tests;
