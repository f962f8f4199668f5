//! Settings: command-line flags over an optional TOML file over defaults.
//! Outputs (`--output`, `output = [..]`, `[outputs.<name>]`) and their
//! settings are the sinks' own: `sinks/output.rs`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use thiserror::Error;

use crate::providers::{RuleSet, Rules, RulesError};
use crate::sinks::{OutputSpec, SinkFlags};

/// `--help`'s description; the capabilities are [`crate::caps`]'s (checked at start).
fn long_about() -> String {
    format!(
        "Capture LLM API calls on this host with eBPF (uprobes on TLS libraries) and write one record per \
call: provider, model, tokens, cost, latency, process, container.\n\n\
Needs {}; the agent checks these capabilities at start and exits with an error naming what is \
missing. Needs Linux 5.17+ with BTF: on an older kernel, loading the eBPF programs fails \
with an error saying so.\nPrompt and completion text are never written; neither are credentials.",
        crate::caps::needs()
    )
}

#[derive(Debug, Parser, Default)]
#[command(
    name = "tokentap-agent",
    version,
    about = "Capture LLM API calls on this host with eBPF and write one record per call.",
    long_about = long_about(),
    next_help_heading = "Agent options (the capture's: `run` and `audit` use them all)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML config file; flags given on the command line override its values.
    #[arg(global = true, long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where records go: `jsonl:PATH` (appended, one JSON object per line),
    /// `stdout`, `collector:URL`, or `otlp[:URL]` (GenAI spans and metrics over
    /// OTLP/HTTP; URL default http://localhost:4318). Repeat for several
    /// outputs; replaces the config file's outputs (`output`,
    /// `[outputs.<name>]`). Default: stdout.
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
    /// Shorthand for the settings of `--output collector:URL` (`--collector-*`,
    /// `--spool-*`, `--cluster-name`).
    #[command(flatten)]
    pub sink_flags: SinkFlags,
    /// Write the agent's own counters (captured, dropped and why) here as JSON,
    /// every --stats-interval-ms (default 1 s) and at exit (through a temporary file of its own, renamed);
    /// a path it cannot write is an error at start.
    #[arg(global = true, long, value_name = "PATH")]
    pub stats_file: Option<PathBuf>,
    /// How often the stats file is written, in milliseconds (100 or more).
    /// Default: 1000.
    #[arg(global = true, long, value_name = "MS", value_parser = clap::value_parser!(u64).range(MIN_STATS_INTERVAL_MS..))]
    pub stats_interval_ms: Option<u64>,
    /// Price file (JSON, same format as the shipped table) whose models override
    /// or extend the shipped prices.
    #[arg(global = true, long, value_name = "PATH")]
    pub prices: Option<PathBuf>,
    /// Kernel ring buffer size in bytes (power of two). Default: 16777216.
    #[arg(global = true, long, value_name = "BYTES")]
    pub ring_buffer_bytes: Option<u32>,
    /// Upgrade without a gap: a directory on bpffs (e.g. /sys/fs/bpf/tokentap)
    /// where agents on this node share who copies each connection. A new agent
    /// takes new connections once ready; the old one hands over its keep-alive
    /// connections at their next request and, when stopped, first finishes its
    /// calls in flight. Needs the host's PID namespace. Default: unset (each
    /// agent copies everything it probes).
    #[arg(global = true, long, value_name = "DIR")]
    pub handover_dir: Option<PathBuf>,
    /// With --handover-dir, how long a stopped agent that has a successor waits
    /// for its calls in flight before it detaches. Default: 20.
    #[arg(global = true, long, value_name = "SECS")]
    pub handover_drain_secs: Option<u64>,
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
    /// Which tracepoints socket capture runs on: `raw` (sys_enter/sys_exit: a
    /// program on every syscall of the host, ~45 ns each) or `tracepoints`
    /// (the syscalls' own: only the ten socket and file calls looked at run
    /// one, 20-30 ns dearer each, other syscalls ~10 ns; tracefs is mounted at
    /// /sys/kernel/tracing if none is; falls back to raw with a warning).
    /// Default: raw
    #[arg(global = true, long, value_name = "MODE", value_enum)]
    pub syscall_hooks: Option<crate::socket_hooks::SyscallHooks>,
    /// How the TLS libraries' return probes are attached: `auto` (with
    /// --handover-dir, as `uprobe_multi` links where the kernel has them,
    /// Linux 6.6+, so that a read a client is blocked in across a whole
    /// upgrade is copied by the new agent; else perf-event uretprobes) or
    /// `uretprobe` (perf-event uretprobes always). Default: auto
    #[arg(global = true, long, value_name = "MODE", value_enum)]
    pub return_probes: Option<crate::return_probes::ReturnProbes>,
    /// Do not load tokentap's Java agent into running JVMs (HotSpot dynamic
    /// attach): their JSSE calls are then not captured, and each JVM is listed
    /// in the stats file's coverage as not probed.
    #[arg(global = true, long)]
    pub no_java_attach: bool,
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
    /// How often to poll the kubelet (only with --kubelet-url). Default: 10.
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
    /// report.md, report.html and baseline.json (the window as a baseline to
    /// track against later: `report --baseline`).
    Audit {
        /// Directory for the assessment files (created).
        #[arg(long, value_name = "DIR", default_value = "tokentap-audit")]
        out: PathBuf,
    },
    /// Render the assessment again from an events file (e.g. an audit's events.jsonl).
    Report {
        /// Records, one JSON object per line. A `stats.json` beside it (an
        /// audit leaves one) adds the LLM traffic that could not be read.
        events: PathBuf,
        /// Directory for opportunities.json, report.md, report.html and
        /// baseline.json. Default: beside EVENTS.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Compare EVENTS with this baseline (an audit's baseline.json, or
        /// `tokentap-collector baseline show NAME`): spend change split into
        /// volume, mix and unit cost, each roadmap target's progress and
        /// realised saving, new opportunities, regressions. Writes compare.md,
        /// compare.html and compare.json instead of the assessment.
        #[arg(long, value_name = "FILE")]
        baseline: Option<PathBuf>,
    },
    /// Say what the agent would probe in these executable files, and where:
    /// the TLS library found, each eBPF program and its file offset, or why a
    /// library that is there is not probed. No root needed; nothing attached.
    Inspect {
        /// Executables or shared libraries.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove what the agents left in the kernel for upgrades: the maps pinned
    /// in --handover-dir, default /sys/fs/bpf/tokentap (the last agent to stop removes them itself; this is
    /// for one that was killed). Probes need nothing: they go with the process.
    /// Refused while an agent registered there still runs: the next upgrade
    /// finds it through the pins. Of the agent options, only --handover-dir
    /// (or the config file's `handover_dir`) is used; a config file given
    /// must still be valid.
    Uninstall {
        /// Remove the pins even though an agent still runs (an upgrade on this
        /// node before it exits may then record calls twice).
        #[arg(long)]
        force: bool,
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
    match n * mult {
        0 => Err(format!("{s:?}: a capture of no time; leave --duration out to run until stopped")),
        secs => Ok(secs),
    }
}

/// The TOML file. Every flag has a key, most of them the flag's name with
/// `_` (docs/operations.md lists the others).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub output: Vec<String>,
    /// `[outputs.<name>]` sections: `type` and the sink's keys.
    #[serde(default)]
    pub outputs: BTreeMap<String, toml::Table>,
    /// The top-level keys that are shorthand for `output = [..]`'s settings
    /// (`collector_token_file`, `spool_dir`, ...: the flags' names).
    #[serde(skip)]
    pub shorthand: SinkFlags,
    pub duration_secs: Option<u64>,
    pub ready_file: Option<PathBuf>,
    pub stats_file: Option<PathBuf>,
    pub stats_interval_ms: Option<u64>,
    pub prices: Option<PathBuf>,
    pub ring_buffer_bytes: Option<u32>,
    pub handover_dir: Option<PathBuf>,
    pub handover_drain_secs: Option<u64>,
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
    /// As `--syscall-hooks`.
    pub syscall_hooks: Option<crate::socket_hooks::SyscallHooks>,
    /// As `--return-probes`.
    pub return_probes: Option<crate::return_probes::ReturnProbes>,
    /// `false`: as `--no-java-attach`.
    pub java_attach: Option<bool>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub log_level: Option<String>,
    #[serde(default)]
    pub providers: RuleSet,
    #[serde(default)]
    pub attribution: AttributionFile,
    #[serde(default)]
    pub kubernetes: KubernetesFile,
}

