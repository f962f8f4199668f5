-- Saved baselines (`tokentap-collector baseline save NAME`): one JSON
-- document per name (tokentap_event::baseline::Baseline, docs/track.md) and
-- a few columns to list them by. Saving a name again replaces it (the newest
-- `saved_at` wins); deleting writes a row with `deleted = 1`. Readers use FINAL.
-- Small and not sharded: on a cluster every replica of every shard keeps the
-- whole table (one replication path without the shard macro).
CREATE TABLE IF NOT EXISTS {db}.baselines {on_cluster}
(
    name String,
    saved_at DateTime64(3, 'UTC'),
    since DateTime64(6, 'UTC'),
    until DateTime64(6, 'UTC'),
    calls UInt64,
    spend_usd Float64,
    opportunities UInt32,
    deleted UInt8,
    body String CODEC(ZSTD(3))
)
ENGINE = {baselines_engine}
ORDER BY name;
