//! Prompt features computed at capture (the record's `features`): hashes, shares
//! and counts the opportunity detectors need, from a request's [`Prompt`] (which
//! each provider reads from its own spellings) — without keeping any prompt text.
//! Every hash goes through the caller's keyed hash (HMAC with the installation
//! secret), so a hash can't be tested against a guessed prompt without that secret.
use serde_json::Value;
use tokentap_event::{tokens, PromptFeatures, ToolCall};

use super::prompt::Prompt;
use super::provider::Api;

/// Keyed hash of bytes -> short hex id.
pub type Hasher<'a> = &'a dyn Fn(&[u8]) -> String;

/// Text above this many bytes is not scanned for JSON or repeats (bounded CPU).
const MAX_SCAN: usize = 1 << 20;
/// Shortest chunk counted as a repeat (a line of a pasted document, not "ok").
const MIN_CHUNK: usize = 64;

/// Distinct static prefixes whose token counts are remembered.
const PREFIX_CACHE: usize = 4096;

thread_local! {
    /// Prefix hash -> tokens. The same system prompt and tools come with every
    /// call of an application; tokenising them each time was the largest CPU cost
    /// per call. Bounded: cleared when full.
    static PREFIX_TOKENS: std::cell::RefCell<std::collections::HashMap<String, u64>> = Default::default();
}

fn prefix_tokens(key: &str, count: impl FnOnce() -> u64) -> u64 {
    PREFIX_TOKENS.with_borrow_mut(|cache| {
        if let Some(&n) = cache.get(key) {
            return n;
        }
        if cache.len() >= PREFIX_CACHE {
            cache.clear();
        }
        let n = count();
        cache.insert(key.to_owned(), n);
        n
    })
}

/// Collapse whitespace runs so formatting-only differences hash alike.
fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 64-bit SimHash over word trigrams.
pub fn simhash(text: &str) -> u64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return 0;
    }
    let mut acc = [0i32; 64];
    let grams = words.len().saturating_sub(2).max(1);
    for i in 0..grams {
        let gram = words[i..(i + 3).min(words.len())].join(" ").to_lowercase();
        let h = fnv64(gram.as_bytes());
        for (b, a) in acc.iter_mut().enumerate() {
            *a += if h >> b & 1 == 1 { 1 } else { -1 };
        }
    }
    acc.iter().enumerate().fold(0u64, |h, (b, a)| if *a > 0 { h | 1 << b } else { h })
}

fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ *x as u64).wrapping_mul(0x0100_0000_01b3))
}

/// JSON characters in `text`: whole-text JSON, else embedded objects/arrays of
/// 20+ characters. Returns (json chars, text with that JSON minified).
fn json_parts(text: &str) -> (usize, String) {
    let t = text.trim();
    if (t.starts_with('{') || t.starts_with('[')) && t.len() >= 2 {
        if let Ok(v) = serde_json::from_str::<Value>(t) {
            return (t.len(), v.to_string());
        }
    }
    let b = text.as_bytes();
    let (mut json, mut out, mut i, mut last) = (0, String::with_capacity(text.len()), 0, 0);
    while i < b.len() {
        if b[i] == b'{' || b[i] == b'[' {
            let mut it = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = it.next() {
                let n = it.byte_offset();
                if n >= 20 && (v.is_object() || v.is_array()) {
                    out.push_str(&text[last..i]);
                    out.push_str(&v.to_string());
                    json += n;
                    i += n;
                    last = i;
                    continue;
                }
            }
        }
        i += 1;
    }
    out.push_str(&text[last..]);
    (json, out)
}

/// Whitespace beyond one character per run.
fn removable_whitespace(text: &str) -> usize {
    let mut n = 0;
    let mut run = 0;
    for c in text.chars() {
        if c.is_whitespace() {
            run += 1;
            if run > 1 {
                n += 1;
            }
        } else {
            run = 0;
        }
    }
    n
}

/// Characters of chunks (lines of at least `MIN_CHUNK`) seen earlier in the prompt.
fn repeated_chars(text: &str) -> usize {
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .map(normalise)
        .filter(|l| l.len() >= MIN_CHUNK)
        .map(|l| if seen.insert(fnv64(l.as_bytes())) { 0 } else { l.len() })
        .sum()
}

/// Features of a request body as `api`'s provider reads it; none when the body
/// is not a JSON object.
pub fn of_request(api: Api, request: &Value, hash: Hasher) -> Option<PromptFeatures> {
    request.is_object().then(|| compute(&api.provider.prompt(api.shape, request), hash))
}

