#!/usr/bin/env python3
"""Drives the real Python `openai` and `anthropic` SDKs (httpx over the system
OpenSSL) against the test server. Prints one JSON line: {"calls": N, "pid": PID}.

Usage: py_client.py --openai-base URL --anthropic-base URL --ca CA.pem --key KEY SCENARIO
"""
import argparse
import json
import os
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


def clients(a):
    ctx = ssl.create_default_context(cafile=a.ca)
    oa = openai.OpenAI(base_url=a.openai_base, api_key=a.key, max_retries=0,
                       http_client=openai.DefaultHttpxClient(verify=ctx))
    an = anthropic.Anthropic(base_url=a.anthropic_base, api_key=a.key, max_retries=0,
                             http_client=anthropic.DefaultHttpxClient(verify=ctx))
    return oa, an


def chat(oa, _an):
    r = oa.chat.completions.create(model="gpt-4o-mini", messages=MSGS, user="user-123")
    assert r.usage.prompt_tokens > 0
    return 1


def chat_stream_usage(oa, _an):
    s = oa.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True,
                                   stream_options={"include_usage": True})
    usage = [c.usage for c in s if c.usage]
    assert usage, "no usage chunk"
    return 1


def chat_stream_nousage(oa, _an):
    s = oa.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    assert text.startswith("Hello")
    return 1


def responses(oa, _an):
    r = oa.responses.create(model="gpt-4.1", input="Say hello.")
    assert r.usage.input_tokens > 0
    return 1


def responses_stream(oa, _an):
    done = [e for e in oa.responses.create(model="gpt-4.1", input="Say hello.", stream=True)
            if e.type == "response.completed"]
    assert done
    return 1


def embeddings(oa, _an):
    r = oa.embeddings.create(model="text-embedding-3-small", input="hello world")
    assert r.usage.prompt_tokens > 0
    return 1


def completions(oa, _an):
    r = oa.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello.")
    assert r.usage.prompt_tokens > 0
    return 1


def messages(_oa, an):
    r = an.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MSGS[1:],
                           metadata={"user_id": "user-456"})
    assert r.usage.output_tokens > 0
    return 1


def messages_stream(_oa, an):
    with an.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=MSGS[1:]) as s:
        final = s.get_final_message()
    assert final.usage.output_tokens > 0
    return 1


SINGLE = [chat, chat_stream_usage, chat_stream_nousage, responses, responses_stream, embeddings,
          completions, messages, messages_stream]


def all_ops(oa, an):
    return sum(f(oa, an) for f in SINGLE)


def concurrent(oa, an):
    """40 calls from 8 threads sharing each SDK client's keep-alive pool."""
    ops = [chat, chat_stream_usage, responses, responses_stream, embeddings, messages, messages_stream, chat]
    jobs = [ops[i % len(ops)] for i in range(40)]
    with ThreadPoolExecutor(max_workers=8) as ex:
        return sum(ex.map(lambda f: f(oa, an), jobs))


def steady(oa, an, rate=25.0, seconds=8.0):
    """Calls at a steady rate (chat, streamed chat, messages in turn) from a pool
    of threads, each started on schedule; a late call never shifts the others."""
    import time
    ops = [chat, chat_stream_usage, messages]
    n = int(rate * seconds)
    t0 = time.monotonic()

    def one(i):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return ops[i % len(ops)](oa, an)

    with ThreadPoolExecutor(max_workers=16) as ex:
        return sum(ex.map(one, range(n)))


def downloads_and_calls(oa, an, rate=2.0, seconds=8.0):
    """From one thread, so over one keep-alive connection: a 2 MB download
    (not an LLM call, ~0.3 s: 64 KiB every 10 ms) then a chat call, `rate`
    times a second."""
    import time
    http = oa._client  # the SDK's own httpx client and connection pool
    url = str(oa.base_url).rstrip("/") + "/download"
    n = int(rate * seconds)
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        r = http.get(url, params={"bytes": 2_000_000, "pause_ms": 10})
        if r.status_code != 200 or len(r.content) != 2_000_000 or r.content[:3] != bytes([0, 1, 2]):
            raise SystemExit(f"download {i}: {r.status_code}, {len(r.content)} bytes")
        chat(oa, an)
    return n


def kill_mid_stream(oa, _an):
    """Read the first streamed chunk, then die without closing anything."""
    s = oa.chat.completions.create(model="slow-stream", messages=MSGS, stream=True)
    for _ in s:
        print(json.dumps({"calls": 0, "pid": os.getpid()}), flush=True)
        os._exit(0)
    return 0


SCENARIOS = {f.__name__: f for f in SINGLE + [all_ops, concurrent, steady, downloads_and_calls, kill_mid_stream]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--openai-base", required=True)
    ap.add_argument("--anthropic-base", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--rate", type=float, default=25.0, help="steady: calls per second")
    ap.add_argument("--seconds", type=float, default=8.0, help="steady: how long")
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    a = ap.parse_args()
    oa, an = clients(a)
    if a.scenario in ("steady", "downloads_and_calls"):
        n = SCENARIOS[a.scenario](oa, an, a.rate, a.seconds)
    else:
        n = SCENARIOS[a.scenario](oa, an)
    print(json.dumps({"calls": n, "pid": os.getpid()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
