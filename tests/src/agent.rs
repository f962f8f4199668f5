//! A running agent writing JSONL, and what its stats file says.
use super::*;

/// How often the agents started here write their stats file, in ms; 1000
/// (the agent's default) passes no flag, which agents of an earlier release
/// lack.
static STATS_EVERY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(200);

/// The tests wait for facts in the stats file (200 ms: each wait would take
/// half of the default second more); the benchmarks time the agent as it is
/// deployed and set 1000.
pub fn agents_write_stats_every(ms: u64) {
    STATS_EVERY_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// A running agent writing JSONL.
pub struct Agent {
    child: Option<Child>,
    pub records: PathBuf,
    pub stats: PathBuf,
    pub stderr: PathBuf,
}

impl Agent {
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with(dir, extra, &[])
    }

    /// Started through `wrapper` (e.g. `setpriv ... --`), when not empty.
    pub fn start_with(dir: &Path, extra: &[&str], wrapper: &[&str]) -> Self {
        let records = dir.join("records.jsonl");
        let stats = dir.join("stats.json");
        let ready = dir.join("ready");
        let stderr = dir.join("agent.stderr");
        // Left by an agent that was killed: it would look ready at once.
        let _ = std::fs::remove_file(&ready);
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        let mut child = cmd
            .arg("--output")
            .arg(format!("jsonl:{}", records.display()))
            .arg("--stats-file")
            .arg(&stats)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--key-secret-file")
            .arg(dir.join("key-secret"))
            // The tests' ClickHouse (tests/server/clickhouse_http.py names
            // itself so): inspecting its engine's library took seconds.
            .args(["--exclude-process", "tt-clickhouse"])
            .args(match STATS_EVERY_MS.load(std::sync::atomic::Ordering::Relaxed) {
                1000 => Vec::new(),
                ms => vec!["--stats-interval-ms".to_owned(), ms.to_string()],
            })
            .args(extra)
            .env("RUST_LOG", std::env::var("TOKENTAP_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stderr(std::fs::File::create(&stderr).expect("agent log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start tokentap-agent");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tokentap-agent exited with {status} before it was ready:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "tokentap-agent not ready after 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child: Some(child), records, stats, stderr }
    }

    /// Wait until the agent logs probes attached to `file` (a path, or the
    /// end of one) placed `how` (`symbols`, `analysed`, …): probes are per
    /// file, placed when a process maps it, so a process started within
    /// milliseconds of that could make its calls first.
    pub fn wait_attached(&self, file: &str, how: &str, timeout: Duration) {
        wait_for(&format!("the agent to probe {file}"), timeout, || {
            let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            log.lines().any(|l| l.contains("attached") && l.contains(how) && l.contains(file)).then_some(())
        });
    }

    /// The agent's pid (while running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    pub fn records(&self) -> Vec<Value> {
        read_jsonl(&self.records)
    }

    /// Complete records written so far (counted, not parsed).
    pub fn record_count(&self) -> usize {
        std::fs::read(&self.records).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
    }

    /// Records of the given processes.
    pub fn records_of(&self, pids: &[u32]) -> Vec<Value> {
        self.records().into_iter().filter(|r| r["pid"].as_u64().is_some_and(|p| pids.contains(&(p as u32)))).collect()
    }

    /// Wait until the processes have at least `n` records.
    pub fn wait_records(&self, pids: &[u32], n: usize) -> Vec<Value> {
        wait_for(&format!("{n} records from pids {pids:?}"), Duration::from_secs(30), || {
            let r = self.records_of(pids);
            (r.len() >= n).then_some(r)
        })
    }

    pub fn stats(&self) -> Value {
        serde_json::from_slice(&std::fs::read(&self.stats).unwrap_or_default()).unwrap_or(Value::Null)
    }

    /// The counters as written after this call (the agent rewrites its stats
    /// file every 200 ms in the tests): they count everything done before it.
    pub fn stats_from_now(&self) -> Value {
        let now = std::time::SystemTime::now();
        let written = || std::fs::metadata(&self.stats).and_then(|m| m.modified()).ok().filter(|m| *m > now);
        wait_for("the agent's stats file rewritten", Duration::from_secs(10), written);
        self.stats()
    }

    /// Wait until the agent is past its start's handover bookkeeping
    /// (`--handover-dir`: the kernel keeps the overlap of two agents for 5 s
    /// after each start, which makes every copied call dearer): a benchmark
    /// times the agent as it runs for days, not its first seconds. An agent
    /// without the gauge (older, or without `--handover-dir`) is past it.
    pub fn wait_steady(&self) -> Value {
        self.wait_stats("the agent's handover overlap over (handover_overlap 0)", |s| {
            !s.is_null() && s["handover_overlap"].as_u64().unwrap_or(0) == 0
        })
    }

    /// Wait until the stats file shows `counter >= n`.
    pub fn wait_stat(&self, counter: &str, n: u64) -> Value {
        self.wait_stats(&format!("stats {counter} >= {n}"), |s| s[counter].as_u64().unwrap_or(0) >= n)
    }

    /// Wait until a stats file the agent wrote satisfies `pred` (it writes one
    /// every 200 ms in the tests); return it.
    pub fn wait_stats(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, Duration::from_secs(60), || {
            let s = self.stats();
            pred(&s).then_some(s)
        })
    }

    /// Wait until the agent has handled the exit of `pid` (its coverage entry
    /// says `exited`): every connection of the process is closed and every
    /// record it will produce is written, since sinks are flushed before each
    /// stats write. After this, no further record of `pid` can appear.
    pub fn wait_process_done(&self, pid: u32) -> Value {
        self.wait_stats(&format!("the agent to handle the exit of pid {pid}"), |s| process_exited(s, pid))
    }

    /// [`wait_process_done`](Self::wait_process_done), then wait until the
    /// collector sink has nothing left to send: every record written was
    /// acknowledged (or refused for good, invalid or dropped: counted), the
    /// spool is empty and no request is in flight. After this the agent sends
    /// nothing more of `pid`, retries included.
    pub fn wait_delivered(&self, pid: u32) -> Value {
        self.wait_stats(&format!("pid {pid} handled and every record delivered to the collector"), |s| {
            let n = |k: &str| s[k].as_u64().unwrap_or(0);
            let settled = n("collector_records_sent")
                + n("collector_records_rejected")
                + n("collector_records_invalid")
                + n("collector_spool_dropped_records");
            process_exited(s, pid)
                && settled >= n("records")
                && n("collector_spool_batches") == 0
                && n("collector_in_flight") == 0
        })
    }

    /// SIGINT, wait for a clean exit (flush), return the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().expect("wait agent") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tokentap-agent did not exit within 30 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (no clean exit: what a crash or an OOM kill leaves) and reap.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("agent running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Every file the agent wrote, as text (for secret greps).
    pub fn all_output(&self) -> String {
        [&self.records, &self.stats, &self.stderr]
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The stats file's blind-spot entries (LLM connections no capture read) of these
/// processes: tests look only at their own clients, the agent sees the whole host.
pub fn blind_spots_of(stats: &Value, pids: &[u64]) -> Vec<Value> {
    let mine = |e: &&Value| e["pid"].as_u64().is_some_and(|p| pids.contains(&p));
    stats["blind_spots"].as_array().map(|b| b.iter().filter(mine).cloned().collect()).unwrap_or_default()
}

/// A process's entry in the stats file's coverage list (null when absent).
pub fn coverage_of(stats: &Value, pid: u32) -> Value {
    stats["coverage"].as_array().and_then(|c| c.iter().find(|p| p["pid"] == pid)).cloned().unwrap_or(Value::Null)
}

/// Whether a stats file's coverage shows that the agent handled the exit of `pid`.
pub fn process_exited(stats: &Value, pid: u32) -> bool {
    stats["coverage"].as_array().is_some_and(|c| c.iter().any(|p| p["pid"] == pid && p["exited"] == true))
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
