//! Matching across collector replicas. Each replica's [`Matcher`](super::matcher::Matcher)
//! knows the calls that went through it (and, from its start, the last day's
//! rows); an agent's record and a span of one call may reach two replicas.
//! So before a replica stores what it can't match in memory, it asks
//! ClickHouse once for the other side's rows with the same response ids:
//!
//! - a span, when its hold is over: rows of agents (`usage_source` other
//!   than `otel`) -> the span is a duplicate of the agent's record;
//! - an agent's batch (its records with a response id): rows of spans
//!   (`usage_source = 'otel'`) -> the record is a duplicate of the span's
//!   row, which the rollups already counted (see docs/collector.md).
//!
//! One query per flush of held spans or per records batch (a batch whose
//! ids exceed [`MAX_ID_BYTES`] is split), bounded in time (`ts` within
//! [`MARGIN`] of the calls') so ClickHouse reads only those days'
//! partitions, and the `response_id_bf` skip index (migration 12) skips
//! granules without those ids. The records' check runs only while spans
//! were stored in the last day (a cheap count, refreshed at most every
//! `otlp_peer_refresh`). A failed or slow check never fails ingest: the
//! in-memory match decides alone, and the fallback is counted.
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Whose stored rows a check looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Agents' records (asked for held spans).
    Agents,
    /// Spans' rows (asked for agents' records).
    Spans,
}

/// A stored row of the other side: its provider, response id and event id.
#[derive(Clone, Debug, PartialEq, clickhouse::Row, serde::Deserialize)]
pub struct Found {
    pub provider: String,
    pub response_id: String,
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
}

/// How far around the calls' own timestamps a check looks: an agent's `ts`
/// (request's first byte) and a span's start differ by far less.
pub const MARGIN: Duration = Duration::from_secs(600);

/// Response id bytes in one query at most (ClickHouse's `max_query_size` is
/// 256 KiB by default): a larger batch is checked in a few queries.
pub const MAX_ID_BYTES: usize = 96 << 10;

/// How long a check may take before the in-memory match decides alone.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// One check: the other side's rows with these response ids, `ts` within
/// `[from_micros, to_micros]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lookup {
    pub side: Side,
    pub from_micros: i64,
    pub to_micros: i64,
    pub ids: Vec<String>,
}

impl Lookup {
    /// The checks for these calls (response id, `ts` in microseconds): one,
    /// unless the ids exceed [`MAX_ID_BYTES`]; none without a call. Ids are
    /// deduplicated.
    pub fn of<'a>(side: Side, calls: impl IntoIterator<Item = (&'a str, i64)>) -> Vec<Lookup> {
        let margin = MARGIN.as_micros() as i64;
        let mut out: Vec<Lookup> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0usize;
        for (id, ts) in calls {
            if id.is_empty() {
                continue;
            }
            let (from, to) = (ts.saturating_sub(margin), ts.saturating_add(margin));
            if !seen.insert(id) {
                // Asked already (in this or an earlier query): every query's
                // window covers this call too, so the one with the id does.
                for l in out.iter_mut() {
                    l.from_micros = l.from_micros.min(from);
                    l.to_micros = l.to_micros.max(to);
                }
                continue;
            }
            match out.last_mut() {
                Some(l) if bytes + id.len() <= MAX_ID_BYTES => {
                    l.from_micros = l.from_micros.min(from);
                    l.to_micros = l.to_micros.max(to);
                    l.ids.push(id.to_owned());
                    bytes += id.len();
                }
                _ => {
                    out.push(Lookup { side, from_micros: from, to_micros: to, ids: vec![id.to_owned()] });
                    bytes = id.len();
                }
            }
        }
        out
    }

    /// The query, with `?` for the bounds and the ids (bound in that order:
    /// the client escapes them).
    pub fn sql(&self) -> String {
        let source = match self.side {
            Side::Agents => "ifNull(usage_source, '') != 'otel'",
            Side::Spans => "usage_source = 'otel'",
        };
        format!(
            "SELECT provider, assumeNotNull(response_id) AS response_id, event_id FROM llm_calls \
             WHERE ts BETWEEN fromUnixTimestamp64Micro(toInt64(?), 'UTC') AND fromUnixTimestamp64Micro(toInt64(?), 'UTC') \
             AND response_id IN ? AND {source}"
        )
    }
}

/// Whether any span was stored in the last day: while none was, agents'
/// batches need no check.
pub const OTEL_ROWS_SQL: &str = "SELECT count() FROM (SELECT 1 FROM llm_calls \
     WHERE ts > now() - INTERVAL 1 DAY AND usage_source = 'otel' LIMIT 1)";

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the other replicas' rows are: ClickHouse, or a stand-in in tests.
pub trait Peers: Send + Sync + 'static {
    fn find<'a>(&'a self, q: &'a Lookup) -> BoxFuture<'a, Result<Vec<Found>, String>>;
    /// Spans' rows stored in the last day, 0 or 1 (any).
    fn otel_rows<'a>(&'a self) -> BoxFuture<'a, Result<u64, String>>;
}

impl Peers for clickhouse::Client {
    fn find<'a>(&'a self, q: &'a Lookup) -> BoxFuture<'a, Result<Vec<Found>, String>> {
        Box::pin(async move {
            self.query(&q.sql())
                .bind(q.from_micros)
                .bind(q.to_micros)
                .bind(&q.ids)
                .fetch_all::<Found>()
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn otel_rows<'a>(&'a self) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move { self.query(OTEL_ROWS_SQL).fetch_one::<u64>().await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_time_bounded_query_per_batch() {
        let m = MARGIN.as_micros() as i64;
        let l = Lookup::of(
            Side::Agents,
            [("chatcmpl-1", 1_000 * m), ("msg_2", 1_001 * m), ("chatcmpl-1", 999 * m), ("", 0)],
        );
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].ids, ["chatcmpl-1", "msg_2"], "each id once, none empty");
        assert_eq!((l[0].from_micros, l[0].to_micros), (998 * m, 1_002 * m), "the calls' times, widened by the margin");
        let sql = l[0].sql();
        assert!(
            sql.contains("ts BETWEEN fromUnixTimestamp64Micro(toInt64(?)") && sql.contains("response_id IN ?"),
            "{sql}"
        );
        assert!(sql.ends_with("ifNull(usage_source, '') != 'otel'"), "agents' rows: {sql}");
        let s = Lookup::of(Side::Spans, [("x", 0)]);
        assert!(s[0].sql().ends_with("usage_source = 'otel'"), "spans' rows");
        assert!(Lookup::of(Side::Spans, [("", 5)]).is_empty(), "nothing to check, no query");
    }

    #[test]
    fn a_huge_batch_is_split_within_the_query_size() {
        let ids: Vec<String> = (0..5000).map(|i| format!("chatcmpl-{i:040}")).collect();
        let l = Lookup::of(Side::Spans, ids.iter().map(|i| (i.as_str(), 0)));
        assert!(l.len() > 1 && l.len() < 5);
        assert_eq!(l.iter().map(|q| q.ids.len()).sum::<usize>(), 5000);
        assert!(l.iter().all(|q| q.ids.iter().map(String::len).sum::<usize>() <= MAX_ID_BYTES));
    }
}
