//! Price table and cost. The shipped table (`data/prices.json`) is derived from a
//! public price list by `cargo xtask prices`; users override or add models with
//! their own file in the same format.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// USD per token. Missing cache prices fall back to the input price.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    pub input: f64,
    pub output: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// Reasoning tokens, where priced apart from other output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<f64>,
    /// Audio input, cached audio input and audio output, where priced apart
    /// (realtime and native-audio models); else audio is priced as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_input: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_cache_read: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_output: Option<f64>,
    /// Prices for prompts above a size (e.g. Gemini Pro above 200k tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContext>,
    /// Prices of a service tier (`batch`, `flex`, `priority`), where they differ.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, TierPrices>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LongContext {
    /// Input tokens above which these prices apply to the whole call.
    pub above_input_tokens: u64,
    pub input: f64,
    pub output: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierPrices {
    pub input: f64,
    pub output: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
}

/// What a call used, for pricing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Use<'a> {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub cache_write: u64,
    pub reasoning: u64,
    /// Parts of `input`, `cached` and `output` that were audio.
    pub audio_input: u64,
    pub audio_cached: u64,
    pub audio_output: u64,
    /// `service_tier` of the call (`default` and `auto` are the standard prices).
    pub tier: Option<&'a str>,
}

impl Prices {
    /// Input and output prices only.
    pub fn flat(input: f64, output: f64) -> Self {
        Self {
            input,
            output,
            cache_read: None,
            cache_write: None,
            reasoning: None,
            audio_input: None,
            audio_cache_read: None,
            audio_output: None,
            long_context: None,
            tiers: BTreeMap::new(),
        }
    }

    /// The call's cost with every pricing rule: service tier, long-context
    /// prices, separately priced reasoning, cache reads and writes.
    pub fn cost_of(&self, u: &Use) -> f64 {
        let mut p = Prices { tiers: BTreeMap::new(), long_context: None, ..self.clone() };
        if let Some(lc) = self.long_context.as_ref().filter(|lc| u.input > lc.above_input_tokens) {
            p.input = lc.input;
            p.output = lc.output;
            p.cache_read = lc.cache_read.or(p.cache_read);
        }
        let tier = match u.tier {
            Some("batch") | Some("batches") => Some("batch"),
            Some(t) if t != "default" && t != "auto" && t != "standard" => Some(t),
            _ => None,
        };
        if let Some(t) = tier.and_then(|t| self.tiers.get(t)) {
            p.input = t.input;
            p.output = t.output;
            p.cache_read = t.cache_read.or(p.cache_read);
        }
        let base = p.cost(u.input, u.output, u.cached, u.cache_write);
        let reasoning = match self.reasoning {
            // Reasoning is part of `output`: re-price that part.
            Some(r) => u.reasoning.min(u.output) as f64 * (r - p.output),
            None => 0.0,
        };
        base + reasoning + self.audio_extra(u, &p)
    }

    /// What the audio parts of a call cost beyond the text prices they were
    /// counted at: uncached audio input, cached audio, audio output, each
    /// where the model prices it apart (and never more tokens than the whole).
    fn audio_extra(&self, u: &Use, text: &Prices) -> f64 {
        let cached_audio = u.audio_cached.min(u.cached).min(u.audio_input);
        let uncached = u.input.saturating_sub(u.cached).saturating_sub(u.cache_write);
        let fresh_audio = (u.audio_input - cached_audio).min(uncached);
        let cache_read = text.cache_read.unwrap_or(text.input);
        let mut extra = 0.0;
        if let Some(a) = self.audio_input {
            extra += fresh_audio as f64 * (a - text.input);
        }
        if let Some(a) = self.audio_cache_read {
            extra += cached_audio as f64 * (a - cache_read);
        }
        if let Some(a) = self.audio_output {
            extra += u.audio_output.min(u.output) as f64 * (a - text.output);
        }
        extra
    }

