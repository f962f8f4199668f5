//! Settings from flags, file and defaults; outputs and their settings.
use super::*;
use crate::sinks::collector::CollectorSettings;

/// The settings of output `i`, a collector.
fn collector(s: &Settings, i: usize) -> CollectorSettings {
    assert_eq!(s.outputs[i].kind, "collector", "{:?}", s.outputs);
    CollectorSettings::from_section(&s.outputs[i].section).unwrap()
}

fn write(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("tt-cfg-{}-{name}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_shipped_kubernetes_config_is_valid() {
    // deploy/manifests/tokentap.yaml's agent.toml, as the DaemonSet mounts it.
    let manifests = include_str!("../../../deploy/manifests/tokentap.yaml");
    let start = manifests.find("agent.toml: |").expect("agent.toml in the ConfigMap");
    let toml: String = manifests[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    let p = write("k8s", &toml);
    let s = Settings::resolve(&Cli { config: Some(p), no_kubernetes: true, ..Default::default() }).unwrap();
    assert_eq!((s.outputs.len(), collector(&s, 0).url.as_str()), (1, "http://tokentap-collector:8787"));
    assert_eq!(s.metrics_listen.map(|a| a.port()), Some(9464));
    assert_eq!(collector(&s, 0).cluster, "my-cluster");
    assert_eq!(s.handover_dir, Some(PathBuf::from("/sys/fs/bpf/tokentap")), "upgrades hand over");
    // In the pod's emptyDir: the two agents of an upgrade write their own.
    assert_eq!(s.stats_file, Some(PathBuf::from("/run/tokentap/stats.json")));
    // With the chart's `agent.otlpOutput` set: a second output, with the
    // chart's OTLP spool and headers file.
    let with_otlp = toml.replace(", \"\"]", ", \"otlp:http://otel-collector:4318\"]");
    assert_ne!(with_otlp, toml, "the chart leaves an empty entry for agent.otlpOutput");
    let p = write("k8s-otlp", &with_otlp);
    let s = Settings::resolve(&Cli { config: Some(p), no_kubernetes: true, ..Default::default() }).unwrap();
    assert_eq!((s.outputs.len(), s.outputs[1].kind), (2, "otlp"));
    let o = crate::sinks::otlp::OtlpSettings::from_section(&s.outputs[1].section).unwrap();
    assert_eq!(o.url(crate::sinks::otlp::Signal::Traces), "http://otel-collector:4318/v1/traces");
    assert_eq!(o.headers_file, Some("/etc/tokentap/otlp/headers".into()));
    assert_eq!(o.spool_dir, PathBuf::from("/var/lib/tokentap/otlp-spool"));
    assert_eq!(collector(&s, 0).spool_dir, PathBuf::from("/var/lib/tokentap/spool"), "each its own spool");
}

#[test]
fn handover_is_off_unless_a_directory_is_given_and_its_drain_defaults_to_20_s() {
    let s = Settings::resolve(&Cli::default()).unwrap();
    assert_eq!((s.handover_dir, s.handover_drain), (None, Duration::from_secs(20)));
    let p = write("handover", "handover_dir = \"/sys/fs/bpf/x\"\nhandover_drain_secs = 5\n");
    let cli = Cli::try_parse_from(["tokentap-agent", "-c", p.to_str().unwrap(), "--handover-drain-secs", "7"]).unwrap();
    let s = Settings::resolve(&Cli { no_kubernetes: true, ..cli }).unwrap();
    assert_eq!((s.handover_dir, s.handover_drain), (Some("/sys/fs/bpf/x".into()), Duration::from_secs(7)));
    let cli = Cli::try_parse_from(["tokentap-agent", "uninstall", "--handover-dir", "/sys/fs/bpf/y"]).unwrap();
    assert!(matches!(cli.command, Some(Command::Uninstall { force: false })));
    assert_eq!(cli.handover_dir, Some("/sys/fs/bpf/y".into()));
    let cli = Cli::try_parse_from(["tokentap-agent", "uninstall", "--force"]).unwrap();
    assert!(matches!(cli.command, Some(Command::Uninstall { force: true })));
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
    let cli = Cli::try_parse_from(["tokentap-agent", "--exclude-process", "nginx", "-c", p.to_str().unwrap()]).unwrap();
    let s = Settings::resolve(&Cli { no_kubernetes: true, ..cli }).unwrap();
    assert_eq!(s.exclude_processes, vec!["envoy".to_string(), "nginx".to_string()]);
    assert!(Settings::resolve(&Cli::default()).unwrap().exclude_processes.is_empty());
}

#[test]
fn java_attach_is_on_unless_the_flag_or_the_file_turns_it_off() {
    assert!(Settings::resolve(&Cli::default()).unwrap().java_attach);
    let cli = Cli::try_parse_from(["tokentap-agent", "--no-java-attach"]).unwrap();
    assert!(!Settings::resolve(&Cli { no_kubernetes: true, ..cli }).unwrap().java_attach);
    let p = write("java", "java_attach = false\n");
    assert!(
        !Settings::resolve(&Cli { config: Some(p), no_kubernetes: true, ..Default::default() }).unwrap().java_attach
    );
    let p = write("java-bad", "java_attach = \"no\"\n");
    assert!(Settings::resolve(&Cli { config: Some(p), ..Default::default() }).is_err());
}

#[test]
fn return_probes_are_auto_unless_the_flag_or_the_file_says_uretprobe() {
    use crate::return_probes::ReturnProbes;
    assert_eq!(Settings::resolve(&Cli::default()).unwrap().return_probes, ReturnProbes::Auto);
    let p = write("returns", "return_probes = \"uretprobe\"\n");
    let file = Cli { config: Some(p.clone()), no_kubernetes: true, ..Default::default() };
    assert_eq!(Settings::resolve(&file).unwrap().return_probes, ReturnProbes::Uretprobe);
    let cli = Cli::try_parse_from(["tokentap-agent", "--return-probes", "auto", "-c", p.to_str().unwrap()]).unwrap();
    assert_eq!(Settings::resolve(&Cli { no_kubernetes: true, ..cli }).unwrap().return_probes, ReturnProbes::Auto);
    let p = write("returns-bad", "return_probes = \"multi\"\n");
    assert!(Settings::resolve(&Cli { config: Some(p), ..Default::default() }).is_err());
    assert!(Cli::try_parse_from(["tokentap-agent", "--return-probes", "perf"]).is_err());
}

#[test]
fn syscall_hooks_are_raw_unless_the_flag_or_the_file_says_tracepoints() {
    use crate::socket_hooks::SyscallHooks;
    assert_eq!(Settings::resolve(&Cli::default()).unwrap().syscall_hooks, SyscallHooks::Raw);
    let p = write("hooks", "syscall_hooks = \"tracepoints\"\n");
    let file = Cli { config: Some(p.clone()), no_kubernetes: true, ..Default::default() };
    assert_eq!(Settings::resolve(&file).unwrap().syscall_hooks, SyscallHooks::Tracepoints);
    let cli = Cli::try_parse_from(["tokentap-agent", "--syscall-hooks", "raw", "-c", p.to_str().unwrap()]).unwrap();
    assert_eq!(Settings::resolve(&Cli { no_kubernetes: true, ..cli }).unwrap().syscall_hooks, SyscallHooks::Raw);
    let p = write("hooks-bad", "syscall_hooks = \"kprobes\"\n");
    assert!(Settings::resolve(&Cli { config: Some(p), ..Default::default() }).is_err());
    assert!(Cli::try_parse_from(["tokentap-agent", "--syscall-hooks", "auto"]).is_err());
}

#[test]
fn defaults() {
    let s = Settings::resolve(&Cli::default()).unwrap();
    assert_eq!(s.outputs, vec![OutputSpec::stdout()]);
    assert_eq!(s.ring_buffer_bytes, 16 << 20);
    assert_eq!(s.idle_timeout, Duration::from_secs(300));
    assert_eq!(s.duration, None);
    assert!(s.lib_dirs.contains(&PathBuf::from("/usr/lib")));
    assert_eq!(s.stats_interval, Duration::from_secs(1));
}

#[test]
fn the_stats_interval_comes_from_the_flag_or_the_file_and_is_at_least_100_ms() {
    let p = write("stats-every", "stats_interval_ms = 250\n");
    let s = Settings::resolve(&Cli { config: Some(p.clone()), ..Default::default() }).unwrap();
    assert_eq!(s.stats_interval, Duration::from_millis(250));
    let cli = Cli::try_parse_from(["tokentap-agent", "-c", p.to_str().unwrap(), "--stats-interval-ms", "200"]).unwrap();
    assert_eq!(
        Settings::resolve(&Cli { no_kubernetes: true, ..cli }).unwrap().stats_interval,
        Duration::from_millis(200)
    );
    assert!(Cli::try_parse_from(["tokentap-agent", "--stats-interval-ms", "99"]).is_err());
    let p = write("stats-too-often", "stats_interval_ms = 10\n");
    let e = Settings::resolve(&Cli { config: Some(p), ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("stats_interval_ms = 10 is under 100"), "{e}");
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
    assert_eq!(s.outputs, vec![OutputSpec::jsonl("/var/log/tokentap.jsonl".as_ref())]);
    assert_eq!(s.duration, Some(Duration::from_secs(60)));
    assert_eq!(s.max_body_bytes, 1024);
    assert_eq!(s.providers.hosts.get("llm.internal").map(String::as_str), Some("openai"));
    assert_eq!(s.attribution.feature_header.as_deref(), Some("x-feature"));
    assert_eq!(s.attribution.labels, vec!["team".to_string()]);
    assert_eq!(s.key_secret_file, PathBuf::from("/var/lib/tokentap/key-secret"));
    let cli = Cli { config: Some(p), duration: Some(5), outputs: vec![OutputSpec::stdout()], ..Default::default() };
    let s = Settings::resolve(&cli).unwrap();
    assert_eq!(s.duration, Some(Duration::from_secs(5)));
    assert_eq!(s.outputs, vec![OutputSpec::stdout()]);
}

#[test]
fn collector_sink_settings_from_defaults_file_and_flags() {
    type Get = fn(&Settings) -> u64;
    // (flag, file key, default, value given, what the settings hold)
    let cases: [(&str, &str, u64, u64, Get); 4] = [
        ("--collector-batch-records", "collector_batch_records", 5000, 200, |s| collector(s, 0).batch_records as u64),
        ("--collector-batch-age-ms", "collector_batch_age_ms", 1000, 250, |s| {
            collector(s, 0).batch_age().as_millis() as u64
        }),
        ("--collector-max-in-flight", "collector_max_in_flight", 4, 8, |s| collector(s, 0).max_in_flight as u64),
        ("--collector-merge-records", "collector_merge_records", 20_000, 30_000, |s| {
            collector(s, 0).merge_records as u64
        }),
    ];
    let resolve = |args: &[&str]| {
        let cli =
            Cli::try_parse_from([&["tokentap-agent", "--output", "collector:http://c:1"], args].concat()).unwrap();
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
    assert_eq!(collector(&resolve(&["--collector-merge-records", "1000000"]), 0).merge_records, 50_000);
    assert_eq!(collector(&resolve(&["--collector-max-in-flight", "0"]), 0).max_in_flight, 1);
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

/// Resolve `args` with `file` (if any) as the config file.
fn resolve_with(name: &str, file: Option<&str>, args: &[&str]) -> Result<Settings, ConfigError> {
    let mut argv = vec!["tokentap-agent".to_owned(), "--no-kubernetes".to_owned()];
    if let Some(text) = file {
        argv.extend(["-c".to_owned(), write(name, text).display().to_string()]);
    }
    argv.extend(args.iter().map(|a| a.to_string()));
    Settings::resolve(&Cli::try_parse_from(argv).unwrap())
}

/// (case, config file, flags, each output as shown in errors with its section)
type OutputCase<'a> = (&'a str, Option<&'a str>, &'a [&'a str], &'a [(&'a str, &'a str)]);

#[test]
fn outputs_from_flags_top_level_keys_and_sections() {
    let cases: &[OutputCase] = &[
        (
            "old flags",
            None,
            &[
                "--output",
                "collector:http://c:1",
                "--collector-token-file",
                "/t",
                "--spool-dir",
                "/s",
                "--cluster-name",
                "n",
            ],
            &[(
                r#"output "collector:http://c:1""#,
                r#"url = "http://c:1"
                token_file = "/t"
                spool_dir = "/s"
                cluster = "n""#,
            )],
        ),
        (
            "old top-level keys",
            Some(
                r#"output = ["collector:http://c:1"]
                collector_token_file = "/t"
                spool_dir = "/s"
                cluster_name = "n"
                collector_batch_records = 10"#,
            ),
            &[],
            &[(
                r#"output "collector:http://c:1""#,
                r#"url = "http://c:1"
                token_file = "/t"
                spool_dir = "/s"
                cluster = "n"
                batch_records = 10"#,
            )],
        ),
        (
            "a named section",
            Some(
                r#"[outputs.fleet]
                type = "collector"
                url = "http://c:1"
                token_file = "/t"
                batch_age_ms = 250"#,
            ),
            &[],
            &[(
                "[outputs.fleet]",
                r#"url = "http://c:1"
                token_file = "/t"
                batch_age_ms = 250"#,
            )],
        ),
        (
            "a list and sections",
            Some(
                r#"output = ["stdout"]
                [outputs.local]
                type = "jsonl"
                path = "/var/log/x.jsonl"
                [outputs.also]
                type = "stdout""#,
            ),
            &[],
            &[(r#"output "stdout""#, ""), ("[outputs.also]", ""), ("[outputs.local]", r#"path = "/var/log/x.jsonl""#)],
        ),
        (
            "flags over top-level keys",
            Some(
                r#"output = ["collector:http://c:1"]
                spool_dir = "/file"
                cluster_name = "f""#,
            ),
            &["--spool-dir", "/flag"],
            &[(
                r#"output "collector:http://c:1""#,
                r#"url = "http://c:1"
                spool_dir = "/flag"
                cluster = "f""#,
            )],
        ),
        (
            "shorthand is for unnamed outputs only",
            Some(
                r#"output = ["collector:http://a:1"]
                spool_dir = "/a"
                [outputs.b]
                type = "collector"
                url = "http://b:1"
                spool_dir = "/b""#,
            ),
            &["--cluster-name", "x"],
            &[
                (
                    r#"output "collector:http://a:1""#,
                    r#"url = "http://a:1"
                    spool_dir = "/a"
                    cluster = "x""#,
                ),
                (
                    "[outputs.b]",
                    r#"url = "http://b:1"
                    spool_dir = "/b""#,
                ),
            ],
        ),
        (
            "--output replaces the file's outputs",
            Some(
                r#"output = ["jsonl:/x"]
                [outputs.fleet]
                type = "collector"
                url = "http://c:1""#,
            ),
            &["--output", "stdout"],
            &[(r#"output "stdout""#, "")],
        ),
        ("no output: stdout", Some("log_level = \"info\""), &[], &[(r#"output "stdout""#, "")]),
    ];
    for (i, (case, file, args, want)) in cases.iter().enumerate() {
        let s = resolve_with(&format!("outputs-{i}"), *file, args).unwrap_or_else(|e| panic!("{case}: {e}"));
        let got: Vec<(String, toml::Table)> = s.outputs.iter().map(|o| (o.to_string(), o.section.clone())).collect();
        let want: Vec<(String, toml::Table)> = want
            .iter()
            .map(|(name, keys)| {
                let keys: String = keys.lines().map(|l| format!("{}\n", l.trim())).collect();
                (name.to_string(), toml::from_str(&keys).unwrap())
            })
            .collect();
        assert_eq!(got, want, "{case}");
    }
}

#[test]
fn a_section_and_the_old_keys_give_the_same_collector_settings() {
    let old = r#"output = ["collector:https://c:8443"]
collector_token_file = "/t"
collector_ca_file = "/ca"
collector_cert_file = "/c"
collector_key_file = "/k"
spool_dir = "/s"
spool_max_bytes = 1000
collector_batch_records = 10
collector_batch_age_ms = 20
collector_max_in_flight = 3
collector_merge_records = 40
cluster_name = "prod"
"#;
    let new = r#"[outputs.fleet]
type = "collector"
url = "https://c:8443"
token_file = "/t"
ca_file = "/ca"
cert_file = "/c"
key_file = "/k"
spool_dir = "/s"
spool_max_bytes = 1000
batch_records = 10
batch_age_ms = 20
max_in_flight = 3
merge_records = 40
cluster = "prod"
"#;
    let old = collector(&resolve_with("same-old", Some(old), &[]).unwrap(), 0);
    let new = collector(&resolve_with("same-new", Some(new), &[]).unwrap(), 0);
    assert_eq!(old, new);
    assert_eq!((old.merge_records, old.cluster.as_str()), (40, "prod"));
    let defaults =
        collector(&resolve_with("same-defaults", None, &["--output", "collector:https://c:8443"]).unwrap(), 0);
    assert_eq!(defaults, CollectorSettings::new("https://c:8443", "/var/lib/tokentap/spool"));
}

#[test]
fn bad_outputs_are_clear_errors() {
    let collector = "type = \"collector\"\nurl = \"http://c:1\"\n";
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("unknown key", format!("[outputs.fleet]\n{collector}urll = 1\n"), &["[outputs.fleet]: unknown field `urll`"]),
        (
            "an old key in a section",
            format!("[outputs.fleet]\n{collector}collector_token_file = \"/t\"\n"),
            &["[outputs.fleet]: unknown field `collector_token_file`"],
        ),
        (
            "unknown type",
            "[outputs.k]\ntype = \"kafka\"\n".into(),
            &["[outputs.k]: unknown type \"kafka\" (one of jsonl, stdout, collector, otlp)"],
        ),
        ("no type", "[outputs.k]\npath = \"/x\"\n".into(), &["[outputs.k]: missing `type`"]),
        ("type not a string", "[outputs.k]\ntype = 1\n".into(), &["[outputs.k]: unknown type \"1\""]),
        ("no url", "[outputs.c]\ntype = \"collector\"\n".into(), &["[outputs.c]: missing field `url`"]),
        (
            "bad url",
            "[outputs.c]\ntype = \"collector\"\nurl = \"c:1\"\n".into(),
            &["[outputs.c]: url \"c:1\": expected http(s)://HOST:PORT"],
        ),
        (
            "wrong value type",
            format!("[outputs.c]\n{collector}batch_records = \"x\"\n"),
            &["[outputs.c]: invalid type: string \"x\"", "batch_records"],
        ),
        (
            "a certificate without its key",
            format!("[outputs.c]\n{collector}cert_file = \"/c\"\n"),
            &["[outputs.c]: a client certificate and its key go together: give both cert_file and key_file"],
        ),
        ("stdout takes no keys", "[outputs.s]\ntype = \"stdout\"\npath = \"/x\"\n".into(), &["unknown field `path`"]),
        ("jsonl needs a path", "[outputs.j]\ntype = \"jsonl\"\n".into(), &["[outputs.j]: missing field `path`"]),
        ("outputs is not a table", "outputs = 1\n".into(), &["invalid type"]),
        (
            "an old key of the wrong type",
            "output = [\"collector:http://c:1\"]\nspool_max_bytes = \"x\"\n".into(),
            &["invalid type: string \"x\"", "spool_max_bytes"],
        ),
        ("an unknown top-level key", "no_such_key = 1\n".into(), &["unknown field `no_such_key`"]),
        (
            "an otlp endpoint without a scheme",
            "[outputs.o]\ntype = \"otlp\"\nendpoint = \"gw:4318\"\n".into(),
            &["[outputs.o]: endpoint \"gw:4318\": expected http(s)://HOST:PORT[/PATH]"],
        ),
        (
            "an otlp shorthand key of the wrong value",
            "output = [\"otlp:http://gw:4318\"]\notlp_compression = \"brotli\"\n".into(),
            &["output \"otlp:http://gw:4318\": unknown variant `brotli`"],
        ),
        ("a bad spec", "output = [\"collector:c:1\"]\n".into(), &["unknown output \"collector:c:1\""]),
        (
            "an old certificate key without its key file",
            "output = [\"collector:https://c:1\"]\ncollector_cert_file = \"/c\"\n".into(),
            &["output \"collector:https://c:1\": a client certificate and its key go together"],
        ),
    ];
    for (i, (case, text, want)) in cases.iter().enumerate() {
        let err = resolve_with(&format!("bad-output-{i}"), Some(text), &[]).unwrap_err().to_string();
        for w in *want {
            assert!(err.contains(w), "{case}: {err:?} lacks {w:?}");
        }
        assert!(err.starts_with("config file "), "{case}: {err}");
        // Flags that replace the file's outputs do not hide its mistakes.
        let err = resolve_with(&format!("bad-output-{i}-o"), Some(text), &["--output=stdout"]).unwrap_err();
        let err = err.to_string();
        for w in *want {
            assert!(err.contains(w), "{case}, with --output: {err:?} lacks {w:?}");
        }
    }
}

#[test]
fn shorthand_flags_parse_as_before() {
    let cli = Cli::try_parse_from([
        "tokentap-agent",
        "--output=collector:https://c:1",
        "--collector-ca-file=/ca",
        "--collector-cert-file=/c",
        "--collector-key-file=/k",
        "--spool-max-bytes=5",
    ])
    .unwrap();
    let f = &cli.sink_flags.collector;
    assert_eq!((f.collector_ca_file.as_deref(), f.spool_max_bytes), (Some(Path::new("/ca")), Some(5)));
    let err = Cli::try_parse_from(["tokentap-agent", "--collector-cert-file=/c"]).unwrap_err();
    assert!(err.to_string().contains("--collector-key-file"), "{err}");
    let s = Settings::resolve(&Cli { no_kubernetes: true, ..cli }).unwrap();
    let c = collector(&s, 0);
    assert_eq!(c.client_cert(), Some((&PathBuf::from("/c"), &PathBuf::from("/k"))));
}

#[test]
fn kubernetes_settings_from_the_files_section_with_the_flags_over_them() {
    let p = write(
        "kube",
        "[kubernetes]\nkubelet_url = \"https://10.0.0.5:10250\"\nkubelet_poll_secs = 30\nnode_name = \"node-a\"\n\
         token_file = \"/t\"\nca_file = \"/ca\"\n",
    );
    let cli = |args: &[&str]| {
        let mut argv = vec!["tokentap-agent", "-c", p.to_str().unwrap()];
        argv.extend_from_slice(args);
        Settings::resolve(&Cli::try_parse_from(argv).unwrap()).map(|s| s.kubernetes)
    };
    let k = cli(&[]).unwrap().expect("the file's kubelet");
    assert_eq!((k.api_url.as_str(), k.node_name.as_str()), ("https://10.0.0.5:10250", "node-a"));
    assert_eq!((k.token_file, k.ca_file), (PathBuf::from("/t"), PathBuf::from("/ca")));
    assert_eq!(k.kubelet_poll, Some(Duration::from_secs(30)));
    // A flag's endpoint replaces the file's (an API server: no kubelet poll).
    let k = cli(&["--kube-api-url", "https://api:6443", "--node-name", "node-b"]).unwrap().unwrap();
    assert_eq!((k.api_url.as_str(), k.node_name.as_str(), k.kubelet_poll), ("https://api:6443", "node-b", None));
    assert_eq!(k.token_file, PathBuf::from("/t"), "the file's token with the flag's endpoint");
    assert_eq!(cli(&["--no-kubernetes"]).unwrap(), None);
    // enabled = false is --no-kubernetes; --kubernetes overrides it.
    let off = write("kube-off", "[kubernetes]\nenabled = false\napi_url = \"https://api:6443\"\n");
    let resolve = |argv: &[&str]| Settings::resolve(&Cli::try_parse_from(argv).unwrap()).map(|s| s.kubernetes);
    assert_eq!(resolve(&["tokentap-agent", "-c", off.to_str().unwrap()]).unwrap(), None);
    let on = resolve(&["tokentap-agent", "-c", off.to_str().unwrap(), "--kubernetes"]).unwrap();
    assert_eq!(on.map(|k| k.api_url), Some("https://api:6443".into()));
    // So does an endpoint given as a flag.
    let on = resolve(&["tokentap-agent", "-c", off.to_str().unwrap(), "--kubelet-url", "https://n:10250"]).unwrap();
    assert_eq!(on.map(|k| k.api_url), Some("https://n:10250".into()));
    // Both endpoints in the file, or a key the section lacks: refused, named.
    let both = write("kube-both", "[kubernetes]\napi_url = \"https://a\"\nkubelet_url = \"https://b\"\n");
    let e = resolve(&["tokentap-agent", "-c", both.to_str().unwrap()]).unwrap_err().to_string();
    assert!(e.contains("both api_url and kubelet_url"), "{e}");
    let typo = write("kube-typo", "[kubernetes]\nkubelet = \"https://b\"\n");
    let e = resolve(&["tokentap-agent", "-c", typo.to_str().unwrap()]).unwrap_err().to_string();
    assert!(e.contains("unknown field `kubelet`"), "{e}");
}

#[test]
fn a_duration_of_nothing_and_a_missing_providers_file_are_named() {
    let e = Cli::try_parse_from(["tokentap-agent", "--duration", "0s"]).unwrap_err().to_string();
    assert!(e.contains("a capture of no time"), "{e}");
    let e = resolve_with("zero-duration", Some("duration_secs = 0\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("duration_secs = 0 would stop the agent at once"), "{e}");
    assert_eq!(
        resolve_with("zero-over", Some("duration_secs = 0\n"), &["--duration=5"])
            .unwrap()
            .duration
            .map(|d| d.as_secs()),
        Some(5)
    );
    let e = resolve_with("providers", None, &["--providers=/tokentap/none.toml"]).unwrap_err().to_string();
    assert!(e.starts_with("cannot read --providers file /tokentap/none.toml: "), "{e}");
}

#[test]
fn kubernetes_settings_that_nothing_would_use_are_refused() {
    let resolve = |argv: &[&str]| {
        let argv: Vec<&str> = ["tokentap-agent"].iter().chain(argv).copied().collect();
        Settings::resolve(&Cli::try_parse_from(argv).unwrap()).map(|s| s.kubernetes)
    };
    let err = |argv: &[&str]| resolve(argv).unwrap_err().to_string();
    // Outside a pod (in one, a token given is the in-cluster API's).
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        assert!(err(&["--kube-token-file", "/t"]).contains("--kube-token-file (token_file) given, but"));
        assert!(err(&["--kube-ca-file", "/ca"]).contains("--kube-ca-file (ca_file) given, but"));
        let only_token = write("kube-token-only", "[kubernetes]\ntoken_file = \"/t\"\n");
        assert!(err(&["-c", only_token.to_str().unwrap()]).contains("no Kubernetes API to use it with"));
    }
    assert!(err(&["--kubelet-poll-secs", "5"]).contains("without --kubelet-url"));
    assert!(err(&["--kube-api-url", "https://api:6443", "--kubelet-poll-secs", "5"]).contains("without --kubelet-url"));
    // With a use, or turned off, they stand.
    let k = resolve(&["--kubelet-url", "https://n:10250", "--kubelet-poll-secs", "5", "--kube-token-file", "/t"]);
    let k = k.unwrap().expect("a kubelet");
    assert_eq!((k.kubelet_poll, k.token_file), (Some(Duration::from_secs(5)), PathBuf::from("/t")));
    assert_eq!(resolve(&["--no-kubernetes", "--kube-token-file", "/t", "--kubelet-poll-secs", "5"]).unwrap(), None);
    // The file's kubelet with its poll, replaced by a flag's API server: the
    // poll is the file's setting for its own endpoint, not refused.
    // `uninstall` does not use them: the agent's settings do not stop it.
    assert_eq!(resolve(&["uninstall", "--kube-token-file", "/t", "--kubernetes"]).unwrap(), None);
    let kubelet =
        write("kube-kubelet-poll", "[kubernetes]\nkubelet_url = \"https://n:10250\"\nkubelet_poll_secs = 30\n");
    let k = resolve(&["-c", kubelet.to_str().unwrap(), "--kube-api-url", "https://api:6443"]).unwrap().unwrap();
    assert_eq!((k.api_url.as_str(), k.kubelet_poll), ("https://api:6443", None));
}

#[test]
fn the_config_file_example_in_the_docs_is_valid() {
    let docs = include_str!("../../../docs/operations.md");
    let start = docs.find("Config file (`--config agent.toml`)").expect("the example's heading");
    let body = &docs[start..];
    let body = &body[body.find("```toml\n").expect("its toml block") + 8..];
    let toml = &body[..body.find("```").expect("the block's end")];
    let p = write("docs-example", toml);
    let s = Settings::resolve(&Cli { config: Some(p), ..Default::default() }).unwrap();
    assert_eq!(s.kubernetes.map(|k| k.node_name), Some("node-a".into()));
    assert_eq!((s.duration, s.exclude_processes), (Some(Duration::from_secs(3600)), vec!["nginx".to_owned()]));
}
