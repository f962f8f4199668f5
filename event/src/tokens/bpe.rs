//! Byte-pair encoding that only counts tokens, with tiktoken's rules and ranks
//! in a tenth of the memory of tiktoken-rs's `CoreBPE`.
//!
//! Why not `CoreBPE`: it keeps every token as its own `Vec<u8>` three times
//! (encoder, decoder, sorted token list) plus 128 regex clones, about 47 MiB of
//! heap for o200k_base and 24 MiB for cl100k_base, most of an idle agent's
//! footprint once one record needed an estimate. Counting needs the rank of a
//! byte string and nothing else. Here the tokens are one buffer in rank order
//! (`u8` length, then the bytes: the shipped `data/*.bpe.zst` decompressed),
//! their offsets, and a hash table of ranks keyed by the bytes they point to:
//! ~3.7 MiB for o200k_base, ~1.9 MiB for cl100k_base.
//!
//! The rules are tiktoken's (OpenAI, MIT licence; the ranks and split patterns
//! are its data, as shipped by tiktoken-rs, MIT): split the text with the
//! pattern; a piece that is a token counts one; any other piece starts as
//! single bytes and repeatedly merges the adjacent pair whose concatenation has
//! the lowest rank, leftmost first, until no pair is a token. The code is ours;
//! the tests compare the counts with tiktoken-rs on every rank and a corpus.
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;

use fancy_regex::Regex;
use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

pub type Rank = u32;

/// Not a token: never merged.
const NONE: Rank = Rank::MAX;

/// cl100k_base's split pattern (tiktoken-rs does not export it).
pub const CL100K_PATTERN: &str = "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s";

pub const O200K_PATTERN: &str = tiktoken_rs::O200K_BASE_PAT_STR;

/// From this length on a piece merges with a heap (n log n) instead of
/// rescanning its pairs after each merge (n squared, but faster when short).
const HEAP_FROM: usize = 100;

pub struct Encoding {
    pattern: Regex,
    ranks: Ranks,
}

impl Encoding {
    /// `packed`: the zstd-compressed token list (see the module docs).
    pub fn new(packed: &[u8], pattern: &str) -> Self {
        // Shipped data and patterns, checked by the tests: a failure here is a build defect.
        #[allow(clippy::expect_used)]
        let data = zstd::stream::decode_all(packed).expect("shipped BPE ranks decompress");
        #[allow(clippy::expect_used)]
        let pattern = Regex::new(pattern).expect("shipped BPE pattern compiles");
        Self { pattern, ranks: Ranks::new(data) }
    }

    /// Tokens of `text`, as tiktoken's `encode_ordinary(text).len()`.
    pub fn count(&self, text: &str) -> u64 {
        let mut n = 0u64;
        for m in self.pattern.find_iter(text) {
            // fancy-regex gives up on pathological backtracking; tiktoken-rs
            // panics there. An estimate stops counting instead.
            let Ok(m) = m else { break };
            let piece = m.as_str().as_bytes();
            n += if self.ranks.get(piece).is_some() { 1 } else { self.ranks.merged_len(piece) as u64 };
        }
        n
    }

    /// The bytes of token `rank` (for the tests).
    #[cfg(test)]
    pub fn token(&self, rank: Rank) -> Option<&[u8]> {
        ((rank as usize) < self.ranks.starts.len()).then(|| self.ranks.token(rank))
    }

    /// A piece's token count by both merge loops (for the tests).
    #[cfg(test)]
    pub fn merged_len_both_ways(&self, piece: &[u8]) -> (usize, usize) {
        (self.ranks.merged_len_by_scan(piece), self.ranks.merged_len_by_heap(piece))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ranks.starts.len()
    }
}

struct Ranks {
    /// Each token in rank order: its length (`u8`), then its bytes.
    data: Vec<u8>,
    /// Where token `rank` starts in `data` (its length byte).
    starts: Vec<u32>,
    /// Ranks, hashed by their token's bytes.
    table: HashTable<Rank>,
}

fn token_at<'a>(data: &'a [u8], starts: &[u32], rank: Rank) -> &'a [u8] {
    let s = starts[rank as usize] as usize;
    &data[s + 1..s + 1 + data[s] as usize]
}

