//! `cargo xtask bench --only-dashboards`: every Grafana panel's query
//! (dashboards/*.json, whatever dashboards there are) and the collector's
//! `report` on millions of synthetic calls in the ClickHouse engine (chdb, behind
//! the tests' HTTP front). Results: target/bench/dashboards.md.
//!
//! One database grows through the sizes asked for (and 1 M first, for the
//! report): each step adds calls over the same 30 days, one insert per day
//! through `llm_calls`, so the rollups fill through their materialized views as
//! in production. At each size every panel runs for a 7- and a 30-day range
//! with every template variable at "All", a few times.
//!
//! Target (issue #17): under 1 s per panel on 100 M rows through the rollups.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokentap_e2e::ClickHouse;

use crate::synth;

/// Timed runs per panel and range (no warm-up: the first run is the one a
/// dashboard opened after a while sees; `max` shows it).
const RUNS: usize = 3;
/// A panel slower than this once is not run again (its repeats would say
/// nothing new and cost minutes on 100 M rows).
const REPEAT_UNDER_S: f64 = 10.0;
/// ClickHouse's `max_execution_time` for a panel: Grafana's own data source
/// timeout is 30-60 s.
const PANEL_LIMIT_S: u64 = 60;
/// Report sizes below the dashboard sizes: its trend.
const REPORT_SIZES: &[u64] = &[250_000, 1_000_000];

/// A dashboard time range.
struct Range {
    name: &'static str,
    days: u64,
}

/// A day as well: below two days the dashboards read the 1-minute rollup.
const RANGES: &[Range] =
    &[Range { name: "24 hours", days: 1 }, Range { name: "7 days", days: 7 }, Range { name: "30 days", days: 30 }];

/// The interval Grafana gives a panel `w` grid columns wide (of 24) on a
/// 1,920-pixel screen: range / max data points (the panel's width in pixels),
/// rounded up the way Grafana rounds intervals (its `roundInterval` steps).
fn grafana_interval(range_s: u64, w: u64) -> u64 {
    let px = (1920 * w.clamp(1, 24) / 24).max(100);
    let raw = range_s as f64 / px as f64;
    const STEPS: &[(f64, u64)] = &[
        (1.5, 1),
        (3.5, 2),
        (7.5, 5),
        (12.5, 10),
        (17.5, 15),
        (25.0, 20),
        (45.0, 30),
        (90.0, 60),
        (210.0, 120),
        (450.0, 300),
        (1050.0, 600),
        (2100.0, 1200),
        (2700.0, 1800),
        (5400.0, 3600),
        (9000.0, 7200),
        (16200.0, 10800),
        (32400.0, 21600),
        (86400.0, 43200),
    ];
    STEPS.iter().find(|(below, _)| raw < *below).map_or(86400, |s| s.1)
}

/// A panel's SQL over this bench's range (tokentap_e2e::grafana, as the tests).
fn expand(sql: &str, from: u64, to: u64, interval_s: u64, vars: &BTreeMap<String, Vec<String>>) -> Result<String> {
    tokentap_e2e::grafana::expand(sql, &format!("toDateTime({from})"), &format!("toDateTime({to})"), interval_s, vars)
        .map_err(|e| anyhow::anyhow!(e))
}

/// Which table a query reads over `days`: the rollups are what keep long
/// ranges fast. A time series of two branches (`UNION ALL`) reads the first
/// one up to two days, the second beyond (dashboards/*.json, schema.md).
fn reads(sql: &str, days: u64) -> &'static str {
    let s = sql.to_lowercase();
    if let Some((short, long)) = s.split_once(" union all ") {
        return reads(if days <= 2 { short } else { long }, days);
    }
    let mut found = Vec::new();
    for (t, label) in [
        ("llm_calls_1m", "rollup 1m"),
        ("llm_calls_1h", "rollup 1h"),
        ("llm_health_1h", "rollup health 1h"),
        ("llm_waste_1h", "rollup waste 1h"),
        ("llm_prefixes_1h", "rollup prefixes 1h"),
        ("llm_ingest_1h", "rollup ingest 1h"),
        ("llm_traffic", "llm_traffic (raw)"),
        ("llm_calls ", "llm_calls (raw)"),
    ] {
        if s.contains(&format!("from {t}")) {
            found.push(label);
        }
    }
    match found.as_slice() {
        [one] => one,
        [] => "?",
        _ => "several",
    }
}

