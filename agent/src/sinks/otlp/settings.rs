//! The OTLP sink's settings: one struct, [`OtlpSettings`], read from an
//! `[outputs.<name>]` section with `type = "otlp"`, or made from
//! `--output otlp[:URL]` (`output = ["otlp:URL"]`) and the shorthand of
//! [`OtlpFlags`] (the `--otlp-*` flags and the config file's top-level keys of
//! the same names).
//!
//! Endpoints follow OpenTelemetry's exporter conventions
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): `endpoint`
//! is a base URL to which `v1/traces` and `v1/metrics` are appended (after its
//! own path: `http://gw:4318/otlp` -> `http://gw:4318/otlp/v1/traces`);
//! `traces_endpoint` and `metrics_endpoint` are full URLs, used as they are.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/tokentap/otlp-spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// OpenTelemetry's batch span processor exports 512 spans at a time.
pub const DEFAULT_BATCH_RECORDS: usize = 512;
pub const DEFAULT_BATCH_AGE_MS: u64 = 1000;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2;
/// Spans one request carries when spooled batches are merged (a backlog):
/// about 3 MB of protobuf, well under the OpenTelemetry Collector's default
/// request limit.
pub const DEFAULT_MERGE_RECORDS: usize = 2048;
/// Largest `merge_records` / `batch_records`.
pub const MAX_RECORDS: usize = 10_000;
/// OpenTelemetry's exporter default (`OTEL_EXPORTER_OTLP_TIMEOUT`).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Request body compression (`OTEL_EXPORTER_OTLP_COMPRESSION`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// OpenTelemetry's default.
    #[default]
    None,
    Gzip,
}

/// `[outputs.<name>]` with `type = "otlp"`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpSettings {
    /// Base URL: `<endpoint>/v1/traces` and `<endpoint>/v1/metrics`.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Full URL for spans (default: from `endpoint`).
    #[serde(default)]
    pub traces_endpoint: Option<String>,
    /// Full URL for metrics (default: from `endpoint`).
    #[serde(default)]
    pub metrics_endpoint: Option<String>,
    /// Send the GenAI client metrics beside the spans.
    #[serde(default = "yes")]
    pub metrics: bool,
    /// Headers sent with every request (e.g. `authorization`, `api-key`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A file of `Name: value` lines, re-read for every request (a mounted
    /// Secret: rotations apply without a restart); over `headers`.
    #[serde(default)]
    pub headers_file: Option<PathBuf>,
    /// CA certificate(s) trusted for an `https://` endpoint (default: the
    /// public web PKI roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and its key, for mutual TLS: both or neither.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub compression: Compression,
    /// One request's time limit, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Where batches wait until acknowledged (kept across restarts): spans in
    /// `traces/`, metrics in `metrics/`. One directory per output.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    /// Both spools together, at most (half each); past it the oldest
    /// batches are dropped (counted).
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// A batch is sealed at this many records...
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// ...or when its oldest record is this old, whichever comes first.
    #[serde(default = "default_batch_age_ms")]
    pub batch_age_ms: u64,
    /// Requests sent at once, per signal.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Records one request carries when spooled batches are merged.
    #[serde(default = "default_merge_records")]
    pub merge_records: usize,
    /// How long the agent waits at exit for the spools to drain (not read
    /// from the file).
    #[serde(skip, default = "default_drain_timeout")]
    pub drain_timeout: Duration,
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.into()
}
fn yes() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_spool_dir() -> PathBuf {
    DEFAULT_SPOOL_DIR.into()
}
fn default_spool_max_bytes() -> u64 {
    DEFAULT_SPOOL_MAX_BYTES
}
fn default_batch_records() -> usize {
    DEFAULT_BATCH_RECORDS
}
fn default_batch_age_ms() -> u64 {
    DEFAULT_BATCH_AGE_MS
}
fn default_max_in_flight() -> usize {
    DEFAULT_MAX_IN_FLIGHT
}
fn default_merge_records() -> usize {
    DEFAULT_MERGE_RECORDS
}
fn default_drain_timeout() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}

/// Which kind of telemetry a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }
}

impl OtlpSettings {
    /// Defaults for everything but where to send and where to spool.
    pub fn new(endpoint: impl Into<String>, spool_dir: impl Into<PathBuf>) -> Self {
        let mut s: Self = crate::sinks::sink::settings(&toml::Table::new()).unwrap_or_else(|_| unreachable!());
        s.endpoint = endpoint.into();
        s.spool_dir = spool_dir.into();
        s
    }

    /// A section's settings, checked (see [`check`](Self::check)).
    pub fn from_section(section: &toml::Table) -> Result<Self, String> {
        let s: Self = crate::sinks::sink::settings(section)?;
        s.check()?;
        Ok(s)
    }

