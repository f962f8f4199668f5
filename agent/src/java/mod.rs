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
//!    from its command line and option variables without one);
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

/// This module's counters, in the stats file and /metrics.
#[derive(Default)]
pub struct JavaCounters {
    /// JVMs the Java agent was loaded into (or found already carrying it).
    pub jvms_attached: AtomicU64,
    /// JVMs skipped or whose attach failed (each listed in coverage).
    pub jvms_not_attached: AtomicU64,
}

impl CounterSet for JavaCounters {
    fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("jvms_attached", self.jvms_attached.load(Ordering::Relaxed)),
            ("jvms_not_attached", self.jvms_not_attached.load(Ordering::Relaxed)),
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
}

pub struct Attacher {
    enabled: bool,
    proc_root: PathBuf,
    /// Discovery's queue: asks it to rescan a JVM while the agent loads.
    rescan: Sender<ProcessEvent>,
    coverage: Sender<Unprobed>,
    counters: Arc<JavaCounters>,
    /// (pid, start time) -> done, or the time it was first seen (not ready yet).
    known: HashMap<(u32, u64), Option<Instant>>,
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
        let first_seen = match self.known.get(&key) {
            Some(None) => return,
            Some(Some(t)) => *t,
            None => Instant::now(),
        };
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
        }
        let started = Instant::now();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim_end().to_owned();
        let outcome = self.attach(&jvm, &facts, &dir);
        let took_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Outcome::NotReady if first_seen.elapsed() < READY_WAIT => {
                self.known.insert(key, Some(first_seen));
                self.retry.entry(Instant::now() + Duration::from_millis(250)).or_default().push(jvm);
                return;
            }
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
        self.known.insert(key, None);
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
        let flag = {
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
            procfs::hotspot_flag(&cmdline, &environ, "DisableAttachMechanism")
        };
        let (uid, gid) = (facts.uid, facts.gid);
        std::thread::scope(|s| {
            s.spawn(|| match root::become_user(uid, gid) {
                Ok(()) => self.attach_as_user(jvm, facts, &root, flag),
                Err(e) => Outcome::Skipped(format!("cannot take the JVM's user {uid}: {e}")),
            })
            .join()
            .unwrap_or_else(|_| Outcome::Skipped("the attach thread panicked".into()))
        })
    }

    /// The attach, on a thread running as the JVM's user.
    fn attach_as_user(&self, jvm: &Jvm, facts: &procfs::Facts, root: &root::Root, flag: Option<bool>) -> Outcome {
        let tmp = match root.tmp() {
            Ok(t) => t,
            Err(e) => return Outcome::Skipped(format!("no /tmp in its file system: {e}")),
        };
        let perf = perf_counters(&tmp, facts);
        if let Some(how) = attach_disabled(perf.as_ref(), flag) {
            return Outcome::Skipped(format!("attach disabled in the JVM (-XX:+DisableAttachMechanism, {how})"));
        }
        // Started: its perf data says so; without one, a few seconds old.
        let started = match perf.as_ref().and_then(perfdata::Counters::started) {
            Some(s) => s,
            None => procfs::age(facts.start_time).is_some_and(|a| a >= Duration::from_secs(3)),
        };
        let target = hotspot::Target { pid: jvm.pid, nspid: facts.nspid, tmp: &tmp };
        let listening = tmp.stat(&hotspot::socket_name(facts.nspid)).is_ok();
        if !started || (!listening && !facts.sigquit_caught) {
            return Outcome::NotReady;
        }
        match self.load(&target, facts.uid) {
            Ok(status) if status.starts_with("ok") => Outcome::Attached(status),
            Ok(status) => Outcome::Skipped(format!("the Java agent did not install: {status}")),
            Err(e) => Outcome::Skipped(e),
        }
    }

    /// Place the files, start the listener, load the agent, read its status.
    fn load(&self, t: &hotspot::Target, uid: u32) -> Result<String, String> {
        let name = format!(".tokentap-java-{}-{uid}", digest());
        let files = t.tmp.subdir(&name).map_err(|e| format!("cannot use /tmp/{name}: {e}"))?;
        files.put("tokentap-java.jar", JAR).map_err(|e| format!("cannot place the agent jar: {e}"))?;
        files.put("libtokentap_java.so", LIB).map_err(|e| format!("cannot place the agent library: {e}"))?;
        let status = format!("status-{}-{:016x}", t.nspid, root::rand64());
        // Written by the Java agent, which runs as this same user.
        drop(files.create(&status, 0o600).map_err(|e| format!("status file: {e}"))?);
        let dir = format!("/tmp/{name}");
        let request = hotspot::load_request(&format!("{dir}/tokentap-java.jar"), &format!("dir={dir};status={status}"));
        let result = hotspot::start_listener(t, LISTENER_WAIT).map_err(|e| e.to_string()).and_then(|_| {
            // Discovery probes the library once the JVM maps it; ask it to look
            // while the load runs (the exec-time loader probe would tell it too).
            let (pid, rescan) = (t.pid, self.rescan.clone());
            let done = AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    while !done.load(Ordering::Relaxed) {
                        let _ = rescan.try_send(ProcessEvent::LibsChanged(pid));
                        std::thread::sleep(Duration::from_millis(50));
                    }
                });
                let reply = hotspot::exchange(t, &request, LOAD_WAIT);
                done.store(true, Ordering::Relaxed);
                reply
            })
            .map_err(|e| e.to_string())
            .and_then(|reply| hotspot::parse_reply(&reply).map_err(|e| format!("the JVM refused the agent: {e}")))
        });
        let written = files.read(&status, 4096);
        files.remove(&status);
        result?;
        let text = written.map_err(|e| format!("no status from the Java agent: {e}"))?;
        let line = String::from_utf8_lossy(&text).lines().next().unwrap_or_default().to_owned();
        if line.is_empty() {
            return Err("no status from the Java agent".into());
        }
        Ok(line)
    }
}

/// How the JVM says attach is disabled, if it does: its perf data file, else
/// its command line and option variables.
fn attach_disabled(perf: Option<&perfdata::Counters>, flag: Option<bool>) -> Option<&'static str> {
    if let Some(attachable) = perf.and_then(perfdata::Counters::attachable) {
        return (!attachable).then_some("per its perf data");
    }
    (flag == Some(true)).then_some("on its command line")
}

/// The JVM's `hsperfdata_<user>/<pid>` file (the one its uid owns).
fn perf_counters(tmp: &root::Dir, facts: &procfs::Facts) -> Option<perfdata::Counters> {
    let list = std::fs::read_dir(format!("/proc/self/fd/{}", tmp.raw())).ok()?;
    for e in list.flatten().take(4096) {
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("hsperfdata_")) else { continue };
        let Ok(d) = tmp.subdir_any(name) else { continue };
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
