//! Which agent copies a call while two overlap (an upgrade): the rule both
//! agents' eBPF programs apply to a connection's [`ConnOwner`] entry
//! (agent-ebpf's `handover.rs` reads the maps and calls [`decide`]). It
//! lives here so that it is tested, without a kernel, against both orders in
//! which the kernel runs two agents' programs on one hook and against an
//! agent leaving at every moment of a call, between its two programs too.
use crate::{ConnOwner, DIR_EGRESS, HANDED_OVER, TAKEN_FROM_EXITED};

/// In which order two agents' programs run on one hook: the kernel puts each
/// new consumer of a uprobe at the head of the uprobe's list (the program
/// attached last runs first), and a tracepoint's programs in the order they
/// were attached (the first attached runs first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Uprobes: the TLS libraries, Go, rustls, the Java agent's hook.
    NewestFirst,
    /// Tracepoints: the socket syscalls.
    OldestFirst,
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

/// Who the call of `direction` on a connection owned as `o` says is
/// `me`'s to copy, and its changes to `o`. `heir`: the agent new
/// connections go to (the current agent if it runs, else `me`);
/// `heir_is_current`: it is the current agent. `live(agent)`: that agent
/// has not left. `starts_request()`: the call's first bytes begin an
/// HTTP/1.1 request. Both are asked only when needed (each a lookup or a
/// read of user memory).
///
/// Both agents' programs run on every call, one after the other. A change
/// made from the call itself (its direction, its first bytes) is one both
/// would make, so whichever runs first, they agree. An agent's leaving is
/// not in the call: it may happen between the two programs of one call.
/// Where the newer agent's program runs first ([`Order::NewestFirst`]) and
/// found the owner still there, it left the call to the owner, so the
/// owner's program copies it even if its agent has left since, and leaves
/// the connection to be taken at its next call; were it to give the
/// connection away itself, neither would copy the call. Where the owner's
/// program runs first, it gives the connection away once its agent has
/// left, and the newer agent's program copies the call; a call whose two
/// programs straddle the leaving is then copied by both (never by neither).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn decide(
    o: &mut ConnOwner,
    me: u32,
    heir: u32,
    heir_is_current: bool,
    direction: u32,
    order: Order,
    live: impl FnOnce(u32) -> bool,
    starts_request: impl FnOnce() -> bool,
) -> Verdict {
    let owner = o.agent;
    if owner != heir {
        let gone = !live(owner);
        if gone && (owner != me || order == Order::OldestFirst) {
            o.agent = heir;
            o.moved = TAKEN_FROM_EXITED;
        } else if heir_is_current && direction == DIR_EGRESS && o.last_dir != DIR_EGRESS as u16 && starts_request() {
            o.agent = heir;
            o.moved = HANDED_OVER;
        }
    }
    o.last_dir = direction as u16;
    if o.agent != me {
        return Verdict::Elsewhere;
    }
    let moved = o.moved;
    o.moved = 0;
    match moved {
        HANDED_OVER => Verdict::HandedOver,
        TAKEN_FROM_EXITED => Verdict::Taken,
        _ => Verdict::Mine,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::DIR_INGRESS;

    const OLD: u32 = 100;
    const NEW: u32 = 200;

    /// Two agents on one hook, `OLD` owning a connection, `NEW` current.
    /// `OLD` leaves at `leave` (in program runs: 0 before the first call's
    /// first program, 1 between its two, ...) and its programs are gone
    /// `detach` runs later. Each call's direction and whether it starts a
    /// request are given; returns how many agents copied each call.
    fn run(order: Order, calls: &[(u32, bool)], leave: usize, detach: usize) -> Vec<u32> {
        let mut o = ConnOwner { agent: OLD, last_dir: DIR_INGRESS as u16, moved: 0 };
        let mut step = 0;
        let mut copies = Vec::new();
        for &(direction, request) in calls {
            let mut copied = 0;
            let programs = match order {
                Order::NewestFirst => [NEW, OLD],
                Order::OldestFirst => [OLD, NEW],
            };
            for me in programs {
                let left = step >= leave;
                let attached = me != OLD || step < leave + detach;
                step += 1;
                if !attached {
                    continue;
                }
                // Each agent's view: the current one (NEW) runs; OLD until it left.
                let live = |a: u32| a == NEW || (a == OLD && !left);
                let heir = NEW;
                let v = decide(&mut o, me, heir, true, direction, order, live, || request);
                copied += u32::from(v != Verdict::Elsewhere);
            }
            copies.push(copied);
        }
        copies
    }

    fn reads(n: usize) -> Vec<(u32, bool)> {
        (0..n).map(|_| (DIR_INGRESS, false)).collect()
    }

    #[test]
    fn on_uprobes_a_call_is_copied_once_whenever_its_owner_leaves() {
        // A busy connection (HTTP/2, a download) read on while the old
        // agent leaves, before any program of a call, between the two
        // programs of one, and with its programs detached at once or later.
        for leave in 0..8 {
            for detach in [1, 2, 5, 100] {
                let copies = run(Order::NewestFirst, &reads(4), leave, detach);
                assert!(copies.iter().all(|&c| c == 1), "leave {leave}, detach {detach}: {copies:?}");
            }
        }
    }

    #[test]
    fn on_tracepoints_a_call_straddling_the_leave_is_copied_twice_never_lost() {
        for leave in 0..8 {
            for detach in [1, 2, 5, 100] {
                let copies = run(Order::OldestFirst, &reads(4), leave, detach);
                assert!(copies.iter().all(|&c| c >= 1), "leave {leave}, detach {detach}: {copies:?}");
                // Only the call whose two programs straddle the leave (the
                // old agent's first, found live; then the new one's, which
                // takes the connection) is copied twice.
                let straddled = (leave % 2 == 1 && leave < 8).then_some(leave / 2);
                for (i, &c) in copies.iter().enumerate() {
                    assert_eq!(c, if Some(i) == straddled { 2 } else { 1 }, "leave {leave}: {copies:?}");
                }
            }
        }
    }

    #[test]
    fn a_keep_alive_connection_moves_at_a_new_request_in_either_order() {
        // Response read, new request written, its response read: the
        // request moves the connection while the old agent is still there.
        let calls = [(DIR_INGRESS, false), (DIR_EGRESS, true), (DIR_INGRESS, false), (DIR_INGRESS, false)];
        for order in [Order::NewestFirst, Order::OldestFirst] {
            let copies = run(order, &calls, usize::MAX / 2, 1);
            assert_eq!(copies, [1, 1, 1, 1], "{order:?}");
            for leave in 0..8 {
                let copies = run(order, &calls, leave, 100);
                assert!(copies.iter().all(|&c| c >= 1), "{order:?}, leave {leave}: {copies:?}");
            }
        }
    }

    #[test]
    fn the_verdict_says_how_the_connection_came() {
        let mut o = ConnOwner { agent: OLD, last_dir: DIR_INGRESS as u16, moved: 0 };
        let gone = |a: u32| a == NEW;
        // The new agent's program takes it from the one that left...
        assert_eq!(decide(&mut o, NEW, NEW, true, DIR_INGRESS, Order::NewestFirst, gone, || false), Verdict::Taken);
        // ...says so once...
        assert_eq!(decide(&mut o, NEW, NEW, true, DIR_INGRESS, Order::NewestFirst, gone, || false), Verdict::Mine);
        // ...and the old agent's program, after it, copies nothing.
        assert_eq!(decide(&mut o, OLD, NEW, true, DIR_INGRESS, Order::NewestFirst, gone, || false), Verdict::Elsewhere);

        let mut o = ConnOwner { agent: OLD, last_dir: DIR_INGRESS as u16, moved: 0 };
        let both = |_: u32| true;
        assert_eq!(decide(&mut o, OLD, NEW, true, DIR_EGRESS, Order::OldestFirst, both, || true), Verdict::Elsewhere);
        assert_eq!(decide(&mut o, NEW, NEW, true, DIR_EGRESS, Order::OldestFirst, both, || true), Verdict::HandedOver);
        // A write that does not start a request (a body's rest, a frame) moves nothing.
        let mut o = ConnOwner { agent: OLD, last_dir: DIR_INGRESS as u16, moved: 0 };
        assert_eq!(decide(&mut o, NEW, NEW, true, DIR_EGRESS, Order::NewestFirst, both, || false), Verdict::Elsewhere);
    }
}
