//! HTTP/2 decoding tests: whole conversations split anywhere, losses, and garbage.
use super::encode::{frame, headers};
use super::*;
use loona_hpack::Encoder;
use proptest::prelude::*;

fn llm(h: &Head) -> Option<()> {
    h.path.as_deref().is_some_and(|p| p.starts_with("/v1/")).then_some(())
}

/// A client's side of a connection: preface + SETTINGS, then `n` POSTs to
/// `/v1/chat/completions` on streams 1, 3, 5…, plus the server's answers
/// interleaved (every response's DATA split in two, streams answered in
/// reverse order).
fn conversation(n: u32) -> (Vec<u8>, Vec<u8>) {
    let mut c = Encoder::new();
    let mut s = Encoder::new();
    let mut egress = PREFACE.to_vec();
    egress.extend(frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]));
    let mut ingress = frame(SETTINGS, 0, 0, &[]);
    for i in 0..n {
        let id = 2 * i + 1;
        let body = format!("{{\"model\":\"m\",\"n\":{i}}}");
        let h = headers(
            &mut c,
            &[
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "api.openai.com"),
                (":path", "/v1/chat/completions"),
                ("authorization", "Bearer sk-secret"),
                ("content-type", "application/json"),
            ],
        );
        // Split the header block over HEADERS + CONTINUATION.
        let (a, b) = h.split_at(h.len() / 2);
        egress.extend(frame(HEADERS, 0, id, a));
        egress.extend(frame(CONTINUATION, END_HEADERS, id, b));
        egress.extend(frame(DATA, END_STREAM, id, body.as_bytes()));
    }
    for i in (0..n).rev() {
        let id = 2 * i + 1;
        let h = headers(&mut s, &[(":status", "200"), ("content-type", "application/json"), ("x-request-id", "r")]);
        ingress.extend(frame(HEADERS, END_HEADERS, id, &h));
        let body = format!("{{\"answer\":{i}}}");
        let (a, b) = body.as_bytes().split_at(3);
        ingress.extend(frame(DATA, PADDED, id, &[&[2u8][..], a, &[0, 0]].concat()));
        ingress.extend(frame(DATA, END_STREAM, id, b));
    }
    (egress, ingress)
}

fn run(egress: &[u8], ingress: &[u8], split: usize) -> (Vec<Classified<()>>, Lost, H2Connection) {
    let mut c = H2Connection::new(1 << 20);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    for piece in egress.chunks(split.max(1)) {
        c.on_egress(piece, 1, &mut llm, &mut lost).unwrap();
    }
    for piece in ingress.chunks(split.max(1)) {
        c.on_ingress(piece, 2, &mut out, &mut lost).unwrap();
    }
    (out, lost, c)
}

#[test]
fn concurrent_streams_each_become_an_exchange() {
    let (e, i) = conversation(20);
    let (out, lost, c) = run(&e, &i, usize::MAX);
    assert_eq!(out.len(), 20);
    assert_eq!(lost, Lost::default());
    assert_eq!(c.buffered(), 0);
    for Classified { exchange: ex, .. } in &out {
        let n: serde_json::Value = serde_json::from_slice(&ex.request.body).unwrap();
        let a: serde_json::Value = serde_json::from_slice(&ex.response.body).unwrap();
        assert_eq!(n["n"], a["answer"], "request paired with its own response");
        assert_eq!(ex.request.head.header("host"), Some("api.openai.com"));
        assert_eq!(ex.response.head.status, Some(200));
        assert!(ex.response.complete && ex.request.head.http2);
    }
}

#[test]
fn each_stream_keeps_its_requests_classification() {
    let (e, i) = conversation(3);
    let mut c = H2Connection::new(1 << 20);
    let (mut lost, mut out, mut seen) = (Lost::default(), Vec::new(), 0u64);
    let mut nth = |_: &Head| {
        seen += 1;
        Some((seen - 1).to_string())
    };
    c.on_egress(&e, 1, &mut nth, &mut lost).unwrap();
    c.on_ingress(&i, 2, &mut out, &mut lost).unwrap();
    assert_eq!(out.len(), 3);
    for x in &out {
        let n: serde_json::Value = serde_json::from_slice(&x.exchange.request.body).unwrap();
        assert_eq!(n["n"].to_string(), x.endpoint);
    }
}

