//! Java (JSSE): attaching tokentap's Java agent to running HotSpot JVMs.
//!
//! Why this way: a JVM does TLS in Java, so no native function carries its
//! plaintext; the only boundary is inside JSSE. tokentap loads a small Java
//! agent into each JVM through HotSpot's dynamic attach ([`hotspot`]), with no
//! change to the application, its image or its command line. The agent
//! (agent/java/) patches JSSE's plaintext methods to hand each buffer to a
//! native function of its own library, which the `java` eBPF programs probe
//! (agent-ebpf/src/java.rs); records then flow as for every other method,
//! `tls_library` `java`. Kprobes (the other route peers take, an ioctl caught
//! in the kernel) are not available everywhere; uprobes on our own function are.
//!
//! Per JVM (discovery reports each process mapping `libjvm.so`), once:
//! 1. skipped, and listed in coverage with the reason: `--no-java-attach`;
//!    OpenJ9 (another attach protocol); attach disabled
//!    (`-XX:+DisableAttachMechanism`, read from the JVM's perf data file, or
//!    from its command line and option variables without one); dynamic agent
//!    loading disabled (`-XX:-EnableDynamicAgentLoading`, its perf data's
//!    JVM arguments or its command line): never signalled; its /tmp mounted
//!    noexec (the library placed there could not be loaded);
//! 2. already carrying the agent (its native library in the maps, from an
//!    earlier tokentap): nothing to load, discovery probes the library;
//! 3. not ready: still starting (its perf data has no VM creation end time
//!    yet, or without perf data it is under 3 s old: an agent loaded earlier
//!    fails inside the JVM), or SIGQUIT not yet caught: tried again for up to
//!    a minute;
//! 4. else, on a thread that takes the JVM's uid and gid (the only privilege
//!    used beyond reading /proc: CAP_SETUID/CAP_SETGID), as the JDK's own
//!    tools would: the jar and library are placed in the JVM's /tmp, owned by
//!    its user ([`root`]), the listener started (trigger file, SIGQUIT), the
//!    agent loaded. While the load runs, discovery is
//!    asked to rescan the process: it finds the library in the maps and
//!    probes it, and the Java agent waits for that probe before it reports
//!    anything. The agent's one-line status is read back and logged.
//! 5. a transient failure (no socket in time, a connect or a reply timing
//!    out: a JVM paused, or busy) is tried again, up to [`RETRIES`] times with
//!    a growing pause, each counted (`jvm_attach_retries`); what cannot get
//!    better (attach disabled, OpenJ9, noexec, a refusal) never is.
//!
//! Safety: nothing is sent to a JVM unless it is HotSpot with attach enabled
//! and SIGQUIT handled; every wait has a deadline; a failed attach leaves the
//! JVM running, unpatched (the Java agent installs all or reports why not).
//! JVMs are attached one at a time, on this module's own thread.
pub mod hotspot;
pub mod perfdata;
pub mod procfs;
pub mod root;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::discovery::java::{Jvm, Vm};
use crate::discovery::{TlsLibrary, Unprobed};
use crate::pipeline::ProcessEvent;
use crate::stats::{CounterSet, Stats};

/// The Java agent jar and its native library, built by build.rs (empty when
/// built with `AYA_BUILD_SKIP=1`).
pub static JAR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tokentap-java.jar"));
pub static LIB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libtokentap_java.so"));

/// A JVM still starting is looked at again this long.
const READY_WAIT: Duration = Duration::from_secs(60);
const LISTENER_WAIT: Duration = Duration::from_secs(10);
/// The load runs the agent's install, which waits up to 10 s for our probe.
const LOAD_WAIT: Duration = Duration::from_secs(30);
const MAX_KNOWN: usize = 65536;
/// Pauses before each try again after a transient failure.
const RETRIES: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(4), Duration::from_secs(15)];
/// How much of the Java agent's status line is kept (its list of patched
/// methods fits).
const STATUS_CHARS: usize = 600;

