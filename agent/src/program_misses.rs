//! Runs of the agent's eBPF programs the kernel skipped, read from the kernel.
//!
//! Why this exists: the kernel does not run a program when one it guards
//! against nesting is already running on that CPU, and says so only in the
//! program's own `recursion_misses` count: a uprobe program is skipped while
//! any kprobe, uprobe or perf-event program runs on its CPU, a raw tracepoint
//! program (the socket hooks' `sys_enter`/`sys_exit`) while its own run is
//! not done. Ours run in task context, so this takes another tool's programs
//! interleaving with ours, or a kernel that runs them preemptibly: rare, and
//! each skipped run may be a call not copied, which
//! nothing else in the agent would see: so every second the agent reads each
//! of its programs' counts (`BPF_OBJ_GET_INFO_BY_FD`, counted by the kernel
//! whether or not `kernel.bpf_stats_enabled` is on, since Linux 5.12) and
//! sums them into `kernel_program_misses`, a loss counter, and names the
//! programs that missed runs in a warning.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::programs::ProgramFd;
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

/// The kernel's count of `prog`'s skipped runs; `None` when the kernel keeps
/// none (before 5.12) or refuses to say.
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

/// The agent's loaded programs and what each had missed at the last read.
pub struct ProgramMisses {
    programs: Vec<(String, ProgramFd, u64)>,
}

impl ProgramMisses {
    /// Every program of `ebpf` loaded now (call after the last load).
    pub fn of(ebpf: &Ebpf) -> Self {
        let programs = ebpf
            .programs()
            .filter_map(|(name, p)| {
                let fd = p.fd().ok()?.try_clone().ok()?;
                Some((name.to_owned(), fd, 0))
            })
            .collect();
        Self { programs }
    }

    /// How many programs are read.
    pub fn len(&self) -> usize {
        self.programs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }

    /// Sum the programs' skipped runs into `stats`, and warn of those that
    /// missed runs since the last read.
    pub fn update(&mut self, stats: &Stats) {
        let mut total = 0;
        let mut grew = Vec::new();
        for (name, fd, last) in &mut self.programs {
            let Some(n) = misses(fd.as_fd()) else { continue };
            if n > *last {
                grew.push(format!("{name} +{}", n - *last));
                *last = n;
            }
            total += n;
        }
        Stats::set(&stats.kernel_program_misses, total);
        if !grew.is_empty() {
            tracing::warn!(
                programs = grew.join(", "),
                "the kernel skipped runs of these programs (one of the same kind was running on that CPU): \
                 calls may be lost, counted in kernel_program_misses"
            );
        }
    }
}

#[cfg(test)]
#[path = "program_misses_tests.rs"]
mod tests;
