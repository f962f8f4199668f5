//! Which agent copies a call while two overlap (an upgrade): the rule both
//! agents' eBPF programs apply to a connection's [`ConnOwner`] entry
//! (agent-ebpf's `handover.rs` reads the maps and calls [`decide`]). It lives
//! here so that it is tested without a kernel (`ownership_tests.rs`), against
//! both orders in which the kernel runs two agents' programs on one hook and
//! against an agent leaving or becoming current at every moment of a call,
//! between its two programs too.
//!
//! Why a turn: both agents' programs run on every call, one after the other
//! on one CPU, and each decides from what it sees: which agent new
//! connections go to (the heir: the current agent while it runs) and whether
//! the connection's owner still runs. Seen alike, each change one makes to
//! the entry is one the other would make, so whichever runs first they agree
//! and exactly one copies. But an agent leaving, or another becoming current,
//! is not drawn from the call: when it falls between the two programs, each
//! decides from a different view, and the call is copied by neither (the
//! newer agent's program first, which found the owner there; then the
//! owner's, which found itself gone and gave the connection away) or by both
//! (the other order). The kernel runs a uprobe's newest consumer first and a
//! tracepoint's oldest first, and which agent attached to a library first
//! depends on when each found it: no rule on the order alone holds. So the
//! first program leaves a [`Turn`] on its CPU with its view (the heir, the
//! owner and whether it ran), and the second, finding it, decides from that
//! same view instead of its own: they agree, as when nothing changed.
//!
//! Which call a turn is of: nothing the two programs see tells a call from
//! the thread's next one on the same connection and buffer (a loop reading
//! into one buffer), and pairing a program with the other agent's previous
//! call, once begun (a turn only one agent left), goes on call after call and
//! turns an ordinary leave between two calls into a lost or doubled call. So
//! every call's argument-saving program (the entry of `SSL_read`,
//! `sys_enter`), whichever agent's, adds to a count of the thread's
//! (`CALL_SEQS`, by thread id modulo its size), and a turn names the count:
//! the thread's next call has added to it before any program of it can read
//! the turn. Hooks with no such program before the copy (Go's, whose call may
//! end on another thread than it began; rustls' reads; Java's) take no turn
//! and keep the rule without it, as do a call whose two programs ran on two
//! CPUs and a vectored call (its buffers take a turn each).
//!
//! Why a connection moves only at a call that began under its heir: a
//! keep-alive connection moves to the current agent at its next request,
//! decided at the write's copy (its return, where the count is known). A
//! write whose entry came before the new agent's probes attached, and whose
//! return after it became current (~0.1 ms later, then),
//! has no arguments saved by the new agent's entry, so its program copies
//! nothing; moved there, the request was copied by neither (seen once in a
//! CI run of the rolling upgrade: one call of 1,501, its response joined
//! midway). So a call's argument-saving program also records the current
//! agent as it found it, tagged with its thread ([`began_under`]), and the
//! heir counts as current for a move only when that is still the current
//! agent at the copy ([`began_under_current`]); otherwise the connection
//! stays, and moves at the next request. The record is one agent's own (its
//! own programs write and read it); when the two programs' records differ
//! (the switch between the call's two entries), the first program's copy
//! marks the connection's last call a write, so the second does not move it
//! either. An agent becomes current a moment (20 ms) after its probes
//! attach, so that practically no probe hit that missed its entry program
//! finds it current. An agent of a release before this rule moves a
//! connection at such a call as before: the first upgrade from one is
//! covered by the new agent's wait alone.
use crate::DIR_EGRESS;

/// What a call's argument-saving program records (by thread id modulo the
/// map's size): its thread id and the current agent it found.
#[inline(always)]
pub fn began_under(pid_tgid: u64, current: u32) -> u64 {
    (u64::from(pid_tgid as u32) << 32) | u64::from(current)
}

/// Did this thread's call begin under `current` (`began`: what its
/// argument-saving program recorded)? Not when the record is another
/// thread's (one sharing the slot wrote since), or there is none.
#[inline(always)]
pub fn began_under_current(began: u64, pid_tgid: u64, current: u32) -> bool {
    current != 0 && began == began_under(pid_tgid, current)
}

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
/// the same call's. The two run back to back, the first's copy between them
/// (milliseconds for a call of megabytes); the call count tells calls apart,
/// so the bound is only a backstop against a turn outliving its upgrade.
pub const TURN_SPAN_NS: u64 = 1_000_000_000;