/// Features of one request's prompt.
pub fn compute(p: &Prompt, hash: Hasher) -> PromptFeatures {
    let mut f = PromptFeatures { max_tokens: p.max_tokens, ..Default::default() };
    if let Some(e) = &p.embedding {
        f.embedding_inputs = Some(e.inputs);
        f.prompt_hash = Some(hash(normalise(&e.text).as_bytes()));
        return f;
    }
    f.message_count = p.messages.len() as u32;
    let mut full = format!("{}\n{}\n", normalise(&p.system), p.tools);
    for (role, t) in &p.messages {
        full.push_str(role);
        full.push(':');
        full.push_str(&normalise(t));
        full.push('\n');
    }
    f.prompt_hash = Some(hash(full.as_bytes()));
    if !p.system.trim().is_empty() || !p.tools.is_empty() {
        let prefix = format!("{}\n{}", normalise(&p.system), p.tools);
        let key = hash(prefix.as_bytes());
        f.prefix_tokens =
            Some(prefix_tokens(&key, || tokens::count_text("", p.system.trim()) + tokens::count_text("", &p.tools)));
        f.prefix_hash = Some(key);
    }
    if let Some((_, first)) = p.messages.iter().find(|(r, _)| r == "user") {
        f.conversation_hash = Some(hash(format!("{}\n{}", normalise(&p.system), normalise(first)).as_bytes()));
    }
    let user: String =
        p.messages.iter().filter(|(r, _)| r == "user").map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("\n");
    if !user.trim().is_empty() {
        f.simhash = Some(format!("{:016x}", simhash(&user)));
    }
    f.tool_calls =
        p.tool_calls.iter().map(|(n, a)| ToolCall { name: n.clone(), args_hash: hash(a.as_bytes()) }).collect();
    // Shares over the prompt's own text (system + messages).
    let mut all = p.system.clone();
    for (_, t) in &p.messages {
        all.push_str(t);
    }
    if all.len() > MAX_SCAN || all.is_empty() {
        return f;
    }
    let (json, minified) = json_parts(&all);
    let ws = removable_whitespace(&all);
    let total = all.len() as f64;
    f.json_share = json as f64 / total;
    f.whitespace_share = ws as f64 / total;
    f.duplicate_chunk_share = repeated_chars(&all) as f64 / total;
    if f.json_share >= 0.2 || f.whitespace_share >= 0.1 {
        let compact = collapse_ws(&minified);
        let before = tokens::count_text("", &all);
        let after = tokens::count_text("", &compact);
        f.minify_saved_tokens = Some(before.saturating_sub(after));
    }
    f
}

