-- Cluster only: the Distributed table gets the columns too.
-- {cluster_only}
ALTER TABLE {db}.llm_calls {on_cluster} ADD COLUMN IF NOT EXISTS features String DEFAULT '';
ALTER TABLE {db}.llm_calls {on_cluster} ADD COLUMN IF NOT EXISTS service_tier LowCardinality(Nullable(String));
