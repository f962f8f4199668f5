use super::*;
use crate::http::mute::{Mute, StreamAt};

fn llm(h: &Head) -> Option<()> {
    h.path.as_deref().is_some_and(|p| p.starts_with("/v1/")).then_some(())
}

#[test]
fn pairs_keep_alive_requests_and_skips_non_llm() {
    let mut c = HttpConnection::<()>::new(1 << 20);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut cap = llm;
    c.on_egress(b"GET /health HTTP/1.1\r\n\r\n", 1, &mut cap, &mut lost);
    c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 2, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 3, &mut out, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{\"a\"", 4, &mut out, &mut lost);
    assert!(out.is_empty());
    c.on_ingress(b"}", 5, &mut out, &mut lost);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].exchange.request.body, b"{}");
    assert_eq!(out[0].exchange.response.body, b"{\"a\"}");
    assert_eq!(out[0].exchange.response.last_ts, 5);
    assert_eq!(lost, Lost::default());
}

#[test]
fn classifies_first_bytes() {
    let mut lost = Lost::default();
    let mut cap = llm;
    let mut c = HttpConnection::<()>::new(1024);
    c.on_egress(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1, &mut cap, &mut lost);
    assert_eq!(c.ignored(), None);
    assert!(matches!(c.state, State::Http2(_)));
    let mut c = HttpConnection::<()>::new(1024);
    c.on_egress(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0], 1, &mut cap, &mut lost);
    assert_eq!(c.ignored(), Some(Ignored::Http2Joined));
    // An HTTP/2 server: its SETTINGS first, then the client's preface arrives.
    let mut c = HttpConnection::<()>::new(1024);
    c.on_egress(&[0, 0, 0, 4, 0, 0, 0, 0, 0], 1, &mut cap, &mut lost);
    assert_eq!(c.ignored(), None);
    c.on_ingress(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 2, &mut Vec::new(), &mut lost);
    assert_eq!(c.ignored(), Some(Ignored::ServerSide));
    let mut c = HttpConnection::<()>::new(1024);
    c.on_egress(b"HTTP/1.1 200 OK\r\n", 1, &mut cap, &mut lost);
    assert_eq!(c.ignored(), Some(Ignored::ServerSide));
    let mut c = HttpConnection::<()>::new(1024);
    c.on_ingress(b"POST /v1/x HTTP/1.1\r\n", 1, &mut Vec::new(), &mut lost);
    assert_eq!(c.ignored(), Some(Ignored::ServerSide));
    let mut c = HttpConnection::<()>::new(1024);
    for i in 0..MAX_SNIFF_CALLS {
        assert_eq!(c.ignored(), None);
        c.on_egress(b"\x00\x01binary", i as u64, &mut cap, &mut lost);
    }
    assert_eq!(c.ignored(), Some(Ignored::NotHttp));
}

#[test]
fn joins_mid_stream_at_the_next_request() {
    let mut c = HttpConnection::<()>::new(1 << 20);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut cap = llm;
    // Capture began after the request was written: its response is skipped...
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1, &mut out, &mut lost);
    // ...and the next exchange is captured.
    c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 2, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 3, &mut out, &mut lost);
    assert_eq!(out.len(), 1);
    assert_eq!(lost.joined_mid_stream, 1);
    assert_eq!(c.ignored(), None);
}

/// A server whose capture began between a request's head and its body (a
/// client writes them as two TLS records): the body it reads first is not a
/// client's lost response, whether it answers or reads the next request next.
#[test]
fn a_server_first_seen_reading_a_request_body_is_not_a_join() {
    let body = b"{\"model\":\"gpt-4o-mini\",\"messages\":[]}";
    let (mut out, mut cap) = (Vec::new(), llm);
    let mut lost = Lost::default();
    let mut answers = HttpConnection::<()>::new(1 << 20);
    answers.on_ingress(body, 1, &mut out, &mut lost);
    answers.on_egress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", 2, &mut cap, &mut lost);
    assert_eq!(answers.ignored(), Some(Ignored::ServerSide));
    let mut reads_on = HttpConnection::<()>::new(1 << 20);
    reads_on.on_ingress(body, 1, &mut out, &mut lost);
    reads_on.on_ingress(b"POST /v1/chat/completions HTTP/1.1\r\n", 2, &mut out, &mut lost);
    assert_eq!(reads_on.ignored(), Some(Ignored::ServerSide));
    answers.close(3, &mut out, &mut lost);
    reads_on.close(3, &mut out, &mut lost);
    assert_eq!((lost.joined_mid_stream, lost.not_http), (0, 0));
}