/// One program's view of a call, left on its CPU (the pinned per-CPU
/// `CALL_TURNS` map) for the other agent's program on the same call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    /// When it was written (`bpf_ktime_get_ns`); 0: no turn.
    pub at_ns: u64,
    pub pid_tgid: u64,
    pub conn: u64,
    pub buf: u64,
    /// The thread's call count when it was written (see the module's prose).
    pub seq: u64,
    /// The agent whose program wrote it.
    pub agent: u32,
    pub direction: u32,
    /// The view it decided from: [`View`].
    pub heir: u32,
    pub heir_is_current: u32,
    pub owner: u32,
    pub owner_live: u32,
}

/// What a program decides from, besides the call and the entry: the agent
/// new connections go to, whether that is the current agent, and the
/// connection's owner as it found it with whether that owner runs (`owner`
/// 0: it did not look).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub heir: u32,
    pub heir_is_current: bool,
    pub owner: u32,
    pub owner_live: bool,
}

/// A call as the turn names it: its thread and the thread's call count, its
/// connection, direction and buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub pid_tgid: u64,
    pub conn: u64,
    pub buf: u64,
    pub direction: u32,
    /// The thread's call count (`CALL_SEQS`).
    pub seq: u64,
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
            && self.seq == c.seq
            && self.direction == c.direction
            && c.now_ns.wrapping_sub(self.at_ns) < TURN_SPAN_NS
    }

    /// Leave `me`'s turn after deciding from `v` on `c` (written in place:
    /// the kernel's stack has no room for a copy).
    #[inline(always)]
    pub fn record(&mut self, me: u32, c: Call, v: View) {
        self.at_ns = c.now_ns;
        self.pid_tgid = c.pid_tgid;
        self.conn = c.conn;
        self.buf = c.buf;
        self.seq = c.seq;
        self.agent = me;
        self.direction = c.direction;
        self.heir = v.heir;
        self.heir_is_current = u32::from(v.heir_is_current);
        self.owner = v.owner;
        self.owner_live = u32::from(v.owner_live);
    }

    /// The view the first program decided from.
    #[inline(always)]
    pub fn view(&self) -> View {
        View {
            heir: self.heir,
            heir_is_current: self.heir_is_current != 0,
            owner: self.owner,
            owner_live: self.owner_live != 0,
        }
    }

    /// The pair's second program read it: no later call may.
    #[inline(always)]
    pub fn clear(&mut self) {
        self.at_ns = 0;
    }
}

/// Did the view change between the two programs of a call (the second
/// program's own, `heir_now` and whether the first's owner runs now)? Then
/// without the turn they would have disagreed: counted, not otherwise used.
#[inline(always)]
pub fn view_changed(first: &View, heir_now: u32, owner_live_now: bool) -> bool {
    first.heir != heir_now || (first.owner != 0 && first.owner_live != owner_live_now)
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
}

impl Verdict {
    #[inline(always)]
    pub fn copies(self) -> bool {
        self != Self::Elsewhere
    }
}

/// Who the call of `direction` on a connection owned as `o` says is `me`'s
/// to copy, and its changes to `o`, seen as `view` says (`view.owner` and
/// `owner_live`, when set, answer for that agent; `live(agent)` for any
/// other: that agent has not left). `starts_request()`: the call's first
/// bytes begin an HTTP/1.1 request. Each closure is asked only when needed
/// (a lookup, a read of user memory). Returns the verdict and the view it
/// was decided from, the owner found filled in.
#[inline(always)]
pub fn decide(
    o: &mut ConnOwner,
    me: u32,
    mut view: View,
    direction: u32,
    live: impl FnOnce(u32) -> bool,
    starts_request: impl FnOnce() -> bool,
) -> (Verdict, View) {
    let owner = o.agent;
    let heir = view.heir;
    if owner != heir {
        let running = if view.owner == owner && owner != 0 { view.owner_live } else { live(owner) };
        view.owner = owner;
        view.owner_live = running;
        if !running {
            o.agent = heir;
            o.moved = TAKEN_FROM_EXITED;
        } else if view.heir_is_current && direction == DIR_EGRESS && o.last_dir != DIR_EGRESS as u16 && starts_request()
        {
            o.agent = heir;
            o.moved = HANDED_OVER;
        }
    }
    o.last_dir = direction as u16;
    if o.agent != me {
        return (Verdict::Elsewhere, view);
    }
    let moved = o.moved;
    o.moved = 0;
    let verdict = match moved {
        HANDED_OVER => Verdict::HandedOver,
        TAKEN_FROM_EXITED => Verdict::Taken,
        _ => Verdict::Mine,
    };
    (verdict, view)
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
