//! `cargo xtask bench` part: the agent's memory at paced rates (100, 1,000 and
//! 5,000 calls/s), each with a fresh release agent in its default
//! configuration, and where that memory goes (from /proc/PID/smaps).
//!
//! The workload is the overhead benchmark's (wrk -> nginx over TLS, 8 KB JSON
//! answers with usage), with a system prompt in each request: prompt features
//! then count the system prompt's tokens, so the tokenizer is loaded as it is
//! for most real traffic. Halfway through each run a large program starts, as
//! programs start on any node, and the agent inspects it under the load (a
//! copy of the agent's own binary, ~100 MB with its symbols and rustls,
//! waiting on its input). Each rate runs `--rss-runs` times (a fresh agent
//! each), and the 64 MiB target is judged on the highest peak of them: one run
//! can miss a peak another reaches. Results: target/bench/rss.md.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokentap_e2e::{Agent, Certs};

use crate::overhead::{nginx, wrk_body, PACED};

/// The target: peak RSS under load at 1,000 calls/s, in MiB.
const TARGET_MIB: f64 = 64.0;

/// A process's memory: RSS now and at most (VmHWM), in KiB.
fn rss_now_and_peak(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resident KiB by kind of mapping.
#[derive(Default, Clone, Copy)]
struct Breakdown {
    /// The ring buffer's mmap (`anon_inode:bpf-map`): its data pages are
    /// mapped twice (so that a record across the end reads contiguously), and
    /// the kernel maps every page at once, so RSS shows twice its size.
    ring: u64,
    /// The agent's executable: code and read-only data touched so far.
    binary: u64,
    /// Shared libraries (libc, libm, ...).
    libs: u64,
    /// Heap, allocator arenas and thread stacks.
    anon: u64,
}

fn breakdown(pid: u32) -> Breakdown {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut b = Breakdown::default();
    let mut name = String::new();
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A mapping's header: "start-end perms offset dev inode [name]".
        if fields.first().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
            name = fields.get(5..).map(|n| n.join(" ")).unwrap_or_default();
            continue;
        }
        if fields.first() != Some(&"Rss:") {
            continue;
        }
        let kib: u64 = fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        let slot = if name.starts_with("anon_inode:bpf-map") {
            &mut b.ring
        } else if !name.is_empty() && Path::new(&name) == exe {
            &mut b.binary
        } else if name.starts_with('/') {
            &mut b.libs
        } else {
            &mut b.anon
        };
        *slot += kib;
    }
    b
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One run of one rate: a fresh agent, idle, then wrk's paced calls.
struct Run {
    rps: f64,
    /// KiB: RSS at the first stats write, VmHWM then, the median of the
    /// second half of the load's samples, VmHWM over the load.
    idle: u64,
    startup_peak: u64,
    steady: u64,
    peak: u64,
    ring_fill: u64,
    records: usize,
    calls: u64,
    idle_parts: Breakdown,
    loaded: Breakdown,
}

