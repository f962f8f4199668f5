#!/usr/bin/env python3
"""A gateway in one process, as an LLM proxy is: each round it takes a
request on its own TLS server socket from a downstream client (another
process), answers and ends that connection, then makes an upstream call with
the real openai SDK on a connection of its own. The server side's `SSL*` is
freed just before the upstream one is made, so the allocator tends to hand
the same address out again: the agent ignores server-side connections, and
an ignore that reaches the kernel after its connection ended must not apply
to the upstream call. Prints {"calls": N, "pid": PID, "reused": K}: K rounds
whose upstream `SSL*` was the server side's just freed.

Usage: py_gateway.py --base URL --ca CA.pem --cert SRV.pem --srv-key SRV.key --key KEY [--rounds N]
"""
import argparse
import ctypes
import json
import os
import socket
import ssl
import subprocess
import sys

import openai

# The downstream client: one TLS connection per line it reads, a request on
# each, read to the end.
DOWNSTREAM = r"""
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
for _ in sys.stdin:
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: gateway.internal\r\n\r\n")
            while s.recv(4096):
                pass
    print("done", flush=True)
"""


def ssl_ptr(sock):
    """The `SSL*` of a Python SSL socket (CPython's PySSLSocket: the object
    head, the socket's weak reference, then the `SSL*`)."""
    return ctypes.c_void_p.from_address(id(sock._sslobj) + 24).value


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--srv-key", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(a.cert, a.srv_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    down = subprocess.Popen([sys.executable, "-c", DOWNSTREAM, str(port), a.ca],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    upstream_ctx = ssl.create_default_context(cafile=a.ca)
    made = []
    wrap = upstream_ctx.wrap_socket

    def recording_wrap(*args, **kw):
        s = wrap(*args, **kw)
        made.append(ssl_ptr(s))
        return s

    upstream_ctx.wrap_socket = recording_wrap

    reused = 0
    for i in range(a.rounds):
        down.stdin.write("go\n")
        down.stdin.flush()
        raw, _ = listener.accept()
        s = server_ctx.wrap_socket(raw, server_side=True)
        freed = ssl_ptr(s)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = s.recv(4096)
            if not chunk:
                break
            request += chunk
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        s.close()
        del s
        assert down.stdout.readline().strip() == "done"

        oa = openai.OpenAI(base_url=a.base, api_key=a.key, max_retries=0,
                           http_client=openai.DefaultHttpxClient(verify=upstream_ctx))
        usage = {"input": 100 + i, "output": 10}
        r = oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"round {i}"}],
                                       extra_headers={"x-test-usage": json.dumps(usage)})
        assert r.usage.prompt_tokens == 100 + i
        oa.close()
        if made and made[-1] == freed:
            reused += 1

    down.stdin.close()
    down.wait()
    print(json.dumps({"calls": a.rounds, "pid": os.getpid(), "reused": reused}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
