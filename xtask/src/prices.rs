//! Derive the shipped price table from LiteLLM's public price list: chat,
//! completion, responses and embedding models with both input and output prices.
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
        if !matches!(mode, "chat" | "embedding" | "completion" | "responses") {
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
        models.insert(name.clone(), e);
    }
    let out = json!({"version": version, "models": models});
    std::fs::write(to, serde_json::to_string_pretty(&out)? + "\n")?;
    eprintln!("xtask: wrote {} models to {}", models.len(), to.display());
    Ok(())
}
