//! Numbered SQL migrations (`schema/NNN_*.sql`, compiled in), applied in order at
//! start and by `tokentap-collector migrate`, each once: applied versions are
//! recorded in `schema_migrations`. Single node or cluster (ON CLUSTER,
//! Replicated engines, Distributed tables), chosen by `--cluster`.
use clickhouse::Client;

pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (1, "llm_calls", include_str!("../../schema/001_llm_calls.sql")),
    (2, "rollups", include_str!("../../schema/002_rollups.sql")),
    (3, "distributed", include_str!("../../schema/003_distributed.sql")),
    (4, "features", include_str!("../../schema/004_features.sql")),
    (5, "features_distributed", include_str!("../../schema/005_features_distributed.sql")),
    (6, "audio_tokens", include_str!("../../schema/006_audio_tokens.sql")),
    (7, "audio_tokens_distributed", include_str!("../../schema/007_audio_tokens_distributed.sql")),
    (8, "llm_traffic", include_str!("../../schema/008_llm_traffic.sql")),
    (9, "llm_traffic_distributed", include_str!("../../schema/009_llm_traffic_distributed.sql")),
    (10, "workload_kind", include_str!("../../schema/010_workload_kind.sql")),
    (11, "workload_kind_distributed", include_str!("../../schema/011_workload_kind_distributed.sql")),
    (12, "response_id_index", include_str!("../../schema/012_response_id_index.sql")),
    (13, "baselines", include_str!("../../schema/013_baselines.sql")),
    (14, "health_rollup", include_str!("../../schema/014_health_rollup.sql")),
    (15, "health_rollup_distributed", include_str!("../../schema/015_health_rollup_distributed.sql")),
    (16, "waste_rollup", include_str!("../../schema/016_waste_rollup.sql")),
    (17, "waste_rollup_distributed", include_str!("../../schema/017_waste_rollup_distributed.sql")),
];

/// In a migration, the unix second from which its materialized views count
/// inserts; its backfill covers the rows inserted before (014_health_rollup.sql).
const UPGRADE_AT: &str = "{upgrade_at}";

#[derive(Clone, Debug)]
pub struct SchemaConfig {
    pub database: String,
    /// ClickHouse cluster name (remote_servers); None: single node.
    pub cluster: Option<String>,
    pub ttl_days: u32,
}

impl SchemaConfig {
    fn vars(&self) -> Vec<(&'static str, String)> {
        let db = self.database.clone();
        match &self.cluster {
            None => vec![
                ("db", db),
                ("on_cluster", String::new()),
                ("cluster", String::new()),
                ("table", "llm_calls".into()),
                ("rollup_1m", "llm_calls_1m".into()),
                ("rollup_1h", "llm_calls_1h".into()),
                ("health_1h", "llm_health_1h".into()),
                ("ingest_1h", "llm_ingest_1h".into()),
                ("waste_1h", "llm_waste_1h".into()),
                ("prefixes_1h", "llm_prefixes_1h".into()),
                ("engine", "ReplacingMergeTree".into()),
                ("agg_engine", "AggregatingMergeTree".into()),
                ("traffic_table", "llm_traffic".into()),
                ("traffic_engine", "ReplacingMergeTree".into()),
                ("baselines_engine", "ReplacingMergeTree(saved_at)".into()),
                ("ttl_days", self.ttl_days.to_string()),
            ],
            Some(c) => vec![
                ("db", db.clone()),
                ("on_cluster", format!("ON CLUSTER '{c}'")),
                ("cluster", format!("'{c}'")),
                ("table", "llm_calls_local".into()),
                ("rollup_1m", "llm_calls_1m_local".into()),
                ("rollup_1h", "llm_calls_1h_local".into()),
                ("health_1h", "llm_health_1h_local".into()),
                ("ingest_1h", "llm_ingest_1h_local".into()),
                ("waste_1h", "llm_waste_1h_local".into()),
                ("prefixes_1h", "llm_prefixes_1h_local".into()),
                (
                    "engine",
                    format!(
                        "ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/llm_calls', '{{replica}}')"
                    ),
                ),
                (
                    "agg_engine",
                    format!(
                        "ReplicatedAggregatingMergeTree('/clickhouse/tables/{{shard}}/{db}/{{table}}', '{{replica}}')"
                    ),
                ),
                ("traffic_table", "llm_traffic_local".into()),
                (
                    "traffic_engine",
                    format!(
                        "ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/llm_traffic', '{{replica}}')"
                    ),
                ),
                (
                    "baselines_engine",
                    format!(
                        "ReplicatedReplacingMergeTree('/clickhouse/tables/{db}/baselines', '{{replica}}', saved_at)"
                    ),
                ),
                ("ttl_days", self.ttl_days.to_string()),
            ],
        }
    }

