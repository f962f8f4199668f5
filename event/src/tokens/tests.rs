use super::bpe::Rank;
use super::*;
use serde_json::json;

#[test]
fn counts_known_strings() {
    // o200k_base: "hello world" is two tokens; " hello" repeated is one each.
    assert_eq!(count_text("gpt-4o", "hello world"), 2);
    assert_eq!(count_text("gpt-4o", &" hello".repeat(10)), 10);
    assert_eq!(count_text("gpt-4o", ""), 0);
    // cl100k_base for gpt-4 / gpt-3.5.
    assert_eq!(count_text("gpt-4", "hello world"), 2);
}

#[test]
fn chat_prompt_uses_message_framing() {
    let req = json!({"model":"gpt-4o","messages":[
        {"role":"system","content":"hello world"},
        {"role":"user","content":[{"type":"text","text":"hello world"}]}
    ]});
    // 3 priming + 2 x (3 framing + role + 2 content); roles are one token each.
    assert_eq!(count_chat_prompt("gpt-4o", &req), Some(3 + 2 * (3 + 1 + 2)));
    assert_eq!(count_chat_prompt("gpt-4o", &json!({"input":"x"})), None);
}

/// tiktoken-rs's encodings, the reference the compact ones must equal.
fn references() -> [(&'static Encoding, &'static tiktoken_rs::CoreBPE, &'static str); 2] {
    [
        (o200k(), tiktoken_rs::o200k_base_singleton(), "o200k_base"),
        (cl100k(), tiktoken_rs::cl100k_base_singleton(), "cl100k_base"),
    ]
}

#[test]
fn every_rank_is_tiktoken_rs_rank() {
    for (ours, reference, name) in references() {
        let n = ours.len() as Rank;
        for rank in 0..n {
            let bytes = reference.decode_bytes(&[rank]).unwrap_or_default();
            assert_eq!(ours.token(rank), Some(bytes.as_slice()), "{name} rank {rank}");
        }
        assert!(reference.decode_bytes(&[n]).is_err(), "{name}: ranks beyond {n} not shipped");
    }
}

/// A mixed corpus: prose, code, JSON, whitespace runs, scripts, emoji, digits,
/// contractions, and pieces past 100 bytes (the other merge loop).
fn corpus() -> Vec<String> {
    const PARTS: &[&str] = &[
        "hello",
        " world",
        "\n",
        "  ",
        "\t",
        "{\"a\": 1, \"b\": [true, null]}",
        "日本語のテキスト",
        "😀",
        "1234567",
        "'s",
        "'LL",
        " they've",
        "ÄÖü",
        "Straße",
        "http://x.y/z?q=1&r=2",
        "    indented",
        "\r\n",
        "CamelCaseWord",
        "___",
        "///",
        "fn main() { println!(\"hi\"); }",
        "Здравствуйте",
        "مرحبا",
        "  \n\n  ",
        "x",
        "!",
        "-- ",
        "0.5",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |m: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % m as u64) as usize
    };
    let mut out: Vec<String> =
        (0..400).map(|_| (0..1 + next(40)).map(|_| PARTS[next(PARTS.len())]).collect()).collect();
    let letters: String = (0..700).map(|_| char::from(b'a' + next(26) as u8)).collect();
    out.extend([
        letters.clone(),
        letters[..150].to_uppercase(),
        "a".repeat(300),
        "😀".repeat(60),
        " ".repeat(500),
        "9".repeat(250),
        format!("{letters} {letters}"),
        "ab".repeat(120),
    ]);
    out
}

#[test]
fn counts_equal_tiktoken_rs() {
    for (ours, reference, name) in references() {
        for text in corpus() {
            assert_eq!(ours.count(&text), reference.encode_ordinary(&text).len() as u64, "{name}: {text:?}");
        }
    }
}

/// Prose, code and tables from this repository's docs, which the agent's
/// estimates resemble more than the synthetic corpus.
#[test]
fn counts_equal_tiktoken_rs_on_the_docs() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut files = 0;
    for entry in std::fs::read_dir(docs).expect("docs/") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("a doc");
        for (ours, reference, name) in references() {
            assert_eq!(ours.count(&text), reference.encode_ordinary(&text).len() as u64, "{name}");
        }
        files += 1;
    }
    assert!(files >= 5, "only {files} docs");
}

/// Both merge loops agree on long pieces that are not tokens (the count picks
/// one by length, so each is also checked against tiktoken-rs above).
#[test]
fn merge_loops_agree() {
    let o200k = o200k();
    for text in corpus() {
        for len in [2, 3, 17, 99, 100, 250] {
            if text.len() >= len {
                let piece = &text.as_bytes()[..len];
                let (scan, heap) = o200k.merged_len_both_ways(piece);
                assert_eq!(scan, heap, "{piece:?}");
                assert!((1..=len).contains(&scan));
            }
        }
    }
}

/// The shipped `event/data/*.bpe.zst` are tiktoken-rs's tokens in rank order.
/// To regenerate them (after a tiktoken-rs update):
/// `TOKENTAP_WRITE_RANKS=1 cargo test -p tokentap-event shipped_rank_files`.
#[test]
fn shipped_rank_files_are_tiktoken_rs_ranks() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    for (_, reference, name) in references() {
        let mut data = Vec::new();
        let mut rank = 0;
        while let Ok(bytes) = reference.decode_bytes(&[rank]) {
            data.push(u8::try_from(bytes.len()).expect("tokens are under 256 bytes"));
            data.extend_from_slice(&bytes);
            rank += 1;
        }
        let path = dir.join(format!("{name}.bpe.zst"));
        if std::env::var_os("TOKENTAP_WRITE_RANKS").is_some() {
            let packed = zstd::stream::encode_all(data.as_slice(), 19).expect("zstd");
            std::fs::write(&path, packed).expect("write rank file");
        }
        let shipped = zstd::stream::decode_all(std::fs::read(&path).expect("rank file").as_slice()).expect("unzstd");
        assert!(shipped == data, "{name}: {} differs from tiktoken-rs; regenerate it", path.display());
    }
}
