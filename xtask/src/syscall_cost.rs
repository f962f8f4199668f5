//! `cargo xtask bench --only-syscalls`: what the socket hooks (raw
//! `sys_enter`/`sys_exit` tracepoints, or the syscalls' own; agent-ebpf's
//! sockets.rs, agent/src/socket_hooks.rs) add to a system call, which every
//! process on the host pays while the agent runs.
//!
//! A child process (this executable again, `xtask syscall-loop`) pinned to
//! one CPU times two calls the hooks do not record: an 8-byte `write` to
//! /dev/null (one of the calls the hooks look at) and `getppid` (one they
//! pass by). It runs twice: in a process with a client socket `connect`ed
//! (whose fds the kernel then filters: the cost a client process pays for its
//! file writes) and in one without. Runs without the release agent, with it
//! on the raw tracepoints (the default) and with `--syscall-hooks
//! tracepoints` alternate, and which goes first rotates round by round.
//! Results: target/bench/syscalls.md.
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tokentap_e2e::Agent;

use crate::stats::median;

const CALLS: u64 = 2_000_000;
/// Rounds of (without, raw, tracepoints): each goes first in two.
const ROUNDS: usize = 6;

/// The child: time `calls` writes and getppids (best of 3 rounds each), print
/// `{"write_ns": .., "getppid_ns": ..}`.
pub fn child(socket: bool, calls: u64) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus - 1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    // Held until the end: the process has a watched client socket.
    let _sockets = if socket {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        Some((listener, client))
    } else {
        None
    };
    let null = File::options().write(true).open("/dev/null")?;
    let buf = [0u8; 8];
    let (mut write_ns, mut getppid_ns) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..calls {
            // SAFETY: a valid fd and buffer.
            unsafe { libc::write(null.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        }
        write_ns = write_ns.min(t.elapsed().as_nanos() as f64 / calls as f64);
        let t = Instant::now();
        for _ in 0..calls {
            // SAFETY: no arguments.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        getppid_ns = getppid_ns.min(t.elapsed().as_nanos() as f64 / calls as f64);
    }
    println!("{}", json!({ "write_ns": write_ns, "getppid_ns": getppid_ns }));
    Ok(())
}

/// [write, getppid] in ns, with a socket and without.
type Sample = [[f64; 2]; 2];

fn sample() -> Result<Sample> {
    let exe = std::env::current_exe()?;
    let mut out = [[0.0; 2]; 2];
    for (i, socket) in [true, false].into_iter().enumerate() {
        let mut c = Command::new(&exe);
        c.args(["syscall-loop", "--calls", &CALLS.to_string()]);
        if socket {
            c.arg("--socket");
        }
        let o = c.output().context("xtask syscall-loop")?;
        ensure!(o.status.success(), "syscall-loop: {}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).context("syscall-loop output")?;
        out[i] = [v["write_ns"].as_f64().unwrap_or(0.0), v["getppid_ns"].as_f64().unwrap_or(0.0)];
    }
    Ok(out)
}

pub fn run(agent_bin: &Path, out: &Path) -> Result<()> {
    // SAFETY: set before any thread of ours starts.
    unsafe { std::env::set_var("TOKENTAP_AGENT_BIN", agent_bin) };
    std::fs::create_dir_all(out)?;
    let dir = out.join("syscalls");
    std::fs::create_dir_all(&dir)?;
    // Per round: without the agent, on the raw hooks, on the syscalls' tracepoints.
    let modes: [&[&str]; 2] = [&[], &["--syscall-hooks", "tracepoints"]];
    let mut rounds: Vec<[Sample; 3]> = Vec::new();
    for round in 0..ROUNDS {
        let mut got = [None; 3];
        for k in 0..3 {
            let run = (round + k) % 3;
            got[run] = Some(if run == 0 {
                sample()?
            } else {
                let mut agent = Agent::start(&dir, modes[run - 1]);
                let s = sample()?;
                agent.stop();
                // A fallback to the raw pair would measure it twice.
                let raw = agent.stats()["socket_hooks_every_syscall"].as_u64();
                ensure!(
                    raw == Some(u64::from(run == 1)),
                    "mode {:?}: socket_hooks_every_syscall {raw:?}",
                    modes[run - 1]
                );
                s
            });
        }
        let got = got.map(|s| s.expect("ran"));
        eprintln!("syscalls: round {}: without {:?}, raw {:?}, tracepoints {:?} ns", round + 1, got[0], got[1], got[2]);
        rounds.push(got);
    }
    let mut md = String::from("# What the agent adds to a system call it does not record\n\n");
    md += &format!(
        "A process pinned to one CPU times {CALLS} 8-byte writes to /dev/null and {CALLS} `getppid` calls \
         (best of 3 rounds each), with a client socket connected and without; {ROUNDS} rounds, runs without the \
         agent, with it on the raw sys_enter/sys_exit tracepoints (the default) and with `--syscall-hooks \
         tracepoints` alternated.\n\n"
    );
    md += "| process | call | without agent | raw tracepoints | added | syscalls' tracepoints | added |\n\
           |---|---|--:|--:|--:|--:|--:|\n";
    for (s, proc_) in ["with a client socket", "without sockets"].iter().enumerate() {
        for (c, call) in ["write to /dev/null", "getppid"].iter().enumerate() {
            let at = |m: usize| median(rounds.iter().map(|r| r[m][s][c]).collect());
            let added = |m: usize| median(rounds.iter().map(|r| r[m][s][c] - r[0][s][c]).collect());
            md += &format!(
                "| {proc_} | {call} | {:.0} ns | {:.0} ns | {:+.0} ns | {:.0} ns | {:+.0} ns |\n",
                at(0),
                at(1),
                added(1),
                at(2),
                added(2)
            );
        }
    }
    md += "\n(medians over the rounds; added: the median of the rounds' differences)\n";
    let path = out.join("syscalls.md");
    File::create(&path)?.write_all(md.as_bytes())?;
    println!("{md}");
    eprintln!("syscalls: {}", path.display());
    Ok(())
}
