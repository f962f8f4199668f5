//! Kernel time to wall-clock time: ring-buffer records carry monotonic
//! timestamps (`bpf_ktime_get_ns`), records carry wall-clock ones.

/// Monotonic (kernel `bpf_ktime_get_ns`) to wall-clock conversion.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    pub fn system() -> Self {
        let mono = monotonic_ns() as i128;
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        Self { offset_ns: wall - mono }
    }

    pub fn fixed(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn wall_ns(&self, mono_ns: u64) -> i128 {
        mono_ns as i128 + self.offset_ns
    }
}

/// The kernel's monotonic clock now, in the ring buffer's unit.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
