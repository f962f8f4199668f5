//! Two agents on one node during an upgrade, each connection copied by exactly
//! one of them, and handed from the old to the new at an exchange boundary.
//!
//! Why overlap and ownership, not a ring buffer that outlives the agent: the
//! old agent holds half-parsed calls (a request read, its response not yet),
//! and no later version could be trusted to resume another version's parser
//! state. So both agents run for a while (the DaemonSet surges), and a small
//! pinned map says who copies each connection ([`CONN_OWNERS`]): a connection
//! stays with the agent that saw its exchange begin, and moves to the current
//! agent ([`CURRENT_AGENT`], set by the new agent once its probes are attached)
//! when the client writes a new HTTP/1.1 request after reading — the one
//! point where no parser state is needed. A connection whose owner has exited
//! (drained, crashed, killed) goes to the current agent at its next call; what
//! a killed one copied and never read is in its ring buffer, pinned for that
//! case alone and read by the agent after it (`agent/src/orphan_rings.rs`). A
//! TLS socket's hello and a socket's end are told by its owner alone too, so
//! the blind-spot accounting is not doubled.
//!
//! What it falls back to: with no pinned maps (the default, `--handover-dir`
//! unset) [`CURRENT_AGENT`] stays 0 and every call is this agent's, as
//! before. HTTP/2 and WebSocket connections have no such boundary: they stay
//! with the old agent until it exits, then move mid-stream (counted by the
//! parsers). A full [`CONN_OWNERS`] evicts its oldest entry: that connection is
//! claimed again by the current agent at its next call.
use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use tokentap_agent_common::{
    ConnOwner, HandoffKey, HandoffPart, LossCounter, SslKey, DIR_EGRESS, HANDED_OVER, TAKEN_FROM_EXITED,
};

use crate::ring::count_loss;

/// This agent's tgid (its process id in the host's namespace), set by the loader.
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;

/// Agents running now, by tgid (value: when they started). Each agent adds
/// itself at start and removes itself at exit; an agent that dies without
/// doing so is removed by the exit tracepoint ([`agent_exited`]).
#[map]
static AGENTS: HashMap<u32, u64> = HashMap::with_max_entries(64, 0);

/// The agent new connections go to: the newest one whose probes are attached.
/// 0: no handover set up (or no agent ready yet): every agent copies everything.
#[map]
static CURRENT_AGENT: Array<u32> = Array::with_max_entries(1, 0);

/// Which agent copies each connection (see the module's prose).
#[map]
static CONN_OWNERS: LruHashMap<SslKey, ConnOwner> = LruHashMap::with_max_entries(65536, 0);

/// Decoding states a leaving agent handed on, in parts, by connection (user
/// space writes and reads them; here part 0 only goes with its connection,
/// see [`forget`]).
/// Not preallocated: empty but for the seconds of an upgrade.
#[map]
static CONN_STATES: HashMap<HandoffKey, HandoffPart> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1;

/// [`owns`]: whose call it is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owned {
    No,
    Yes,
    /// Ours, taken just now from an agent that left: the chunk says so.
    Taken,
}

#[inline(always)]
fn live(agent: u32) -> bool {
    agent != 0 && unsafe { AGENTS.get(agent) }.is_some()
}

/// Does this write start an HTTP/1.1 request? Only such a write, after a read,
/// may move a connection: a WebSocket frame, an HTTP/2 frame or the rest of
/// a request body never starts with a method.
#[inline(always)]
fn starts_request(buf: u64) -> bool {
    let Ok(head) = (unsafe { bpf_probe_read_user(buf as *const [u8; 4]) }) else {
        return false;
    };
    matches!(&head, b"GET " | b"POST" | b"PUT " | b"PATC" | b"DELE" | b"HEAD" | b"OPTI")
}

