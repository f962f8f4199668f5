-- Prompt features (hashes, shares, tool calls; never prompt text), as the
-- record's `features` JSON: the opportunity detectors read them.
ALTER TABLE {db}.{table} {on_cluster} ADD COLUMN IF NOT EXISTS features String DEFAULT '' CODEC(ZSTD(3));
