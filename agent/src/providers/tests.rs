//! Tests of the registry as a whole: names, documentation, prompt readers.
use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::prompt::Prompt;
use super::registry::{self, REGISTRY};
use super::rules::Rules;
use crate::http::h1::Head;

#[test]
fn api_names_round_trip() {
    for api in registry::apis() {
        assert_eq!(registry::api(api.name()), Some(api));
    }
    assert_eq!(registry::api("chat"), None);
}

#[test]
fn shape_names_are_unique() {
    let names: Vec<&str> = registry::apis().map(|a| a.name()).collect();
    assert_eq!(names.len(), names.iter().collect::<BTreeSet<_>>().len(), "{names:?}");
    assert!(REGISTRY.iter().all(|p| !p.shapes().is_empty()));
}

/// Backticked words of `text`, in order.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// A documented path made concrete: `…` is a prefix, `{x}` a name, and
/// `:method` the previous path with another method.
fn concrete(doc_path: &str, previous: &str) -> String {
    let p = doc_path.replace('…', "/v1").replace("{model}", "m").replace("{modelId}", "m");
    match p.strip_prefix(':') {
        Some(method) => format!("{}:{method}", previous.split(':').next().unwrap_or("")),
        None => p,
    }
}

/// Rule files name shapes; the list in `data/providers.toml` and the shape table
/// of docs/providers.md must name exactly the registry's, with their operations,
/// and each documented path must classify as its row's shape.
#[test]
fn shape_names_agree_with_the_rules_file_and_the_docs() {
    let registry: BTreeSet<&str> = registry::apis().map(|a| a.name()).collect();

    let toml = include_str!("../../data/providers.toml");
    let start = toml.find("Shapes:").expect("a shape list in providers.toml") + "Shapes:".len();
    let mut list = String::new();
    for (i, line) in toml[start..].lines().enumerate() {
        match (i, line.strip_prefix("#   ")) {
            (0, _) => list.push_str(line),
            (_, Some(rest)) => list.push_str(rest),
            (_, None) => break,
        }
        list.push(',');
    }
    let in_toml: BTreeSet<&str> = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .map(|s| s.trim_matches('.'))
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(in_toml, registry, "data/providers.toml");

    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/providers.md")).unwrap();
    let table = docs.split("## API shapes").nth(1).expect("an API shapes section in docs/providers.md");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let in_docs: BTreeSet<&str> = rows.iter().map(|r| r[0].trim_matches('`')).collect();
    assert_eq!(in_docs, registry, "docs/providers.md");
    let rules = Rules::default();
    for row in &rows {
        let api = registry::api(row[0].trim_matches('`')).unwrap();
        assert_eq!(backticked(row[3]), [api.operation()], "operation of {row:?}");
        let mut previous = String::new();
        for doc_path in backticked(row[2]) {
            let path = concrete(doc_path, &previous);
            let websocket = api.shape.stream == super::api::StreamDefault::WebSocket;
            let mut head = Head {
                method: Some(if websocket { "GET" } else { "POST" }.into()),
                path: Some(path.clone()),
                headers: vec![("host".into(), b"localhost".to_vec())],
                ..Default::default()
            };
            if websocket {
                head.headers.push(("upgrade".into(), b"websocket".to_vec()));
            }
            assert_eq!(rules.classify(&head).map(|e| e.api), Some(api), "{path} (documented as {doc_path})");
            previous = path;
        }
    }
}

