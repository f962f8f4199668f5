//! [`decide`] against two agents' programs run in either order, an agent
//! leaving at every point of a call, threads interleaved, and turns left
//! over by calls one agent had no program on.
extern crate std;
use std::collections::HashMap;
use std::vec::Vec;

use super::*;
use crate::DIR_INGRESS;

const OLD: u32 = 100;
const NEW: u32 = 200;

/// One step of a run: an agent's program on a thread's call, or the old
/// agent leaving (out of `AGENTS`), or its programs going (detached).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    Program { me: u32, tid: u32, call: usize },
    Leave,
    Detach,
}

/// The shared turns map, as the kernel's (by thread and buffer; one connection).
struct ThreadTurns<'a> {
    map: &'a mut HashMap<(u32, u64), Turn>,
    tid: u32,
    buf: u64,
    /// Off: each program decides alone (the rule before turns).
    on: bool,
}

impl Turns for ThreadTurns<'_> {
    fn take(&mut self, a: Agents, call: Call) -> Option<u32> {
        let t = self.map.remove(&(self.tid, call.buf)).filter(|_| self.on)?;
        t.for_call(a, call).then_some(t.copier)
    }
    fn put(&mut self, turn: Turn) {
        if self.on {
            self.map.insert((self.tid, self.buf), turn);
        }
    }
}

/// Run `steps` over calls described by `calls` (direction, buffer, starts a
/// request) on a connection `OLD` owns while `NEW` is current: how many
/// agents copied each call.
fn run(steps: &[Step], calls: &[(u32, u64, bool)], turns_on: bool) -> Vec<u32> {
    let mut o = ConnOwner { agent: OLD, last_dir: DIR_INGRESS as u16, moved: 0 };
    let mut turns = HashMap::new();
    let (mut left, mut detached) = (false, false);
    let mut copies = std::vec![0; calls.len()];
    for &s in steps {
        match s {
            Step::Leave => left = true,
            Step::Detach => detached = true,
            Step::Program { me, .. } if me == OLD && detached => {}
            Step::Program { me, tid, call } => {
                let (direction, buf, request) = calls[call];
                let live = |x: u32| x == NEW || (x == OLD && !left);
                let a = Agents { me, heir: NEW, heir_is_current: true };
                let c = Call { direction, buf, len: 100 };
                let mut t = ThreadTurns { map: &mut turns, tid, buf, on: turns_on };
                if decide(&mut o, a, c, live, || request, &mut t) != Verdict::Elsewhere {
                    copies[call] += 1;
                }
            }
        }
    }
    copies
}

/// Each call's two programs in `order`, one thread; the old agent leaves
/// before step `leave` and its programs go `detach` steps later.
fn sequential(order: [u32; 2], calls: usize, leave: usize, detach: usize) -> Vec<Step> {
    let mut steps: Vec<Step> = (0..calls).flat_map(|call| order.map(|me| Step::Program { me, tid: 1, call })).collect();
    steps.insert(leave.min(steps.len()), Step::Leave);
    steps.insert((leave + 1 + detach).min(steps.len()), Step::Detach);
    steps
}

/// Reads alike (one buffer, one length): the hardest case for telling calls apart.
fn reads(n: usize) -> Vec<(u32, u64, bool)> {
    (0..n).map(|_| (DIR_INGRESS, 0x1000, false)).collect()
}

#[test]
fn a_call_is_copied_once_in_either_order_whenever_its_owner_leaves() {
    // The old agent detaches 20 ms or more after it leaves (`SETTLE` in the
    // agent's handover.rs): never between the programs of a call its leave
    // fell in, though between those of a later call.
    for order in [[NEW, OLD], [OLD, NEW]] {
        for leave in 0..=8 {
            for detach in [1, 2, 3, 5, 100] {
                let copies = run(&sequential(order, 4, leave, detach), &reads(4), true);
                assert!(copies.iter().all(|&c| c == 1), "{order:?}, leave {leave}, detach {detach}: {copies:?}");
            }
        }
    }
}

