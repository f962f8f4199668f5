//! The prompt of a request as the feature detectors see it ([`Prompt`]), and the
//! JSON readers providers fill it with. Each provider names its own spellings
//! (`messages`, `contents`, `systemInstruction`, …) in its `prompt()`; the
//! readers here only know what every spelling shares. [`Prompt::any`] reads every
//! provider's spellings at once: the default for a provider that declares none,
//! and the reader for bodies in any model's format (Bedrock InvokeModel).
use serde_json::Value;

use super::api::Shape;

/// What a request asks, without the wire format.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prompt {
    pub system: String,
    /// Tool definitions, as JSON text.
    pub tools: String,
    /// (role, text) in order; system and developer turns are in `system`.
    pub messages: Vec<(String, String)>,
    /// Tool calls already in the history: (name, canonical arguments).
    pub tool_calls: Vec<(String, String)>,
    pub max_tokens: Option<u64>,
    /// An embeddings request: counted, not read as a prompt.
    pub embedding: Option<Embedding>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Embedding {
    pub inputs: u32,
    /// The text hashed as the request's prompt.
    pub text: String,
}

impl Prompt {
    /// Every provider's spellings on any body: today's behaviour for a shape
    /// whose provider declares none.
    pub fn any(shape: &Shape, r: &Value) -> Prompt {
        let max_tokens = max_tokens(
            r,
            &[
                "/max_tokens",
                "/max_completion_tokens",
                "/max_output_tokens",
                "/generationConfig/maxOutputTokens",
                "/inferenceConfig/maxTokens",
                "/options/num_predict",
            ],
        );
        if shape.embedding {
            let inputs = match r.get("input").or_else(|| r.get("requests")) {
                Some(v) => count(v),
                None => u32::from(r.get("content").is_some()),
            };
            return Prompt::embedding(inputs, r.get("input"), max_tokens);
        }
        let mut p = Prompt { max_tokens, ..Default::default() };
        p.system_from(r, &["system", "instructions", "systemInstruction"]);
        p.tools_from(r, &["tools", "toolConfig"]);
        p.messages_from(
            r.get("messages").or_else(|| r.get("contents")).or_else(|| r.get("input").filter(|i| i.is_array())),
        );
        p.prompt_from(r, &["prompt", "input"]);
        p
    }

    /// An embeddings request of `inputs` inputs; `input` (as JSON text) is what
    /// is hashed as its prompt.
    pub fn embedding(inputs: u32, input: Option<&Value>, max_tokens: Option<u64>) -> Prompt {
        let text = input.map(Value::to_string).unwrap_or_default();
        Prompt { max_tokens, embedding: Some(Embedding { inputs, text }), ..Default::default() }
    }

    /// System text under each of `keys`, in order.
    pub fn system_from(&mut self, r: &Value, keys: &[&str]) {
        for k in keys {
            self.system.push_str(&text(r.get(k)));
        }
    }

    /// Tool definitions: the first of `keys` present.
    pub fn tools_from(&mut self, r: &Value, keys: &[&str]) {
        if let Some(t) = keys.iter().find_map(|k| r.get(k)) {
            self.tools = t.to_string();
        }
    }

    /// A list of turns (`messages`, `contents`, Responses `input` items): role
    /// (default `user`), text from `content` or `parts` (or the item itself), and
    /// the tool calls anywhere in it.
    pub fn messages_from(&mut self, list: Option<&Value>) {
        let Some(ms) = list.and_then(Value::as_array) else {
            return;
        };
        for m in ms {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("user").to_owned();
            let t = text(m.get("content").or_else(|| m.get("parts")).or(Some(m)));
            if matches!(role.as_str(), "system" | "developer") {
                self.system.push_str(&t);
            } else {
                self.messages.push((role, t));
            }
        }
        ms.iter().for_each(|m| find_tool_calls(m, &mut self.tool_calls));
    }

    /// Single-prompt shapes (completions, Ollama generate, Responses with a
    /// string input): each of `keys` that is a string is a user turn.
    pub fn prompt_from(&mut self, r: &Value, keys: &[&str]) {
        for k in keys {
            if let Some(Value::String(s)) = r.get(k) {
                self.messages.push(("user".into(), s.clone()));
            }
        }
    }
}

