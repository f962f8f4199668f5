//! The kernel's count of skipped runs, read for a program made to miss one.
//!
//! How a miss is made on purpose: a raw tracepoint program attached to the
//! `bpf_trace_printk` tracepoint that itself calls `bpf_trace_printk`. Run
//! once by `BPF_PROG_TEST_RUN`, its printk fires the tracepoint, which runs it
//! (the tracepoint's run of it now active on this CPU); that run's printk fires
//! the tracepoint again, and the kernel skips the program: one miss, exactly
//! (while the link is attached, a `bpf_trace_printk` anywhere on the machine
//! would run it too: the window is the one test run). Loading it turns the
//! kernel's trace_printk buffers on, as any program using the helper does.
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use super::*;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// One eBPF instruction: opcode, dst/src registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code) | u64::from(dst | src << 4) << 8 | u64::from(off as u16) << 16 | u64::from(imm as u32) << 32
}

fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-padded bpf_attr the command reads (and writes) within its length.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr) as u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A raw tracepoint program that prints "hi" and returns 0.
fn load_printk_program() -> OwnedFd {
    let prog = [
        insn(0x62, 10, 0, -8, i32::from_le_bytes(*b"hi\n\0")), // *(u32 *)(r10 - 8) = "hi\n"
        insn(0xbf, 1, 10, 0, 0),                               // r1 = r10
        insn(0x07, 1, 0, 0, -8),                               // r1 += -8
        insn(0xb7, 2, 0, 0, 4),                                // r2 = 4
        insn(0x85, 0, 0, 0, 6),                                // call bpf_trace_printk
        insn(0xb7, 0, 0, 0, 0),                                // r0 = 0
        insn(0x95, 0, 0, 0, 0),                                // exit
    ];
    let license = c"GPL";
    // prog_type, insn_cnt | insns | license | the rest zero (no log).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_RAW_TRACEPOINT) | (prog.len() as u64) << 32;
    attr[1] = prog.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let fd = bpf(BPF_PROG_LOAD, &mut attr).expect("loading a raw tracepoint program (run the tests as root)");
    // SAFETY: a new descriptor the kernel just gave us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Linux's version as (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn a_run_the_kernel_skips_is_counted() {
    // Before 6.3, bpf_trace_printk held a raw spinlock across the tracepoint:
    // the nested call this test makes would lock the CPU up, not miss a run
    // (and before 6.1 raw tracepoint programs had no guard against nesting).
    if kernel_version() < (6, 3) {
        eprintln!("skipped: Linux {:?} is older than 6.3 (bpf_trace_printk can't nest there)", kernel_version());
        return;
    }
    let prog = load_printk_program();
    assert_eq!(misses(prog.as_fd()), Some(0), "a program never run has missed nothing");

    let name = c"bpf_trace_printk";
    let mut attr = [0u64; 2];
    attr[0] = name.as_ptr() as u64;
    attr[1] = prog.as_raw_fd() as u64;
    let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr).expect("attaching to the bpf_trace_printk tracepoint");
    // SAFETY: a new descriptor the kernel just gave us; closing it detaches.
    let link = unsafe { OwnedFd::from_raw_fd(link as i32) };

    // test: prog_fd | retval, then all zero (no data, no context, no repeat).
    let mut run = [0u64; 10];
    run[0] = prog.as_raw_fd() as u64;
    bpf(BPF_PROG_TEST_RUN, &mut run).expect("running the program once");
    drop(link);
    assert_eq!(misses(prog.as_fd()), Some(1), "the tracepoint's nested run of the program was skipped once");
}

#[test]
fn not_a_program_is_none() {
    let f = std::fs::File::open("/proc/self/stat").unwrap();
    assert_eq!(misses(f.as_fd()), None);
}