/// This module's counters, in the stats file and /metrics.
#[derive(Default)]
pub struct JavaCounters {
    /// JVMs the Java agent was loaded into (or found already carrying it).
    pub jvms_attached: AtomicU64,
    /// JVMs skipped or whose attach failed (each listed in coverage).
    pub jvms_not_attached: AtomicU64,
    /// Attaches tried again after a transient failure.
    pub jvm_attach_retries: AtomicU64,
}

impl CounterSet for JavaCounters {
    fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("jvms_attached", self.jvms_attached.load(Ordering::Relaxed)),
            ("jvms_not_attached", self.jvms_not_attached.load(Ordering::Relaxed)),
            ("jvm_attach_retries", self.jvm_attach_retries.load(Ordering::Relaxed)),
        ]
    }
}

/// What one look at a JVM came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Attached(String),
    AlreadyLoaded,
    NotReady,
    Skipped(String),
    /// Failed in a way that may pass (a timeout): worth another try.
    Transient(String),
}

/// Where a JVM stands.
#[derive(Clone, Copy)]
enum Seen {
    Done,
    /// Tried again later: not ready yet, or after a transient failure.
    Pending {
        first_seen: Instant,
        retries: usize,
        /// Not before then, however often discovery reports it.
        not_before: Instant,
    },
}

/// When to look at a JVM again after `outcome`, `retries` tries again
/// already made (None: its outcome is final).
fn again_after(outcome: &Outcome, waited: Duration, retries: usize) -> Option<Duration> {
    match outcome {
        Outcome::NotReady => (waited < READY_WAIT).then_some(Duration::from_millis(250)),
        Outcome::Transient(_) => RETRIES.get(retries).copied(),
        _ => None,
    }
}

pub struct Attacher {
    enabled: bool,
    proc_root: PathBuf,
    /// Discovery's queue: asks it to rescan a JVM while the agent loads.
    rescan: Sender<ProcessEvent>,
    coverage: Sender<Unprobed>,
    counters: Arc<JavaCounters>,
    /// (pid, start time) -> where it stands.
    known: HashMap<(u32, u64), Seen>,
    retry: BTreeMap<Instant, Vec<Jvm>>,
}

impl Attacher {
    pub fn new(enabled: bool, rescan: Sender<ProcessEvent>, coverage: Sender<Unprobed>, stats: &Stats) -> Self {
        Self {
            enabled,
            proc_root: "/proc".into(),
            rescan,
            coverage,
            counters: stats.group::<JavaCounters>(),
            known: HashMap::new(),
            retry: BTreeMap::new(),
        }
    }

    /// Handle JVMs from discovery until `stop`.
    pub fn run(mut self, jvms: Receiver<Jvm>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let wait = self.retry.keys().next().map_or(Duration::from_millis(200), |t| {
                t.saturating_duration_since(Instant::now()).min(Duration::from_millis(200))
            });
            match jvms.recv_timeout(wait) {
                Ok(j) => self.consider(j),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            while let Some(e) = self.retry.first_entry() {
                if *e.key() > now {
                    break;
                }
                for j in e.remove() {
                    self.consider(j);
                }
            }
        }
    }