/// The first of these JSON pointers that holds a count.
pub fn max_tokens(r: &Value, pointers: &[&str]) -> Option<u64> {
    pointers.iter().find_map(|p| r.pointer(p).and_then(Value::as_u64))
}

/// Inputs in an embeddings field: a list's length, else one.
pub fn count(v: &Value) -> u32 {
    match v {
        Value::Array(a) => a.len() as u32,
        _ => 1,
    }
}

/// Concatenated text of a content value (string, parts, blocks).
fn text_of(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(a) => a.iter().for_each(|x| text_of(x, out)),
        Value::Object(m) => {
            for k in ["text", "content", "parts", "input_text", "output_text"] {
                if let Some(x) = m.get(k) {
                    text_of(x, out);
                }
            }
        }
        _ => {}
    }
}

pub fn text(v: Option<&Value>) -> String {
    let mut s = String::new();
    if let Some(v) = v {
        text_of(v, &mut s);
    }
    s
}

/// Tool calls anywhere in the history: OpenAI `tool_calls[].function`, Responses
/// `function_call` items, Anthropic `tool_use` blocks, Gemini `functionCall`,
/// Bedrock `toolUse`.
fn find_tool_calls(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| find_tool_calls(x, out)),
        Value::Object(m) => {
            let name = m.get("name").and_then(Value::as_str);
            let ty = m.get("type").and_then(Value::as_str);
            if let (Some(f), _) = (m.get("function").filter(|f| f.get("arguments").is_some()), ty) {
                let n = f.get("name").and_then(Value::as_str).unwrap_or("");
                out.push((n.to_owned(), canonical(f.get("arguments"))));
            } else if let (Some(n), Some("tool_use" | "function_call")) = (name, ty) {
                out.push((n.to_owned(), canonical(m.get("input").or_else(|| m.get("arguments")))));
            } else if let Some(c) = m.get("functionCall").or_else(|| m.get("toolUse")) {
                let n = c.get("name").and_then(Value::as_str).unwrap_or("");
                out.push((n.to_owned(), canonical(c.get("args").or_else(|| c.get("input")))));
            } else {
                m.values().for_each(|x| find_tool_calls(x, out));
            }
        }
        _ => {}
    }
}

/// Arguments compared as data: a JSON string is parsed, then re-serialised
/// with sorted keys.
fn canonical(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_or_else(|_| s.clone(), |v| v.to_string()),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::api::StreamDefault;
    use serde_json::json;

    static CHAT: Shape = Shape { name: "t", operation: "chat", stream: StreamDefault::IfRequested, embedding: false };
    static EMBED: Shape =
        Shape { name: "e", operation: "embeddings", stream: StreamDefault::IfRequested, embedding: true };

    #[test]
    fn any_reads_every_spelling() {
        let p = Prompt::any(
            &CHAT,
            &json!({"system":"S","instructions":"I","systemInstruction":{"parts":[{"text":"G"}]},"toolConfig":{"a":1},
                "contents":[{"role":"model","parts":[{"functionCall":{"name":"f","args":{"b":1,"a":2}}}]}],"prompt":"p",
                "inferenceConfig":{"maxTokens":9}}),
        );
        assert_eq!(p.system, "S\nI\nG\n");
        assert_eq!(p.tools, r#"{"a":1}"#);
        assert_eq!(p.messages, [("model".into(), String::new()), ("user".into(), "p".into())]);
        assert_eq!(p.tool_calls, [("f".into(), r#"{"a":2,"b":1}"#.into())]);
        assert_eq!(p.max_tokens, Some(9));
        let e = Prompt::any(&EMBED, &json!({"input":["a","b"],"max_tokens":3}));
        assert_eq!(e.embedding, Some(Embedding { inputs: 2, text: r#"["a","b"]"#.into() }));
        assert_eq!((e.max_tokens, e.messages.len()), (Some(3), 0));
        assert_eq!(Prompt::any(&EMBED, &json!({"content":{}})).embedding.unwrap().inputs, 1);
        assert_eq!(Prompt::any(&EMBED, &json!({})).embedding.unwrap().inputs, 0);
    }
}
