#!/usr/bin/env python3
"""Drives the client stacks of the breadth-of-capture tests against the test
server: httpx over HTTP/2 (many concurrent streams on one connection), the
google-genai SDK (Gemini), boto3 bedrock-runtime (Bedrock), and plaintext HTTP
to Ollama- and vLLM-style endpoints (httpx and the openai SDK, no TLS), also from
threads connecting at once and from thousands of short-lived processes.
Prints one JSON line: {"calls": N, "pid": PID}.

Usage: py_breadth.py --base URL [--ca CA.pem] --key KEY SCENARIO
"""
import argparse
import asyncio
import json
import os
import ssl
import sys
import traceback

MSGS = [{"role": "user", "content": "Say hello."}]


def httpx_h2(a):
    """20 concurrent calls multiplexed on one HTTP/2 connection."""
    import httpx

    async def run():
        ctx = ssl.create_default_context(cafile=a.ca)
        async with httpx.AsyncClient(http2=True, verify=ctx, base_url=a.base,
                                     headers={"Authorization": "Bearer " + a.key}) as c:
            async def one(i):
                body = {"model": "gpt-4o-mini", "messages": MSGS}
                if i % 2:
                    body.update(stream=True, stream_options={"include_usage": True})
                r = await c.post("/chat/completions", json=body)
                assert r.status_code == 200 and r.http_version == "HTTP/2", (r.status_code, r.http_version)
                return 1
            return sum(await asyncio.gather(*(one(i) for i in range(20))))
    return asyncio.run(run())


def h2_downloads_and_calls(a):
    """One HTTP/2 connection, 8 rounds of two 2 MB downloads (not LLM calls,
    ~0.3 s each: 64 KiB every 10 ms) and three chat calls at once: the calls'
    frames fall between the downloads'. One call a round is a stream whose
    many small frames come in one burst (more frames in one read than a
    frame-per-step walk of 64 frames would follow); one is a stream whose
    frames come 5 ms apart, so that the downloads' muted DATA frames and its
    own alternate."""
    import httpx

    async def run():
        ctx = ssl.create_default_context(cafile=a.ca)
        async with httpx.AsyncClient(http2=True, verify=ctx, base_url=a.base,
                                     headers={"Authorization": "Bearer " + a.key}) as c:
            async def download():
                r = await c.get("/download", params={"bytes": 2_000_000, "pause_ms": 10})
                ok = r.status_code == 200 and r.http_version == "HTTP/2"
                if not ok or len(r.content) != 2_000_000 or r.content[:3] != bytes([0, 1, 2]):
                    raise SystemExit(f"download: {r.status_code} {r.http_version}, {len(r.content)} bytes")
                return 0

            async def call():
                r = await c.post("/chat/completions", json={"model": "gpt-4o-mini", "messages": MSGS})
                assert r.status_code == 200 and r.http_version == "HTTP/2", (r.status_code, r.http_version)
                return 1

            async def stream(words, **test_headers):
                # A streamed call of `words` content chunks, shaped by the
                # test server's x-test-* headers; its SSE events: the role's,
                # the words', the stop's, the usage's and [DONE].
                body = {"model": "gpt-4o-mini", "messages": MSGS, "stream": True,
                        "stream_options": {"include_usage": True}}
                headers = {"x-test-stream-words": str(words)}
                headers.update({"x-test-" + k.replace("_", "-"): str(v) for k, v in test_headers.items()})
                r = await c.post("/chat/completions", json=body, headers=headers)
                assert r.status_code == 200 and r.http_version == "HTTP/2", (r.status_code, r.http_version)
                assert r.text.count("data: ") == words + 4, r.text[-200:]
                return 1

            # burst: ~1,000 DATA frames of at most 32 bytes arrive together
            # (the server sends them in one write: one TLS record holds ~400,
            # where a walk of 128 steps stopped at 64).
            # paced: 60 chunks 5 ms apart (~0.3 s, as long as a download): a
            # DATA frame of this stream often follows one of a muted
            # download's, which the kernel's walk must not skip.
            n = 0
            for _ in range(8):
                n += sum(await asyncio.gather(download(), call(), download(), stream(120, burst=32),
                                             stream(60, word_pause_ms=5)))
            return n
    return asyncio.run(run())