/// Each whitespace run -> its first character.
fn collapse_ws(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_ws = false;
    for c in s.chars() {
        if c.is_whitespace() {
            if !prev_ws {
                out.push(c);
            }
            prev_ws = true;
        } else {
            out.push(c);
            prev_ws = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::registry;
    use serde_json::json;

    /// Features of `body` sent as a call of shape `name`, read by its provider.
    fn compute(name: &str, body: &Value, hash: Hasher) -> Option<PromptFeatures> {
        of_request(registry::api(name).unwrap(), body, hash)
    }

    fn h(b: &[u8]) -> String {
        format!("h{:016x}", fnv64(b))
    }

    #[test]
    fn same_prompt_same_hash_across_formatting_and_shapes_differ() {
        let a = json!({"model":"gpt-4o","messages":[{"role":"system","content":"Be terse."},{"role":"user","content":"Hello  there"}]});
        let b = json!({"model":"gpt-4o-mini","messages":[{"role":"system","content":"Be terse."},{"role":"user","content":"Hello there"}]});
        let c = json!({"model":"gpt-4o","messages":[{"role":"system","content":"Be terse."},{"role":"user","content":"Bye"}]});
        let fa = compute("chat_completions", &a, &h).unwrap();
        let fb = compute("chat_completions", &b, &h).unwrap();
        let fc = compute("chat_completions", &c, &h).unwrap();
        assert_eq!(fa.prompt_hash, fb.prompt_hash);
        assert_ne!(fa.prompt_hash, fc.prompt_hash);
        assert_eq!(fa.prefix_hash, fc.prefix_hash, "same system prompt");
        assert_eq!(fa.message_count, 1);
        assert!(fa.prefix_tokens.unwrap() >= 2);
        assert_ne!(fa.conversation_hash, fc.conversation_hash);
    }

    #[test]
    fn anthropic_gemini_bedrock_system_and_messages() {
        let an = json!({"system":[{"type":"text","text":"You are a bot."}],"max_tokens":5,
            "messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]});
        let f = compute("anthropic_messages", &an, &h).unwrap();
        assert_eq!(f.max_tokens, Some(5));
        assert!(f.prefix_hash.is_some() && f.simhash.is_some());
        let ge = json!({"systemInstruction":{"parts":[{"text":"You are a bot."}]},
            "contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":7}});
        let g = compute("gemini_generate", &ge, &h).unwrap();
        assert_eq!(g.max_tokens, Some(7));
        assert_eq!(g.prefix_tokens, f.prefix_tokens);
        let br = json!({"system":[{"text":"You are a bot."}],"messages":[{"role":"user","content":[{"text":"hi"}]}],
            "inferenceConfig":{"maxTokens":9}});
        assert_eq!(compute("bedrock_converse", &br, &h).unwrap().max_tokens, Some(9));
    }

    #[test]
    fn tool_calls_in_history_are_found_in_every_shape() {
        let oa = json!({"messages":[{"role":"user","content":"find x"},
            {"role":"assistant","tool_calls":[{"id":"1","type":"function","function":{"name":"search","arguments":"{\"q\": \"x\"}"}}]},
            {"role":"tool","tool_call_id":"1","content":"none"},
            {"role":"assistant","tool_calls":[{"id":"2","type":"function","function":{"name":"search","arguments":"{\"q\":\"x\"}"}}]}]});
        let f = compute("chat_completions", &oa, &h).unwrap();
        assert_eq!(f.tool_calls.len(), 2);
        assert_eq!(f.tool_calls[0], f.tool_calls[1], "same call whatever the spacing of its arguments");
        let an = json!({"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"search","input":{"q":"x"}}]}]});
        assert_eq!(compute("anthropic_messages", &an, &h).unwrap().tool_calls.len(), 1);
        let ge = json!({"contents":[{"role":"model","parts":[{"functionCall":{"name":"search","args":{"q":"x"}}}]}]});
        assert_eq!(compute("gemini_generate", &ge, &h).unwrap().tool_calls[0].name, "search");
    }

    #[test]
    fn json_whitespace_and_repeats_are_measured() {
        let doc = serde_json::to_string_pretty(
            &json!({"items":[{"id":1,"name":"alpha","tags":["a","b"]},{"id":2,"name":"beta","tags":[]}]}),
        )
        .unwrap();
        let r = json!({"messages":[{"role":"user","content":format!("Classify these:\n{doc}")}]});
        let f = compute("chat_completions", &r, &h).unwrap();
        assert!(f.json_share > 0.8, "{}", f.json_share);
        assert!(f.minify_saved_tokens.unwrap() > 5, "{:?}", f.minify_saved_tokens);
        let para = "The quarterly report shows revenue grew by twelve percent across all regions.";
        let r = json!({"messages":[{"role":"user","content":format!("{para}\n{para}\nSummarise.")}]});
        let f = compute("chat_completions", &r, &h).unwrap();
        assert!((f.duplicate_chunk_share - 0.45).abs() < 0.1, "{}", f.duplicate_chunk_share);
        let r = json!({"messages":[{"role":"user","content":"plain short prompt"}]});
        let f = compute("chat_completions", &r, &h).unwrap();
        assert_eq!((f.json_share, f.minify_saved_tokens), (0.0, None));
    }

    #[test]
    fn prefix_token_counts_are_computed_once_per_prefix() {
        assert_eq!(prefix_tokens("h_cache_test", || 5), 5);
        assert_eq!(prefix_tokens("h_cache_test", || unreachable!("counted again")), 5);
        assert_eq!(prefix_tokens("h_cache_other", || 7), 7);
    }

    #[test]
    fn simhash_near_duplicates_are_close() {
        let a = simhash("What is the refund policy for orders shipped to Canada after the holiday period");
        let b = simhash("What is the refund policy for orders shipped to Canada after the holiday season");
        let c = simhash("Write a poem about the sea and the wind and the long grey evenings of winter");
        assert!((a ^ b).count_ones() < (a ^ c).count_ones());
        assert!((a ^ c).count_ones() > 16);
    }

    #[test]
    fn embeddings_count_inputs() {
        let f = compute("embeddings", &json!({"input":"one"}), &h).unwrap();
        assert_eq!(f.embedding_inputs, Some(1));
        let f = compute("embeddings", &json!({"input":["a","b","c"]}), &h).unwrap();
        assert_eq!(f.embedding_inputs, Some(3));
        assert_eq!(compute("chat_completions", &Value::Null, &h), None);
    }
}