/// Whether a query reads raw `llm_calls` (not only its rollups).
fn reads_raw_calls(sql: &str) -> bool {
    let s = sql.to_lowercase();
    s.match_indices("from llm_calls").any(|(i, m)| !s[i + m.len()..].starts_with('_'))
}

/// Marks a text box variable's default value among the variables' queries.
const TEXTBOX: &str = "\0textbox:";

/// The saved baseline the Track dashboard's panels compare with (its variable
/// lists the saved ones).
const BASELINE: &str = "bench";

struct Panel {
    dashboard: String,
    title: String,
    /// Grid columns (of 24): Grafana's interval follows the panel's width.
    width: u64,
    sql: String,
    vars: Vec<(String, String)>,
}

/// Every panel target and template variable of every dashboards/*.json.
fn panels(root: &Path) -> Result<Vec<Panel>> {
    let mut files: Vec<_> = std::fs::read_dir(root.join("dashboards"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let d: Value = serde_json::from_slice(&std::fs::read(&path)?).with_context(|| path.display().to_string())?;
        let name = d["title"].as_str().unwrap_or("?").to_owned();
        let vars: Vec<(String, String)> = d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["type"] == "query" || v["type"] == "textbox")
            .filter_map(|v| {
                let q = v["query"].as_str()?;
                // A text box's query is its default value, not SQL.
                let q = if v["type"] == "textbox" { format!("{TEXTBOX}{q}") } else { q.to_owned() };
                Some((v["name"].as_str()?.to_owned(), q))
            })
            .collect();
        for p in d["panels"].as_array().into_iter().flatten() {
            for (i, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
                let Some(sql) = t["rawSql"].as_str() else { continue };
                let mut title = p["title"].as_str().unwrap_or("?").to_owned();
                if i > 0 {
                    title = format!("{title} (query {})", i + 1);
                }
                let width = p["gridPos"]["w"].as_u64().unwrap_or(24);
                out.push(Panel { dashboard: name.clone(), title, width, sql: sql.to_owned(), vars: vars.clone() });
            }
        }
    }
    Ok(out)
}

struct Timing {
    dashboard: String,
    title: String,
    reads: &'static str,
    interval_s: u64,
    median_s: f64,
    max_s: f64,
    runs: usize,
    /// ClickHouse's error (e.g. the time limit), if the query failed.
    error: Option<String>,
    rows: usize,
}

/// Every panel at one range: variables first (their own queries, "All"), then
/// each query `RUNS` times.
fn time_panels(ch: &ClickHouse, panels: &[&Panel], end: u64, r: &Range) -> Result<Vec<Timing>> {
    let from = end - r.days * 86400;
    let mut out = Vec::new();
    let mut var_cache: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in panels {
        let mut vars = BTreeMap::new();
        for (name, q) in &p.vars {
            let key = format!("{name}\0{q}");
            if let Some(value) = q.strip_prefix(TEXTBOX) {
                vars.insert(name.clone(), vec![value.to_owned()]);
                continue;
            }
            if !var_cache.contains_key(&key) {
                let rows = ch.query(&expand(q, from, end, 60, &BTreeMap::new())?);
                let vals = rows.iter().filter_map(|r| r.as_object()?.values().next()?.as_str().map(str::to_owned));
                var_cache.insert(key.clone(), vals.collect());
            }
            vars.insert(name.clone(), var_cache[&key].clone());
        }
        let interval_s = grafana_interval(r.days * 86400, p.width);
        let sql = expand(&p.sql, from, end, interval_s, &vars)?;
        let limited = format!("{} SETTINGS max_execution_time = {PANEL_LIMIT_S}", sql.trim_end().trim_end_matches(';'));
        let mut times = Vec::new();
        let (mut rows, mut error) = (0, None);
        for _ in 0..RUNS {
            let t = Instant::now();
            let res = ch.try_query(&limited);
            times.push(t.elapsed().as_secs_f64());
            match res {
                Ok(r) => rows = r.len(),
                Err(e) => error = Some(e.lines().next().unwrap_or("").chars().take(120).collect()),
            }
            if error.is_some() || times[0] > REPEAT_UNDER_S {
                break;
            }
        }
        let max_s = times.iter().copied().fold(0.0, f64::max);
        let t = Timing {
            dashboard: p.dashboard.clone(),
            title: p.title.clone(),
            reads: reads(&sql, r.days),
            interval_s,
            runs: times.len(),
            median_s: crate::stats::median(times.clone()),
            max_s,
            error,
            rows,
        };
        eprintln!("dashboards: {} / {} ({}): {:.3} s median {:?}", t.dashboard, t.title, r.name, t.median_s, t.error);
        out.push(t);
    }
    Ok(out)
}