#[test]
fn non_llm_streams_are_decoded_but_not_kept() {
    let mut c = Encoder::new();
    let mut e = PREFACE.to_vec();
    e.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &headers(&mut c, &[(":method", "GET"), (":path", "/x")])));
    let mut conn = H2Connection::new(1024);
    let mut lost = Lost::default();
    conn.on_egress(&e, 1, &mut llm, &mut lost).unwrap();
    assert_eq!(conn.streams.len(), 0);
}

#[test]
fn reset_goaway_and_close_count_losses() {
    let (e, _) = conversation(3);
    let mut c = H2Connection::new(1 << 20);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    c.on_egress(&e, 1, &mut llm, &mut lost).unwrap();
    c.on_ingress(&frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]), 2, &mut out, &mut lost).unwrap();
    assert_eq!(lost.unanswered, 1);
    c.on_ingress(&frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]), 2, &mut out, &mut lost).unwrap();
    assert_eq!(lost.unanswered, 2);
    c.close(&mut out, &mut lost);
    assert_eq!(lost.unanswered, 3);
    assert!(out.is_empty());
}

#[test]
fn close_keeps_a_response_whose_body_has_its_declared_length() {
    let mut c = Encoder::new();
    let mut s = Encoder::new();
    let mut e = PREFACE.to_vec();
    let h = headers(&mut c, &[(":method", "POST"), (":path", "/v1/x"), (":authority", "a")]);
    e.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &h));
    e.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &h));
    let mut conn = H2Connection::new(1024);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    conn.on_egress(&e, 1, &mut llm, &mut lost).unwrap();
    let mut i = frame(HEADERS, END_HEADERS, 1, &headers(&mut s, &[(":status", "200"), ("content-length", "2")]));
    i.extend(frame(DATA, 0, 1, b"{}"));
    i.extend(frame(HEADERS, END_HEADERS, 3, &headers(&mut s, &[(":status", "200"), ("content-length", "9")])));
    i.extend(frame(DATA, 0, 3, b"{}"));
    conn.on_ingress(&i, 2, &mut out, &mut lost).unwrap();
    conn.close(&mut out, &mut lost);
    out.sort_by_key(|x| x.exchange.response.head.header("content-length").map(str::to_owned));
    assert_eq!(out.iter().map(|x| x.exchange.response.complete).collect::<Vec<_>>(), vec![true, false]);
}

#[test]
fn corrupt_hpack_is_an_error() {
    let mut e = PREFACE.to_vec();
    e.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0xff]));
    let mut c = H2Connection::new(1024);
    assert_eq!(c.on_egress(&e, 1, &mut llm, &mut Lost::default()), Err(H2Error::Hpack));
}

#[test]
fn recognises_frames_of_a_joined_connection() {
    let (e, i) = conversation(1);
    assert!(looks_like_frames(&e[PREFACE.len()..]));
    assert!(looks_like_frames(&i));
    assert!(!looks_like_frames(b"POST /v1/chat/completions HTTP/1.1\r\n"));
    assert!(!looks_like_frames(b""));
    // A frame longer than the data (found by the fuzzer: must not underflow).
    assert!(!looks_like_frames(&[0, 0, 100, 0, 0, 0, 0, 0, 1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]));
}

