//! The first write of a TLS client connection, handed to user space whole: a
//! ClientHello names the server (SNI) in clear whatever TLS library built it,
//! so a connection whose plaintext no capture method reads can still be
//! attributed to a provider host and counted (user space parses it).
//!
//! Why here: [`crate::sockets`] already inspects each watched socket's first
//! egress bytes at `sys_exit`; when they start a TLS handshake record it calls
//! [`emit_hello`] once for that socket. The copy goes through per-CPU scratch
//! (a record is too big for the stack), one slot per nesting level like
//! [`crate::chunks`], and is sized to what was written: a ClientHello is a few
//! hundred bytes, ~1.2-1.8 KB with a post-quantum key share.
//!
//! What it falls back to: at most one TLS record ([`MAX_RECORD`]) is copied; a
//! hello split over several writes or records is cut, and user space then
//! sees it incomplete (no server name unless it came early). A hello the ring
//! buffer can't take, or one with every scratch slot busy, is counted in
//! `HelloLost`: that socket is then counted in the kernel but never named.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_ktime_get_ns,
        generated::{bpf_get_current_cgroup_id, bpf_probe_read_user as raw_probe_read_user},
    },
    macros::map,
    maps::PerCpuArray,
};
use tokentap_agent_common::{EventKind, HelloEvent, LossCounter, HELLO_HEADER_LEN, MAX_HELLO, SCRATCH_SLOTS};

use crate::chunks::nested;
use crate::ring::{count_loss, wakeup_flags, EVENTS};

/// One TLS record and its header: a hello is never longer in one write.
const MAX_RECORD: u64 = 5 + (1 << 14);

#[map]
static HELLO_SCRATCH: PerCpuArray<HelloEvent> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// Copy the first `len` bytes at `buf` (the socket's first write) to user
/// space as a [`EventKind::TlsHello`] record.
pub(crate) fn emit_hello(pid_tgid: u64, fd: i32, id: u64, buf: u64, len: u64) {
    let mut sent = false;
    nested(|slot| sent = copy_hello(pid_tgid, fd, id, buf, len, slot));
    if !sent {
        count_loss(LossCounter::HelloLost, 1);
    }
}

fn copy_hello(pid_tgid: u64, fd: i32, id: u64, buf: u64, len: u64, slot: u32) -> bool {
    let Some(ev) = HELLO_SCRATCH.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: per-CPU scratch slot owned by this nesting level.
    let ev = unsafe { &mut *ev };
    let mut n = if len > MAX_RECORD { MAX_RECORD } else { len };
    // Keep the verifier sure that n is within the scratch buffer.
    n &= 0x7fff;
    if n > MAX_HELLO as u64 {
        n = MAX_HELLO as u64;
    }
    let rc = unsafe { raw_probe_read_user(ev.data.as_mut_ptr().cast(), n as u32, buf as *const core::ffi::c_void) };
    if rc != 0 {
        return false;
    }
    let h = &mut ev.header;
    h.kind = EventKind::TlsHello as u32;
    h.tgid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.fd = fd;
    h.ts_ns = unsafe { bpf_ktime_get_ns() };
    h.id = id;
    h.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    h.len = n as u32;
    h.call_len = if len > u32::MAX as u64 { u32::MAX } else { len as u32 };
    let total = HELLO_HEADER_LEN + n as usize;
    // SAFETY: `total` <= size_of::<HelloEvent>() and `ev` is a live map value.
    let bytes = unsafe { core::slice::from_raw_parts((ev as *const HelloEvent).cast::<u8>(), total) };
    EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_ok()
}
