//! HTTP/2 muting end to end in user space: a connection fed as the kernel's
//! frame walk (`agent-ebpf/src/h2_walk.rs`) feeds it, each read copied as the
//! segments it keeps (frame headers, payloads not muted) at their stream
//! positions, with an empty chunk at a read's end when it ended skipped (what
//! the pipeline makes of a last segment whose call spans to the read's end).
use super::*;
use crate::http::h2::encode::{frame, headers};
use crate::http::mute::{Mute, StreamAt};
use loona_hpack::Encoder;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const BASE: u64 = 1 << 40;

fn llm(h: &Head) -> Option<()> {
    h.path.as_deref().is_some_and(|p| p.starts_with("/v1/")).then_some(())
}

/// The kernel's side: where its walk stands, and the streams named to it.
pub(crate) struct Kernel {
    pub(crate) pos: u64,
    pub(crate) payload_end: u64,
    header: Vec<u8>,
    pub(crate) muted_payload: bool,
    pub(crate) muted: Vec<u32>,
    skipped: u64,
}

impl Kernel {
    pub(crate) fn at(pos: u64) -> Self {
        Self { pos, payload_end: pos, header: Vec::new(), muted_payload: false, muted: vec![], skipped: 0 }
    }

    /// Walk one read of `data`: the `[from, to)` stream positions it keeps,
    /// and whether it ends inside a skipped payload.
    pub(crate) fn read(&mut self, data: &[u8]) -> (Vec<(u64, u64)>, bool) {
        let (start, end) = (self.pos, self.pos + data.len() as u64);
        let mut kept: Vec<(u64, u64)> = Vec::new();
        let keep = |from: u64, to: u64, kept: &mut Vec<(u64, u64)>| match kept.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => kept.push((from, to)),
        };
        let mut at = start;
        while at < end {
            if self.payload_end > at {
                let to = self.payload_end.min(end);
                if self.muted_payload {
                    self.skipped += to - at;
                } else {
                    keep(at, to, &mut kept);
                }
                at = to;
                continue;
            }
            let n = (9 - self.header.len()).min((end - at) as usize);
            let off = (at - start) as usize;
            self.header.extend_from_slice(&data[off..off + n]);
            keep(at, at + n as u64, &mut kept);
            at += n as u64;
            if self.header.len() == 9 {
                let h = std::mem::take(&mut self.header);
                let len = (h[0] as u64) << 16 | (h[1] as u64) << 8 | h[2] as u64;
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                self.payload_end = at + len;
                self.muted_payload = h[3] == DATA && len > 0 && self.muted.contains(&stream);
            }
        }
        self.pos = end;
        let ends_skipped = kept.last().is_none_or(|l| l.1 != end);
        (kept, ends_skipped)
    }
}

struct Conn {
    c: HttpConnection<()>,
    k: Kernel,
    /// Where the agent's kernel count of the stream started (its `IN_POS` base).
    base: u64,
    out: Vec<Classified<()>>,
    lost: Lost,
}

impl Conn {
    fn new() -> Self {
        let k = Kernel::at(BASE);
        Self { c: HttpConnection::new(1 << 20), k, base: BASE, out: Vec::new(), lost: Lost::default() }
    }

    fn chunk(&mut self, direction: Direction, pos: u64, data: &[u8]) {
        let mut cap = llm;
        let at = StreamAt { base: self.base, pos };
        let held =
            self.c.on_chunk(direction, Continuity::InOrder, at, data, 1, &mut cap, &mut self.out, &mut self.lost);
        assert_eq!(held, Held::Within);
        while let Some(m) = self.c.take_mute() {
            // The walk keeps the id of the count it began with (the first agent's).
            let Mute::H2Stream { walk: BASE, stream } = m else { panic!("{m:?}") };
            self.k.muted.push(stream);
        }
    }

    /// One read, as the kernel copies it.
    fn read(&mut self, data: &[u8]) {
        let start = self.k.pos;
        let end = start + data.len() as u64;
        let (kept, ends_skipped) = self.k.read(data);
        for (from, to) in kept {
            let (a, b) = ((from - start) as usize, (to - start) as usize);
            self.chunk(Direction::Ingress, from, &data[a..b]);
        }
        if ends_skipped {
            self.chunk(Direction::Ingress, end, &[]);
        }
    }
}

/// A download (stream 1) and an LLM call (stream 3) on one connection, the
/// call's response between the download's frames: egress and ingress bytes.
fn download_and_call(frames: usize, frame_len: usize) -> (Vec<u8>, Vec<u8>) {
    let (mut c, mut s) = (Encoder::new(), Encoder::new());
    let mut egress = crate::http::h2::PREFACE.to_vec();
    egress.extend(frame(SETTINGS, 0, 0, &[]));
    let get = headers(&mut c, &[(":method", "GET"), (":authority", "example.com"), (":path", "/big")]);
    egress.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get));
    let post = headers(&mut c, &[(":method", "POST"), (":authority", "api.openai.com"), (":path", "/v1/chat")]);
    egress.extend(frame(HEADERS, END_HEADERS, 3, &post));
    egress.extend(frame(DATA, END_STREAM, 3, b"{\"model\":\"m\"}"));
    let mut ingress = frame(SETTINGS, 0, 0, &[]);
    ingress.extend(frame(HEADERS, END_HEADERS, 1, &headers(&mut s, &[(":status", "200")])));
    let body: Vec<u8> = (0..frame_len).map(|i| (i % 251) as u8).collect();
    for i in 0..frames {
        if i == frames / 2 {
            ingress.extend(frame(HEADERS, END_HEADERS, 3, &headers(&mut s, &[(":status", "200")])));
            ingress.extend(frame(DATA, END_STREAM, 3, b"{\"usage\":{}}"));
        }
        let flags = if i + 1 == frames { END_STREAM } else { 0 };
        ingress.extend(frame(DATA, flags, 1, &body));
    }
    (egress, ingress)
}

