extern crate std;
use std::vec::Vec;

use super::*;
use crate::DIR_INGRESS;

const OLD: u32 = 100;
const NEW: u32 = 200;

/// In which order the kernel runs two agents' programs on one hook: a
/// uprobe's newest consumer first, a tracepoint's oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    NewestFirst,
    OldestFirst,
}

/// One CPU, two agents (`NEW` current), one connection: the maps as the
/// kernel holds them, and the programs as agent-ebpf's `owns()` runs them.
struct Node {
    entry: Option<ConnOwner>,
    turn: Turn,
    old_live: bool,
    now_ns: u64,
}

/// A call: its direction, whether it starts an HTTP/1.1 request, its buffer.
#[derive(Clone, Copy)]
struct C {
    direction: u32,
    request: bool,
    buf: u64,
}

const THREAD: u64 = (7 << 32) | 9;
const CONN: u64 = 0xdead_b000;

fn read() -> C {
    C { direction: DIR_INGRESS, request: false, buf: 0x1000 }
}

fn write_request() -> C {
    C { direction: DIR_EGRESS, request: true, buf: 0x2000 }
}

impl Node {
    fn new(owner: Option<u32>) -> Self {
        Self {
            entry: owner.map(|agent| ConnOwner { agent, last_dir: DIR_INGRESS as u16, moved: 0 }),
            turn: Turn::default(),
            old_live: true,
            now_ns: 1_000_000_000,
        }
    }

    fn live(&self, a: u32) -> bool {
        a == NEW || (a == OLD && self.old_live)
    }

    /// `me`'s program on call `c`, as agent-ebpf's `owns()`: did it copy?
    fn program(&mut self, me: u32, c: C) -> bool {
        self.now_ns += 2_000;
        let call = Call { pid_tgid: THREAD, conn: CONN, buf: c.buf, direction: c.direction, now_ns: self.now_ns };
        let heir = if self.live(NEW) { NEW } else { me };
        let second = self.turn.is_first_of(me, call);
        let straddle = if second { straddled(&self.turn, self.live(self.turn.owner)) } else { None };
        let old_live = self.old_live;
        let live = move |a: u32| a == NEW || (a == OLD && old_live);
        let (v, seen) = match self.entry.as_mut() {
            Some(o) => decide(o, me, heir, true, c.direction, live, || c.request, straddle),
            None => match first_call(me, heir, c.direction) {
                Some(o) => {
                    self.entry = Some(o);
                    (Verdict::Mine, Seen::default())
                }
                None => (Verdict::Elsewhere, Seen::default()),
            },
        };
        if second {
            self.turn.clear();
        } else {
            self.turn.record(me, call, seen, v);
        }
        v.copies()
    }
}

/// `calls` on a connection owned by `owner`, both agents' programs on each
/// in `order`; `OLD` leaves before program run number `leave` (0: before the
/// first call's first program, 1: between its two, ...) and its programs
/// are gone `detach` runs after that. Returns how many agents copied each call.
fn run(order: Order, owner: Option<u32>, calls: &[C], leave: usize, detach: usize) -> Vec<u32> {
    let mut node = Node::new(owner);
    let mut step = 0;
    let mut copies = Vec::new();
    for &c in calls {
        let mut copied = 0;
        let programs = match order {
            Order::NewestFirst => [NEW, OLD],
            Order::OldestFirst => [OLD, NEW],
        };
        for me in programs {
            if step == leave {
                node.old_live = false;
            }
            let attached = me != OLD || step < leave.saturating_add(detach);
            step += 1;
            if attached {
                copied += u32::from(node.program(me, c));
            }
        }
        // The client's time between two calls.
        node.now_ns += 50_000;
        copies.push(copied);
    }
    copies
}

fn reads(n: usize) -> Vec<C> {
    (0..n).map(|_| read()).collect()
}

#[test]
fn a_call_is_copied_once_whenever_its_owner_leaves_in_either_order() {
    // A busy connection (HTTP/2, a download, a stream) read on while the
    // old agent leaves: before any program of a call, between the two
    // programs of one, with its programs detached at once or later.
    for order in [Order::NewestFirst, Order::OldestFirst] {
        for leave in 0..10 {
            for detach in [1, 2, 5, 100] {
                let copies = run(order, Some(OLD), &reads(4), leave, detach);
                assert_eq!(copies, [1, 1, 1, 1], "{order:?}, leave {leave}, detach {detach}");
            }
        }
    }
}

#[test]
fn without_the_turn_a_straddled_call_is_copied_by_neither_or_by_both() {
    // What the turn mends: the same runs with each program deciding alone.
    let alone = |order: Order| {
        let mut o = ConnOwner { agent: OLD, last_dir: DIR_INGRESS as u16, moved: 0 };
        let programs = match order {
            Order::NewestFirst => [NEW, OLD],
            Order::OldestFirst => [OLD, NEW],
        };
        let mut copied = 0;
        for (i, me) in programs.into_iter().enumerate() {
            let live = |a: u32| a == NEW || i == 0;
            copied += u32::from(decide(&mut o, me, NEW, true, DIR_INGRESS, live, || false, None).0.copies());
        }
        copied
    };
    assert_eq!(alone(Order::NewestFirst), 0);
    assert_eq!(alone(Order::OldestFirst), 2);
    // With it, the middle of the first call (run 1) is where they straddle.
    assert_eq!(run(Order::NewestFirst, Some(OLD), &reads(1), 1, 100), [1]);
    assert_eq!(run(Order::OldestFirst, Some(OLD), &reads(1), 1, 100), [1]);
}

