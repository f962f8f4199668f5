-- LLM traffic by whether tokentap could read it (docs/record.md, "LLM traffic
-- rows"): per agent interval, process, provider host and verdict, the
-- connections first judged and the socket bytes moved. Rows are deltas: sum
-- them. ReplacingMergeTree on row_id, like llm_calls: a row delivered twice
-- collapses at merge time (FINAL before that).
-- Placeholders: {db}, {on_cluster}, {traffic_table} (llm_traffic, or
-- llm_traffic_local on a cluster), {traffic_engine}, {ttl_days}.
CREATE TABLE IF NOT EXISTS {db}.{traffic_table} {on_cluster}
(
    row_id UUID,
    -- The end of the interval.
    ts DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    first_seen DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    last_seen DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    provider_host LowCardinality(String),
    provider LowCardinality(String),
    decoded Bool,
    -- The capture method that read it ('' when not decoded).
    capture LowCardinality(String),
    -- Why it was not read ('' when decoded).
    reason LowCardinality(String),
    reason_detail Nullable(String) CODEC(ZSTD(1)),
    connections UInt64,
    bytes_sent UInt64,
    bytes_received UInt64,
    pid Nullable(UInt32),
    comm LowCardinality(Nullable(String)),
    exe LowCardinality(Nullable(String)),
    container_id Nullable(String) CODEC(ZSTD(1)),
    pod Nullable(String) CODEC(ZSTD(1)),
    -- Grouping keys are '' when unknown (keys can't be Nullable).
    namespace LowCardinality(String),
    workload LowCardinality(String),
    service LowCardinality(String),
    cluster LowCardinality(String),
    inserted_at DateTime DEFAULT now()
)
ENGINE = {traffic_engine}(inserted_at)
PARTITION BY toDate(ts)
ORDER BY (namespace, service, provider_host, toStartOfHour(ts), row_id)
TTL toDateTime(ts) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
