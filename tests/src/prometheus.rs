//! A real Prometheus (Debian's `prometheus` package, installed by `cargo xtask
//! test`) scraping local targets every second with a rule file, and its HTTP
//! API: instant queries and the alerts.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{require_tool, wait_for};

pub struct Prometheus {
    child: Child,
    pub url: String,
    log: PathBuf,
    http: ureq::Agent,
}

impl Prometheus {
    /// Scrape `targets` (`host:port`, path /metrics) every second, evaluate
    /// `rules` every second; storage in `dir`.
    pub fn start(dir: &Path, targets: &[String], rules: &Path) -> Self {
        require_tool("prometheus");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n  \
             - job_name: tokentap-collector\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            list.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("prometheus.yml");
        let log = dir.join("prometheus.stderr");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start prometheus");
        let mut p = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            http: ureq::Agent::config_builder().http_status_as_error(false).build().into(),
        };
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prometheus exited with {st}:\n{}", p.log());
            }
            let r = p.http.get(format!("{}/-/ready", p.url)).call().ok()?;
            (r.status().as_u16() == 200).then_some(())
        });
        p
    }

    fn api(&self, path_and_query: &str) -> Value {
        let mut r = self.http.get(format!("{}{path_and_query}", self.url)).call().expect("prometheus API");
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path_and_query}: {e}: {text}"));
        assert_eq!(v["status"], "success", "{path_and_query}: {text}");
        v["data"].clone()
    }

    /// An instant query's result vector (`[{metric, value: [t, "v"]}]`).
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let q: String = expr.bytes().map(|b| format!("%{b:02X}")).collect();
        self.api(&format!("/api/v1/query?query={q}"))["result"].as_array().cloned().unwrap_or_default()
    }

    /// The alerts pending or firing now.
    pub fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts")["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// Firing alerts named `name`: their labels.
    pub fn firing(&self, name: &str) -> Vec<Value> {
        self.alerts()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .map(|a| a["labels"].clone())
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A sample's value in a query result.
pub fn sample(v: &Value) -> f64 {
    v["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
