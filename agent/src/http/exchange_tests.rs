use super::*;
use crate::http::mute::{Mute, StreamAt};

pub(super) fn llm(h: &Head) -> Option<()> {
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

/// A connection that ends while a request's body is still being written
/// (the client gave up mid-upload, or the server or the network ended it):
/// that call is counted, as one waiting for its answer is.
#[test]
fn close_mid_request_counts_the_call_being_written() {
    let mut c = HttpConnection::<()>::new(1 << 20);
    let (mut lost, mut out, mut cap) = (Lost::default(), Vec::new(), llm);
    c.on_egress(b"GET /health HTTP/1.1\r\n\r\n", 1, &mut cap, &mut lost);
    c.on_ingress(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2, &mut out, &mut lost);
    c.on_egress(b"POST /v1/x HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"a\"", 3, &mut cap, &mut lost);
    c.close(4, &mut out, &mut lost);
    assert!(out.is_empty());
    assert_eq!(lost, Lost { unanswered: 1, ..Lost::default() });
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
