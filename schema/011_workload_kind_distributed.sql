-- Cluster only: the Distributed table gets the column too.
-- {cluster_only}
ALTER TABLE {db}.llm_calls {on_cluster} ADD COLUMN IF NOT EXISTS workload_kind LowCardinality(Nullable(String));
