//! One call seen twice — by the agent (an eBPF record) and by an SDK (an OTLP
//! span) — is stored once. The two meet on the provider's id of the answer
//! (`response_id`, the span's `gen_ai.response.id`) within the provider's API
//! family: an SDK names the provider by the SDK it instruments (the openai
//! SDK says `openai` against a vLLM server the agent records as
//! `openai_compatible`, or against Groq), so the family, not the host, is
//! what both sides agree on.
//!
//! The eBPF record wins (it is exact by construction): a span whose call an
//! agent already delivered is not stored; a span is held for a short window
//! before it is stored, so an agent's record arriving in that window still
//! wins. Once a span's row is committed, an agent's record of the same call
//! arriving later is the duplicate (the rollups are fed on insert, so a row
//! can't be taken back without counting the call twice there).
//!
//! Memory is bounded: the most recent `cap` keys (a 128-bit hash each, not
//! the id's text), oldest forgotten first, like the event-id dedup window.
use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// Who claimed a call first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// An agent's record.
    Ebpf,
    /// The span whose row has this event id.
    Otel(u128),
}

/// What to do with a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Store it: the first of its call.
    Store,
    /// The same span's row again: store it (dedup by event id drops or waits
    /// for it); the claim is the first one's.
    Again,
    /// An agent's record of this call is stored or on its way.
    DuplicateOfEbpf,
    /// Another span of this call (a second instrumentation layer) is stored.
    DuplicateOfOtel,
}

pub struct Matcher {
    seen: HashMap<u128, Seen>,
    order: VecDeque<u128>,
    cap: usize,
}

/// The provider's API family: what an SDK's span and the agent's host-based
/// name have in common.
pub fn family(provider: &str) -> &str {
    let p = provider.strip_suffix("_compatible").unwrap_or(provider);
    match p {
        "openai" | "azure_openai" | "mistral" | "groq" | "deepseek" | "together" | "fireworks" | "openrouter"
        | "xai" | "perplexity" => "openai",
        other => other,
    }
}

/// The match key of a call: family + response id; None without a response id.
pub fn key(provider: &str, response_id: Option<&str>) -> Option<u128> {
    let id = response_id.filter(|id| !id.is_empty())?;
    // Two 64-bit SipHashes with fixed keys: stable within the process (keys
    // are always computed here, from text), 128 bits so a false match among a
    // million keys is practically impossible.
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        family(provider).hash(&mut h);
        id.hash(&mut h);
        h.finish()
    };
    Some(((half(1) as u128) << 64) | half(2) as u128)
}

impl Matcher {
    pub fn new(cap: usize) -> Self {
        Self { seen: HashMap::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Without claiming: is this span's call already an agent's?
    pub fn is_ebpf(&self, key: u128) -> bool {
        self.seen.get(&key) == Some(&Seen::Ebpf)
    }

    /// An agent's record arrives: it claims its call unless a span's row did first.
    pub fn ebpf(&mut self, key: u128) -> Claim {
        match self.seen.get(&key) {
            Some(Seen::Otel(_)) => Claim::DuplicateOfOtel,
            Some(Seen::Ebpf) => Claim::Store,
            None => {
                self.remember(key, Seen::Ebpf);
                Claim::Store
            }
        }
    }

    /// A span's row is about to be stored (its hold is over).
    pub fn otel(&mut self, key: u128, event_id: u128) -> Claim {
        match self.seen.get(&key) {
            Some(Seen::Ebpf) => Claim::DuplicateOfEbpf,
            Some(Seen::Otel(id)) if *id == event_id => Claim::Again,
            Some(Seen::Otel(_)) => Claim::DuplicateOfOtel,
            None => {
                self.remember(key, Seen::Otel(event_id));
                Claim::Store
            }
        }
    }

    /// A span's row ClickHouse refused: its call is unclaimed again.
    pub fn release(&mut self, key: u128, event_id: u128) {
        if let Entry::Occupied(e) = self.seen.entry(key) {
            if *e.get() == Seen::Otel(event_id) {
                e.remove();
            }
        }
    }

    /// Whether either side claimed this call here (or was loaded at start).
    pub fn knows(&self, key: u128) -> bool {
        self.seen.contains_key(&key)
    }

    /// A claim another replica stored (found in ClickHouse): remembered
    /// unless this replica already knows the call.
    pub fn learn(&mut self, key: u128, seen: Seen) {
        if !self.seen.contains_key(&key) {
            self.remember(key, seen);
        }
    }

    /// Filled at start from the rows stored recently (oldest first).
    pub fn load(&mut self, key: u128, seen: Seen) {
        self.remember(key, seen);
    }

    fn remember(&mut self, key: u128, seen: Seen) {
        self.seen.insert(key, seen);
        self.order.push_back(key);
        // A released key may still be in `order`: popping it then finds
        // nothing, or the key claimed again (forgotten a little early: harmless).
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ebpf_wins_whichever_arrives_first_until_a_span_is_committed() {
        let mut m = Matcher::new(10);
        let k = key("openai_compatible", Some("chatcmpl-1")).unwrap();
        assert_eq!(key("openai", Some("chatcmpl-1")), Some(k), "SDK and agent names meet in the family");
        assert_ne!(key("anthropic", Some("chatcmpl-1")), Some(k));
        assert_eq!(key("openai", Some("")), None);
        // Agent first: the span is the duplicate.
        assert_eq!(m.ebpf(k), Claim::Store);
        assert!(m.is_ebpf(k));
        assert_eq!(m.otel(k, 7), Claim::DuplicateOfEbpf);
        assert_eq!(m.ebpf(k), Claim::Store, "the agent's retry is still its record");
        // Span committed first: a later agent record is the duplicate; the
        // same span again is stored (dedup by event id drops it); another
        // span of the same call is a duplicate.
        let k2 = key("anthropic", Some("msg_1")).unwrap();
        assert_eq!(m.otel(k2, 1), Claim::Store);
        assert_eq!(m.otel(k2, 1), Claim::Again);
        assert_eq!(m.otel(k2, 2), Claim::DuplicateOfOtel);
        assert_eq!(m.ebpf(k2), Claim::DuplicateOfOtel);
        // A refused row frees its call.
        m.release(k2, 2);
        assert_eq!(m.otel(k2, 2), Claim::DuplicateOfOtel, "only the claimant releases");
        m.release(k2, 1);
        assert_eq!(m.ebpf(k2), Claim::Store);
    }

    #[test]
    fn bounded_oldest_first() {
        let mut m = Matcher::new(3);
        for i in 0..5 {
            m.ebpf(key("openai", Some(&format!("id-{i}"))).unwrap());
        }
        assert_eq!(m.len(), 3);
        assert!(!m.is_ebpf(key("openai", Some("id-1")).unwrap()));
        assert!(m.is_ebpf(key("openai", Some("id-4")).unwrap()));
    }
}
