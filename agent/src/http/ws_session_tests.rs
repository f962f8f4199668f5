//! A WebSocket session through the connection that carries it: the upgrade,
//! frames both ways (masked, fragmented, compressed with and without context
//! takeover, cut anywhere), calls grouped by role, losses counted.
use serde_json::{json, Value};

use super::*;
use crate::http::exchange::{HttpConnection, Ignored};
use crate::http::websocket::tests::{deflate, frame};
use crate::Noise;

/// Roles keyed on `type`, as the Responses API has them.
#[derive(Clone, Debug, PartialEq)]
struct Api;

impl WsCalls for Api {
    fn ws_role(&self, from_client: bool, msg: &Value) -> WsRole {
        match (from_client, msg["type"].as_str().unwrap_or("")) {
            (true, "setup") => WsRole::Session,
            (true, "create") => WsRole::Request,
            (false, "created") => WsRole::Event,
            (false, "delta") => WsRole::Content,
            (false, "done") => WsRole::End,
            (false, "error") => WsRole::Error(429),
            _ => WsRole::Ignore,
        }
    }

    fn ws_request(&self, _: &str, session: [Option<&Value>; 2], request: Option<&Value>) -> Value {
        json!({"session": session[0].cloned(), "request": request.cloned()})
    }
}

const UPGRADE: &[u8] = b"GET /v1/x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

fn switched(extensions: &str) -> Vec<u8> {
    let ext = if extensions.is_empty() { String::new() } else { format!("Sec-WebSocket-Extensions: {extensions}\r\n") };
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nx-request-id: r-9\r\n{ext}\r\n")
        .into_bytes()
}

/// One direction's sender: masks (client) and compresses as negotiated.
pub(crate) struct Sender {
    mask: Option<[u8; 4]>,
    deflate: Option<(flate2::Compress, bool)>,
}

impl Sender {
    pub(crate) fn new(client: bool, deflate: Option<bool>) -> Self {
        Sender {
            mask: client.then_some([1, 2, 3, 4]),
            deflate: deflate.map(|reset| (flate2::Compress::new(flate2::Compression::default(), false), reset)),
        }
    }

    /// A message as frames of at most `frag` payload bytes.
    pub(crate) fn send(&mut self, v: &Value, frag: usize) -> Vec<u8> {
        let mut payload = serde_json::to_vec(v).unwrap();
        let compressed = self.deflate.is_some();
        if let Some((c, reset)) = &mut self.deflate {
            if *reset {
                c.reset();
            }
            payload = deflate(c, &payload);
        }
        let pieces: Vec<&[u8]> = payload.chunks(frag.max(1)).collect();
        let mut out = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let (first, last) = (i == 0, i + 1 == pieces.len());
            out.extend(frame(last, first && compressed, if first { 1 } else { 0 }, p, self.mask));
        }
        out
    }
}

struct Session {
    conn: HttpConnection<Api>,
    out: Vec<Classified<Api>>,
    lost: Lost,
    ts: u64,
}

impl Session {
    fn open(extensions: &str) -> Self {
        let mut s = Session { conn: HttpConnection::new(1 << 20), out: Vec::new(), lost: Lost::default(), ts: 0 };
        s.egress(UPGRADE);
        s.ingress(&switched(extensions));
        s
    }

    fn egress(&mut self, b: &[u8]) {
        self.ts += 1;
        self.conn.on_egress(b, self.ts, &mut |_: &Head| Some(Api), &mut self.lost);
    }

    fn ingress(&mut self, b: &[u8]) {
        self.ts += 1;
        self.conn.on_ingress(b, self.ts, &mut self.out, &mut self.lost);
    }

    /// One direction's bytes (`client`: egress) cut at random places; `after`
    /// runs after each piece.
    fn cut(&mut self, client: bool, bytes: &[u8], noise: &mut Noise, mut after: impl FnMut(&mut Self)) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = (noise.next() as usize % 40 + 1).min(rest.len());
            let (piece, tail) = rest.split_at(n);
            if client {
                self.egress(piece);
            } else {
                self.ingress(piece);
            }
            rest = tail;
            after(self);
        }
    }
}

fn body(m: &Message) -> Value {
    serde_json::from_slice(&m.body).unwrap()
}

