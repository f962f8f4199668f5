// Drives the real Node `openai` package (fetch over node's built-in OpenSSL)
// against the test server. Prints one JSON line: {"calls": N, "pid": PID}.
// Usage: node node_client.mjs BASE_URL KEY   (CA via NODE_EXTRA_CA_CERTS)
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const messages = [{ role: "user", content: "Say hello." }];
let calls = 0;

const chat = await client.chat.completions.create({ model: "gpt-4o-mini", messages });
if (!(chat.usage.prompt_tokens > 0)) throw new Error("no usage");
calls++;

const stream = await client.chat.completions.create({
  model: "gpt-4o-mini", messages, stream: true, stream_options: { include_usage: true },
});
let sawUsage = false;
for await (const c of stream) if (c.usage) sawUsage = true;
if (!sawUsage) throw new Error("no usage chunk");
calls++;

const resp = await client.responses.create({ model: "gpt-4.1", input: "Say hello." });
if (!(resp.usage.input_tokens > 0)) throw new Error("no usage");
calls++;

const emb = await client.embeddings.create({ model: "text-embedding-3-small", input: "hello" });
if (!(emb.usage.prompt_tokens > 0)) throw new Error("no usage");
calls++;

console.log(JSON.stringify({ calls, pid: process.pid }));