/// A client first seen reading a JSON response body: a join, counted when it
/// writes its next request (which is captured) or when it ends.
#[test]
fn a_client_first_seen_reading_a_response_body_joins_at_its_next_request_or_its_end() {
    let body = b"{\"id\":\"chatcmpl-1\",\"usage\":{\"prompt_tokens\":3}}";
    let (mut out, mut cap) = (Vec::new(), llm);
    let mut lost = Lost::default();
    let mut c = HttpConnection::<()>::new(1 << 20);
    c.on_ingress(body, 1, &mut out, &mut lost);
    assert_eq!(lost.joined_mid_stream, 0, "whose body it was is not known yet");
    c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 2, &mut cap, &mut lost);
    assert_eq!(lost.joined_mid_stream, 1);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 3, &mut out, &mut lost);
    assert_eq!(out.len(), 1, "the next exchange is captured");
    let mut ends = HttpConnection::<()>::new(1 << 20);
    ends.on_ingress(body, 1, &mut out, &mut lost);
    ends.close(2, &mut out, &mut lost);
    assert_eq!((lost.joined_mid_stream, lost.not_http), (2, 0));
}

#[test]
fn close_mid_response_counts_the_loss() {
    let mut c = HttpConnection::<()>::new(1 << 20);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut cap = llm;
    c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", 2, &mut out, &mut lost);
    c.close(3, &mut out, &mut lost);
    // Handed on incomplete; the provider stage rejects it.
    assert_eq!(out.len(), 1);
    assert!(!out[0].exchange.response.complete);
    assert_eq!(out[0].exchange.response.body, b"partial");
    c.close(4, &mut out, &mut lost);
    assert_eq!(lost.unanswered, 0);
}

#[test]
fn close_completes_a_body_framed_by_close() {
    let mut c = HttpConnection::<()>::new(1 << 20);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut cap = llm;
    c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\n\r\n{}", 2, &mut out, &mut lost);
    c.close(3, &mut out, &mut lost);
    assert_eq!(out.len(), 1);
    assert_eq!(lost.unanswered, 0);
}

#[test]
fn a_gap_loses_the_exchange_in_flight_and_resumes_at_the_next_request() {
    let mut c = HttpConnection::<()>::new(1 << 20);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut cap = llm;
    let req = b"POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    c.on_egress(req, 1, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\"", 2, &mut out, &mut lost);
    // The rest of that response was lost to a full ring buffer.
    c.gap(&mut lost);
    assert_eq!((lost.unanswered, lost.resynced), (1, 1));
    assert_eq!(c.ignored(), None, "still decoded");
    // Its stray tail, and anything not a request, is skipped...
    c.on_ingress(b":1}", 3, &mut out, &mut lost);
    c.on_egress(b"garbage", 4, &mut cap, &mut lost);
    // ...until the next request, which is captured whole.
    c.on_egress(req, 5, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 6, &mut out, &mut lost);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].exchange.response.body, b"ok");
    assert_eq!(out[0].exchange.request.first_ts, 5);
    // A connection that never sends a request again is given up.
    c.gap(&mut lost);
    for i in 0..MAX_SNIFF_CALLS {
        c.on_egress(b"\x00binary", 10 + i as u64, &mut cap, &mut lost);
    }
    assert_eq!(c.ignored(), Some(Ignored::Desync));
    // HTTP/2 can't resume (HPACK state lost).
    let mut c = HttpConnection::<()>::new(1024);
    c.on_egress(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1, &mut cap, &mut lost);
    c.gap(&mut lost);
    assert_eq!(c.ignored(), Some(Ignored::Desync));
}