fn events(m: &Message) -> Vec<String> {
    String::from_utf8(m.body.clone()).unwrap().lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

#[test]
fn calls_are_grouped_by_role_and_handed_on_as_streams() {
    let mut s = Session::open("");
    let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
    s.egress(&up.send(&json!({"type":"setup","model":"m"}), 1000));
    s.egress(&up.send(&json!({"type":"create","n":1}), 1000));
    s.ingress(&down.send(&json!({"type":"created"}), 1000));
    for i in 0..5 {
        s.ingress(&down.send(&json!({"type":"delta","d":i}), 1000));
    }
    s.ingress(&down.send(&json!({"type":"ping"}), 1000));
    assert!(s.out.is_empty());
    s.ingress(&down.send(&json!({"type":"done","usage":7}), 1000));
    assert_eq!(s.out.len(), 1);
    let ex = &s.out[0].exchange;
    assert_eq!(body(&ex.request), json!({"session":{"type":"setup","model":"m"},"request":{"type":"create","n":1}}));
    assert_eq!(ex.request.head.path.as_deref(), Some("/v1/x"));
    assert_eq!(ex.response.head.status, Some(200));
    assert_eq!(ex.response.head.header("content-type"), Some("text/event-stream"));
    assert_eq!(ex.response.head.header("x-request-id"), Some("r-9"));
    // The first content event is kept, later ones and ignored ones are not.
    assert_eq!(
        events(&ex.response),
        [r#"data: {"type":"created"}"#, r#"data: {"d":0,"type":"delta"}"#, r#"data: {"type":"done","usage":7}"#]
    );
    // Each event's time is kept: the first content is the fourth message's.
    assert_eq!(ex.response.ts_of_body_offset(events(&ex.response)[0].len() + 5), Some(ex.request.first_ts + 2));
    assert_eq!((ex.request.first_ts, ex.response.last_ts), (4, 12));
    // A second call on the same connection; the error role gives its status.
    s.egress(&up.send(&json!({"type":"create","n":2}), 1000));
    s.ingress(&down.send(&json!({"type":"error"}), 1000));
    assert_eq!(s.out.len(), 2);
    assert_eq!(s.out[1].exchange.response.head.status, Some(429));
    assert_eq!(s.lost, Lost::default());
    assert_eq!(s.conn.ignored(), None);
}

#[test]
fn compressed_fragmented_messages_cut_anywhere_give_the_same_calls() {
    for ext in ["permessage-deflate", "permessage-deflate; client_no_context_takeover; server_no_context_takeover", ""]
    {
        let d = Deflate::negotiated(ext);
        let (mut up, mut down) = (
            Sender::new(true, d.map(|d| d.client_no_context_takeover)),
            Sender::new(false, d.map(|d| d.server_no_context_takeover)),
        );
        let mut script: Vec<(bool, Vec<u8>)> = Vec::new();
        for n in 0..4 {
            let text = "x".repeat(300 * n);
            script.push((true, up.send(&json!({"type":"create","n":n,"text":text}), 7 + n)));
            script.push((false, down.send(&json!({"type":"created","n":n}), 5)));
            script.push((false, down.send(&json!({"type":"delta","d":text}), 64)));
            script.push((false, down.send(&json!({"type":"done","n":n}), 1000)));
        }
        let mut noise = Noise(ext.len() as u64 + 1);
        let mut s = Session::open(ext);
        for (client, bytes) in &script {
            s.cut(*client, bytes, &mut noise, |_| {});
        }
        let got: Vec<(u64, u64)> =
            s.out.iter().map(|c| (body(&c.exchange.request)["request"]["n"].as_u64().unwrap(), 0)).collect();
        assert_eq!(got, [(0, 0), (1, 0), (2, 0), (3, 0)], "{ext}");
        assert_eq!(s.lost, Lost::default(), "{ext}");
    }
}

#[test]
fn the_first_server_bytes_may_arrive_with_the_101() {
    let mut s = Session { conn: HttpConnection::new(1 << 20), out: Vec::new(), lost: Lost::default(), ts: 0 };
    let mut down = Sender::new(false, None);
    s.egress(UPGRADE);
    let mut bytes = switched("");
    // The server begins a response by itself, in the 101's read.
    bytes.extend(down.send(&json!({"type":"created"}), 100));
    s.ingress(&bytes);
    s.ingress(&down.send(&json!({"type":"done"}), 100));
    assert_eq!(s.out.len(), 1);
    assert_eq!(body(&s.out[0].exchange.request), json!({"session":null,"request":null}));
}

#[test]
fn losses_are_counted_and_garbage_stops_decoding() {
    // A response under way when the connection closes is lost, and so is the
    // request waiting for it to end (not before: it may yet end).
    let mut s = Session::open("");
    let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
    s.egress(&up.send(&json!({"type":"create"}), 100));
    s.ingress(&down.send(&json!({"type":"created"}), 100));
    s.egress(&up.send(&json!({"type":"create"}), 100));
    assert_eq!(s.lost.unanswered, 0);
    s.conn.close(99, &mut s.out, &mut s.lost);
    assert_eq!((s.lost.unanswered, s.out.len()), (2, 0));
    // Garbage: decoding stops, counted as a malformed WebSocket.
    let mut s = Session::open("");
    s.egress(&up.send(&json!({"type":"create"}), 100));
    s.ingress(&[0xff; 16]);
    assert_eq!(s.conn.ignored(), Some(Ignored::WebSocket));
    assert_eq!(s.lost.unanswered, 1);
    // RSV1 where no deflate was agreed is garbage too.
    let mut s = Session::open("");
    s.ingress(&frame(true, true, 1, b"{}", None));
    assert_eq!(s.conn.ignored(), Some(Ignored::WebSocket));
    // A gap in a frame stream can't be resumed.
    let mut s = Session::open("permessage-deflate");
    s.conn.gap(&mut s.lost);
    assert_eq!(s.conn.ignored(), Some(Ignored::Desync));
}

#[test]
fn what_is_kept_is_bounded() {
    let mut s = Session { conn: HttpConnection::new(4096), out: Vec::new(), lost: Lost::default(), ts: 0 };
    s.egress(UPGRADE);
    s.ingress(&switched(""));
    let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
    s.egress(&up.send(&json!({"type":"create"}), 100));
    // Many events: the call keeps at most the cap, and says it was cut.
    for i in 0..200 {
        s.ingress(&down.send(&json!({"type":"created","i":i,"pad":"p".repeat(50)}), 1000));
        assert!(s.conn.buffered() <= 4096 + 64, "{}", s.conn.buffered());
    }
    s.ingress(&down.send(&json!({"type":"done"}), 1000));
    assert_eq!(s.out.len(), 1);
    assert!(s.out[0].exchange.response.body_truncated);
    // A message over the cap ends decoding.
    s.ingress(&down.send(&json!({"type":"delta","d":"d".repeat(5000)}), 100_000));
    assert_eq!(s.conn.ignored(), Some(Ignored::WebSocket));
}

#[test]
fn kept_messages_are_held_bytes_within_the_cap() {
    let mut s = Session { conn: HttpConnection::new(4096), out: Vec::new(), lost: Lost::default(), ts: 0 };
    s.egress(UPGRADE);
    s.ingress(&switched(""));
    let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
    let setup = json!({"type":"setup","pad":"s".repeat(1000)});
    s.egress(&up.send(&setup, 100_000));
    let held = s.conn.buffered();
    assert!(held > 1000, "{held}");
    // A request that does not fit beside the session: its call goes on
    // without it, and it is counted.
    s.egress(&up.send(&json!({"type":"create","pad":"r".repeat(3500)}), 100_000));
    assert_eq!(s.lost.ws_messages_dropped, 1);
    assert!(s.conn.buffered() < held + 100, "{}", s.conn.buffered());
    s.ingress(&down.send(&json!({"type":"done"}), 1000));
    let ex = &s.out[0].exchange;
    assert_eq!(body(&ex.request), json!({"session":setup,"request":null}));
    assert!(ex.request.body_truncated);
    // One that fits is kept, and held.
    s.egress(&up.send(&json!({"type":"create","pad":"r".repeat(2500)}), 100_000));
    assert!(s.conn.buffered() > 3500, "{}", s.conn.buffered());
    // A session message that does not fit: the session is unknown from then on.
    s.egress(&up.send(&json!({"type":"setup","pad":"t".repeat(2000)}), 100_000));
    assert_eq!(s.lost.ws_messages_dropped, 2);
    s.ingress(&down.send(&json!({"type":"done"}), 1000));
    let req = body(&s.out[1].exchange.request);
    assert_eq!((&req["session"], req["request"]["pad"].as_str().map(str::len)), (&Value::Null, Some(2500)));
    assert!(!s.out[1].exchange.request.body_truncated);
    assert_eq!(s.lost.unanswered, 0);
}

#[test]
fn an_error_with_no_call_open_is_no_call() {
    let mut s = Session::open("");
    let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
    // Before any request, and after the call ended.
    s.ingress(&down.send(&json!({"type":"error"}), 100));
    s.egress(&up.send(&json!({"type":"create"}), 100));
    s.ingress(&down.send(&json!({"type":"done"}), 100));
    s.ingress(&down.send(&json!({"type":"error"}), 100));
    s.conn.close(99, &mut s.out, &mut s.lost);
    assert_eq!(s.out.iter().map(|c| c.exchange.response.head.status).collect::<Vec<_>>(), [Some(200)]);
    assert_eq!(s.lost, Lost::default());
}

#[test]
fn a_request_made_while_a_response_streams_waits_for_it() {
    let mut s = Session::open("");
    let (mut up, mut down) = (Sender::new(true, None), Sender::new(false, None));
    let mut send = |s: &mut Session, client: bool, v: Value| {
        if client {
            s.egress(&up.send(&v, 100));
        } else {
            s.ingress(&down.send(&v, 100));
        }
    };
    // Answered in turn: each call has its own request and events.
    send(&mut s, true, json!({"type":"create","n":1}));
    send(&mut s, false, json!({"type":"created","r":1}));
    send(&mut s, true, json!({"type":"create","n":2}));
    send(&mut s, false, json!({"type":"done","r":1}));
    send(&mut s, false, json!({"type":"created","r":2}));
    send(&mut s, false, json!({"type":"done","r":2}));
    let calls = |s: &Session| -> Vec<(Value, Option<u16>, usize)> {
        let r = |c: &Classified<Api>| body(&c.exchange.request)["request"]["n"].clone();
        s.out.iter().map(|c| (r(c), c.exchange.response.head.status, events(&c.exchange.response).len())).collect()
    };
    assert_eq!(calls(&s), [(json!(1), Some(200), 2), (json!(2), Some(200), 2)]);
    assert!(events(&s.out[1].exchange.response).iter().all(|e| e.contains(r#""r":2"#)));
    assert_eq!(s.out[1].exchange.request.first_ts, s.out[0].exchange.request.first_ts + 2);
    // Refused while one streams: the error is the waiting request's, the
    // response under way goes on.
    send(&mut s, true, json!({"type":"create","n":3}));
    send(&mut s, false, json!({"type":"created","r":3}));
    send(&mut s, true, json!({"type":"create","n":4}));
    send(&mut s, false, json!({"type":"error"}));
    send(&mut s, false, json!({"type":"done","r":3}));
    assert_eq!(calls(&s)[2..], [(json!(4), Some(429), 1), (json!(3), Some(200), 2)]);
    assert_eq!(s.lost, Lost::default());
    // Cut off with one waiting: each request is lost once.
    send(&mut s, true, json!({"type":"create","n":5}));
    send(&mut s, false, json!({"type":"created","r":5}));
    send(&mut s, true, json!({"type":"create","n":6}));
    s.conn.close(99, &mut s.out, &mut s.lost);
    assert_eq!((s.out.len(), s.lost.unanswered), (4, 2));
}

#[test]
fn other_upgrades_are_not_decoded() {
    // A WebSocket the classifier did not tag, and another protocol.
    let mut lost = Lost::default();
    let mut c = HttpConnection::<Api>::new(1 << 20);
    c.on_egress(UPGRADE, 1, &mut |_: &Head| None, &mut lost);
    c.on_ingress(&switched(""), 2, &mut Vec::new(), &mut lost);
    assert_eq!(c.ignored(), Some(Ignored::Upgraded));
    let mut c = HttpConnection::<Api>::new(1 << 20);
    c.on_egress(b"GET /x HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", 1, &mut |_: &Head| Some(Api), &mut lost);
    c.on_ingress(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", 2, &mut Vec::new(), &mut lost);
    assert_eq!(c.ignored(), Some(Ignored::Upgraded));
    assert_eq!(lost, Lost::default());
}

/// The session the script gives: each call's request and events.
fn calls_of(s: &Session) -> Vec<(Value, Vec<String>)> {
    s.out.iter().map(|c| (body(&c.exchange.request), events(&c.exchange.response))).collect()
}

#[test]
fn a_session_handed_to_another_agent_anywhere_goes_on_with_the_same_calls() {
    for ext in ["permessage-deflate", "permessage-deflate; client_no_context_takeover; server_no_context_takeover", ""]
    {
        let d = Deflate::negotiated(ext);
        let (mut up, mut down) = (
            Sender::new(true, d.map(|d| d.client_no_context_takeover)),
            Sender::new(false, d.map(|d| d.server_no_context_takeover)),
        );
        // The same long text again and again: with the context kept, each
        // message refers back into the ones before.
        let text: String = (0..300u64).map(|i| format!("w{} ", i * 7919 % 1009)).collect();
        let mut script: Vec<(bool, Vec<u8>)> = vec![(true, up.send(&json!({"type":"setup","model":"m"}), 1000))];
        for n in 0..6 {
            script.push((true, up.send(&json!({"type":"create","n":n,"text":text}), 100)));
            script.push((false, down.send(&json!({"type":"created","n":n}), 5)));
            script.push((false, down.send(&json!({"type":"delta","d":text}), 64)));
            script.push((false, down.send(&json!({"type":"done","n":n}), 1000)));
        }
        if ext == "permessage-deflate" {
            let (first, later) = (script[1].1.len(), script[5].1.len());
            assert!(later * 4 < first, "back-references into earlier messages: {later} vs {first}");
        }
        let run = |every: usize| {
            let mut noise = Noise(7);
            let mut s = Session::open(ext);
            let mut pieces = 0;
            for (client, bytes) in &script {
                s.cut(*client, bytes, &mut noise, |s| {
                    pieces += 1;
                    // Mid-header, mid-frame, mid-message: wherever the old agent stopped.
                    if every > 0 && pieces % every == 0 {
                        assert!(s.conn.hands_off());
                        let state = s.conn.hand_off(1 << 20).expect("a state");
                        s.conn = HttpConnection::resume(&state, 1 << 20, &mut |_: &Head| Some(Api)).expect("resumed");
                    }
                });
            }
            assert_eq!(s.lost, Lost::default(), "{ext}");
            calls_of(&s)
        };
        let whole = run(0);
        assert_eq!(whole.len(), 6, "{ext}");
        for every in [1, 3, 17, 50] {
            assert_eq!(run(every), whole, "{ext}, handed on every {every} pieces");
        }
    }
}

#[test]
fn a_session_state_cut_or_garbled_is_an_error_not_a_panic() {
    let mut s = Session::open("permessage-deflate");
    let (mut up, mut down) = (Sender::new(true, Some(false)), Sender::new(false, Some(false)));
    s.egress(&up.send(&json!({"type":"create","n":1}), 1000));
    s.ingress(&down.send(&json!({"type":"created","text":"x".repeat(5000)}), 1000));
    // The call in flight a state carries (counted when it cannot be stored).
    assert_eq!(s.conn.calls_handed(), 1);
    let state = s.conn.hand_off(1 << 20).unwrap();
    let mut classify = |_: &Head| Some(Api);
    for cut in 0..state.len() {
        assert!(HttpConnection::resume(&state[..cut], 1 << 20, &mut classify).is_err(), "cut at {cut}");
    }
    let mut noise = Noise(3);
    for _ in 0..2000 {
        let mut bad = state.clone();
        let at = noise.next() as usize % bad.len();
        bad[at] ^= 1 << (noise.next() % 8);
        let _ = HttpConnection::resume(&bad, 1 << 20, &mut classify);
    }
    // A session whose upgrade is no LLM API with these rules is not resumed.
    assert!(HttpConnection::<Api>::resume(&state, 1 << 20, &mut |_: &Head| None).is_err());
    // Too large for the budget: not handed on.
    assert!(s.conn.hand_off(100).is_none());
}
