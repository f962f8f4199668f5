//! LLM providers: recognise an API call from its request head ([`Rules`]) and
//! read model, usage and ids from the exchange ([`call()`]). Token counts are
//! normalised as the record contract says (docs/record.md).
//!
//! A provider is one file implementing [`Provider`], declared below and listed in
//! [`REGISTRY`]. What providers share lives in leaf modules they import (`api`,
//! `prompt`, `response`, `provider`), never here: this file only declares
//! modules and the registry.
pub mod api;
pub mod call;
pub mod features;
pub mod prompt;
pub mod provider;
pub mod response;
pub mod rules;

pub mod anthropic;
pub mod bedrock;
pub mod cohere;
pub mod gemini;
pub mod gemini_live;
pub mod ollama;
pub mod openai;
pub mod realtime;

/// Every provider, and every API shape by name.
pub mod registry {
    use super::provider::{Api, Provider};

    /// In path-matching order: the first provider that claims a path decides.
    /// Gemini's `…/models/{m}:{method}` and Bedrock's `/model/{id}/{op}` come
    /// first, as they reject unknown methods outright; Ollama's exact paths come
    /// before OpenAI's suffixes (see `rules.rs` tests).
    pub static REGISTRY: &[&dyn Provider] = &[
        &super::gemini::Gemini,
        &super::gemini_live::GeminiLive,
        &super::bedrock::Bedrock,
        &super::ollama::Ollama,
        &super::cohere::Cohere,
        &super::realtime::OpenAiRealtime,
        &super::openai::OpenAi,
        &super::anthropic::Anthropic,
    ];

    /// Every API shape of every provider.
    pub fn apis() -> impl Iterator<Item = Api> {
        REGISTRY.iter().flat_map(|&provider| provider.shapes().iter().map(move |&shape| Api { provider, shape }))
    }

    /// The shape a rule file names.
    pub fn api(name: &str) -> Option<Api> {
        apis().find(|a| a.name() == name)
    }
}

pub use api::{host_without_port, Parsed, ProviderError, Shape, Usage};
pub use call::{call, parse};
pub use provider::{Api, Endpoint, Provider};
pub use registry::REGISTRY;
pub use rules::{RuleSet, Rules, RulesError};

#[cfg(test)]
mod tests;
