//! The calibration workloads: LLM calls with planted inefficiencies of known
//! size, and a clean one with none. Each call states the usage the test server
//! reports (`x-test-usage`), so the truth of every planted saving is computed
//! here from the price table, independently of the detectors. Shared by the
//! end-to-end test and `cargo xtask demo`.
use serde_json::{json, Value};
use tokentap_event::{tokens, PriceTable};

/// One call: `api` (`chat` or `embeddings`), the SDK arguments, the usage to report.
pub fn call(api: &str, body: Value, input: u64, output: u64) -> Value {
    json!({"api": api, "body": body, "usage": {"input": input, "output": output}})
}

/// Deterministic filler text: `n` words, different for each `seed`.
pub fn words(seed: u64, n: usize) -> String {
    const W: &[&str] = &[
        "river", "ledger", "orange", "quantum", "harbor", "velvet", "cactus", "lantern", "meadow", "circuit", "pepper",
        "glacier", "saddle", "thunder", "mosaic", "anchor", "willow", "copper", "falcon", "biscuit", "nebula",
        "tundra", "marble", "cobalt", "prairie", "violin", "summit", "garnet", "pigeon", "canyon",
    ];
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            W[(x % W.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// Observed saving truth per opportunity kind (USD over the workload).
pub type Truths = Vec<(&'static str, f64)>;

fn price(prices: &PriceTable, model: &str) -> tokentap_event::Prices {
    prices.lookup(model).unwrap_or_else(|| panic!("no price for {model}")).clone()
}

/// The planted workload and the truth of each planted saving.
pub fn planted(prices: &PriceTable) -> (Vec<Value>, Truths) {
    let (calls, truths, _) = workload(prices, false);
    (calls, truths)
}

/// The planted workload remediated — duplicates answered from a cache,
/// prompt caching on for the shared prefix, yes/no calls on the small model,
/// the agent no longer looping, history windowed, compact JSON, embeddings
/// batched — and the truth of each saving realised against [`planted`]
/// (USD over the workload: planted spend minus remediated spend on the same
/// work, from the price table).
pub fn remediated(prices: &PriceTable) -> (Vec<Value>, Truths) {
    let (calls, _, realised) = workload(prices, true);
    (calls, realised)
}

/// The planted workload made worse: the duplicated question asked 20 times
/// instead of 5, and the pretty-printed JSON calls sent to gpt-4o.
pub fn worse(prices: &PriceTable) -> Vec<Value> {
    let (mut calls, _, _) = workload(prices, false);
    for c in calls.iter_mut() {
        if c["body"]["messages"][0]["content"].as_str().is_some_and(|t| t.starts_with("Summarise these orders")) {
            c["body"]["model"] = json!("gpt-4o");
        }
    }
    let dup = calls[0].clone();
    calls.extend(std::iter::repeat_n(dup, 15));
    calls
}

/// (calls, planted truths, realised truths when `fixed`).
fn workload(prices: &PriceTable, fixed: bool) -> (Vec<Value>, Truths, Truths) {
    let mut calls = Vec::new();
    let mut truths = Vec::new();
    let mut realised = Vec::new();
    let cost = |m: &str, i: u64, o: u64| price(prices, m).cost(i, o, 0, 0);

    // 1. The same question five times: four could come from a response cache.
    for _ in 0..if fixed { 1 } else { 5 } {
        let body = json!({"model": "gpt-4o-mini", "messages": [user("What is the capital of France? Answer in one paragraph.")]});
        calls.push(call("chat", body, 420, 120));
    }
    truths.push(("duplicate_calls", 4.0 * cost("gpt-4o-mini-2024-07-18", 420, 120)));
    realised.push(("duplicate_calls", 4.0 * cost("gpt-4o-mini-2024-07-18", 420, 120)));

    // 2. A 2,000-token system prompt sent ten times without prompt caching.
    let system = format!("hello{}", " hello".repeat(1999));
    let prefix = tokens::count_text("", &system);
    let p = price(prices, "gpt-4o-2024-08-06");
    let mut saved = 0.0;
    for i in 0..10 {
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": system},
            user(&format!("Question {i}: {}", words(100 + i, 40))),
        ]});
        let mut c = call("chat", body, prefix + 60, 200);
        // Remediated: every call after the first reads the prefix from the cache.
        if fixed && i > 0 {
            c["usage"]["cached"] = json!(prefix);
            saved += p.cost(prefix + 60, 200, 0, 0) - p.cost(prefix + 60, 200, prefix, 0);
        }
        calls.push(c);
    }
    truths.push(("prompt_caching", 9.0 * prefix as f64 * (p.input - p.cache_read.unwrap_or(p.input))));
    realised.push(("prompt_caching", saved));

    // 3. A frontier model answering yes/no.
    let mut downgrade = 0.0;
    for i in 0..20 {
        let body = json!({"model": if fixed { "gpt-4o-mini" } else { "gpt-4o" }, "max_tokens": 1, "messages": [
            {"role": "system", "content": "Answer yes or no."},
            user(&format!("Is this review positive? {}", words(1000 + i, 60))),
        ]});
        calls.push(call("chat", body, 300, 1));
        downgrade += cost("gpt-4o-2024-08-06", 300, 1) - cost("gpt-4o-mini", 300, 1);
    }
    truths.push(("model_downgrade", downgrade));
    realised.push((
        "model_downgrade",
        cost("gpt-4o-2024-08-06", 300, 1) * 20.0 - cost("gpt-4o-mini-2024-07-18", 300, 1) * 20.0,
    ));

    // 4. An agent calling the same tool with the same arguments again and again
    //    (remediated: the tool's answer is kept and the agent stops after it).
    let mut history = vec![
        json!({"role": "system", "content": "You are a travel agent with tools."}),
        user("Find me the weather in Lisbon."),
    ];
    let mut loop_cost = 0.0;
    for i in 0..6u64 {
        let body = json!({"model": "gpt-4o-mini", "messages": history.clone(),
                          "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
        let (input, output) = (400 + 50 * i, 12);
        if i >= 2 {
            loop_cost += cost("gpt-4o-mini-2024-07-18", input, output);
        } else {
            calls.push(call("chat", body.clone(), input, output));
        }
        if i >= 2 && !fixed {
            calls.push(call("chat", body, input, output));
        }
        history.push(
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{i}"), "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Lisbon\"}"}}]}),
        );
        history.push(json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": "unavailable, try again"}));
    }
    truths.push(("agent_loop", loop_cost));
    realised.push(("agent_loop", loop_cost));

    // 5. A conversation that grows by 800 tokens a turn, never summarised
    //    (remediated: the first message and the last two turns are sent).
    let mut conv = vec![user(&format!("Let's plan a product launch. {}", words(7, 30)))];
    let mut excess = 0u64;
    for i in 0..10u64 {
        let input = 1000 + 800 * i;
        let sent = if fixed {
            let mut w = vec![conv[0].clone()];
            w.extend(conv[1..].iter().rev().take(4).rev().cloned());
            w
        } else {
            conv.clone()
        };
        calls.push(call(
            "chat",
            json!({"model": "gpt-4o", "messages": sent}),
            if fixed { input.min(2000) } else { input },
            100,
        ));
        excess += input.saturating_sub(2000);
        conv.push(json!({"role": "assistant", "content": words(50 + i, 30)}));
        conv.push(user(&words(80 + i, 30)));
    }
    truths.push(("context_bloat", excess as f64 * p.input));
    realised.push(("context_bloat", excess as f64 * p.input));

    // 6. Pretty-printed JSON in prompts (remediated: compact JSON, fewer tokens).
    let mut minify = 0u64;
    for i in 0..10u64 {
        let doc: Value = json!({"orders": (0..12).map(|k| json!({"id": i * 100 + k, "customer": {"name": words(i * 13 + k, 2),
            "tier": "gold"}, "items": [{"sku": format!("SKU-{k}"), "qty": k % 3 + 1}], "notes": words(k, 4)})).collect::<Vec<_>>()});
        let pretty = serde_json::to_string_pretty(&doc).unwrap().replace("  ", "        ");
        let text = format!("Summarise these orders:\n{pretty}");
        let compact = format!("Summarise these orders:\n{}", doc);
        let saved = tokens::count_text("", &text).saturating_sub(tokens::count_text("", &compact));
        minify += saved;
        let (sent, input) = if fixed { (compact, 2500 - saved) } else { (text, 2500) };
        calls.push(call("chat", json!({"model": "gpt-4o-mini", "messages": [user(&sent)]}), input, 150));
    }
    let mini_input = price(prices, "gpt-4o-mini-2024-07-18").input;
    truths.push(("verbose_format", minify as f64 * mini_input));
    realised.push(("verbose_format", minify as f64 * mini_input));

    // 7. Embeddings one input at a time (remediated: one request of 15 inputs;
    //    the same tokens are billed, so nothing is saved in USD).
    let mut emb = 0.0;
    let inputs: Vec<String> = (0..15u64).map(|i| words(500 + i, 50)).collect();
    if fixed {
        calls.push(call("embeddings", json!({"model": "text-embedding-3-small", "input": inputs}), 3000, 0));
    } else {
        for text in inputs {
            calls.push(call("embeddings", json!({"model": "text-embedding-3-small", "input": text}), 200, 0));
            emb += cost("text-embedding-3-small", 200, 0) * 0.5;
        }
    }
    truths.push(("embedding_batching", emb));
    realised.push(("embedding_batching", 0.0));
    (calls, truths, realised)
}

/// Calls with nothing to improve: distinct prompts, a small model with real
/// outputs, short prefixes, a short conversation, batched embeddings.
pub fn clean() -> Vec<Value> {
    let mut calls = Vec::new();
    for i in 0..12u64 {
        let body = json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            user(&format!("Write a short note about {}", words(2000 + i, 25))),
        ]});
        calls.push(call("chat", body, 90, 220));
    }
    let mut conv = vec![user("Help me name a bakery.")];
    for i in 0..3u64 {
        calls.push(call("chat", json!({"model": "gpt-4o-mini", "messages": conv.clone()}), 60 + 40 * i, 120));
        conv.push(json!({"role": "assistant", "content": words(3000 + i, 10)}));
        conv.push(user(&words(3100 + i, 8)));
    }
    let inputs: Vec<String> = (0..10).map(|i| words(4000 + i, 20)).collect();
    calls.push(call("embeddings", json!({"model": "text-embedding-3-small", "input": inputs}), 300, 0));
    calls
}
