//! `--metrics-listen ADDR`: the agent's own state over HTTP, for Prometheus and
//! for probes. `/metrics` (Prometheus text: every counter of the stats file as
//! `tokentap_agent_<name>`, plus process CPU and memory), `/healthz` (the
//! process answers), `/readyz` (probes attached, and not every attach refused; 503 otherwise,
//! with the reason). A plain thread
//! with a blocking listener: nothing here touches the capture path.
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::stats::Stats;

/// Counters that are levels, not totals (beside the counter groups' own,
/// e.g. the collector sink's spool gauges).
const GAUGES: &[&str] = &[
    "ring_buffer_fill_bytes",
    "ring_buffer_size_bytes",
    "files_not_probed",
    "socket_hooks_every_syscall",
    "return_probes_multi",
    "handover_overlap",
    "other_agents_unshared",
    "kubernetes_containers",
];

pub fn render(stats: &Stats) -> String {
    let mut s = String::new();
    let snap = stats.snapshot();
    let group_gauges = stats.group_gauges();
    let groups = snap.groups.iter().map(|(k, v)| (k.as_str(), *v));
    for (name, v) in snap.fields().into_iter().chain(groups) {
        let kind = if GAUGES.contains(&name) || group_gauges.contains(&name) { "gauge" } else { "counter" };
        let full =
            if kind == "counter" { format!("tokentap_agent_{name}_total") } else { format!("tokentap_agent_{name}") };
        let _ = writeln!(s, "# TYPE {full} {kind}\n{full} {v}");
    }
    render_traffic(&mut s, stats);
    if let Some((cpu, rss)) = process_usage() {
        let _ = writeln!(s, "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}");
        let _ = writeln!(s, "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}");
    }
    s
}

