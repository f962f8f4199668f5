//! An HTTP/1.1 connection's state handed on in an upgrade, and taken up.
use super::tests::llm;
use super::*;
use crate::http::mute::{Mute, StreamAt};

/// An upgrade's drain ran out amid HTTP/1.1 exchanges: at every byte of a
/// request, a non-LLM response and an LLM stream, the state handed on lets the
/// next agent record the call as the old one would have, and the old agent
/// keeps nothing of it (not recorded, not counted at its end).
#[test]
fn an_http1_connection_handed_on_anywhere_in_its_exchanges_records_its_calls_once() {
    let req = b"POST /v1/chat HTTP/1.1\r\ncontent-length: 12\r\n\r\n{\"stream\":1}";
    let other = b"GET /health HTTP/1.1\r\n\r\n";
    let other_resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let resp = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndata: a\r\n7\r\ndata: b\r\n0\r\n\r\n";
    // (direction, bytes) in the order the client saw them.
    let script: Vec<(Direction, u8)> = [(Direction::Egress, &other[..]), (Direction::Ingress, &other_resp[..])]
        .into_iter()
        .chain([(Direction::Egress, &req[..]), (Direction::Ingress, &resp[..])])
        .flat_map(|(d, b)| b.iter().map(move |&x| (d, x)))
        .collect();
    let run =
        |c: &mut HttpConnection<()>, steps: &[(Direction, u8)], out: &mut Vec<Classified<()>>, lost: &mut Lost| {
            for (i, &(d, b)) in steps.iter().enumerate() {
                let (at, mut cap) = (StreamAt::default(), llm);
                let _ = c.on_chunk(d, Continuity::InOrder, at, &[b], i as u64, &mut cap, out, lost);
            }
        };
    let (mut whole, mut want, mut lost) = (HttpConnection::<()>::new(1 << 20), Vec::new(), Lost::default());
    run(&mut whole, &script, &mut want, &mut lost);
    assert_eq!(want.len(), 1);
    for cut in 0..script.len() {
        let (mut old, mut out, mut lost) = (HttpConnection::<()>::new(1 << 20), Vec::new(), Lost::default());
        run(&mut old, &script[..cut], &mut out, &mut lost);
        let mut new = if old.hands_off() {
            let state = old.hand_off(1 << 20).expect("a state");
            assert_eq!(old.calls_in_flight(), 0, "cut at {cut}: handed on");
            HttpConnection::resume(&state, 1 << 20, &mut llm).unwrap()
        } else {
            // Between exchanges: the connection moves at its next request.
            HttpConnection::new(1 << 20)
        };
        let mut cut_short = Vec::new();
        old.close(99, &mut cut_short, &mut lost);
        run(&mut new, &script[cut..], &mut out, &mut lost);
        assert!(cut_short.is_empty(), "cut at {cut}: the old agent records nothing of it");
        assert_eq!(lost, Lost::default(), "cut at {cut}");
        assert_eq!(out.len(), 1, "cut at {cut}");
        assert_eq!(out[0].exchange.request.body, want[0].exchange.request.body, "cut at {cut}");
        assert_eq!(out[0].exchange.response.body, want[0].exchange.response.body, "cut at {cut}");
    }
}

