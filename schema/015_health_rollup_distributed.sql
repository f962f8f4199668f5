-- Cluster only: the query-facing names of the health and ingest rollups.
-- {cluster_only}
CREATE TABLE IF NOT EXISTS {db}.llm_health_1h {on_cluster} AS {db}.{health_1h}
ENGINE = Distributed({cluster}, {db}, {health_1h});
CREATE TABLE IF NOT EXISTS {db}.llm_ingest_1h {on_cluster} AS {db}.{ingest_1h}
ENGINE = Distributed({cluster}, {db}, {ingest_1h});
