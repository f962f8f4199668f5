-- Cluster only: the traffic table queries and inserts use, spread over the shards.
-- {cluster_only}
CREATE TABLE IF NOT EXISTS {db}.llm_traffic {on_cluster} AS {db}.{traffic_table}
ENGINE = Distributed({cluster}, {db}, {traffic_table}, cityHash64(row_id));