/// A request lost while being written (a gap in its body, or an answer
/// before its body was whole): counted, and the next request read as one.
/// Past a gap the sniffing budget counts calls, not a call's chunks.
#[test]
fn a_request_lost_while_being_written_is_counted_and_the_next_is_read() {
    let (mut lost, mut out, mut cap) = (Lost::default(), Vec::new(), llm);
    let req = b"POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    let mut c = HttpConnection::<()>::new(1 << 20);
    c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 99999\r\n\r\n{", 1, &mut cap, &mut lost);
    c.gap(&mut lost);
    assert_eq!((lost.unanswered, lost.resynced), (1, 1), "the call being written");
    for i in 0..2 * MAX_SNIFF_CALLS {
        c.chunk_starts_call(i == 0);
        c.on_egress(b"xxxx", 2, &mut cap, &mut lost);
    }
    c.chunk_starts_call(true);
    c.on_egress(req, 3, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 4, &mut out, &mut lost);
    assert_eq!(out.len(), 1, "a body of many chunks took one call of the budget");
    c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 99999\r\n\r\n{", 5, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 6, &mut out, &mut lost);
    assert_eq!((out.len(), lost.unanswered), (1, 2), "answered before its body was whole: lost, counted");
    c.on_egress(req, 7, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 8, &mut out, &mut lost);
    assert_eq!(out.len(), 2, "the next request read as one, not as that body");
    // A next request's head split across two writes, a stray answer between
    // (a server's 408 on an idle connection): not a gap, the request is read.
    c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-", 9, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n", 10, &mut out, &mut lost);
    c.on_egress(b"Length: 2\r\n\r\n{}", 11, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 12, &mut out, &mut lost);
    assert_eq!((out.len(), lost.unanswered), (3, 2));
}

/// Each exchange carries its own request's classification, across
/// pipelining, a request not worth recording in between, and a gap.
#[test]
fn each_exchange_carries_its_requests_classification() {
    let mut c: HttpConnection<String> = HttpConnection::new(1 << 20);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut path = |h: &Head| h.path.clone().filter(|p| p.starts_with("/v1/"));
    let req = |p: &str| format!("POST {p} HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}");
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    // Pipelined, and split inside the second head.
    let all = [req("/v1/a"), req("/health"), req("/v1/b")].concat();
    let (x, y) = all.as_bytes().split_at(60);
    c.on_egress(x, 1, &mut path, &mut lost);
    c.on_egress(y, 2, &mut path, &mut lost);
    for _ in 0..3 {
        c.on_ingress(ok, 3, &mut out, &mut lost);
    }
    // A head read, then bytes lost before the end of its body.
    c.on_egress(b"POST /v1/lost HTTP/1.1\r\nContent-Length: 9\r\n\r\n{", 4, &mut path, &mut lost);
    c.gap(&mut lost);
    c.on_egress(req("/v1/c").as_bytes(), 5, &mut path, &mut lost);
    c.on_ingress(ok, 6, &mut out, &mut lost);
    let got: Vec<_> = out.iter().map(|x| (x.endpoint.as_str(), x.exchange.request.head.path.as_deref())).collect();
    assert_eq!(got, [("/v1/a", Some("/v1/a")), ("/v1/b", Some("/v1/b")), ("/v1/c", Some("/v1/c"))]);
}

#[test]
fn chunks_dispatch_by_direction_skip_holes_and_cap_what_is_held() {
    let mut c = HttpConnection::<()>::new(10_000);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut cap = llm;
    let req = b"POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut chunk = |c: &mut HttpConnection, d, cont, data: &[u8], out: &mut Vec<_>| {
        c.on_chunk(d, cont, StreamAt::default(), data, 1, &mut cap, out, &mut lost)
    };
    assert_eq!(chunk(&mut c, Direction::Egress, Continuity::InOrder, req, &mut out), Held::Within);
    // A chunk with a hole of its own is not decoded.
    assert_eq!(chunk(&mut c, Direction::Ingress, Continuity::Gap, ok, &mut out), Held::Within);
    assert!(out.is_empty());
    // A whole call after a hole is.
    assert_eq!(chunk(&mut c, Direction::Egress, Continuity::GapBefore, req, &mut out), Held::Within);
    assert_eq!(chunk(&mut c, Direction::Ingress, Continuity::InOrder, ok, &mut out), Held::Within);
    assert_eq!(out.len(), 1);
    // Requests never answered pile up past two bodies' worth.
    let big = [&b"POST /v1/x HTTP/1.1\r\nContent-Length: 10000\r\n\r\n"[..], &[b'y'; 10_000]].concat();
    let held: Vec<Held> =
        (0..40).map(|_| chunk(&mut c, Direction::Egress, Continuity::InOrder, &big, &mut out)).collect();
    assert_eq!(held.iter().filter(|h| **h == Held::OverCap).count(), 1);
    assert_eq!(c.ignored(), Some(Ignored::Desync));
    assert!(lost.unanswered >= 14);
}

