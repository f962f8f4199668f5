#!/usr/bin/env python3
"""A local HTTPS server speaking the OpenAI and Anthropic wire formats, for tests.

Not a mock of tokentap: a real TLS server that real SDK clients talk to. Every
response carries token counts unique to it, and the server appends what it served
(the truth the agent's records are compared with) to a JSONL log:

    {"response_id", "api", "model", "stream", "expected": {input, output, cached,
     cache_write, reasoning, usage_source}}

Usage: llm_server.py --cert C --key K --port-file F --log L
"""
import argparse
import gzip
import json
import os
import socketserver
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

LOCK = threading.Lock()
COUNTER = [0]
LOG = None


def next_n():
    with LOCK:
        COUNTER[0] += 1
        return COUNTER[0]


def log(entry):
    with LOCK:
        LOG.write(json.dumps(entry) + "\n")
        LOG.flush()


def dated(model):
    return {
        "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
        "gpt-4o": "gpt-4o-2024-08-06",
        "gpt-4.1": "gpt-4.1-2025-04-14",
        "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
        "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    }.get(model, model)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle and the
        # client's delayed ACK add 40 ms to every call.
        import socket
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def do_POST(self):
        try:
            self.handle_post()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    def handle_post(self):
        n_bytes = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n_bytes) if n_bytes else b""
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            return self.send_json(400, {"error": {"message": "bad json"}})
        path = self.path.split("?")[0].rstrip("/")
        n = next_n()
        if path.endswith("/chat/completions"):
            return self.chat(req, n)
        if path.endswith("/responses"):
            return self.responses_api(req, n)
        if path.endswith("/embeddings"):
            return self.embeddings(req, n)
        if path.endswith("/v1/messages"):
            return self.messages(req, n)
        if path.endswith("/completions"):
            return self.completions(req, n)
        return self.send_json(404, {"error": {"message": "no route"}})

    # -- transport helpers -------------------------------------------------
    def send_json(self, status, obj, extra_headers=()):
        body = json.dumps(obj).encode()
        encoding = None
        if "gzip" in (self.headers.get("Accept-Encoding") or "") and len(body) > 0:
            body = gzip.compress(body)
            encoding = "gzip"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("x-request-id", "req_" + uuid.uuid4().hex[:16])
        if encoding:
            self.send_header("Content-Encoding", encoding)
        for k, v in extra_headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def start_stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:16])
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def chunk(self, data):
        data = data.encode() if isinstance(data, str) else data
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def sse(self, obj, event=None):
        prefix = f"event: {event}\n" if event else ""
        self.chunk(prefix + "data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n")

    # -- OpenAI ------------------------------------------------------------
    def chat(self, req, n):
        model = req.get("model", "gpt-4o-mini")
        if model == "garbage":
            # A 200 whose body is not the provider's format: must produce no record.
            body = b'{"id": "chatcmpl-garbage", "usage": {"prompt_tokens": 1'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return self.wfile.flush()
        if model == "gzip-bomb":
            # 64 MiB of zeros in ~64 KiB of gzip: the agent's cap must stop it.
            body = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return self.wfile.flush()
        rid = "chatcmpl-" + uuid.uuid4().hex
        inp, out = 1000 + 13 * n, 40 + n
        cached = 512 if n % 3 == 0 else 0
        reasoning = 7 if n % 2 == 0 else 0
        usage = {
            "prompt_tokens": inp,
            "completion_tokens": out,
            "total_tokens": inp + out,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
        }
        expected = {"input": inp, "output": out, "cached": cached, "cache_write": None,
                    "reasoning": reasoning, "usage_source": "reported"}
        if not req.get("stream"):
            log({"response_id": rid, "api": "chat", "model": dated(model), "stream": False, "expected": expected})
            return self.send_json(200, {
                "id": rid, "object": "chat.completion", "created": int(time.time()), "model": dated(model),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                             "finish_reason": "stop"}],
                "usage": usage, "system_fingerprint": "fp_test",
            })
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        words = 3 + n % 5
        if not include_usage:
            # "Hello" + " hello" * k is exactly words tokens in o200k_base.
            expected = {"input": None, "output": words, "cached": None, "cache_write": None,
                        "reasoning": None, "usage_source": "estimated"}
        log({"response_id": rid, "api": "chat", "model": dated(model), "stream": True, "expected": expected})
        self.start_stream()
        base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": dated(model), "system_fingerprint": "fp_test"}
        self.sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None}]})
        pieces = ["Hello"] + [" hello"] * (words - 1)
        for p in pieces:
            self.sse({**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
            if model == "slow-stream":
                time.sleep(1.0)
        self.sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if include_usage:
            self.sse({**base, "choices": [], "usage": usage})
        self.sse("[DONE]")
        self.end_stream()

    def completions(self, req, n):
        model = req.get("model", "gpt-3.5-turbo-instruct")
        rid = "cmpl-" + uuid.uuid4().hex
        inp, out = 200 + n, 10 + n
        log({"response_id": rid, "api": "completions", "model": model, "stream": False,
             "expected": {"input": inp, "output": out, "cached": None, "cache_write": None,
                          "reasoning": None, "usage_source": "reported"}})
        self.send_json(200, {"id": rid, "object": "text_completion", "model": model,
                             "choices": [{"text": "ok", "index": 0, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out}})

    def responses_api(self, req, n):
        model = req.get("model", "gpt-4.1")
        rid = "resp_" + uuid.uuid4().hex
        inp, out = 300 + 11 * n, 20 + n
        cached = 128 if n % 2 == 0 else 0
        reasoning = 5 if n % 3 == 0 else 0
        usage = {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
                 "output_tokens": out, "output_tokens_details": {"reasoning_tokens": reasoning},
                 "total_tokens": inp + out}
        expected = {"input": inp, "output": out, "cached": cached, "cache_write": None,
                    "reasoning": reasoning, "usage_source": "reported"}
        log({"response_id": rid, "api": "responses", "model": dated(model), "stream": bool(req.get("stream")),
             "expected": expected})
        resp = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": dated(model), "output": [{"type": "message", "id": "msg_" + uuid.uuid4().hex,
                                                   "status": "completed", "role": "assistant",
                                                   "content": [{"type": "output_text", "text": "Hi there",
                                                                "annotations": []}]}],
                "usage": usage, "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
        if not req.get("stream"):
            return self.send_json(200, resp)
        self.start_stream()
        start = {**resp, "status": "in_progress", "output": [], "usage": None}
        self.sse({"type": "response.created", "sequence_number": 0, "response": start}, "response.created")
        self.sse({"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1",
                  "output_index": 0, "content_index": 0, "delta": "Hi"}, "response.output_text.delta")
        self.sse({"type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_1",
                  "output_index": 0, "content_index": 0, "delta": " there"}, "response.output_text.delta")
        self.sse({"type": "response.completed", "sequence_number": 3, "response": resp}, "response.completed")
        self.end_stream()

    def embeddings(self, req, n):
        model = req.get("model", "text-embedding-3-small")
        inp = 5000 + n
        # Embeddings responses have no id: the unique input count identifies it.
        log({"response_id": None, "api": "embeddings", "model": model, "stream": False,
             "expected": {"input": inp, "output": 0, "cached": None, "cache_write": None,
                          "reasoning": None, "usage_source": "reported"}})
        self.send_json(200, {"object": "list", "model": model,
                             "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]}],
                             "usage": {"prompt_tokens": inp, "total_tokens": inp}})

    # -- Anthropic ---------------------------------------------------------
    def messages(self, req, n):
        model = req.get("model", "claude-sonnet-4-5")
        rid = "msg_" + uuid.uuid4().hex[:24]
        base_in, out = 20 + n, 30 + n
        read = 256 * (n % 2)
        write = 64 * (n % 3)
        expected = {"input": base_in + read + write, "output": out, "cached": read, "cache_write": write,
                    "reasoning": None, "usage_source": "reported"}
        log({"response_id": rid, "api": "messages", "model": dated(model), "stream": bool(req.get("stream")),
             "expected": expected})
        if not req.get("stream"):
            return self.send_json(200, {
                "id": rid, "type": "message", "role": "assistant", "model": dated(model),
                "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": base_in, "cache_creation_input_tokens": write,
                          "cache_read_input_tokens": read, "output_tokens": out},
            }, extra_headers=[("request-id", "req_" + uuid.uuid4().hex[:16])])
        self.start_stream()
        self.sse({"type": "message_start", "message": {
            "id": rid, "type": "message", "role": "assistant", "model": dated(model), "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": base_in, "cache_creation_input_tokens": write,
                      "cache_read_input_tokens": read, "output_tokens": 1}}}, "message_start")
        self.sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                 "content_block_start")
        self.sse({"type": "ping"}, "ping")
        for t in ["Hel", "lo", "!"]:
            self.sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
                     "content_block_delta")
        self.sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        self.sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                  "usage": {"output_tokens": out}}, "message_delta")
        self.sse({"type": "message_stop"}, "message_stop")
        self.end_stream()


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    global LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    LOG = open(a.log, "a")
    srv = Server(("127.0.0.1", a.port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["http/1.1"])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.replace(tmp, a.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
