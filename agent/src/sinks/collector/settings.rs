//! The collector sink's settings: one struct, [`CollectorSettings`], read from
//! an `[outputs.<name>]` section with `type = "collector"`, or made from
//! `--output collector:URL` (`output = ["collector:URL"]`) and the shorthand
//! of [`CollectorFlags`]: the `--collector-*`, `--spool-*` and
//! `--cluster-name` flags, and the config file's top-level keys of the same
//! names.
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokentap_event::wire;

pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/tokentap/spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
pub const DEFAULT_BATCH_RECORDS: usize = 5000;
pub const DEFAULT_BATCH_AGE: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
pub const DEFAULT_MERGE_RECORDS: usize = 20_000;
/// How long the agent waits at exit for the spool to drain.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// `[outputs.<name>]` with `type = "collector"`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectorSettings {
    /// Collector base URL (`http://collector:8787`).
    pub url: String,
    /// Bearer token file (re-read per request: rotations apply without restart).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// CA certificate(s) trusted for an `https://` collector (default: the
    /// public web PKI roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and its key, for mutual TLS: both or neither.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Where batches wait until acknowledged (kept across restarts); one
    /// directory per output.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// A batch is sealed at this many records (at most `wire::MAX_RECORDS`)...
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// ...or when its oldest record is this old, whichever comes first.
    #[serde(default = "default_batch_age_ms")]
    pub batch_age_ms: u64,
    /// Requests sent at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Records one request carries when spooled batches are merged.
    #[serde(default = "default_merge_records")]
    pub merge_records: usize,
    /// Sent with every batch (`x-tokentap-cluster`): which cluster this node is in.
    #[serde(default)]
    pub cluster: String,
    /// How long the agent waits at exit for the spool to drain (not read
    /// from the file).
    #[serde(skip, default = "default_drain_timeout")]
    pub drain_timeout: Duration,
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
    DEFAULT_BATCH_AGE.as_millis() as u64
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

impl CollectorSettings {
    /// Defaults for everything but where to send and where to spool.
    pub fn new(url: impl Into<String>, spool_dir: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            token_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            spool_dir: spool_dir.into(),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            batch_records: DEFAULT_BATCH_RECORDS,
            batch_age_ms: default_batch_age_ms(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            merge_records: DEFAULT_MERGE_RECORDS,
            cluster: String::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// A section's settings, checked (see [`check`](Self::check)) and
    /// normalised.
    pub fn from_section(section: &toml::Table) -> Result<Self, String> {
        let s: Self = crate::sinks::sink::settings(section)?;
        s.check()?;
        Ok(s.normalised())
    }

    /// What serde cannot say: the URL's scheme, the client certificate and
    /// key given together.
    pub fn check(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("url {:?}: expected http(s)://HOST:PORT", self.url));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("a client certificate and its key go together: give both cert_file and key_file \
                        (collector_cert_file and collector_key_file), or neither"
                .into());
        }
        Ok(())
    }

    /// Limits applied: a batch and a request carry 1 to `wire::MAX_RECORDS`
    /// records, and at least one request is sent at a time.
    pub fn normalised(self) -> Self {
        Self {
            batch_records: self.batch_records.clamp(1, wire::MAX_RECORDS),
            max_in_flight: self.max_in_flight.max(1),
            merge_records: self.merge_records.clamp(1, wire::MAX_RECORDS),
            ..self
        }
    }

    pub fn batch_age(&self) -> Duration {
        Duration::from_millis(self.batch_age_ms)
    }

    pub fn client_cert(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.cert_file.as_ref().zip(self.key_file.as_ref())
    }
}