    fn consider(&mut self, jvm: Jvm) {
        let dir = self.proc_root.join(jvm.pid.to_string());
        let Some(facts) = procfs::Facts::read(&dir) else { return };
        let key = (jvm.pid, facts.start_time);
        let (first_seen, retries) = match self.known.get(&key) {
            Some(Seen::Done) => return,
            Some(Seen::Pending { not_before, .. }) if Instant::now() < *not_before => return,
            Some(Seen::Pending { first_seen, retries, .. }) => (*first_seen, *retries),
            None => (Instant::now(), 0),
        };
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
        }
        let started = Instant::now();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim_end().to_owned();
        let outcome = self.attach(&jvm, &facts, &dir);
        let took_ms = started.elapsed().as_millis() as u64;
        if let Some(pause) = again_after(&outcome, first_seen.elapsed(), retries) {
            let retries = match &outcome {
                Outcome::Transient(reason) => {
                    Stats::inc(&self.counters.jvm_attach_retries);
                    tracing::debug!(pid = jvm.pid, comm, %reason, "JVM attach failed, trying again");
                    retries + 1
                }
                _ => retries,
            };
            let not_before = Instant::now() + pause;
            self.known.insert(key, Seen::Pending { first_seen, retries, not_before });
            self.retry.entry(not_before).or_default().push(jvm);
            return;
        }
        match outcome {
            Outcome::Transient(reason) => self.skipped(&jvm, &comm, format!("{reason} (tried {} times)", retries + 1)),
            Outcome::NotReady => {
                let reason = "not started, or SIGQUIT not handled, after 60 s (-Xrs?): never signalled".to_owned();
                self.skipped(&jvm, &comm, reason);
            }
            Outcome::Attached(status) => {
                Stats::inc(&self.counters.jvms_attached);
                tracing::info!(pid = jvm.pid, comm, took_ms, %status, "java agent attached");
            }
            Outcome::AlreadyLoaded => {
                Stats::inc(&self.counters.jvms_attached);
                tracing::info!(pid = jvm.pid, comm, "java agent already loaded (earlier tokentap): probed");
            }
            Outcome::Skipped(reason) => self.skipped(&jvm, &comm, reason),
        }
        self.known.insert(key, Seen::Done);
    }

    fn skipped(&self, jvm: &Jvm, comm: &str, reason: String) {
        Stats::inc(&self.counters.jvms_not_attached);
        tracing::warn!(pid = jvm.pid, comm, %reason, "JVM not attached");
        let u = Unprobed { pid: jvm.pid, comm: comm.into(), path: jvm.lib.clone(), library: TlsLibrary::Java, reason };
        let _ = self.coverage.try_send(u);
    }

    fn attach(&self, jvm: &Jvm, facts: &procfs::Facts, dir: &Path) -> Outcome {
        if !self.enabled {
            return Outcome::Skipped("Java attach turned off (--no-java-attach)".into());
        }
        if JAR.is_empty() || LIB.is_empty() {
            return Outcome::Skipped("this agent was built without its Java agent (AYA_BUILD_SKIP)".into());
        }
        if jvm.vm == Vm::OpenJ9 {
            return Outcome::Skipped("OpenJ9: not HotSpot, its attach protocol is not supported".into());
        }
        if jvm.agent_loaded {
            return Outcome::AlreadyLoaded;
        }
        // Root's part: the JVM's root directory (CAP_SYS_PTRACE) and what its
        // command line says; the rest as the JVM's own user, on a thread of its
        // own, as the JDK's own tools would (no other privilege needed, and
        // files are created where root could not: see `root`).
        let root = match root::Root::open(jvm.pid) {
            Ok(r) => r,
            Err(e) => return Outcome::Skipped(format!("cannot open its root: {e}")),
        };
        let flags = {
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
            let flag = |name| procfs::hotspot_flag(&cmdline, &environ, name);
            Flags { disable_attach: flag(ATTACH_FLAG), dynamic_agents: flag(DYNAMIC_FLAG) }
        };
        let (uid, gid) = (facts.uid, facts.gid);
        std::thread::scope(|s| {
            s.spawn(|| match root::become_user(uid, gid) {
                Ok(()) => self.attach_as_user(jvm, facts, &root, flags),
                Err(e) => Outcome::Skipped(format!("cannot take the JVM's user {uid}: {e}")),
            })
            .join()
            .unwrap_or_else(|_| Outcome::Skipped("the attach thread panicked".into()))
        })
    }

    /// The attach, on a thread running as the JVM's user.
    fn attach_as_user(&self, jvm: &Jvm, facts: &procfs::Facts, root: &root::Root, flags: Flags) -> Outcome {
        let tmp = match root.tmp() {
            Ok(t) => t,
            Err(e) => return Outcome::Skipped(format!("no /tmp in its file system: {e}")),
        };
        let perf = perf_counters(&tmp, facts);
        if let Some(reason) = attach_disabled(perf.as_ref(), flags) {
            return Outcome::Skipped(reason);
        }
        // Before anything is placed or signalled: System.load of a library
        // there would fail, leaving the JVM with hooks it cannot use.
        if tmp.noexec().unwrap_or(false) {
            return Outcome::Skipped("the JVM's /tmp is mounted noexec: its agent library could not load".into());
        }
        // Started: its perf data says so; without one, a few seconds old.
        let started = match perf.as_ref().and_then(perfdata::Counters::started) {
            Some(s) => s,
            None => procfs::age(facts.start_time).is_some_and(|a| a >= Duration::from_secs(3)),
        };
        let target = hotspot::Target { pid: jvm.pid, nspid: facts.nspid, uid: facts.uid, tmp: &tmp };
        let listening = tmp.stat(&hotspot::socket_name(facts.nspid)).is_ok();
        if !started || (!listening && !facts.sigquit_caught) {
            return Outcome::NotReady;
        }
        match self.load(&target, facts.uid) {
            Ok(status) if status.starts_with("ok") => Outcome::Attached(status),
            Ok(status) => Outcome::Skipped(format!("the Java agent did not install: {status}")),
            Err(Failure { reason, transient: true }) => Outcome::Transient(reason),
            Err(Failure { reason, .. }) => Outcome::Skipped(reason),
        }
    }

    /// Place the files, start the listener, load the agent, read its status.
    fn load(&self, t: &hotspot::Target, uid: u32) -> Result<String, Failure> {
        let name = format!(".tokentap-java-{}-{uid}", digest());
        let files = t.tmp.subdir(&name).map_err(|e| Failure::fatal(format!("cannot use /tmp/{name}: {e}")))?;
        files.put("tokentap-java.jar", JAR).map_err(|e| Failure::fatal(format!("cannot place the agent jar: {e}")))?;
        files
            .put("libtokentap_java.so", LIB)
            .map_err(|e| Failure::fatal(format!("cannot place the agent library: {e}")))?;
        let status = format!("status-{}-{:016x}", t.nspid, root::rand64());
        // Written by the Java agent, which runs as this same user.
        drop(files.create(&status, 0o600).map_err(|e| Failure::fatal(format!("status file: {e}")))?);
        let dir = format!("/tmp/{name}");
        let request = hotspot::load_request(&format!("{dir}/tokentap-java.jar"), &format!("dir={dir};status={status}"));
        let result = hotspot::start_listener(t, LISTENER_WAIT).map_err(Failure::from).and_then(|_| {
            let reply = self.exchange_while_rescanning(t, &request).map_err(Failure::from)?;
            hotspot::parse_reply(&reply).map_err(|e| Failure::fatal(format!("the JVM refused the agent: {e}")))
        });
        let written = files.read(&status, 4096);
        files.remove(&status);
        result?;
        let text = written.map_err(|e| Failure::fatal(format!("no status from the Java agent: {e}")))?;
        let line = String::from_utf8_lossy(&text).lines().next().unwrap_or_default().to_owned();
        if line.is_empty() {
            return Err(Failure::fatal("no status from the Java agent".into()));
        }
        Ok(hotspot::brief(&line, STATUS_CHARS))
    }

    /// The load's exchange, while discovery is asked to rescan the JVM.
    fn exchange_while_rescanning(&self, t: &hotspot::Target, request: &[u8]) -> Result<Vec<u8>, hotspot::AttachError> {
        while_rescanning(&self.rescan, t.pid, || hotspot::exchange(t, request, LOAD_WAIT))
    }
}

