//! Settings: command-line flags over an optional TOML file over defaults.
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use thiserror::Error;

use crate::providers::{RuleSet, Rules, RulesError};
use crate::sinks::{collector, OutputSpec};

#[derive(Debug, Parser, Default)]
#[command(
    name = "tokentap-agent",
    version,
    about = "Capture LLM API calls on this host with eBPF and write one record per call.",
    long_about = "Capture LLM API calls on this host with eBPF (uprobes on TLS libraries) and \
write one record per call: provider, model, tokens, cost, latency, process, container.\n\n\
Needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE + CAP_SYS_ADMIN (uprobe creation) \
(+ CAP_SYS_RESOURCE on kernels before 5.11), and Linux 5.17+.\n\
Prompt and completion text are never written; neither are credentials."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML config file; flags given on the command line override its values.
    #[arg(global = true, long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where records go: `jsonl:PATH` (appended, one JSON object per line) or
    /// `stdout`. Repeat for several outputs. Default: stdout.
    #[arg(global = true, long = "output", short = 'o', value_name = "SPEC")]
    pub outputs: Vec<OutputSpec>,
    /// Capture this long (seconds, or with a unit: 90s, 30m, 2h), then flush and
    /// exit 0. Default: until SIGINT/SIGTERM.
    #[arg(global = true, long, value_name = "TIME", value_parser = parse_duration_secs)]
    pub duration: Option<u64>,
    /// Create this file once every probe is attached (for scripts and tests to wait on).
    #[arg(global = true, long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (e.g.
    /// 0.0.0.0:9464). Default: off.
    #[arg(global = true, long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Bearer token file for `--output collector:URL`.
    #[arg(global = true, long, value_name = "PATH")]
    pub collector_token_file: Option<PathBuf>,
    /// CA certificate(s) trusted for an `https://` collector. Default: public roots.
    #[arg(global = true, long, value_name = "PATH")]
    pub collector_ca_file: Option<PathBuf>,
    /// Client certificate (PEM chain) for mutual TLS with the collector.
    #[arg(global = true, long, value_name = "PATH", requires = "collector_key_file")]
    pub collector_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --collector-cert-file.
    #[arg(global = true, long, value_name = "PATH", requires = "collector_cert_file")]
    pub collector_key_file: Option<PathBuf>,
    /// Where batches for the collector wait until acknowledged (kept across
    /// restarts). Default: /var/lib/tokentap/spool.
    #[arg(global = true, long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Largest collector spool; past it the oldest batches are dropped (counted).
    /// Default: 1073741824.
    #[arg(global = true, long, value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,
    /// Records per collector batch: a batch is sealed at this many records or
    /// when its oldest is --collector-batch-age-ms old. Default: 5000.
    #[arg(global = true, long, value_name = "N")]
    pub collector_batch_records: Option<usize>,
    /// Age of its oldest record at which a collector batch is sealed, in
    /// milliseconds. Default: 1000.
    #[arg(global = true, long, value_name = "MS")]
    pub collector_batch_age_ms: Option<u64>,
    /// Requests sent to the collector at once. Default: 4.
    #[arg(global = true, long, value_name = "N")]
    pub collector_max_in_flight: Option<usize>,
    /// Records one request carries when spooled batches are merged (a backlog
    /// after an outage). At most 50000. Default: 20000.
    #[arg(global = true, long, value_name = "N")]
    pub collector_merge_records: Option<usize>,
    /// This node's cluster name, sent with every batch (the `cluster` column).
    #[arg(global = true, long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Write the agent's own counters (captured, dropped and why) here as JSON,
    /// every few seconds and at exit.
    #[arg(global = true, long, value_name = "PATH")]
    pub stats_file: Option<PathBuf>,
    /// Price file (JSON, same format as the shipped table) whose models override
    /// or extend the shipped prices.
    #[arg(global = true, long, value_name = "PATH")]
    pub prices: Option<PathBuf>,
    /// Kernel ring buffer size in bytes (power of two). Default: 16777216.
    #[arg(global = true, long, value_name = "BYTES")]
    pub ring_buffer_bytes: Option<u32>,
    /// Largest request or response body kept per call; larger calls are dropped and
    /// counted. Also caps decompressed size. Default: 16777216.
    #[arg(global = true, long, value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Bytes all connections may buffer together; above it the biggest are dropped
    /// (counted). Default: 268435456.
    #[arg(global = true, long, value_name = "BYTES")]
    pub max_buffered_bytes: Option<usize>,
    /// Most connections tracked at once; the least recently active is evicted. Default: 16384.
    #[arg(global = true, long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Forget a connection after this long without traffic. Default: 300.
    #[arg(global = true, long, value_name = "SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Rescan all processes for new TLS libraries this often (exec events also
    /// trigger a scan of the new process). Default: 10.
    #[arg(global = true, long, value_name = "SECS")]
    pub rescan_interval_secs: Option<u64>,
    /// Provider rules file (TOML: `[hosts]` host pattern -> provider, `[paths]`
    /// path -> API shape) added on top of the built-in rules and the config
    /// file's `[providers]`; see docs/providers.md.
    #[arg(global = true, long, value_name = "PATH")]
    pub providers: Option<PathBuf>,
    /// Do not capture plaintext HTTP at the socket syscalls (self-hosted models,
    /// in-mesh traffic); TLS capture is unaffected.
    #[arg(global = true, long)]
    pub no_socket_capture: bool,
    /// Extra directory to search for libssl.so* at start (repeatable).
    #[arg(global = true, long = "lib-dir", value_name = "DIR")]
    pub lib_dirs: Vec<PathBuf>,
    /// Do not probe the TLS libraries of processes with this name (command name or
    /// executable file name; repeatable), e.g. a busy ingress proxy that calls no
    /// LLM API: its TLS calls then take no probe hits. Probes live on library
    /// files, so this only helps for a library no other process maps (a static
    /// binary, a container image's own libssl).
    #[arg(global = true, long = "exclude-process", value_name = "NAME")]
    pub exclude_processes: Vec<String>,
    /// Log filter (tracing syntax, e.g. `info`, `tokentap_agent=debug`). RUST_LOG also works.
    #[arg(global = true, long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Request header that names the end user (e.g. `x-end-user`); wins over the
    /// user fields of the request body.
    #[arg(global = true, long, value_name = "HEADER")]
    pub end_user_header: Option<String>,
    /// Request header that names the product feature (e.g. `x-feature`).
    #[arg(global = true, long, value_name = "HEADER")]
    pub feature_header: Option<String>,
    /// OpenTelemetry resource attribute copied into the record's `labels`
    /// (repeatable, e.g. `--label team --label cost-center`).
    #[arg(global = true, long = "label", value_name = "KEY")]
    pub labels: Vec<String>,
    /// Attach Kubernetes pod metadata (pod, namespace, workload, labels) to
    /// records. On by default when running in a pod (service account present).
    #[arg(global = true, long, conflicts_with = "no_kubernetes")]
    pub kubernetes: bool,
    /// Never contact the Kubernetes API, even in a pod.
    #[arg(global = true, long)]
    pub no_kubernetes: bool,
    /// Kubernetes API server URL. Default: in-cluster (`KUBERNETES_SERVICE_HOST`).
    #[arg(global = true, long, value_name = "URL")]
    pub kube_api_url: Option<String>,
    /// Bearer token file for the API server. Default: the pod's service account token.
    #[arg(global = true, long, value_name = "PATH")]
    pub kube_token_file: Option<PathBuf>,
    /// CA certificate(s) of the API server. Default: the service account's ca.crt.
    #[arg(global = true, long, value_name = "PATH")]
    pub kube_ca_file: Option<PathBuf>,
    /// Poll this kubelet (`https://NODE:10250`) for the node's pods instead of the
    /// API server (token and CA from --kube-token-file / --kube-ca-file).
    #[arg(global = true, long, value_name = "URL", conflicts_with = "kube_api_url")]
    pub kubelet_url: Option<String>,
    /// How often to poll the kubelet. Default: 10.
    #[arg(global = true, long, value_name = "SECS")]
    pub kubelet_poll_secs: Option<u64>,
    /// This node's name (pods are watched with `spec.nodeName=NAME`). Default:
    /// `NODE_NAME`, else the host name.
    #[arg(global = true, long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Secret for `api_key_id` fingerprints, created (mode 0600) if missing.
    /// Default: /var/lib/tokentap/key-secret.
    #[arg(global = true, long, value_name = "PATH")]
    pub key_secret_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Capture (with the capture flags, e.g. --duration 30m; Ctrl-C ends early),
    /// then write the assessment to DIR: events.jsonl, opportunities.json,
    /// report.md and report.html.
    Audit {
        /// Directory for the assessment files (created).
        #[arg(long, value_name = "DIR", default_value = "tokentap-audit")]
        out: PathBuf,
    },
    /// Render the assessment again from an events file (e.g. an audit's events.jsonl).
    Report {
        /// Records, one JSON object per line.
        events: PathBuf,
        /// Directory for opportunities.json, report.md and report.html. Default: beside EVENTS.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// `1800`, `90s`, `30m`, `2h`, `1d` -> seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected seconds or a number with s, m, h or d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(n * mult)
}

