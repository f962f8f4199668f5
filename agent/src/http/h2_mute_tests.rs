//! HTTP/2 muting end to end in user space: a connection fed as the kernel's
//! frame walk (`agent-ebpf/src/h2_walk.rs`) feeds it, each read copied as the
//! segments it keeps (frame headers, payloads not muted) at their stream
//! positions, with an empty chunk at a read's end when it ended skipped (what
//! the pipeline makes of a last segment whose call spans to the read's end),
//! a read that keeps nothing not copied at all (unless taken over or across a
//! mark), and an agent taking the connection over counting from where the
//! last copied read ended.
use super::*;
use crate::http::h2::encode::{frame, headers};
use crate::http::mute::{Mute, StreamAt};
use loona_hpack::Encoder;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const BASE: u64 = 1 << 40;
/// The kernel's `MIN_DROPPED_FRAME` and `MARK_EVERY` (agent-ebpf/src/h2_walk.rs).
const MIN_DROPPED_FRAME: u64 = 4096;
const MARK_EVERY: u64 = 1 << 18;

fn llm(h: &Head) -> Option<()> {
    h.path.as_deref().is_some_and(|p| p.starts_with("/v1/")).then_some(())
}

/// One read as the kernel copies it.
pub(crate) struct Read {
    /// The `[from, to)` stream positions it keeps.
    pub(crate) kept: Vec<(u64, u64)>,
    /// It ends inside skipped bytes: the last segment spans to its end.
    pub(crate) ends_skipped: bool,
    /// Copied at all: it kept something, or it is an empty call at its end.
    pub(crate) copied: bool,
}

/// The kernel's side: where its walk stands, and the streams named to it.
pub(crate) struct Kernel {
    pub(crate) pos: u64,
    pub(crate) payload_end: u64,
    header: Vec<u8>,
    pub(crate) muted_payload: bool,
    pub(crate) muted: Vec<u32>,
    /// The stream of the last muted frame while its frames follow each
    /// other: needs no lookup in `muted` (`H2Walk::muted` above bit 0).
    last: u32,
    skipped: u64,
    /// Where the last copied read ended (`H2_RECORDED`).
    recorded: u64,
    /// Reads not copied.
    pub(crate) silent: usize,
}

impl Kernel {
    pub(crate) fn at(pos: u64) -> Self {
        Self {
            pos,
            payload_end: pos,
            header: Vec::new(),
            muted_payload: false,
            muted: vec![],
            last: 0,
            skipped: 0,
            recorded: pos,
            silent: 0,
        }
    }