#[test]
fn a_muted_streams_payloads_are_skipped_and_the_call_beside_it_is_read() {
    // Reads of a TLS record's size, frames a little longer: headers fall
    // anywhere in a read, some split across two.
    for read in [16_384, 5_000, 100_003] {
        let (egress, ingress) = download_and_call(40, 16_384);
        let mut t = Conn::new();
        t.chunk(Direction::Egress, 0, &egress);
        for r in ingress.chunks(read) {
            t.read(r);
        }
        assert_eq!(t.k.muted, vec![1], "read {read}");
        assert!(t.k.skipped > 30 * 16_384, "read {read}: {} skipped", t.k.skipped);
        assert_eq!(t.out.len(), 1, "read {read}");
        assert!(t.out[0].exchange.response.complete);
        assert_eq!(t.out[0].exchange.response.body, b"{\"usage\":{}}");
        assert_eq!(t.lost, Lost::default(), "read {read}");
        assert_eq!(t.c.calls_in_flight(), 0);
        assert!(t.c.buffered() < 9, "read {read}: {} held", t.c.buffered());
    }
}

#[test]
fn bytes_skipped_anywhere_but_a_muted_streams_data_lose_the_connection_counted() {
    let (egress, ingress) = download_and_call(4, 1000);
    let mut t = Conn::new();
    t.chunk(Direction::Egress, 0, &egress);
    // The call's request is in flight; 100 bytes go missing inside the
    // response's frames (not a muted stream's payload).
    t.chunk(Direction::Ingress, BASE, &ingress[..50]);
    t.chunk(Direction::Ingress, BASE + 150, &ingress[150..]);
    assert!(t.out.is_empty());
    assert_eq!(t.lost.unanswered, 1, "the call in flight is counted");
    assert!(t.c.ignored().is_some());

    // More skipped than the muted frame has left.
    let (egress, ingress) = download_and_call(4, 1000);
    let mut t = Conn::new();
    t.chunk(Direction::Egress, 0, &egress);
    let first_data = ingress.windows(4).position(|w| w == [0, 3, 232, DATA]).unwrap();
    t.chunk(Direction::Ingress, BASE, &ingress[..first_data + 9]);
    assert!(t.c.ignored().is_none());
    t.chunk(Direction::Ingress, BASE + first_data as u64 + 9 + 1001, &ingress[first_data + 9 + 1001..]);
    assert!(t.c.ignored().is_some(), "a skip past the frame's end");
    assert_eq!(t.lost.unanswered, 1);
}

/// An upgrade's switch falls inside a muted stream's DATA payload: the next
/// agent's kernel counts the stream from its own base, its walk going on
/// from the same byte (`plan_read` rebases it), so that agent's first read
/// skips the payload's rest before its first kept byte, or (a read wholly
/// inside it) keeps nothing. The connection resumed from the handed-on state
/// must take that skip, and read the call after it.
#[test]
fn a_switch_inside_a_muted_payload_goes_on_in_the_next_agent() {
    const NEXT_BASE: u64 = 1 << 41;
    for (read, switch_after) in [(16_384, 6), (16_384, 9), (5_000, 20), (16_393, 7)] {
        let (egress, ingress) = download_and_call(40, 16_384);
        let mut t = Conn::new();
        t.chunk(Direction::Egress, 0, &egress);
        let mut reads = ingress.chunks(read);
        for r in reads.by_ref().take(switch_after) {
            t.read(r);
        }
        assert!(t.k.muted_payload && t.k.payload_end > t.k.pos, "read {read}: the switch is inside a muted payload");
        let state = t.c.hand_off(1 << 20).expect("an HTTP/2 state");
        t.c = HttpConnection::resume(&state, 1 << 20, &mut llm).unwrap();
        let left = t.k.payload_end - t.k.pos;
        (t.k.pos, t.k.payload_end, t.base) = (NEXT_BASE, NEXT_BASE + left, NEXT_BASE);
        for r in reads {
            t.read(r);
        }
        assert_eq!(t.c.ignored(), None, "read {read}, switch after {switch_after}");
        assert_eq!(t.out.len(), 1, "read {read}, switch after {switch_after}: the call after the switch");
        assert_eq!(t.out[0].exchange.response.body, b"{\"usage\":{}}");
        assert_eq!(t.lost, Lost::default());
        assert_eq!(t.c.calls_in_flight(), 0);
    }
}
