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
//! point where no parser state is needed. An agent's leaving is not drawn
//! from the call, and may fall between the two agents' programs of one: the
//! first leaves its view on its CPU ([`CALL_TURNS`]) and the second decides
//! from it, so they agree (the rule, what tells one call from the next
//! ([`CALL_SEQS`]) and the tests: `tokentap_agent_common::ownership`). A connection whose owner has exited
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
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use tokentap_agent_common::{
    ownership::{began_under, began_under_current, decide, first_call, view_changed, Call, Verdict, View},
    ConnOwner, HandoffKey, HandoffPart, LossCounter, SslKey, Turn,
};

use crate::ring::count_loss;

/// This agent's tgid (its process id in the host's namespace), set by the loader.
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;

/// This agent's tgid ([`AGENT_TGID`]).
#[inline(always)]
pub(crate) fn me() -> u32 {
    // SAFETY: a global the loader sets before any program runs.
    unsafe { core::ptr::read_volatile(&AGENT_TGID) }
}

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

/// Each CPU's first program's view of a call while agents overlap, for the other
/// agent's program on the same call (see `owns`). Pinned: both agents' programs
/// read and write it.
#[map]
static CALL_TURNS: PerCpuArray<Turn> = PerCpuArray::with_max_entries(1, 0);

/// Each thread's call count, by thread id modulo the size, added to by every
/// call's argument-saving program of either agent ([`call_begins`]): a turn
/// names it, so that no program reads a turn of the thread's previous call as
/// its own call's. A slot shared by two threads only makes a turn unmatched
/// (the usual rule then), never matched wrongly: counts only grow. Pinned.
#[map]
static CALL_SEQS: Array<u64> = Array::with_max_entries(SEQ_SLOTS, 0);

const SEQ_SLOTS: u32 = 4096;

/// 1 while agents may overlap (user space: set by an agent that registers
/// beside another, cleared by one alone for seconds): turns and call counts
/// are kept only then, so an agent alone pays one array read a call. Pinned.
#[map]
static OVERLAP: Array<u32> = Array::with_max_entries(1, 0);

/// The current agent as each thread's last call that may be copied found it
/// at its start (recorded by the argument-saving programs: `SSL_read`'s and
/// `SSL_write`'s entries, rustls' sends, `sys_enter` on a plaintext socket),
/// tagged with the thread ([`began_under`]), by thread id modulo
/// `SEQ_SLOTS`: a connection moves to the heir only at a call that began
/// under it (`tokentap_agent_common::ownership`). This agent's own, not
/// pinned: its own programs write and read it. Kept while agents overlap.
#[map]
static CALL_CURRENT: Array<u64> = Array::with_max_entries(SEQ_SLOTS, 0);

#[inline(always)]
fn overlapping() -> bool {
    matches!(OVERLAP.get(0), Some(&v) if v != 0)
}

/// A call begins on this thread (its arguments are saved for the program that
/// copies it): add to the thread's count, while agents may overlap, and
/// when its bytes may be copied (`copied`: not a TLS socket's `write(2)`
/// inside an `SSL_write`, which would overwrite the record of the
/// `SSL_write`'s start), record the current agent it began under.
#[inline(always)]
pub(crate) fn call_begins(pid_tgid: u64, copied: bool) {
    if !overlapping() {
        return;
    }
    if copied {
        if let Some(p) = CALL_CURRENT.get_ptr_mut(pid_tgid as u32 % SEQ_SLOTS) {
            let cur = CURRENT_AGENT.get(0).copied().unwrap_or(0);
            // SAFETY: a live map value, one word.
            unsafe { *p = began_under(pid_tgid, cur) };
        }
    }
    if let Some(p) = CALL_SEQS.get_ptr_mut(pid_tgid as u32 % SEQ_SLOTS) {
        // SAFETY: a live map value. Atomic: a lost add could bring a shared
        // slot's count back to a value a turn names.
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, 1) };
    }
}

/// [`owns`]: whose call it is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owned {
    No,
    Yes,
    /// Ours, taken just now from an agent that left: the chunk says so.
    Taken,
}

/// Has this agent left while agents overlap (it is no longer among the agents
/// running: stopping, its probes not yet detached, or killed)? Alone, one
/// array read: only an overlap makes it matter (see `go_tls`).
#[inline(always)]
pub(crate) fn left() -> bool {
    overlapping() && !live(me())
}

