#!/usr/bin/env python3
"""Drives litellm's Rust core (the `litellm-core` package, `LITELLM_RUST=1`):
Anthropic Messages calls, which litellm routes through its native extension
(reqwest + rustls inside a 37 MB `.so`), not through Python's httpx.

The extension is loaded first; the script then prints "loaded" and waits for a
line on stdin, so the test can make sure the agent has probed the extension
before any call is made. Then N calls, `CONCURRENCY` at a time, every other one
streamed, the first with a prompt of BIG bytes. Prints one JSON line:
{"calls": N, "streamed": S, "pid": PID}.

Usage: LITELLM_RUST=1 SSL_CERT_FILE=CA.pem litellm_rust.py BASE KEY N BIG
"""
import asyncio
import json
import os
import sys

import litellm
import litellm.rust_bridge._native  # noqa: F401  (the extension, mapped now)

CONCURRENCY = 4


async def call(base, key, i, big):
    stream = i % 2 == 1
    text = "Say hello." + (" pad" * (big // 4) if i == 0 else f" ({i})")
    r = await litellm.anthropic.messages.acreate(
        model="anthropic/claude-haiku-4-5",
        messages=[{"role": "user", "content": text}],
        max_tokens=64,
        api_base=base,
        api_key=key,
        stream=stream,
    )
    if not stream:
        assert r["usage"]["input_tokens"] > 0, r
        return 0
    events = [e async for e in r]
    assert any(b"message_stop" in e for e in events), events
    return 1


async def main(base, key, n, big):
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i):
        async with sem:
            return await call(base, key, i, big)

    streamed = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(streamed)


if __name__ == "__main__":
    assert os.environ.get("LITELLM_RUST") == "1", "set LITELLM_RUST=1: the Rust core is opt-in"
    base, key, n, big = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print("loaded", flush=True)
    sys.stdin.readline()
    streamed = asyncio.run(main(base, key, n, big))
    print(json.dumps({"calls": n, "streamed": streamed, "pid": os.getpid()}), flush=True)
