// Drives the real `openai` package at a steady rate, under node (its static
// OpenSSL) or bun (its stripped BoringSSL): chat completions one after another
// over the runtime's keep-alive pool, PAUSE_MS apart, every other one streamed
// with include_usage, until stdin closes (an agent upgrade happens meanwhile).
// Prints one JSON line: {"calls": N, "pid": PID}.
// Usage: node|bun paced.mjs BASE_URL KEY PAUSE_MS   (CA via NODE_EXTRA_CA_CERTS)
import OpenAI from "openai";

const [baseURL, apiKey, pauseMs] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
let done = false;
process.stdin.on("data", () => {});
process.stdin.on("end", () => { done = true; });
process.stdin.resume();
let calls = 0;
while (!done) {
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
  await new Promise((r) => setTimeout(r, Number(pauseMs)));
}
console.log(JSON.stringify({ calls, pid: process.pid }));
process.exit(0);
