//! Counts by slot: an array the hooks read before a hash map, so that the
//! common case (no entry) costs an array read, not a lookup.
//!
//! Why counts, not flags: many ids share a slot (an id modulo the size), and
//! entries come and go on several CPUs at once. A slot holds how many of
//! its ids' entries the map has, never fewer: added atomically after an
//! insert, taken after a remove. A count left high (an entry the LRU
//! evicted, one an insert replaced) costs its slot a lookup, never a call.
//! Used for the socket hooks' processes (`watched`) and calls in flight
//! (`sockets`).
use aya_ebpf::maps::Array;

/// Slots per counting array: 128 KiB each.
pub(crate) const SLOTS: u32 = 16384;

/// Whether `id`'s slot counts nothing: then `id` has no entry in the map the
/// slots count for. An array read: the verifier inlines it.
pub(crate) fn slot_empty(slots: &Array<u64>, id: u32) -> bool {
    !matches!(slots.get(id & (SLOTS - 1)), Some(&n) if n != 0)
}

/// Add `n` (wrapping: `u64::MAX` takes one) to `id`'s slot: after an entry
/// is inserted, and (`u64::MAX`) after one is removed, so that a slot never
/// counts fewer entries than its ids have. Atomic: ids of one slot run on
/// several CPUs.
pub(crate) fn add(slots: &Array<u64>, id: u32, n: u64) {
    if let Some(p) = slots.get_ptr_mut(id & (SLOTS - 1)) {
        atomic_add(p, n);
    }
}

/// `*p += n` atomically: a lock-prefixed add (BPF_XADD, every kernel), whose
/// result is not read (reading it needs BPF_FETCH, Linux 5.12).
pub(crate) fn atomic_add(p: *mut u64, n: u64) {
    // SAFETY: `p` is a live map value (callers pass map pointers only).
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, n) };
}
