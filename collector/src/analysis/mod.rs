//! The assessment of a window of stored calls, computed in ClickHouse: the
//! report, `baseline save` and `report --baseline` read aggregates (GROUP BYs
//! per model, service, prompt, prefix or conversation hash), never the calls,
//! so their memory does not grow with the window (docs/performance.md).
//!
//! The window's calls are first copied once into a scratch table with what
//! the detectors read of each call's features already extracted from its
//! JSON (`Window::open`); every query then reads that narrow table, and the
//! table is dropped at the end (`Window::close`). The event crate turns the
//! aggregates into the same documents as from records (`Facts`, the
//! opportunities' `evidence`, `roadmap::plan_of`, `compare::compare_of`):
//! tests/tests/report_from_clickhouse.rs checks both give the same numbers.
use clickhouse::Client;
use tokentap_event::facts::Facts;
use tokentap_event::opportunities::{Opportunity, Thresholds};
use tokentap_event::roadmap::{self, Measured, RoadmapItem, Scoped};
use tokentap_event::PriceTable;

mod detect;
mod facts;
mod measure;

pub type Result<T> = std::result::Result<T, clickhouse::error::Error>;

#[derive(clickhouse::Row, serde::Serialize)]
struct ScopeKey<'a> {
    key: &'a str,
}

/// What each query reads of a call; `ok` marks the calls the detectors and
/// the roadmap count (no status, or 2xx), as `opportunities::detect` does.
const SCRATCH: &str = "
SELECT
    toUnixTimestamp64Micro(ts) AS us,
    toInt64(toUnixTimestamp(ts)) AS secs,
    provider, toString(model) AS model,
    coalesce(response_model, request_model, '') AS dmodel,
    toString(service) AS service, feature, end_user, comm, status, stream, duration_ms, ttft_ms,
    input_tokens AS input, output_tokens AS output, cached_input_tokens AS cached,
    cache_write_tokens AS cache_write, cost_usd AS cost,
    toUInt8(status IS NULL OR (assumeNotNull(status) >= 200 AND assumeNotNull(status) < 300)) AS ok,
    toUInt8(features != '') AS has_f,
    JSONExtract(features, 'prompt_hash', 'Nullable(String)') AS prompt_hash,
    JSONExtract(features, 'simhash', 'Nullable(String)') AS simhash,
    JSONExtract(features, 'prefix_hash', 'Nullable(String)') AS prefix_hash,
    JSONExtract(features, 'prefix_tokens', 'Nullable(UInt64)') AS prefix_tokens,
    JSONExtract(features, 'conversation_hash', 'Nullable(String)') AS conv,
    JSONExtract(features, 'message_count', 'UInt32') AS message_count,
    JSONExtract(features, 'embedding_inputs', 'Nullable(UInt32)') AS embedding_inputs,
    JSONExtract(features, 'max_tokens', 'Nullable(UInt64)') AS max_tokens,
    JSONExtract(features, 'minify_saved_tokens', 'Nullable(UInt64)') AS minify,
    JSONExtract(features, 'duplicate_chunk_share', 'Float64') AS dup_chunk,
    JSONExtract(features, 'tool_calls', 'Array(Tuple(name String, args_hash String))') AS tools,
    toUInt32(if(empty(tools), 0, arrayMax(arrayMap(x -> countEqual(tools, x), tools)))) AS max_repeat,
    if(empty(tools), CAST(NULL, 'Nullable(String)'), tools[1].1) AS first_tool,
    if(service != '', toString(service), ifNull(comm, '')) AS sender,
    if(prefix_hash IS NOT NULL, concat('prefix:', assumeNotNull(prefix_hash)),
       concat('service:', toString(service), '|', ifNull(feature, ''))) AS work_key
FROM llm_calls FINAL
WHERE ts >= fromUnixTimestamp64Micro(?) AND ts <= fromUnixTimestamp64Micro(?)";

/// Bytes a GROUP BY or a sort may hold in memory before it spills to disk:
/// grouping 100 M calls by prompt hash must not take the server's memory.
const SPILL_BYTES: &str = "2000000000";

