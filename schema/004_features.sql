-- Prompt features (hashes, shares, tool calls; never prompt text), as the
-- record's `features` JSON: the opportunity detectors read them. And the
-- service tier the provider applied (priced accordingly).
ALTER TABLE {db}.{table} {on_cluster} ADD COLUMN IF NOT EXISTS features String DEFAULT '' CODEC(ZSTD(3));
ALTER TABLE {db}.{table} {on_cluster} ADD COLUMN IF NOT EXISTS service_tier LowCardinality(Nullable(String));