impl Ranks {
    fn new(mut data: Vec<u8>) -> Self {
        data.shrink_to_fit();
        let mut starts = Vec::new();
        let mut i = 0;
        while i < data.len() {
            starts.push(i as u32);
            i += 1 + data[i] as usize;
        }
        starts.shrink_to_fit();
        let hash = |bytes: &[u8]| FxBuildHasher.hash_one(bytes);
        let mut table = HashTable::with_capacity(starts.len());
        for rank in 0..starts.len() as Rank {
            table.insert_unique(hash(token_at(&data, &starts, rank)), rank, |&r| hash(token_at(&data, &starts, r)));
        }
        Self { data, starts, table }
    }

    fn token(&self, rank: Rank) -> &[u8] {
        token_at(&self.data, &self.starts, rank)
    }

    fn get(&self, bytes: &[u8]) -> Option<Rank> {
        self.table.find(FxBuildHasher.hash_one(bytes), |&r| self.token(r) == bytes).copied()
    }

    fn rank(&self, bytes: &[u8]) -> Rank {
        self.get(bytes).unwrap_or(NONE)
    }

    /// How many tokens `piece` (not itself a token) ends up as.
    fn merged_len(&self, piece: &[u8]) -> usize {
        if piece.len() < 2 {
            piece.len()
        } else if piece.len() < HEAP_FROM {
            self.merged_len_by_scan(piece)
        } else {
            self.merged_len_by_heap(piece)
        }
    }

    /// Keeps the token boundaries and each adjacent pair's rank; after a merge
    /// only the two pairs touching the merged token change.
    fn merged_len_by_scan(&self, piece: &[u8]) -> usize {
        // Token k is piece[cuts[k]..cuts[k + 1]].
        let mut cuts: Vec<usize> = (0..=piece.len()).collect();
        // Rank of tokens k and k + 1 together.
        let pair = |cuts: &[usize], k: usize| match cuts.get(k + 2) {
            Some(&end) => self.rank(&piece[cuts[k]..end]),
            None => NONE,
        };
        let mut pairs: Vec<Rank> = (0..piece.len() - 1).map(|k| pair(&cuts, k)).collect();
        // The lowest rank, leftmost on a tie (`min_by_key` keeps the first).
        while let Some((k, _)) = pairs.iter().enumerate().filter(|&(_, &r)| r != NONE).min_by_key(|&(_, r)| *r) {
            cuts.remove(k + 1);
            pairs.remove(k);
            if k < pairs.len() {
                pairs[k] = pair(&cuts, k);
            }
            if k > 0 {
                pairs[k - 1] = pair(&cuts, k - 1);
            }
        }
        cuts.len() - 1
    }

    /// The same merges from a min-heap of candidate pairs (rank, then start).
    /// Tokens form a linked list by start offset; a candidate is stale once
    /// either of its tokens has grown, which shows as a different end.
    fn merged_len_by_heap(&self, piece: &[u8]) -> usize {
        let n = piece.len();
        // For a live token starting at i: where it ends, where the previous
        // one starts. A token absorbed into its left neighbour is dead.
        let mut end: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut live = vec![true; n];
        let mut heap = BinaryHeap::with_capacity(n);
        // (rank, left start, right end) of the pair starting at `left`, if a token.
        let candidate = |end: &[usize], left: usize| {
            let mid = end[left];
            let stop = *end.get(mid)?;
            let rank = self.get(&piece[left..stop])?;
            Some(Reverse((rank, left, stop)))
        };
        heap.extend((0..n - 1).filter_map(|i| candidate(&end, i)));
        let mut tokens = n;
        while let Some(Reverse((_, left, stop))) = heap.pop() {
            let mid = end[left];
            if !live[left] || mid >= n || end[mid] != stop {
                continue;
            }
            live[mid] = false;
            end[left] = stop;
            if stop < n {
                prev[stop] = left;
            }
            tokens -= 1;
            heap.extend(candidate(&end, left));
            if left > 0 {
                heap.extend(candidate(&end, prev[left]));
            }
        }
        tokens
    }
}