/// A window of calls copied to a scratch table.
pub struct Window {
    client: Client,
    table: String,
}

impl Window {
    /// Copies the calls of `[since_us, until_us]` (microseconds) to a scratch table.
    pub async fn open(client: &Client, since_us: i64, until_us: i64) -> Result<Window> {
        let client = client
            .clone()
            .with_setting("max_bytes_before_external_group_by", SPILL_BYTES)
            .with_setting("max_bytes_before_external_sort", SPILL_BYTES);
        let table = format!("tokentap_window_{}", uuid::Uuid::new_v4().simple());
        let sql = format!("CREATE TABLE {table} ENGINE = MergeTree ORDER BY tuple() AS {SCRATCH}");
        client.query(&sql).bind(since_us).bind(until_us).execute().await?;
        Ok(Self { client, table })
    }

    /// Drops the scratch table.
    pub async fn close(self) -> Result<()> {
        self.client.query(&format!("DROP TABLE IF EXISTS {}", self.table)).execute().await
    }

    /// A roadmap item's scope (up to `MAX_SCOPE_KEYS` keys) as a table of
    /// one `key` column: bound into the query's text it could pass the
    /// server's `max_query_size` (256 KiB by default). Dropped with [`Self::drop_scope`].
    async fn scope_table(&self, keys: &[String]) -> Result<String> {
        let name = format!("{}_scope_{}", self.table, uuid::Uuid::new_v4().simple());
        self.client.query(&format!("CREATE TABLE {name} (key String) ENGINE = Memory")).execute().await?;
        if !keys.is_empty() {
            let mut insert = self.client.insert::<ScopeKey>(&name).await?;
            for key in keys {
                insert.write(&ScopeKey { key }).await?;
            }
            insert.end().await?;
        }
        Ok(name)
    }

    async fn drop_scope(&self, name: &str) -> Result<()> {
        self.client.query(&format!("DROP TABLE IF EXISTS {name}")).execute().await
    }

    /// A query over the scratch table: `{t}` in `sql` names it.
    fn query(&self, sql: &str) -> clickhouse::query::Query {
        self.client.query(&sql.replace("{t}", &self.table))
    }

    /// Calls in the window.
    pub async fn calls(&self) -> Result<u64> {
        self.query("SELECT count() FROM {t}").fetch_one().await
    }

    /// The window's [`Facts`].
    pub async fn facts(&self) -> Result<Facts> {
        facts::facts(self).await
    }

    /// The Opportunity Register, ranked (`opportunities::detect` in ClickHouse).
    pub async fn detect(&self, facts: &Facts, prices: &PriceTable, t: &Thresholds) -> Result<Vec<Opportunity>> {
        detect::detect(self, facts, prices, t).await
    }

    /// A roadmap item's metric on this window (`roadmap::measure`).
    pub async fn measure(&self, item: &RoadmapItem) -> Result<Measured> {
        measure::measure(self, item.kind, &item.scope).await
    }

    /// The Remediation Roadmap of this window's register (`roadmap::plan`).
    pub async fn plan(&self, facts: &Facts, opps: &[Opportunity]) -> Result<Vec<RoadmapItem>> {
        let mut scoped: Vec<Scoped> = Vec::with_capacity(opps.len());
        for o in opps {
            scoped.push(measure::scoped(self, o).await?);
        }
        let (_, until, _) = facts.span();
        Ok(roadmap::plan_of(opps, &scoped, facts.window().1, &until))
    }
}

/// A window's facts, register and roadmap, built in ClickHouse.
pub struct Assessment {
    pub facts: Facts,
    pub opportunities: Vec<Opportunity>,
    pub roadmap: Vec<RoadmapItem>,
}

impl Window {
    /// Facts, register and roadmap, in that order (each needs the one before).
    pub async fn assess(&self, prices: &PriceTable, t: &Thresholds) -> Result<Assessment> {
        let facts = self.facts().await?;
        let opportunities = self.detect(&facts, prices, t).await?;
        let roadmap = self.plan(&facts, &opportunities).await?;
        Ok(Assessment { facts, opportunities, roadmap })
    }
}
