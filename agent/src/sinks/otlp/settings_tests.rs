use clap::Args;

use super::*;

fn section(toml_text: &str) -> toml::Table {
    toml_text.parse().unwrap()
}

#[test]
fn defaults_and_endpoint_conventions() {
    let s = OtlpSettings::from_section(&toml::Table::new()).unwrap();
    assert_eq!(s.url(Signal::Traces), "http://localhost:4318/v1/traces");
    assert_eq!(s.url(Signal::Metrics), "http://localhost:4318/v1/metrics");
    assert_eq!((s.metrics, s.compression, s.timeout_ms), (true, Compression::None, 10_000));
    assert_eq!(s.spool_dir, PathBuf::from(DEFAULT_SPOOL_DIR));
    // A base with a path keeps it (OTEL_EXPORTER_OTLP_ENDPOINT); signal URLs are used as they are.
    let s = OtlpSettings::from_section(&section(
        r#"endpoint = "https://gw.example:4318/otlp/"
           metrics_endpoint = "https://m.example/custom/path""#,
    ))
    .unwrap();
    assert_eq!(s.url(Signal::Traces), "https://gw.example:4318/otlp/v1/traces");
    assert_eq!(s.url(Signal::Metrics), "https://m.example/custom/path");
}

#[test]
fn bad_values_have_clear_errors() {
    let cases = [
        (r#"endpoint = "gw:4318""#, "endpoint \"gw:4318\": expected http(s)://HOST:PORT[/PATH]"),
        (r#"endpoint = "http://""#, "expected http(s)://HOST:PORT"),
        (r#"traces_endpoint = "http://x/v1/traces?k=1""#, "traces_endpoint"),
        (r#"headers = { "bad name" = "x" }"#, "header name \"bad name\": not an HTTP header name"),
        ("headers = { authorization = \"Bearer x\\r\\nEvil: 1\" }", "header authorization: its value has a line break"),
        (r#"cert_file = "/c""#, "give both cert_file and key_file"),
        (r#"compression = "brotli""#, "unknown variant `brotli`, expected `none` or `gzip`"),
        ("timeout_ms = 0", "timeout_ms must be at least 1"),
        ("batch_records = 0", "batch_records must be at least 1"),
        ("merge_records = 100000", "merge_records 100000: at most 10000"),
        ("max_in_flight = -1", "invalid value: integer `-1`"),
        ("metrics = \"yes\"", "invalid type: string \"yes\", expected a boolean"),
        ("url = \"http://x\"", "unknown field `url`"),
    ];
    for (text, want) in cases {
        let err = OtlpSettings::from_section(&section(text)).unwrap_err();
        assert!(err.contains(want), "{text}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    // A header value is never echoed: it is likely a credential.
    let err = OtlpSettings::from_section(&section("headers = { \"x y\" = \"s3cret\" }")).unwrap_err();
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn headers_files_are_name_value_lines() {
    let h = parse_headers_file("# comment\n\nAuthorization: Bearer abc:def\n api-key :  k \n").unwrap();
    assert_eq!(h, [("Authorization".into(), "Bearer abc:def".into()), ("api-key".into(), "k".into())]);
    let err = parse_headers_file("ok: 1\nno colon here\n").unwrap_err();
    assert_eq!(err, "line 2: expected `Name: value`");
    assert!(parse_headers_file("a b: 1").unwrap_err().starts_with("line 1: header name"));
}

#[test]
fn flags_file_keys_and_section_keys_agree() {
    let ids: Vec<String> =
        OtlpFlags::augment_args(clap::Command::new("x")).get_arguments().map(|a| a.get_id().to_string()).collect();
    assert_eq!(ids, OtlpFlags::FILE_KEYS, "one top-level key per flag, of the same name");
    let all = OtlpFlags {
        otlp_traces_endpoint: Some("http://t:1/x".into()),
        otlp_metrics_endpoint: Some("http://m:1/y".into()),
        otlp_metrics: Some(false),
        otlp_header: vec!["api-key=k1".into(), "x-scope = s=2".into()],
        otlp_headers_file: Some("/h".into()),
        otlp_ca_file: Some("/ca".into()),
        otlp_cert_file: Some("/c".into()),
        otlp_key_file: Some("/k".into()),
        otlp_compression: Some("gzip".into()),
        otlp_timeout_ms: Some(1),
        otlp_spool_dir: Some("/s".into()),
        otlp_spool_max_bytes: Some(2),
        otlp_batch_records: Some(3),
        otlp_batch_age_ms: Some(4),
        otlp_max_in_flight: Some(5),
        otlp_merge_records: Some(6),
    };
    let s = OtlpSettings::from_section(&all.section().unwrap()).expect("every flag names a section key");
    assert_eq!(
        (s.traces_endpoint.as_deref(), s.metrics, s.compression, s.timeout_ms, s.merge_records),
        (Some("http://t:1/x"), false, Compression::Gzip, 1, 6)
    );
    let want: BTreeMap<String, String> = [("api-key".into(), "k1".into()), ("x-scope".into(), "s=2".into())].into();
    assert_eq!(s.headers, want);
    assert_eq!(OtlpFlags::default().section().unwrap(), toml::Table::new());
    let bad = OtlpFlags { otlp_header: vec!["authorization: Bearer s3cret".into()], ..Default::default() };
    let err = bad.section().unwrap_err();
    assert!(err.contains("expected NAME=VALUE") && !err.contains("s3cret"), "{err}");
}