/// The TOML file. Keys mirror the flags.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub output: Vec<String>,
    pub duration_secs: Option<u64>,
    pub ready_file: Option<PathBuf>,
    pub stats_file: Option<PathBuf>,
    pub prices: Option<PathBuf>,
    pub ring_buffer_bytes: Option<u32>,
    pub max_body_bytes: Option<usize>,
    pub max_buffered_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub idle_timeout_secs: Option<u64>,
    pub rescan_interval_secs: Option<u64>,
    #[serde(default)]
    pub lib_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub exclude_processes: Vec<String>,
    pub socket_capture: Option<bool>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub collector_token_file: Option<PathBuf>,
    pub collector_ca_file: Option<PathBuf>,
    pub collector_cert_file: Option<PathBuf>,
    pub collector_key_file: Option<PathBuf>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: Option<u64>,
    pub collector_batch_records: Option<usize>,
    pub collector_batch_age_ms: Option<u64>,
    pub collector_max_in_flight: Option<usize>,
    pub collector_merge_records: Option<usize>,
    pub cluster_name: Option<String>,
    pub log_level: Option<String>,
    #[serde(default)]
    pub providers: RuleSet,
    #[serde(default)]
    pub attribution: AttributionFile,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttributionFile {
    /// Pod annotation or label naming the service (default `tokentap.io/service`).
    pub service_label: Option<String>,
    pub end_user_header: Option<String>,
    pub feature_header: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    pub key_secret_file: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("config file {path}: {source}")]
    Output { path: PathBuf, source: crate::sinks::BadOutput },
    #[error("{path}: {source}")]
    Rules { path: PathBuf, source: RulesError },
    #[error("--kubernetes: not running in a pod (no service account); give --kube-api-url, --kube-token-file and --kube-ca-file")]
    NoKubernetes,
}

