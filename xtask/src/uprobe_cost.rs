//! `cargo xtask bench`: what one uprobe hit costs on this machine, when the
//! kernel single-steps the probed instruction and when it emulates it.
//!
//! This is why the agent places its OpenSSL probes on emulated instructions
//! where it can (agent/src/discovery/placement.rs): in a KVM guest the
//! single-step's debug exception is a VM exit.
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".globl tt_probe_single_stepped",
    "tt_probe_single_stepped:",
    "sub rsp, 0x18",
    "add rsp, 0x18",
    "ret",
    ".globl tt_probe_emulated",
    "tt_probe_emulated:",
    "push rbp",
    "pop rbp",
    "ret",
);

#[cfg(target_arch = "x86_64")]
unsafe extern "C" {
    fn tt_probe_single_stepped();
    fn tt_probe_emulated();
}

/// File offset of code at `addr` in this executable, from /proc/self/maps.
fn file_offset(addr: usize) -> Result<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some((lo, hi)) = f.first().and_then(|r| r.split_once('-')) else { continue };
        let (lo, hi) = (usize::from_str_radix(lo, 16)?, usize::from_str_radix(hi, 16)?);
        if (lo..hi).contains(&addr) {
            return Ok((addr - lo) as u64 + u64::from_str_radix(f.get(2).copied().unwrap_or("0"), 16)?);
        }
    }
    bail!("address {addr:#x} not in any mapping")
}

/// A uprobe on this process at `offset` of its executable, counted by perf
/// (no eBPF program: the cost measured is the kernel's own).
fn open_uprobe(offset: u64) -> Result<OwnedFd> {
    open_probe(&std::env::current_exe()?, offset, false, 0, -1)
}

/// A uprobe (`ret`: a return probe) at `offset` of `file`, for process `pid`
/// (0: this one, -1: all) on `cpu` (-1: any), with no eBPF program: perf
/// counts its hits and the kernel takes the trap all the same.
pub fn open_probe(file: &Path, offset: u64, ret: bool, pid: i32, cpu: i32) -> Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let ty: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .context("no uprobe PMU in /sys/bus/event_source/devices")?
        .trim()
        .parse()?;
    let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes())?;
    // struct perf_event_attr: type, size, config (bit 0: return probe, the
    // PMU's `retprobe` format), ... flags (0: enabled), config1 = path,
    // config2 = offset.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&ty.to_ne_bytes());
    attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&u64::from(ret).to_ne_bytes());
    attr[56..64].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[64..72].copy_from_slice(&offset.to_ne_bytes());
    // SAFETY: a valid attr buffer, read during the call. Close-on-exec: a
    // client the bench starts must not keep the probe alive.
    const PERF_FLAG_FD_CLOEXEC: u64 = 8;
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC) };
    if fd < 0 {
        bail!(
            "perf_event_open(uprobe {}+{offset:#x}): {} (needs root)",
            file.display(),
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn time_calls(f: unsafe extern "C" fn(), n: u32) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: the functions only adjust the stack and return.
        unsafe { f() };
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// (µs per hit single-stepped, µs per hit emulated).
#[cfg(target_arch = "x86_64")]
pub fn measure() -> Result<(f64, f64)> {
    let n = 100_000;
    let mut out = Vec::new();
    for f in [tt_probe_single_stepped as unsafe extern "C" fn(), tt_probe_emulated] {
        let bare = time_calls(f, n);
        let probe = open_uprobe(file_offset(f as usize)?)?;
        let probed = time_calls(f, n);
        drop(probe);
        out.push(probed - bare);
    }
    Ok((out[0], out[1]))
}

#[cfg(not(target_arch = "x86_64"))]
pub fn measure() -> Result<(f64, f64)> {
    bail!("the uprobe cost measurement is x86-64 only")
}
