//! A ClickHouse for the collector tests.
use super::*;

/// A ClickHouse for the collector tests: the server at `TOKENTAP_CLICKHOUSE_URL`
/// when set, else the real ClickHouse engine (chdb-core) behind
/// tests/server/clickhouse_http.py — a test-harness stand-in for the server
/// process only; SQL, engines and views are ClickHouse's own.
pub struct ClickHouse {
    child: Option<Child>,
    pub url: String,
    pub database: String,
    /// While this file exists the embedded endpoint answers 503 (ClickHouse "away").
    fail_file: PathBuf,
    /// While this file holds N, the embedded endpoint answers inserts N seconds
    /// after committing them (a lost answer, for forced retries).
    slow_file: PathBuf,
}

impl ClickHouse {
    pub fn start(dir: &Path, name: &str) -> Self {
        let database = format!("tokentap_e2e_{}_{}", std::process::id(), name.replace('-', "_"));
        let fail_file = dir.join("clickhouse-away");
        let slow_file = dir.join("clickhouse-slow");
        let _ = std::fs::remove_file(&slow_file);
        if let Ok(url) = std::env::var("TOKENTAP_CLICKHOUSE_URL") {
            return Self { child: None, url, database, fail_file, slow_file };
        }
        require_tool("python3");
        let ok = Command::new("python3").args(["-c", "import chdb"]).status().is_ok_and(|s| s.success());
        assert!(ok, "chdb-core is needed for the ClickHouse tests: run `cargo xtask test`, which installs it");
        let port_file = dir.join("clickhouse.port");
        let _ = std::fs::remove_file(&port_file);
        let child = Command::new("python3")
            .arg(workspace_root().join("tests/server/clickhouse_http.py"))
            .arg("--data")
            .arg(dir.join("clickhouse-data"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--fail-file")
            .arg(&fail_file)
            .arg("--slow-file")
            .arg(&slow_file)
            .stderr(std::fs::File::create(dir.join("clickhouse.stderr")).expect("log"))
            .spawn()
            .expect("start clickhouse_http.py");
        let port: u16 = wait_for("the ClickHouse endpoint", Duration::from_secs(60), || {
            std::fs::read_to_string(&port_file).ok()?.trim().parse().ok()
        });
        Self { child: Some(child), url: format!("http://127.0.0.1:{port}"), database, fail_file, slow_file }
    }

    /// The embedded engine's process (None for a server at `TOKENTAP_CLICKHOUSE_URL`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether this is the embedded engine (outages and slow answers can be simulated).
    pub fn embedded(&self) -> bool {
        self.child.is_some()
    }

    /// Answer inserts `secs` after committing them (embedded endpoint only); 0: at once.
    pub fn set_slow(&self, secs: u32) {
        assert!(self.child.is_some(), "slow answers are simulated with the embedded engine only");
        if secs > 0 {
            std::fs::write(&self.slow_file, secs.to_string()).expect("slow file");
        } else {
            let _ = std::fs::remove_file(&self.slow_file);
        }
    }

    /// Make ClickHouse unavailable (embedded endpoint only) or available again.
    pub fn set_away(&self, away: bool) {
        assert!(self.child.is_some(), "outages are simulated with the embedded engine only");
        if away {
            std::fs::write(&self.fail_file, b"").expect("fail file");
        } else {
            let _ = std::fs::remove_file(&self.fail_file);
        }
    }

    /// Run SQL; the rows as JSON objects (JSONEachRow).
    pub fn query(&self, sql: &str) -> Vec<Value> {
        self.try_query(sql).unwrap_or_else(|e| panic!("ClickHouse {sql}: {e}"))
    }

    /// Run SQL; the rows, or ClickHouse's error text (benchmarks go on after a
    /// query that hit its time limit).
    pub fn try_query(&self, sql: &str) -> Result<Vec<Value>, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("{}/?database={}&default_format=JSONEachRow", self.url, self.database);
        let mut resp = agent.post(&url).send(sql.as_bytes()).map_err(|e| e.to_string())?;
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if resp.status().as_u16() != 200 {
            return Err(text);
        }
        Ok(text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("JSON row")).collect())
    }

    /// One number from a one-row, one-column query.
    pub fn count(&self, sql: &str) -> u64 {
        let rows = self.query(sql);
        let v = rows.first().and_then(|r| r.as_object()).and_then(|o| o.values().next().cloned());
        match v {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            _ => 0,
        }
    }

    /// The collector's migrations (`tokentap-collector migrate`).
    pub fn migrate(&self) {
        let out = Command::new(collector_bin())
            .args(["migrate", "--clickhouse-url", &self.url, "--database", &self.database])
            .output()
            .expect("collector migrate");
        assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Undo migration 16-17's rollups and its record (its columns stay), so
    /// the next migrate creates and backfills them as an upgrade does.
    pub fn forget_waste_rollups(&self) {
        for t in ["llm_waste_1h_mv", "llm_prefixes_1h_mv", "llm_waste_1h", "llm_prefixes_1h"] {
            self.query(&format!("DROP TABLE {t}"));
        }
        self.query("ALTER TABLE schema_migrations DELETE WHERE version IN (16, 17) SETTINGS mutations_sync = 1");
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