/// Effective settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub outputs: Vec<OutputSpec>,
    pub duration: Option<Duration>,
    pub ready_file: Option<PathBuf>,
    pub stats_file: Option<PathBuf>,
    pub prices: Option<PathBuf>,
    pub ring_buffer_bytes: u32,
    pub max_body_bytes: usize,
    pub max_buffered_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub rescan_interval: Duration,
    pub lib_dirs: Vec<PathBuf>,
    /// Processes whose TLS libraries are not probed (`--exclude-process`).
    pub exclude_processes: Vec<String>,
    /// Plaintext HTTP capture at the socket syscalls.
    pub socket_capture: bool,
    /// Print capture progress to stderr every few seconds (audits).
    pub progress: bool,
    /// Where /metrics, /healthz and /readyz are served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `--output collector:` settings.
    pub collector_token_file: Option<PathBuf>,
    pub collector_ca_file: Option<PathBuf>,
    pub collector_client_cert: Option<(PathBuf, PathBuf)>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub collector_batch_records: usize,
    pub collector_batch_age: Duration,
    pub collector_max_in_flight: usize,
    pub collector_merge_records: usize,
    pub cluster_name: String,
    pub log_level: String,
    /// User provider rules (config file's `[providers]`, then `--providers`).
    pub providers: RuleSet,
    pub attribution: crate::attribution::AttributionConfig,
    pub key_secret_file: PathBuf,
    pub kubernetes: Option<crate::attribution::kubernetes::KubeConfig>,
}

pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
}

