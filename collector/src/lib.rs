//! tokentap collector: the agents' ingest endpoint, the ClickHouse schema and
//! writer, and the report read back from ClickHouse.
//!
//! Data flows one way: `serve` (connections) -> `server` (the endpoint: checks,
//! decodes) -> `admission` (new, stored or in-flight rows) -> `writer` (group
//! commit, retries, isolating bad rows; call rows get their repeats from
//! `repeats` there) -> `store` (rows, inserts, what an error means). Each kind of row (`row::StoredRow`: the call records, the LLM
//! traffic rows of `traffic`) takes that path with its own endpoint, queue
//! and table. OTLP trace exports (`otlp`: `/v1/traces`) become call rows
//! too, on the call records' path, matched with the agents' records so a call
//! seen both ways is stored once.
pub mod admission;
pub mod analysis;
pub mod baselines;
pub mod budgets;
pub mod calls;
pub mod dedup;
pub mod metrics;
pub mod otlp;
pub mod repeats;
pub mod row;
pub mod schema;
pub mod serve;
pub mod server;
pub mod spend;
pub mod store;
pub mod tls;
pub mod track;
pub mod traffic;
pub mod writer;
