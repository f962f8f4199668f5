//! A running tokentap-collector.
use super::*;

pub fn collector_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TOKENTAP_COLLECTOR_BIN") {
        return p.into();
    }
    let p = agent_bin().with_file_name("tokentap-collector");
    assert!(p.exists(), "tokentap-collector is not built: run `cargo xtask test` (or `cargo xtask build`) first");
    p
}

/// A running tokentap-collector writing to `ch`.
pub struct Collector {
    child: Option<Child>,
    pub url: String,
    pub port: u16,
    pub token: String,
    args: Vec<String>,
    stderr: PathBuf,
    http: ureq::Agent,
}

/// TLS for the collector: its certificate, and whether agents must present one.
pub struct CollectorTls<'a> {
    pub certs: &'a Certs,
    /// Client certificate and key the harness itself uses (mutual TLS).
    pub client: Option<(PathBuf, PathBuf)>,
}

fn http_agent(tls: Option<&CollectorTls>) -> ureq::Agent {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let mut b = ureq::Agent::config_builder().http_status_as_error(false);
    if let Some(t) = tls {
        let pem = |p: &Path| -> Vec<Certificate<'static>> {
            let bytes = std::fs::read(p).expect("pem");
            ureq::tls::parse_pem(&bytes)
                .filter_map(|i| match i {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect()
        };
        let mut cfg = TlsConfig::builder().root_certs(RootCerts::Specific(std::sync::Arc::new(pem(&t.certs.ca))));
        if let Some((cert, key)) = &t.client {
            let key = PrivateKey::from_pem(&std::fs::read(key).expect("key")).expect("key pem");
            cfg = cfg.client_cert(Some(ClientCert::new_with_certs(&pem(cert), key)));
        }
        b = b.tls_config(cfg.build());
    }
    b.build().into()
}

impl Collector {
    pub fn start(dir: &Path, ch: &ClickHouse) -> Self {
        Self::start_with(dir, ch, None)
    }

    pub fn start_with(dir: &Path, ch: &ClickHouse, tls: Option<CollectorTls>) -> Self {
        Self::start_full(dir, ch, tls, &[])
    }

    /// With extra command-line flags (limits and timeouts under test).
    pub fn start_args(dir: &Path, ch: &ClickHouse, extra: &[&str]) -> Self {
        Self::start_full(dir, ch, None, extra)
    }

    fn start_full(dir: &Path, ch: &ClickHouse, tls: Option<CollectorTls>, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let token = "collector-token-5f4e3d2c1b".to_string();
        std::fs::write(dir.join("collector-token"), &token).expect("token file");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--clickhouse-url".into(),
            ch.url.clone(),
            "--database".into(),
            ch.database.clone(),
            "--token-file".into(),
            dir.join("collector-token").display().to_string(),
        ];
        // Production defaults otherwise (lz4 inserts included): the embedded
        // endpoint speaks ClickHouse's compressed framing.
        args.extend(extra.iter().map(|a| a.to_string()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        if let Some(t) = &tls {
            for (flag, path) in [("--tls-cert", &t.certs.cert), ("--tls-key", &t.certs.key)] {
                args.extend([flag.to_string(), path.display().to_string()]);
            }
            if t.client.is_some() {
                args.extend(["--tls-client-ca".to_string(), t.certs.ca.display().to_string()]);
            }
        }
        let mut c = Self {
            child: None,
            url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            token,
            args,
            stderr: dir.join("collector.stderr"),
            http: http_agent(tls.as_ref()),
        };
        c.restart();
        c
    }

    /// (Re)start the process and wait until it answers /readyz.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr).expect("collector log");
        let child = Command::new(collector_bin())
            .args(&self.args)
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .expect("start tokentap-collector");
        self.child = Some(child);
        let ready = format!("{}/readyz", self.url);
        wait_for("the collector to be ready", Duration::from_secs(60), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("collector exited with {st}:\n{}", std::fs::read_to_string(&self.stderr).unwrap_or_default());
            }
            let r = self.http.get(&ready).call().ok()?;
            (r.status().as_u16() == 200).then_some(())
        });
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// POST a raw batch; (status, body).
    pub fn post(&self, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
        let (status, body) = self.post_to("/v1/records", body, headers);
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// POST a raw body to `path` (e.g. `/v1/traces`); (status, body bytes).
    pub fn post_to(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
        let mut req = self.http.post(format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.send(body).expect("post");
        let status = resp.status().as_u16();
        (status, resp.body_mut().with_config().limit(16 << 20).read_to_vec().unwrap_or_default())
    }

    pub fn metrics(&self) -> String {
        let mut r = self.http.get(format!("{}/metrics", self.url)).call().expect("metrics");
        r.body_mut().read_to_string().unwrap_or_default()
    }

    /// One series' value from /metrics (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// Wait until no request body is being read or decoded
    /// (`tokentap_collector_inflight_bytes` 0): no batch is still being
    /// received. (A batch answered 200 has its rows in ClickHouse already.)
    pub fn wait_idle(&self) {
        wait_for("the collector to have no body in flight", Duration::from_secs(30), || {
            (self.metric("tokentap_collector_inflight_bytes") == 0.0).then_some(())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("collector running")
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}
