//! `cargo xtask bench` part: the agent's memory at paced rates (100, 1,000 and
//! 5,000 calls/s), each with a fresh release agent in its default
//! configuration, and where that memory goes (from /proc/PID/smaps).
//!
//! The workload is the overhead benchmark's (wrk -> nginx over TLS, 8 KB JSON
//! answers with usage), with a system prompt in each request: prompt features
//! then count the system prompt's tokens, so the tokenizer is loaded as it is
//! for most real traffic. Results: target/bench/rss.md.
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokentap_e2e::{Agent, Certs};

use crate::overhead::{nginx, wrk_body, PACED};

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

pub fn run(agent_bin: &Path, dir: &Path, long: bool) -> Result<()> {
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
    let mut rows = String::new();
    let mut parts = String::new();
    let mut at_1000 = 0.0;
    for (label, conns, delay) in PACED {
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
        // The start-up peak is mostly the executables discovery inspected
        // (file pages, released after): reset VmHWM so that the load's own peak shows.
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
        let (rps, _, calls, _) = wrk_body(dir, &url, *conns, secs, Some(*delay), &body)?;
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
        anyhow::ensure!(agent.stop().success(), "agent exit");
        // Steady: the median of the second half of the run.
        let mut tail: Vec<u64> = samples[samples.len() / 2..].to_vec();
        tail.sort_unstable();
        let steady = tail.get(tail.len() / 2).copied().unwrap_or(0);
        if *label == "1,000/s" {
            at_1000 = mib(peak);
        }
        rows.push_str(&format!(
            "| {label} | {rps:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {records} / {calls} |\n",
            mib(idle),
            mib(startup_peak),
            mib(steady),
            mib(peak),
            ring_fill / 1024
        ));
        parts.push_str(&format!(
            "| {label} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |\n",
            mib(idle_parts.ring),
            mib(loaded.ring),
            mib(idle_parts.binary),
            mib(loaded.binary),
            mib(idle_parts.libs),
            mib(loaded.libs),
            mib(idle_parts.anon),
            mib(loaded.anon)
        ));
    }
    let verdict = if at_1000 <= 64.0 { "met" } else { "NOT met" };
    let report = format!(
        "# tokentap agent memory (cargo xtask bench --only-rss)\n\n\
         A fresh release agent per rate, default configuration (`--exclude-process nginx` so that only \
         the client is traced); wrk -> nginx over TLS, requests with a system prompt (the tokenizer is \
         loaded), {secs} s per rate. Idle: at the agent's first stats write, before any call; start-up \
         peak: VmHWM then (discovery maps each executable it inspects: file pages, released after); \
         steady: median of the second half of the run (samples every 200 ms); peak under load: \
         VmHWM from the first call to the last record (reset after idle); ring fill: the most bytes \
         waiting in the kernel ring buffer in any second.\n\n\
         | offered rate | achieved calls/s | idle RSS (MiB) | start-up peak (MiB) | steady RSS (MiB) | peak under load (MiB) | ring fill max (KiB) | records / calls |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|\n{rows}\n\
         Target: peak RSS under load at most 64 MiB at 1,000 calls/s: {verdict} ({at_1000:.1} MiB).\n\n\
         Where it goes (resident MiB, idle / at the end of the run):\n\n\
         | offered rate | ring buffer mmap (data mapped twice) | agent binary | shared libraries | heap, arenas, stacks |\n\
         |---|--:|--:|--:|--:|\n{parts}"
    );
    std::fs::write(dir.join("rss.md"), &report)?;
    println!("\n{report}");
    Ok(())
}
