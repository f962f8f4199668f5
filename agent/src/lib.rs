//! tokentap agent: eBPF capture of LLM API calls.
//!
//! Data flows one way: [`probes`] (load and attach eBPF, [`discovery`] of TLS
//! libraries) -> [`capture`] (ring-buffer records -> per-connection streams) ->
//! [`http`] (requests paired with responses) -> [`providers`] (model, usage, ids)
//! -> [`attribution`] (who made the call) -> [`sinks`] (JSONL, stdout, collector).
//! [`pipeline`] wires the stages; [`run`] is the running agent.
pub mod attribution;
pub mod audit;
pub mod capture;
pub mod config;
pub mod coverage;
pub mod discovery;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod probes;
pub mod providers;
pub mod run;
pub mod sinks;
pub mod stats;