    /// What serde cannot say.
    pub fn check(&self) -> Result<(), String> {
        check_url("endpoint", &self.endpoint)?;
        for (key, url) in [("traces_endpoint", &self.traces_endpoint), ("metrics_endpoint", &self.metrics_endpoint)] {
            if let Some(url) = url {
                check_url(key, url)?;
            }
        }
        for (name, value) in &self.headers {
            check_header(name, value)?;
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("a client certificate and its key go together: give both cert_file and key_file \
                        (--otlp-cert-file and --otlp-key-file), or neither"
                .into());
        }
        let positive = [
            ("timeout_ms", self.timeout_ms),
            ("batch_records", self.batch_records as u64),
            ("max_in_flight", self.max_in_flight as u64),
            ("merge_records", self.merge_records as u64),
            ("spool_max_bytes", self.spool_max_bytes),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be at least 1"));
        }
        for (key, v) in [("batch_records", self.batch_records), ("merge_records", self.merge_records)] {
            if v > MAX_RECORDS {
                return Err(format!("{key} {v}: at most {MAX_RECORDS}"));
            }
        }
        Ok(())
    }

    /// The URL a signal is posted to.
    pub fn url(&self, signal: Signal) -> String {
        let full = match signal {
            Signal::Traces => &self.traces_endpoint,
            Signal::Metrics => &self.metrics_endpoint,
        };
        match full {
            Some(url) => url.clone(),
            None => format!("{}/v1/{}", self.endpoint.trim_end_matches('/'), signal.name()),
        }
    }

    pub fn batch_age(&self) -> Duration {
        Duration::from_millis(self.batch_age_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn client_cert(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.cert_file.as_ref().zip(self.key_file.as_ref())
    }
}

fn check_url(key: &str, url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !url.contains(['?', '#', ' ']) => Ok(()),
        _ => Err(format!("{key} {url:?}: expected http(s)://HOST:PORT[/PATH] (OTLP/HTTP, no query)")),
    }
}

/// A header as HTTP allows it: a token for a name, no line breaks in the value.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(tchar) {
        return Err(format!("header name {name:?}: not an HTTP header name"));
    }
    if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        // The value is not shown: it is likely a credential.
        return Err(format!("header {name}: its value has a line break or NUL"));
    }
    Ok(())
}

/// A headers file: `Name: value` lines; blank lines and `#` comments skipped.
pub fn parse_headers_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| format!("line {}: expected `Name: value`", i + 1))?;
        let (name, value) = (name.trim(), value.trim());
        check_header(name, value).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// Shorthand for an OTLP output given as `--output otlp[:URL]` or
