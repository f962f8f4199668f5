//! The running agent: three threads.
//! - main: set-up, initial discovery, ready file, waits for a signal or `--duration`;
//! - discovery: attaches to TLS libraries of processes that exec, and rescans;
//! - pipeline: reads the ring buffer and turns records into LLM call records.
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokentap_event::PriceTable;

use crate::attribution::keys::KeyHasher;
use crate::attribution::kubernetes::{HttpApi, PodIndex, Watcher};
use crate::config::Settings;
use crate::discovery::java::Jvm;
use crate::discovery::{Discovery, Target, Unprobed};
use crate::handover::Drain;
use crate::java::Attacher;
use crate::orphan_rings::OrphanRings;
use crate::pipeline::{monotonic_ns, Clock, ConnFilter, Pipeline, PipelineConfig, ProcessEvent};
use crate::probes::{AttachFailure, Channels, IgnoreMap, LossReader, Probes};
use crate::providers::Rules;
use crate::sinks;
use crate::socket_hooks::SyscallHooks;
use crate::stats::{Stats, StatsFile};
use aya::maps::{MapData, RingBuf};

pub fn run(settings: Settings) -> anyhow::Result<()> {
    // A signal ends the main loop; `stop` then ends the other threads, after
    // a handover's drain (see below).
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signalled.clone()).context("installing signal handlers")?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut prices = PriceTable::shipped();
    if let Some(p) = &settings.prices {
        prices = prices.with_overrides(p)?;
    }
    tracing::info!(version = prices.version(), models = prices.len(), "price table loaded");
    // Before any capture is set up: a missing capability is one clear error,
    // not an agent that runs and captures nothing.
    crate::caps::check(settings.java_attach, settings.handover_dir.is_some())?;
    if let Some(p) = &settings.stats_file {
        crate::stats::StatsFile::prepare(p).with_context(|| format!("--stats-file {}", p.display()))?;
    }
    let stats = Arc::new(Stats::default());
    // Every sink kind's counters show from the start, configured or not.
    sinks::register_counters(&stats);
    // An agent with --handover-dir keeps the overlap bookkeeping from its start.
    Stats::set(&stats.handover_overlap, u64::from(settings.handover_dir.is_some()));
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = settings.metrics_listen {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("--metrics-listen {addr}"))?;
        crate::metrics::serve(l, stats.clone(), ready.clone())?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    }
    let outputs = sinks::open_all(&settings.outputs, &stats)?;
    if let Some(r) = &settings.ready_file {
        let _ = std::fs::remove_file(r);
    }

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        ebpf_toolchain = env!("TOKENTAP_EBPF_TOOLCHAIN"),
        "tokentap-agent starting"
    );
    let pods = match &settings.kubernetes {
        Some(k) => {
            let api = HttpApi::new(k).context("Kubernetes API client")?;
            let index = PodIndex::default();
            let stop = stop.clone();
            let thread = std::thread::Builder::new().name("kubernetes".into());
            // Not joined at exit: it may sit in a long watch; it only reads the API.
            match k.kubelet_poll {
                Some(every) => {
                    tracing::info!(kubelet = %k.api_url, every_s = every.as_secs(), "polling the kubelet's pods");
                    let w = Watcher::kubelet(api, index.clone());
                    thread.spawn(move || w.poll(every, &stop))?;
                }
                None => {
                    tracing::info!(api = %k.api_url, node = %k.node_name, "watching this node's pods");
                    let w = Watcher::new(api, &k.node_name, index.clone());
                    thread.spawn(move || w.run(&stop))?;
                }
            }
            Some(index)
        }
        None => None,
    };
    let sockets = settings.socket_capture.then_some(settings.syscall_hooks);
    let (mut probes, channels, mut handover) =
        Probes::load(settings.ring_buffer_bytes, sockets, settings.handover_dir.as_deref(), settings.return_probes)?;
    Stats::set(&stats.socket_hooks_every_syscall, u64::from(probes.socket_hooks == Some(SyscallHooks::Raw)));
    Stats::set(&stats.return_probes_multi, u64::from(probes.returns_multi()));
    Stats::set(&stats.sockets_adopted_at_start, probes.at_start.sockets as u64);
    Stats::set(&stats.processes_unreadable_at_start, probes.at_start.unreadable as u64);
    Stats::set(&stats.reads_adopted_at_start, probes.at_start.reads as u64);
    Stats::set(&stats.writes_adopted_at_start, probes.at_start.writes as u64);
    Stats::set(&stats.handover_overlap, u64::from(handover.as_ref().is_some_and(|h| h.overlapping())));
    let (exec_tx, exec_rx) = crossbeam_channel::bounded::<ProcessEvent>(4096);
    // Discovery tells the pipeline (for coverage) which processes map a TLS
    // library that is not probed.
    let (unprobed_tx, unprobed_rx) = crossbeam_channel::bounded::<Unprobed>(4096);
    // Discovery hands the JVMs it sees to the Java module, which may ask it to
    // rescan one (through the process-event queue) while loading its agent.
    let (jvm_tx, jvm_rx) = crossbeam_channel::bounded::<Jvm>(1024);
    let java = Attacher::new(settings.java_attach, exec_tx.clone(), unprobed_tx.clone(), &stats);
    let pipeline = Pipeline::new(
        PipelineConfig {
            max_body_bytes: settings.max_body_bytes,
            max_buffered_bytes: settings.max_buffered_bytes,
            max_connections: settings.max_connections,
            idle_timeout_ns: settings.idle_timeout.as_nanos() as u64,
            rules: Rules::new(&settings.providers)?,
            prices,
            proc_root: "/proc".into(),
            attribution: settings.attribution.clone(),
            keys: Some(KeyHasher::load_or_create(&settings.key_secret_file)),
            pods,
        },
        outputs,
        stats.clone(),
        Clock::system(),
        Some(exec_tx),
    );
    let Channels { events, ring_pin, loss, ignored, sockets } = channels;
    let orphans = settings.handover_dir.as_deref().zip(ring_pin).map(|(dir, own)| OrphanRings::new(dir, own));
    let pipeline =
        pipeline.with_kernel_filter(Box::new(ignored)).with_unprobed(unprobed_rx).with_socket_table(Box::new(sockets));
    // The reader stops once every probe is detached, not at the signal:
    // calls that complete while detaching (seconds with many targets) are
    // still read, and only those cut by the detach are lost (`dropped_at_exit`).
    let detached = Arc::new(AtomicBool::new(false));
    let drain = Arc::new(Drain::default());
    let pipeline_thread = {
        let (detached, drain, stats) = (detached.clone(), drain.clone(), stats.clone());
        let stats_file = settings.stats_file.clone().map(|p| (p, settings.stats_interval));
        std::thread::Builder::new().name("pipeline".into()).spawn(move || {
            let rings = (events, orphans);
            let stats_file = stats_file.as_ref().map(|(p, every)| (p.as_path(), *every));
            read_loop(rings, loss, pipeline, (&detached, &drain), &stats, stats_file)
        })?
    };

    // Initial discovery: library directories first (covers processes that load
    // libssl later), then every running process.
    let started = Instant::now();
    let mut discovery = Discovery::new("/proc").exclude(&settings.exclude_processes);
    let mut targets = discovery.scan_dirs(&settings.lib_dirs);
    targets.extend(discovery.scan_all());
    attach_all(&mut probes, &mut discovery, &targets, &stats);
    send_unprobed(&mut discovery, &unprobed_tx);
    let java_thread = {
        let stop = stop.clone();
        std::thread::Builder::new().name("java-attach".into()).spawn(move || java.run(jvm_rx, &stop))?
    };
    send_jvms(&mut discovery, &jvm_tx);
    tracing::info!(
        targets = probes.attached(),
        files_inspected = discovery.files_inspected,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "probes attached"
    );
    let capturing = match crate::metrics::readiness(&stats) {
        Ok(()) => true,
        Err(why) => {
            // Not ready (/readyz 503, no ready file), and an error at exit.
            tracing::error!("{why}; not ready");
            false
        }
    };
    if let (Some(h), true) = (handover.as_mut(), capturing) {
        // Probes attached: new connections are this agent's, before /readyz
        // says so (a rollout stops the old agent once this one is ready).
        h.make_current()?;
        Stats::set(&stats.handover_overlap, u64::from(h.overlapping()));
    }
    ready.store(true, Ordering::Relaxed);
    crate::peers::watch(settings.handover_dir.clone(), stats.clone(), stop.clone());
    if capturing && probes.attached() == 0 {
        tracing::warn!("no TLS library found to probe; new processes will still be watched");
    }
    let unreadable = stats.snapshot().processes_unreadable;
    if unreadable > 0 {
        tracing::warn!(
            processes = unreadable,
            first = ?discovery.unreadable_examples(5),
            "processes whose maps or files this agent may not read (CAP_SYS_PTRACE, an LSM): their TLS libraries are not probed"
        );
    }
    if let Some(r) = &settings.ready_file.as_ref().filter(|_| capturing) {
        std::fs::write(r, b"ready\n").with_context(|| format!("writing ready file {}", r.display()))?;
    }

    let discovery_thread = {
        let (stop, stats) = (stop.clone(), stats.clone());
        let interval = settings.rescan_interval;
        let lib_dirs = settings.lib_dirs.clone();
        let detached = SetOnDrop(detached);
        std::thread::Builder::new().name("discovery".into()).spawn(move || {
            let channels = (exec_rx, unprobed_tx, jvm_tx);
            discovery_loop(probes, discovery, channels, interval, &lib_dirs, &stop, &stats);
            drop(detached);
        })?
    };

    let deadline = settings.duration.map(|d| Instant::now() + d);
    let mut last_progress = Instant::now();
    let mut last_reap = Instant::now();
    let mut superseded = false;
    while !signalled.load(Ordering::Relaxed) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(h) = handover.as_mut().filter(|_| last_reap.elapsed() >= Duration::from_secs(1)) {
            last_reap = Instant::now();
            h.reap();
            if let Err(e) = h.tick() {
                tracing::warn!(error = %e, "handover: telling the kernel whether agents overlap");
            }
            Stats::set(&stats.handover_overlap, u64::from(h.overlapping()));
            if let (Some(next), false) = (h.successor(), superseded) {
                superseded = true;
                tracing::warn!(
                    successor = next,
                    "another agent now takes new connections; this one keeps its own until stopped"
                );
            }
        }
        if settings.progress && last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let s = stats.snapshot();
            let left = deadline.map(|d| format!(", {}s left", d.saturating_duration_since(Instant::now()).as_secs()));
            eprintln!(
                "tokentap: {} LLM calls captured, ${:.4} spend so far{} (Ctrl-C to finish now)",
                s.records,
                s.cost_micro_usd as f64 / 1e6,
                left.unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping");
    if let Some(h) = handover {
        h.stop(&drain, settings.handover_drain);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = discovery_thread.join();
    // An attach in progress may finish (every wait in it is bounded): a
    // trigger file left behind would make the JVM's next SIGQUIT start a
    // listener, not a dump. But never at the cost of the final flush: after
    // JAVA_JOIN_WAIT the thread is left to end with the process.
    if !join_within(java_thread, JAVA_JOIN_WAIT) {
        tracing::warn!(waited_s = JAVA_JOIN_WAIT.as_secs(), "a JVM attach still running at exit: left unfinished");
    }
    let _ = pipeline_thread.join();
    if let Some(r) = &settings.ready_file {
        let _ = std::fs::remove_file(r);
    }
    // Never a clean exit for a run that captured with no probe.
    crate::metrics::readiness(&stats).map_err(anyhow::Error::msg)
}

/// Sets its flag when dropped: after the probes it outlives are detached,
/// also when the thread holding it panics.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How long the agent's exit waits for an attach in progress.
const JAVA_JOIN_WAIT: Duration = Duration::from_secs(5);

/// Join `thread` if it ends within `wait`; else leave it (detached) and say so.
fn join_within<T>(thread: std::thread::JoinHandle<T>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = thread.join();
    true
}

fn attach_all(probes: &mut Probes, discovery: &mut Discovery, targets: &[Target], stats: &Stats) {
    Stats::set(&stats.processes_excluded, discovery.processes_excluded);
    Stats::set(&stats.files_not_probed, discovery.files_not_probed() as u64);
    Stats::set(&stats.processes_unreadable, discovery.processes_unreadable);
    for t in targets {
        let started = Instant::now();
        match probes.attach(t) {
            Ok(true) => {
                Stats::inc(&stats.targets_attached);
                let what = if t.symbols.captures_tls() { t.symbols.library.as_str() } else { "loader" };
                let took_us = started.elapsed().as_micros() as u64;
                let probes = if t.symbols.java.is_some() {
                    "java agent library"
                } else if t.symbols.rerouted {
                    "internal"
                } else if t.symbols.boringssl.is_some() || t.symbols.rustls.as_ref().is_some_and(|r| !r.by_name) {
                    "analysed"
                } else if t.symbols.rustls.is_some() {
                    "symbols"
                } else {
                    "exported"
                };
                tracing::info!(path = %t.path.display(), what, probes, took_us, "attached");
            }
            Ok(false) => {}
            Err(e) => {
                // Retried when the file is seen again (through a live process).
                discovery.forget(t.key);
                let why = AttachFailure::of(&e);
                Stats::inc(&stats.attach_failures);
                Stats::inc(match why {
                    AttachFailure::PermissionDenied => &stats.attach_failures_permission_denied,
                    AttachFailure::Gone => &stats.attach_failures_gone,
                    AttachFailure::Other => &stats.attach_failures_other,
                });
                tracing::warn!(path = %t.path.display(), reason = why.as_str(), error = %format!("{:#}", anyhow::Error::from(e)), "attach failed");
            }
        }
    }
}

fn send_unprobed(discovery: &mut Discovery, tx: &Sender<Unprobed>) {
    for u in discovery.take_unprobed() {
        // Coverage is best effort: a full channel drops the report, not the agent.
        let _ = tx.try_send(u);
    }
}

/// JVMs found since the last call, to the Java module (best effort: a JVM is
/// seen again at its next scan).
fn send_jvms(discovery: &mut Discovery, tx: &Sender<Jvm>) {
    for j in discovery.take_jvms() {
        let _ = tx.try_send(j);
    }
}

fn discovery_loop(
    mut probes: Probes,
    mut discovery: Discovery,
    (exec_rx, unprobed_tx, jvm_tx): (Receiver<ProcessEvent>, Sender<Unprobed>, Sender<Jvm>),
    interval: Duration,
    lib_dirs: &[std::path::PathBuf],
    stop: &AtomicBool,
    stats: &Stats,
) {
    // Libraries are often loaded after exec (dlopen, Python's `import ssl`), so a
    // new process is scanned again a little later too.
    const FOLLOW_UPS: [Duration; 3] = [Duration::from_millis(100), Duration::from_millis(1000), Duration::from_secs(5)];
    let mut follow_ups: BTreeMap<Instant, Vec<u32>> = BTreeMap::new();
    let mut next_full = Instant::now() + interval;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wake = follow_ups.keys().next().copied().unwrap_or(next_full).min(next_full);
        let wait = wake.saturating_duration_since(now).min(Duration::from_millis(100));
        match exec_rx.recv_timeout(wait) {
            Ok(first) => {
                // Drain what queued up and scan each process once.
                let mut events = vec![first];
                events.extend(exec_rx.try_iter().take(4096));
                let mut pids: Vec<u32> = Vec::new();
                for ev in events {
                    let pid = match ev {
                        ProcessEvent::Exec(pid) => {
                            // Another mount namespace's libssl is probed now, before
                            // the loader maps it.
                            let targets = discovery.scan_root_libs(pid, lib_dirs);
                            attach_all(&mut probes, &mut discovery, &targets, stats);
                            if follow_ups.values().map(Vec::len).sum::<usize>() < 65536 {
                                for d in FOLLOW_UPS {
                                    follow_ups.entry(Instant::now() + d).or_default().push(pid);
                                }
                            }
                            pid
                        }
                        ProcessEvent::LibsChanged(pid) => pid,
                    };
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
                for pid in pids {
                    let targets = discovery.scan_pid(pid);
                    attach_all(&mut probes, &mut discovery, &targets, stats);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        while let Some(entry) = follow_ups.first_entry() {
            if *entry.key() > now {
                break;
            }
            for pid in entry.remove() {
                let targets = discovery.scan_pid(pid);
                attach_all(&mut probes, &mut discovery, &targets, stats);
            }
        }
        if now >= next_full {
            let targets = discovery.scan_all();
            attach_all(&mut probes, &mut discovery, &targets, stats);
            next_full = now + interval;
        }
        send_unprobed(&mut discovery, &unprobed_tx);
        send_jvms(&mut discovery, &jvm_tx);
    }
    let t = Instant::now();
    let n = probes.attached();
    probes.detach();
    tracing::info!(targets = n, took_ms = t.elapsed().as_millis() as u64, "probes detached");
}

/// How often the ring buffer is drained while events arrive, and when idle
/// (the delay before a record is written after its call completes).
const DRAIN_BUSY_MS: i32 = 10;
const DRAIN_IDLE_MS: i32 = 100;

/// Reads the ring buffer until `detached` (every probe gone), then drains it
/// once more and finishes.
fn read_loop(
    (mut events, mut orphans): (RingBuf<MapData>, Option<OrphanRings>),
    mut loss: LossReader,
    mut pipeline: Pipeline,
    (detached, drain): (&AtomicBool, &Drain),
    stats: &Stats,
    stats_file: Option<(&std::path::Path, Duration)>,
) {
    let fd = events.as_raw_fd();
    let mut last_tick = Instant::now();
    let mut last_stats = Instant::now();
    let mut last_log = Instant::now();
    let mut busy = false;
    // A handover: whether the states went, and the passes since leaving.
    let (mut handed, mut passes_since_left) = (false, 0u32);
    // Kernel counters and gauges from the start, not after the first second.
    loss.update(stats);
    // What an agent killed before this one started left unread comes first.
    if let Some(o) = orphans.as_mut() {
        o.look(&mut pipeline, stats);
    }
    loop {
        let stopping = detached.load(Ordering::Relaxed);
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // The kernel wakes us only when the ring buffer fills up (see the eBPF
        // `wakeup_flags`): drain on a timer, often while calls flow, rarely when idle.
        let timeout = if stopping {
            0
        } else if busy {
            DRAIN_BUSY_MS
        } else {
            DRAIN_IDLE_MS
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout) };
        let mut n = 0usize;
        while let Some(item) = events.next() {
            if let Some(o) = orphans.as_mut() {
                o.before(&item, &mut pipeline, stats);
            }
            pipeline.handle(&item);
            n += 1;
        }
        // Every pass, idle ones too: the collector sink seals a batch once it is
        // old enough, whether or not new records arrived.
        pipeline.flush();
        drain.report(|| pipeline.calls_in_flight());
        busy = n > 0 || drain.asked.load(Ordering::Relaxed);
        if !handed && drain.has_left() {
            if passes_since_left == 0 {
                pipeline.leave();
            }
            passes_since_left += 1;
            if let Some(ago) = drain.settled(passes_since_left) {
                handed = true;
                if let Some(o) = orphans.as_mut() {
                    o.hand_on(&mut pipeline, stats);
                }
                let (sent, not_sent) = pipeline.hand_off();
                let ms_after_leaving = ago.as_millis() as u64;
                tracing::info!(sent, not_sent, ms_after_leaving, "decoding states handed on");
            }
        }
        if stopping {
            break;
        }
        let mut ticked = false;
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            if let Some(o) = orphans.as_mut() {
                // A connection that made no call since its agent was killed.
                o.look(&mut pipeline, stats);
            }
            pipeline.tick(monotonic_ns());
            loss.update(stats);
            ticked = true;
        }
        if let Some((p, _)) = stats_file.filter(|&(_, every)| last_stats.elapsed() >= every) {
            last_stats = Instant::now();
            // Each file counts the kernel's losses up to its write, as it
            // counts the rest (read just now on a tick).
            if !ticked {
                loss.counters(stats);
            }
            write_stats(p, stats, &pipeline);
        }
        if last_log.elapsed() >= Duration::from_secs(60) {
            last_log = Instant::now();
            let s = stats.snapshot();
            tracing::info!(
                records = s.records,
                dropped = s.dropped_calls(),
                kernel_losses = s.kernel_losses(),
                connections = pipeline.connections(),
                buffered_bytes = pipeline.buffered_bytes(),
                "capture status"
            );
        }
    }
    if drain.asked.load(Ordering::Relaxed) && !handed {
        // A successor took over: it decodes our HTTP/2 connections on from here.
        if let Some(o) = orphans.as_mut() {
            o.hand_on(&mut pipeline, stats);
        }
        let (sent, not_sent) = pipeline.hand_off();
        tracing::info!(sent, not_sent, "decoding states handed on");
    }
    if let Some(o) = orphans.as_mut() {
        o.finish(&mut pipeline, stats);
    }
    pipeline.finish();
    loss.update(stats);
    let s = stats.snapshot();
    if let Some((p, _)) = stats_file {
        write_stats(p, stats, &pipeline);
    }
    tracing::info!(
        records = s.records,
        dropped_calls = s.dropped_calls(),
        kernel_losses = s.kernel_losses(),
        connections = s.connections,
        bytes = s.bytes,
        "capture finished"
    );
}

fn write_stats(path: &std::path::Path, stats: &Stats, pipeline: &Pipeline) {
    let file = StatsFile {
        counters: stats.snapshot(),
        coverage: pipeline.coverage().report(),
        blind_spots: pipeline.blind_spots(),
    };
    // Said when it starts failing and when it works again, not every second.
    static FAILING: AtomicBool = AtomicBool::new(false);
    match file.write_to(path) {
        Err(e) if !FAILING.swap(true, Ordering::Relaxed) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the stats file (said again once it works)")
        }
        Ok(()) if FAILING.swap(false, Ordering::Relaxed) => {
            tracing::info!(path = %path.display(), "the stats file is written again")
        }
        _ => {}
    }
}

impl ConnFilter for IgnoreMap {
    fn ignore(&mut self, tgid: u32, conn: u64, base: u64) {
        IgnoreMap::ignore(self, tgid, conn, base);
    }

    fn forget(&mut self, tgid: u32, conn: u64) {
        IgnoreMap::forget(self, tgid, conn);
    }

    fn mute(&mut self, tgid: u32, conn: u64, what: crate::http::mute::Mute) {
        IgnoreMap::mute(self, tgid, conn, what);
    }

    fn hand_off(&mut self, tgid: u32, conn: u64, state: &[u8]) -> bool {
        IgnoreMap::hand_off(self, tgid, conn, state)
    }

    fn handed(&mut self, tgid: u32, conn: u64) -> crate::pipeline::Handed {
        IgnoreMap::handed(self, tgid, conn)
    }

    fn handover_pending(&mut self) -> bool {
        IgnoreMap::handover_pending(self)
    }

    fn tidy(&mut self) {
        IgnoreMap::tidy(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_does_not_end_costs_the_exit_a_bounded_wait() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let stuck = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let started = Instant::now();
        assert!(!join_within(stuck, Duration::from_millis(100)), "left running");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(tx);
        assert!(join_within(std::thread::spawn(|| ()), Duration::from_secs(5)), "an ended thread is joined");
    }
}