/// Peak RSS (VmHWM) of a process in bytes; `clear_refs` 5 resets it.
fn peak_rss(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |k| k * 1024.0)
}

struct ReportRun {
    rows: u64,
    /// Wall seconds, the collector's and the engine's peak RSS.
    wall: f64,
    rss: f64,
    engine: f64,
}

/// `tokentap-collector report --since 30d`: wall time, the collector's peak RSS
/// (from wait4) and the engine process's peak RSS meanwhile (the GROUP BYs,
/// spilling to disk past 2 GB each).
fn time_report(collector: &Path, ch: &ClickHouse, dir: &Path) -> Result<(f64, f64, f64)> {
    let front = ch.pid();
    if let Some(pid) = front {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
    let t = Instant::now();
    let child = Command::new(collector)
        .args(["report", "--since", &format!("{}d", synth::DAYS)])
        .args(["--clickhouse-url", &ch.url, "--database", &ch.database, "--clickhouse-timeout-secs", "3600"])
        .stdout(std::fs::File::create(dir.join("report.md"))?)
        .stderr(std::fs::File::create(dir.join("report.stderr"))?)
        .stdin(Stdio::null())
        .spawn()
        .context("starting tokentap-collector report")?;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child's pid (std's Child is not waited on after this).
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = t.elapsed().as_secs_f64();
    if r < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("report failed (status {status}); see {}", dir.join("report.stderr").display());
    }
    Ok((wall, usage.ru_maxrss as f64 * 1024.0, front.map_or(0.0, peak_rss)))
}

/// `tokentap-collector baseline save` over the whole data, as `BASELINE`.
fn save_baseline(collector: &Path, ch: &ClickHouse) -> Result<()> {
    let st = Command::new(collector)
        .args(["baseline", "save", BASELINE, "--since", &format!("{}d", synth::DAYS + 1)])
        .args(["--clickhouse-url", &ch.url, "--database", &ch.database])
        .stdout(Stdio::null())
        .status()
        .context("starting tokentap-collector baseline save")?;
    if !st.success() {
        bail!("tokentap-collector baseline save failed");
    }
    Ok(())
}

fn millions(n: u64) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{} M", n / 1_000_000)
    } else {
        format!("{} M", n as f64 / 1e6)
    }
}

pub struct Options {
    /// Calls at which the panels are timed.
    pub sizes: Vec<u64>,
    /// Calls beyond this many go through the rollups only.
    pub raw_max: u64,
    /// The engine's data directory (removed before and after).
    pub data: PathBuf,
}

