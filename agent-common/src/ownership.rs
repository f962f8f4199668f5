//! Which agent copies a call while two overlap (an upgrade): the rule both
//! agents' eBPF programs apply to a connection's [`ConnOwner`] entry
//! (agent-ebpf's `handover.rs` reads the maps and calls [`decide`]). It
//! lives here so that it is tested without a kernel, against either order
//! of two agents' programs on a hook and an agent leaving at every moment of
//! a call, between its two programs too.
//!
//! Why the first program of a call decides for both: an agent's leaving is
//! not in the call, and it may fall between the two programs of one. Each
//! deciding for itself, one would see the owner there and leave the call to
//! it, the other see it gone and hand the connection on: copied by neither
//! (or, the other way round, by both). Nor is the order of the programs
//! fixed: the kernel runs a uprobe's newest consumer first and a
//! tracepoint's oldest first, and which agent attached to a file first
//! depends on when each found it. So while an older agent owns the
//! connection, the first program of a call writes its decision ([`Turn`],
//! by thread, connection and buffer, in a map the agents share) and the
//! second, finding another agent's turn for the same call, follows it.
//!
//! Left open: a call of one thread whose programs straddle the leave, the
//! older agent's first, while another thread's call (or another part of the
//! same call: rustls' chunks, iovecs) hands the connection to the heir in
//! between, is copied by both, as before turns; and a turn left by a call
//! only one agent had a program on (a hook the other did not attach) may
//! be followed by the next alike call (same thread, buffer and length).
use crate::{ConnOwner, DIR_EGRESS, HANDED_OVER, TAKEN_FROM_EXITED};

/// A thread's call on a connection: the key of its [`Turn`]. With the
/// call's buffer: a hook that copies one call as several (rustls' chunks, a
/// socket call's iovecs) asks once for each.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallKey {
    pub tgid: u32,
    pub tid: u32,
    pub conn: u64,
    pub buf: u64,
}

/// What the first agent's program decided of a call (see the module's prose).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Turn {
    /// The agent whose program decided.
    pub agent: u32,
    /// The agent that copies the call.
    pub copier: u32,
    /// The heir as that program saw it: a turn of an earlier upgrade's
    /// agents is not followed.
    pub heir: u32,
    pub direction: u32,
    /// The call's length: a turn left by a call the other agent had no
    /// program on is not taken for the next one (unless alike).
    pub len: u64,
}

impl Turn {
    /// Did another agent's program decide this call (as `a` sees it)?
    #[inline(always)]
    pub fn for_call(&self, a: Agents, call: Call) -> bool {
        self.agent != a.me && self.heir == a.heir && self.direction == call.direction && self.len == call.len
    }
}

/// Where [`decide`] keeps and finds turns (by thread, connection and buffer).
pub trait Turns {
    /// Remove this call's turn; the agent it names to copy the call when
    /// it is another agent's decision of this call ([`Turn::for_call`]).
    fn take(&mut self, a: Agents, call: Call) -> Option<u32>;
    fn put(&mut self, turn: Turn);
}

/// The agents as a program sees them: itself, and the heir (the agent new
/// connections go to: the current agent if it runs, else itself).
#[derive(Clone, Copy, Debug)]
pub struct Agents {
    pub me: u32,
    pub heir: u32,
    /// The heir is the current agent (not this one standing in for it).
    pub heir_is_current: bool,
}

/// The call: its direction, buffer and length.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub direction: u32,
    pub buf: u64,
    pub len: u64,
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

/// Who copies `call` on a connection owned as `o`, as agent `a.me`'s
/// program decides it, and its changes to `o`. `live(agent)`: that agent
/// has not left; `starts_request()`: the call's first bytes begin an
/// HTTP/1.1 request (both asked only when needed: a lookup, a read of user
/// memory). Outside an upgrade (the connection and this agent are the
/// heir's) nothing is looked up.
#[inline(always)]
pub fn decide(
    o: &mut ConnOwner,
    a: Agents,
    call: Call,
    live: impl FnOnce(u32) -> bool,
    starts_request: impl FnOnce() -> bool,
    turns: &mut impl Turns,
) -> Verdict {
    if a.me == a.heir && o.agent == a.heir {
        return decide_alone(o, a, call.direction, live, starts_request);
    }
    if let Some(copier) = turns.take(a, call) {
        return follow(o, a.me, copier);
    }
    let v = decide_alone(o, a, call.direction, live, starts_request);
    // Once the heir owns the connection, the second program needs no turn:
    // it finds the connection the heir's, and the call with the agent the
    // first gave it to.
    if o.agent != a.heir {
        let copier = if v == Verdict::Elsewhere { o.agent } else { a.me };
        turns.put(Turn { agent: a.me, copier, heir: a.heir, direction: call.direction, len: call.len });
    }
    v
}

/// A call on a connection with no [`ConnOwner`] entry: a new connection
/// (`Err`: the entry to make, the heir's), or one whose end the first
/// program of this same call removed (a socket's close: its turn says who
/// tells of it). One lookup a connection.
#[inline(always)]
pub fn first_sight(a: Agents, call: Call, turns: &mut impl Turns) -> Result<Verdict, ConnOwner> {
    if let Some(copier) = turns.take(a, call) {
        return Ok(if copier == a.me { Verdict::Mine } else { Verdict::Elsewhere });
    }
    Err(ConnOwner { agent: a.heir, last_dir: call.direction as u16, moved: 0 })
}

/// The second program of a call: `copier` copies it, as the first decided.
#[inline(always)]
fn follow(o: &mut ConnOwner, me: u32, copier: u32) -> Verdict {
    if copier != me {
        return Verdict::Elsewhere;
    }
    // Another thread may have moved the connection since; this call stays
    // with the agent the first program gave it to.
    if o.agent != me {
        return Verdict::Mine;
    }
    taken(o)
}

/// This agent copies the call: how the connection came to it, said once.
#[inline(always)]
fn taken(o: &mut ConnOwner) -> Verdict {
    let moved = o.moved;
    o.moved = 0;
    match moved {
        HANDED_OVER => Verdict::HandedOver,
        TAKEN_FROM_EXITED => Verdict::Taken,
        _ => Verdict::Mine,
    }
}

/// The rule for one program on its own: a connection whose owner left goes
/// to the heir; one owned by a live older agent moves to the heir when the
/// client writes a new HTTP/1.1 request after reading (the one point where
/// no parser state is needed). Both drawn from what this program sees.
#[inline(always)]
fn decide_alone(
    o: &mut ConnOwner,
    a: Agents,
    direction: u32,
    live: impl FnOnce(u32) -> bool,
    starts_request: impl FnOnce() -> bool,
) -> Verdict {
    let owner = o.agent;
    if owner != a.heir {
        if !live(owner) {
            o.agent = a.heir;
            o.moved = TAKEN_FROM_EXITED;
        } else if a.heir_is_current && direction == DIR_EGRESS && o.last_dir != DIR_EGRESS as u16 && starts_request() {
            o.agent = a.heir;
            o.moved = HANDED_OVER;
        }
    }
    o.last_dir = direction as u16;
    if o.agent != a.me {
        return Verdict::Elsewhere;
    }
    taken(o)
}

#[cfg(test)]
#[path = "ownership_tests.rs"]
mod tests;
