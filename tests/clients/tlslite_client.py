#!/usr/bin/env python3
"""An LLM API client whose TLS tokentap does not decode: tlslite-ng, TLS in
pure Python (no libssl call carries its plaintext). It makes chat completion
calls over HTTP/1.1 keep-alive to the local test server, connecting to
127.0.0.1 but naming `--sni` in its ClientHello, and counts the bytes its
sockets sent and received (what the kernel's syscall results say too).

Prints one JSON line: {"pid", "connections", "calls", "bytes_sent",
"bytes_received", "response_ids"}.

Usage: tlslite_client.py --port P --sni api.openai.com [--connections 2] [--calls 3]
"""
import argparse
import json
import os
import socket

from tlslite.api import HandshakeSettings, TLSConnection


class CountingSocket:
    """A socket whose send/recv results are added up: tlslite moves every
    byte through these two methods."""

    def __init__(self, sock):
        self.sock = sock
        self.sent = 0
        self.received = 0

    def send(self, data):
        n = self.sock.send(data)
        self.sent += n
        return n

    def sendall(self, data):
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def recv(self, n):
        data = self.sock.recv(n)
        self.received += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.sock, name)


def read_response(conn):
    """One HTTP/1.1 response with a Content-Length body: (status, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed before the response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise RuntimeError("connection closed inside the response body")
        body += chunk
    if len(body) != length:
        raise RuntimeError("more than one response")
    return status, body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sni", required=True)
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--calls", type=int, default=3, help="calls per connection")
    args = ap.parse_args()
    total = {"sent": 0, "received": 0}
    ids = []
    for c in range(args.connections):
        raw = socket.create_connection(("127.0.0.1", args.port))
        counting = CountingSocket(raw)
        conn = TLSConnection(counting)
        settings = HandshakeSettings()
        conn.handshakeClientCert(serverName=args.sni, settings=settings, alpn=[bytearray(b"http/1.1")])
        for i in range(args.calls):
            body = json.dumps({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"tlslite call {c}.{i}"}],
            }).encode()
            req = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {args.sni}\r\n"
                f"Authorization: Bearer sk-tlslite-not-a-secret\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
            ).encode() + body
            conn.sendall(req)
            status, resp = read_response(conn)
            if status != 200:
                raise RuntimeError(f"status {status}: {resp[:200]!r}")
            ids.append(json.loads(resp).get("id"))
        conn.close()
        raw.close()
        total["sent"] += counting.sent
        total["received"] += counting.received
    print(json.dumps({
        "pid": os.getpid(),
        "connections": args.connections,
        "calls": args.connections * args.calls,
        "bytes_sent": total["sent"],
        "bytes_received": total["received"],
        "response_ids": ids,
    }))


if __name__ == "__main__":
    main()
