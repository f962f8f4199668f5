//! What a sink is ([`Sink`]) and what a kind of sink declares to be
//! configured and opened ([`SinkKind`]; the kinds are listed in
//! `registry.rs`).
use std::io;
use std::sync::Arc;

use tokentap_event::{LlmCall, LlmTraffic};

use crate::stats::Stats;

/// Where records go. Called from the pipeline thread only.
pub trait Sink: Send {
    fn write(&mut self, record: &LlmCall) -> io::Result<()>;
    /// An LLM traffic row (connections to LLM API hosts, read or not). Sinks
    /// that keep only call records (the JSONL file and stdout, whose lines are
    /// the record contract) leave them out; the stats file lists blind spots.
    fn write_traffic(&mut self, _row: &LlmTraffic) -> io::Result<()> {
        Ok(())
    }
    /// Called after every ring-buffer drain, idle ones included.
    fn flush(&mut self) -> io::Result<()>;
    /// The agent is exiting since `since`: send what is left (the sink is
    /// dropped next). A sink that waits for a receiver counts its wait from
    /// `since`, so that the outputs' waits overlap rather than add up.
    fn closing(&mut self, _since: std::time::Instant) {}
}

/// What a sink is opened with.
pub struct SinkContext<'a> {
    /// The output's name, for logs: `[outputs.<name>]`'s, or the `--output` text.
    pub name: &'a str,
    pub stats: &'a Arc<Stats>,
}

/// One kind of sink: the `type` of an `[outputs.<name>]` section, the `NAME`
/// of `--output NAME[:ARG]`, how its settings are checked and how it opens.
/// A section reaches the kind without its `type` key.
pub trait SinkKind: Sync {
    fn name(&self) -> &'static str;
    /// How `--output` spells it, for help and errors: `jsonl:PATH`.
    fn usage(&self) -> &'static str;
    /// `--output NAME[:ARG]`'s ARG -> the section keys it stands for; None:
    /// not a valid ARG.
    fn section_from_spec(&self, arg: Option<&str>) -> Option<toml::Table>;
    /// Check a section: every key known, of the right type, values valid.
    /// The error is shown after the output's name.
    fn check(&self, section: &toml::Table) -> Result<(), String>;
    /// Open an output whose section `check` accepted.
    fn open(&self, section: &toml::Table, cx: &SinkContext<'_>) -> io::Result<Box<dyn Sink>>;
    /// Create the kind's counters in `stats` (at start, so that they show
    /// whether or not an output of the kind is configured).
    fn register_counters(&self, _stats: &Stats) {}
}

/// A section's settings as `T` (a serde struct, usually with
/// `deny_unknown_fields`), with the error on one line.
pub fn settings<T: serde::de::DeserializeOwned>(section: &toml::Table) -> Result<T, String> {
    section.clone().try_into().map_err(|e: toml::de::Error| e.to_string().trim_end().replace('\n', " "))
}