#[test]
fn malformed_response_desyncs_and_counts() {
    let mut c = HttpConnection::<()>::new(1 << 20);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut cap = llm;
    c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 1, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nXYZ\r\n", 2, &mut out, &mut lost);
    assert_eq!(c.ignored(), Some(Ignored::Desync));
    assert_eq!(lost.unanswered, 1);
}

/// A connection fed as the kernel would with muting: ingress chunks carry
/// their stream position, and the reads inside a range asked for are skipped.
struct Muted {
    c: HttpConnection<()>,
    pos: u64,
    range: Option<(u64, u64)>,
    out: Vec<Classified<()>>,
    lost: Lost,
    skipped: u64,
}

impl Muted {
    fn new() -> Self {
        let c = HttpConnection::<()>::new(1 << 20);
        Self { c, pos: 1 << 40, range: None, out: Vec::new(), lost: Lost::default(), skipped: 0 }
    }

    fn send(&mut self, data: &[u8]) {
        let mut cap = llm;
        let held = self.c.on_chunk(
            Direction::Egress,
            Continuity::InOrder,
            StreamAt::default(),
            data,
            1,
            &mut cap,
            &mut self.out,
            &mut self.lost,
        );
        assert_eq!(held, Held::Within);
    }

    /// One read of `data`: skipped when wholly inside the range (the kernel's rule).
    fn read(&mut self, data: &[u8]) {
        let (at, end) = (self.pos, self.pos + data.len() as u64);
        self.pos = end;
        if self.range.is_some_and(|(from, to)| at >= from && end <= to) {
            self.skipped += data.len() as u64;
            return;
        }
        let mut cap = llm;
        let held = self.c.on_chunk(
            Direction::Ingress,
            Continuity::InOrder,
            StreamAt { base: 1, pos: at },
            data,
            2,
            &mut cap,
            &mut self.out,
            &mut self.lost,
        );
        assert_eq!(held, Held::Within);
        if let Some(Mute::Range { from, to }) = self.c.take_mute() {
            self.range = Some((from, to));
        }
    }

    /// The LLM call after the muted body was paired whole, nothing lost.
    fn assert_one_llm_call(&self) {
        assert_eq!(self.out.len(), 1);
        assert_eq!(self.out[0].exchange.response.body, b"{\"\"}");
        assert_eq!(self.lost, Lost::default());
    }
}

