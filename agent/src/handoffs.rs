//! The decoding states a leaving agent hands on to the agent after it
//! (`CONN_STATES`, pinned with the handover maps: `handover`): written by
//! the one, read once and removed by the other (`pipeline/handoff.rs` says
//! when). A state is cut in parts of a map value's size; part 0 opens with a
//! header (the writer's pid, the state's length, the part count) and is
//! written last, so a reader that finds it finds every part.
use std::collections::HashSet;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData};
use tokentap_agent_common::{HandoffKey, HandoffPart, HANDOFF_MAX_PARTS, HANDOFF_PART};

use crate::handover::{alive, me};
use crate::pipeline::Handed;

/// The states map, and the agents this one may take states from.
pub struct Handoffs {
    states: HashMap<MapData, HandoffKey, HandoffPart>,
    /// The agents this one may take connections from (pid, start time).
    before: Vec<(u32, u64)>,
    /// Whether one of them still ran when last looked (`/proc`), and when.
    pending: Option<(Instant, bool)>,
    /// This agent has written a state (it is leaving).
    wrote: bool,
    /// When parts left without their part 0 were last looked for, and
    /// those found then.
    tidied: Option<Instant>,
    orphans: HashSet<HandoffKey>,
}

/// How often parts left without their part 0 are looked for: one lookup
/// when the map is empty, as it is outside the seconds of an upgrade.
const TIDY_EVERY: Duration = Duration::from_secs(10);

/// Part 0's header: writer pid, state length, parts.
const HEADER: usize = 12;

impl Handoffs {
    pub fn new(states: HashMap<MapData, HandoffKey, HandoffPart>, before: Vec<(u32, u64)>) -> Self {
        Self { states, before, pending: None, wrote: false, tidied: None, orphans: HashSet::new() }
    }

    /// Does an agent this one took over from still run (so a state may
    /// still come)? Looked up at most every 100 ms; once none runs, never again.
    pub fn pending(&mut self) -> bool {
        match self.pending {
            Some((_, false)) => false,
            Some((at, true)) if at.elapsed() < Duration::from_millis(100) => true,
            _ => {
                let running = self.before.iter().any(|&(pid, since)| alive(pid, since));
                self.pending = Some((Instant::now(), running));
                running
            }
        }
    }

    /// Hand on `state` for a connection; false when it could not be stored
    /// (too large, the map full).
    pub fn put(&mut self, tgid: u32, conn: u64, state: &[u8]) -> bool {
        self.wrote = true;
        let Some(all) = state_parts(me(), state) else {
            return false;
        };
        // One copy of a state of megabytes (a request body being written),
        // cut as it is written.
        let parts: Vec<&[u8]> = all.chunks(HANDOFF_PART).collect();
        let mut part = Box::new(HandoffPart { len: 0, data: [0; HANDOFF_PART] });
        // Part 0 last: once it is there, so is every other.
        for (i, piece) in parts.iter().enumerate().rev() {
            part.len = piece.len() as u32;
            part.data[..piece.len()].copy_from_slice(piece);
            let key = HandoffKey { tgid, part: i as u32, conn };
            if self.states.insert(key, *part, 0).is_err() {
                // The map full: the parts already written go too (nobody
                // would read or remove them without their part 0).
                for j in i + 1..parts.len() {
                    let _ = self.states.remove(&HandoffKey { tgid, part: j as u32, conn });
                }
                return false;
            }
        }
        true
    }

    /// Remove the parts of states whose part 0 is gone: the kernel drops a
    /// state's part 0 alone when its connection ends before the agent that
    /// took it over copied a call (nobody will read it), an agent killed
    /// while it wrote leaves parts without it, and an agent of a release
    /// that reads at most 1,024 parts leaves the rest of a larger state. Left
    /// there, they would fill the pinned map over upgrades. Only while no
    /// agent before this one runs and this one has written nothing, at most
    /// every [`TIDY_EVERY`], and a part only when the look before found it
    /// without its part 0 too: a third agent may be writing a state (part 0
    /// last) for another, which takes far less than that. Returns the parts
    /// removed.
    pub fn tidy(&mut self) -> usize {
        if self.wrote || self.tidied.is_some_and(|t| t.elapsed() < TIDY_EVERY) || self.pending() {
            return 0;
        }
        self.tidied = Some(Instant::now());
        // A set: the kernel's walk starts over when a key goes under it.
        let keys: HashSet<HandoffKey> = self.states.keys().flatten().collect();
        let heads: HashSet<(u32, u64)> = keys.iter().filter(|k| k.part == 0).map(|k| (k.tgid, k.conn)).collect();
        let mut orphans: HashSet<HandoffKey> =
            keys.into_iter().filter(|k| k.part != 0 && !heads.contains(&(k.tgid, k.conn))).collect();
        let stale: Vec<HandoffKey> = orphans.intersection(&self.orphans).copied().collect();
        let mut removed = 0;
        for k in &stale {
            orphans.remove(k);
            removed += usize::from(self.states.remove(k).is_ok());
        }
        self.orphans = orphans;
        if removed > 0 {
            tracing::debug!(removed, "handed-on state parts without their first part removed");
        }
        removed
    }