pub fn run(out_dir: &Path, opts: &Options) -> Result<()> {
    let sizes = &opts.sizes;
    let root = crate::workspace_root();
    crate::run(crate::cargo().args(["build", "--release", "-p", "tokentap-collector"]))?;
    let collector = crate::target_dir().join("release/tokentap-collector");
    panels(&root)?;
    let dir = opts.data.clone();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ch = ClickHouse::start(&dir, "dashboards_bench");
    let st = Command::new(&collector)
        .args(["migrate", "--clickhouse-url", &ch.url, "--database", &ch.database])
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("tokentap-collector migrate failed");
    }
    // Whole seconds: the dashboards' ranges and the data end here.
    let end = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut steps: Vec<u64> = sizes.to_vec();
    let smallest = sizes.iter().copied().min().unwrap_or(0);
    steps.extend(REPORT_SIZES.iter().filter(|&&s| s < smallest));
    steps.sort_unstable();
    steps.dedup();
    let mut md = String::from(
        "# Dashboard panels and the report on synthetic calls\n\nThe ClickHouse engine (chdb) behind the tests' \
         HTTP front, one database grown through the sizes (calls over 30 days, inserted a day at a time through \
         llm_calls so the rollups fill through their views); every panel with its variables at \"All\", \
         timed through HTTP (JSON answer included), at the interval Grafana gives a panel of its width on a \
         1,920-pixel screen, limited to 60 s (`max_execution_time`); a panel over 10 s runs once.\n",
    );
    let mut reports: Vec<ReportRun> = Vec::new();
    let mut have = 0;
    let mut baseline_saved = false;
    // Calls with raw rows; beyond them, calls through the rollups only.
    let mut raw = 0;
    for &size in &steps {
        // The machine is shared: grow only while a margin of disk stays free;
        // where the raw rows would not fit, the rollups alone still may (the
        // panels that read them are what the 1 s target is about).
        let per_call = |tables: &str| synth::on_disk(&ch, tables) / have.max(1) as f64 * (size - have) as f64 * 1.3;
        let free = free_disk(&dir);
        let rollups = "'llm_calls_1m', 'llm_calls_1h', 'llm_health_1h', 'llm_ingest_1h', 'llm_waste_1h', \
                       'llm_prefixes_1h', 'llm_traffic'";
        let all = &format!("'llm_calls', {rollups}");
        let raw_need = per_call(all) * (size.min(opts.raw_max).saturating_sub(have)) as f64 / (size - have) as f64;
        let table = if have == 0 || free - raw_need - per_call(rollups) > DISK_MARGIN {
            "llm_calls"
        } else if free - per_call(rollups) > DISK_MARGIN {
            synth::ROLLUP_ONLY
        } else {
            eprintln!("dashboards: {} calls: not enough disk ({:.1} GB free)", millions(size), free / 1e9);
            md.push_str(&format!(
                "\n## {} calls: not run\n\nNot enough disk even for the rollups: {:.1} GB free, a {:.0} GB margin kept.\n",
                millions(size),
                free / 1e9,
                DISK_MARGIN / 1e9
            ));
            break;
        };
        eprintln!(
            "dashboards: generating up to {} calls ({table}, raw rows up to {})",
            millions(size),
            millions(opts.raw_max.min(size))
        );
        let t = Instant::now();
        let raw_to = if table == "llm_calls" { size.min(opts.raw_max).max(have) } else { have };
        synth::grow(&ch, "llm_calls", have, raw_to, end);
        if raw_to < size {
            synth::rollup_only_path(&ch);
            synth::grow(&ch, synth::ROLLUP_ONLY, raw_to, size, end);
        }
        have = size;
        raw = raw.max(raw_to);
        let gen_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        synth::settle(&ch);
        let settle_s = t.elapsed().as_secs_f64();
        if !baseline_saved {
            // Once, on the smallest size: the Track panels read the saved
            // document (its size follows the groups, not the calls).
            save_baseline(&collector, &ch)?;
            baseline_saved = true;
        }
        let stats = synth::table_stats(&ch);
        eprintln!("dashboards: {} calls in {gen_s:.0} s (+{settle_s:.0} s merging)\n{stats}", millions(size));
        if sizes.contains(&size) {
            md.push_str(&format!(
                "\n## {} calls\n\nGenerated in {gen_s:.0} s, merges settled in {settle_s:.0} s.\n\n{stats}",
                millions(size)
            ));
            if raw < size {
                md.push_str(&format!(
                    "\nThe raw rows of the calls beyond the first {} did not fit on this machine's free disk: they \
                     reached the rollups (and llm_traffic) only, so panels reading raw llm_calls are not timed here.\n",
                    millions(raw)
                ));
            }
            // Read at each size: the dashboards as they are when it is timed.
            let panels = panels(&root)?;
            for r in RANGES {
                let timed: Vec<&Panel> = panels.iter().filter(|p| raw == size || !reads_raw_calls(&p.sql)).collect();
                let timings = time_panels(&ch, &timed, end, r)?;
                md.push_str(&format!(
                    "\n### Last {}\n\n| dashboard | panel | reads | interval | median | max | runs | rows |\n|---|---|---|--:|--:|--:|--:|--:|\n",
                    r.name
                ));
                for t in &timings {
                    let flag = if t.median_s > 1.0 { " **> 1 s**" } else { "" };
                    let rows = t.error.as_ref().map_or_else(|| t.rows.to_string(), |e| format!("failed: {e}"));
                    md.push_str(&format!(
                        "| {} | {} | {} | {} s | {:.3} s{flag} | {:.3} s | {} | {rows} |\n",
                        t.dashboard, t.title, t.reads, t.interval_s, t.median_s, t.max_s, t.runs
                    ));
                }
            }
        }
        if raw < size {
            // The report reads raw rows: there are none beyond `raw`.
            break;
        }
        eprintln!("dashboards: report --since 30d at {}", millions(size));
        let (wall, rss, engine) = time_report(&collector, &ch, &dir)?;
        eprintln!("dashboards: report in {wall:.1} s, collector {:.0} MB", rss / 1e6);
        reports.push(ReportRun { rows: size, wall, rss, engine });
    }
    md.push_str(
        "\n## `tokentap-collector report --since 30d`\n\nComputed in ClickHouse: the window copied once to a \
         scratch table with the prompt features extracted, then GROUP BYs (collector/src/analysis). Collector peak \
         RSS from wait4; the engine process's peak meanwhile.\n\n| calls | wall | per call | collector peak RSS | \
         engine peak RSS |\n|--:|--:|--:|--:|--:|\n",
    );
    for r in &reports {
        md.push_str(&format!(
            "| {} | {:.1} s | {:.2} µs | {:.0} MB | {:.2} GB |\n",
            millions(r.rows),
            r.wall,
            r.wall / r.rows as f64 * 1e6,
            r.rss / 1e6,
            r.engine / 1e9
        ));
    }
    drop(ch);
    // Up to 100 M calls are ~10 GB: nothing of it is kept.
    std::fs::remove_dir_all(&dir)?;
    let path = out_dir.join("dashboards.md");
    std::fs::write(&path, &md)?;
    println!("{md}");
    eprintln!("dashboards: written {}", path.display());
    Ok(())
}

