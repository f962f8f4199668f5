//! An HTTP/1.1 request whose body of megabytes straddles an upgrade: written
//! after the switch (decoded from the state handed on, or joined midway
//! without one), or copied by no agent (the answer comes while the state
//! still waits for the body).
use super::handoff::{ends_before_the_new_agent_reads_it, two_agents, with, Shared};
use super::*;
use crate::capture::decode::tests::data_record;
use tokentap_agent_common::FLAG_TAKEN_OVER;

/// An HTTP/1.1 request of `size` content bytes: its head and its body.
fn big_request(size: usize) -> (String, String) {
    let body = format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(size));
    let head =
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: {}\r\n\r\n", body.len());
    (head, body)
}

/// `bytes` as one call of the new agent's, of 4 KiB chunks (the kernel's
/// are 16 KiB: more of them here), each flagged
/// taken over (the connection's first call since the switch).
fn taken_over_call(p: &mut Pipeline, conn: u64, dir: u32, bytes: &[u8]) {
    let n = bytes.len() as u64;
    for (i, piece) in bytes.chunks(4096).enumerate() {
        let last = (i + 1) * 4096 >= bytes.len();
        let flags = if last { FLAG_LAST } else { 0 } | FLAG_TAKEN_OVER;
        p.handle(&data_record(42, conn, dir, (i * 4096) as u64, n, piece, flags));
    }
}

/// HTTP/1.1: the old agent copied a request's head and left, its state
/// handed on; the client then writes a body of 8 MiB (more than a
/// connection may hold while it waits), read by the new agent, then the
/// answer and another call. Both recorded, from the state.
#[test]
fn a_request_body_of_megabytes_written_after_the_switch_goes_on_from_the_state() {
    let (_shared, (mut old, old_calls, _), (mut new, new_calls, new_stats)) = two_agents();
    let (head, body) = big_request(8 << 20);
    call(&mut old, 7, DIR_EGRESS, head.as_bytes(), 4096);
    old.hand_off();
    old.finish();
    taken_over_call(&mut new, 7, DIR_EGRESS, body.as_bytes());
    call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
    call(&mut new, 7, DIR_EGRESS, REQ, 1 << 20);
    call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
    new.flush();
    assert!(old_calls.0.lock().unwrap().is_empty());
    let s = new_stats.snapshot();
    assert_eq!(new_calls.0.lock().unwrap().len(), 2, "{s:?}");
    assert_eq!((s.handoff_states_received, s.handoff_states_missing, s.ignored_not_http), (1, 0, 0));
}

/// HTTP/1.1: the old agent copied a request's head and 4 MiB of its body
/// (what a client writes before the socket's buffers fill) and left: the
/// state, over the 1 MiB a state once held, is handed on, and the new agent
/// records the call from it with the rest of the body.
#[test]
fn a_request_body_of_megabytes_copied_in_part_before_the_switch_is_handed_on() {
    let (_shared, (mut old, old_calls, old_stats), (mut new, new_calls, new_stats)) = two_agents();
    let (head, body) = big_request(8 << 20);
    let split = 4 << 20;
    call(&mut old, 7, DIR_EGRESS, format!("{head}{}", &body[..split]).as_bytes(), 16 << 10);
    old.hand_off();
    old.finish();
    taken_over_call(&mut new, 7, DIR_EGRESS, &body.as_bytes()[split..]);
    call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
    new.flush();
    assert!(old_calls.0.lock().unwrap().is_empty());
    let (o, n) = (old_stats.snapshot(), new_stats.snapshot());
    assert_eq!((o.handoff_states_sent, o.handoff_states_not_sent, o.dropped_at_exit), (1, 0, 0), "{o:?}");
    assert_eq!(new_calls.0.lock().unwrap().len(), 1, "{n:?}");
    assert_eq!((n.handoff_states_received, n.dropped_calls()), (1, 0), "{n:?}");
}

/// The same body with no state to go on from (the agent before exited
/// without one): joined midway in one call of 2,048 chunks, which the
/// sniffing budget counts as one call; the answer's tail counts as joined
/// midway, and the next call is recorded.
#[test]
fn a_request_body_of_megabytes_joined_midway_counts_as_one_call_not_thousands() {
    let (mut new, new_calls, stats) = with(&Shared::default());
    let (_, body) = big_request(8 << 20);
    taken_over_call(&mut new, 7, DIR_EGRESS, body.as_bytes());
    call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
    call(&mut new, 7, DIR_EGRESS, REQ, 1 << 20);
    call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
    new.flush();
    let s = stats.snapshot();
    assert_eq!(new_calls.0.lock().unwrap().len(), 1, "{s:?}");
    assert_eq!((s.handoff_states_missing, s.joined_mid_stream, s.ignored_not_http), (1, 1, 0), "{s:?}");
}