/// `[kubernetes]`: the keys of `--kubernetes`/`--no-kubernetes`, `--kube-*`,
/// `--kubelet-*` and `--node-name`; the flags override them.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFile {
    /// `true`: as `--kubernetes` (an error outside a pod); `false`: as
    /// `--no-kubernetes`. Unset: on when running in a pod.
    pub enabled: Option<bool>,
    pub api_url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub kubelet_url: Option<String>,
    pub kubelet_poll_secs: Option<u64>,
    pub node_name: Option<String>,
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

/// The stats file is written at most this often: it lists every process
/// the agent covers.
const MIN_STATS_INTERVAL_MS: u64 = 100;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("config file {0}: duration_secs = 0 would stop the agent at once; leave it out to run until stopped")]
    ZeroDuration(PathBuf),
    #[error("config file {0}: stats_interval_ms = {1} is under {MIN_STATS_INTERVAL_MS}")]
    StatsInterval(PathBuf, u64),
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("config file {path}: {source}")]
    Output { path: PathBuf, source: crate::sinks::BadOutput },
    #[error("{0}")]
    Outputs(crate::sinks::BadOutput),
    #[error("{path}: {source}")]
    Rules { path: PathBuf, source: RulesError },
    #[error(
        "Kubernetes metadata asked for (--kubernetes, or [kubernetes] enabled = true in the config file), but not \
         running in a pod (no service account); give --kube-api-url, --kube-token-file and --kube-ca-file (or the \
         file's [kubernetes] api_url, token_file and ca_file)"
    )]
    NoKubernetes,
    #[error("config file {0}: [kubernetes] has both api_url and kubelet_url: give one")]
    KubeEndpoints(PathBuf),
    #[error(
        "{0} given, but there is no Kubernetes API to use it with: no --kube-api-url or --kubelet-url (the file's \
         [kubernetes] api_url or kubelet_url), and no API in a pod to find (KUBERNETES_SERVICE_HOST and the service \
         account's token)"
    )]
    KubeNoEndpoint(&'static str),
    #[error(
        "--kubelet-poll-secs (the file's [kubernetes] kubelet_poll_secs) given without --kubelet-url (kubelet_url): \
         only a kubelet is polled; the API server is watched"
    )]
    KubeletPollWithoutKubelet,
}

