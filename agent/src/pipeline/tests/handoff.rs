//! An HTTP/2 connection that changes agents during an upgrade: the old
//! pipeline hands on its decoding state, the new one waits for it and
//! records the call that straddles the switch.
use super::*;
use crate::capture::decode::tests::data_record;
use crate::http::h2::encode::{frame, headers};
use crate::http::h2::PREFACE;
use loona_hpack::Encoder;
use std::collections::HashMap;
use tokentap_agent_common::FLAG_TAKEN_OVER;

/// States by connection, as in the pinned map both agents share.
type States = HashMap<(u32, u64), Vec<u8>>;

/// The states, and whether the old agent still runs; the HTTP/2 streams
/// named to the kernel as muted.
/// The third: the map is full (no state is stored).
#[derive(Clone, Default)]
pub(super) struct Shared(
    pub(super) Arc<Mutex<(States, bool)>>,
    Arc<Mutex<Vec<u32>>>,
    Arc<std::sync::atomic::AtomicBool>,
);

impl ConnFilter for Shared {
    fn ignore(&mut self, _: u32, _: u64, _: u64) {}
    fn mute(&mut self, _: u32, _: u64, m: crate::http::mute::Mute) {
        if let crate::http::mute::Mute::H2Stream { stream, .. } = m {
            self.1.lock().unwrap().push(stream);
        }
    }
    fn forget(&mut self, _: u32, _: u64) {}
    fn hand_off(&mut self, tgid: u32, conn: u64, state: &[u8]) -> bool {
        if self.2.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        self.0.lock().unwrap().0.insert((tgid, conn), state.to_vec());
        true
    }
    fn handed(&mut self, tgid: u32, conn: u64) -> Handed {
        let mut s = self.0.lock().unwrap();
        match s.0.remove(&(tgid, conn)) {
            Some(state) => Handed::State(state),
            None if s.1 => Handed::Wait,
            None => Handed::Never,
        }
    }
    fn handover_pending(&mut self) -> bool {
        self.0.lock().unwrap().1
    }
}

