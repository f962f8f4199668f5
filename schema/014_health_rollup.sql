-- Hourly rollups for the panels that used to scan llm_calls: capture method,
-- process, status and usage source per hour (Agent health, error responses,
-- data quality), the per-call waste signals that need no per-prompt grouping
-- (frontier models on short outputs, verbose formats, embeddings sent one at a
-- time: Opportunities), and the ingest delay. On 100 M calls these are ~1 % of
-- the rows (docs/performance.md).
--
-- Rows already stored are backfilled: the views count inserts from
-- {upgrade_at} on (the insert's own now(), so a row's explicit inserted_at does
-- not matter) and the backfill the rows inserted before it; the collector waits
-- for that second before backfilling, so no row is counted twice or missed. On
-- a cluster the backfill covers the shard of the node that migrates (the views
-- fill every shard from the upgrade on).
CREATE TABLE IF NOT EXISTS {db}.{health_1h} {on_cluster}
(
    t DateTime('UTC'),
    cluster LowCardinality(String),
    namespace LowCardinality(String),
    service LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    comm LowCardinality(String),
    -- The TLS library or runtime read ('' for plaintext sockets).
    capture LowCardinality(String),
    -- 0: no status (the call did not finish).
    status UInt16,
    -- '' when the call has no usage.
    usage_source LowCardinality(String),
    calls SimpleAggregateFunction(sum, UInt64),
    unpriced SimpleAggregateFunction(sum, UInt64),
    cost_usd SimpleAggregateFunction(sum, Float64),
    last_seen SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    -- Calls answered in at most 16 tokens (or capped there), not embeddings.
    short_calls SimpleAggregateFunction(sum, UInt64),
    short_cost_usd SimpleAggregateFunction(sum, Float64),
    -- Calls whose JSON a minifier would shrink by at least 20 tokens.
    verbose_calls SimpleAggregateFunction(sum, UInt64),
    verbose_saved_tokens SimpleAggregateFunction(sum, UInt64),
    -- Embedding calls with one input.
    single_embedding_calls SimpleAggregateFunction(sum, UInt64),
    single_embedding_cost_usd SimpleAggregateFunction(sum, Float64)
)
ENGINE = {agg_engine}
PARTITION BY toYYYYMM(t)
ORDER BY (t, cluster, namespace, service, provider, model, comm, capture, status, usage_source)
TTL t + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{health_1h}_mv {on_cluster} TO {db}.{health_1h} AS
SELECT
    hour AS t, cluster, namespace, service, provider, model,
    comm_name AS comm, capture_name AS capture, status_code AS status, usage AS usage_source,
    count() AS calls,
    countIf(no_price) AS unpriced,
    sum(cost) AS cost_usd,
    max(at) AS last_seen,
    countIf(short) AS short_calls,
    sumIf(cost, short) AS short_cost_usd,
    countIf(minify >= 20) AS verbose_calls,
    sumIf(minify, minify >= 20) AS verbose_saved_tokens,
    countIf(inputs = 1) AS single_embedding_calls,
    sumIf(cost, inputs = 1) AS single_embedding_cost_usd
FROM
(
    SELECT
        toStartOfHour(ts) AS hour, ts AS at, cluster, namespace, service, provider, model,
        ifNull(comm, '') AS comm_name, ifNull(tls_library, '') AS capture_name, ifNull(status, 0) AS status_code,
        ifNull(usage_source, '') AS usage, ifNull(cost_usd, 0) AS cost, isNull(cost_usd) AS no_price,
        if(features = '', NULL, JSONExtract(features, 'embedding_inputs', 'Nullable(UInt32)')) AS inputs,
        if(features = '', 0, ifNull(JSONExtract(features, 'minify_saved_tokens', 'Nullable(UInt64)'), 0)) AS minify,
        features != '' AND isNull(inputs) AND (ifNull(output_tokens, 0) <= 16
            OR ifNull(JSONExtract(features, 'max_tokens', 'Nullable(UInt64)'), 1000000) <= 16) AS short
    FROM {db}.{table}
    WHERE now() >= toDateTime({upgrade_at})
)
GROUP BY hour, cluster, namespace, service, provider, model, comm_name, capture_name, status_code, usage;

CREATE TABLE IF NOT EXISTS {db}.{ingest_1h} {on_cluster}
(
    t DateTime('UTC'),
    cluster LowCardinality(String),
    namespace LowCardinality(String),
    service LowCardinality(String),
    -- Seconds from the call to its row (inserted_at - ts).
    delay_s AggregateFunction(quantiles(0.5, 0.99), Float64)
)
ENGINE = {agg_engine}
PARTITION BY toYYYYMM(t)
ORDER BY (t, cluster, namespace, service)
TTL t + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{ingest_1h}_mv {on_cluster} TO {db}.{ingest_1h} AS
SELECT toStartOfHour(ts) AS t, cluster, namespace, service,
    quantilesState(0.5, 0.99)(dateDiff('millisecond', ts, inserted_at) / 1000) AS delay_s
FROM {db}.{table}
WHERE now() >= toDateTime({upgrade_at})
GROUP BY t, cluster, namespace, service;

INSERT INTO {db}.{health_1h}
SELECT
    hour AS t, cluster, namespace, service, provider, model,
    comm_name AS comm, capture_name AS capture, status_code AS status, usage AS usage_source,
    count() AS calls,
    countIf(no_price) AS unpriced,
    sum(cost) AS cost_usd,
    max(at) AS last_seen,
    countIf(short) AS short_calls,
    sumIf(cost, short) AS short_cost_usd,
    countIf(minify >= 20) AS verbose_calls,
    sumIf(minify, minify >= 20) AS verbose_saved_tokens,
    countIf(inputs = 1) AS single_embedding_calls,
    sumIf(cost, inputs = 1) AS single_embedding_cost_usd
FROM
(
    SELECT
        toStartOfHour(ts) AS hour, ts AS at, cluster, namespace, service, provider, model,
        ifNull(comm, '') AS comm_name, ifNull(tls_library, '') AS capture_name, ifNull(status, 0) AS status_code,
        ifNull(usage_source, '') AS usage, ifNull(cost_usd, 0) AS cost, isNull(cost_usd) AS no_price,
        if(features = '', NULL, JSONExtract(features, 'embedding_inputs', 'Nullable(UInt32)')) AS inputs,
        if(features = '', 0, ifNull(JSONExtract(features, 'minify_saved_tokens', 'Nullable(UInt64)'), 0)) AS minify,
        features != '' AND isNull(inputs) AND (ifNull(output_tokens, 0) <= 16
            OR ifNull(JSONExtract(features, 'max_tokens', 'Nullable(UInt64)'), 1000000) <= 16) AS short
    FROM {db}.{table} FINAL
    WHERE inserted_at < toDateTime({upgrade_at})
)
GROUP BY hour, cluster, namespace, service, provider, model, comm_name, capture_name, status_code, usage;

INSERT INTO {db}.{ingest_1h}
SELECT toStartOfHour(ts) AS t, cluster, namespace, service,
    quantilesState(0.5, 0.99)(dateDiff('millisecond', ts, inserted_at) / 1000) AS delay_s
FROM {db}.{table} FINAL
WHERE inserted_at < toDateTime({upgrade_at})
GROUP BY t, cluster, namespace, service;