/// Taken over amid a response whose first read no agent copied (blocked in
/// the library across the whole upgrade): the rest does not parse where the
/// state says a head goes. The call is counted and the connection resumes at
/// its next request, whose call is recorded; one decoded from its start
/// gives such a connection up.
#[test]
fn a_connection_taken_over_across_a_hole_resumes_at_its_next_request() {
    let mut cap = llm;
    let (mut old, mut lost) = (HttpConnection::<()>::new(1 << 20), Lost::default());
    old.on_egress(b"POST /v1/x HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", 1, &mut cap, &mut lost);
    assert!(old.hands_off());
    let state = old.hand_off(1 << 20).expect("a state");
    let mut new = HttpConnection::resume(&state, 1 << 20, &mut cap).unwrap();
    let mut out = Vec::new();
    // The head was in the read nobody copied; the body's read was copied.
    let at = StreamAt::default();
    let _ = new.on_chunk(Direction::Ingress, Continuity::InOrder, at, b"{\"id\":1}", 2, &mut cap, &mut out, &mut lost);
    assert_eq!((lost.at_handover, lost.unanswered, lost.resynced, new.ignored()), (1, 0, 1, None), "the upgrade's");
    new.on_egress(b"POST /v1/y HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", 3, &mut cap, &mut lost);
    new.on_ingress(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 4, &mut out, &mut lost);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].exchange.request.head.path.as_deref(), Some("/v1/y"));
    let mut fresh = HttpConnection::<()>::new(1 << 20);
    fresh.on_egress(b"POST /v1/x HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", 1, &mut cap, &mut lost);
    fresh.on_ingress(b"{\"id\":1}", 2, &mut Vec::new(), &mut lost);
    assert_eq!(fresh.ignored(), Some(Ignored::Desync));
    // Bytes this agent lost of the client's side (its ring full) before
    // any answer: its own loss, not the upgrade's.
    let (mut lost, mut out) = (Lost::default(), Vec::new());
    let mut new = HttpConnection::resume(&state, 1 << 20, &mut cap).unwrap();
    let _ = new.on_chunk(Direction::Egress, Continuity::Gap, at, b"{}", 5, &mut cap, &mut out, &mut lost);
    assert_eq!((lost.at_handover, lost.unanswered, lost.resynced), (0, 1, 1));
}

/// The fuzz target's seed of an HTTP/1.1 state (fuzz/seeds/handoff/h1): read
/// back, it goes on from where it stands and is handed on again unchanged.
#[test]
fn the_http1_state_seed_resumes_and_hands_on_unchanged() {
    let seed = include_bytes!("../../../fuzz/seeds/handoff/h1");
    let mut cap = llm;
    let mut c = HttpConnection::resume(seed, 1 << 16, &mut cap).unwrap();
    let again = c.hand_off(1 << 20).unwrap();
    assert_eq!(&again[..], &seed[..]);
    let mut c = HttpConnection::resume(seed, 1 << 16, &mut cap).unwrap();
    let (mut out, mut lost) = (Vec::new(), Lost::default());
    c.on_ingress(b"1}\n\n\r\n0\r\n\r\n", 3, &mut out, &mut lost);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].exchange.response.body, b"data: {\"a\":1}\n\n");
    assert_eq!(lost, Lost::default());
}

/// Amid a body nobody keeps that the kernel was asked to skip, the parser's
/// position may be stale (the skip shows only with a later chunk): no state
/// is handed on, the connection changes agents at its next request. A body
/// too small to mute is handed on.
#[test]
fn an_http1_connection_amid_a_muted_body_is_not_handed_on() {
    for (len, muted) in [(1u64 << 20, true), (100, false)] {
        let mut c = HttpConnection::<()>::new(1 << 20);
        let (mut cap, mut lost, mut out) = (llm, Lost::default(), Vec::new());
        let at = StreamAt { base: 1 << 40, pos: 1 << 40 };
        let get = b"GET /big HTTP/1.1\r\n\r\n";
        let _ = c.on_chunk(Direction::Egress, Continuity::InOrder, at, get, 1, &mut cap, &mut out, &mut lost);
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\nab");
        let _ =
            c.on_chunk(Direction::Ingress, Continuity::InOrder, at, head.as_bytes(), 2, &mut cap, &mut out, &mut lost);
        assert_eq!(matches!(c.take_mute(), Some(Mute::Range { .. })), muted, "{len}");
        assert_eq!(c.hands_off(), !muted, "{len}");
    }
}

