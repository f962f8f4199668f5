//! The ring buffer to user space, when a write to it wakes user space, the
//! control events (connection closed, exec, exit, libraries changed, a
//! socket's end with its byte totals) and the per-CPU loss counters.
//!
//! Why a ring buffer: one buffer shared by all CPUs keeps events of one
//! connection in order and lets records be variable-sized (a chunk's header plus
//! only the bytes it carries). Waking user space on every record would cost the
//! traced thread an interrupt per call, so writes do not wake it; user space
//! drains on a short timer and is woken early only when the buffer fills up, or
//! at once for events that must be handled while a process still lives. When the
//! buffer is full a record is dropped and counted here (and the copy path marks
//! the connection's gap, see [`crate::chunks`]).
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_current_cgroup_id},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tokentap_agent_common::{ControlEvent, EventKind, LossCounter, SockClosedEvent, SockState, LOSS_COUNTERS};

/// Size is set by the loader (`--ring-buffer-bytes`); this is the default.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Per CPU, the most bytes seen waiting in `EVENTS` since user space last read
/// (and zeroed) this: the ring buffer's fill level for `/metrics`.
#[map]
static RING_FILL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const BPF_RB_NO_WAKEUP: u64 = 1;
pub(crate) const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// Whether this output wakes user space. By default every record written to an
/// empty ring buffer does, which costs the traced thread an interrupt (a VM exit
/// in a guest) per call; user space drains on a short timer instead, and is
/// woken early only when the buffer is an eighth full.
#[inline(always)]
pub(crate) fn wakeup_flags() -> u64 {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    if let Some(p) = RING_FILL.get_ptr_mut(0) {
        // SAFETY: this CPU's value of a live per-CPU map.
        unsafe {
            if *p < waiting {
                *p = waiting;
            }
        }
    }
    if waiting >= EVENTS.query(BPF_RB_RING_SIZE) / 8 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Per-CPU loss counters (no atomics needed); user space sums the CPUs.
#[map]
static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_COUNTERS, 0);

#[inline(always)]
pub(crate) fn count_loss(counter: LossCounter, n: u64) {
    if let Some(p) = LOSS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's value of a live per-CPU map.
        unsafe { *p += n };
    }
}

pub(crate) fn emit_control(kind: EventKind, conn: u64) {
    emit_control_for(bpf_get_current_pid_tgid(), kind, conn);
}

pub(crate) fn emit_control_for(pid_tgid: u64, kind: EventKind, conn: u64) {
    let ev = ControlEvent {
        kind: kind as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        _pad: 0,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        conn,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // A new program or library must be inspected while its process still
    // lives (it may exit within milliseconds): wake user space at once.
    let flags =
        if matches!(kind, EventKind::Exec | EventKind::LibsChanged) { BPF_RB_FORCE_WAKEUP } else { wakeup_flags() };
    if EVENTS.output::<ControlEvent>(&ev, flags).is_err() {
        count_loss(LossCounter::ControlRingFull, 1);
    }
}

/// A watched socket ended: its totals, so user space can account for the
/// bytes it moved (and end its plaintext stream, if it had one).
pub(crate) fn emit_sock_closed(pid_tgid: u64, fd: i32, s: &SockState) {
    let ev = SockClosedEvent {
        kind: EventKind::SockClosed as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        id: s.id,
        sent: s.sent,
        received: s.received,
        state: s.state,
        _pad: 0,
    };
    if EVENTS.output::<SockClosedEvent>(&ev, wakeup_flags()).is_err() {
        count_loss(LossCounter::ControlRingFull, 1);
    }
}
