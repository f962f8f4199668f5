//! Derive the shipped price table from LiteLLM's public price list: chat,
//! completion, responses, realtime and embedding models with both input and
//! output prices (audio prices too, where listed).
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

pub fn generate(from: &Path, to: &Path) -> Result<()> {
    let text = std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let src: Map<String, Value> = serde_json::from_str(&text).context("parsing the LiteLLM price list")?;
    let version = from
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("model_prices."))
        .unwrap_or("unknown")
        .to_owned();
    let mut models = BTreeMap::new();
    for (name, v) in &src {
        let mode = v.get("mode").and_then(Value::as_str).unwrap_or("");
        if !matches!(mode, "chat" | "embedding" | "completion" | "responses" | "realtime") {
            continue;
        }
        let (Some(input), Some(output)) = (
            v.get("input_cost_per_token").and_then(Value::as_f64),
            v.get("output_cost_per_token").and_then(Value::as_f64),
        ) else {
            continue;
        };
        let mut e = json!({"input": input, "output": output});
        if let Some(r) = v.get("cache_read_input_token_cost").and_then(Value::as_f64) {
            e["cache_read"] = json!(r);
        }
        if let Some(w) = v.get("cache_creation_input_token_cost").and_then(Value::as_f64) {
            e["cache_write"] = json!(w);
        }
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        if let Some(r) = f("output_cost_per_reasoning_token") {
            e["reasoning"] = json!(r);
        }
        for (key, from) in [
            ("audio_input", "input_cost_per_audio_token"),
            ("audio_cache_read", "cache_read_input_audio_token_cost"),
            ("audio_output", "output_cost_per_audio_token"),
        ] {
            if let Some(a) = f(from) {
                e[key] = json!(a);
            }
        }
        // Long-context prices: the lowest threshold the list names.
        for threshold in ["128k", "200k", "272k"] {
            let (Some(i), Some(o)) = (
                f(&format!("input_cost_per_token_above_{threshold}_tokens")),
                f(&format!("output_cost_per_token_above_{threshold}_tokens")),
            ) else {
                continue;
            };
            let above: u64 = threshold.trim_end_matches('k').parse::<u64>().unwrap_or(0) * 1000;
            let mut lc = json!({"above_input_tokens": above, "input": i, "output": o});
            if let Some(c) = f(&format!("cache_read_input_token_cost_above_{threshold}_tokens")) {
                lc["cache_read"] = json!(c);
            }
            e["long_context"] = lc;
            break;
        }
        let mut tiers = Map::new();
        for (tier, suffix) in [("batch", "batches"), ("flex", "flex"), ("priority", "priority")] {
            let (Some(i), Some(o)) =
                (f(&format!("input_cost_per_token_{suffix}")), f(&format!("output_cost_per_token_{suffix}")))
            else {
                continue;
            };
            let mut t = json!({"input": i, "output": o});
            if let Some(c) = f(&format!("cache_read_input_token_cost_{suffix}")) {
                t["cache_read"] = json!(c);
            }
            tiers.insert(tier.to_owned(), t);
        }
        if !tiers.is_empty() {
            e["tiers"] = Value::Object(tiers);
        }
        models.insert(name.clone(), e);
    }
    let out = json!({"version": version, "models": models});
    std::fs::write(to, serde_json::to_string_pretty(&out)? + "\n")?;
    eprintln!("xtask: wrote {} models to {}", models.len(), to.display());
    Ok(())
}
