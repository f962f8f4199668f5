//! One record per LLM API call. Field names are the contract (docs/record.md):
//! add fields, never rename them. Unknown values are `None` (JSON `null`).
use serde::{Deserialize, Serialize};

/// Where the token counts of a record come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The provider's response body reported them.
    Reported,
    /// Response headers reported them (e.g. Bedrock token-count headers).
    Headers,
    /// Counted with the model's tokenizer because the provider reported nothing.
    Estimated,
    /// An OpenTelemetry GenAI span said so (`gen_ai.usage.*`), ingested by the
    /// collector's `/v1/traces`: what the instrumented SDK reported.
    Otel,
}

impl UsageSource {
    /// The name the record contract spells it with (its JSON value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reported => "reported",
            Self::Headers => "headers",
            Self::Estimated => "estimated",
            Self::Otel => "otel",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmCall {
    pub event_id: String,
    pub ts: String,
    pub duration_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub provider: String,
    pub operation: String,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub stream: bool,
    pub status: Option<u16>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    /// Part of `input_tokens` that was audio (cached audio included), where
    /// the provider says (Realtime, Gemini Live): priced at audio rates.
    #[serde(default)]
    pub input_audio_tokens: Option<u64>,
    /// Part of `cached_input_tokens` (and of `input_audio_tokens`) that was audio.
    #[serde(default)]
    pub cached_audio_tokens: Option<u64>,
    /// Part of `output_tokens` that was audio.
    #[serde(default)]
    pub output_audio_tokens: Option<u64>,
    pub usage_source: Option<UsageSource>,
    pub cost_usd: Option<f64>,
    pub response_id: Option<String>,
    pub request_id: Option<String>,
    pub server: Option<String>,
    pub path: Option<String>,
    pub http_version: Option<String>,
    pub tls_library: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    /// The workload's kind: `Deployment`, `StatefulSet`, `DaemonSet`,
    /// `CronJob`, `Job`, or `Pod` when it has no owner.
    #[serde(default)]
    pub workload_kind: Option<String>,
    pub service: Option<String>,
    pub end_user: Option<String>,
    pub api_key_id: Option<String>,
    /// Product feature, from a configured request header.
    pub feature: Option<String>,
    /// The service tier the provider applied (`default`, `flex`, `priority`,
    /// `batch`), when it says; priced accordingly.
    #[serde(default)]
    pub service_tier: Option<String>,
    /// Configured labels (e.g. `team`, `cost-center`) copied from the process's
    /// OpenTelemetry resource attributes.
    pub labels: std::collections::BTreeMap<String, String>,
    /// What the opportunity detectors need to know about the prompt, computed at
    /// capture without keeping any of its text (hashes are keyed with the
    /// installation secret). Absent on records from older agents.
    #[serde(default)]
    pub features: Option<PromptFeatures>,
}

/// Privacy-preserving facts about a request's prompt (docs/record.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptFeatures {
    /// Keyed hash of the normalised full prompt (system, tools, messages or input).
    pub prompt_hash: Option<String>,
    /// Keyed hash of the static prefix: system prompt and tool definitions.
    pub prefix_hash: Option<String>,
    /// Tokens of that prefix (o200k_base).
    pub prefix_tokens: Option<u64>,
    /// Keyed hash of the conversation's start (system prompt + first user
    /// message): the calls of one multi-turn conversation share it.
    pub conversation_hash: Option<String>,
    /// 64-bit SimHash of the user content (hex): near-duplicate prompts differ in
    /// few bits.
    pub simhash: Option<String>,
    pub message_count: u32,
    /// Tool calls already in the conversation history: name and keyed hash of the arguments.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// Share of the prompt's characters that are JSON.
    pub json_share: f64,
    /// Share of the prompt's characters that are removable whitespace.
    pub whitespace_share: f64,
    /// Tokens saved by minifying the JSON and collapsing whitespace (measured
    /// with the tokenizer when either share is notable).
    pub minify_saved_tokens: Option<u64>,
    /// The request bounded its output (`max_tokens` and its synonyms).
    pub max_tokens: Option<u64>,
    /// Share of the prompt's characters in chunks repeated inside the prompt
    /// (retrieval results pasted twice).
    pub duplicate_chunk_share: f64,
    /// Inputs of an embeddings request (1: sent one at a time).
    pub embedding_inputs: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    pub args_hash: String,
}

impl LlmCall {
    /// A fresh UUIDv7 (time-ordered), the record's dedup key end to end.
    pub fn new_event_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// RFC 3339 UTC with microseconds, from nanoseconds since the Unix epoch.
    pub fn format_ts(unix_nanos: i128) -> String {
        let secs = unix_nanos.div_euclid(1_000_000_000) as i64;
        let nanos = unix_nanos.rem_euclid(1_000_000_000) as u32;
        chrono::DateTime::<chrono::Utc>::from_timestamp(secs, nanos)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    /// Fill `cost_usd` from `prices` (response model first, then request model).
    pub fn apply_cost(&mut self, prices: &crate::PriceTable) {
        let model = self.response_model.as_deref().or(self.request_model.as_deref());
        let (Some(model), Some(input), Some(output)) = (model, self.input_tokens, self.output_tokens) else {
            self.cost_usd = None;
            return;
        };
        let u = crate::cost::Use {
            input,
            output,
            cached: self.cached_input_tokens.unwrap_or(0),
            cache_write: self.cache_write_tokens.unwrap_or(0),
            reasoning: self.reasoning_tokens.unwrap_or(0),
            audio_input: self.input_audio_tokens.unwrap_or(0),
            audio_cached: self.cached_audio_tokens.unwrap_or(0),
            audio_output: self.output_audio_tokens.unwrap_or(0),
            tier: self.service_tier.as_deref(),
        };
        self.cost_usd = prices.lookup(model).map(|p| p.cost_of(&u));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_every_contract_field_with_nulls() {
        let r = LlmCall { provider: "openai".into(), operation: "chat".into(), ..Default::default() };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        let obj = v.as_object().unwrap();
        for f in [
            "event_id",
            "ts",
            "duration_ms",
            "ttft_ms",
            "provider",
            "operation",
            "request_model",
            "response_model",
            "stream",
            "status",
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "input_audio_tokens",
            "cached_audio_tokens",
            "output_audio_tokens",
            "usage_source",
            "cost_usd",
            "response_id",
            "request_id",
            "server",
            "path",
            "http_version",
            "tls_library",
            "pid",
            "comm",
            "exe",
            "container_id",
            "pod",
            "namespace",
            "workload",
            "workload_kind",
            "service",
            "end_user",
            "api_key_id",
            "feature",
            "labels",
        ] {
            assert!(obj.contains_key(f), "missing field {f}");
        }
        assert!(obj["input_tokens"].is_null());
    }

    #[test]
    fn usage_source_is_snake_case() {
        assert_eq!(serde_json::to_string(&UsageSource::Estimated).unwrap(), "\"estimated\"");
    }

    #[test]
    fn ts_is_rfc3339_utc() {
        assert_eq!(LlmCall::format_ts(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn event_ids_are_unique_uuids() {
        let a = LlmCall::new_event_id();
        let b = LlmCall::new_event_id();
        assert_ne!(a, b);
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 7);
    }
}
