-- Cluster only: the tables queries and inserts use, spread over the shards.
-- (Single node: nothing; the tables above already have these names.)
-- {cluster_only}
CREATE TABLE IF NOT EXISTS {db}.llm_calls {on_cluster} AS {db}.{table}
ENGINE = Distributed({cluster}, {db}, {table}, cityHash64(event_id));
CREATE TABLE IF NOT EXISTS {db}.llm_calls_1m {on_cluster} AS {db}.{rollup_1m}
ENGINE = Distributed({cluster}, {db}, {rollup_1m});
CREATE TABLE IF NOT EXISTS {db}.llm_calls_1h {on_cluster} AS {db}.{rollup_1h}
ENGINE = Distributed({cluster}, {db}, {rollup_1h});