def h2_joined(a):
    """One HTTP/2 connection: a call, then wait (the agent starts), then more calls."""
    import httpx
    ctx = ssl.create_default_context(cafile=a.ca)
    with httpx.Client(http2=True, verify=ctx, base_url=a.base, headers={"Authorization": "Bearer " + a.key}) as c:
        c.post("/chat/completions", json={"model": "gpt-4o-mini", "messages": MSGS})
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        sys.stdin.readline()
        for _ in range(3):
            assert c.post("/chat/completions", json={"model": "gpt-4o-mini", "messages": MSGS}).status_code == 200
    return 3


def genai_client(a):
    from google import genai
    from google.genai import types
    # httpx (under google-genai) trusts SSL_CERT_FILE.
    os.environ["SSL_CERT_FILE"] = a.ca
    return genai.Client(api_key=a.key, http_options=types.HttpOptions(base_url=a.base))


def gemini(a):
    c = genai_client(a)
    r = c.models.generate_content(model="gemini-2.5-flash", contents="Say hello.")
    assert r.usage_metadata.prompt_token_count > 0
    text = "".join(ch.text or "" for ch in c.models.generate_content_stream(model="gemini-2.5-flash",
                                                                           contents="Say hello."))
    assert text == "Hello there!", text
    return 2


BEDROCK_MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"


def bedrock_client(a):
    import boto3
    from botocore.config import Config
    os.environ.update(AWS_ACCESS_KEY_ID="AKIATOKENTAPTEST", AWS_SECRET_ACCESS_KEY=a.key)
    return boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=a.base, verify=a.ca,
                        config=Config(retries={"max_attempts": 1}))


def bedrock(a):
    c = bedrock_client(a)
    model = BEDROCK_MODEL
    r = c.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "Say hello."}]}])
    assert r["usage"]["outputTokens"] > 0
    s = c.converse_stream(modelId=model, messages=[{"role": "user", "content": [{"text": "Say hello."}]}])
    assert any("metadata" in e for e in s["stream"])
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": MSGS})
    r = c.invoke_model(modelId=model, body=body)
    assert json.loads(r["body"].read())["id"].startswith("msg_bdrk_")
    s = c.invoke_model_with_response_stream(modelId=model, body=body)
    assert sum(1 for e in s["body"] if "chunk" in e) == 4
    return 4


def bedrock_unread(a):
    """InvokeModel whose answer (64 KiB, test_pad) the caller never reads: boto3
    hands the body back as a StreamingBody, left unread until the process ends."""
    c = bedrock_client(a)
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": MSGS,
                       "test_pad": 65536})
    r = c.invoke_model(modelId=BEDROCK_MODEL, body=body)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200, r["ResponseMetadata"]
    return 1


def ollama(a):
    """Ollama's native API over plain HTTP: streamed (NDJSON) and not."""
    import httpx
    with httpx.Client(base_url=a.base) as c:
        with c.stream("POST", "/api/chat", json={"model": "llama3.2", "messages": MSGS}) as r:
            lines = [json.loads(l) for l in r.iter_lines() if l]
            assert lines[-1]["done"], lines
        r = c.post("/api/generate", json={"model": "llama3.2", "prompt": "Say hello.", "stream": False})
        assert r.json()["done"]
    return 2


def vllm(a):
    """A vLLM-style OpenAI-compatible endpoint over plain HTTP, with the openai SDK."""
    import openai
    oa = openai.OpenAI(base_url=a.base, api_key=a.key, max_retries=0)
    r = oa.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert r.usage.prompt_tokens > 0
    s = oa.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True,
                                   stream_options={"include_usage": True})
    assert [c.usage for c in s if c.usage]
    return 2