    /// Walk one read of `data` (`taken`: the first call of a connection
    /// taken over, flagged, so always copied).
    pub(crate) fn read(&mut self, data: &[u8], taken: bool) -> Read {
        let (start, end) = (self.pos, self.pos + data.len() as u64);
        let mut kept: Vec<(u64, u64)> = Vec::new();
        let keep = |from: u64, to: u64, kept: &mut Vec<(u64, u64)>| match kept.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => kept.push((from, to)),
        };
        let mut at = start;
        let skipped_before = self.skipped;
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
            let whole = self.header.is_empty();
            let n = (9 - self.header.len()).min((end - at) as usize);
            let off = (at - start) as usize;
            self.header.extend_from_slice(&data[off..off + n]);
            let from = at;
            at += n as u64;
            if self.header.len() < 9 {
                keep(from, at, &mut kept);
                continue;
            }
            let h = std::mem::take(&mut self.header);
            let len = (h[0] as u64) << 16 | (h[1] as u64) << 8 | h[2] as u64;
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            self.payload_end = at + len;
            let last = std::mem::take(&mut self.last);
            self.muted_payload =
                h[3] == DATA && len > 0 && ((last != 0 && last == stream) || self.muted.contains(&stream));
            let ends = h[4] & END_STREAM != 0;
            if self.muted_payload && !ends {
                self.last = stream;
            }
            if self.muted_payload && ends {
                self.muted.retain(|s| *s != stream);
            }
            if self.muted_payload && !ends && whole && len >= MIN_DROPPED_FRAME {
                self.skipped += n as u64;
            } else {
                keep(from, at, &mut kept);
            }
        }
        self.pos = end;
        let skipped = self.skipped > skipped_before;
        let ends_skipped = skipped && kept.last().is_none_or(|l| l.1 != end);
        let marks = start / MARK_EVERY != end / MARK_EVERY;
        let copied = !kept.is_empty() || !skipped || taken || marks;
        if copied {
            self.recorded = end;
        } else {
            self.silent += 1;
        }
        Read { kept, ends_skipped, copied }
    }

    /// The next agent's first read comes: its count starts at `base`, moved
    /// on past the reads walked since the last copied one (`plan_read`).
    pub(crate) fn switch_to(&mut self, base: u64) {
        let shift = self.pos - self.recorded;
        let left = self.payload_end - self.pos;
        self.pos = base + shift;
        self.payload_end = self.pos + left;
        self.recorded = base;
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
        self.read_as(data, false);
    }

    /// One read, the first of a connection taken over if `taken`.
    fn read_as(&mut self, data: &[u8], taken: bool) {
        let start = self.k.pos;
        let end = start + data.len() as u64;
        let r = self.k.read(data, taken);
        for (from, to) in r.kept {
            let (a, b) = ((from - start) as usize, (to - start) as usize);
            self.chunk(Direction::Ingress, from, &data[a..b]);
        }
        if r.copied && r.ends_skipped {
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
    // The connection goes on (a PING): a read the kernel copies after the
    // download, whose position tells the skip at the download's end.
    ingress.extend(frame(PING, 0, 0, &[0; 8]));
    (egress, ingress)
}

#[test]
fn a_muted_streams_payloads_are_skipped_and_the_call_beside_it_is_read() {
    // Reads of a TLS record's size, frames a little longer: headers fall
    // anywhere in a read, some split across two. Frames of 16 KiB are
    // skipped whole (headers too), of 1,000 bytes keep their headers.
    for (read, frame_len) in [(16_384, 16_384), (5_000, 16_384), (100_003, 16_384), (16_384, 1000), (3000, 5000)] {
        let (egress, ingress) = download_and_call(300, frame_len);
        let mut t = Conn::new();
        t.chunk(Direction::Egress, 0, &egress);
        let reads = ingress.chunks(read).count();
        for r in ingress.chunks(read) {
            t.read(r);
        }
        let what = format!("read {read}, frames of {frame_len}");
        assert_eq!(t.k.muted, Vec::<u32>::new(), "{what}: the stream ended in the kernel");
        assert!(t.k.skipped > 250 * frame_len as u64, "{what}: {} skipped", t.k.skipped);
        assert_eq!(t.out.len(), 1, "{what}");
        assert!(t.out[0].exchange.response.complete);
        assert_eq!(t.out[0].exchange.response.body, b"{\"usage\":{}}");
        assert_eq!(t.lost, Lost::default(), "{what}");
        assert_eq!(t.c.calls_in_flight(), 0);
        assert!(t.c.buffered() < 9, "{what}: {} held", t.c.buffered());
        assert!(t.c.ignored().is_none(), "{what}");
        if frame_len as u64 >= MIN_DROPPED_FRAME && read <= 16_384 {
            // Most reads hold at most one frame header, dropped: not copied.
            assert!(t.k.silent * 10 > reads * 8, "{what}: {} of {reads} reads not copied", t.k.silent);
        }
        if (frame_len as u64) < MIN_DROPPED_FRAME {
            assert!(t.k.silent * 10 < reads, "{what}: {} of {reads} reads not copied", t.k.silent);
        }
    }
}

/// The kernel's map of named streams is an LRU: a download's stream may age
/// out of it. While the download's frames follow each other the walk still
/// knows it (it keeps the last muted frame's stream) and skips them; after
/// another stream's frame it copies them again. User space, which still has
/// the stream named, takes both: the call between is read, nothing lost.
#[test]
fn a_stream_aged_out_of_the_kernels_map_stays_muted_while_its_frames_follow_each_other() {
    let (egress, ingress) = download_and_call(40, 16_384);
    let mut t = Conn::new();
    t.chunk(Direction::Egress, 0, &egress);
    let mut reads = ingress.chunks(16_384);
    for r in reads.by_ref().take(4) {
        t.read(r);
    }
    assert_eq!(t.k.muted, vec![1], "named after its first DATA frame");
    t.k.muted.clear();
    let skipped = t.k.skipped;
    // Up to the call's frames, halfway.
    for r in reads.by_ref() {
        t.read(r);
        if !t.out.is_empty() {
            break;
        }
    }
    assert!(t.k.skipped >= skipped + 14 * 16_384, "still skipped: {} more", t.k.skipped - skipped);
    let (silent, skipped) = (t.k.silent, t.k.skipped);
    let mut after = 0;
    for r in reads {
        t.read(r);
        after += 1;
    }
    assert!(after >= 19, "{after} reads after the call");
    assert_eq!(t.k.skipped, skipped, "copied again after the call's frames");
    assert_eq!(t.k.silent, silent);
    assert_eq!(t.out.len(), 1);
    assert_eq!(t.out[0].exchange.response.body, b"{\"usage\":{}}");
    assert_eq!(t.lost, Lost::default());
    assert_eq!(t.c.ignored(), None);
    assert!(t.c.buffered() < 9, "{} held", t.c.buffered());
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

    // Skipped at the download's first DATA frame: not named yet.
    let (egress, ingress) = download_and_call(4, 1000);
    let mut t = Conn::new();
    t.chunk(Direction::Egress, 0, &egress);
    let first_data = ingress.windows(4).position(|w| w == [0, 3, 232, DATA]).unwrap();
    t.chunk(Direction::Ingress, BASE, &ingress[..first_data + 9]);
    assert!(t.c.ignored().is_none());
    t.chunk(Direction::Ingress, BASE + first_data as u64 + 9 + 1000, &ingress[first_data + 9 + 1000..]);
    assert!(t.c.ignored().is_some(), "a skip of a stream not named");
    assert_eq!(t.lost.unanswered, 1);

    // Named, but the skip begins inside a frame header.
    let (egress, ingress) = download_and_call(4, 1000);
    let mut t = Conn::new();
    t.chunk(Direction::Egress, 0, &egress);
    let second_data = first_data + 9 + 1000;
    t.chunk(Direction::Ingress, BASE, &ingress[..second_data + 4]);
    assert_eq!(t.k.muted, vec![1], "named after its first DATA frame");
    t.chunk(Direction::Ingress, BASE + second_data as u64 + 9 + 1000, &ingress[second_data + 9 + 1000..]);
    assert!(t.c.ignored().is_some(), "a skip inside a header");
    assert_eq!(t.lost.unanswered, 1);
}

/// An upgrade's switch anywhere in a download (stream 1) muted in the
/// kernel: the next agent's kernel counts the stream from its own base, its
/// walk going on from the same byte (`plan_read` rebases it), its count
/// moved on past the reads the agent before walked without copying them.
/// The connection resumed from the handed-on state must take that skip, and
/// read the call after it. The first call of the next agent is a read
/// (flagged, so copied) or a write (its first read may then be silent).
#[test]
fn a_switch_anywhere_in_a_muted_download_goes_on_in_the_next_agent() {
    const NEXT_BASE: u64 = 1 << 41;
    let (mut after_silent, mut inside_payload) = (0, 0);
    for (read, frame_len) in [(16_384, 16_384), (5_000, 16_384), (16_393, 16_384), (16_384, 1000)] {
        let (egress, ingress) = download_and_call(40, frame_len);
        let n = ingress.chunks(read).count();
        for switch_after in 3..n {
            for taken_at_read in [true, false] {
                let what = format!("read {read}, frames of {frame_len}, switch after {switch_after}, {taken_at_read}");
                let mut t = Conn::new();
                t.chunk(Direction::Egress, 0, &egress);
                let mut reads = ingress.chunks(read);
                for r in reads.by_ref().take(switch_after) {
                    t.read(r);
                }
                after_silent += usize::from(t.k.pos != t.k.recorded);
                inside_payload += usize::from(t.k.muted_payload && t.k.payload_end > t.k.pos);
                let state = t.c.hand_off(1 << 20).expect("an HTTP/2 state");
                t.c = HttpConnection::resume(&state, 1 << 20, &mut llm).unwrap();
                t.k.switch_to(NEXT_BASE);
                t.base = NEXT_BASE;
                let mut taken = taken_at_read;
                for r in reads {
                    t.read_as(r, taken);
                    taken = false;
                }
                assert_eq!(t.c.ignored(), None, "{what}");
                assert_eq!(t.out.len(), 1, "{what}: the call, by either agent");
                assert_eq!(t.out[0].exchange.response.body, b"{\"usage\":{}}");
                assert_eq!(t.lost, Lost::default(), "{what}");
                assert!(t.c.buffered() < 9, "{what}: {} held", t.c.buffered());
            }
        }
    }
    assert!(after_silent > 50, "{after_silent} switches after reads not copied");
    assert!(inside_payload > 50, "{inside_payload} switches inside a muted payload");
}