/// Effective settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Every output with its settings complete (see `sinks::resolve`).
    pub outputs: Vec<OutputSpec>,
    pub duration: Option<Duration>,
    pub ready_file: Option<PathBuf>,
    pub stats_file: Option<PathBuf>,
    /// How often the stats file is written (`--stats-interval-ms`).
    pub stats_interval: Duration,
    pub prices: Option<PathBuf>,
    pub ring_buffer_bytes: u32,
    /// Where agents share connection ownership during an upgrade (`handover`).
    pub handover_dir: Option<PathBuf>,
    /// How long a stopped agent with a successor waits for its calls in flight.
    pub handover_drain: Duration,
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
    /// Which tracepoints socket capture runs on.
    pub syscall_hooks: crate::socket_hooks::SyscallHooks,
    /// How the TLS libraries' return probes are attached.
    pub return_probes: crate::return_probes::ReturnProbes,
    /// Load tokentap's Java agent into HotSpot JVMs.
    pub java_attach: bool,
    /// Print capture progress to stderr every few seconds (audits).
    pub progress: bool,
    /// Where /metrics, /healthz and /readyz are served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub log_level: String,
    /// User provider rules (config file's `[providers]`, then `--providers`).
    pub providers: RuleSet,
    pub attribution: crate::attribution::AttributionConfig,
    pub key_secret_file: PathBuf,
    pub kubernetes: Option<crate::attribution::kubernetes::KubeConfig>,
}

pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what: "config file",
        path: path.into(),
        source,
    })?;
    let parse = |source| ConfigError::Parse { path: path.into(), source };
    // The shorthand keys are the sinks' (read with their flags' types); the
    // rest is this file's, with error snippets from the text as usual.
    let mut root = toml::de::DeTable::parse(&text).map_err(parse)?;
    let shorthand = SinkFlags::take_from_file(root.get_mut(), &text).map_err(parse)?;
    let file = FileConfig::deserialize(toml::de::Deserializer::from(root)).map_err(|mut e| {
        e.set_input(Some(&text));
        parse(e)
    })?;
    Ok(FileConfig { shorthand, ..file })
}

impl Settings {
    pub fn resolve(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let file_path = cli.config.clone().unwrap_or_default();
        let outputs = output_settings(cli, &file)?;
        if file.duration_secs == Some(0) && cli.duration.is_none() {
            return Err(ConfigError::ZeroDuration(file_path));
        }
        let stats_interval_ms = cli.stats_interval_ms.or(file.stats_interval_ms).unwrap_or(1000);
        if stats_interval_ms < MIN_STATS_INTERVAL_MS {
            return Err(ConfigError::StatsInterval(file_path, stats_interval_ms));
        }
        let mut lib_dirs: Vec<PathBuf> = crate::discovery::DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect();
        lib_dirs.extend(file.lib_dirs.iter().cloned());
        lib_dirs.extend(cli.lib_dirs.iter().cloned());
        Ok(Self {
            outputs,
            duration: cli.duration.or(file.duration_secs).map(Duration::from_secs),
            ready_file: cli.ready_file.clone().or(file.ready_file),
            stats_file: cli.stats_file.clone().or(file.stats_file),
            stats_interval: Duration::from_millis(stats_interval_ms),
            prices: cli.prices.clone().or(file.prices),
            ring_buffer_bytes: cli.ring_buffer_bytes.or(file.ring_buffer_bytes).unwrap_or(16 << 20),
            handover_dir: cli.handover_dir.clone().or(file.handover_dir),
            handover_drain: Duration::from_secs(cli.handover_drain_secs.or(file.handover_drain_secs).unwrap_or(20)),
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
            syscall_hooks: cli.syscall_hooks.or(file.syscall_hooks).unwrap_or_default(),
            return_probes: cli.return_probes.or(file.return_probes).unwrap_or_default(),
            java_attach: !cli.no_java_attach && file.java_attach.unwrap_or(true),
            progress: matches!(cli.command, Some(Command::Audit { .. })),
            metrics_listen: cli.metrics_listen.or(file.metrics_listen),
            log_level: cli.log_level.clone().or(file.log_level).unwrap_or_else(|| "info".into()),
            providers: provider_rules(cli, &file.providers, &file_path)?,
            attribution: crate::attribution::AttributionConfig {
                service_label: file.attribution.service_label.unwrap_or_else(|| "tokentap.io/service".into()),
                end_user_header: cli.end_user_header.clone().or(file.attribution.end_user_header),
                feature_header: cli.feature_header.clone().or(file.attribution.feature_header),
                labels: if cli.labels.is_empty() { file.attribution.labels } else { cli.labels.clone() },
            },
            kubernetes: kube_settings(cli, &file.kubernetes, &file_path)?,
            key_secret_file: cli
                .key_secret_file
                .clone()
                .or(file.attribution.key_secret_file)
                .unwrap_or_else(|| "/var/lib/tokentap/key-secret".into()),
        })
    }
}

/// The outputs from the flags and the file, with their settings (shorthand
/// keys: the file's top-level ones, the flags over them).
fn output_settings(cli: &Cli, file: &FileConfig) -> Result<Vec<OutputSpec>, ConfigError> {
    let err = |source| match &cli.config {
        Some(path) => ConfigError::Output { path: path.clone(), source },
        None => ConfigError::Outputs(source),
    };
    let shorthand = |f: &SinkFlags| {
        f.sections().map_err(|reason| err(crate::sinks::BadOutput::Invalid { output: "flags".into(), reason }))
    };
    let shorthand = [shorthand(&file.shorthand)?, shorthand(&cli.sink_flags)?].concat();
    crate::sinks::resolve(crate::sinks::Sources {
        flags: &cli.outputs,
        list: &file.output,
        sections: &file.outputs,
        shorthand: &shorthand,
    })
    .map_err(err)
}