/// Is `agent` (a tgid) one of the agents running now?
#[inline(always)]
pub(crate) fn live(agent: u32) -> bool {
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
/// agents' programs run on the same call, one after the other on this CPU;
/// the rule (`tokentap_agent_common::ownership`) makes each change to the
/// entry one both would make, and with `counted` (the call's arguments were
/// saved by a program that ran [`call_begins`], on this thread) the first
/// program's [`CALL_TURNS`] gives the second the view it decided from, so an
/// agent leaving or becoming current between them splits no call.
#[inline(always)]
pub(crate) fn owns(key: SslKey, direction: u32, buf: u64, counted: bool) -> Owned {
    match CURRENT_AGENT.get(0) {
        Some(&cur) if cur != 0 => owns_call(key.tgid, key.ssl, buf, cur, direction | (u32::from(counted) << 8)),
        // No handover set up: every call is this agent's.
        _ => Owned::Yes,
    }
}

/// What this program sees: the heir (the current agent while it runs, else
/// this one), the owner not looked at yet.
#[inline(always)]
fn own_view(cur: u32, me: u32) -> View {
    // The current agent is its own heir, live or not: no lookup (one a call).
    let heir = if cur == me || live(cur) { cur } else { me };
    View { heir, heir_is_current: heir == cur, owner: 0, owner_live: false }
}

/// [`owns`] with handover set up, in a frame of its own (at most five scalar
/// arguments, as a BPF call's must be: `how` is the direction, and bit 8 says
/// counted): inlined, its locals stacked on the copy path's frames past the
/// verifier's 512 bytes in all (and, measured, it ran no faster inlined).
#[inline(never)]
fn owns_call(tgid: u64, ssl: u64, buf: u64, cur: u32, how: u32) -> Owned {
    let (direction, counted) = (how & 0xff, how & 0x100 != 0);
    let key = SslKey { tgid, ssl };
    let me = me();
    let mut fresh = own_view(cur, me);
    // Turns only while agents overlap: an agent alone pays one array read.
    let turn = if counted && overlapping() { CALL_TURNS.get_ptr_mut(0) } else { None };
    let Some(t) = turn else {
        return owned(settle(key, me, fresh, direction, buf).0);
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // A keep-alive connection moves only at a call that began under the
    // current agent (`tokentap_agent_common::ownership`): one whose start
    // its probes may have missed stays, and moves at the next request.
    let began = CALL_CURRENT.get(pid_tgid as u32 % SEQ_SLOTS).copied().unwrap_or(0);
    fresh.heir_is_current &= began_under_current(began, pid_tgid, cur);
    let seq = CALL_SEQS.get(pid_tgid as u32 % SEQ_SLOTS).copied().unwrap_or(0);
    let call = Call { pid_tgid, conn: key.ssl, buf, direction, seq, now_ns: unsafe { bpf_ktime_get_ns() } };
    // The second program of a call decides from the first's view. Read, then
    // the turn checked again: a program of another thread preempting this
    // one on this CPU may have written its own meanwhile.
    // SAFETY: this CPU's value of a live per-CPU map; plain integers.
    let first = if unsafe { (*t).is_first_of(me, call) } {
        let v = unsafe { (*t).view() };
        unsafe { (*t).is_first_of(me, call) }.then_some(v)
    } else {
        None
    };
    let (verdict, seen) = settle(key, me, first.unwrap_or(fresh), direction, buf);
    // SAFETY: as above.
    unsafe {
        if first.is_some() {
            // The pair's turn is spent: no later program reads it.
            (*t).clear();
        } else {
            (*t).record(me, call, seen);
        }
    }
    if let Some(f) = first {
        if view_changed(&f, fresh.heir, f.owner != 0 && live(f.owner)) {
            count_loss(LossCounter::StraddledCalls, 1);
        }
    }
    owned(verdict)
}

/// The rule applied to the connection's entry, seen as `view` says.
#[inline(always)]
fn settle(key: SslKey, me: u32, view: View, direction: u32, buf: u64) -> (Verdict, View) {
    match CONN_OWNERS.get_ptr_mut(key) {
        // Made by the heir's own program alone: an entry for an agent that
        // does not watch the connection would outlive it (no end of its to
        // forget it at).
        None => match first_call(me, view.heir, direction) {
            Some(o) => {
                let _ = CONN_OWNERS.insert(key, o, 0);
                (Verdict::Mine, view)
            }
            None => (Verdict::Elsewhere, view),
        },
        // SAFETY: a live map value; the fields are plain integers.
        Some(o) => decide(unsafe { &mut *o }, me, view, direction, live, || starts_request(buf)),
    }
}

/// A verdict as the copy path takes it, counted.
#[inline(always)]
fn owned(verdict: Verdict) -> Owned {
    match verdict {
        Verdict::Elsewhere => {
            count_loss(LossCounter::OwnedElsewhere, 1);
            Owned::No
        }
        Verdict::Mine => Owned::Yes,
        Verdict::HandedOver => {
            count_loss(LossCounter::HandoverReceived, 1);
            Owned::Yes
        }
        Verdict::Taken => {
            count_loss(LossCounter::HandoverFromExited, 1);
            Owned::Taken
        }
    }
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
    let me = me();
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
    let me = me();
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
    let me = me();
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