/// A child killed and reaped when dropped, whatever ended the run.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `program` (a copy of the agent's binary: another file than the
/// agent's own) as `report /dev/stdin`, which waits for its input, held open
/// by the pipe the child keeps, until killed (its report, were its input to
/// end, would go to `out`).
fn large_program(program: &Path, out: &Path) -> std::io::Result<KilledOnDrop> {
    Command::new(program)
        .args(["report", "/dev/stdin", "--out"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(KilledOnDrop)
}

fn one_run(dir: &Path, url: &str, body: &str, secs: u32, conns: u32, delay: u32, large: &Path) -> Result<Run> {
    let agent_dir = dir.join("agent-rss");
    let _ = std::fs::remove_dir_all(&agent_dir);
    std::fs::create_dir_all(&agent_dir)?;
    let mut agent = Agent::start(&agent_dir, &["--exclude-process", "nginx"]);
    let pid = agent.pid();
    // Idle: once the agent has written its first stats file (a second of
    // running, discovery done), before any call.
    agent.wait_stats("the agent's first stats", |s| !s.is_null());
    let (idle, startup_peak) = rss_now_and_peak(pid);
    let idle_parts = breakdown(pid);
    // The start-up peak includes what discovery inspected (file pages,
    // released as scanned): reset VmHWM so that the load's own peak shows.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    // RSS and the ring buffer's fill (from the stats file) every 200 ms while wrk runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let stats = agent.stats.clone();
        std::thread::spawn(move || {
            let (mut v, mut fill) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                v.push(rss_now_and_peak(pid).0);
                let s: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&stats).unwrap_or_default()).unwrap_or_default();
                fill = fill.max(s["ring_buffer_fill_bytes"].as_u64().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(200));
            }
            (v, fill)
        })
    };
    // Halfway through the load (a fixed point of the workload, not a wait
    // for a fact).
    let starter = {
        let (large, out): (PathBuf, PathBuf) = (large.into(), dir.join("large-program-out"));
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(u64::from(secs) / 2));
            large_program(&large, &out)
        })
    };
    let (rps, _, calls, _) = wrk_body(dir, url, conns, secs, Some(delay), body)?;
    let large = starter.join().map_err(|_| anyhow::anyhow!("the large program's thread panicked"))??;
    // Until the records of wrk's calls are written (or 10 s pass: some
    // may be lost, and the table shows how many).
    let deadline = Instant::now() + Duration::from_secs(10);
    while (agent.record_count() as u64) < calls && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (samples, ring_fill) = sampler.join().unwrap_or_default();
    let (_, peak) = rss_now_and_peak(pid);
    let loaded = breakdown(pid);
    let records = agent.record_count();
    drop(large);
    anyhow::ensure!(agent.stop().success(), "agent exit");
    // Steady: the median of the second half of the run.
    let mut tail: Vec<u64> = samples[samples.len() / 2..].to_vec();
    tail.sort_unstable();
    let steady = tail.get(tail.len() / 2).copied().unwrap_or(0);
    Ok(Run { rps, idle, startup_peak, steady, peak, ring_fill, records, calls, idle_parts, loaded })
}

/// "lo-hi" in MiB, or one figure when they are equal to a tenth.
fn range(lo: u64, hi: u64) -> String {
    if format!("{:.1}", mib(lo)) == format!("{:.1}", mib(hi)) {
        format!("{:.1}", mib(hi))
    } else {
        format!("{:.1}-{:.1}", mib(lo), mib(hi))
    }
}

/// The verdict on the target from the 1,000/s runs' peaks (KiB).
fn verdict(peaks: &[u64]) -> String {
    let Some(&worst) = peaks.iter().max() else {
        return "not measured".into();
    };
    let runs = peaks.len();
    let of = if runs == 1 { "one run".to_string() } else { format!("the highest of {runs} runs") };
    let met = if mib(worst) <= TARGET_MIB { "met" } else { "NOT met" };
    format!("{met} ({:.1} MiB, {of})", mib(worst))
}