/// Shorthand for a collector output given as `--output collector:URL` or
/// `output = ["collector:URL"]`: these flags, and the config file's top-level
/// keys of the same names (flags win). They do not apply to
/// `[outputs.<name>]` sections, which carry their own keys.
#[derive(clap::Args, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectorFlags {
    /// Bearer token file for `--output collector:URL`.
    #[arg(global = true, long, value_name = "PATH")]
    #[serde(rename(serialize = "token_file"), skip_serializing_if = "Option::is_none")]
    pub collector_token_file: Option<PathBuf>,
    /// CA certificate(s) trusted for an `https://` collector. Default: public roots.
    #[arg(global = true, long, value_name = "PATH")]
    #[serde(rename(serialize = "ca_file"), skip_serializing_if = "Option::is_none")]
    pub collector_ca_file: Option<PathBuf>,
    /// Client certificate (PEM chain) for mutual TLS with the collector.
    #[arg(global = true, long, value_name = "PATH", requires = "collector_key_file")]
    #[serde(rename(serialize = "cert_file"), skip_serializing_if = "Option::is_none")]
    pub collector_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --collector-cert-file.
    #[arg(global = true, long, value_name = "PATH", requires = "collector_cert_file")]
    #[serde(rename(serialize = "key_file"), skip_serializing_if = "Option::is_none")]
    pub collector_key_file: Option<PathBuf>,
    /// Where batches for the collector wait until acknowledged (kept across
    /// restarts). Default: /var/lib/tokentap/spool.
    #[arg(global = true, long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,
    /// Largest collector spool; past it the oldest batches are dropped (counted).
    /// Default: 1073741824.
    #[arg(global = true, long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_max_bytes: Option<u64>,
    /// Records per collector batch: a batch is sealed at this many records or
    /// when its oldest is --collector-batch-age-ms old. Default: 5000.
    #[arg(global = true, long, value_name = "N")]
    #[serde(rename(serialize = "batch_records"), skip_serializing_if = "Option::is_none")]
    pub collector_batch_records: Option<usize>,
    /// Age of its oldest record at which a collector batch is sealed, in
    /// milliseconds. Default: 1000.
    #[arg(global = true, long, value_name = "MS")]
    #[serde(rename(serialize = "batch_age_ms"), skip_serializing_if = "Option::is_none")]
    pub collector_batch_age_ms: Option<u64>,
    /// Requests sent to the collector at once. Default: 4.
    #[arg(global = true, long, value_name = "N")]
    #[serde(rename(serialize = "max_in_flight"), skip_serializing_if = "Option::is_none")]
    pub collector_max_in_flight: Option<usize>,
    /// Records one request carries when spooled batches are merged (a backlog
    /// after an outage). At most 50000. Default: 20000.
    #[arg(global = true, long, value_name = "N")]
    #[serde(rename(serialize = "merge_records"), skip_serializing_if = "Option::is_none")]
    pub collector_merge_records: Option<usize>,
    /// This node's cluster name, sent with every batch (the `cluster` column).
    #[arg(global = true, long, value_name = "NAME")]
    #[serde(rename(serialize = "cluster"), skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
}

impl CollectorFlags {
    /// The config file's top-level keys these flags stand for (their names).
    pub const FILE_KEYS: [&'static str; 11] = [
        "collector_token_file",
        "collector_ca_file",
        "collector_cert_file",
        "collector_key_file",
        "spool_dir",
        "spool_max_bytes",
        "collector_batch_records",
        "collector_batch_age_ms",
        "collector_max_in_flight",
        "collector_merge_records",
        "cluster_name",
    ];

    /// The section keys they set, with their values.
    pub fn section(&self) -> Result<toml::Table, String> {
        toml::Table::try_from(self).map_err(|e| format!("collector flags: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args;

    #[test]
    fn flags_file_keys_and_section_keys_agree() {
        let ids: Vec<String> = CollectorFlags::augment_args(clap::Command::new("x"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        assert_eq!(ids, CollectorFlags::FILE_KEYS, "one top-level key per flag, of the same name");
        let all = CollectorFlags {
            collector_token_file: Some("/t".into()),
            collector_ca_file: Some("/ca".into()),
            collector_cert_file: Some("/c".into()),
            collector_key_file: Some("/k".into()),
            spool_dir: Some("/s".into()),
            spool_max_bytes: Some(1),
            collector_batch_records: Some(2),
            collector_batch_age_ms: Some(3),
            collector_max_in_flight: Some(4),
            collector_merge_records: Some(5),
            cluster_name: Some("c".into()),
        };
        let mut section = all.section().unwrap();
        section.insert("url".into(), "http://c:1".into());
        let s = CollectorSettings::from_section(&section).expect("every flag names a section key");
        assert_eq!(
            (s.token_file, s.spool_max_bytes, s.batch_records, s.batch_age_ms, s.cluster),
            (Some("/t".into()), 1, 2, 3, "c".into())
        );
        assert_eq!(CollectorFlags::default().section().unwrap(), toml::Table::new());
    }
}
