//! Records checked against what the server served.
use super::*;

/// Compare one record with what the server served; panics with both on mismatch.
pub fn assert_matches_served(record: &Value, served: &Value, prices: &tokentap_event::PriceTable) {
    let e = &served["expected"];
    let ctx = || format!("\nrecord: {record}\nserved: {served}");
    let field = |k: &str| record[k].clone();
    // Gemini Live's server never names its model: the session's setup does.
    let answered = if record["operation"] == "live" { field("request_model") } else { field("response_model") };
    assert_eq!(answered, served["model"], "response_model{}", ctx());
    assert_eq!(field("stream"), served["stream"], "stream{}", ctx());
    assert_eq!(field("status"), Value::from(200), "status{}", ctx());
    assert_eq!(field("usage_source"), e["usage_source"], "usage_source{}", ctx());
    for (rk, ek) in [
        ("input_tokens", "input"),
        ("output_tokens", "output"),
        ("cached_input_tokens", "cached"),
        ("cache_write_tokens", "cache_write"),
        ("reasoning_tokens", "reasoning"),
    ] {
        if e["usage_source"] == "estimated" && rk == "input_tokens" {
            assert!(record[rk].as_u64().unwrap_or(0) > 0, "estimated input{}", ctx());
            continue;
        }
        assert_eq!(record[rk], e[ek], "{rk}{}", ctx());
    }
    // Cost: exactly the price table applied to the served tokens; null for a
    // model with no price (self-hosted), never zero.
    let model = served["model"].as_str().unwrap_or_default();
    if served["priced"] == false {
        assert_eq!(record["cost_usd"], Value::Null, "unpriced model must have null cost{}", ctx());
        return;
    }
    let p = prices.lookup(model).unwrap_or_else(|| panic!("no price for {model}"));
    let n = |k: &str| record[k].as_u64().unwrap_or(0);
    // Audio parts (Realtime, Gemini Live): as served, and priced at audio rates.
    for (rk, ek) in [
        ("input_audio_tokens", "input_audio"),
        ("cached_audio_tokens", "cached_audio"),
        ("output_audio_tokens", "output_audio"),
    ] {
        if let Some(want) = e.get(ek) {
            assert_eq!(&record[rk], want, "{rk}{}", ctx());
        }
    }
    let audio = tokentap_event::cost::Use {
        input: n("input_tokens"),
        output: n("output_tokens"),
        cached: n("cached_input_tokens"),
        cache_write: n("cache_write_tokens"),
        audio_input: n("input_audio_tokens"),
        audio_cached: n("cached_audio_tokens"),
        audio_output: n("output_audio_tokens"),
        ..Default::default()
    };
    let want = if audio.audio_input + audio.audio_output > 0 {
        p.cost_of(&audio)
    } else {
        p.cost(n("input_tokens"), n("output_tokens"), n("cached_input_tokens"), n("cache_write_tokens"))
    };
    let got = record["cost_usd"].as_f64().unwrap_or_else(|| panic!("no cost_usd{}", ctx()));
    assert!((got - want).abs() <= 1e-12 + want * 1e-9, "cost {got} != {want}{}", ctx());
    assert!(record["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "duration{}", ctx());
    assert!(record["event_id"].as_str().is_some_and(|s| s.len() == 36), "event_id{}", ctx());
}

/// Pair each record with the served entry it reports (by response id; embeddings,
/// which have none, by their unique input count). Asserts one record per call.
pub fn pair_with_served<'a>(records: &'a [Value], served: &'a [Value]) -> Vec<(&'a Value, &'a Value)> {
    let mut pairs = Vec::new();
    let mut used = std::collections::HashSet::new();
    for r in records {
        let hit =
            served.iter().enumerate().find(|(_, s)| match (s["response_id"].as_str(), s["request_id"].as_str()) {
                (Some(id), _) => r["response_id"].as_str() == Some(id),
                // No response id (Bedrock Converse, Ollama): the request id header.
                (None, Some(id)) => r["request_id"].as_str() == Some(id),
                // No id at all (embeddings, Gemini Live turns): the unique input count.
                (None, None) => {
                    matches!(r["operation"].as_str(), Some("embeddings" | "live"))
                        && r["input_tokens"] == s["expected"]["input"]
                }
            });
        let (i, s) = hit.unwrap_or_else(|| panic!("record matches nothing served: {r}"));
        assert!(used.insert(i), "two records for one served call: {s}");
        pairs.push((r, s));
    }
    pairs
}
