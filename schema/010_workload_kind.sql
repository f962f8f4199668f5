-- The kind of a call's workload (Deployment, StatefulSet, DaemonSet, CronJob,
-- Job, or Pod when it has no owner), beside its name (docs/record.md).
ALTER TABLE {db}.{table} {on_cluster} ADD COLUMN IF NOT EXISTS workload_kind LowCardinality(Nullable(String));
