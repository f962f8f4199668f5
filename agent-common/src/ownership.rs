//! Which agent copies a call while two overlap (an upgrade): the rule both
//! agents' eBPF programs apply to a connection's [`ConnOwner`] entry
//! (agent-ebpf's `handover.rs` reads the maps and calls [`decide`]). It lives
//! here so that it is tested without a kernel, against both orders in which
//! the kernel runs two agents' programs on one hook and against an agent
//! leaving at every moment of a call, between its two programs too.
//!
//! Why a turn: both agents' programs run on every call, one after the other
//! on one CPU. A change drawn from the call itself (its direction, its first
//! bytes) is one both would make, so whichever runs first they agree. An
//! agent's leaving is not in the call: when it falls between the two
//! programs, each decides from what it saw, and the call is copied by neither
//! (the newer agent's program first, which found the owner there; then the
//! owner's, which found itself gone and gave the connection away) or by both
//! (the other order). The kernel runs a uprobe's newest consumer first and a
//! tracepoint's oldest first, and which agent attached to a library first
//! depends on when each found it: no rule on the order alone holds. So the
//! first program leaves a [`Turn`] on its CPU (what it saw and did) and the
//! second, finding it, asks only whether the owner's liveness changed since:
//! if it did, it copies exactly when the first did not ([`straddled`]).
use crate::DIR_EGRESS;

/// Who copies a connection when agents overlap (a rolling upgrade), in the
/// pinned `CONN_OWNERS` map: the owning agent's tgid, the direction of the
/// connection's last copied call, and how it last changed hands
/// ([`HANDED_OVER`], [`TAKEN_FROM_EXITED`]; the owner's program counts it and
/// clears it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnOwner {
    pub agent: u32,
    pub last_dir: u16,
    pub moved: u16,
}

/// [`ConnOwner::moved`]: handed over at an exchange boundary.
pub const HANDED_OVER: u16 = 1;
/// [`ConnOwner::moved`]: taken from an agent that exited owning it.
pub const TAKEN_FROM_EXITED: u16 = 2;

/// How long after the first program's turn the second may still read it as
/// the same call's. The two run back to back (the first's copy between them,
/// microseconds); the bound keeps a turn left by a call only one agent saw
/// from being read as the next call's.
pub const TURN_SPAN_NS: u64 = 1_000_000;

/// One program's decision on a call, left on its CPU (the pinned per-CPU
/// `CALL_TURNS` map) for the other agent's program on the same call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    /// When it was written (`bpf_ktime_get_ns`); 0: no turn.
    pub at_ns: u64,
    pub pid_tgid: u64,
    pub conn: u64,
    pub buf: u64,
    /// The agent whose program wrote it.
    pub agent: u32,
    /// The connection's owner that program saw (0: none).
    pub owner: u32,
    pub direction: u32,
    /// Whether that owner was live then.
    pub owner_live: u32,
    /// Whether that program copied the call.
    pub copied: u32,
    pub _pad: u32,
}

/// A call as the turn names it: its thread, connection, direction and buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub pid_tgid: u64,
    pub conn: u64,
    pub buf: u64,
    pub direction: u32,
    pub now_ns: u64,
}

impl Turn {
    /// Is this another agent's turn on the same call, `me`'s program the second?
    #[inline(always)]
    pub fn is_first_of(&self, me: u32, c: Call) -> bool {
        self.at_ns != 0
            && self.agent != me
            && self.pid_tgid == c.pid_tgid
            && self.conn == c.conn
            && self.buf == c.buf
            && self.direction == c.direction
            && c.now_ns.wrapping_sub(self.at_ns) < TURN_SPAN_NS
    }

    /// Leave `me`'s turn after deciding `v` on `c` (written in place: the
    /// kernel's stack has no room for a copy).
    #[inline(always)]
    pub fn record(&mut self, me: u32, c: Call, seen: Seen, v: Verdict) {
        self.at_ns = c.now_ns;
        self.pid_tgid = c.pid_tgid;
        self.conn = c.conn;
        self.buf = c.buf;
        self.agent = me;
        self.owner = seen.owner;
        self.direction = c.direction;
        self.owner_live = u32::from(seen.live);
        self.copied = u32::from(v.copies());
    }

