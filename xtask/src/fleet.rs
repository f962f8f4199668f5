//! `cargo xtask bench` part 3: the fleet path under load. Synthetic records
//! written through the agent's real collector sink (`agent/examples/sink_load`)
//! at a steady rate, into the release collector (production defaults, lz4
//! inserts) and the ClickHouse engine. Per scenario: rows/s stored, lag from a
//! record's `ts` to its row (the collector's histogram), agent and collector
//! CPU and RSS, the spool over time. Results: target/bench/fleet.md.
//!
//! Targets (issue #12): lag p99 under 2 s at 5,000 calls/s per agent, no
//! growth of the spool at steady state, collector over 100k rows/s per core.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokentap_e2e::{ClickHouse, Collector};

struct Scenario {
    name: &'static str,
    agents: usize,
    rate_per_agent: u64,
}

const SCENARIOS: &[Scenario] = &[
    Scenario { name: "one agent, 1,000 calls/s", agents: 1, rate_per_agent: 1000 },
    Scenario { name: "one agent, 5,000 calls/s", agents: 1, rate_per_agent: 5000 },
    Scenario { name: "ten agents, 500 calls/s each", agents: 10, rate_per_agent: 500 },
];

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Cumulative bucket counts of a Prometheus histogram.
fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, v) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, v.trim().parse().ok()?))
        })
        .collect()
}

/// The q-quantile of the observations between two snapshots (linear within a bucket).
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> =
        after.iter().map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, m)| *m))).collect();
    let total = counts.last().map_or(0.0, |c| c.1);
    if total <= 0.0 {
        return f64::NAN;
    }
    let want = q * total;
    let mut prev = (0.0, 0.0);
    for (le, n) in counts {
        if n >= want {
            if le.is_infinite() {
                return prev.0;
            }
            let share = if n > prev.1 { (want - prev.1) / (n - prev.1) } else { 1.0 };
            return prev.0 + (le - prev.0) * share;
        }
        prev = (le, n);
    }
    prev.0
}

fn build_load() -> Result<PathBuf> {
    crate::run(crate::cargo().args(["build", "--release", "-p", "tokentap-agent", "--example", "sink_load"]))?;
    let p = crate::workspace_root().join("target/release/examples/sink_load");
    if !p.exists() {
        bail!("{} is missing after the build", p.display());
    }
    Ok(p)
}

struct Row {
    name: String,
    offered: f64,
    stored_per_s: f64,
    lag_p50: f64,
    lag_p99: f64,
    agent_cpu: f64,
    agent_rss_mib: f64,
    /// Largest spool in the first and the second half of the load (growth shows).
    spool_first_kib: f64,
    spool_second_kib: f64,
    drain_s: f64,
    collector_cpu: f64,
    collector_rss_mib: f64,
    rows_per_core_s: f64,
    lost: i64,
}

