-- Hourly rollups for the four Opportunities panels that used to group every
-- call of the range by a prompt, prefix or conversation hash (23 s to over 60 s
-- on 100 M calls over 30 days, docs/performance.md).
--
-- Repeats need history, so the collector finds them as rows arrive
-- (collector/src/repeats.rs) and stores what it found on the row:
--   prompt_repeat             earlier calls of the same service, model and
--                             prompt hash this collector saw (0: the first, or
--                             no prompt hash, or an embeddings call);
--   conversation_turn         the call's turn in its conversation (service,
--                             model, conversation hash), 0 without one;
--   conversation_first_input  input tokens of the conversation's first turn
--                             that had a usage;
--   conversation_growing      1 when the call is at turn 4 or later with more
--                             than twice those input tokens, 2 on the first
--                             such call of its conversation.
-- The rollups then need no per-hash rows: llm_waste_1h is per hour, service
-- and model; llm_prefixes_1h keeps the prefix hash, but only of calls with a
-- cacheable prefix (1,024 tokens or more) sent without a cache hit, and
-- prefixes are few (system prompts, tool definitions).
--
-- Rows stored before this migration are backfilled as 014 does: the views
-- count inserts from {upgrade_at} on, the INSERTs below the rows inserted
-- before it, finding their repeats and conversation turns in ClickHouse in
-- the order of their timestamps (a one-time grouping by prompt and
-- conversation hash, as the old panels did on every refresh).
ALTER TABLE {db}.{table} {on_cluster}
    ADD COLUMN IF NOT EXISTS prompt_repeat UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS conversation_turn UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS conversation_first_input UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS conversation_growing UInt8 DEFAULT 0;

CREATE TABLE IF NOT EXISTS {db}.{waste_1h} {on_cluster}
(
    t DateTime('UTC'),
    cluster LowCardinality(String),
    namespace LowCardinality(String),
    service LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    -- Calls repeating an earlier call's prompt (response caching), the
    -- prompts repeated (each counted at its first repeat), their cost.
    repeat_calls SimpleAggregateFunction(sum, UInt64),
    repeated_prompts SimpleAggregateFunction(sum, UInt64),
    repeat_cost_usd SimpleAggregateFunction(sum, Float64),
    -- Calls of growing conversations (conversation_growing > 0), the
    -- conversations (counted at their first such call), their input tokens,
    -- the input tokens above each conversation's first turn, their cost and
    -- the latest turn seen.
    growing_calls SimpleAggregateFunction(sum, UInt64),
    growing_conversations SimpleAggregateFunction(sum, UInt64),
    growing_input_tokens SimpleAggregateFunction(sum, UInt64),
    growing_excess_tokens SimpleAggregateFunction(sum, UInt64),
    growing_cost_usd SimpleAggregateFunction(sum, Float64),
    longest_turn SimpleAggregateFunction(max, UInt32),
    -- Calls whose history repeats a tool call with the same arguments.
    loop_calls SimpleAggregateFunction(sum, UInt64),
    loop_cost_usd SimpleAggregateFunction(sum, Float64)
)
ENGINE = {agg_engine}
PARTITION BY toYYYYMM(t)
ORDER BY (t, cluster, namespace, service, provider, model)
TTL t + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{waste_1h}_mv {on_cluster} TO {db}.{waste_1h} AS
SELECT
    toStartOfHour(ts) AS t, cluster, namespace, service, provider, model,
    countIf(prompt_repeat > 0) AS repeat_calls,
    countIf(prompt_repeat = 1) AS repeated_prompts,
    sumIf(cost, prompt_repeat > 0) AS repeat_cost_usd,
    countIf(conversation_growing > 0) AS growing_calls,
    countIf(conversation_growing = 2) AS growing_conversations,
    sumIf(input, conversation_growing > 0) AS growing_input_tokens,
    sumIf(input - least(input, conversation_first_input), conversation_growing > 0) AS growing_excess_tokens,
    sumIf(cost, conversation_growing > 0) AS growing_cost_usd,
    maxIf(conversation_turn, conversation_growing > 0) AS longest_turn,
    countIf(looping) AS loop_calls,
    sumIf(cost, looping) AS loop_cost_usd
FROM
(
    SELECT ts, cluster, namespace, service, provider, model, prompt_repeat, conversation_turn,
        conversation_first_input, conversation_growing,
        ifNull(cost_usd, 0) AS cost, ifNull(input_tokens, 0) AS input,
        features != '' AND length(JSONExtractArrayRaw(features, 'tool_calls'))
            > arrayUniq(JSONExtractArrayRaw(features, 'tool_calls')) AS looping
    FROM {db}.{table}
    WHERE now() >= toDateTime({upgrade_at})
)
GROUP BY t, cluster, namespace, service, provider, model;

CREATE TABLE IF NOT EXISTS {db}.{prefixes_1h} {on_cluster}
(
    t DateTime('UTC'),
    cluster LowCardinality(String),
    namespace LowCardinality(String),
    service LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    prefix String,
    prefix_tokens SimpleAggregateFunction(max, UInt64),
    calls SimpleAggregateFunction(sum, UInt64),
    cost_usd SimpleAggregateFunction(sum, Float64)
)
ENGINE = {agg_engine}
PARTITION BY toYYYYMM(t)
ORDER BY (t, cluster, namespace, service, provider, model, prefix)
TTL t + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{prefixes_1h}_mv {on_cluster} TO {db}.{prefixes_1h} AS
SELECT toStartOfHour(ts) AS t, cluster, namespace, service, provider, model, prefix,
    max(tokens) AS prefix_tokens, count() AS calls, sum(ifNull(cost_usd, 0)) AS cost_usd