#[test]
fn the_old_agent_copies_a_straddled_call_only_when_the_new_one_left_it() {
    // Newest first, the leave between: the new agent's program found the
    // owner live and left the call; the old one's copies it although the
    // connection is the new agent's from then on, and the new one takes it
    // at the next call (its chunk says so: taken from an agent that left).
    let mut node = Node::new(Some(OLD));
    assert!(!node.program(NEW, read()));
    node.old_live = false;
    assert!(node.program(OLD, read()));
    assert_eq!(node.entry.map(|o| (o.agent, o.moved)), Some((NEW, TAKEN_FROM_EXITED)));
    node.now_ns += 50_000;
    assert_eq!(node.turn.at_ns, 0, "the second program clears the turn");
    let call = Call { pid_tgid: THREAD, conn: CONN, buf: 0x1000, direction: DIR_INGRESS, now_ns: node.now_ns };
    let live = |a: u32| a == NEW;
    let mut o = node.entry.unwrap();
    assert_eq!(decide(&mut o, NEW, NEW, true, DIR_INGRESS, live, || false, None).0, Verdict::Taken);
    assert!(!node.turn.is_first_of(OLD, call));

    // Oldest first: the old agent copied, the new one leaves the call and
    // keeps the move to be told with its next one.
    let mut node = Node::new(Some(OLD));
    assert!(node.program(OLD, read()));
    node.old_live = false;
    assert!(!node.program(NEW, read()));
    assert_eq!(node.entry.map(|o| (o.agent, o.moved)), Some((NEW, TAKEN_FROM_EXITED)));
    node.now_ns += 50_000;
    assert!(node.program(NEW, read()));
    assert_eq!(node.entry.map(|o| o.moved), Some(0));
}

#[test]
fn a_keep_alive_connection_moves_at_a_new_request_once_wherever_the_leave_falls() {
    // Response read, new request written, its response read.
    let calls = [read(), write_request(), read(), read()];
    for order in [Order::NewestFirst, Order::OldestFirst] {
        assert_eq!(run(order, Some(OLD), &calls, usize::MAX / 2, 1), [1, 1, 1, 1], "{order:?}, no leave");
        for leave in 0..10 {
            for detach in [1, 2, 100] {
                let copies = run(order, Some(OLD), &calls, leave, detach);
                assert_eq!(copies, [1, 1, 1, 1], "{order:?}, leave {leave}, detach {detach}");
            }
        }
    }
}

#[test]
fn a_connection_first_seen_while_the_old_agent_leaves_is_the_new_one_s() {
    for order in [Order::NewestFirst, Order::OldestFirst] {
        for leave in 0..8 {
            let copies = run(order, None, &[write_request(), read(), read()], leave, 100);
            assert_eq!(copies, [1, 1, 1], "{order:?}, leave {leave}");
        }
    }
}

#[test]
fn a_turn_is_read_only_by_the_other_agent_on_the_same_call_and_soon() {
    let call = Call { pid_tgid: THREAD, conn: CONN, buf: 0x1000, direction: DIR_INGRESS, now_ns: 5_000_000 };
    let after = |me: u32, seen: Seen, v: Verdict| {
        let mut t = Turn::default();
        t.record(me, call, seen, v);
        t
    };
    let t = after(OLD, Seen { owner: OLD, live: true }, Verdict::Mine);
    assert!(t.is_first_of(NEW, call));
    assert!(!t.is_first_of(OLD, call), "its own program's turn");
    for other in [
        Call { pid_tgid: THREAD + 1, ..call },
        Call { conn: CONN + 8, ..call },
        Call { buf: 0x1010, ..call },
        Call { direction: DIR_EGRESS, ..call },
        Call { now_ns: call.now_ns + TURN_SPAN_NS, ..call },
    ] {
        assert!(!t.is_first_of(NEW, other), "{other:?}");
    }
    // A change of liveness decides; none leaves the usual rule.
    assert_eq!(straddled(&t, false), Some(false));
    assert_eq!(straddled(&t, true), None);
    let left_to_owner = after(NEW, Seen { owner: OLD, live: true }, Verdict::Elsewhere);
    assert_eq!(straddled(&left_to_owner, false), Some(true));
    let no_owner = after(NEW, Seen::default(), Verdict::Mine);
    assert_eq!(straddled(&no_owner, false), None);
}

#[test]
fn a_turn_left_by_a_call_only_one_agent_saw_is_not_read_as_a_later_call_s() {
    // The old agent alone copies a call (the new one does not watch that
    // socket), leaves, and the same thread reads again on the connection
    // with the same buffer: once the span has passed, the new agent's
    // program decides as usual and takes the call.
    let mut node = Node::new(Some(OLD));
    assert!(node.program(OLD, read()));
    node.old_live = false;
    node.now_ns += TURN_SPAN_NS;
    assert!(node.program(NEW, read()));
    // A pair of programs clears the turn it shared: the next call's first
    // program, the other agent's, does not read it as its own call's.
    let mut node = Node::new(Some(OLD));
    assert!(!node.program(NEW, read()));
    assert!(node.program(OLD, read()));
    node.old_live = false;
    assert!(node.program(NEW, read()), "the next call, taken by the new agent");
    assert!(!node.program(OLD, read()));
}