/// Is the call of `direction` at `buf` on `key` this agent's to copy? Both
/// agents' programs run on the same call, one after the other; every change
/// made here is one both would make, so whichever runs first, they agree.
#[inline(always)]
pub(crate) fn owns(key: SslKey, direction: u32, buf: u64) -> Owned {
    let cur = match CURRENT_AGENT.get(0) {
        Some(&c) if c != 0 => c,
        _ => return Owned::Yes,
    };
    let me = unsafe { core::ptr::read_volatile(&AGENT_TGID) };
    let heir = if live(cur) { cur } else { me };
    let Some(o) = CONN_OWNERS.get_ptr_mut(key) else {
        // Made by the heir's own program alone: an entry for an agent that
        // does not watch the connection would outlive it (no end of its to
        // forget it at).
        if heir != me {
            return Owned::No;
        }
        let _ = CONN_OWNERS.insert(key, ConnOwner { agent: heir, last_dir: direction as u16, moved: 0 }, 0);
        return Owned::Yes;
    };
    // SAFETY: a live map value; the fields are plain integers.
    unsafe {
        let owner = (*o).agent;
        if owner != heir {
            if !live(owner) {
                (*o).agent = heir;
                (*o).moved = TAKEN_FROM_EXITED;
            } else if heir == cur
                && direction == DIR_EGRESS
                && (*o).last_dir != DIR_EGRESS as u16
                && starts_request(buf)
            {
                (*o).agent = heir;
                (*o).moved = HANDED_OVER;
            }
        }
        (*o).last_dir = direction as u16;
        if (*o).agent != me {
            count_loss(LossCounter::OwnedElsewhere, 1);
            return Owned::No;
        }
        let moved = (*o).moved;
        (*o).moved = 0;
        match moved {
            HANDED_OVER => count_loss(LossCounter::HandoverReceived, 1),
            TAKEN_FROM_EXITED => {
                count_loss(LossCounter::HandoverFromExited, 1);
                return Owned::Taken;
            }
            _ => {}
        }
    }
    Owned::Yes
}

/// A connection's key may be reused: its next owner is decided afresh. Both
/// agents' programs run at a connection's end; an entry a running agent
/// owns and has copied from since it got it is left to that agent's program
/// (which also tells the end, see [`tells_end`]), and its handed-on state
/// stays: that agent took the connection over and reads the state, which it
/// also does at the connection's end (told to its user space after this),
/// as the state may have been written moments before. An owner that has not
/// copied a call since the move (its flag is still set) holds none of the
/// connection's bytes and may not watch it at all (a socket it could not
/// list): entry and state go at once. So does the state of an owner that
/// exited: nobody will read it.
#[inline(always)]
pub(crate) fn forget(key: SslKey) {
    let Some(o) = (unsafe { CONN_OWNERS.get(key) }).copied() else {
        return;
    };
    let me = unsafe { core::ptr::read_volatile(&AGENT_TGID) };
    let running = live(o.agent);
    if o.agent != me && running && o.moved == 0 {
        return;
    }
    let _ = CONN_OWNERS.remove(key);
    if !running || o.moved != 0 {
        let _ = CONN_STATES.remove(HandoffKey { tgid: key.tgid as u32, part: 0, conn: key.ssl });
    }
}

/// A connection ended: is saying so (its bytes, to the blind-spot
/// accounting) this agent's job? Its owner's, or the current agent's when
/// the owner exited or nobody owns it; decided without moving it. When the
/// owner's program runs first it forgets the connection, and the current
/// agent's, finding no owner, says it too: a close of a connection its user
/// space never had, which it drops.
#[inline(always)]
pub(crate) fn tells_end(key: SslKey) -> bool {
    let cur = match CURRENT_AGENT.get(0) {
        Some(&c) if c != 0 => c,
        _ => return true,
    };
    let me = unsafe { core::ptr::read_volatile(&AGENT_TGID) };
    let heir = if live(cur) { cur } else { me };
    match unsafe { CONN_OWNERS.get(key) } {
        Some(o) if live(o.agent) => o.agent == me,
        _ => heir == me,
    }
}

/// Who copies a connection an agent met midway (a socket it found open at
/// its start, see `crate::sockets`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// No agent: nothing of it was ever copied (not HTTP), or handover is off.
    Nobody,
    /// This agent: the agent before handed it over (its program, having
    /// left, may do so on any call), so it is HTTP.
    Mine,
    /// Another agent that runs: it copies the connection until it hands it over.
    Running,
    /// An agent that exited; `true`: it handed on its decoding state, so the
    /// connection was mid-exchange and is HTTP.
    Exited(bool),
}

#[inline(always)]
pub(crate) fn holder(key: SslKey) -> Holder {
    let me = unsafe { core::ptr::read_volatile(&AGENT_TGID) };
    match unsafe { CONN_OWNERS.get(key) } {
        None => Holder::Nobody,
        Some(o) if o.agent == me => Holder::Mine,
        Some(o) if live(o.agent) => Holder::Running,
        Some(_) => Holder::Exited(
            unsafe { CONN_STATES.get(HandoffKey { tgid: key.tgid as u32, part: 0, conn: key.ssl }) }.is_some(),
        ),
    }
}

/// A process exited: if it was an agent, it owns nothing any more.
#[inline(always)]
pub(crate) fn agent_exited(tgid: u32) {
    let _ = AGENTS.remove(tgid);
}
