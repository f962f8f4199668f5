//! Repeats found as rows arrive, so the Opportunities panels need no grouping
//! of every call by a hash (schema/016_waste_rollup.sql): each call row gets
//! how many earlier calls of its service and model sent the same prompt
//! (response caching), and its turn in its conversation with the
//! conversation's first input tokens (summarisation).
//!
//! Memory is bounded: each of the two maps keeps at most `keys` entries in two
//! generations; when the newer one fills, the older is forgotten (a prompt or
//! conversation idle since then starts again from one). Keys are 64-bit
//! hashes under a per-process random key, so a hostile agent cannot aim at
//! another service's entries. Each replica sees the calls sent to it: with
//! several replicas, a prompt's first call on each counts as a first.
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tokentap_event::PromptFeatures;

use crate::store::CallRow;

/// A call at this turn or later with more than twice its conversation's first
/// input tokens is growing: the thresholds the report's detector uses.
const MIN_TURNS: u32 = 4;

/// What a call row is looked up by: its service, model and prompt hash (not
/// for embeddings, as the report's detector), its service, model and
/// conversation hash. Taken from the record's typed features when the row is
/// made, so finding repeats reads no JSON.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RepeatKeys {
    prompt: Option<u64>,
    conversation: Option<u64>,
}

impl RepeatKeys {
    pub fn of(service: &str, model: &str, f: Option<&PromptFeatures>) -> Self {
        // Keyed per process, so a hostile agent cannot aim at another service's entries.
        static HASHER: OnceLock<RandomState> = OnceLock::new();
        let h = HASHER.get_or_init(RandomState::new);
        let Some(f) = f else { return Self::default() };
        fn nonempty(s: &Option<String>) -> Option<&str> {
            s.as_deref().filter(|s| !s.is_empty())
        }
        Self {
            prompt: nonempty(&f.prompt_hash)
                .filter(|_| f.embedding_inputs.is_none())
                .map(|p| h.hash_one(("p", service, model, p))),
            conversation: nonempty(&f.conversation_hash).map(|c| h.hash_one(("c", service, model, c))),
        }
    }
}

/// 16 bytes (24 with its key in the map): input tokens fit 32 bits.
#[derive(Default, Clone, Copy)]
struct Turns {
    turns: u32,
    first_input: Option<u32>,
    grew: bool,
}

/// A map holding at most `cap` entries in two halves; a lookup moves an
/// entry into the newer half.
struct Generations<V> {
    current: HashMap<u64, V>,
    previous: HashMap<u64, V>,
    half: usize,
}

impl<V: Default> Generations<V> {
    fn new(cap: usize) -> Self {
        Self { current: HashMap::new(), previous: HashMap::new(), half: (cap / 2).max(1) }
    }

