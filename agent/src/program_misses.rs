//! Runs of the agent's eBPF programs the kernel skipped, read from the kernel.
//!
//! Why this exists: the kernel does not run some programs when one of them
//! is already running on that CPU, and says so only in the program's own
//! `recursion_misses` count. Of the agent's programs, the raw tracepoint ones
//! (the socket hooks' `sys_enter`/`sys_exit`, exec and exit) are guarded
//! against their own nesting and counted since Linux 6.1, the syscalls'
//! tracepoint ones (`--syscall-hooks tracepoints`) since 6.7; uprobe programs
//! are not guarded since 6.0 (never skipped) and were never counted before.
//! A program of ours runs in task context, so a skipped run takes a kernel
//! that runs tracepoint programs preemptibly, or a bug: expected never, and
//! each one may be a call not copied, which nothing else in the agent would
//! see. So every second, and before each stats file write, the agent reads
//! each of its programs' counts (`BPF_OBJ_GET_INFO_BY_FD`; the kernel keeps them whether or not
//! `kernel.bpf_stats_enabled` is on), sums them into `kernel_program_misses`,
//! a loss counter, and names the programs that missed runs in a warning (at
//! most once a minute).
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use aya::Ebpf;

use crate::stats::Stats;

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `struct bpf_prog_info` up to `recursion_misses`, as u64 words: the kernel
/// fills the fields it has and leaves the rest zero (an older kernel's struct
/// is shorter, and `info_len` comes back smaller).
const INFO_WORDS: usize = 27;
/// `recursion_misses`' offset in `struct bpf_prog_info` (uapi/linux/bpf.h:
/// after `run_time_ns` at 192 and `run_cnt` at 200).
const RECURSION_MISSES: usize = 208;

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The kernel's count of `prog`'s skipped runs; `None` when the kernel's
/// program info has no such field (before 5.12) or it refuses to say.
pub fn misses(prog: BorrowedFd<'_>) -> Option<u64> {
    let mut info = [0u64; INFO_WORDS];
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` names a buffer of `info_len` bytes that lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>() as u32,
        )
    };
    if r != 0 || (attr.info_len as usize) < RECURSION_MISSES + 8 {
        return None;
    }
    Some(info[RECURSION_MISSES / 8])
}

/// How often, at most, the agent warns of skipped runs.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// One of the agent's programs, its count at the last read, and at the last warning.
struct Program {
    name: String,
    fd: OwnedFd,
    last: u64,
    warned: u64,
}

/// The agent's loaded programs and what each had missed.
pub struct ProgramMisses {
    programs: Vec<Program>,
    last_warning: Option<Instant>,
}

impl ProgramMisses {
    /// Every program of `ebpf` loaded now (call after the last load),
    /// and the programs loaded beside it (`more`: name, descriptor).
    pub fn of(ebpf: &Ebpf, more: Vec<(String, OwnedFd)>) -> Self {
        let programs = ebpf
            .programs()
            .filter_map(|(name, p)| Some((name.to_owned(), p.fd().ok()?.as_fd().try_clone_to_owned().ok()?)))
            .chain(more)
            .map(|(name, fd)| Program { name, fd, last: 0, warned: 0 })
            .collect();
        Self { programs, last_warning: None }
    }

    /// How many programs are read.
    pub fn len(&self) -> usize {
        self.programs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }

    /// Sum the programs' skipped runs into `stats` (a read that fails keeps
    /// the program's last count: a total that went down would read as a
    /// counter reset, and its whole value as new misses), and warn of those
    /// that missed runs, at most once a minute.
    pub fn update(&mut self, stats: &Stats) {
        let mut total = 0;
        for p in &mut self.programs {
            p.last = misses(p.fd.as_fd()).unwrap_or(p.last).max(p.last);
            total += p.last;
        }
        Stats::set(&stats.kernel_program_misses, total);
        if self.last_warning.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        let mut grew = Vec::new();
        for p in self.programs.iter_mut().filter(|p| p.last > p.warned) {
            grew.push(format!("{} +{}", p.name, p.last - p.warned));
            p.warned = p.last;
        }
        if !grew.is_empty() {
            self.last_warning = Some(Instant::now());
            tracing::warn!(
                programs = grew.join(", "),
                total,
                "the kernel skipped runs of these programs (one it guards against nesting was running on that \
                 CPU): calls may be lost, counted in kernel_program_misses"
            );
        }
    }
}

#[cfg(test)]
#[path = "program_misses_tests.rs"]
mod tests;