/// Run `f` while discovery is asked to rescan `pid`: it probes the library
/// once the JVM maps it (the exec-time loader probe would tell it too). One
/// request at a time: a new one only once discovery's queue is empty (so it
/// took the last one), or every 500 ms; the requests end however `f` ends (a
/// panic too: the scope would otherwise wait for them forever).
fn while_rescanning<T>(rescan: &Sender<ProcessEvent>, pid: u32, f: impl FnOnce() -> T) -> T {
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut sent: Option<Instant> = None;
            while !done.load(Ordering::Relaxed) {
                let stale = sent.is_none_or(|at| at.elapsed() >= Duration::from_millis(500));
                if (rescan.is_empty() || stale) && rescan.try_send(ProcessEvent::LibsChanged(pid)).is_ok() {
                    sent = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let _done = Done(&done);
        f()
    })
}

/// Why a load failed, and whether trying again may help.
#[derive(Debug)]
struct Failure {
    reason: String,
    transient: bool,
}

impl Failure {
    fn fatal(reason: String) -> Self {
        Self { reason, transient: false }
    }
}

impl From<hotspot::AttachError> for Failure {
    fn from(e: hotspot::AttachError) -> Self {
        use hotspot::AttachError as E;
        // Timeouts and a socket that went away pass with time (a JVM paused,
        // busy, or restarting its listener); a socket that is not the JVM's,
        // a trigger file we may not create, a refusal, do not.
        let transient = matches!(e, E::NoSocket(_) | E::ConnectTimeout(_) | E::Io(_) | E::Connect(_));
        Self { reason: hotspot::brief(&e.to_string(), hotspot::REPLY_CHARS), transient }
    }
}