const LLM_REQ: &[u8] = b"POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
const LLM_RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{\"\"}";

#[test]
fn a_download_is_muted_and_the_llm_call_after_it_on_the_connection_is_read() {
    let mut m = Muted::new();
    let body = 1u64 << 20;
    m.send(b"GET /file HTTP/1.1\r\n\r\n");
    m.read(format!("HTTP/1.1 200 OK\r\nContent-Length: {body}\r\n\r\n").as_bytes());
    let (from, to) = m.range.expect("a range asked for the body");
    assert_eq!(to - from, body);
    // 64 reads of 16 KiB: all inside, all skipped.
    for _ in 0..64 {
        m.read(&[b'x'; 16384]);
    }
    assert_eq!(m.skipped, body);
    m.send(LLM_REQ);
    m.read(LLM_RESP);
    m.assert_one_llm_call();
}

#[test]
fn a_late_range_covers_only_the_body_even_when_the_next_call_was_already_sent() {
    let mut m = Muted::new();
    m.send(b"GET /file HTTP/1.1\r\n\r\n");
    // The client pipelines the LLM call before the download ends; the body's
    // last read also carries the LLM response's head: it is copied whole.
    m.send(LLM_REQ);
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    m.read(head);
    assert!(m.range.is_some());
    for _ in 0..5 {
        m.read(&[b'y'; 16384]);
    }
    let tail = [&[b'y'; 100_000 - 5 * 16384][..], LLM_RESP].concat();
    m.read(&tail);
    assert_eq!(m.skipped, 5 * 16384);
    m.assert_one_llm_call();
}

#[test]
fn small_captured_or_chunked_bodies_and_unexplained_jumps() {
    // A small body is copied; an LLM response is never muted, however large.
    let mut m = Muted::new();
    m.send(b"GET /small HTTP/1.1\r\n\r\n");
    m.read(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
    assert_eq!(m.range, None);
    m.read(&[b'z'; 1000]);
    m.send(LLM_REQ);
    m.read(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n");
    assert_eq!(m.range, None);
    // A big chunk of a chunked body is muted up to its end.
    let mut m = Muted::new();
    m.send(b"GET /chunks HTTP/1.1\r\n\r\n");
    m.read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n");
    let (from, to) = m.range.expect("a range for the chunk");
    assert_eq!(to - from, 0x10000);
    for _ in 0..4 {
        m.read(&[b'c'; 16384]);
    }
    m.read(b"\r\n0\r\n\r\n");
    m.send(LLM_REQ);
    m.read(LLM_RESP);
    assert_eq!((m.skipped, m.out.len()), (0x10000, 1));
    // A jump past the range is not the range's doing: nothing is skipped
    // on its account (the chunk flags and loss counters tell of losses).
    let mut c = HttpConnection::<()>::new(1 << 20);
    let (mut out, mut lost, mut cap) = (Vec::new(), Lost::default(), llm);
    let mut chunk = |c: &mut HttpConnection, d, pos, data: &[u8]| {
        let at = StreamAt { base: 1, pos };
        let held = c.on_chunk(d, Continuity::InOrder, at, data, 1, &mut cap, &mut out, &mut lost);
        assert_eq!(held, Held::Within);
    };
    chunk(&mut c, Direction::Egress, 0, b"GET / HTTP/1.1\r\n\r\n");
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n";
    chunk(&mut c, Direction::Ingress, 100, head);
    let Some(Mute::Range { from, to }) = c.take_mute() else { panic!("no range muted") };
    assert_eq!((from, to), (100 + head.len() as u64, 100 + head.len() as u64 + 50_000));
    chunk(&mut c, Direction::Ingress, to + 1, b"x");
    assert_eq!(c.resp.unkept_body(), Some(49_999), "the body's count moved by the byte seen only");
    assert_eq!(lost, Lost::default());
}

#[test]
fn calls_in_flight_are_the_llm_calls_begun_and_not_complete() {
    let mut c = HttpConnection::<()>::new(1 << 20);
    let mut lost = Lost::default();
    let mut out = Vec::new();
    let mut cap = llm;
    assert_eq!(c.calls_in_flight(), 0, "nothing yet");
    // A non-LLM exchange holds nothing a handover waits for.
    c.on_egress(b"GET /health HTTP/1.1\r\n\r\n", 1, &mut cap, &mut lost);
    assert_eq!(c.calls_in_flight(), 0);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 2, &mut out, &mut lost);
    // A request head whose body is still being written is in flight...
    c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n", 3, &mut cap, &mut lost);
    assert_eq!(c.calls_in_flight(), 1);
    c.on_egress(b"{}", 4, &mut cap, &mut lost);
    assert_eq!(c.calls_in_flight(), 1, "sent, waiting for its response");
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{\"a\"", 5, &mut out, &mut lost);
    assert_eq!(c.calls_in_flight(), 1, "part of the response read");
    c.on_ingress(b"}", 6, &mut out, &mut lost);
    assert_eq!((c.calls_in_flight(), out.len()), (0, 1), "complete: recorded, nothing in flight");
}

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
