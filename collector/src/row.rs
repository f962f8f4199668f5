//! What a kind of row is to the collector: the wire form agents send
//! (`tokentap_event::wire::WireRow`), its table, its dedup key and time, and
//! which admission queue and counters it uses. The endpoint, admission,
//! writer and store are written once over this trait; a row kind is one
//! implementation (the call records' [`CallRow`], the LLM traffic rows'
//! [`TrafficRow`](crate::traffic::TrafficRow)).
use clickhouse::{RowOwned, RowWrite};
use serde::Serialize;
use tokentap_event::wire::WireRow;

use crate::metrics::{Metrics, RowCounters};
use crate::server::{Lane, Shared};
use crate::store::CallRow;

pub trait StoredRow: RowOwned + RowWrite + Serialize + Clone + Send + Sync + std::fmt::Debug + 'static {
    /// What agents send.
    type Wire: WireRow + Send + 'static;
    /// Where rows are inserted (the Distributed table on a cluster).
    const TABLE: &'static str;
    /// The UUID column that identifies a row end to end.
    const ID_COLUMN: &'static str;
    /// Rows carry a call's time: the record-lag histogram observes them.
    const LAG: bool;
    /// A checked wire row as stored, with the agent's cluster name.
    fn from_wire(w: Self::Wire, cluster: &str) -> Self;
    fn id(&self) -> u128;
    /// Microseconds since the epoch: the row's partition (day).
    fn ts(&self) -> i64;
    /// Its admission queue and writer.
    fn lane(shared: &Shared) -> &Lane<Self>;
    /// Its counters.
    fn counters(m: &Metrics) -> RowCounters<'_>;
    /// Rows this replica has just inserted (the call rows feed the spend counters).
    fn inserted(_m: &Metrics, _rows: &[Self]) {}
    /// New rows about to be inserted, once each (the call rows get their
    /// repeats: [`crate::repeats`]).
    fn arriving(_shared: &Shared, _rows: &mut [Self]) {}
    /// The rows of a batch worth storing (all, unless the same things reach
    /// the collector another way: see [`crate::otlp::Otlp::screen_records`]).
    fn screen(_shared: &Shared, rows: Vec<Self>) -> impl std::future::Future<Output = Vec<Self>> + Send {
        std::future::ready(rows)
    }
}

impl StoredRow for CallRow {
    type Wire = tokentap_event::LlmCall;
    const TABLE: &'static str = "llm_calls";
    const ID_COLUMN: &'static str = "event_id";
    const LAG: bool = true;

    fn from_wire(w: Self::Wire, cluster: &str) -> Self {
        CallRow::from_record(w, cluster)
    }

    fn id(&self) -> u128 {
        self.event_id.as_u128()
    }

    fn ts(&self) -> i64 {
        self.ts
    }

    fn lane(shared: &Shared) -> &Lane<Self> {
        &shared.calls
    }

    fn counters(m: &Metrics) -> RowCounters<'_> {
        m.records()
    }

    fn inserted(m: &Metrics, rows: &[Self]) {
        m.spend.add(rows);
    }

    fn arriving(shared: &Shared, rows: &mut [Self]) {
        shared.repeats.lock().unwrap_or_else(|e| e.into_inner()).mark(rows, &shared.metrics.repeats);
    }

    async fn screen(shared: &Shared, rows: Vec<Self>) -> Vec<Self> {
        shared.otlp.screen_records_across(rows, &shared.metrics).await
    }
}
