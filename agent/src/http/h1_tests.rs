use super::*;

fn all(_: &Head) -> bool {
    true
}

fn feed(p: &mut Parser, pieces: &[&[u8]]) -> Vec<Message> {
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        p.push(piece, i as u64 + 1, &mut all, &mut out).unwrap();
    }
    out
}

#[test]
fn request_with_content_length_split_everywhere() {
    let raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 11\r\n\r\nhello world";
    for split in 0..raw.len() {
        let mut p = Parser::new(Kind::Request, 1 << 20);
        let out = feed(&mut p, &[&raw[..split], &raw[split..]]);
        assert_eq!(out.len(), 1, "split at {split}");
        assert_eq!(out[0].body, b"hello world");
        assert_eq!(out[0].head.path.as_deref(), Some("/v1/chat/completions"));
        assert_eq!(out[0].head.header("host"), Some("api.openai.com"));
        assert!(!p.in_message());
    }
}

#[test]
fn chunked_response_byte_by_byte_with_trailers() {
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
    let mut p = Parser::new(Kind::Response, 1 << 20);
    p.expect(Expect { head_request: false, capture: true });
    let pieces: Vec<&[u8]> = raw.chunks(1).collect();
    let out = feed(&mut p, &pieces);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].body, b"hello world");
    assert_eq!(out[0].head.status, Some(200));
    assert!(!out[0].body_truncated);
    assert!(out[0].complete);
}

#[test]
fn partial_message_on_close() {
    let mut p = Parser::new(Kind::Response, 1 << 20);
    p.expect(Expect { head_request: false, capture: true });
    let out = feed(&mut p, &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ndata\r\n"]);
    assert!(out.is_empty());
    let m = p.take_partial().unwrap();
    assert!(!m.complete);
    assert_eq!(m.body, b"data");
    assert!(p.take_partial().is_none());
}

#[test]
fn keep_alive_pipelined_responses_and_head_requests() {
    let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    let mut p = Parser::new(Kind::Response, 1 << 20);
    p.expect(Expect { head_request: false, capture: true });
    p.expect(Expect { head_request: true, capture: true });
    p.expect(Expect { head_request: false, capture: true });
    let out = feed(&mut p, &[raw]);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].body, b"abc");
    assert!(out[1].body.is_empty());
    assert_eq!(out[2].head.status, Some(204));
}

#[test]
fn body_until_close() {
    let mut p = Parser::new(Kind::Response, 1 << 20);
    p.expect(Expect { head_request: false, capture: true });
    let out = feed(&mut p, &[b"HTTP/1.0 200 OK\r\n\r\nsome", b" data"]);
    assert!(out.is_empty());
    let m = p.close(9).unwrap();
    assert!(m.complete);
    assert_eq!(m.body, b"some data");
    assert_eq!(m.last_ts, 9);
}

#[test]
fn body_cap_truncates_but_keeps_framing() {
    let mut p = Parser::new(Kind::Response, 4);
    p.expect(Expect { head_request: false, capture: true });
    p.expect(Expect { head_request: false, capture: true });
    let out = feed(
        &mut p,
        &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].body, b"0123");
    assert!(out[0].body_truncated);
    assert_eq!(out[1].body, b"ok");
}

#[test]
fn uncaptured_bodies_are_not_buffered() {
    let mut p = Parser::new(Kind::Request, 1 << 20);
    let mut none = |_: &Head| false;
    let mut out = Vec::new();
    p.push(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 1, &mut none, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].body.is_empty());
    assert!(!out[0].body_captured);
}

#[test]
fn body_marks_map_offsets_to_arrival() {
    let mut p = Parser::new(Kind::Response, 1 << 20);
    p.expect(Expect { head_request: false, capture: true });
    let out = feed(&mut p, &[b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab", b"cd", b"ef"]);
    let m = &out[0];
    assert_eq!(m.ts_of_body_offset(0), Some(1));
    assert_eq!(m.ts_of_body_offset(2), Some(2));
    assert_eq!(m.ts_of_body_offset(5), Some(3));
    assert_eq!(m.ts_of_body_offset(6), None);
}

#[test]
fn garbage_is_an_error_then_ignored() {
    let mut p = Parser::new(Kind::Request, 1 << 20);
    let mut out = Vec::new();
    assert!(p.push(b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 1, &mut all, &mut out).is_err());
    assert!(p.push(b"POST / HTTP/1.1\r\n\r\n", 2, &mut all, &mut out).is_ok());
    assert!(out.is_empty());
}

#[test]
fn bad_chunk_sizes_are_errors() {
    for bad in [&b"zz\r\n"[..], b"fffffffffffffffff\r\n", b"\r\n"] {
        let mut p = Parser::new(Kind::Response, 1 << 20);
        p.expect(Expect { head_request: false, capture: true });
        let mut out = Vec::new();
        let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(bad);
        assert_eq!(p.push(&raw, 1, &mut all, &mut out), Err(H1Error::BadChunk));
    }
}

#[test]
fn oversized_head_is_rejected() {
    let mut p = Parser::new(Kind::Request, 1 << 20);
    let mut raw = b"POST / HTTP/1.1\r\nX: ".to_vec();
    raw.resize(MAX_HEAD_BYTES + 10, b'a');
    let mut out = Vec::new();
    assert_eq!(p.push(&raw, 1, &mut all, &mut out), Err(H1Error::HeadTooLarge));
    assert_eq!(p.buffered(), 0);
}

#[test]
fn skipping_an_unkept_body_counts_it_read_and_never_more_than_it_holds() {
    let mut p = Parser::new(Kind::Response, 1 << 20);
    let mut out = Vec::new();
    let mut never = |_: &Head| false;
    // A kept body (an LLM response) is never offered for skipping.
    p.expect(Expect { head_request: false, capture: true });
    p.push(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 1, &mut never, &mut out).unwrap();
    assert_eq!(p.unkept_body(), None);
    assert!(!p.skip_body(1, &mut out));
    p.push(b"0123456789", 2, &mut never, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    // One nobody keeps: the rest of it, then skipped to its end.
    p.expect(Expect::default());
    p.push(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", 3, &mut never, &mut out).unwrap();
    assert_eq!(p.unkept_body(), Some(97));
    assert!(!p.skip_body(98, &mut out));
    assert!(p.skip_body(90, &mut out));
    assert!(p.skip_body(7, &mut out));
    assert_eq!((out.len(), p.in_message(), p.unkept_body()), (2, false, None));
    assert!(out[1].complete);
    // Chunked: within a chunk's data only; close-framed: all of it.
    p.expect(Expect::default());
    p.push(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", 4, &mut never, &mut out).unwrap();
    assert_eq!(p.unkept_body(), Some(3));
    assert!(p.skip_body(3, &mut out));
    assert_eq!(p.unkept_body(), None);
    p.push(b"\r\n0\r\n\r\n", 5, &mut never, &mut out).unwrap();
    assert_eq!(out.len(), 3);
    p.expect(Expect::default());
    p.push(b"HTTP/1.1 200 OK\r\n\r\nxyz", 6, &mut never, &mut out).unwrap();
    assert_eq!(p.unkept_body(), Some(u64::MAX));
    assert!(p.skip_body(1 << 40, &mut out));
    assert!(p.close(7).is_some_and(|m| m.complete));
}