const ATTACH_FLAG: &str = "DisableAttachMechanism";
const DYNAMIC_FLAG: &str = "EnableDynamicAgentLoading";

/// The attach flags the JVM's command line and option variables give.
#[derive(Clone, Copy, Default)]
struct Flags {
    disable_attach: Option<bool>,
    dynamic_agents: Option<bool>,
}

/// Why the JVM takes no agent, if it says so: attach disabled (its perf
/// data file, else its command line and option variables), or dynamic agent
/// loading disabled (the JVM arguments in its perf data, or its command line:
/// JDK 21+ then fails every load, so it is not even signalled).
fn attach_disabled(perf: Option<&perfdata::Counters>, flags: Flags) -> Option<String> {
    let attach = match perf.and_then(perfdata::Counters::attachable) {
        Some(attachable) => (!attachable).then_some("per its perf data"),
        None => (flags.disable_attach == Some(true)).then_some("on its command line"),
    };
    if let Some(how) = attach {
        return Some(format!("attach disabled in the JVM (-XX:+{ATTACH_FLAG}, {how})"));
    }
    let vm_args = perf.and_then(|p| p.strings.get("java.rt.vmArgs"));
    let dynamic = if vm_args.is_some_and(|a| procfs::flag_in(a.split_ascii_whitespace(), DYNAMIC_FLAG) == Some(false)) {
        Some("per its perf data")
    } else {
        (flags.dynamic_agents == Some(false)).then_some("on its command line")
    };
    dynamic.map(|how| format!("dynamic agent loading disabled in the JVM (-XX:-{DYNAMIC_FLAG}, {how})"))
}

/// The JVM's `hsperfdata_<user>/<pid>` file (the one its uid owns). The
/// directory is listed in full and filtered before any bound: a crowded
/// /tmp must not hide the file (without it, a JVM with attach disabled but
/// not on its command line would be signalled).
fn perf_counters(tmp: &root::Dir, facts: &procfs::Facts) -> Option<perfdata::Counters> {
    let list = std::fs::read_dir(format!("/proc/self/fd/{}", tmp.raw())).ok()?;
    let names = list.flatten().filter_map(|e| e.file_name().into_string().ok());
    for name in names.filter(|n| n.starts_with("hsperfdata_")).take(256) {
        let Ok(d) = tmp.subdir_any(&name) else { continue };
        let file = facts.nspid.to_string();
        if d.stat(&file).is_ok_and(|st| st.st_uid == facts.uid) {
            let counters = perfdata::parse(&d.read(&file, 1 << 20).ok()?);
            return (!counters.is_empty()).then_some(counters);
        }
    }
    None
}