/// The LLM traffic series: connections to LLM API hosts and their socket
/// bytes, by host and process name (never pid: one series per process would
/// grow without bound), not read (with the reason) or decoded.
fn render_traffic(s: &mut String, stats: &Stats) {
    let series = stats.traffic.snapshot();
    let families = [
        ("undecoded_llm_connections_total", false, "connections to LLM API hosts tokentap could not read"),
        ("undecoded_llm_bytes_total", false, "socket bytes of those connections"),
        ("decoded_llm_connections_total", true, "connections to LLM API hosts a capture method decoded"),
        ("decoded_llm_bytes_total", true, "socket bytes of those connections"),
    ];
    for (name, decoded, help) in families {
        let _ = writeln!(s, "# HELP tokentap_agent_{name} {help}\n# TYPE tokentap_agent_{name} counter");
        for (k, c) in series.iter().filter(|(k, _)| k.reason.is_none() == decoded) {
            let mut labels = format!("provider_host=\"{}\",comm=\"{}\"", escape(&k.host), escape(&k.comm));
            if let Some(r) = k.reason {
                labels.push_str(&format!(",reason=\"{}\"", escape(r)));
            }
            if name.ends_with("connections_total") {
                let _ = writeln!(s, "tokentap_agent_{name}{{{labels}}} {}", c.connections);
            } else {
                let _ = writeln!(s, "tokentap_agent_{name}{{direction=\"sent\",{labels}}} {}", c.sent);
                let _ = writeln!(s, "tokentap_agent_{name}{{direction=\"received\",{labels}}} {}", c.received);
            }
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// (CPU seconds user+system, resident bytes) of this process.
fn process_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may contain spaces) start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some((cpu, pages * page))
}

/// Whether the agent captures what it is configured to: ready unless attach
/// attempts were refused (or failed for another reason than the file going
/// away) and none succeeded. No TLS library at all is fine: there is nothing
/// to attach to, and new processes are watched. The error says why.
pub fn readiness(stats: &Stats) -> Result<(), String> {
    let s = stats.snapshot();
    if s.attach_failures_permission_denied + s.attach_failures_other == 0 || s.targets_attached > 0 {
        return Ok(());
    }
    // Blame perf_event_open only when the kernel said EPERM; other failures
    // are logged one by one at their attach.
    let cause = if s.attach_failures_permission_denied > 0 {
        "the kernel refused perf_event_open (a seccomp profile, an LSM, or a missing capability"
    } else {
        "see the log for each failure (and check the capabilities"
    };
    Err(format!(
        "no probe could be attached: {} attach failures (permission_denied {}, gone {}, other {}): {cause}: \
         the agent needs {})",
        s.attach_failures,
        s.attach_failures_permission_denied,
        s.attach_failures_gone,
        s.attach_failures_other,
        crate::caps::needs()
    ))
}

fn respond(mut s: TcpStream, stats: &Stats, ready: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    if BufReader::new(&s).read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, ctype, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", render(stats)),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
        "/readyz" if !ready.load(Ordering::Relaxed) => {
            ("503 Service Unavailable", "text/plain", "attaching probes\n".to_owned())
        }
        "/readyz" => match readiness(stats) {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_owned()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Serve until the process ends.
pub fn serve(listener: TcpListener, stats: Arc<Stats>, ready: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            respond(conn, &stats, &ready);
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blind_spots::{Counts, Verdict};
    use std::io::Read;
    use tokentap_event::Unread;

    #[test]
    fn llm_traffic_series_are_labelled_by_host_process_name_and_reason() {
        let stats = Stats::default();
        let c = Counts { connections: 2, sent: 3002, received: 8324 };
        stats.traffic.add("api.openai.com", "py\"th\\on\n", Verdict::Unread(Unread::NoPlaintextSeen), c);
        stats.traffic.add(
            "api.openai.com",
            "node",
            Verdict::Decoded("openssl"),
            Counts { connections: 1, sent: 5, received: 6 },
        );
        let m = render(&stats);
        let labels = r#"provider_host="api.openai.com",comm="py\"th\\on\n",reason="no_plaintext_seen""#;
        for line in [
            format!("tokentap_agent_undecoded_llm_connections_total{{{labels}}} 2"),
            format!("tokentap_agent_undecoded_llm_bytes_total{{direction=\"sent\",{labels}}} 3002"),
            format!("tokentap_agent_undecoded_llm_bytes_total{{direction=\"received\",{labels}}} 8324"),
            r#"tokentap_agent_decoded_llm_connections_total{provider_host="api.openai.com",comm="node"} 1"#.to_owned(),
            r#"tokentap_agent_decoded_llm_bytes_total{direction="received",provider_host="api.openai.com",comm="node"} 6"#
                .to_owned(),
        ] {
            assert!(m.lines().any(|l| l == line), "{line} missing from:\n{m}");
        }
        assert!(!m.contains("pid="), "no pid label");
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        let stats = Arc::new(Stats::default());
        crate::sinks::register_counters(&stats);
        Stats::add(&stats.records, 7);
        let ready = Arc::new(AtomicBool::new(false));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        serve(l, stats.clone(), ready.clone()).unwrap();
        let get = |p: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            write!(c, "GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        let m = get("/metrics");
        assert!(m.starts_with("HTTP/1.1 200"));
        assert!(m.contains("tokentap_agent_records_total 7\n"), "{m}");
        for g in ["collector_spool_bytes", "collector_spool_batches", "collector_in_flight", "handover_overlap"] {
            assert!(m.contains(&format!("# TYPE tokentap_agent_{g} gauge\n")), "{g}: {m}");
        }
        assert!(m.contains("# TYPE tokentap_agent_collector_records_rejected_total counter"));
        assert!(m.contains("process_resident_memory_bytes "));
        assert!(m.contains("# TYPE tokentap_agent_undecoded_llm_connections_total counter\n"), "{m}");
        assert!(get("/healthz").starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get("/readyz").starts_with("HTTP/1.1 200"), "nothing to attach to is ready");
        // Every attach refused: a healthy process that captures nothing.
        Stats::add(&stats.attach_failures, 15);
        Stats::add(&stats.attach_failures_permission_denied, 15);
        let r = get("/readyz");
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("15 attach failures (permission_denied 15"), "{r}");
        assert!(r.contains(&crate::caps::needs()), "{r}");
        Stats::inc(&stats.targets_attached);
        assert!(get("/readyz").starts_with("HTTP/1.1 200"), "one file probed");
        // Files that went away before their attach say nothing about capture.
        let gone = Arc::new(Stats::default());
        Stats::add(&gone.attach_failures, 2);
        Stats::add(&gone.attach_failures_gone, 2);
        assert!(readiness(&gone).is_ok());
        Stats::inc(&gone.attach_failures_other);
        let why = readiness(&gone).unwrap_err();
        assert!(why.contains("gone 2, other 1"), "{why}");
        assert!(!why.contains("perf_event_open"), "no EPERM, no blame on it: {why}");
        assert!(r.contains("the kernel refused perf_event_open"), "{r}");
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
    }

    /// Every gauge on /metrics is named as exported (no `_total`) in
    /// docs/operations.md's paragraph on /metrics: a query for the counter
    /// form would find nothing.
    #[test]
    fn every_gauge_is_documented_under_its_exported_name() {
        let stats = Stats::default();
        crate::sinks::register_counters(&stats);
        let m = render(&stats);
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md")).unwrap();
        let section = docs.split("## The agent's HTTP endpoints").nth(1).unwrap().split("\n## ").next().unwrap();
        let gauges: Vec<&str> = m
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" gauge"))
            .filter(|n| n.starts_with("tokentap_agent_"))
            .collect();
        assert_eq!(gauges.len(), GAUGES.len() + 11, "the core's levels and the sinks': {gauges:?}");
        for g in gauges {
            assert!(section.contains(&format!("`{g}`")), "{g} is not named in docs/operations.md's /metrics paragraph");
        }
    }
}