pub fn run(agent_bin: &Path, dir: &Path, long: bool, runs: u32) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let certs = Certs::generate(dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _nginx = nginx(dir, &certs, port)?;
    let url = format!("https://127.0.0.1:{port}/v1/chat/completions");
    let body = format!(
        "{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"system\",\"content\":\"You are a careful assistant. \
         Answer in JSON with the fields summary and steps.\"}},{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "x".repeat(1850)
    );
    let secs = if long { 30 } else { 15 };
    // SAFETY: single-threaded here; the harness reads it when spawning the agent.
    unsafe { std::env::set_var("TOKENTAP_AGENT_BIN", agent_bin) };
    wrk_body(dir, &url, 4, 2, None, &body)?;
    let large = dir.join("large-program");
    let large_mib = std::fs::copy(agent_bin, &large)? >> 20;
    let mut rows = String::new();
    let mut parts = String::new();
    let mut peaks_at_1000 = Vec::new();
    for (label, conns, delay) in PACED {
        let mut done = Vec::new();
        for _ in 0..runs {
            done.push(one_run(dir, &url, &body, secs, *conns, *delay, &large)?);
        }
        let peaks: Vec<u64> = done.iter().map(|r| r.peak).collect();
        if *label == "1,000/s" {
            peaks_at_1000 = peaks.clone();
        }
        let lo_hi = |f: fn(&Run) -> u64| {
            let v: Vec<u64> = done.iter().map(f).collect();
            range(v.iter().copied().min().unwrap_or(0), v.iter().copied().max().unwrap_or(0))
        };
        let (records, calls) = done.iter().fold((0, 0), |(r, c), d| (r + d.records, c + d.calls));
        rows.push_str(&format!(
            "| {label} | {:.0} | {} | {} | {} | {} | {} | {records} / {calls} |\n",
            crate::stats::median(done.iter().map(|r| r.rps).collect()),
            lo_hi(|r| r.idle),
            lo_hi(|r| r.startup_peak),
            lo_hi(|r| r.steady),
            lo_hi(|r| r.peak),
            done.iter().map(|r| r.ring_fill).max().unwrap_or(0) / 1024,
        ));
        // Where the memory went in the run with the highest peak.
        if let Some(w) = done.iter().max_by_key(|r| r.peak) {
            parts.push_str(&format!(
                "| {label} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |\n",
                mib(w.idle_parts.ring),
                mib(w.loaded.ring),
                mib(w.idle_parts.binary),
                mib(w.loaded.binary),
                mib(w.idle_parts.libs),
                mib(w.loaded.libs),
                mib(w.idle_parts.anon),
                mib(w.loaded.anon)
            ));
        }
    }
    let _ = std::fs::remove_file(&large);
    let verdict = verdict(&peaks_at_1000);
    let report = format!(
        "# tokentap agent memory (cargo xtask bench --only-rss)\n\n\
         A fresh release agent per run, {runs} run(s) per rate, default configuration (`--exclude-process nginx` \
         so that only the client is traced); wrk -> nginx over TLS, requests with a system prompt (the tokenizer \
         is loaded), {secs} s per run; halfway through each, a large program starts (a copy of the agent's \
         binary, {large_mib} MiB with its symbols and rustls, waiting on its input), which the agent inspects under \
         the load. Idle: at the agent's first stats write, before any call; start-up \
         peak: VmHWM then (discovery maps each executable it inspects, releasing file pages as it scans); \
         steady: median of the second half of the run (samples every 200 ms); peak under load: \
         VmHWM from the first call to the last record (reset after idle); ring fill: the most bytes \
         waiting in the kernel ring buffer in any second. Memory columns: the lowest-highest of the runs; \
         achieved calls/s: their median; records and calls: their sums.\n\n\
         | offered rate | achieved calls/s | idle RSS (MiB) | start-up peak (MiB) | steady RSS (MiB) | peak under load (MiB) | ring fill max (KiB) | records / calls |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|\n{rows}\n\
         Target: peak RSS under load at most {TARGET_MIB:.0} MiB at 1,000 calls/s, judged on the highest peak of the \
         runs: {verdict}.\n\n\
         Where it goes (resident MiB, idle / at the end of the run, in the run with the highest peak):\n\n\
         | offered rate | ring buffer mmap (data mapped twice) | agent binary | shared libraries | heap, arenas, stacks |\n\
         |---|--:|--:|--:|--:|\n{parts}"
    );
    std::fs::write(dir.join("rss.md"), &report)?;
    println!("\n{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_judged_on_the_highest_peak() {
        let mib = |m: u64| m * 1024;
        assert_eq!(verdict(&[mib(58), mib(63)]), "met (63.0 MiB, the highest of 2 runs)");
        // One run over the target fails it, whatever the others read.
        assert_eq!(verdict(&[mib(58), mib(65), mib(57)]), "NOT met (65.0 MiB, the highest of 3 runs)");
        assert_eq!(verdict(&[mib(64)]), "met (64.0 MiB, one run)");
        assert_eq!(verdict(&[]), "not measured");
    }

    #[test]
    fn ranges() {
        assert_eq!(range(58 * 1024, 58 * 1024 + 10), "58.0");
        assert_eq!(range(57 * 1024, 58 * 1024), "57.0-58.0");
    }
}