/// The config file's rules with `--providers`' on top, checked.
fn provider_rules(cli: &Cli, from_file: &RuleSet, file_path: &Path) -> Result<RuleSet, ConfigError> {
    let mut set = from_file.clone();
    let mut path = file_path.to_path_buf();
    if let Some(p) = &cli.providers {
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            what: "--providers file",
            path: p.clone(),
            source,
        })?;
        let extra = RuleSet::parse(&text).map_err(|source| ConfigError::Rules { path: p.clone(), source })?;
        set = set.merged(&extra);
        path = p.clone();
    }
    Rules::new(&set).map_err(|source| ConfigError::Rules { path, source })?;
    Ok(set)
}

fn kube_settings(
    cli: &Cli,
    file: &KubernetesFile,
    file_path: &Path,
) -> Result<Option<crate::attribution::kubernetes::KubeConfig>, ConfigError> {
    use crate::attribution::kubernetes::{node_name_from_env, KubeConfig, SA_DIR};
    // A flag over the file's `enabled`; an endpoint given as a flag asks for
    // Kubernetes too.
    // `uninstall` uses none of it: an agent's config file run from a node's
    // shell must not fail it for being outside a pod.
    if matches!(cli.command, Some(Command::Uninstall { .. })) {
        return Ok(None);
    }
    let flag_endpoint = cli.kube_api_url.is_some() || cli.kubelet_url.is_some();
    let enabled = match (cli.kubernetes, cli.no_kubernetes) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ if flag_endpoint => Some(true),
        _ => file.enabled,
    };
    if enabled == Some(false) {
        return Ok(None);
    }
    if !flag_endpoint && file.api_url.is_some() && file.kubelet_url.is_some() {
        return Err(ConfigError::KubeEndpoints(file_path.into()));
    }
    // The flags' endpoint, else the file's: the API server's or a kubelet's.
    let (api_url, kubelet_url) =
        if flag_endpoint { (&cli.kube_api_url, &cli.kubelet_url) } else { (&file.api_url, &file.kubelet_url) };
    let node_name = cli.node_name.clone().or_else(|| file.node_name.clone());
    let token_file = cli.kube_token_file.clone().or_else(|| file.token_file.clone());
    let ca_file = cli.kube_ca_file.clone().or_else(|| file.ca_file.clone());
    let poll = cli.kubelet_poll_secs.or(file.kubelet_poll_secs);
    // A setting that nothing would use is refused rather than ignored; a
    // flag's endpoint replacing the file's kubelet leaves the file's poll be.
    if poll.is_some() && cli.kubelet_url.is_none() && file.kubelet_url.is_none() {
        return Err(ConfigError::KubeletPollWithoutKubelet);
    }
    if let Some(url) = api_url.as_ref().or(kubelet_url.as_ref()) {
        let sa = PathBuf::from(SA_DIR);
        return Ok(Some(KubeConfig {
            api_url: url.clone(),
            token_file: token_file.unwrap_or_else(|| sa.join("token")),
            ca_file: ca_file.unwrap_or_else(|| sa.join("ca.crt")),
            node_name: node_name.or_else(node_name_from_env).unwrap_or_default(),
            kubelet_poll: kubelet_url.is_some().then(|| Duration::from_secs(poll.unwrap_or(10).max(1))),
        }));
    }
    let explicit = token_file.is_some() || ca_file.is_some();
    match KubeConfig::in_cluster(node_name, token_file.clone(), ca_file.clone()) {
        Some(k) => Ok(Some(k)),
        None if enabled == Some(true) => Err(ConfigError::NoKubernetes),
        None if explicit => Err(ConfigError::KubeNoEndpoint(if token_file.is_some() {
            "--kube-token-file (token_file)"
        } else {
            "--kube-ca-file (ca_file)"
        })),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
