//! Where records go: a JSONL file (appended, one record per line), stdout, a
//! tokentap collector ([`collector`]), or an OpenTelemetry receiver ([`otlp`]).
//! Records never contain prompt/completion text or credentials: the record type
//! has no field for them.
//!
//! Files, one concern each (children import leaves, never this file):
//! - `sink.rs`: the [`Sink`] and [`SinkKind`] traits;
//! - `registry.rs`: [`SINKS`], one line per kind, and the shorthand [`SinkFlags`];
//! - `output.rs`: [`OutputSpec`], `--output` / `[outputs.<name>]` resolution, [`open_all`];
//! - `line.rs`: `jsonl` and `stdout`;
//! - `collector/`: the collector sink (settings, HTTP transport, counters);
//! - `otlp/`: the OTLP sink (GenAI spans and metrics over OTLP/HTTP);
//! - `http_client.rs`: the HTTP client (TLS files, timeouts) both share;
//! - `spool/`: the durable spool and retry any batching sink can use.
pub mod collector;
pub mod http_client;
pub mod line;
pub mod otlp;
pub mod output;
pub mod registry;
pub mod sink;
pub mod spool;

pub use line::{jsonl, stdout, LineSink};
pub use output::{open_all, resolve, BadOutput, OpenError, OutputSpec, Sources};
pub use registry::{find, register_counters, SinkFlags, SINKS};
pub use sink::{Sink, SinkContext, SinkKind};