/// The placed files' directory name: their content's digest, so one copy
/// serves every JVM of a user in a mount namespace and a new build gets its own.
fn digest() -> &'static str {
    static D: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    D.get_or_init(|| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(JAR);
        h.update(LIB);
        h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_tried_again_three_times_with_growing_pauses_and_nothing_else_is() {
        let t = Outcome::Transient("the attach socket accepted no connection within 5s".into());
        let pauses: Vec<_> = (0..5).map(|n| again_after(&t, Duration::ZERO, n)).collect();
        assert_eq!(pauses, [Some(RETRIES[0]), Some(RETRIES[1]), Some(RETRIES[2]), None, None]);
        assert!(RETRIES.windows(2).all(|w| w[0] < w[1]), "backoff");
        for final_ in
            [Outcome::Skipped("attach disabled".into()), Outcome::Attached("ok".into()), Outcome::AlreadyLoaded]
        {
            assert_eq!(again_after(&final_, Duration::ZERO, 0), None, "{final_:?}");
        }
        assert!(again_after(&Outcome::NotReady, Duration::from_secs(1), 0).is_some());
        assert_eq!(again_after(&Outcome::NotReady, READY_WAIT, 0), None);
        use hotspot::AttachError as E;
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(Failure::from(E::ConnectTimeout(Duration::from_secs(5))).transient);
        assert!(Failure::from(E::NoSocket(Duration::from_secs(10))).transient);
        assert!(Failure::from(E::Io(timed_out)).transient);
        assert!(!Failure::from(E::WrongPeer(1)).transient, "a socket planted by another process");
        assert!(!Failure::from(E::BadSocket("x".into())).transient);
        assert!(!Failure::from(E::Refused("x".into())).transient);
    }

    #[test]
    fn rescan_requests_do_not_pile_up_and_end_even_when_the_load_panics() {
        let (tx, rx) = crossbeam_channel::bounded(4096);
        // Nobody takes them: one at first, then one every 500 ms at most.
        while_rescanning(&tx, 7, || std::thread::sleep(Duration::from_millis(1200)));
        let n = rx.try_iter().count();
        assert!((1..=4).contains(&n), "{n} requests");
        let started = Instant::now();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while_rescanning(&tx, 7, || -> () { panic!("the exchange failed") })
        }));
        assert!(panicked.is_err() && started.elapsed() < Duration::from_secs(5), "ended, not stuck");
    }

    fn perf(vm_args: &str, caps: &str) -> perfdata::Counters {
        perfdata::parse(&perfdata::tests::file(&[("sun.rt.jvmCapabilities", caps), ("java.rt.vmArgs", vm_args)]))
    }

    #[test]
    fn disabled_attach_or_dynamic_agent_loading_is_read_from_perf_data_or_the_command_line() {
        let on = Flags::default();
        assert_eq!(attach_disabled(Some(&perf("-Xmx1g", "1")), on), None);
        let r = attach_disabled(Some(&perf("", "0")), on).unwrap();
        assert!(r.contains("DisableAttachMechanism, per its perf data"), "{r}");
        let r = attach_disabled(None, Flags { disable_attach: Some(true), ..on }).unwrap();
        assert!(r.contains("DisableAttachMechanism, on its command line"), "{r}");
        let r = attach_disabled(Some(&perf("-XX:-EnableDynamicAgentLoading -Xmx1g", "1")), on).unwrap();
        assert!(r.contains("EnableDynamicAgentLoading, per its perf data"), "{r}");
        let later_on = perf("-XX:-EnableDynamicAgentLoading -XX:+EnableDynamicAgentLoading", "1");
        assert_eq!(attach_disabled(Some(&later_on), on), None, "the last one wins");
        let r = attach_disabled(None, Flags { dynamic_agents: Some(false), ..on }).unwrap();
        assert!(r.contains("dynamic agent loading disabled") && r.contains("command line"), "{r}");
    }

    #[test]
    fn a_crowded_tmp_does_not_hide_the_perf_data_file() {
        let path = std::env::temp_dir().join(format!("tokentap-java-perf-test-{:x}", root::rand64()));
        std::fs::create_dir(&path).unwrap();
        // Created first, so that a listing in creation order meets them first.
        for i in 0..20_000 {
            std::fs::write(path.join(format!("f{i}")), b"").unwrap();
        }
        std::fs::create_dir(path.join("hsperfdata_app")).unwrap();
        std::fs::write(path.join("hsperfdata_app/77"), perfdata::tests::file(&[("sun.rt.jvmCapabilities", "0")]))
            .unwrap();
        let dir = root::Root::open(std::process::id()).unwrap();
        let tmp = dir.dir(path.to_str().unwrap().trim_start_matches('/')).unwrap();
        // SAFETY: no preconditions.
        let uid = unsafe { libc::geteuid() };
        let facts = procfs::Facts { uid, gid: 0, nspid: 77, sigquit_caught: true, start_time: 0 };
        let counters = perf_counters(&tmp, &facts).expect("found among 20,000 other names");
        assert_eq!(counters.attachable(), Some(false));
        std::fs::remove_dir_all(&path).unwrap();
    }
}