#[test]
fn each_program_deciding_alone_loses_or_doubles_the_call_its_programs_straddle() {
    // The rule without turns: new agent's program first, the leave after
    // it, the old agent's program gives the connection away: copied by neither.
    let copies = run(&sequential([NEW, OLD], 4, 3, 100), &reads(4), false);
    assert_eq!(copies, [1, 0, 1, 1]);
    // The other order: the old agent's copies it, the new one's takes it too.
    let copies = run(&sequential([OLD, NEW], 4, 3, 100), &reads(4), false);
    assert_eq!(copies, [1, 2, 1, 1]);
}

#[test]
fn a_keep_alive_connection_moves_at_a_new_request_and_each_call_is_copied_once() {
    let calls = [(DIR_INGRESS, 1, false), (DIR_EGRESS, 2, true), (DIR_INGRESS, 3, false), (DIR_INGRESS, 4, false)];
    for order in [[NEW, OLD], [OLD, NEW]] {
        for leave in 0..=8 {
            let copies = run(&sequential(order, 4, leave, 100), &calls, true);
            assert!(copies.iter().all(|&c| c == 1), "{order:?}, leave {leave}: {copies:?}");
        }
    }
}

#[test]
fn two_threads_on_one_connection_each_call_copied_once_when_the_leave_falls_between() {
    // Thread 1's call begins (the new agent's program), thread 2's call
    // runs whole, then thread 1's ends (the old agent's): the leave anywhere.
    let base = [
        Step::Program { me: NEW, tid: 1, call: 0 },
        Step::Program { me: NEW, tid: 2, call: 1 },
        Step::Program { me: OLD, tid: 2, call: 1 },
        Step::Program { me: OLD, tid: 1, call: 0 },
    ];
    for leave in 0..=base.len() {
        let mut steps = base.to_vec();
        steps.insert(leave, Step::Leave);
        let copies = run(&steps, &reads(2), true);
        assert_eq!(copies, [1, 1], "leave {leave}");
    }
}

#[test]
fn a_turn_left_by_a_call_the_other_agent_had_no_program_on_is_not_followed() {
    // The old agent has no program on call 0 (a hook it did not attach);
    // call 1, another buffer, runs the old agent's program first.
    let calls = [(DIR_INGRESS, 0x1000, false), (DIR_INGRESS, 0x2000, false)];
    for leave in 0..=3 {
        let mut steps = std::vec![
            Step::Program { me: NEW, tid: 1, call: 0 },
            Step::Program { me: OLD, tid: 1, call: 1 },
            Step::Program { me: NEW, tid: 1, call: 1 },
        ];
        steps.insert(leave, Step::Leave);
        let copies = run(&steps, &calls, true);
        // Call 0 is the old agent's while it is there (nobody's once it left
        // with no program to copy it: the new agent takes the connection at
        // its next call); call 1 once.
        assert_eq!(copies[1], 1, "leave {leave}: {copies:?}");
        assert_eq!(copies[0], u32::from(leave == 0), "leave {leave}: {copies:?}");
    }
}

#[test]
fn a_turn_of_an_earlier_upgrade_is_not_followed_and_outside_one_nothing_is_looked_up() {
    struct Counting(u32, Option<Turn>);
    impl Turns for Counting {
        fn take(&mut self, a: Agents, call: Call) -> Option<u32> {
            self.0 += 1;
            self.1.take().filter(|t| t.for_call(a, call)).map(|t| t.copier)
        }
        fn put(&mut self, _: Turn) {
            self.0 += 1;
        }
    }
    let c = Call { direction: DIR_INGRESS, buf: 1, len: 1 };
    let me = Agents { me: NEW, heir: NEW, heir_is_current: true };
    // The connection and this agent are the heir's: no turn taken or put.
    let mut o = ConnOwner { agent: NEW, last_dir: DIR_INGRESS as u16, moved: 0 };
    let mut t = Counting(0, None);
    assert_eq!(decide(&mut o, me, c, |_| panic!("no lookup"), || false, &mut t), Verdict::Mine);
    assert_eq!(t.0, 0);
    // An older agent's connection: a turn naming another heir is ignored.
    let stale = Turn { agent: OLD, copier: OLD, heir: 42, direction: c.direction, len: c.len };
    let mut o = ConnOwner { agent: OLD, last_dir: DIR_INGRESS as u16, moved: 0 };
    let mut t = Counting(0, Some(stale));
    assert_eq!(decide(&mut o, me, c, |_| false, || false, &mut t), Verdict::Taken, "the owner left: taken");
    assert_eq!(t.0, 1, "taken; no turn put once the connection is the heir's");
}