    /// The pair's second program read it: no later call may.
    #[inline(always)]
    pub fn clear(&mut self) {
        self.at_ns = 0;
    }
}

/// The second program of a call, given the first's turn and whether that
/// turn's owner is live now: `Some(copy)` when the owner's liveness changed
/// between the two programs (copy exactly when the first did not), `None`
/// when it did not (decide as usual: both then agree).
#[inline(always)]
pub fn straddled(first: &Turn, live_now: bool) -> Option<bool> {
    (first.owner != 0 && (first.owner_live != 0) != live_now).then_some(first.copied == 0)
}

/// What [`decide`] says of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Another agent copies it.
    Elsewhere,
    /// This agent copies it.
    Mine,
    /// This agent copies it: the connection came to it just now, at a new
    /// request, from the agent before, which read the whole exchange before.
    HandedOver,
    /// This agent copies it: the connection came to it just now from an
    /// agent that left, wherever the connection stood.
    Taken,
    /// This agent copies it although the connection is now another's: its
    /// owner left between the two programs of this call, and the other
    /// agent's program, which ran first, did not copy it.
    Straddled,
}

impl Verdict {
    #[inline(always)]
    pub fn copies(self) -> bool {
        self != Self::Elsewhere
    }
}

/// The owner a program saw on a connection, and whether it was live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub owner: u32,
    pub live: bool,
}

/// Who the call of `direction` on a connection owned as `o` says is `me`'s
/// to copy, and its changes to `o`. `heir`: the agent new connections go to
/// (the current agent if it runs, else `me`); `heir_is_current`: it is the
/// current agent. `live(agent)`: that agent has not left.
/// `starts_request()`: the call's first bytes begin an HTTP/1.1 request.
/// `straddle`: [`straddled`]'s answer when this is the second program of
/// the call. Each closure is asked only when needed (a lookup, a read of
/// user memory).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn decide(
    o: &mut ConnOwner,
    me: u32,
    heir: u32,
    heir_is_current: bool,
    direction: u32,
    live: impl FnOnce(u32) -> bool,
    starts_request: impl FnOnce() -> bool,
    straddle: Option<bool>,
) -> (Verdict, Seen) {
    let owner = o.agent;
    let mut seen = Seen { owner, live: true };
    if owner != heir {
        seen.live = live(owner);
        if !seen.live {
            o.agent = heir;
            o.moved = TAKEN_FROM_EXITED;
        } else if heir_is_current && direction == DIR_EGRESS && o.last_dir != DIR_EGRESS as u16 && starts_request() {
            o.agent = heir;
            o.moved = HANDED_OVER;
        }
    }
    o.last_dir = direction as u16;
    let verdict = if o.agent != me {
        Verdict::Elsewhere
    } else {
        match o.moved {
            HANDED_OVER => Verdict::HandedOver,
            TAKEN_FROM_EXITED => Verdict::Taken,
            _ => Verdict::Mine,
        }
    };
    match straddle {
        // The first program copied it: the move stays to be told at the next call.
        Some(false) => (Verdict::Elsewhere, seen),
        Some(true) if verdict == Verdict::Elsewhere => (Verdict::Straddled, seen),
        _ => {
            if verdict != Verdict::Elsewhere {
                o.moved = 0;
            }
            (verdict, seen)
        }
    }
}

/// The same for a connection with no entry: the heir's program makes one and
/// copies; any other leaves it.
#[inline(always)]
pub fn first_call(me: u32, heir: u32, direction: u32) -> Option<ConnOwner> {
    (heir == me).then_some(ConnOwner { agent: heir, last_dir: direction as u16, moved: 0 })
}

#[cfg(test)]
#[path = "ownership_tests.rs"]
mod tests;