impl Settings {
    pub fn resolve(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let file_path = cli.config.clone().unwrap_or_default();
        let mut outputs = cli.outputs.clone();
        if outputs.is_empty() {
            for o in &file.output {
                outputs.push(o.parse().map_err(|source| ConfigError::Output { path: file_path.clone(), source })?);
            }
        }
        if outputs.is_empty() {
            outputs.push(OutputSpec::Stdout);
        }
        let mut lib_dirs: Vec<PathBuf> = crate::discovery::DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect();
        lib_dirs.extend(file.lib_dirs.iter().cloned());
        lib_dirs.extend(cli.lib_dirs.iter().cloned());
        Ok(Self {
            outputs,
            duration: cli.duration.or(file.duration_secs).map(Duration::from_secs),
            ready_file: cli.ready_file.clone().or(file.ready_file),
            stats_file: cli.stats_file.clone().or(file.stats_file),
            prices: cli.prices.clone().or(file.prices),
            ring_buffer_bytes: cli.ring_buffer_bytes.or(file.ring_buffer_bytes).unwrap_or(16 << 20),
            max_body_bytes: cli.max_body_bytes.or(file.max_body_bytes).unwrap_or(16 << 20),
            max_buffered_bytes: cli.max_buffered_bytes.or(file.max_buffered_bytes).unwrap_or(256 << 20),
            max_connections: cli.max_connections.or(file.max_connections).unwrap_or(16384),
            idle_timeout: Duration::from_secs(cli.idle_timeout_secs.or(file.idle_timeout_secs).unwrap_or(300)),
            rescan_interval: Duration::from_secs(
                cli.rescan_interval_secs.or(file.rescan_interval_secs).unwrap_or(10).max(1),
            ),
            lib_dirs,
            exclude_processes: file.exclude_processes.iter().chain(&cli.exclude_processes).cloned().collect(),
            socket_capture: !cli.no_socket_capture && file.socket_capture.unwrap_or(true),
            progress: matches!(cli.command, Some(Command::Audit { .. })),
            metrics_listen: cli.metrics_listen.or(file.metrics_listen),
            collector_token_file: cli.collector_token_file.clone().or(file.collector_token_file),
            collector_ca_file: cli.collector_ca_file.clone().or(file.collector_ca_file),
            collector_client_cert: cli
                .collector_cert_file
                .clone()
                .or(file.collector_cert_file)
                .zip(cli.collector_key_file.clone().or(file.collector_key_file)),
            spool_dir: cli.spool_dir.clone().or(file.spool_dir).unwrap_or_else(|| "/var/lib/tokentap/spool".into()),
            spool_max_bytes: cli.spool_max_bytes.or(file.spool_max_bytes).unwrap_or(1 << 30),
            collector_batch_records: cli
                .collector_batch_records
                .or(file.collector_batch_records)
                .unwrap_or(collector::DEFAULT_BATCH_RECORDS)
                .clamp(1, tokentap_event::wire::MAX_RECORDS),
            collector_batch_age: cli
                .collector_batch_age_ms
                .or(file.collector_batch_age_ms)
                .map_or(collector::DEFAULT_BATCH_AGE, Duration::from_millis),
            collector_max_in_flight: cli
                .collector_max_in_flight
                .or(file.collector_max_in_flight)
                .unwrap_or(collector::DEFAULT_MAX_IN_FLIGHT)
                .max(1),
            collector_merge_records: cli
                .collector_merge_records
                .or(file.collector_merge_records)
                .unwrap_or(collector::DEFAULT_MERGE_RECORDS)
                .clamp(1, tokentap_event::wire::MAX_RECORDS),
            cluster_name: cli.cluster_name.clone().or(file.cluster_name).unwrap_or_default(),
            log_level: cli.log_level.clone().or(file.log_level).unwrap_or_else(|| "info".into()),
            providers: provider_rules(cli, &file.providers, &file_path)?,
            attribution: crate::attribution::AttributionConfig {
                service_label: file.attribution.service_label.unwrap_or_else(|| "tokentap.io/service".into()),
                end_user_header: cli.end_user_header.clone().or(file.attribution.end_user_header),
                feature_header: cli.feature_header.clone().or(file.attribution.feature_header),
                labels: if cli.labels.is_empty() { file.attribution.labels } else { cli.labels.clone() },
            },
            kubernetes: kube_settings(cli)?,
            key_secret_file: cli
                .key_secret_file
                .clone()
                .or(file.attribution.key_secret_file)
                .unwrap_or_else(|| "/var/lib/tokentap/key-secret".into()),
        })
    }
}