fn scenario(s: &Scenario, load: &Path, dir: &Path, seconds: u64) -> Result<Row> {
    let dir = dir.join(s.name.replace([' ', ',', '/'], "-"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ch = ClickHouse::start(&dir, "fleet_bench");
    let collector = Collector::start(&dir, &ch);
    let token = dir.join("agent-token");
    std::fs::write(&token, &collector.token)?;
    let m0 = collector.metrics();
    let cpu0 = cpu_seconds(collector.pid());
    let t0 = Instant::now();
    let mut children = Vec::new();
    for i in 0..s.agents {
        let out = dir.join(format!("load-{i}.json"));
        let child = Command::new(load)
            .args(["--url", &collector.url, "--token-file", &token.display().to_string()])
            .args(["--rate", &s.rate_per_agent.to_string(), "--seconds", &seconds.to_string()])
            .args(["--spool-dir", &dir.join(format!("spool-{i}")).display().to_string()])
            .args(["--out", &out.display().to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("load-{i}.stderr")))?)
            .spawn()
            .context("starting sink_load")?;
        children.push((child, out));
    }
    let mut results = Vec::new();
    for (mut c, out) in children {
        let st = c.wait()?;
        if !st.success() {
            bail!("sink_load failed ({st}); see {}", dir.display());
        }
        let v: Value = serde_json::from_slice(&std::fs::read(&out)?).context("sink_load result")?;
        results.push(v);
    }
    let wall = t0.elapsed().as_secs_f64();
    let written: u64 = results.iter().map(|v| v["records_written"].as_u64().unwrap_or(0)).sum();
    let stored = ch.count("SELECT count() FROM llm_calls");
    let m1 = collector.metrics();
    let cpu = cpu_seconds(collector.pid()) - cpu0;
    let lag =
        (buckets(&m0, "tokentap_collector_record_lag_seconds"), buckets(&m1, "tokentap_collector_record_lag_seconds"));
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let max_of = |k: &str| results.iter().map(|v| f(v, k)).fold(0.0, f64::max);
    let sum_of = |k: &str| results.iter().map(|v| f(v, k)).sum::<f64>();
    // Spool samples (one a second) within the first or the second half of the load.
    let half = seconds as f64 / 2.0;
    let spool_in = |lo: f64, hi: f64| {
        results
            .iter()
            .flat_map(|v| v["samples"].as_array().cloned().unwrap_or_default())
            .filter(|x| (lo..hi).contains(&f(x, "t_s")))
            .map(|x| f(&x, "spool_bytes"))
            .fold(0.0, f64::max)
    };
    let inserted = stored as f64;
    Ok(Row {
        name: s.name.to_string(),
        offered: (s.agents as u64 * s.rate_per_agent) as f64,
        stored_per_s: inserted / (seconds as f64).max(1.0),
        lag_p50: quantile(&lag.0, &lag.1, 0.5),
        lag_p99: quantile(&lag.0, &lag.1, 0.99),
        agent_cpu: (sum_of("cpu_user_s") + sum_of("cpu_sys_s")) / seconds as f64 / s.agents as f64 * 100.0,
        agent_rss_mib: max_of("max_rss_bytes") / (1024.0 * 1024.0),
        spool_first_kib: spool_in(0.0, half) / 1024.0,
        spool_second_kib: spool_in(half, seconds as f64) / 1024.0,
        drain_s: max_of("drain_seconds"),
        collector_cpu: cpu / wall * 100.0,
        collector_rss_mib: collector.peak_rss_kib() as f64 / 1024.0,
        rows_per_core_s: if cpu > 0.0 { inserted / cpu } else { f64::NAN },
        lost: written as i64 - stored as i64,
    })
}

pub fn run(dir: &Path, seconds: u64) -> Result<()> {
    let load = build_load()?;
    let bin = crate::workspace_root().join("target/release");
    std::env::set_var("TOKENTAP_COLLECTOR_BIN", bin.join("tokentap-collector"));
    std::env::set_var("TOKENTAP_AGENT_BIN", bin.join("tokentap-agent"));
    std::fs::create_dir_all(dir)?;
    let mut rows = Vec::new();
    for s in SCENARIOS {
        eprintln!("fleet: {} for {seconds} s", s.name);
        let r = scenario(s, &load, &dir.join("fleet"), seconds)?;
        eprintln!(
            "fleet: {}: {:.0} rows/s stored, lag p50 {:.2} s p99 {:.2} s, lost {}",
            r.name, r.stored_per_s, r.lag_p50, r.lag_p99, r.lost
        );
        rows.push(r);
    }
    let mut md = format!(
        "# Fleet path: agent sink -> collector -> ClickHouse engine\n\n{seconds} s per scenario, synthetic \
         records through the agent's real collector sink (agent/examples/sink_load), release collector \
         with its defaults, the ClickHouse engine behind tests/server/clickhouse_http.py. Lag: from a \
         record's ts to its row stored (collector histogram, interpolated). Agent CPU: % of a core per agent.\n\n\
         | scenario | offered calls/s | rows/s stored | lag p50 | lag p99 | agent CPU | agent RSS | spool max, 1st half | spool max, 2nd half | drain after load | collector CPU | collector RSS | collector rows/s per core | not stored |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} s | {:.2} s | {:.1}% | {:.0} MiB | {:.0} KiB | {:.0} KiB | {:.1} s | {:.1}% | {:.0} MiB | {:.0} | {} |\n",
            r.name, r.offered, r.stored_per_s, r.lag_p50, r.lag_p99, r.agent_cpu, r.agent_rss_mib,
            r.spool_first_kib, r.spool_second_kib, r.drain_s, r.collector_cpu, r.collector_rss_mib,
            r.rows_per_core_s, r.lost
        ));
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let five = rows.iter().find(|r| r.offered == 5000.0 && r.name.starts_with("one"));
    if let Some(f) = five {
        md.push_str(&format!(
            "\nTargets: lag p99 < 2 s at 5,000 calls/s per agent: {} ({:.2} s); no spool growth at steady state: {}; \
             collector > 100k rows/s per core: {} ({:.0}); nothing lost: {}.\n",
            verdict(f.lag_p99 < 2.0),
            f.lag_p99,
            verdict(rows.iter().all(|r| r.spool_second_kib <= 2.0 * r.spool_first_kib + 1024.0)),
            verdict(rows.iter().all(|r| r.rows_per_core_s > 100_000.0)),
            rows.iter().map(|r| r.rows_per_core_s).fold(f64::INFINITY, f64::min),
            verdict(rows.iter().all(|r| r.lost == 0)),
        ));
    }
    let path = dir.join("fleet.md");
    std::fs::write(&path, &md)?;
    println!("{md}");
    eprintln!("fleet: written {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_histogram_deltas() {
        let before = vec![(1.0, 0.0), (2.0, 0.0), (f64::INFINITY, 0.0)];
        let after = vec![(1.0, 50.0), (2.0, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(&before, &after, 0.5) - 1.0).abs() < 1e-9);
        assert!((quantile(&before, &after, 0.99) - 1.98).abs() < 1e-9);
        let text = "x_bucket{le=\"1\"} 3\nx_bucket{le=\"+Inf\"} 4\n";
        assert_eq!(buckets(text, "x"), vec![(1.0, 3.0), (f64::INFINITY, 4.0)]);
    }
}