/// HTTP/1.1: the old agent copied a request's head and left; the write of
/// its body was copied by no agent (blocked across the whole upgrade, on a
/// kernel or release that cannot hand it over), so the answer comes while
/// the state still waits for the body. The call is counted as the
/// upgrade's, and the next request is read as one, not as that body.
#[test]
fn an_answer_to_a_request_whose_body_no_agent_copied_counts_the_call_and_the_next_is_recorded() {
    let (_shared, (mut old, old_calls, _), (mut new, new_calls, new_stats)) = two_agents();
    let (head, _) = big_request(1 << 20);
    call(&mut old, 7, DIR_EGRESS, head.as_bytes(), 4096);
    old.hand_off();
    old.finish();
    taken_over_call(&mut new, 7, DIR_INGRESS, &resp());
    call(&mut new, 7, DIR_EGRESS, REQ, 1 << 20);
    call(&mut new, 7, DIR_INGRESS, &resp(), 1 << 20);
    new.flush();
    assert!(old_calls.0.lock().unwrap().is_empty());
    let s = new_stats.snapshot();
    assert_eq!(new_calls.0.lock().unwrap().len(), 1, "{s:?}");
    assert_eq!((s.handoff_states_received, s.dropped_at_handover, s.dropped_unanswered), (1, 1, 0), "{s:?}");
}

/// A request still being written in the state handed on, on a connection
/// that ends before the new agent reads any of it: the state is read back
/// and that call counted, not lost silently.
#[test]
fn a_request_being_written_in_a_state_nobody_took_is_counted() {
    let (shared, mut old, mut new) = two_agents();
    let (head, body) = big_request(1 << 20);
    call(&mut old.0, 7, DIR_EGRESS, format!("{head}{}", &body[..100]).as_bytes(), 4096);
    ends_before_the_new_agent_reads_it(&shared, &mut old, &mut new);
    let n = new.2.snapshot();
    assert_eq!((n.dropped_at_handover, n.dropped_calls()), (1, 1), "the request being written, cut: {n:?}");
}

/// Every connection's cap on held bytes reached (32 MiB while waiting):
/// a connection taken over whose state came goes on from it at its first
/// record, the state taken from the map not dropped.
#[test]
fn with_every_connection_s_cap_reached_a_connection_whose_state_came_goes_on_from_it() {
    let (_shared, (mut old, _, _), (mut new, new_calls, new_stats)) = two_agents();
    let (head, body) = big_request(1000);
    call(&mut old, 99, DIR_EGRESS, head.as_bytes(), 4096);
    old.hand_off();
    // Eight connections taken over, whose states have not come, each
    // holding 4 MiB of records (its cap, and 32 MiB in all).
    let piece = vec![b'x'; (16 << 10) - tokentap_agent_common::DATA_HEADER_LEN];
    for conn in 1..=8u64 {
        for _ in 0..256 {
            new.handle(&data_record(42, conn, DIR_INGRESS, 0, piece.len() as u64, &piece, FLAG_LAST | FLAG_TAKEN_OVER));
        }
    }
    taken_over_call(&mut new, 99, DIR_EGRESS, body.as_bytes());
    call(&mut new, 99, DIR_INGRESS, &resp(), 1 << 20);
    new.flush();
    let s = new_stats.snapshot();
    assert_eq!(new_calls.0.lock().unwrap().len(), 1, "{s:?}");
    assert!(s.handoff_states_received >= 1, "{s:?}");
}

/// A body written in many calls (Go's HTTP client writes 4 KiB at a time),
/// joined midway on a connection taken over with no state: the sniffing
/// budget lets two bodies' worth pass, the answer's tail counts as joined
/// midway, and the next call is recorded. On a connection this agent saw
/// from its start the same bytes are not HTTP after 8 calls, as before.
#[test]
fn a_body_in_many_calls_joined_midway_after_an_upgrade_does_not_hide_the_later_calls() {
    let (_, body) = big_request(4 << 20);
    let calls = |p: &mut Pipeline, conn: u64, first: u32| {
        for (i, piece) in body.as_bytes().chunks(4096).enumerate() {
            let flags = FLAG_LAST | if i == 0 { first } else { 0 };
            p.handle(&data_record(42, conn, DIR_EGRESS, 0, piece.len() as u64, piece, flags));
        }
        call(p, conn, DIR_INGRESS, &resp(), 1 << 20);
        call(p, conn, DIR_EGRESS, REQ, 1 << 20);
        call(p, conn, DIR_INGRESS, &resp(), 1 << 20);
        p.flush();
    };
    let (mut new, new_calls, stats) = with(&Shared::default());
    calls(&mut new, 7, FLAG_TAKEN_OVER);
    let s = stats.snapshot();
    assert_eq!(new_calls.0.lock().unwrap().len(), 1, "{s:?}");
    assert_eq!((s.handoff_states_missing, s.joined_mid_stream, s.ignored_not_http), (1, 1, 0), "{s:?}");
    let (mut fresh, fresh_calls, stats) = with(&Shared::default());
    calls(&mut fresh, 8, 0);
    assert!(fresh_calls.0.lock().unwrap().is_empty());
    assert_eq!(stats.snapshot().ignored_not_http, 1);
}