fn request(enc: &mut Encoder<'_>, stream: u32) -> Vec<u8> {
    let h = headers(
        enc,
        &[(":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "api.openai.com"), ("x-lang", "go")],
    );
    let mut f = frame(1, 0x4, stream, &h);
    f.extend(frame(0, 0x1, stream, br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#));
    f
}

fn response(enc: &mut Encoder<'_>, stream: u32) -> Vec<u8> {
    let h = headers(enc, &[(":status", "200"), ("content-type", "application/json"), ("x-request-id", "req_1")]);
    let body = format!(
        r#"{{"id":"chatcmpl-{stream}","model":"gpt-4o-2024-08-06","usage":{{"prompt_tokens":{stream},"completion_tokens":2}}}}"#
    );
    let mut f = frame(1, 0x4, stream, &h);
    f.extend(frame(0, 0x1, stream, body.as_bytes()));
    f
}

pub(super) fn with(filter: &Shared) -> (Pipeline, Collect, Arc<Stats>) {
    let (p, c, stats) = pipeline();
    (p.with_kernel_filter(Box::new(filter.clone())), c, stats)
}

pub(super) type Agent = (Pipeline, Collect, Arc<Stats>);

/// The old agent (still running) and the new one, sharing the state map.
pub(super) fn two_agents() -> (Shared, Agent, Agent) {
    let shared = Shared::default();
    shared.0.lock().unwrap().1 = true;
    let (old, new) = (with(&shared), with(&shared));
    (shared, old, new)
}

/// The new agent's first record of connection 7: a request of a connection
/// it took over (held until the state comes).
fn taken_over_request(p: &mut Pipeline) {
    let next = request(&mut Encoder::new(), 1);
    p.handle(&data_record(42, 7, DIR_EGRESS, 0, next.len() as u64, &next, FLAG_LAST | FLAG_TAKEN_OVER));
}

/// The client preface and its SETTINGS.
fn preface() -> Vec<u8> {
    [PREFACE, &frame(4, 0, 0, &[])].concat()
}

#[test]
fn the_new_agent_waits_for_the_state_and_records_the_call_that_straddles_the_switch() {
    let (shared, (mut old, old_calls, old_stats), (mut new, new_calls, new_stats)) = two_agents();
    let (mut up, mut down) = (Encoder::new(), Encoder::new());
    call(&mut old, 7, DIR_EGRESS, &[preface(), request(&mut up, 1)].concat(), 1 << 20);
    call(&mut old, 7, DIR_INGRESS, &response(&mut down, 1), 1 << 20);
    // The next request: its first 7 bytes were the old agent's last read of
    // the connection, the rest is the new agent's first, flagged taken over.
    let next = request(&mut up, 3);
    call(&mut old, 7, DIR_EGRESS, &next[..7], 1 << 20);
    new.handle(&data_record(42, 7, DIR_EGRESS, 0, (next.len() - 7) as u64, &next[7..], FLAG_LAST | FLAG_TAKEN_OVER));
    call(&mut new, 7, DIR_INGRESS, &response(&mut down, 3), 1 << 20);
    new.flush();
    assert!(new_calls.0.lock().unwrap().is_empty(), "held while the old agent may still hand on a state");
    // The old agent, having read its last record, hands on and exits.
    old.hand_off();
    old.finish();
    shared.0.lock().unwrap().1 = false;
    new.flush();
    let (a, b) = (old_calls.0.lock().unwrap().clone(), new_calls.0.lock().unwrap().clone());
    assert_eq!((a.len(), b.len()), (1, 1), "each call once: {a:?} {b:?}");
    assert_eq!((a[0].input_tokens, b[0].input_tokens), (Some(1), Some(3)));
    let (o, n) = (old_stats.snapshot(), new_stats.snapshot());
    assert_eq!((o.handoff_states_sent, n.handoff_states_received), (1, 1));
    // The old agent saw only a partial frame of it: no call of its own cut.
    assert_eq!((n.joined_mid_stream, n.ignored_http2_joined, o.dropped_at_exit), (0, 0, 0));
}

#[test]
fn with_no_state_and_the_old_agent_gone_the_connection_is_joined_midway_and_counted() {
    let shared = Shared::default();
    let (mut new, new_calls, stats) = with(&shared);
    let mut up = Encoder::new();
    let _ = request(&mut up, 1);
    let next = request(&mut up, 3);
    new.handle(&data_record(42, 7, DIR_EGRESS, 0, next.len() as u64, &next, FLAG_LAST | FLAG_TAKEN_OVER));
    new.flush();
    let s = stats.snapshot();
    assert_eq!(s.handoff_states_missing, 1);
    assert!(new_calls.0.lock().unwrap().is_empty());
    assert!(s.ignored_http2_joined + s.ignored_not_http + s.joined_mid_stream > 0, "counted: {s:?}");
    // An HTTP/1.1 request taken over is read at once, no wait.
    let shared = Shared::default();
    shared.0.lock().unwrap().1 = true;
    let (mut new, new_calls, stats) = with(&shared);
    new.handle(&data_record(42, 8, DIR_EGRESS, 0, REQ.len() as u64, REQ, FLAG_LAST | FLAG_TAKEN_OVER));
    call(&mut new, 8, DIR_INGRESS, &resp(), 1 << 20);
    new.flush();
    assert_eq!(new_calls.0.lock().unwrap().len(), 1);
    assert_eq!(stats.snapshot().handoff_states_missing, 0);
}

#[test]
fn a_call_whose_response_the_old_agent_began_is_finished_by_the_new_one() {
    let (_shared, (mut old, old_calls, old_stats), (mut new, new_calls, new_stats)) = two_agents();
    let (mut up, mut down) = (Encoder::new(), Encoder::new());
    call(&mut old, 7, DIR_EGRESS, &[preface(), request(&mut up, 1)].concat(), 1 << 20);
    let answer = response(&mut down, 1);
    let cut = answer.len() - 10;
    call(&mut old, 7, DIR_INGRESS, &answer[..cut], 1 << 20);
    // The old agent leaves without waiting for it: the call goes with the state.
    old.hand_off();
    old.finish();
    let rest = &answer[cut..];
    new.handle(&data_record(42, 7, DIR_INGRESS, 0, rest.len() as u64, rest, FLAG_LAST | FLAG_TAKEN_OVER));
    new.flush();
    assert!(old_calls.0.lock().unwrap().is_empty());
    let b = new_calls.0.lock().unwrap().clone();
    assert_eq!(b.len(), 1, "{:?}", new_stats.snapshot());
    assert_eq!((b[0].input_tokens, b[0].output_tokens), (Some(1), Some(2)));
    assert_eq!(old_stats.snapshot().dropped_at_exit, 0, "nothing cut: the call was handed on");
    assert_eq!(new_stats.snapshot().handoff_states_received, 1);
}

#[test]
fn records_still_held_when_the_agent_stops_are_decoded_not_dropped() {
    let shared = Shared::default();
    shared.0.lock().unwrap().1 = true;
    let (mut new, _calls, stats) = with(&shared);
    taken_over_request(&mut new);
    new.flush();
    assert_eq!(stats.snapshot().handoff_states_missing, 0, "still waiting");
    new.finish();
    let s = stats.snapshot();
    assert_eq!(s.handoff_states_missing, 1, "{s:?}");
    assert!(s.bytes > 0, "its bytes were decoded");
}

#[test]
fn a_connection_that_closes_while_it_waits_is_decoded_at_its_close_then_closed() {
    let (_shared, (mut old, _old_calls, _), (mut new, new_calls, new_stats)) = two_agents();
    let (mut up, mut down) = (Encoder::new(), Encoder::new());
    call(&mut old, 7, DIR_EGRESS, &[preface(), request(&mut up, 1)].concat(), 1 << 20);
    let answer = response(&mut down, 1);
    new.handle(&data_record(42, 7, DIR_INGRESS, 0, answer.len() as u64, &answer, FLAG_LAST | FLAG_TAKEN_OVER));
    old.hand_off();
    old.finish();
    // Closed before the new agent's next pass: its bytes are decoded with
    // the state, then the connection ends (nothing lingers under its key).
    new.handle(&control_record(EventKind::ConnClosed, 42, 7));
    assert_eq!(new_calls.0.lock().unwrap().len(), 1, "{:?}", new_stats.snapshot());
    assert_eq!(new.connections(), 0);
    assert_eq!(new_stats.snapshot().handoff_states_received, 1);
    // A new connection under the reused key is read at once, not held.
    call(&mut new, 7, DIR_EGRESS, REQ, 1 << 20);
    call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
    assert_eq!(new_calls.0.lock().unwrap().len(), 2);
}

#[test]
fn a_process_that_exits_while_its_connection_waits_has_it_decoded_and_counted() {
    let (_shared, _old, (mut new, _calls, stats)) = two_agents();
    taken_over_request(&mut new);
    new.flush();
    assert_eq!(stats.snapshot().bytes, 0, "held");
    // The old agent still runs (no state yet), but the client is gone.
    new.handle(&exit_record(42));
    let s = stats.snapshot();
    assert_eq!(s.handoff_states_missing, 1, "{s:?}");
    assert!(s.bytes > 0, "its bytes were decoded");
    assert_eq!(new.connections(), 0);
}

#[test]
fn a_state_that_comes_after_its_connection_was_decoded_without_it_is_read_back_and_dropped() {
    let (shared, (mut old, _old_calls, _), (mut new, _new_calls, new_stats)) = two_agents();
    let mut up = Encoder::new();
    call(&mut old, 7, DIR_EGRESS, &[preface(), request(&mut up, 1)].concat(), 1 << 20);
    // A busy connection outgrows what the new agent holds for it before
    // the old one hands on: decoded as joined midway (counted).
    let chunk = vec![0u8; tokentap_agent_common::CHUNK_SIZE];
    let mut flags = FLAG_LAST | FLAG_TAKEN_OVER;
    while new_stats.snapshot().handoff_states_missing == 0 {
        new.handle(&data_record(42, 7, DIR_INGRESS, 0, chunk.len() as u64, &chunk, flags));
        flags = FLAG_LAST;
    }
    // The state comes after all, and nobody takes it: the new agent reads
    // it back (the kernel keeps it while that agent owns the connection).
    old.hand_off();
    assert!(shared.0.lock().unwrap().0.contains_key(&(42, 7)));
    new.finish();
    assert!(shared.0.lock().unwrap().0.is_empty(), "no state left behind");
    assert_eq!(new_stats.snapshot().handoff_states_received, 0);
}

/// A connection the new agent took over ends before the old agent handed
/// its state on: the old agent hands it on at the end, the new one waits
/// for it with the end, and records the call that straddles the switch.
#[test]
fn a_connection_that_ends_before_its_state_is_handed_on_waits_for_it() {
    let (_shared, (mut old, old_calls, old_stats), (mut new, new_calls, new_stats)) = two_agents();
    let (mut up, mut down) = (Encoder::new(), Encoder::new());
    call(&mut old, 7, DIR_EGRESS, &[preface(), request(&mut up, 1)].concat(), 1 << 20);
    old.leave();
    let answer = response(&mut down, 1);
    new.handle(&data_record(42, 7, DIR_INGRESS, 0, answer.len() as u64, &answer, FLAG_LAST | FLAG_TAKEN_OVER));
    // Both agents see the end; the new one first.
    new.handle(&control_record(EventKind::ConnClosed, 42, 7));
    new.flush();
    assert!(new_calls.0.lock().unwrap().is_empty(), "waits for the state");
    old.handle(&control_record(EventKind::ConnClosed, 42, 7));
    new.flush();
    let calls = new_calls.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{:?}", new_stats.snapshot());
    assert_eq!((calls[0].input_tokens, calls[0].output_tokens), (Some(1), Some(2)));
    assert_eq!(new.connections(), 0, "ended after its bytes");
    let (o, n) = (old_stats.snapshot(), new_stats.snapshot());
    assert_eq!((o.handoff_states_sent, n.handoff_states_received, n.handoff_states_missing), (1, 1, 0));
    assert!(old_calls.0.lock().unwrap().is_empty());
    assert_eq!(o.dropped_calls() + n.dropped_calls(), 0, "nothing counted cut: {o:?} {n:?}");
    // Once all states went, an end is an end: no second state.
    old.hand_off();
    call(&mut old, 9, DIR_EGRESS, &[preface(), request(&mut up, 3)].concat(), 1 << 20);
    old.handle(&control_record(EventKind::ConnClosed, 42, 9));
    assert_eq!(old_stats.snapshot().handoff_states_sent, 1);
}

/// The old agent hands on the state of a connection that ends while it
/// leaves, but the new agent never held its bytes: it reads the state back,
/// and the call in flight in it, cut with the connection, is counted.
#[test]
fn a_state_handed_on_at_an_end_nobody_took_counts_its_calls_cut() {
    let (shared, mut old, mut new) = two_agents();
    let mut up = Encoder::new();
    call(&mut old.0, 7, DIR_EGRESS, &[preface(), request(&mut up, 1)].concat(), 1 << 20);
    ends_before_the_new_agent_reads_it(&shared, &mut old, &mut new);
    let n = new.2.snapshot();
    assert_eq!(n.dropped_calls(), 1, "the call in flight, cut: {n:?}");
}

/// Connection 7 ends as the old agent leaves, its state handed on at the
/// end, before the new agent read any of it; the old agent is then gone
/// and the new one stops: no state is left behind, nothing recorded.
pub(super) fn ends_before_the_new_agent_reads_it(shared: &Shared, old: &mut Agent, new: &mut Agent) {
    old.0.leave();
    new.0.handle(&control_record(EventKind::ConnClosed, 42, 7));
    old.0.handle(&control_record(EventKind::ConnClosed, 42, 7));
    assert_eq!(old.2.snapshot().handoff_states_sent, 1);
    shared.0.lock().unwrap().1 = false;
    new.0.finish();
    assert!(shared.0.lock().unwrap().0.is_empty(), "no state left behind");
    assert!(new.1 .0.lock().unwrap().is_empty());
}

/// A new connection under the key of one that ended while it waited, before
/// its state came: the new one is read at once, the one that ended waits on
/// apart, and its call is recorded when the state comes.
#[test]
fn a_new_connection_under_the_key_of_one_waiting_with_its_end_is_read_at_once() {
    let (_shared, (mut old, old_calls, _), (mut new, new_calls, new_stats)) = two_agents();
    let (mut up, mut down) = (Encoder::new(), Encoder::new());
    call(&mut old, 7, DIR_EGRESS, &[preface(), request(&mut up, 1)].concat(), 1 << 20);
    let answer = response(&mut down, 1);
    new.handle(&data_record(42, 7, DIR_INGRESS, 0, answer.len() as u64, &answer, FLAG_LAST | FLAG_TAKEN_OVER));
    new.handle(&control_record(EventKind::ConnClosed, 42, 7));
    call(&mut new, 7, DIR_EGRESS, REQ, 1 << 20);
    call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
    assert_eq!(new_calls.0.lock().unwrap().len(), 1, "the new connection, read at once");
    assert_eq!(new_stats.snapshot().handoff_states_missing, 0, "the one that ended still waits");
    old.hand_off();
    old.finish();
    new.flush();
    let calls = new_calls.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{:?}", new_stats.snapshot());
    assert!(calls.iter().any(|c| c.input_tokens == Some(1) && c.output_tokens == Some(2)), "the call that straddled");
    assert!(old_calls.0.lock().unwrap().is_empty());
    let s = new_stats.snapshot();
    assert_eq!((s.handoff_states_received, s.handoff_states_missing), (1, 0), "{s:?}");
    assert_eq!(new.connections(), 1, "the new one only: the one apart ended with its state");
}

/// The same, when the agent before leaves without a state for it: decoded
/// as joined midway and counted, the new connection untouched.
#[test]
fn a_connection_apart_whose_state_never_comes_is_counted_missing() {
    let (shared, _old, (mut new, new_calls, new_stats)) = two_agents();
    taken_over_request(&mut new);
    new.handle(&control_record(EventKind::ConnClosed, 42, 7));
    call(&mut new, 7, DIR_EGRESS, REQ, 1 << 20);
    assert_eq!(new_stats.snapshot().handoff_states_missing, 0, "still waiting");
    shared.0.lock().unwrap().1 = false;
    new.flush();
    assert_eq!(new_stats.snapshot().handoff_states_missing, 1);
    call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
    assert_eq!(new_calls.0.lock().unwrap().len(), 1, "the new connection's call");
}

/// This agent leaves (a second upgrade) while a connection waits apart: it
/// goes on at once, before this agent hands on states under the key it
/// shares with the new connection.
#[test]
fn a_connection_apart_goes_on_when_this_agent_leaves() {
    let (_shared, _old, (mut new, _calls, new_stats)) = two_agents();
    taken_over_request(&mut new);
    new.handle(&control_record(EventKind::ConnClosed, 42, 7));
    call(&mut new, 7, DIR_EGRESS, REQ, 1 << 20);
    assert_eq!(new_stats.snapshot().handoff_states_missing, 0, "still waiting");
    new.leave();
    let s = new_stats.snapshot();
    assert_eq!(s.handoff_states_missing, 1, "{s:?}");
    assert!(s.bytes > 0, "its bytes were decoded");
}

/// A killed agent's ring buffer, read by the agent after it (`orphan_rings`).
mod orphans {
    use super::*;
    use crate::pipeline::OrphanConns;

    /// `bytes` as one whole call of connection `conn`, as a record.
    fn record(conn: u64, dir: u32, bytes: &[u8], flags: u32) -> Vec<u8> {
        data_record(42, conn, dir, 0, bytes.len() as u64, bytes, FLAG_LAST | flags)
    }

    #[test]
    fn a_request_the_killed_agent_never_read_meets_its_response_taken_over_and_the_call_is_recorded() {
        let (mut new, calls, stats) = with(&Shared::default());
        let mut conns = OrphanConns::default();
        // In the orphan: a whole call, then the next call's request.
        for raw in [record(7, DIR_EGRESS, REQ, 0), record(7, DIR_INGRESS, &resp(), 0), record(7, DIR_EGRESS, REQ, 0)] {
            new.handle_orphan(&raw, &mut conns);
        }
        // Its response, the new agent's first copy of the connection.
        new.handle(&record(7, DIR_INGRESS, &resp(), FLAG_TAKEN_OVER));
        new.flush();
        let s = stats.snapshot();
        assert_eq!(calls.0.lock().unwrap().len(), 2, "{s:?}");
        assert_eq!((s.handover_orphan_records, s.joined_mid_stream, s.handoff_states_missing), (3, 0, 0));
        assert_eq!((s.dropped_unanswered, s.dropped_at_exit), (0, 0));
    }

    #[test]
    fn older_calls_of_a_connection_the_new_agent_already_decodes_are_recorded_apart_not_mixed_in() {
        let (mut new, calls, stats) = with(&Shared::default());
        // The connection moved here at a request while the old agent had
        // stopped reading: the new agent holds a request in flight.
        call(&mut new, 7, DIR_EGRESS, REQ, 1 << 20);
        let mut conns = OrphanConns::default();
        new.handle_orphan(&record(7, DIR_EGRESS, REQ, 0), &mut conns);
        new.handle_orphan(&record(7, DIR_INGRESS, &resp(), 0), &mut conns);
        assert_eq!(calls.0.lock().unwrap().len(), 1, "the older call, apart");
        // The old agent's end of the connection (its object freed after a
        // reuse) ends the apart one only: the new call goes on.
        new.handle_orphan(&control_record(EventKind::ConnClosed, 42, 7), &mut conns);
        call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
        new.flush();
        let s = stats.snapshot();
        assert_eq!(calls.0.lock().unwrap().len(), 2, "{s:?}");
        assert_eq!((s.joined_mid_stream, s.dropped_unanswered, s.dropped_at_exit), (0, 0, 0));
        assert_eq!(s.handover_orphan_records, 3);
    }

    #[test]
    fn the_killed_agent_s_ends_and_exits_end_only_connections_decoded_from_its_records() {
        let (mut new, calls, stats) = with(&Shared::default());
        // A live connection here whose key the dead agent last saw on an
        // earlier connection (an SSL* reused once freed).
        call(&mut new, 7, DIR_EGRESS, REQ, 1 << 20);
        let mut conns = OrphanConns::default();
        // The dead agent's records: the earlier connection's end, a request
        // on another connection, and its process's exit.
        new.handle_orphan(&control_record(EventKind::ConnClosed, 42, 7), &mut conns);
        new.handle_orphan(&record(9, DIR_EGRESS, REQ, 0), &mut conns);
        new.handle_orphan(&control_record(EventKind::Exit, 42, 0), &mut conns);
        assert_eq!(stats.snapshot().dropped_calls(), 1, "the orphan's request, cut by its exit");
        call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
        new.flush();
        let s = stats.snapshot();
        assert_eq!(calls.0.lock().unwrap().len(), 1, "the live call goes on: {s:?}");
        assert_eq!((s.dropped_calls(), s.joined_mid_stream, s.handover_orphan_records), (1, 0, 3));
    }
}

/// An upgrade's switch inside a muted HTTP/2 DATA payload, the new agent's
/// first read wholly inside it: its kernel keeps nothing of that read, and
/// the one chunk it copies, flagged taken over, is empty, at the read's end
/// under the new agent's base. The pipeline holds it until the state comes,
/// then (the connection not yet decoded here) drops it; the next chunk's
/// jump from the base explains the skip, and the call in flight across the
/// switch is recorded by the new agent alone.
mod muted_switch {
    use super::*;
    use crate::http::exchange::h2_mute_tests::Kernel;
    use std::mem::offset_of;
    use tokentap_agent_common::DataHeader;

    const OLD_BASE: u64 = 1 << 40;
    const NEW_BASE: u64 = 1 << 41;
    const READ: usize = 5_000;
    const FRAME: usize = 16_384;

    /// A download on stream 1 (not recorded, muted after its first DATA
    /// frame) and an LLM call on stream 3 answered halfway through it.
    fn download_and_call() -> (Vec<u8>, Vec<u8>) {
        let (mut up, mut down) = (Encoder::new(), Encoder::new());
        let get = headers(&mut up, &[(":method", "GET"), (":authority", "example.com"), (":path", "/big")]);
        let egress = [preface(), frame(1, 0x4 | 0x1, 1, &get), request(&mut up, 3)].concat();
        let mut ingress = frame(4, 0, 0, &[]);
        let head = headers(&mut down, &[(":status", "200"), ("content-type", "application/octet-stream")]);
        ingress.extend(frame(1, 0x4, 1, &head));
        let body: Vec<u8> = (0..FRAME).map(|i| (i % 251) as u8).collect();
        for i in 0..40 {
            if i == 20 {
                ingress.extend(response(&mut down, 3));
            }
            ingress.extend(frame(0, if i == 39 { 0x1 } else { 0 }, 1, &body));
        }
        (egress, ingress)
    }

    /// One call of the kernel's: `data` at `pos` under `base`, spanning `span`.
    fn record(base: u64, pos: u64, span: u64, data: &[u8], flags: u32) -> Vec<u8> {
        let mut rec = data_record(42, 7, DIR_INGRESS, 0, span, data, FLAG_LAST | flags);
        rec[offset_of!(DataHeader, stream_base)..][..8].copy_from_slice(&base.to_ne_bytes());
        rec[offset_of!(DataHeader, stream_pos)..][..8].copy_from_slice(&pos.to_ne_bytes());
        rec
    }

    /// A read as the kernel copies it: the segments it keeps, the last
    /// spanning to the read's end, or one empty call at its end (the first
    /// of a connection taken over, or one across a mark), or nothing.
    fn read(p: &mut Pipeline, k: &mut Kernel, base: u64, data: &[u8], first: bool) -> bool {
        let (start, end) = (k.pos, k.pos + data.len() as u64);
        let r = k.read(data, first);
        let taken = if first { FLAG_TAKEN_OVER } else { 0 };
        let n = r.kept.len();
        for (i, (from, to)) in r.kept.into_iter().enumerate() {
            let span = if i + 1 == n { end - from } else { to - from };
            let bytes = &data[(from - start) as usize..(to - start) as usize];
            p.handle(&record(base, from, span, bytes, if i == 0 { taken } else { 0 }));
        }
        if n == 0 && r.copied {
            p.handle(&record(base, end, 0, &[], taken));
        }
        n == 0
    }

    #[test]
    fn a_first_read_skipped_whole_goes_on_from_the_state_the_agent_before_handed_on() {
        let (egress, ingress) = download_and_call();
        let mut exercised = 0;
        for switch_after in 4..40 {
            let (shared, (mut old, old_calls, old_stats), (mut new, new_calls, new_stats)) = two_agents();
            let mut k = Kernel::at(OLD_BASE);
            call_under(&mut old, 7, DIR_EGRESS, &egress, OLD_BASE);
            let mut reads = ingress.chunks(READ);
            for r in reads.by_ref().take(switch_after) {
                read(&mut old, &mut k, OLD_BASE, r, false);
                k.muted = shared.1.lock().unwrap().clone();
            }
            // Only switches where the next read lies wholly in a muted payload.
            if !(k.muted_payload && k.payload_end - k.pos >= READ as u64) {
                continue;
            }
            exercised += 1;
            old.hand_off();
            old.finish();
            shared.0.lock().unwrap().1 = false;
            // The new agent's kernel goes on with the walk from its own base.
            k.switch_to(NEW_BASE);
            let mut first = true;
            for r in reads {
                let empty = read(&mut new, &mut k, NEW_BASE, r, first);
                assert!(!first || empty, "switch after {switch_after}: the first read kept nothing");
                first = false;
                k.muted = shared.1.lock().unwrap().clone();
            }
            new.flush();
            let (a, b) = (old_calls.0.lock().unwrap().clone(), new_calls.0.lock().unwrap().clone());
            let s = new_stats.snapshot();
            assert_eq!((a.len(), b.len()), (0, 1), "switch after {switch_after}: {s:?}");
            assert_eq!(b[0].input_tokens, Some(3));
            assert_eq!((old_stats.snapshot().handoff_states_sent, s.handoff_states_received), (1, 1));
            assert_eq!((s.ignored_desync, s.joined_mid_stream, s.dropped_calls()), (0, 0, 0), "{s:?}");
        }
        assert!(exercised >= 3, "{exercised} switches inside a muted payload");
    }
}

/// HTTP/1.1, the old agent's drain run out with a call in flight: a state
/// the new agent takes decodes on (the call recorded once, by it); one that
/// comes for a connection it took at the client's next request (the answer
/// was read where no agent copied it: a read blocked across the upgrade), or
/// that ended with none of its bytes here (its answer half read), is read
/// back and its call counted cut. One that could not be stored (the map
/// full) is counted by the old agent, as a call it exited with.
#[test]
fn an_http1_call_in_flight_goes_on_with_its_state_or_is_counted_when_its_answer_went_unseen() {
    let full = two_agents();
    full.0 .2.store(true, std::sync::atomic::Ordering::Relaxed);
    let (_, (mut old, old_calls, old_stats), _) = full;
    call(&mut old, 7, DIR_EGRESS, REQ, 1 << 20);
    old.hand_off();
    old.finish();
    let o = old_stats.snapshot();
    assert_eq!((o.handoff_states_not_sent, o.dropped_at_exit, old_calls.0.lock().unwrap().len()), (1, 1, 0));
    // The agent before exited before the client's next request reached the
    // new agent: its state is read at that request, the call counted.
    let (shared, (mut old, _, _), (mut new, new_calls, new_stats)) = two_agents();
    call(&mut old, 7, DIR_EGRESS, REQ, 1 << 20);
    old.hand_off();
    old.finish();
    shared.0.lock().unwrap().1 = false;
    new.handle(&data_record(42, 7, DIR_EGRESS, 0, REQ.len() as u64, REQ, FLAG_LAST | FLAG_TAKEN_OVER));
    let n = new_stats.snapshot();
    assert_eq!(
        (n.dropped_at_handover, n.dropped_unanswered, shared.0.lock().unwrap().0.len()),
        (1, 0, 0),
        "counted, read"
    );
    call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
    new.flush();
    assert_eq!(new_calls.0.lock().unwrap().len(), 1, "the next call recorded");
    for (answered, ended) in [(true, false), (false, false), (false, true)] {
        let (shared, (mut old, old_calls, old_stats), (mut new, new_calls, new_stats)) = two_agents();
        call(&mut old, 7, DIR_EGRESS, REQ, 1 << 20);
        let r = resp();
        if answered {
            // The answer's first bytes were the old agent's last read.
            call(&mut old, 7, DIR_INGRESS, &r[..9], 1 << 20);
            new.handle(&data_record(42, 7, DIR_INGRESS, 0, (r.len() - 9) as u64, &r[9..], FLAG_LAST | FLAG_TAKEN_OVER));
        } else if ended {
            // Half the answer read by the old agent, then the connection's
            // end, told by the new one (the old one had left).
            call(&mut old, 7, DIR_INGRESS, &r[..r.len() - 9], 1 << 20);
            new.handle(&control_record(EventKind::ConnClosed, 42, 7));
        } else {
            new.handle(&data_record(42, 7, DIR_EGRESS, 0, REQ.len() as u64, REQ, FLAG_LAST | FLAG_TAKEN_OVER));
            call(&mut new, 7, DIR_INGRESS, &r, 1 << 20);
        }
        new.flush();
        old.hand_off();
        old.finish();
        shared.0.lock().unwrap().1 = false;
        new.finish();
        let (a, b) = (old_calls.0.lock().unwrap().len(), new_calls.0.lock().unwrap().len());
        let (o, n) = (old_stats.snapshot(), new_stats.snapshot());
        let recorded = usize::from(!ended);
        assert_eq!((a, b, o.handoff_states_sent, o.dropped_at_exit), (0, recorded, 1, 0), "answered: {answered}");
        let received = u64::from(answered);
        let counted = (n.handoff_states_received, n.dropped_at_handover, n.dropped_unanswered);
        assert_eq!(counted, (received, 1 - received, 0), "answered: {answered}");
        assert_eq!(n.joined_mid_stream, 0);
    }
}