    /// The statements of one migration for this deployment (empty when the
    /// migration does not apply, e.g. Distributed tables on a single node).
    pub fn render(&self, sql: &str) -> Vec<String> {
        if self.cluster.is_none() && sql.contains("{cluster_only}") {
            return Vec::new();
        }
        let mut text: String = sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
        for (k, v) in self.vars() {
            text = text.replace(&format!("{{{k}}}"), &v);
        }
        // The Replicated engine takes the version column after its two paths.
        if self.cluster.is_some() {
            text = text.replace("'{replica}')(inserted_at)", "'{replica}', inserted_at)");
        }
        text.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }
}

/// Apply what is missing; returns the versions applied now.
pub async fn migrate(client: &Client, cfg: &SchemaConfig) -> Result<Vec<u32>, clickhouse::error::Error> {
    let on = if let Some(c) = &cfg.cluster { format!(" ON CLUSTER '{c}'") } else { String::new() };
    client.query(&format!("CREATE DATABASE IF NOT EXISTS {}{on}", cfg.database)).execute().await?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {}.schema_migrations{on} (version UInt32, name String, \
             applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version",
            cfg.database
        ))
        .execute()
        .await?;
    let done: Vec<u32> = client
        .query(&format!("SELECT version FROM {}.schema_migrations ORDER BY version", cfg.database))
        .fetch_all()
        .await?;
    let mut applied = Vec::new();
    // A second after now, by the server's clock: views created in this run
    // count inserts from then on, backfills what came before.
    let upgrade_at: u32 = client.query("SELECT toUInt32(toUnixTimestamp(now()) + 1)").fetch_one().await?;
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        for stmt in cfg.render(sql) {
            let stmt = stmt.replace(UPGRADE_AT, &upgrade_at.to_string());
            if stmt.starts_with("INSERT") {
                wait_until(client, upgrade_at).await?;
            }
            client.query(&stmt).execute().await?;
        }
        client
            .query(&format!("INSERT INTO {}.schema_migrations (version, name) VALUES (?, ?)", cfg.database))
            .bind(*version)
            .bind(*name)
            .execute()
            .await?;
        tracing::info!(version, name, "migration applied");
        applied.push(*version);
    }
    Ok(applied)
}