def plain_threads(a):
    """Plain HTTP from 8 threads at once, each call on a connection of its own: a
    round whose sockets get fds below 63, then one above (70 files held open). The
    kernel keeps, per process, which fds were watched sockets (one byte each, one for
    every fd above 62), set by threads connecting at the same moment. Prints the
    socket fds seen, so the test knows both ranges were used."""
    import threading
    import httpx
    body = {"model": "gpt-4o-mini", "messages": MSGS}
    fds, errors, lock = set(), [], threading.Lock()

    def worker(barrier, calls):
        try:
            for _ in range(calls):
                barrier.wait()
                with httpx.Client(base_url=a.base, headers={"Authorization": f"Bearer {a.key}"}) as c:
                    with c.stream("POST", "/v1/chat/completions", json=body) as r:
                        fd = r.extensions["network_stream"].get_extra_info("socket").fileno()
                        r.read()
                        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 0, r.text
                with lock:
                    fds.add(fd)
        except Exception as e:  # reported, so the test fails with the reason
            with lock:
                errors.append(repr(e))
            barrier.abort()

    def round_(threads, calls):
        barrier = threading.Barrier(threads)
        ts = [threading.Thread(target=worker, args=(barrier, calls)) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    round_(8, 5)
    held = [open(os.devnull, "wb") for _ in range(70)]
    round_(8, 5)
    for f in held:
        f.close()
    if errors:
        raise SystemExit(f"calls failed: {errors[:3]}")
    print(json.dumps({"fds": sorted(fds)}), flush=True)
    return 80


def plain_vectored(a):
    """Plain HTTP over a bare socket with vectored calls: a non-blocking connect
    (EINPROGRESS), each request written as two buffers (head, body) with sendmsg
    or writev, each response read into two buffers with recvmsg_into or readv.
    The kernel copies each buffer of a vectored call, in order."""
    import errno
    import select
    import socket
    import urllib.parse
    u = urllib.parse.urlsplit(a.base)
    s = socket.socket()
    s.setblocking(False)
    err = s.connect_ex((u.hostname, u.port))
    assert err in (0, errno.EINPROGRESS), err
    assert select.select([], [s], [], 10)[1], "connect timed out"
    s.setblocking(True)
    calls = 4
    for i in range(calls):
        body = json.dumps({"model": "gpt-4o-mini", "messages": MSGS}).encode()
        head = (f"POST {u.path}/chat/completions HTTP/1.1\r\nHost: {u.netloc}\r\n"
                f"Authorization: Bearer {a.key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        sent = s.sendmsg([head, body]) if i % 2 == 0 else os.writev(s.fileno(), [head, body])
        assert sent == len(head) + len(body), sent
        got = bytearray()
        while not response_complete(got):
            bufs = [bytearray(97), bytearray(4096)]
            n = s.recvmsg_into(bufs)[0] if i % 2 == 0 else os.readv(s.fileno(), bufs)
            assert n > 0, "connection closed mid-response"
            got += (bufs[0] + bufs[1])[:n]
        assert got.startswith(b"HTTP/1.1 200") and b'"usage"' in got, got[:200]
    s.close()
    return calls


def plain_slot_neighbour(a):
    """Plain HTTP on one keep-alive connection, and between its calls another
    process that connects a socket on the same fd number and exits, chosen so
    that the kernel counts both in one slot (tgid modulo 4,096): per slot and
    fd, how many processes watch it. The other's exit must take only its own
    count away: the calls after it are recorded too. Prints the neighbour's
    pid and the fd."""
    import socket
    from urllib.parse import urlparse
    import httpx
    body = {"model": "gpt-4o-mini", "messages": MSGS}
    u = urlparse(a.base)
    me = os.getpid()
    with httpx.Client(base_url=a.base, headers={"Authorization": f"Bearer {a.key}"}) as c:

        def call():
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                fd = r.extensions["network_stream"].get_extra_info("socket").fileno()
                r.read()
                assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 0, r.text
            return fd

        fd = call()
        neighbour = None

        def aim():
            # Ask the kernel for the next pid of this slot (root in the host's
            # PID namespace): a turn of forks took seconds. Where it cannot,
            # or another process takes that pid first, the loop goes on.
            try:
                with open("/proc/sys/kernel/ns_last_pid") as f:
                    last = int(f.read())
                with open("/proc/sys/kernel/pid_max") as f:
                    pid_max = int(f.read())
                want = last + 1 + (me - last - 1) % 4096
                if want >= pid_max:
                    # Past the last pid: they start again at 300.
                    want = me % 4096 + (4096 if me % 4096 < 300 else 0)
                with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                    f.write(str(want - 1))
            except (OSError, ValueError):
                pass

        # Fork until a child's pid falls in this process's slot: pids come in
        # order, so one turn of 4,096 (twice over, should others take it).
        for _ in range(3 * 4096):
            aim()
            pid = os.fork()
            if pid == 0:
                if os.getpid() % 4096 != me % 4096:
                    os._exit(0)
                # The inherited connection is the parent's: close it here and
                # connect a socket of this process's own on the same fd number.
                os.close(fd)
                while True:
                    n = os.open(os.devnull, os.O_RDONLY)
                    if n == fd:
                        os.close(n)
                        break
                s = socket.create_connection((u.hostname, u.port))
                os._exit(0 if s.fileno() == fd else 3)
            _, status = os.waitpid(pid, 0)
            if pid % 4096 == me % 4096:
                assert os.waitstatus_to_exitcode(status) == 0, f"neighbour {pid} exited {status}"
                neighbour = pid
                break
        assert neighbour, "no child pid fell in this process's slot"
        fds = {call() for _ in range(5)}
        assert fds == {fd}, (fd, fds)
    print(json.dumps({"neighbour": neighbour, "fd": fd}), flush=True)
    return 6


def plain_many_processes(a):
    """Plain HTTP from many short-lived processes: 4,500 children, 8 at a
    time, each connecting a socket of its own, making two calls on it and
    exiting at once; beside them 8 anchors, children that make a call, wait
    until the others are done, and make another. Every process connects on
    fd 3, and 4,500 processes (and the server's thread for each connection)
    take pids past one turn of the kernel's 4,096 slots of processes (tgid
    modulo 4,096): short-lived children fall in the anchors' slots, and their
    exits must take away their own counts only. Prints the pids of both."""
    import signal
    import socket
    import time
    from urllib.parse import urlparse
    u = urlparse(a.base)
    children, calls, workers, anchors = 4500, 2, 8, 8
    body = json.dumps({"model": "gpt-4o-mini", "messages": MSGS}).encode()
    request = (f"POST {u.path}/chat/completions HTTP/1.1\r\nHost: {u.netloc}\r\n"
               f"Authorization: Bearer {a.key}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def call(s):
        s.sendall(request)
        got = bytearray()
        while not response_complete(got):
            b = s.recv(65536)
            if not b:
                os._exit(4)
            got += b
        if not got.startswith(b"HTTP/1.1 200"):
            os._exit(5)

    def child(anchor):
        os.closerange(3, 1024)
        s = socket.create_connection((u.hostname, u.port))
        if s.fileno() != 3:
            os._exit(6)
        call(s)
        if anchor and signal.sigtimedwait({signal.SIGUSR1}, 600) is None:
            os._exit(7)
        call(s)
        s.close()
        os._exit(0)

    def fork(anchor):
        pid = os.fork()
        if pid == 0:
            try:
                child(anchor)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(3)
        return pid

    failed = []

    def reap(pid, status):
        if os.waitstatus_to_exitcode(status) != 0:
            failed.append((pid, status))

    # Blocked before the forks, so that an anchor's wait misses no signal.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    anchor_pids = [fork(True) for _ in range(anchors)]
    waiting = set(anchor_pids)
    pids, running = [], set()
    try:
        started = time.monotonic()
        for _ in range(children):
            while len(running) >= workers:
                pid, status = os.wait()
                # An anchor that failed early is reaped here, never signalled.
                running.discard(pid)
                waiting.discard(pid)
                reap(pid, status)
            pid = fork(False)
            pids.append(pid)
            running.add(pid)
        while running:
            pid = running.pop()
            reap(*os.waitpid(pid, 0))
        secs = time.monotonic() - started
        while waiting:
            pid = waiting.pop()
            os.kill(pid, signal.SIGUSR1)
            reap(*os.waitpid(pid, 0))
    finally:
        # On any error, no child is left behind holding the output's pipes.
        for pid in waiting | running:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    if failed:
        raise SystemExit(f"children failed: {failed[:5]}")
    print(json.dumps({"children": pids, "anchors": anchor_pids,
                      "calls_per_second": round(children * calls / secs)}), flush=True)
    return (children + anchors) * calls

def response_complete(got):
    """A whole HTTP/1.1 response: its head, then Content-Length bytes or the last chunk."""
    end = got.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = got[:end].decode("latin-1").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return len(got) - end - 4 >= int(line.split(":", 1)[1])
    return got.endswith(b"0\r\n\r\n")


SCENARIOS = {f.__name__: f for f in [httpx_h2, h2_downloads_and_calls, h2_joined, gemini, bedrock, bedrock_unread, ollama, vllm, plain_threads, plain_slot_neighbour, plain_vectored, plain_many_processes]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--ca")
    ap.add_argument("--key", required=True)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    a = ap.parse_args()
    n = SCENARIOS[a.scenario](a)
    print(json.dumps({"calls": n, "pid": os.getpid()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
