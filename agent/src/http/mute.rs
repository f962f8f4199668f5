//! Muting the bodies no one records: a keep-alive HTTP/1.1 connection stays a
//! client's, so each request on it is read, but the body of a non-LLM
//! response (a download, a page) need not cross the ring buffer. Once a
//! response head shows such a body, its remaining bytes are named as a range
//! of the connection's ingress stream (the kernel numbers each read's position,
//! `DataHeader::stream_pos`) and the kernel skips the reads wholly inside it.
//! Later, a chunk whose position jumps past bytes never seen is explained by
//! that range, and the parser counts the skipped bytes read.
//!
//! Why a range and not "until the next request": user space lags behind the
//! kernel, so by the time it asks, the client may have sent an LLM request on
//! the same connection; a range ends where the body ends, so the bytes after it
//! are always copied. Small bodies are not worth the map update they'd cost.
//!
//! HTTP/2 interleaves bodies on one stream of bytes, so it is muted by stream
//! ([`Mute::H2Stream`], see `h2.rs`), its skips shown the same way.

/// Bodies shorter than this are copied anyway: a map update costs about as
/// much as copying a few chunks.
pub const MUTE_MIN_BYTES: u64 = 32 << 10;

/// What the kernel is asked not to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mute {
    /// The reads wholly inside `[from, to)` of the ingress stream.
    Range { from: u64, to: u64 },
    /// The payloads of an HTTP/2 stream's later DATA frames, under the id
    /// of the kernel's walk of the connection's frames (the stream base of
    /// the agent that began it: `agent-ebpf/src/h2_walk.rs`).
    H2Stream { walk: u64, stream: u32 },
}

/// Where an ingress chunk sits: the kernel's count of the connection's read
/// bytes (`pos`, 0: unknown) since `base`, where it started counting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamAt {
    pub base: u64,
    pub pos: u64,
}

/// What the position of an ingress chunk says about the bytes before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jump {
    /// They were all seen (or positions are unknown).
    None,
    /// This many were skipped inside the muted range.
    Muted(u64),
    /// This many are missing and the range does not explain them: the loss
    /// counters and chunk flags tell about those.
    Unexplained(u64),
}

#[derive(Debug, Default)]
pub struct Muting {
    /// The base `next` and the range count from.
    base: u64,
    /// Where the next ingress byte should sit; none until a chunk with a
    /// known position arrived.
    next: Option<u64>,
    /// The range asked for, `[from, to)`, until the stream has passed it.
    range: Option<(u64, u64)>,
    /// A range not handed to the kernel yet.
    request: Option<(u64, u64)>,
    /// Taken over from another agent's decoding state (an upgrade).
    resumed: bool,
}

impl Muting {
    /// For a connection resumed from the decoding state of the agent before.
    pub fn resumed() -> Self {
        Self { resumed: true, ..Self::default() }
    }

    /// The kernel may be skipping bytes this side has not learnt of yet: a
    /// range was asked for, and no chunk past it has come.
    pub fn may_skip(&self) -> bool {
        self.range.is_some() || self.request.is_some()
    }

    /// An ingress chunk of `len` bytes at `at`.
    pub fn arrive(&mut self, at: StreamAt, len: usize) -> Jump {
        let pos = at.pos;
        if pos == 0 {
            self.next = None;
            return Jump::None;
        }
        if at.base != self.base {
            // A new count: nothing before compares. One that began with this
            // agent's first read of the connection after it took the
            // connection over (resumed), or that restarted under it (the
            // kernel forgot the connection), starts at its base: a first
            // chunk past the base follows bytes the kernel skipped, the rest
            // of a muted HTTP/2 payload that the walk goes on skipping
            // (`plan_read` in agent-ebpf/src/h2_walk.rs). The first count a
            // connection decoded from its start meets may have begun before
            // it: a key reused by a connection whose end went unseen (rustls)
            // carries the earlier one's count on.
            let restarted = self.resumed || self.base != 0;
            self.base = at.base;
            self.next = restarted.then_some(at.base);
            self.range = None;
        }
        let jump = match self.next {
            Some(n) if pos >= n => pos - n,
            Some(_) => {
                self.range = None;
                0
            }
            None => 0,
        };
        let explained = match (self.next, self.range) {
            (Some(n), Some((from, to))) => n >= from && pos <= to,
            _ => false,
        };
        let next = pos.saturating_add(len as u64);
        self.next = Some(next);
        if self.range.is_some_and(|(_, to)| next >= to) {
            self.range = None;
        }
        match (jump, explained) {
            (0, _) => Jump::None,
            (n, true) => Jump::Muted(n),
            (n, false) => Jump::Unexplained(n),
        }
    }

