//! Process events: what drives user space's discovery and frees its state.
//!
//! Why these hooks: the `sched_process_exec` raw tracepoint prompts user space to
//! look for TLS libraries in a new program, and `sched_process_exit` lets it
//! free a process's state (here: the process's socket and first-call entries,
//! a thread's socket call in flight,
//! and, for an agent that died, its place among the running agents).
//! `_dl_debug_state` in the dynamic loader runs after every library load or
//! unload, so a library `dlopen`ed later is found at once too. Raw tracepoints
//! need no tracefs mount (often absent in containers).
//!
//! What they fall back to: user space also rescans processes periodically, so a
//! missed event delays a library's probes rather than losing them for good; a
//! process whose exit is missed ages out of the LRU maps.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{raw_tracepoint, uprobe},
    programs::{ProbeContext, RawTracePointContext},
};
use tokentap_agent_common::EventKind;

use crate::chunks::PROCS_SEEN;
use crate::ring::emit_control;
use crate::sockets::take_call;
use crate::watched::forget_process;

/// `_dl_debug_state` in the dynamic loader runs after every library load or
/// unload (dlopen, and startup): user space looks for a new TLS library at once
/// instead of waiting for a rescan, so the process's first TLS call is not missed.
#[uprobe]
pub fn dl_debug_state(_ctx: ProbeContext) -> u32 {
    emit_control(EventKind::LibsChanged, 0);
    0
}

// Raw tracepoints need no tracefs mount (often absent in containers).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    let _ = PROCS_SEEN.remove((bpf_get_current_pid_tgid() >> 32) as u32);
    emit_control(EventKind::Exec, 0);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // A socket call whose syscall exit never ran (none is known to) would
    // keep its thread slot's count up for good.
    let _ = take_call(pid_tgid);
    // Only the thread group leader's exit ends the process's connections.
    if (pid_tgid >> 32) as u32 == pid_tgid as u32 {
        forget_process((pid_tgid >> 32) as u32);
        let _ = PROCS_SEEN.remove((pid_tgid >> 32) as u32);
        crate::handover::agent_exited((pid_tgid >> 32) as u32);
        emit_control(EventKind::Exit, 0);
    }
    0
}
