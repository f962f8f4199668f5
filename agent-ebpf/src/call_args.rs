//! A TLS call's arguments, from its entry probe to its return probe, kept in
//! the calling thread's own storage (OpenSSL-ABI calls here; rustls's sends
//! in their own map of this type, `rustls::RUSTLS_CALLS`).
//!
//! Why task storage: the return probe no longer sees the arguments, so the
//! entry saves them for the same thread. A hash map by thread id did that with
//! an insert at every entry and a lookup and a delete at every return, ~40 % of
//! the entry program and an eighth of a muted read's return (docs/performance.md).
//! A task's local storage is found from the task itself, with no hashing and no
//! lock on a shared bucket; an entry is created once per thread, reused by its
//! every call, and freed by the kernel with the thread (nothing to age out, no
//! map that fills; its memory is charged to the agent's cgroup, a few hundred bytes a
//! thread that made a TLS call). Kprobe-type programs (uprobes) may use it
//! since Linux 5.13, well before the 5.17 tokentap needs (`bpf_loop`).
//!
//! What it falls back to: none is needed where the agent loads at all. When the
//! kernel gives a thread no storage (out of memory, or its per-CPU guard held by
//! another task-storage use on this CPU, any map's: before Linux 6.2 that fails
//! lookups too, from 6.2 on only the creation of a thread's first entry), the
//! call is not saved, and counted (`ArgsMapFull`); a return that finds none
//! copies nothing. On those older kernels a failed save can leave the thread's
//! previous call in place, and a failed take keep one: the next return that
//! matches its kind would copy from its buffer: bytes out of place, which user
//! space counts as a desync where they do not parse. Both need the guard held
//! from an interrupt, twice in a row on one thread.
//!
//! The map's definition is a BTF map (section `.maps`, its type and sizes
//! written as array lengths the loader reads from the BTF): local storage
//! exists only as one. aya-ebpf 0.2 has no task storage type; this is its
//! layout for one.
use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE},
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
};
use tokentap_agent_common::{CallArgs, TAKEN_BY_TWO};

/// A BTF map definition of task storage holding `V`: every field a pointer
/// whose pointee's size or type the loader reads (never dereferenced).
#[repr(C)]
pub(crate) struct TaskStorage<V> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholders the loader replaces with the map; never read or written
// from Rust.
unsafe impl<V> Sync for TaskStorage<V> {}

impl<V> TaskStorage<V> {
    pub(crate) const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The current thread's value, created (zeroed) when `create` and it has none.
    #[inline(always)]
    pub(crate) fn current(&self, create: bool) -> Option<*mut V> {
        let flags = if create { BPF_LOCAL_STORAGE_GET_F_CREATE as u64 } else { 0 };
        let map = core::ptr::from_ref(self).cast_mut().cast();
        // SAFETY: the helper takes the map and the current task (a pointer the
        // verifier knows as one), and a null initial value (zeroes).
        let p = unsafe { bpf_task_storage_get(map, bpf_get_current_task_btf(), core::ptr::null_mut(), flags) };
        if p.is_null() {
            None
        } else {
            Some(p.cast())
        }
    }
}

/// The TLS call in flight on each thread: `call` 0 when none (no
/// [`tokentap_agent_common::CallKind`] is 0).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "CALL_ARGS")]
static CALL_ARGS: TaskStorage<CallArgs> = TaskStorage::new();

/// Save the thread's call, replacing any it had (the latest call wins: a
/// return that never fired must not block the thread). False when the kernel
/// gave no storage.
#[inline(always)]
pub(crate) fn save(args: CallArgs) -> bool {
    let Some(p) = CALL_ARGS.current(true) else {
        return false;
    };
    // SAFETY: the current thread's live storage; only its own probes touch it.
    unsafe { *p = args };
    true
}

/// Take the thread's call if it is of kind `call` and this agent has not
/// taken it yet (nor two agents, nor one that has left since): marked taken
/// by this agent, so that each agent uses a call once. With `--handover-dir`
/// the map is pinned and shared (`agent/src/handover.rs`), so that the agent
/// after one copies a read the one before saw begin: a client blocked in
/// `SSL_read` across a whole upgrade, whose return the new agent's return
/// program runs for (a return-only `uprobe_multi` link: the agent's
/// `return_probes.rs`). The same rule as Go's calls (`go_tls::take_go_call`);
/// [`CallArgs::taken_by`]'s layout and meaning are frozen for every release
/// that shares the map.
#[inline(always)]
pub(crate) fn take(call: u32) -> Option<CallArgs> {
    let p = CALL_ARGS.current(false)?;
    let me = crate::handover::me();
    // SAFETY: as in `save`; two agents' programs on one call run one after
    // the other on its thread.
    unsafe {
        let by = (*p).taken_by;
        if (*p).call != call || by == me || by == TAKEN_BY_TWO {
            return None;
        }
        // Taken by an agent gone since: the thread's last call, not one in
        // flight (this one began where no agent's entry probe saw it). Or,
        // in a window of microseconds, this very call, taken by the old
        // agent's program just before that agent left: not copied here then,
        // and the HTTP stage counts it (as Go's calls).
        if by != 0 && !crate::handover::live(by) {
            return None;
        }
        // An agent that has left copies nothing of it (the ownership rule's);
        // marked by it, the call would look taken to the agent that copies it.
        if !crate::handover::left() {
            (*p).taken_by = if by == 0 { me } else { TAKEN_BY_TWO };
        }
        Some(*p)
    }
}