#[test]
fn a_stream_nothing_records_is_named_once_and_only_its_data_may_be_skipped() {
    let mut enc = Encoder::new();
    let mut e = PREFACE.to_vec();
    let get = headers(&mut enc, &[(":method", "GET"), (":authority", "example.com"), (":path", "/big")]);
    e.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get));
    let mut c = H2Connection::<()>::new(1 << 20);
    let (mut lost, mut out) = (Lost::default(), Vec::new());
    c.on_egress(&e, 1, &mut llm, &mut lost).unwrap();
    // Nothing named yet: no skip fits, not even at a frame's start.
    assert!(c.skip_ingress(1).is_err());
    let mut c = H2Connection::<()>::new(1 << 20);
    c.on_egress(&e, 1, &mut llm, &mut lost).unwrap();
    let mut srv = Encoder::new();
    let mut i = frame(HEADERS, END_HEADERS, 1, &headers(&mut srv, &[(":status", "200")]));
    i.extend(frame(DATA, 0, 1, &[7; 100]));
    c.on_ingress(&i, 1, &mut out, &mut lost).unwrap();
    assert_eq!(c.take_mute(5), Some((5, 1)));
    assert_eq!(c.take_mute(5), None);
    // At a frame's start, with a stream named: whole frames skipped, headers and all.
    c.skip_ingress(5000).unwrap();
    assert_eq!(c.buffered(), 0, "nothing of them is held");
    // Half a header: the kernel keeps a split header's rest, so no skip.
    c.on_ingress(&frame(DATA, 0, 1, &[0; 300])[..4], 1, &mut out, &mut lost).unwrap();
    assert!(c.skip_ingress(1).is_err());
    let mut c = H2Connection::<()>::new(1 << 20);
    c.on_egress(&e, 1, &mut llm, &mut lost).unwrap();
    c.on_ingress(&i, 1, &mut out, &mut lost).unwrap();
    assert_eq!(c.take_mute(5), Some((5, 1)));
    // A later frame's header, then its payload skipped in two parts, the
    // second going on past its end (frames after it skipped whole).
    c.on_ingress(&frame(DATA, 0, 1, &[0; 300])[..9], 1, &mut out, &mut lost).unwrap();
    c.skip_ingress(200).unwrap();
    c.skip_ingress(100 + 16_393).unwrap();
    assert_eq!(c.buffered(), 309, "the frame's payload given back, the frames after it not");
    c.on_ingress(&frame(DATA, END_STREAM, 1, &[1; 10]), 1, &mut out, &mut lost).unwrap();
    assert_eq!(c.take_mute(5), None, "named once");
    assert_eq!((c.buffered(), out.len()), (0, 0));
    // The stream ended: its frames are no longer skippable, nor whole frames
    // with no stream named; nor are a recorded stream's, nor a header block's.
    assert!(c.skip_ingress(1).is_err(), "no stream named any more");
    c.on_ingress(&frame(DATA, 0, 1, &[0; 300])[..9], 1, &mut out, &mut lost).unwrap();
    assert!(c.skip_ingress(1).is_err());
    let mut c = H2Connection::<()>::new(1 << 20);
    let (egress, ingress) = conversation(1);
    c.on_egress(&egress, 1, &mut llm, &mut lost).unwrap();
    // The last two frames: DATA padded (6 bytes), DATA (9 bytes).
    let data_at = ingress.len() - (FRAME_HEADER + 9) - (FRAME_HEADER + 6);
    assert_eq!(ingress[data_at + 3], DATA);
    c.on_ingress(&ingress[..data_at + FRAME_HEADER], 1, &mut out, &mut lost).unwrap();
    assert!(c.skip_ingress(1).is_err(), "a recorded stream's DATA");
    assert_eq!(lost, Lost::default());
}

proptest! {
    #[test]
    fn split_anywhere_gives_the_same_exchanges(split in 1usize..200) {
        let (e, i) = conversation(4);
        let (out, lost, _) = run(&e, &i, split);
        prop_assert_eq!(out.len(), 4);
        prop_assert_eq!(lost, Lost::default());
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600), ing in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut c = H2Connection::new(4096);
        let mut lost = Lost::default();
        let mut e = PREFACE.to_vec();
        e.extend(&data);
        let _ = c.on_egress(&e, 1, &mut |_| Some(()), &mut lost);
        let _ = c.on_ingress(&ing, 2, &mut Vec::new(), &mut lost);
        prop_assert!(c.buffered() <= 1200 + 4096 * 2);
    }
}