/// Disk left free for the machine's other users while the bench grows its data.
const DISK_MARGIN: f64 = 5e9;

fn free_disk(path: &Path) -> f64 {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return 0.0 };
    // SAFETY: a zeroed statvfs is valid; statvfs fills it for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0.0;
    }
    st.f_bavail as f64 * st.f_frsize as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_and_all_values_expand() {
        let vars = BTreeMap::from([("service".to_owned(), vec!["a".to_owned(), "b'c".to_owned()])]);
        let sql = "SELECT $__timeInterval(t) AS time FROM llm_calls_1m WHERE $__timeFilter(t) AND service IN (${service:singlequote})";
        let out = expand(sql, 10, 20, 300, &vars).unwrap();
        assert_eq!(grafana_interval(7 * 86400, 12), 600);
        assert_eq!(grafana_interval(30 * 86400, 12), 3600);
        assert_eq!(grafana_interval(30 * 86400, 24), 1200);
        assert_eq!(
            out,
            "SELECT toStartOfInterval(toDateTime(t), INTERVAL 300 second) AS time FROM llm_calls_1m WHERE \
             t >= toDateTime(10) AND t <= toDateTime(20) AND service IN ('a','b\\'c')"
        );
        assert_eq!(reads(&out, 7), "rollup 1m");
        let both = "SELECT * FROM (SELECT 1 FROM llm_calls_1m UNION ALL SELECT 1 FROM llm_calls_1h)";
        assert_eq!((reads(both, 1), reads(both, 7)), ("rollup 1m", "rollup 1h"));
        assert!(expand("SELECT ${cluster:singlequote}", 0, 1, 60, &BTreeMap::new()).is_err());
        assert_eq!(reads("SELECT 1 FROM llm_calls WHERE x", 1), "llm_calls (raw)");
        assert_eq!(reads("SELECT 1 FROM llm_traffic FINAL", 1), "llm_traffic (raw)");
        assert!(reads_raw_calls("SELECT 1 FROM llm_calls WHERE x"));
        assert!(!reads_raw_calls("SELECT 1 FROM llm_calls_1m UNION ALL SELECT 1 FROM llm_calls_1h"));
    }
}