/// Request bodies, each with the shapes it is native to.
fn corpus() -> Vec<(&'static [&'static str], Value)> {
    let doc = serde_json::to_string_pretty(&json!({"rows":[{"id":1,"name":"alpha"},{"id":2,"name":"beta"}]})).unwrap();
    let para = "The quarterly report shows revenue grew by twelve percent across all regions.";
    vec![
        (
            &["chat_completions", "cohere_chat", "ollama_chat"],
            json!({"model":"gpt-4o","messages":[{"role":"system","content":"Be terse."},{"role":"user","content":"Hello  there"}]}),
        ),
        (
            &["chat_completions"],
            json!({"model":"gpt-4o","max_completion_tokens":64,"tools":[{"type":"function","function":{"name":"search","parameters":{}}}],
                "messages":[{"role":"developer","content":[{"type":"text","text":"Use tools."}]},{"role":"user","content":"find x"},
                {"role":"assistant","tool_calls":[{"id":"1","type":"function","function":{"name":"search","arguments":"{\"q\": \"x\"}"}}]},
                {"role":"tool","tool_call_id":"1","content":"none"}]}),
        ),
        (
            &["chat_completions", "cohere_chat", "anthropic_messages"],
            json!({"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":format!("Classify these:\n{doc}\n{para}\n{para}")}]}),
        ),
        (
            &["chat_completions"],
            json!({"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"see"},{"type":"image_url","image_url":{"url":"x"}}]}]}),
        ),
        (
            &["responses"],
            json!({"model":"o4-mini","instructions":"You are a bot.","input":"Tell me a joke","max_output_tokens":100}),
        ),
        (
            &["responses"],
            json!({"model":"gpt-4.1","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]},
                {"type":"function_call","name":"lookup","arguments":"{\"id\":7}","call_id":"c"},
                {"type":"function_call_output","call_id":"c","output":"ok"},
                {"type":"message","role":"assistant","content":[{"type":"output_text","text":"done"}]}],
                "tools":[{"type":"function","name":"lookup"}]}),
        ),
        (&["completions"], json!({"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test","max_tokens":7})),
        (&["embeddings", "ollama_embed"], json!({"model":"text-embedding-3-small","input":"one"})),
        (&["embeddings", "ollama_embed"], json!({"model":"text-embedding-3-small","input":["a","b","c"]})),
        (
            &["anthropic_messages"],
            json!({"model":"claude-sonnet-4-5","system":[{"type":"text","text":"You are a bot."}],"max_tokens":5,
                "metadata":{"user_id":"u"},"tools":[{"name":"search","input_schema":{}}],
                "messages":[{"role":"user","content":[{"type":"text","text":"hi"}]},
                {"role":"assistant","content":[{"type":"tool_use","id":"t","name":"search","input":{"q":"x"}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"none"}]}]}),
        ),
        (
            &["anthropic_messages"],
            json!({"model":"claude","system":"Plain system.","max_tokens":1024,"messages":[{"role":"user","content":"hi"}]}),
        ),
        (
            &["gemini_generate", "gemini_stream"],
            json!({"systemInstruction":{"parts":[{"text":"You are a bot."}]},"contents":[{"role":"user","parts":[{"text":"hi"}]},
                {"role":"model","parts":[{"functionCall":{"name":"search","args":{"q":"x"}}}]}],
                "tools":[{"functionDeclarations":[{"name":"search"}]}],"toolConfig":{"functionCallingConfig":{"mode":"AUTO"}},
                "generationConfig":{"maxOutputTokens":7}}),
        ),
        (&["gemini_generate", "gemini_stream"], json!({"contents":[{"parts":[{"text":"no role"}]}]})),
        (&["gemini_embed"], json!({"content":{"parts":[{"text":"hello world"}]}})),
        (
            &["gemini_embed"],
            json!({"requests":[{"content":{"parts":[{"text":"a"}]}},{"content":{"parts":[{"text":"b"}]}}]}),
        ),
        (
            &["bedrock_converse", "bedrock_converse_stream"],
            json!({"system":[{"text":"You are a bot."}],"messages":[{"role":"user","content":[{"text":"hi"}]},
                {"role":"assistant","content":[{"toolUse":{"toolUseId":"t","name":"search","input":{"q":"x"}}}]}],
                "toolConfig":{"tools":[{"toolSpec":{"name":"search"}}]},"inferenceConfig":{"maxTokens":9}}),
        ),
        (
            &["anthropic_messages"],
            json!({"anthropic_version":"bedrock-2023-05-31","max_tokens":300,"system":"S","messages":[{"role":"user","content":"hi"}]}),
        ),
        (&[], json!({"inputText":"Titan prompt","textGenerationConfig":{"maxTokenCount":50}})),
        (&["completions"], json!({"prompt":"<s>[INST] hi [/INST]","max_gen_len":64})),
        (
            &["cohere_chat", "chat_completions"],
            json!({"model":"command-r","messages":[{"role":"system","content":"Be nice."},{"role":"user","content":"hi"}],
                "tools":[{"type":"function","function":{"name":"f"}}],"max_tokens":20}),
        ),
        (
            &["ollama_chat"],
            json!({"model":"llama3.2","messages":[{"role":"user","content":"why is the sky blue?"}],"options":{"num_predict":30},
                "tools":[{"type":"function","function":{"name":"w"}}]}),
        ),
        (
            &["ollama_generate"],
            json!({"model":"llama3.2","prompt":"why?","system":"Answer briefly.","options":{"num_predict":8}}),
        ),
        (&["ollama_embed", "embeddings"], json!({"model":"all-minilm","input":["x","y"]})),
        (&["ollama_embed"], json!({"model":"all-minilm","prompt":"legacy embeddings"})),
        (
            &[],
            json!({"system":"S","instructions":"I","systemInstruction":{"parts":[{"text":"G"}]},"tools":[1],"toolConfig":{},
                "messages":[{"role":"user","content":"m"}],"contents":[{"role":"user","parts":[{"text":"c"}]}],
                "input":"i","prompt":"p","max_tokens":1,"max_output_tokens":2,"generationConfig":{"maxOutputTokens":3}}),
        ),
        (
            &[
                "chat_completions",
                "completions",
                "responses",
                "embeddings",
                "anthropic_messages",
                "gemini_generate",
                "gemini_stream",
                "bedrock_converse",
                "bedrock_converse_stream",
                "cohere_chat",
                "ollama_chat",
                "ollama_generate",
                "ollama_embed",
            ],
            json!({"messages":"not a list","input":{"x":1},"prompt":7}),
        ),
        (
            &[
                "chat_completions",
                "anthropic_messages",
                "cohere_chat",
                "ollama_chat",
                "bedrock_converse",
                "bedrock_converse_stream",
            ],
            json!({"messages":[{"content":null},{"role":"user"},7,"text"]}),
        ),
        (
            &[
                "chat_completions",
                "completions",
                "responses",
                "embeddings",
                "anthropic_messages",
                "gemini_generate",
                "gemini_stream",
                "gemini_embed",
                "bedrock_converse",
                "bedrock_converse_stream",
                "cohere_chat",
                "ollama_chat",
                "ollama_generate",
                "ollama_embed",
            ],
            json!({}),
        ),
    ]
}

/// Each provider reads only its own spellings; on its own bodies that must give
/// what the reader of every spelling gives (the behaviour before the split).
/// InvokeModel bodies are any model's format: Bedrock reads them with it.
#[test]
fn prompt_facts_equal_the_any_shape_reader_on_native_bodies() {
    let mut checked = 0;
    for (shapes, body) in corpus() {
        for name in shapes.iter().chain(&["bedrock_invoke", "bedrock_invoke_stream"]) {
            let api = registry::api(name).unwrap();
            assert_eq!(api.provider.prompt(api.shape, &body), Prompt::any(api.shape, &body), "{name}: {body}");
            checked += 1;
        }
    }
    assert!(checked > 80, "{checked}");
}