FROM
(
    SELECT *, JSONExtractString(features, 'prefix_hash') AS prefix,
        JSONExtract(features, 'prefix_tokens', 'UInt64') AS tokens
    FROM {db}.{table}
    WHERE now() >= toDateTime({upgrade_at}) AND features != '' AND ifNull(cached_input_tokens, 0) = 0
)
WHERE tokens >= 1024
GROUP BY t, cluster, namespace, service, provider, model, prefix;

-- Backfill: prefixes and tool loops are per call.
INSERT INTO {db}.{prefixes_1h}
SELECT toStartOfHour(ts) AS t, cluster, namespace, service, provider, model, prefix,
    max(tokens) AS prefix_tokens, count() AS calls, sum(ifNull(cost_usd, 0)) AS cost_usd
FROM
(
    SELECT *, JSONExtractString(features, 'prefix_hash') AS prefix,
        JSONExtract(features, 'prefix_tokens', 'UInt64') AS tokens
    FROM {db}.{table} FINAL
    WHERE inserted_at < toDateTime({upgrade_at}) AND features != '' AND ifNull(cached_input_tokens, 0) = 0
)
WHERE tokens >= 1024
GROUP BY t, cluster, namespace, service, provider, model, prefix;

INSERT INTO {db}.{waste_1h} (t, cluster, namespace, service, provider, model, loop_calls, loop_cost_usd)
SELECT toStartOfHour(ts) AS t, cluster, namespace, service, provider, model, count(), sum(ifNull(cost_usd, 0))
FROM {db}.{table} FINAL
WHERE inserted_at < toDateTime({upgrade_at}) AND features != ''
    AND length(JSONExtractArrayRaw(features, 'tool_calls')) > arrayUniq(JSONExtractArrayRaw(features, 'tool_calls'))
GROUP BY t, cluster, namespace, service, provider, model;

-- Backfill: repeated prompts, in timestamp order per service, model and prompt.
INSERT INTO {db}.{waste_1h} (t, cluster, namespace, service, provider, model, repeat_calls, repeated_prompts,
    repeat_cost_usd)
SELECT toStartOfHour(c.1) AS t, c.2 AS cluster, c.3 AS namespace, service, c.4 AS provider, model,
    count(), countIf(i = 1), sum(c.5)
FROM
(
    SELECT service, model, arraySlice(arraySort(x -> x.1, groupArray((ts, cluster, namespace, provider,
        ifNull(cost_usd, 0)))), 2) AS repeats
    FROM
    (
        SELECT *, JSONExtractString(features, 'prompt_hash') AS prompt
        FROM {db}.{table} FINAL
        WHERE inserted_at < toDateTime({upgrade_at}) AND features != ''
            AND isNull(JSONExtract(features, 'embedding_inputs', 'Nullable(UInt32)'))
    )
    WHERE prompt != ''
    GROUP BY service, model, prompt
    HAVING count() > 1
)
ARRAY JOIN repeats AS c, arrayEnumerate(repeats) AS i
GROUP BY t, cluster, namespace, service, provider, model;

-- Backfill: growing conversations, in timestamp order per service, model and
-- conversation.
INSERT INTO {db}.{waste_1h} (t, cluster, namespace, service, provider, model, growing_calls,
    growing_conversations, growing_input_tokens, growing_excess_tokens, growing_cost_usd, longest_turn)
SELECT toStartOfHour(c.1) AS t, c.2 AS cluster, c.3 AS namespace, service, c.4 AS provider, model,
    count(), countIf(i = first_growing), sum(ifNull(c.6, 0)), sum(ifNull(c.6, 0) - least(ifNull(c.6, 0), first)),
    sum(c.5), max(toUInt32(i))
FROM
(
    SELECT service, model, turns, first, growing, arrayFirstIndex(g -> g, growing) AS first_growing
    FROM
    (
        SELECT service, model, turns, ifNull(arrayFirst(x -> isNotNull(x.6), turns).6, 0) AS first,
            arrayExists(x -> isNotNull(x.6), turns) AS known,
            arrayMap((x, i) -> known AND i >= 4 AND ifNull(x.6, 0) > 2 * first, turns, arrayEnumerate(turns)) AS growing
        FROM
        (
            SELECT service, model, arraySort(x -> x.1, groupArray((ts, cluster, namespace, provider,
                ifNull(cost_usd, 0), input_tokens))) AS turns
            FROM
            (
                SELECT *, JSONExtractString(features, 'conversation_hash') AS conversation
                FROM {db}.{table} FINAL
                WHERE inserted_at < toDateTime({upgrade_at}) AND features != ''
            )
            WHERE conversation != ''
            GROUP BY service, model, conversation
            HAVING count() >= 4
        )
    )
)
ARRAY JOIN turns AS c, growing AS g, arrayEnumerate(turns) AS i
WHERE g
GROUP BY t, cluster, namespace, service, provider, model
