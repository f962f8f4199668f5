//! tokentap collector: the agents' ingest endpoint, the ClickHouse schema and
//! writer, and the report read back from ClickHouse.
pub mod dedup;
pub mod metrics;
pub mod schema;
pub mod server;
pub mod store;
pub mod tls;