/// `output = ["otlp:URL"]`: these flags, and the config file's top-level keys
/// of the same names (flags win). They do not apply to `[outputs.<name>]`
/// sections, which carry their own keys.
#[derive(clap::Args, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpFlags {
    /// Full URL spans are posted to (default: `--output otlp:URL` + /v1/traces).
    #[arg(global = true, long, value_name = "URL")]
    #[serde(rename(serialize = "traces_endpoint"), skip_serializing_if = "Option::is_none")]
    pub otlp_traces_endpoint: Option<String>,
    /// Full URL metrics are posted to (default: `--output otlp:URL` + /v1/metrics).
    #[arg(global = true, long, value_name = "URL")]
    #[serde(rename(serialize = "metrics_endpoint"), skip_serializing_if = "Option::is_none")]
    pub otlp_metrics_endpoint: Option<String>,
    /// Send the GenAI client metrics beside the spans. Default: true.
    #[arg(global = true, long, value_name = "BOOL", action = clap::ArgAction::Set)]
    #[serde(rename(serialize = "metrics"), skip_serializing_if = "Option::is_none")]
    pub otlp_metrics: Option<bool>,
    /// A header for every OTLP request, `NAME=VALUE` (repeatable). Prefer
    /// --otlp-headers-file for credentials: flags show in `ps`.
    #[arg(global = true, long, value_name = "NAME=VALUE")]
    #[serde(skip_serializing, default)]
    pub otlp_header: Vec<String>,
    /// A file of `Name: value` header lines, re-read for every request.
    #[arg(global = true, long, value_name = "PATH")]
    #[serde(rename(serialize = "headers_file"), skip_serializing_if = "Option::is_none")]
    pub otlp_headers_file: Option<PathBuf>,
    /// CA certificate(s) trusted for an `https://` OTLP endpoint. Default: public roots.
    #[arg(global = true, long, value_name = "PATH")]
    #[serde(rename(serialize = "ca_file"), skip_serializing_if = "Option::is_none")]
    pub otlp_ca_file: Option<PathBuf>,
    /// Client certificate (PEM chain) for mutual TLS with the OTLP endpoint.
    #[arg(global = true, long, value_name = "PATH", requires = "otlp_key_file")]
    #[serde(rename(serialize = "cert_file"), skip_serializing_if = "Option::is_none")]
    pub otlp_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --otlp-cert-file.
    #[arg(global = true, long, value_name = "PATH", requires = "otlp_cert_file")]
    #[serde(rename(serialize = "key_file"), skip_serializing_if = "Option::is_none")]
    pub otlp_key_file: Option<PathBuf>,
    /// Request body compression: none or gzip. Default: none.
    #[arg(global = true, long, value_name = "none|gzip")]
    #[serde(rename(serialize = "compression"), skip_serializing_if = "Option::is_none")]
    pub otlp_compression: Option<String>,
    /// One OTLP request's time limit, in milliseconds. Default: 10000.
    #[arg(global = true, long, value_name = "MS")]
    #[serde(rename(serialize = "timeout_ms"), skip_serializing_if = "Option::is_none")]
    pub otlp_timeout_ms: Option<u64>,
    /// Where OTLP batches wait until acknowledged (kept across restarts).
    /// Default: /var/lib/tokentap/otlp-spool.
    #[arg(global = true, long, value_name = "DIR")]
    #[serde(rename(serialize = "spool_dir"), skip_serializing_if = "Option::is_none")]
    pub otlp_spool_dir: Option<PathBuf>,
    /// Largest OTLP spool (spans and metrics); past it the oldest batches are
    /// dropped (counted). Default: 1073741824.
    #[arg(global = true, long, value_name = "BYTES")]
    #[serde(rename(serialize = "spool_max_bytes"), skip_serializing_if = "Option::is_none")]
    pub otlp_spool_max_bytes: Option<u64>,
    /// Records per OTLP batch (sealed at this many, or at --otlp-batch-age-ms).
    /// At most 10000. Default: 512.
    #[arg(global = true, long, value_name = "N")]
    #[serde(rename(serialize = "batch_records"), skip_serializing_if = "Option::is_none")]
    pub otlp_batch_records: Option<usize>,
    /// Age of its oldest record at which an OTLP batch is sealed, in
    /// milliseconds. Default: 1000.
    #[arg(global = true, long, value_name = "MS")]
    #[serde(rename(serialize = "batch_age_ms"), skip_serializing_if = "Option::is_none")]
    pub otlp_batch_age_ms: Option<u64>,
    /// OTLP requests sent at once, per signal. Default: 2.
    #[arg(global = true, long, value_name = "N")]
    #[serde(rename(serialize = "max_in_flight"), skip_serializing_if = "Option::is_none")]
    pub otlp_max_in_flight: Option<usize>,
    /// Records one OTLP request carries when spooled batches are merged (a
    /// backlog). At most 10000. Default: 2048.
    #[arg(global = true, long, value_name = "N")]
    #[serde(rename(serialize = "merge_records"), skip_serializing_if = "Option::is_none")]
    pub otlp_merge_records: Option<usize>,
}

impl OtlpFlags {
    /// The config file's top-level keys these flags stand for (their names).
    pub const FILE_KEYS: [&'static str; 16] = [
        "otlp_traces_endpoint",
        "otlp_metrics_endpoint",
        "otlp_metrics",
        "otlp_header",
        "otlp_headers_file",
        "otlp_ca_file",
        "otlp_cert_file",
        "otlp_key_file",
        "otlp_compression",
        "otlp_timeout_ms",
        "otlp_spool_dir",
        "otlp_spool_max_bytes",
        "otlp_batch_records",
        "otlp_batch_age_ms",
        "otlp_max_in_flight",
        "otlp_merge_records",
    ];

    /// The section keys they set, with their values.
    pub fn section(&self) -> Result<toml::Table, String> {
        let mut t = toml::Table::try_from(self).map_err(|e| format!("otlp flags: {e}"))?;
        if !self.otlp_header.is_empty() {
            let mut headers = toml::Table::new();
            for h in &self.otlp_header {
                let (name, value) =
                    h.split_once('=').ok_or_else(|| format!("--otlp-header {:?}: expected NAME=VALUE", redact(h)))?;
                headers.insert(name.trim().to_owned(), value.trim().into());
            }
            t.insert("headers".into(), headers.into());
        }
        Ok(t)
    }
}

/// A header flag as errors show it: the name only (the value may be a credential).
fn redact(h: &str) -> String {
    let name: String = h.chars().take_while(|c| *c != '=' && *c != ':').take(64).collect();
    format!("{name}…")
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
