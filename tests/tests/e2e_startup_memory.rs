//! The agent's start-up memory stays bounded when the host runs a very large
//! binary: a Python process that has imported chdb maps its 555 MB
//! `_chdb.abi3.so` (a stripped library linking rustls, so discovery scans its
//! read-only data and code). Inspection used to keep every page it read
//! resident until the file was done: ~540 MiB of RSS at start-up, enough to get
//! a DaemonSet with a memory limit OOM-killed (issue 19). Needs root.
//!
//! And at any time, when a large program starts: the symbol walks release
//! what they passed as they go.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use tokentap_e2e::*;

/// Highest RSS allowed by the end of the first discovery. The agent's own
/// ~50 MiB (32 MiB of it the ring buffer, mapped twice; docs/performance.md)
/// plus the few MiB chunks inspection scans at a time, with room for a debug
/// build's larger heap: far below the 555 MB file, whose code section alone
/// (391 MB) resident again would fail it.
const MAX_HWM_KIB: u64 = 128 << 10;

/// `field` (kB) of /proc/PID/status.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    let line = status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or_else(|| panic!("{field} in {status}"));
    line.trim_start_matches(':').trim().trim_end_matches(" kB").parse().expect("a number of kB")
}

#[test]
fn inspecting_a_555_mb_library_keeps_the_agent_rss_bounded() {
    let _g = serial();
    require_root();
    require_tool("python3");
    let dir = scratch("startup-memory");
    // The library is mapped once `import chdb` returns; the line says so.
    let mut py = Command::new("python3")
        .args(["-c", "import chdb, os, sys; print(os.path.dirname(chdb.__file__), flush=True); sys.stdin.read()"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let py_pid = py.id();
    let mut line = String::new();
    BufReader::new(py.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(!line.trim().is_empty(), "python3 with chdb (installed by cargo xtask test) did not start");
    let so = std::path::Path::new(line.trim()).join("_chdb.abi3.so");
    let size = std::fs::metadata(&so).unwrap_or_else(|e| panic!("{}: {e}", so.display())).len();
    assert!(size > 400 << 20, "{} is {size} bytes: not the large library this test needs", so.display());
    let maps = std::fs::read_to_string(format!("/proc/{py_pid}/maps")).unwrap();
    assert!(maps.contains("_chdb.abi3.so"), "python3 maps the library");

    // Ready once the first discovery (every running process) is done.
    let mut agent = Agent::start(&dir, &[]);
    // It did inspect the library: the process is listed with its rustls.
    agent.wait_stats("the chdb process listed with its rustls", |s| {
        coverage_of(s, py_pid)["not_probed"].as_object().is_some_and(|m| m.keys().any(|k| k.starts_with("rustls: ")))
    });
    let hwm = status_kib(agent.pid(), "VmHWM");
    let rss = status_kib(agent.pid(), "VmRSS");
    eprintln!("agent after the first discovery: VmHWM {} MiB, VmRSS {} MiB", hwm >> 10, rss >> 10);
    let _ = py.kill();
    let _ = py.wait();
    let status = agent.stop();
    assert!(status.success(), "agent exit: {status}\n{}", agent.all_output());
    assert!(
        hwm <= MAX_HWM_KIB,
        "agent RSS peaked at {} MiB while inspecting {} ({} MiB): more than {} MiB",
        hwm >> 10,
        so.display(),
        size >> 20,
        MAX_HWM_KIB >> 10
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Max RSS (KiB) of `tokentap-agent inspect FILE`, from the kernel's
/// accounting of the child. Forked, not spawned with `vfork` (std's
/// `posix_spawn`, taken without a `pre_exec` hook): an exec records the peak
/// of the memory it leaves as the process's, and a `vfork` child leaves this
/// process's (a Python check: 219 MiB for a child whose own peak was 17).
#[allow(clippy::zombie_processes, reason = "reaped by wait4, which also gives its rusage")]
fn inspect_max_rss_kib(file: &std::path::Path) -> u64 {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(agent_bin());
    cmd.arg("inspect").arg(file).stdout(Stdio::null());
    // SAFETY: an empty hook, async-signal-safe; it only makes std fork.
    unsafe { cmd.pre_exec(|| Ok(())) };
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: our own child, not yet reaped (std never waits on a dropped
    // Child); valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "inspect {} failed", file.display());
    usage.ru_maxrss as u64
}

/// A large program that keeps its symbols, with rustls in it (the debug agent
/// binary: ~170 MB, ~10 MB of symbol names; `inspect` then refuses its
/// unoptimised rustls code, after the walks): the walks of its symbol table
/// (the TLS functions', rustls's by name) held every page of it they touched,
/// ~13 MiB above inspecting a tiny file, whenever such a program started on
/// the host, under load or not (the RSS bench's peaks, docs/performance.md).
#[test]
fn inspecting_a_large_program_with_its_symbols_holds_a_few_mib_at_a_time() {
    let _g = serial();
    // The debug build `cargo xtask build` makes, whichever agent inspects it.
    let big = workspace_root().join("target/debug/tokentap-agent");
    let size = std::fs::metadata(&big).unwrap_or_else(|e| panic!("{}: {e}", big.display())).len();
    assert!(size > 100 << 20, "{} is {size} bytes: this test needs a debug build's symbols", big.display());
    let out = Command::new(agent_bin()).arg("inspect").arg(&big).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"tls_library\":\"rustls\""), "rustls found by its symbols: {text}");
    let base = inspect_max_rss_kib(std::path::Path::new("/bin/true"));
    let peak = inspect_max_rss_kib(&big);

    eprintln!("inspect: /bin/true {} KiB, {} ({} MiB) {} KiB", base, big.display(), size >> 20, peak);
    assert!(
        peak < base + (8 << 10),
        "inspecting {} peaked {} KiB above a tiny file's inspection: the symbol walks keep what they read",
        big.display(),
        peak.saturating_sub(base)
    );
}