#[test]
fn a_socket_s_end_is_told_by_one_agent_in_either_order_whenever_the_owner_leaves() {
    // Each agent's program on the close asks, then forgets the connection:
    // the second finds no entry and goes by the first's turn.
    let close = Call { direction: DIR_INGRESS, buf: 0, len: 0 };
    for order in [[NEW, OLD], [OLD, NEW]] {
        for leave in 0..=2 {
            let mut o = Some(ConnOwner { agent: OLD, last_dir: DIR_INGRESS as u16, moved: 0 });
            let mut turns = HashMap::new();
            let mut told = 0;
            for (i, me) in order.into_iter().enumerate() {
                let left = i >= leave;
                let live = |x: u32| x == NEW || (x == OLD && !left);
                let a = Agents { me, heir: NEW, heir_is_current: true };
                let mut t = ThreadTurns { map: &mut turns, tid: 1, buf: 0, on: true };
                let v = match o.as_mut() {
                    Some(o) => decide(o, a, close, live, || false, &mut t),
                    None => first_sight(a, close, &mut t).unwrap_or_else(|new| {
                        if new.agent == me {
                            Verdict::Mine
                        } else {
                            Verdict::Elsewhere
                        }
                    }),
                };
                told += u32::from(v != Verdict::Elsewhere);
                o = None;
            }
            assert_eq!(told, 1, "{order:?}, leave {leave}");
        }
    }
}

#[test]
fn only_another_agent_s_turn_of_an_alike_call_is_followed() {
    let call = Call { direction: DIR_INGRESS, buf: 1, len: 100 };
    let a = Agents { me: NEW, heir: NEW, heir_is_current: true };
    let theirs = Turn { agent: OLD, copier: OLD, heir: NEW, direction: DIR_INGRESS, len: 100 };
    assert!(theirs.for_call(a, call));
    let others = [
        Turn { agent: NEW, ..theirs },
        Turn { heir: 42, ..theirs },
        Turn { direction: DIR_EGRESS, ..theirs },
        Turn { len: 99, ..theirs },
    ];
    for other in others {
        assert!(!other.for_call(a, call), "{other:?}");
    }
}

#[test]
fn a_call_left_to_the_old_agent_stays_its_own_after_another_thread_moved_the_connection() {
    // The heir's program gave this call to the old agent; another thread's
    // call then took the connection: the old agent copies this call, and the
    // heir's word that it took the connection over is left for the heir.
    let call = Call { direction: DIR_INGRESS, buf: 1, len: 100 };
    let mut turns = HashMap::new();
    turns.insert((1, 1), Turn { agent: NEW, copier: OLD, heir: NEW, direction: DIR_INGRESS, len: 100 });
    let mut o = ConnOwner { agent: NEW, last_dir: DIR_INGRESS as u16, moved: TAKEN_FROM_EXITED };
    let old = Agents { me: OLD, heir: NEW, heir_is_current: true };
    let mut t = ThreadTurns { map: &mut turns, tid: 1, buf: 1, on: true };
    assert_eq!(decide(&mut o, old, call, |x| x == NEW, || false, &mut t), Verdict::Mine);
    assert_eq!(o.moved, TAKEN_FROM_EXITED);
    assert!(turns.is_empty(), "the turn is taken");
}