    /// A body of `remaining` bytes (`u64::MAX`: until the connection closes)
    /// that nothing records follows the bytes seen so far.
    pub fn unkept_body(&mut self, remaining: u64) {
        let Some(from) = self.next else { return };
        if self.range.is_some() || remaining < MUTE_MIN_BYTES {
            return;
        }
        let range = (from, from.saturating_add(remaining));
        self.range = Some(range);
        self.request = Some(range);
    }

    /// Where the kernel counts this connection's ingress stream from, once
    /// a chunk with a known position came.
    pub fn base(&self) -> Option<u64> {
        self.next.map(|_| self.base)
    }

    /// The range to hand to the kernel, once.
    pub fn take_request(&mut self) -> Option<(u64, u64)> {
        self.request.take()
    }

    /// The stream lost its place (a gap): a range asked for explains nothing
    /// any more; what follows is parsed afresh.
    pub fn forget(&mut self) {
        self.range = None;
        self.request = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 1 << 40;

    /// A position of the count that began at `BASE` (its first byte's).
    fn at(pos: u64) -> StreamAt {
        StreamAt { base: BASE, pos }
    }

    #[test]
    fn a_jump_inside_the_range_is_muted_and_after_it_is_not() {
        let mut m = Muting::default();
        assert_eq!(m.arrive(at(BASE), 100), Jump::None);
        m.unkept_body(1 << 20);
        assert_eq!(m.take_request(), Some((BASE + 100, BASE + 100 + (1 << 20))));
        assert_eq!(m.take_request(), None);
        // Copied before the kernel heard, then skipped to the body's last read.
        assert_eq!(m.arrive(at(BASE + 100), 16384), Jump::None);
        assert_eq!(m.arrive(at(BASE + (1 << 20)), 100), Jump::Muted((1 << 20) - 16484));
        // The next response: past the range, which is gone.
        assert_eq!(m.arrive(at(BASE + (1 << 20) + 500), 10), Jump::Unexplained(400));
        assert_eq!(m.arrive(at(BASE + (1 << 20) + 510), 10), Jump::None);
    }

    #[test]
    fn a_first_count_is_compared_from_its_base_only_on_a_connection_taken_over() {
        // Decoded from its start: its first count may have begun before it
        // (a reused key whose earlier connection's end went unseen).
        let mut m = Muting::default();
        assert_eq!(m.arrive(at(BASE + 5000), 10), Jump::None);
        assert_eq!(m.arrive(at(BASE + 5010), 10), Jump::None);
        // Taken over: this agent's count began with its first read of it.
        let mut m = Muting::resumed();
        assert_eq!(m.arrive(at(BASE + 5000), 10), Jump::Unexplained(5000));
        let mut m = Muting::resumed();
        assert_eq!(m.arrive(at(BASE), 10), Jump::None);
    }

    #[test]
    fn small_bodies_unknown_positions_and_restarts_mute_nothing() {
        let mut m = Muting::default();
        m.unkept_body(1 << 30);
        assert_eq!(m.take_request(), None, "no position known yet");
        assert_eq!(m.arrive(at(BASE), 10), Jump::None);
        m.unkept_body(MUTE_MIN_BYTES - 1);
        assert_eq!(m.take_request(), None);
        m.unkept_body(u64::MAX);
        assert_eq!(m.take_request(), Some((BASE + 10, u64::MAX)));
        // Positions went backwards: the range is dropped, nothing explained.
        assert_eq!(m.arrive(at(5), 10), Jump::None);
        // So does a new base (the count restarted), even with a position
        // inside the old range: its bytes count from that base, none
        // explained by the range.
        m.unkept_body(1 << 20);
        let (from, _) = m.take_request().unwrap();
        assert_eq!(m.arrive(StreamAt { base: 8, pos: from + 100 }, 10), Jump::Unexplained(from + 92));
        assert_eq!(m.arrive(StreamAt { base: 8, pos: from + 200 }, 10), Jump::Unexplained(90));
        assert_eq!(m.arrive(at(5), 10), Jump::None);
        assert_eq!(m.arrive(at(100), 10), Jump::Unexplained(85));
        // Unknown positions (0) forget the place.
        assert_eq!(m.arrive(at(0), 10), Jump::None);
        assert_eq!(m.arrive(at(500), 10), Jump::None);
        m.unkept_body(1 << 20);
        m.forget();
        assert_eq!(m.take_request(), None);
        assert_eq!(m.arrive(at(600), 1), Jump::Unexplained(90));
    }
}