    /// The state an agent before this one handed on for a connection this
    /// one took from it (and removed), not yet, or never.
    pub fn take(&mut self, tgid: u32, conn: u64) -> Handed {
        // Alive before the look: a state written just before its exit is found.
        let alive = self.pending();
        let Ok(first) = self.states.get(&HandoffKey { tgid, part: 0, conn }, 0) else {
            return if alive { Handed::Wait } else { Handed::Never };
        };
        let head = first.data[..(first.len as usize).min(HANDOFF_PART)].to_vec();
        let whole = state_from_parts(&head, |i| {
            let p = self.states.get(&HandoffKey { tgid, part: i, conn }, 0).ok()?;
            Some(p.data[..(p.len as usize).min(HANDOFF_PART)].to_vec())
        });
        // Every part goes, whether or not the state was whole: as many as
        // the header declares, or (see `state_from_parts`) one more.
        let declared = head.get(8..12).map_or(1, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        for i in 0..declared.saturating_add(1).clamp(1, HANDOFF_MAX_PARTS) {
            let _ = self.states.remove(&HandoffKey { tgid, part: i, conn });
        }
        // Only from an agent this one succeeds: not a leftover under a reused key.
        match whole {
            Some(w) if self.before.iter().any(|&(pid, _)| pid == w.writer) => Handed::State(w.state),
            _ => Handed::Never,
        }
    }
}

/// A state as written in parts: its writer (pid) and the parts there are.
#[derive(Debug, PartialEq, Eq)]
struct Whole {
    writer: u32,
    state: Vec<u8>,
}

/// `state` written by `writer`, to be cut in parts of [`HANDOFF_PART`]
/// bytes, the first opening with the header (writer, state length, parts);
/// None when it needs more than [`HANDOFF_MAX_PARTS`].
fn state_parts(writer: u32, state: &[u8]) -> Option<Vec<u8>> {
    let parts = (HEADER + state.len()).div_ceil(HANDOFF_PART) as u32;
    if parts > HANDOFF_MAX_PARTS {
        return None;
    }
    let mut all = Vec::with_capacity(HEADER + state.len());
    all.extend_from_slice(&writer.to_le_bytes());
    all.extend_from_slice(&(state.len() as u32).to_le_bytes());
    all.extend_from_slice(&parts.to_le_bytes());
    all.extend_from_slice(state);
    Some(all)
}

/// A state read back from its first part and `part(i)` for the others, as
/// many as its length needs (an agent of an earlier release declared one
/// part too few for a state whose header took it past a part's end); None
/// when its header is cut or a part is missing.
fn state_from_parts(first: &[u8], mut part: impl FnMut(u32) -> Option<Vec<u8>>) -> Option<Whole> {
    let word = |at: usize| first.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let (writer, len) = (word(0)?, word(4)? as usize);
    let mut all = first.to_vec();
    let mut i = 1;
    while all.len() < HEADER + len && i < HANDOFF_MAX_PARTS {
        all.extend_from_slice(&part(i)?);
        i += 1;
    }
    if all.len() < HEADER + len {
        return None;
    }
    all.truncate(HEADER + len);
    all.drain(..HEADER);
    Some(Whole { writer, state: all })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_of_any_size_is_read_back_from_its_parts_whole() {
        // Around each part's end, header included: a state whose header and
        // bytes just overflowed one part once declared one part too few.
        let sizes = (0..40).chain(HANDOFF_PART - 20..HANDOFF_PART + 20).chain(3 * HANDOFF_PART - 20..3 * HANDOFF_PART);
        for size in sizes {
            let state: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let all = state_parts(77, &state).unwrap();
            let parts: Vec<Vec<u8>> = all.chunks(HANDOFF_PART).map(<[u8]>::to_vec).collect();
            assert!(parts.iter().all(|p| !p.is_empty() && p.len() <= HANDOFF_PART), "{size}");
            let whole = state_from_parts(&parts[0], |i| parts.get(i as usize).cloned());
            assert_eq!(
                whole,
                Some(Whole { writer: 77, state: state.clone() }),
                "{size} bytes in {} parts",
                parts.len()
            );
            if parts.len() > 1 {
                let cut = state_from_parts(&parts[0], |i| {
                    parts.get(i as usize).filter(|_| i + 1 < parts.len() as u32).cloned()
                });
                assert_eq!(cut, None, "{size}: a part missing");
            }
        }
        assert!(state_parts(1, &vec![0; HANDOFF_PART * HANDOFF_MAX_PARTS as usize]).is_none(), "too large");
        // A request body of the default `max_body_bytes` being written, and its head.
        let big: Vec<u8> = (0..(16 << 20) + 4096).map(|i| (i % 253) as u8).collect();
        let all = state_parts(3, &big).expect("a body of 16 MiB is handed on");
        let parts: Vec<&[u8]> = all.chunks(HANDOFF_PART).collect();
        let whole = state_from_parts(parts[0], |i| parts.get(i as usize).map(|p| p.to_vec()));
        assert!(whole.is_some_and(|w| w.writer == 3 && w.state == big));
        // As an agent of an earlier release wrote it: one part declared, two written.
        let state = vec![9; HANDOFF_PART - 10];
        let mut parts: Vec<Vec<u8>> =
            state_parts(5, &state).unwrap().chunks(HANDOFF_PART).map(<[u8]>::to_vec).collect();
        assert_eq!(parts.len(), 2);
        parts[0][8..12].copy_from_slice(&1u32.to_le_bytes());
        let whole = state_from_parts(&parts[0], |i| parts.get(i as usize).cloned());
        assert_eq!(whole, Some(Whole { writer: 5, state }));
        assert_eq!(state_from_parts(&[1, 0, 0], |_| None), None, "a header cut short");
    }
}