/// Wait (a second at most) until the server's clock has passed `at`, so that
/// a backfill of the rows inserted before `at` sees all of them.
async fn wait_until(client: &Client, at: u32) -> Result<(), clickhouse::error::Error> {
    for _ in 0..50 {
        let now: u32 = client.query("SELECT toUInt32(toUnixTimestamp(now()))").fetch_one().await?;
        if now >= at {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migration's text by name, so renumbering cannot point a test at the wrong one.
    fn sql(name: &str) -> &'static str {
        MIGRATIONS.iter().find(|m| m.1 == name).map(|m| m.2).expect("migration")
    }

    #[test]
    fn single_node_and_cluster_render() {
        let single = SchemaConfig { database: "tt".into(), cluster: None, ttl_days: 30 };
        let s = single.render(MIGRATIONS[0].2);
        assert_eq!(s.len(), 1);
        assert!(s[0].contains("CREATE TABLE IF NOT EXISTS tt.llm_calls"));
        assert!(s[0].contains("ENGINE = ReplacingMergeTree(inserted_at)"));
        assert!(s[0].contains("INTERVAL 30 DAY"));
        assert!(!s[0].contains('{'), "{}", s[0]);
        assert_eq!(single.render(MIGRATIONS[1].2).len(), 4);
        assert!(single.render(MIGRATIONS[2].2).is_empty());

        let cluster = SchemaConfig { database: "tt".into(), cluster: Some("prod".into()), ttl_days: 30 };
        let c = cluster.render(MIGRATIONS[0].2);
        assert!(c[0].contains("tt.llm_calls_local ON CLUSTER 'prod'"), "{}", c[0]);
        assert!(
            c[0].contains(
                "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tt/llm_calls', '{replica}', inserted_at)"
            ),
            "{}",
            c[0]
        );
        let d = cluster.render(MIGRATIONS[2].2);
        assert_eq!(d.len(), 3);
        assert!(d[0].contains("Distributed('prod', tt, llm_calls_local, cityHash64(event_id))"), "{}", d[0]);

        // The traffic table: same conventions, its own replication path.
        let t = single.render(sql("llm_traffic"));
        assert_eq!(t.len(), 1);
        assert!(t[0].contains("CREATE TABLE IF NOT EXISTS tt.llm_traffic"), "{}", t[0]);
        assert!(t[0].contains("ENGINE = ReplacingMergeTree(inserted_at)") && t[0].contains("INTERVAL 30 DAY"));
        assert!(!t[0].contains('{'), "{}", t[0]);
        assert!(single.render(sql("llm_traffic_distributed")).is_empty());
        let t = cluster.render(sql("llm_traffic"));
        assert!(t[0].contains("tt.llm_traffic_local ON CLUSTER 'prod'"), "{}", t[0]);
        assert!(
            t[0].contains(
                "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tt/llm_traffic', '{replica}', inserted_at)"
            ),
            "{}",
            t[0]
        );
        // The response id index: on the table holding the data (the local one on a cluster).
        let i = single.render(sql("response_id_index"));
        assert_eq!(i.len(), 1);
        assert!(i[0].starts_with("ALTER TABLE tt.llm_calls  ADD INDEX IF NOT EXISTS response_id_bf"), "{}", i[0]);
        let i = cluster.render(sql("response_id_index"));
        assert!(i[0].starts_with("ALTER TABLE tt.llm_calls_local ON CLUSTER 'prod' ADD INDEX"), "{}", i[0]);
        // The health rollups: local tables and views on a cluster, the views
        // counting from the upgrade second, the backfill before it.
        let h = single.render(sql("health_rollup"));
        assert_eq!(h.len(), 6);
        assert!(h[0].contains("CREATE TABLE IF NOT EXISTS tt.llm_health_1h"), "{}", h[0]);
        assert!(h[1].contains("TO tt.llm_health_1h AS") && h[1].contains("now() >= toDateTime({upgrade_at})"));
        assert!(
            h[4].starts_with("INSERT INTO tt.llm_health_1h") && h[4].contains("inserted_at < toDateTime({upgrade_at})")
        );
        assert!(single.render(sql("health_rollup_distributed")).is_empty());
        let h = cluster.render(sql("health_rollup"));
        assert!(h[0].contains("tt.llm_health_1h_local ON CLUSTER 'prod'"), "{}", h[0]);
        assert!(h[0].contains("ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/tt/{table}'"), "{}", h[0]);
        let d = cluster.render(sql("health_rollup_distributed"));
        assert!(d[0].contains("Distributed('prod', tt, llm_health_1h_local)"), "{}", d[0]);
        let d = cluster.render(sql("llm_traffic_distributed"));
        assert!(d[0].contains("Distributed('prod', tt, llm_traffic_local, cityHash64(row_id))"), "{}", d[0]);
        // The waste rollups: the repeat columns on the table holding the
        // data, views from the upgrade second, four backfills before it.
        let w = single.render(sql("waste_rollup"));
        assert_eq!(w.len(), 9);
        assert!(w[0].starts_with("ALTER TABLE tt.llm_calls ") && w[0].contains("prompt_repeat UInt32"), "{}", w[0]);
        assert!(w[2].contains("TO tt.llm_waste_1h AS") && w[2].contains("now() >= toDateTime({upgrade_at})"));
        assert!(w[4].contains("TO tt.llm_prefixes_1h AS"), "{}", w[4]);
        for b in &w[5..] {
            assert!(
                b.starts_with("INSERT INTO tt.llm_") && b.contains("inserted_at < toDateTime({upgrade_at})"),
                "{b}"
            );
        }
        assert!(single.render(sql("waste_rollup_distributed")).is_empty());
        let w = cluster.render(sql("waste_rollup"));
        assert!(w[0].starts_with("ALTER TABLE tt.llm_calls_local ON CLUSTER 'prod'"), "{}", w[0]);
        assert!(w[1].contains("tt.llm_waste_1h_local ON CLUSTER 'prod'"), "{}", w[1]);
        let d = cluster.render(sql("waste_rollup_distributed"));
        assert!(
            d[0].starts_with("ALTER TABLE tt.llm_calls ON CLUSTER 'prod'") && d[0].contains("conversation_growing")
        );
        assert!(d[1].contains("Distributed('prod', tt, llm_waste_1h_local)"), "{}", d[1]);
        assert!(d[2].contains("Distributed('prod', tt, llm_prefixes_1h_local)"), "{}", d[2]);
    }
}