/// A muted download whose last reads the kernel skipped, then an LLM request
/// whose answer comes after the old agent left: the client asked again, so
/// it read the body whole; the state handed on starts at that answer, which
/// the new agent records. Without the later request nothing is handed on.
#[test]
fn a_muted_body_the_client_read_whole_ends_before_the_state_is_handed_on() {
    let (mut cap, mut lost, mut out) = (llm, Lost::default(), Vec::new());
    let mut c = HttpConnection::<()>::new(1 << 20);
    let at = StreamAt { base: 1 << 40, pos: 1 << 40 };
    let get = b"GET /big HTTP/1.1\r\n\r\n";
    let _ = c.on_chunk(Direction::Egress, Continuity::InOrder, at, get, 1, &mut cap, &mut out, &mut lost);
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\nab";
    let _ = c.on_chunk(Direction::Ingress, Continuity::InOrder, at, head, 2, &mut cap, &mut out, &mut lost);
    assert!(matches!(c.take_mute(), Some(Mute::Range { .. })));
    assert!(!c.hands_off(), "the body may still be read");
    let post = b"POST /v1/x HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}";
    let _ = c.on_chunk(Direction::Egress, Continuity::InOrder, at, post, 3, &mut cap, &mut out, &mut lost);
    assert!(c.hands_off());
    let state = c.hand_off(1 << 20).expect("a state");
    let mut new = HttpConnection::resume(&state, 1 << 20, &mut cap).unwrap();
    new.on_ingress(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 4, &mut out, &mut lost);
    let mut cut = Vec::new();
    c.close(5, &mut cut, &mut lost);
    assert_eq!((out.len(), cut.len(), lost), (1, 0, Lost::default()));
    assert_eq!(out[0].exchange.request.head.path.as_deref(), Some("/v1/x"));
}

/// A resumed state: its calls are tagged by this agent's rules among those
/// whose bodies the agent before kept; only the first answer bytes after the
/// resume may be a gap, later garbage gives the connection up as ever.
#[test]
fn a_resumed_connection_tags_only_kept_calls_and_treats_later_garbage_as_ever() {
    let (mut cap, mut lost) = (llm, Lost::default());
    // Not kept by the agent before (its rules said no), LLM by this one's.
    let mut none = |_: &Head| None::<()>;
    let mut old = HttpConnection::<()>::new(1 << 20);
    old.on_egress(b"POST /v1/x HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", 1, &mut none, &mut lost);
    let state = old.hand_off(1 << 20).expect("a state");
    let mut new = HttpConnection::resume(&state, 1 << 20, &mut cap).unwrap();
    assert_eq!(new.calls_in_flight(), 0, "not this agent's to record");
    new.close(2, &mut Vec::new(), &mut lost);
    assert_eq!(lost, Lost::default(), "nor to count");
    // Kept, the first answer's bytes out of order (a gap): resumed at the
    // next request, after which garbage is a desync as ever.
    let mut old = HttpConnection::<()>::new(1 << 20);
    old.on_egress(b"POST /v1/x HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", 1, &mut cap, &mut lost);
    let state = old.hand_off(1 << 20).expect("a state");
    let mut new = HttpConnection::resume(&state, 1 << 20, &mut cap).unwrap();
    let (at, mut out) = (StreamAt::default(), Vec::new());
    let _ = new.on_chunk(Direction::Ingress, Continuity::Gap, at, b"ok", 2, &mut cap, &mut out, &mut lost);
    new.on_egress(b"POST /v1/y HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", 3, &mut cap, &mut lost);
    new.on_ingress(b"\x00garbage", 4, &mut out, &mut lost);
    // The first call is the upgrade's loss, the second garbage's.
    let counted = (lost.at_handover, lost.unanswered, lost.resynced, new.ignored());
    assert_eq!(counted, (1, 1, 1, Some(Ignored::Desync)));
    lost = Lost::default();
    // Kept: the first answer parses; garbage after it is a desync.
    let mut old = HttpConnection::<()>::new(1 << 20);
    old.on_egress(b"POST /v1/x HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", 1, &mut cap, &mut lost);
    let state = old.hand_off(1 << 20).expect("a state");
    let mut new = HttpConnection::resume(&state, 1 << 20, &mut cap).unwrap();
    let mut out = Vec::new();
    new.on_ingress(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 3, &mut out, &mut lost);
    new.on_egress(b"POST /v1/y HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", 4, &mut cap, &mut lost);
    new.on_ingress(b"\x00garbage", 5, &mut out, &mut lost);
    assert_eq!((out.len(), new.ignored()), (1, Some(Ignored::Desync)));
}
