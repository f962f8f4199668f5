// Drives the real `openai` package under node (its static OpenSSL) or bun (its
// stripped BoringSSL): chat completions one after another over the runtime's
// keep-alive pool, every other one streamed with include_usage, until stdin
// closes (an agent upgrade happens meanwhile): PAUSE_MS apart, or with
// `each-line` one for each line read from stdin.
// Prints one JSON line: {"calls": N, "pid": PID}.
// Usage: node|bun paced.mjs BASE_URL KEY PAUSE_MS|each-line   (CA via NODE_EXTRA_CA_CERTS)
import OpenAI from "openai";
import { createInterface } from "node:readline";

const [baseURL, apiKey, pace] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
let calls = 0;

async function call() {
  const messages = [{ role: "user", content: `call ${calls}` }];
  if (calls % 2 === 1) {
    const stream = await client.chat.completions.create({
      model: "gpt-4o-mini", messages, stream: true, stream_options: { include_usage: true },
    });
    let sawUsage = false;
    for await (const c of stream) if (c.usage) sawUsage = true;
    if (!sawUsage) throw new Error("no usage chunk");
  } else {
    const chat = await client.chat.completions.create({ model: "gpt-4o-mini", messages });
    if (!(chat.usage.prompt_tokens > 0)) throw new Error("no usage");
  }
  calls++;
}

if (pace === "each-line") {
  for await (const _ of createInterface({ input: process.stdin })) await call();
} else {
  let done = false;
  process.stdin.on("data", () => {});
  process.stdin.on("end", () => { done = true; });
  process.stdin.resume();
  while (!done) {
    await call();
    await new Promise((r) => setTimeout(r, Number(pace)));
  }
}
console.log(JSON.stringify({ calls, pid: process.pid }));
process.exit(0);
