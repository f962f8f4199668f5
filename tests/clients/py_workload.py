#!/usr/bin/env python3
"""Runs a workload file with the real openai SDK, one call at a time: each item
is {"api": "chat"|"embeddings", "body": {...}, "usage": {...}, "pause": seconds?,
"fresh": true? (the call gets a client, and so a connection, of its own),
"words": N? (a streamed call of N content chunks), "word_pause_ms": M? (those
chunks M ms apart),
"download": bytes? (then a download of that many bytes on the same
connection, not an LLM call, its 64 KiB pieces "download_pause_ms" apart,
default 2), "wait_for": path? (the call waits until that file exists, at most
120 s: the test says when), "hold_until": path? (the server answers the
call only once that file exists: a call kept in flight), "hold_body": path?
(the server reads the call's body only once that file exists, PATH.held made
when its head arrives: with a body larger than the sockets' buffers, the
client stays inside its write), "pad": bytes? (a user message of that many
bytes added to the body)}; the usage goes to
the test server in `x-test-usage` (the truth the calibration test checks).
Prints {"calls": N, "pid": PID}.

Usage: py_workload.py --base URL --ca CA.pem --key KEY [--http2] [--no-timeout] WORKLOAD.json
"""
import argparse
import json
import os
import ssl
import sys
import time

import openai


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--http2", action="store_true", help="offer HTTP/2 (httpx http2=True)")
    # No timeout: the socket blocks, and a call waits for its answer inside the
    # TLS library's read (as `requests` without a timeout does), not in poll.
    ap.add_argument("--no-timeout", action="store_true", help="the shared client without a timeout")
    ap.add_argument("workload")
    a = ap.parse_args()
    ctx = ssl.create_default_context(cafile=a.ca)

    def client(timeout=openai.NOT_GIVEN):
        return openai.OpenAI(base_url=a.base, api_key=a.key, max_retries=0, timeout=timeout,
                             http_client=openai.DefaultHttpxClient(verify=ctx, http2=a.http2))

    shared = client(timeout=None) if a.no_timeout else client()
    calls = json.load(open(a.workload))
    for c in calls:
        if c.get("wait_for"):
            deadline = time.monotonic() + 120
            while not os.path.exists(c["wait_for"]):
                if time.monotonic() > deadline:
                    raise SystemExit(f"waited 120 s for {c['wait_for']}")
                time.sleep(0.02)
        headers = {"x-test-usage": json.dumps(c["usage"])}
        if c.get("hold_until"):
            # The server answers once the test makes that file.
            headers["x-test-hold-until"] = c["hold_until"]
        if c.get("hold_body"):
            headers["x-test-hold-body"] = c["hold_body"]
        body = c["body"]
        if c.get("pad"):
            body = dict(body, messages=body["messages"] + [{"role": "user", "content": "x" * c["pad"]}])
        if c.get("words"):
            # A stream of that many chunks (the test server's slow-stream model: one a second).
            headers["x-test-stream-words"] = str(c["words"])
        if c.get("word_pause_ms"):
            headers["x-test-word-pause-ms"] = str(c["word_pause_ms"])
        oa = client() if c.get("fresh") else shared
        if c["api"] == "chat":
            r = oa.chat.completions.create(**body, extra_headers=headers)
            if body.get("stream"):
                for _ in r:
                    pass
        else:
            oa.embeddings.create(**body, extra_headers=headers)
        if c.get("download"):
            url = str(oa.base_url).rstrip("/") + "/download"
            d = oa._client.get(url, params={"bytes": c["download"], "pause_ms": c.get("download_pause_ms", 2)})
            if d.status_code != 200 or len(d.content) != c["download"]:
                raise SystemExit(f"download: {d.status_code}, {len(d.content)} bytes")
        if oa is not shared:
            oa.close()
        if c.get("pause"):
            time.sleep(c["pause"])
    # Closed, not left to the interpreter's exit: the connection ends here.
    shared.close()
    print(json.dumps({"calls": len(calls), "pid": os.getpid()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