    /// The entry of `k`, and whether the older half was forgotten to make room.
    fn entry(&mut self, k: u64) -> (&mut V, bool) {
        let mut rotated = false;
        if !self.current.contains_key(&k) {
            let v = self.previous.remove(&k).unwrap_or_default();
            if self.current.len() >= self.half {
                self.previous = std::mem::take(&mut self.current);
                rotated = true;
            }
            self.current.insert(k, v);
        }
        (self.current.get_mut(&k).expect("inserted above"), rotated)
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

pub struct Repeats {
    prompts: Generations<u32>,
    conversations: Generations<Turns>,
}

/// What the repeat finder counts (on /metrics).
#[derive(Default)]
pub struct RepeatMetrics {
    /// Prompts and conversations remembered.
    pub keys: AtomicU64,
    /// Times the older half of a map was forgotten.
    pub forgotten: AtomicU64,
}

impl Repeats {
    /// At most `keys` prompts and `keys` conversations.
    pub fn new(keys: usize) -> Self {
        Self { prompts: Generations::new(keys), conversations: Generations::new(keys) }
    }

    /// Fill the repeat columns of `rows`, in their order.
    pub fn mark(&mut self, rows: &mut [CallRow], m: &RepeatMetrics) {
        let mut forgotten = 0;
        for r in rows.iter_mut() {
            forgotten += self.mark_one(r);
        }
        m.forgotten.fetch_add(forgotten, Ordering::Relaxed);
        m.keys.store((self.prompts.len() + self.conversations.len()) as u64, Ordering::Relaxed);
    }

    /// Times a half was forgotten meanwhile.
    fn mark_one(&mut self, r: &mut CallRow) -> u64 {
        let mut forgotten = 0;
        if let Some(key) = r.repeat_keys.prompt {
            let (seen, rotated) = self.prompts.entry(key);
            forgotten += u64::from(rotated);
            r.prompt_repeat = *seen;
            *seen = seen.saturating_add(1);
        }
        if let Some(key) = r.repeat_keys.conversation {
            let (t, rotated) = self.conversations.entry(key);
            forgotten += u64::from(rotated);
            t.turns = t.turns.saturating_add(1);
            if t.first_input.is_none() {
                t.first_input = r.input_tokens.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            }
            r.conversation_turn = t.turns;
            r.conversation_first_input = t.first_input.map_or(0, u64::from);
            let growing =
                t.turns >= MIN_TURNS && t.first_input.is_some_and(|f| r.input_tokens.unwrap_or(0) > u64::from(f) * 2);
            r.conversation_growing = match (growing, t.grew) {
                (false, _) => 0,
                (true, true) => 1,
                (true, false) => {
                    t.grew = true;
                    2
                }
            };
        }
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokentap_event::LlmCall;

    fn row(service: &str, model: &str, features: Option<PromptFeatures>, input: Option<u64>) -> CallRow {
        let r = LlmCall {
            event_id: LlmCall::new_event_id(),
            ts: "2026-12-03T10:00:00Z".into(),
            provider: "openai".into(),
            operation: "chat".into(),
            response_model: Some(model.into()),
            service: Some(service.into()),
            input_tokens: input,
            features,
            ..Default::default()
        };
        CallRow::from_record(r, "c")
    }

    fn chat(prompt: &str, conversation: &str) -> Option<PromptFeatures> {
        Some(PromptFeatures {
            prompt_hash: Some(prompt.into()),
            conversation_hash: Some(conversation.into()),
            ..Default::default()
        })
    }

    fn embedding() -> Option<PromptFeatures> {
        Some(PromptFeatures { prompt_hash: Some("e".into()), embedding_inputs: Some(1), ..Default::default() })
    }

    #[test]
    fn repeats_count_per_service_model_and_prompt() {
        let (mut rep, m) = (Repeats::new(1000), RepeatMetrics::default());
        let mut rows = vec![
            row("a", "gpt-4o", chat("p1", ""), Some(10)),
            row("a", "gpt-4o", chat("p1", ""), Some(10)),
            row("b", "gpt-4o", chat("p1", ""), Some(10)),
            row("a", "gpt-4o-mini", chat("p1", ""), Some(10)),
            row("a", "gpt-4o", chat("p1", ""), Some(10)),
            row("a", "gpt-4o", chat("p2", ""), Some(10)),
            // Embeddings and rows without a prompt hash are not repeats.
            row("a", "emb", embedding(), Some(3)),
            row("a", "emb", embedding(), Some(3)),
            row("a", "gpt-4o", None, Some(10)),
        ];
        rep.mark(&mut rows, &m);
        let seen: Vec<u32> = rows.iter().map(|r| r.prompt_repeat).collect();
        assert_eq!(seen, [0, 1, 0, 0, 2, 0, 0, 0, 0]);
        assert!(rows.iter().all(|r| r.conversation_turn == 0));
        assert_eq!(m.keys.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn conversations_count_turns_and_flag_growth_once() {
        let (mut rep, m) = (Repeats::new(1000), RepeatMetrics::default());
        // Turn 1 failed (no usage): the first input is turn 2's.
        let inputs = [None, Some(100), Some(150), Some(200), Some(201), Some(300), Some(50), Some(900)];
        let mut rows: Vec<CallRow> =
            inputs.iter().enumerate().map(|(i, n)| row("a", "m", chat(&format!("p{i}"), "c1"), *n)).collect();
        rows.push(row("a", "m", chat("x", "c2"), Some(5)));
        rep.mark(&mut rows, &m);
        let turns: Vec<u32> = rows.iter().map(|r| r.conversation_turn).collect();
        assert_eq!(turns, [1, 2, 3, 4, 5, 6, 7, 8, 1]);
        let first: Vec<u64> = rows.iter().map(|r| r.conversation_first_input).collect();
        assert_eq!(first, [0, 100, 100, 100, 100, 100, 100, 100, 5]);
        // Growing: turn >= 4 and more than 2 x 100 input tokens; 2 the first time.
        let growing: Vec<u8> = rows.iter().map(|r| r.conversation_growing).collect();
        assert_eq!(growing, [0, 0, 0, 0, 2, 1, 0, 1, 0]);
    }

    #[test]
    fn entries_stay_small() {
        assert_eq!(std::mem::size_of::<(u64, Turns)>(), 24);
        assert_eq!(std::mem::size_of::<(u64, u32)>(), 16);
    }

    #[test]
    fn memory_is_bounded_and_recent_keys_survive_a_rotation() {
        let (mut rep, m) = (Repeats::new(100), RepeatMetrics::default());
        let mut hot = vec![row("a", "m", chat("hot", ""), Some(1))];
        rep.mark(&mut hot, &m);
        for i in 0..10_000 {
            let mut cold = vec![row("a", "m", chat(&format!("cold{i}"), ""), Some(1))];
            rep.mark(&mut cold, &m);
            if i % 40 == 0 {
                let mut again = vec![row("a", "m", chat("hot", ""), Some(1))];
                rep.mark(&mut again, &m);
                assert!(again[0].prompt_repeat > 0, "a prompt used often is never forgotten");
            }
            assert!(rep.prompts.len() <= 100);
        }
        assert!(m.forgotten.load(Ordering::Relaxed) > 100);
        let mut old = vec![row("a", "m", chat("cold0", ""), Some(1))];
        rep.mark(&mut old, &m);
        assert_eq!(old[0].prompt_repeat, 0, "long idle: forgotten");
    }
}
