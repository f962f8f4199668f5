-- Per-minute and per-hour rollups, fed by materialized views on every insert:
-- calls, errors, tokens, cost and latency quantile states by
-- provider/model/namespace/workload/service/cluster. Dashboards over long ranges
-- read these instead of the raw rows.
CREATE TABLE IF NOT EXISTS {db}.{rollup_1m} {on_cluster}
(
    t DateTime('UTC'),
    provider LowCardinality(String),
    model LowCardinality(String),
    namespace LowCardinality(String),
    workload LowCardinality(String),
    service LowCardinality(String),
    cluster LowCardinality(String),
    calls SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    rate_limited SimpleAggregateFunction(sum, UInt64),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    cached_input_tokens SimpleAggregateFunction(sum, UInt64),
    cost_usd SimpleAggregateFunction(sum, Float64),
    duration_ms AggregateFunction(quantilesIf(0.5, 0.9, 0.99), Float64, UInt8),
    ttft_ms AggregateFunction(quantilesIf(0.5, 0.9, 0.99), Float64, UInt8)
)
ENGINE = {agg_engine}
PARTITION BY toDate(t)
ORDER BY (t, provider, model, namespace, workload, service, cluster)
TTL t + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{rollup_1m}_mv {on_cluster} TO {db}.{rollup_1m} AS
SELECT
    toStartOfMinute(ts) AS t, provider, model, namespace, workload, service, cluster,
    count() AS calls,
    countIf(status >= 400) AS errors,
    countIf(status = 429) AS rate_limited,
    sum(ifNull(input_tokens, 0)) AS input_tokens,
    sum(ifNull(output_tokens, 0)) AS output_tokens,
    sum(ifNull(cached_input_tokens, 0)) AS cached_input_tokens,
    sum(ifNull(cost_usd, 0)) AS cost_usd,
    quantilesIfState(0.5, 0.9, 0.99)(ifNull(duration_ms, 0), isNotNull(duration_ms)) AS duration_ms,
    quantilesIfState(0.5, 0.9, 0.99)(ifNull(ttft_ms, 0), isNotNull(ttft_ms)) AS ttft_ms
FROM {db}.{table}
GROUP BY t, provider, model, namespace, workload, service, cluster;

CREATE TABLE IF NOT EXISTS {db}.{rollup_1h} {on_cluster} AS {db}.{rollup_1m}
ENGINE = {agg_engine}
PARTITION BY toYYYYMM(t)
ORDER BY (t, provider, model, namespace, workload, service, cluster)
TTL t + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{rollup_1h}_mv {on_cluster} TO {db}.{rollup_1h} AS
SELECT
    toStartOfHour(ts) AS t, provider, model, namespace, workload, service, cluster,
    count() AS calls,
    countIf(status >= 400) AS errors,
    countIf(status = 429) AS rate_limited,
    sum(ifNull(input_tokens, 0)) AS input_tokens,
    sum(ifNull(output_tokens, 0)) AS output_tokens,
    sum(ifNull(cached_input_tokens, 0)) AS cached_input_tokens,
    sum(ifNull(cost_usd, 0)) AS cost_usd,
    quantilesIfState(0.5, 0.9, 0.99)(ifNull(duration_ms, 0), isNotNull(duration_ms)) AS duration_ms,
    quantilesIfState(0.5, 0.9, 0.99)(ifNull(ttft_ms, 0), isNotNull(ttft_ms)) AS ttft_ms
FROM {db}.{table}
GROUP BY t, provider, model, namespace, workload, service, cluster;