    /// Cost = (input - cached - cache_write) x input + cached x cache_read
    ///      + cache_write x cache_write price + output x output.
    pub fn cost(&self, input: u64, output: u64, cached: u64, cache_write: u64) -> f64 {
        let uncached = input.saturating_sub(cached).saturating_sub(cache_write);
        uncached as f64 * self.input
            + cached as f64 * self.cache_read.unwrap_or(self.input)
            + cache_write as f64 * self.cache_write.unwrap_or(self.input)
            + output as f64 * self.output
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PriceFile {
    /// Where the prices come from, e.g. `litellm-1.109.1`.
    #[serde(default)]
    pub version: String,
    pub models: HashMap<String, Prices>,
}

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("cannot read price file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("price file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

const SHIPPED: &str = include_str!("../data/prices.json");

#[derive(Clone, Debug)]
pub struct PriceTable {
    version: String,
    models: HashMap<String, Prices>,
}

impl PriceTable {
    /// The table shipped with tokentap.
    pub fn shipped() -> Self {
        // The shipped file is checked by a unit test, so this cannot fail at run time.
        let file: PriceFile = serde_json::from_str(SHIPPED).unwrap_or_default();
        Self::from_file(file)
    }

    /// A table with no prices (every cost is unknown).
    pub fn empty() -> Self {
        Self { version: String::new(), models: HashMap::new() }
    }

    fn from_file(file: PriceFile) -> Self {
        let models = file.models.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        Self { version: file.version, models }
    }

    /// The shipped table with `path`'s entries added or replacing shipped ones.
    pub fn with_overrides(mut self, path: &Path) -> Result<Self, PriceError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read { path: path.into(), source })?;
        let file: PriceFile =
            serde_json::from_str(&text).map_err(|source| PriceError::Parse { path: path.into(), source })?;
        for (k, v) in file.models {
            self.models.insert(k.to_ascii_lowercase(), v);
        }
        if !file.version.is_empty() {
            self.version = format!("{}+{}", self.version, file.version);
        }
        Ok(self)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Prices for `model`: exact name, then without a `provider/` prefix, then
    /// without a trailing date (`-2024-08-06`, `-20250929`).
    pub fn lookup(&self, model: &str) -> Option<&Prices> {
        let m = model.trim().to_ascii_lowercase();
        if let Some(p) = self.models.get(&m) {
            return Some(p);
        }
        let base = m.rsplit('/').next().unwrap_or(&m);
        if let Some(p) = self.models.get(base) {
            return Some(p);
        }
        let undated = strip_date_suffix(base);
        if undated != base {
            if let Some(p) = self.models.get(undated) {
                return Some(p);
            }
        }
        // Bedrock cross-region inference profiles: `us.anthropic.claude-…` is
        // priced as `anthropic.claude-…`.
        for region in ["us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au."] {
            if let Some(rest) = base.strip_prefix(region).filter(|r| r.contains('.')) {
                return self.models.get(rest);
            }
        }
        None
    }
}

fn strip_date_suffix(m: &str) -> &str {
    // -YYYYMMDD
    if let Some((head, tail)) = m.rsplit_once('-') {
        if tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_digit()) {
            return head;
        }
    }
    // -YYYY-MM-DD
    // `get` rather than indexing: model names are untrusted and may not be ASCII.
    if let Some(tail) = m.len().checked_sub(11).and_then(|start| m.get(start..)).filter(|_| m.len() > 11) {
        let t = tail.as_bytes();
        if t[0] == b'-'
            && t[5] == b'-'
            && t[8] == b'-'
            && t[1..5].iter().chain(&t[6..8]).chain(&t[9..]).all(u8::is_ascii_digit)
        {
            return &m[..m.len() - 11];
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_table_parses_and_has_the_main_models() {
        let file: PriceFile = serde_json::from_str(SHIPPED).expect("shipped prices.json parses");
        assert!(file.models.len() > 100);
        let t = PriceTable::shipped();
        for m in ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "claude-sonnet-4-5"] {
            assert!(t.lookup(m).is_some(), "{m} has no price");
        }
    }

    #[test]
    fn cost_follows_the_contract_formula() {
        let p = Prices {
            input: 3e-6,
            output: 15e-6,
            cache_read: Some(0.3e-6),
            cache_write: Some(3.75e-6),
            ..Prices::flat(0.0, 0.0)
        };
        // 1000 input of which 200 cached, 100 written; 50 output.
        let c = p.cost(1000, 50, 200, 100);
        let want = 700.0 * 3e-6 + 200.0 * 0.3e-6 + 100.0 * 3.75e-6 + 50.0 * 15e-6;
        assert!((c - want).abs() < 1e-12, "{c} vs {want}");
        // Missing cache prices fall back to the input price.
        let p = Prices::flat(1e-6, 2e-6);
        assert!((p.cost(10, 10, 5, 0) - (10e-6 + 20e-6)).abs() < 1e-15);
    }

    #[test]
    fn tiers_long_context_and_reasoning() {
        let t = PriceTable::shipped();
        let g = t.lookup("gemini-2.5-pro").expect("gemini-2.5-pro priced");
        let lc = g.long_context.as_ref().expect("long-context prices");
        let small = Use { input: 1000, output: 100, ..Default::default() };
        let big = Use { input: 300_000, output: 100, ..Default::default() };
        assert!((g.cost_of(&small) - (1000.0 * g.input + 100.0 * g.output)).abs() < 1e-15);
        assert!((g.cost_of(&big) - (300_000.0 * lc.input + 100.0 * lc.output)).abs() < 1e-12);
        let o = t.lookup("gpt-4o").unwrap();
        let batch = Use { input: 1000, output: 100, tier: Some("batch"), ..Default::default() };
        let std = Use { input: 1000, output: 100, tier: Some("default"), ..Default::default() };
        assert!((o.cost_of(&batch) * 2.0 - o.cost_of(&std)).abs() < 1e-15, "batch is half price for gpt-4o");
        let unknown_tier = Use { tier: Some("scale"), ..std };
        assert_eq!(o.cost_of(&unknown_tier), o.cost_of(&std));
        let mut r = Prices::flat(1e-6, 4e-6);
        r.reasoning = Some(8e-6);
        let u = Use { input: 0, output: 100, reasoning: 40, ..Default::default() };
        assert!((r.cost_of(&u) - (60.0 * 4e-6 + 40.0 * 8e-6)).abs() < 1e-15);
    }

    /// gpt-realtime: text in 4e-6, cached 4e-7 (audio too), audio in 3.2e-5,
    /// text out 1.6e-5, audio out 6.4e-5.
    #[test]
    fn audio_parts_are_priced_at_audio_rates() {
        let t = PriceTable::shipped();
        let p = t.lookup("gpt-realtime").expect("gpt-realtime priced");
        assert_eq!((p.audio_input, p.audio_output, p.audio_cache_read), (Some(3.2e-5), Some(6.4e-5), Some(4e-7)));
        // 1000 in (600 audio, of which 100 cached; 300 cached in all), 500 out (400 audio).
        let u = Use {
            input: 1000,
            cached: 300,
            audio_input: 600,
            audio_cached: 100,
            output: 500,
            audio_output: 400,
            ..Default::default()
        };
        let want = 200.0 * 4e-6 + 500.0 * 3.2e-5 + 200.0 * 4e-7 + 100.0 * 4e-7 + 100.0 * 1.6e-5 + 400.0 * 6.4e-5;
        assert!((p.cost_of(&u) - want).abs() < 1e-12, "{} != {want}", p.cost_of(&u));
        // No audio: text prices; a model without audio prices prices audio as text.
        let text = Use { audio_input: 0, audio_cached: 0, audio_output: 0, ..u };
        assert!((p.cost_of(&text) - p.cost(1000, 500, 300, 0)).abs() < 1e-12);
        let flat = Prices::flat(1e-6, 2e-6);
        assert!((flat.cost_of(&u) - flat.cost_of(&text)).abs() < 1e-15);
        // Parts larger than their wholes are clipped, never priced twice.
        let odd =
            Use { input: 10, audio_input: 50, audio_cached: 40, output: 1, audio_output: 9, ..Default::default() };
        assert!((p.cost_of(&odd) - (10.0 * 3.2e-5 + 6.4e-5)).abs() < 1e-12);
    }

    #[test]
    fn lookup_strips_bedrock_region_prefixes() {
        let f = std::env::temp_dir().join(format!("tt-prices-region-{}.json", std::process::id()));
        std::fs::write(&f, r#"{"version":"t","models":{"anthropic.test-v1:0":{"input":1e-6,"output":2e-6}}}"#).unwrap();
        let t = PriceTable::empty().with_overrides(&f).unwrap();
        assert!(t.lookup("anthropic.test-v1:0").is_some());
        assert!(t.lookup("us.anthropic.test-v1:0").is_some());
        assert!(t.lookup("global.anthropic.test-v1:0").is_some());
        assert!(t.lookup("xx.anthropic.test-v1:0").is_none());
        assert!(t.lookup("us.").is_none());
    }

    #[test]
    fn lookup_strips_prefix_and_dates() {
        let t = PriceTable::shipped();
        let base = t.lookup("gpt-4o").unwrap().clone();
        assert_eq!(t.lookup("openai/gpt-4o"), Some(&base));
        assert_eq!(t.lookup("GPT-4o"), Some(&base));
        assert_eq!(strip_date_suffix("gpt-4o-2099-08-06"), "gpt-4o");
        assert_eq!(strip_date_suffix("claude-x-20991231"), "claude-x");
        assert_eq!(strip_date_suffix("gpt-4o"), "gpt-4o");
        // Found by the pipeline fuzz target: multi-byte characters near the end.
        assert_eq!(
            strip_date_suffix("model-\u{fffd}\u{fffd}\u{fffd}\u{fffd}"),
            "model-\u{fffd}\u{fffd}\u{fffd}\u{fffd}"
        );
        assert!(t.lookup("gpt-4o-20\u{fffd}-08-06").is_none());
        assert!(t.lookup("no-such-model-xyz").is_none());
    }

    #[test]
    fn overrides_replace_and_add() {
        let dir = std::env::temp_dir().join(format!("tt-prices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.json");
        std::fs::write(&f, r#"{"version":"mine","models":{"gpt-4o":{"input":1.0,"output":2.0},"my-model":{"input":0.5,"output":0.5}}}"#).unwrap();
        let t = PriceTable::shipped().with_overrides(&f).unwrap();
        assert_eq!(t.lookup("gpt-4o").unwrap().input, 1.0);
        assert_eq!(t.lookup("my-model").unwrap().output, 0.5);
        assert!(t.version().ends_with("+mine"));
        std::fs::write(&f, "{not json").unwrap();
        assert!(matches!(PriceTable::shipped().with_overrides(&f), Err(PriceError::Parse { .. })));
        assert!(matches!(
            PriceTable::shipped().with_overrides(&dir.join("missing.json")),
            Err(PriceError::Read { .. })
        ));
    }
}
