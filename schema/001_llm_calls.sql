-- One row per LLM call (docs/record.md). ReplacingMergeTree on event_id: a call
-- delivered twice (a retried batch) collapses to one row at merge time; readers
-- use FINAL (or LIMIT 1 BY event_id) for exact counts before that.
-- Placeholders: {db}, {on_cluster}, {table} (llm_calls, or llm_calls_local on a
-- cluster), {engine} (ReplacingMergeTree or its Replicated twin), {ttl_days}.
CREATE TABLE IF NOT EXISTS {db}.{table} {on_cluster}
(
    event_id UUID,
    ts DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    duration_ms Nullable(Float64),
    ttft_ms Nullable(Float64),
    provider LowCardinality(String),
    operation LowCardinality(String),
    request_model LowCardinality(Nullable(String)),
    response_model LowCardinality(Nullable(String)),
    -- The priced model: the answer's, else the request's.
    model LowCardinality(String),
    stream Bool,
    status Nullable(UInt16),
    input_tokens Nullable(UInt64),
    output_tokens Nullable(UInt64),
    cached_input_tokens Nullable(UInt64),
    cache_write_tokens Nullable(UInt64),
    reasoning_tokens Nullable(UInt64),
    usage_source LowCardinality(Nullable(String)),
    cost_usd Nullable(Float64),
    response_id Nullable(String) CODEC(ZSTD(1)),
    request_id Nullable(String) CODEC(ZSTD(1)),
    server LowCardinality(Nullable(String)),
    path LowCardinality(Nullable(String)),
    http_version LowCardinality(Nullable(String)),
    tls_library LowCardinality(Nullable(String)),
    pid Nullable(UInt32),
    comm LowCardinality(Nullable(String)),
    exe LowCardinality(Nullable(String)),
    container_id Nullable(String) CODEC(ZSTD(1)),
    pod Nullable(String) CODEC(ZSTD(1)),
    -- Grouping keys are '' when unknown (keys can't be Nullable).
    namespace LowCardinality(String),
    workload LowCardinality(String),
    service LowCardinality(String),
    end_user Nullable(String) CODEC(ZSTD(1)),
    api_key_id LowCardinality(Nullable(String)),
    feature LowCardinality(Nullable(String)),
    labels Map(LowCardinality(String), String),
    -- Which cluster's agent sent it (agent --cluster-name).
    cluster LowCardinality(String),
    inserted_at DateTime DEFAULT now()
)
ENGINE = {engine}(inserted_at)
PARTITION BY toDate(ts)
ORDER BY (namespace, service, model, toStartOfHour(ts), event_id)
TTL toDateTime(ts) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