/// The config file's rules with `--providers`' on top, checked.
fn provider_rules(cli: &Cli, from_file: &RuleSet, file_path: &Path) -> Result<RuleSet, ConfigError> {
    let mut set = from_file.clone();
    let mut path = file_path.to_path_buf();
    if let Some(p) = &cli.providers {
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        let extra = RuleSet::parse(&text).map_err(|source| ConfigError::Rules { path: p.clone(), source })?;
        set = set.merged(&extra);
        path = p.clone();
    }
    Rules::new(&set).map_err(|source| ConfigError::Rules { path, source })?;
    Ok(set)
}

fn kube_settings(cli: &Cli) -> Result<Option<crate::attribution::kubernetes::KubeConfig>, ConfigError> {
    use crate::attribution::kubernetes::{node_name_from_env, KubeConfig};
    if cli.no_kubernetes {
        return Ok(None);
    }
    if let Some(url) = cli.kube_api_url.as_ref().or(cli.kubelet_url.as_ref()) {
        let sa = PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount");
        return Ok(Some(KubeConfig {
            api_url: url.clone(),
            token_file: cli.kube_token_file.clone().unwrap_or_else(|| sa.join("token")),
            ca_file: cli.kube_ca_file.clone().unwrap_or_else(|| sa.join("ca.crt")),
            node_name: cli.node_name.clone().or_else(node_name_from_env).unwrap_or_default(),
            kubelet_poll: cli
                .kubelet_url
                .is_some()
                .then(|| Duration::from_secs(cli.kubelet_poll_secs.unwrap_or(10).max(1))),
        }));
    }
    match KubeConfig::in_cluster(cli.node_name.clone()) {
        Some(k) => Ok(Some(k)),
        None if cli.kubernetes => Err(ConfigError::NoKubernetes),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tt-cfg-{}-{name}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_shipped_kubernetes_config_is_valid() {
        // deploy/manifests/tokentap.yaml's agent.toml, as the DaemonSet mounts it.
        let manifests = include_str!("../../deploy/manifests/tokentap.yaml");
        let start = manifests.find("agent.toml: |").expect("agent.toml in the ConfigMap");
        let toml: String = manifests[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
            .map(|l| format!("{}\n", l.trim_start()))
            .collect();
        let p = write("k8s", &toml);
        let s = Settings::resolve(&Cli { config: Some(p), no_kubernetes: true, ..Default::default() }).unwrap();
        assert_eq!(s.outputs, vec![OutputSpec::Collector("http://tokentap-collector:8787".into())]);
        assert_eq!(s.metrics_listen.map(|a| a.port()), Some(9464));
        assert_eq!(s.cluster_name, "my-cluster");
    }

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("30m"), Ok(1800));
        assert_eq!(parse_duration_secs("2h"), Ok(7200));
        assert!(parse_duration_secs("5w").is_err() && parse_duration_secs("m").is_err());
        let cli = Cli::try_parse_from(["tokentap-agent", "audit", "--duration", "1m", "--out", "/tmp/x"]).unwrap();
        assert_eq!(cli.duration, Some(60));
        assert!(matches!(cli.command, Some(Command::Audit { .. })));
    }

    #[test]
    fn excluded_processes_from_file_and_flags() {
        let p = write("exclude", "exclude_processes = [\"envoy\"]\n");
        let cli =
            Cli::try_parse_from(["tokentap-agent", "--exclude-process", "nginx", "-c", p.to_str().unwrap()]).unwrap();
        let s = Settings::resolve(&Cli { no_kubernetes: true, ..cli }).unwrap();
        assert_eq!(s.exclude_processes, vec!["envoy".to_string(), "nginx".to_string()]);
        assert!(Settings::resolve(&Cli::default()).unwrap().exclude_processes.is_empty());
    }

    #[test]
    fn defaults() {
        let s = Settings::resolve(&Cli::default()).unwrap();
        assert_eq!(s.outputs, vec![OutputSpec::Stdout]);
        assert_eq!(s.ring_buffer_bytes, 16 << 20);
        assert_eq!(s.idle_timeout, Duration::from_secs(300));
        assert_eq!(s.duration, None);
        assert!(s.lib_dirs.contains(&PathBuf::from("/usr/lib")));
    }

    #[test]
    fn file_values_and_flag_overrides() {
        let p = write(
            "ok",
            r#"
output = ["jsonl:/var/log/tokentap.jsonl"]
duration_secs = 60
max_body_bytes = 1024
[providers.hosts]
"llm.internal" = "openai"
[attribution]
feature_header = "x-feature"
labels = ["team"]
"#,
        );
        let cli = Cli { config: Some(p.clone()), ..Default::default() };
        let s = Settings::resolve(&cli).unwrap();
        assert_eq!(s.outputs, vec![OutputSpec::Jsonl("/var/log/tokentap.jsonl".into())]);
        assert_eq!(s.duration, Some(Duration::from_secs(60)));
        assert_eq!(s.max_body_bytes, 1024);
        assert_eq!(s.providers.hosts.get("llm.internal").map(String::as_str), Some("openai"));
        assert_eq!(s.attribution.feature_header.as_deref(), Some("x-feature"));
        assert_eq!(s.attribution.labels, vec!["team".to_string()]);
        assert_eq!(s.key_secret_file, PathBuf::from("/var/lib/tokentap/key-secret"));
        let cli = Cli { config: Some(p), duration: Some(5), outputs: vec![OutputSpec::Stdout], ..Default::default() };
        let s = Settings::resolve(&cli).unwrap();
        assert_eq!(s.duration, Some(Duration::from_secs(5)));
        assert_eq!(s.outputs, vec![OutputSpec::Stdout]);
    }

    #[test]
    fn collector_sink_settings_from_defaults_file_and_flags() {
        type Get = fn(&Settings) -> u64;
        // (flag, file key, default, value given, what the settings hold)
        let cases: [(&str, &str, u64, u64, Get); 4] = [
            ("--collector-batch-records", "collector_batch_records", 5000, 200, |s| s.collector_batch_records as u64),
            ("--collector-batch-age-ms", "collector_batch_age_ms", 1000, 250, |s| {
                s.collector_batch_age.as_millis() as u64
            }),
            ("--collector-max-in-flight", "collector_max_in_flight", 4, 8, |s| s.collector_max_in_flight as u64),
            ("--collector-merge-records", "collector_merge_records", 20_000, 30_000, |s| {
                s.collector_merge_records as u64
            }),
        ];
        let resolve = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["tokentap-agent"], args].concat()).unwrap();
            Settings::resolve(&Cli { no_kubernetes: true, ..cli }).unwrap()
        };
        for (flag, key, default, value, get) in cases {
            assert_eq!(get(&resolve(&[])), default, "{flag} default");
            let file = write(key, &format!("{key} = {value}\n"));
            let file = file.to_str().unwrap();
            assert_eq!(get(&resolve(&["-c", file])), value, "{key} in the file");
            let flag_value = (value + 1).to_string();
            assert_eq!(get(&resolve(&["-c", file, flag, &flag_value])), value + 1, "{flag} over the file");
        }
        // Past what a collector accepts per request: capped.
        assert_eq!(resolve(&["--collector-merge-records", "1000000"]).collector_merge_records, 50_000);
        assert_eq!(resolve(&["--collector-max-in-flight", "0"]).collector_max_in_flight, 1);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        for (name, text, want) in [
            ("unknown", "no_such_key = 1\n", "unknown field"),
            ("type", "duration_secs = \"x\"\n", "invalid type"),
            ("output", "output = [\"kafka:x\"]\n", "unknown output"),
            ("api", "[providers.paths]\n\"/x\" = \"chat\"\n", "unknown API shape"),
        ] {
            let cli = Cli { config: Some(write(name, text)), ..Default::default() };
            let err = Settings::resolve(&cli).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
        let rules = write("rules", "[paths]\n\"/gw/llm\" = \"chat_completions\"\n");
        let cli = Cli { providers: Some(rules), ..Default::default() };
        assert_eq!(Settings::resolve(&cli).unwrap().providers.paths.len(), 1);
        let cli = Cli { config: Some("/nonexistent.toml".into()), ..Default::default() };
        assert!(matches!(Settings::resolve(&cli), Err(ConfigError::Read { .. })));
    }
}