/// A connection joined midway after an upgrade whose peer says something
/// that is not an HTTP answer (a database's results: one the agent before
/// had ignored) is not HTTP after 8 calls, as any other: only an upload
/// waiting in silence for its answer gets two bodies' worth.
#[test]
fn a_patient_connection_whose_peer_is_not_http_is_given_up_after_its_budget_of_calls() {
    let mut cap = |_: &crate::http::message::Head| Some(());
    let mut lost = crate::http::message::Lost::default();
    let mut query = |c: &mut crate::http::exchange::HttpConnection<()>, lost: &mut _| {
        for _ in 0..8 {
            c.on_egress(b"\x00\x00\x00\x2cSELECT 1", 1, &mut cap, lost);
        }
    };
    let mut silent = crate::http::exchange::HttpConnection::<()>::joined_after_upgrade(1 << 20);
    query(&mut silent, &mut lost);
    assert_eq!(silent.ignored(), None, "an upload may still be going on");
    let mut answered = crate::http::exchange::HttpConnection::<()>::joined_after_upgrade(1 << 20);
    answered.on_ingress(b"\x00\x01\x02 rows", 1, &mut Vec::new(), &mut lost);
    query(&mut answered, &mut lost);
    assert_eq!(answered.ignored(), Some(crate::http::ignored::Ignored::NotHttp));
}

/// An answer whose body ends with the connection (no length, not chunked):
/// the old agent copied all of it and left; the connection then ends before
/// the new agent read any of its bytes. The state handed on at the end
/// carries the connection's owner, and the new agent records the call the
/// end completes (it was counted, not recorded), under that owner, in
/// either order of the two agents' ends.
#[test]
fn a_call_an_end_completes_after_the_old_agent_left_is_recorded_by_the_new_one() {
    let body = br#"{"id":"chatcmpl-9","model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":31,"completion_tokens":7}}"#;
    let answer =
        [&b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"[..], body].concat();
    for new_first in [true, false] {
        let (shared, (mut old, old_calls, old_stats), (mut new, new_calls, new_stats)) = two_agents();
        call(&mut old, 7, DIR_EGRESS, REQ, 1 << 20);
        call(&mut old, 7, DIR_INGRESS, &answer, 1 << 20);
        old.leave();
        if new_first {
            new.handle(&control_record(EventKind::ConnClosed, 42, 7));
        }
        old.handle(&control_record(EventKind::ConnClosed, 42, 7));
        if !new_first {
            new.handle(&control_record(EventKind::ConnClosed, 42, 7));
        }
        old.hand_off();
        old.finish();
        shared.0.lock().unwrap().1 = false;
        new.finish();
        assert!(shared.0.lock().unwrap().0.is_empty(), "no state left behind");
        assert!(old_calls.0.lock().unwrap().is_empty());
        let (o, n) = (old_stats.snapshot(), new_stats.snapshot());
        let calls = new_calls.0.lock().unwrap().clone();
        assert_eq!(calls.len(), 1, "new agent first: {new_first}; {o:?} {n:?}");
        let c = &calls[0];
        assert_eq!((c.input_tokens, c.output_tokens), (Some(31), Some(7)));
        assert_eq!((c.pid, c.comm.as_deref(), c.tls_library.as_deref()), (Some(42), Some("python3"), Some("openssl")));
        assert_eq!(o.dropped_calls() + n.dropped_calls(), 0, "{o:?} {n:?}");
        assert_eq!((o.handoff_states_sent, n.handoff_states_unusable), (1, 0));
    }
}

/// A state handed on at an end, whose owner's part is cut short or names
/// no capture source (another process's input): counted unusable (what it
/// held is unknown), not dropped silently.
#[test]
fn a_state_handed_on_at_an_end_that_cannot_be_read_is_counted() {
    let (shared, (mut old, _, _), (mut new, new_calls, new_stats)) = two_agents();
    call(&mut old, 7, DIR_EGRESS, REQ, 1 << 20);
    old.leave();
    old.handle(&control_record(EventKind::ConnClosed, 42, 7));
    let state = shared.0.lock().unwrap().0.remove(&(42, 7)).expect("handed on at its end");
    assert_eq!(state[0], b'e');
    let mut unknown_source = state.clone();
    unknown_source[25] = 0xee;
    for (conn, bad) in [(8u64, state[..10].to_vec()), (9, unknown_source)] {
        shared.0.lock().unwrap().0.insert((42, conn), bad);
        new.handle(&control_record(EventKind::ConnClosed, 42, conn));
    }
    new.flush();
    shared.0.lock().unwrap().1 = false;
    new.finish();
    assert!(new_calls.0.lock().unwrap().is_empty());
    let n = new_stats.snapshot();
    assert_eq!((n.handoff_states_unusable, n.dropped_calls()), (2, 0), "{n:?}");
}
