#!/usr/bin/env python3
"""A local HTTPS server speaking the LLM providers' wire formats, for tests:
OpenAI (and OpenAI-compatible: vLLM, TGI…), Anthropic, Gemini, Bedrock
(event-stream framing included) and Ollama (NDJSON streams).

Not a mock of tokentap: a real TLS server that real SDK clients talk to. Every
response carries token counts unique to it, and the server appends what it served
(the truth the agent's records are compared with) to a JSONL log:

    {"response_id", "api", "model", "stream", "expected": {input, output, cached,
     cache_write, reasoning, usage_source}}

Transports: HTTPS/1.1 (default), HTTPS with HTTP/2 negotiated by ALPN (`--h2`,
served with the `h2` library), or plaintext HTTP/1.1 (`--plain`).

Request headers for tests: `x-test-usage` (the usage to report, JSON),
`x-test-stream-words: N` (an OpenAI chat stream of N content chunks),
`x-test-word-pause-ms: M` (those chunks M ms apart), `x-test-hold-until: PATH`
(an OpenAI chat call answered only once PATH exists, PATH.held made when it
arrives), `x-test-hold-body: PATH` (the body read only once PATH exists,
PATH.held made when the head arrives: a client kept inside its write) and, over
HTTP/2, `x-test-burst: N` (the response's body in DATA frames of at most N bytes,
sent with the stream's end in one write).

WebSocket (ws_server.py; HTTP/1.1 `GET` with `Upgrade: websocket`, TLS or --plain;
permessage-deflate accepted when offered), routed by path:
- `.../responses`: Responses API (Codex CLI): each `response.create` message gets the
  SSE stream's events, one TEXT message each; `"generate": false` is a warm-up
  (response.created + response.completed, output_tokens 0); model `ws-error` gets an
  `error` event instead.
- `.../realtime?model=M`: OpenAI Realtime (GA events); `response.create` gets audio
  (when the session's output_modalities has "audio") or text deltas, then response.done
  with usage.
- `/ws/google.ai.generativelanguage.{v1beta,v1alpha}.GenerativeService.BidiGenerateContent`:
  Gemini Live: `setup` -> setupComplete; a turn (clientContent turnComplete,
  realtimeInput audioStreamEnd/activityEnd, toolResponse) -> modelTurn parts,
  generationComplete, turnComplete with that turn's usageMetadata; BINARY frames.
Per-connection controls, as query parameters of the upgrade URL (or as headers
`X-TT-<name>`, e.g. `X-TT-Fragment: 64`, for SDKs that cannot add a query):
    tt_compress=0     send uncompressed messages even when permessage-deflate is negotiated
    tt_deflate=0      decline permessage-deflate
    tt_fragment=N     split each server message into frames of at most N payload bytes
    tt_ping=1         send a ping before the last frame of each server message
                      (so inside fragmented messages)
    tt_binary=0|1     server messages as TEXT (0) or BINARY (1) frames, whatever the API
    tt_close_after=N  close (1000) after N responses / turns on the connection
Truth-log entries of WebSocket calls add "transport": "websocket" and:
    responses:   as over HTTP, "stream": true; "warmup": true for generate:false;
                 model ws-error: "expected": null, "status": 400, "response_id": null
    realtime:    "api": "realtime", "model": the query's model; "expected" adds
                 input_text, input_audio, output_text, output_audio, cached_audio
    gemini_live: "response_id": null, "turn": k (1, 2, ... on the connection),
                 "model" without "models/"

Usage: llm_server.py --cert C --key K --port-file F --log L [--h2 | --plain]
"""
import base64
import binascii
import struct
import urllib.parse
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

# h2_server.py and ws_server.py sit next to this file, whatever the cwd; no
# __pycache__ left in the tree.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
import h2_server  # noqa: E402
import ws_server  # noqa: E402

LOCK = threading.Lock()
COUNTER = [0]
LOG = None


def next_n():
    with LOCK:
        COUNTER[0] += 1
        return COUNTER[0]


CONN = threading.local()


def log(entry):
    # Which connection served it (concurrency tests check streams shared one).
    entry["conn"] = getattr(CONN, "id", None)
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
        CONN.id = id(self.connection)

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def do_POST(self):
        try:
            self.handle_post()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    def do_GET(self):
        try:
            if self.request is not None and "websocket" in (self.headers.get("Upgrade") or "").lower():
                return ws_server.serve(self, next_n=next_n, log=log, dated=dated)
            if self.path.split("?")[0].endswith("/download"):
                return self.download()
            self.send_json(404, {"error": {"message": "no route"}})
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    def handle_post(self):
        self.hold("x-test-hold-body")
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
        if path.rsplit("/", 1)[-1].split(":")[-1] in ("generateContent", "streamGenerateContent"):
            return self.gemini(req, n, path)
        if path.startswith("/model/"):
            return self.bedrock(req, n, path)
        if path in ("/api/chat", "/api/generate"):
            return self.ollama(req, n, path)
        return self.send_json(404, {"error": {"message": "no route"}})

    def download(self):
        """Not an LLM call (never logged as served): `bytes` of a file with its
        Content-Length, written in 64 KiB pieces `pause_ms` apart, so a download
        lasts long enough for a passive tap to act on its head."""
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        size = int(q.get("bytes", ["1048576"])[0])
        pause = float(q.get("pause_ms", ["0"])[0]) / 1000.0
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        piece = bytes(range(256)) * 256
        left = size
        while left > 0:
            n = min(left, len(piece))
            self.wfile.write(piece[:n])
            self.wfile.flush()
            left -= n
            if pause and left:
                time.sleep(pause)

    # -- transport helpers -------------------------------------------------
    def send_json(self, status, obj, extra_headers=()):
        body = json.dumps(obj).encode()
        encoding = None
        if "gzip" in (self.headers.get("Accept-Encoding") or "") and len(body) > 0:
            body = gzip.compress(body)
            encoding = "gzip"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if not any(k.lower() in ("x-request-id", "x-amzn-requestid") for k, _ in extra_headers):
            self.send_header("x-request-id", "req_" + uuid.uuid4().hex[:16])
        if encoding:
            self.send_header("Content-Encoding", encoding)
        for k, v in extra_headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def start_stream(self, content_type="text/event-stream; charset=utf-8", request_id=None):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", request_id or "req_" + uuid.uuid4().hex[:16])
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

    def hold(self, header="x-test-hold-until"):
        """x-test-hold-until: PATH: answer only once PATH exists (at most 120 s),
        after saying so in PATH.held: a call the test keeps in flight (and
        x-test-hold-body: its body read only then)."""
        path = self.headers.get(header)
        if not path:
            return
        open(path + ".held", "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)

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
        self.hold()
        rid = "chatcmpl-" + uuid.uuid4().hex
        inp, out = 1000 + 13 * n, 40 + n
        cached = 512 if n % 3 == 0 else 0
        reasoning = 7 if n % 2 == 0 else 0
        planted = self.planted_usage()
        if planted:
            # The calibration workload states the usage to report (known truth).
            inp, out, cached, reasoning = planted["input"], planted["output"], planted.get("cached", 0), 0
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
        # x-test-stream-words: a longer stream (many small DATA frames over HTTP/2).
        words = int(self.headers.get("x-test-stream-words") or 3 + n % 5)
        pause = float(self.headers.get("x-test-word-pause-ms") or 0) / 1000.0
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
            elif pause:
                time.sleep(pause)
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

    def planted_usage(self):
        h = self.headers.get("x-test-usage")
        return json.loads(h) if h else None

    def embeddings(self, req, n):
        model = req.get("model", "text-embedding-3-small")
        inp = 5000 + n
        planted = self.planted_usage()
        if planted:
            inp = planted["input"]
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


    # -- Gemini ------------------------------------------------------------
    def gemini(self, req, n, path):
        model, method = path.rsplit("/", 1)[-1].split(":")
        rid = uuid.uuid4().hex[:22]
        prompt, cand = 100 + n, 20 + n
        thoughts = 5 if n % 2 else 0
        cached = 64 if n % 3 == 0 else 0
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": cand,
                 "totalTokenCount": prompt + cand + thoughts}
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        if cached:
            usage["cachedContentTokenCount"] = cached
        stream = method == "streamGenerateContent"
        log({"response_id": rid, "api": "gemini", "model": model, "stream": stream,
             "expected": {"input": prompt, "output": cand + thoughts, "cached": cached or None,
                          "cache_write": None, "reasoning": thoughts or None, "usage_source": "reported"}})

        def chunk(text, final):
            c = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            if final:
                c["finishReason"] = "STOP"
            u = usage if final else {"promptTokenCount": prompt, "totalTokenCount": prompt}
            return {"candidates": [c], "usageMetadata": u, "modelVersion": model, "responseId": rid}
        if not stream:
            return self.send_json(200, chunk("Hello there!", True))
        parts = [chunk("Hello", False), chunk(" there", False), chunk("!", True)]
        if "alt=sse" in self.path:
            self.start_stream()
            for p in parts:
                self.chunk("data: " + json.dumps(p) + "\r\n\r\n")
        else:
            self.start_stream("application/json; charset=UTF-8")
            for i, p in enumerate(parts):
                self.chunk(("[" if i == 0 else ",\r\n") + json.dumps(p))
            self.chunk("]")
        self.end_stream()

    # -- Bedrock -----------------------------------------------------------
    @staticmethod
    def event_message(headers, payload):
        h = b""
        for k, v in headers:
            h += bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode()
        total = 16 + len(h) + len(payload)
        prelude = struct.pack(">II", total, len(h))
        m = prelude + struct.pack(">I", binascii.crc32(prelude)) + h + payload
        return m + struct.pack(">I", binascii.crc32(m))

    def event(self, kind, obj):
        self.chunk(self.event_message([(":event-type", kind), (":content-type", "application/json"),
                                       (":message-type", "event")], json.dumps(obj).encode()))

    def bedrock(self, req, n, path):
        _, _, model, op = path.split("/", 3)
        model = urllib.parse.unquote(model)
        request_id = str(uuid.uuid4())
        inp, out = 40 + n, 15 + n
        read = 128 if n % 2 else 0
        write = 32 if n % 3 == 0 else 0
        expected = {"input": inp + read + write, "output": out, "cached": read, "cache_write": write,
                    "reasoning": None, "usage_source": "reported"}
        usage = {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out + read + write,
                 "cacheReadInputTokens": read, "cacheWriteInputTokens": write}
        entry = {"response_id": None, "request_id": request_id, "api": "bedrock_" + op, "model": model,
                 "stream": op.endswith("stream"), "expected": expected}
        if op == "converse":
            log(entry)
            return self.send_json(200, {
                "output": {"message": {"role": "assistant", "content": [{"text": "Hello!"}]}},
                "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 120}},
                extra_headers=[("x-amzn-RequestId", request_id)])
        if op == "converse-stream":
            log(entry)
            self.start_stream("application/vnd.amazon.eventstream", request_id)
            self.event("messageStart", {"role": "assistant"})
            for t in ["Hel", "lo!"]:
                self.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}})
            self.event("contentBlockStop", {"contentBlockIndex": 0})
            self.event("messageStop", {"stopReason": "end_turn"})
            self.event("metadata", {"usage": usage, "metrics": {"latencyMs": 150}})
            return self.end_stream()
        # InvokeModel: the model's own (Anthropic) format; counts in headers.
        rid = "msg_bdrk_" + uuid.uuid4().hex[:20]
        entry["response_id"] = rid
        if op == "invoke":
            entry["expected"] = {**expected, "input": inp, "cached": None, "cache_write": None,
                                 "usage_source": "headers"}
            log(entry)
            # test_pad: that many more bytes of (incompressible) text, for clients
            # that leave the body unread.
            pad = base64.b64encode(os.urandom(int(req.get("test_pad") or 0) * 3 // 4)).decode()
            return self.send_json(200, {
                "id": rid, "type": "message", "role": "assistant", "model": "claude",
                "content": [{"type": "text", "text": "Hello!" + pad}], "stop_reason": "end_turn",
                "usage": {"input_tokens": inp, "output_tokens": out}},
                extra_headers=[("x-amzn-RequestId", request_id), ("X-Amzn-Bedrock-Input-Token-Count", str(inp)),
                               ("X-Amzn-Bedrock-Output-Token-Count", str(out)),
                               ("X-Amzn-Bedrock-Invocation-Latency", "300")])
        entry["expected"] = {**expected, "input": inp, "cached": None, "cache_write": None}
        log(entry)
        self.start_stream("application/vnd.amazon.eventstream", request_id)

        def chunk(obj):
            self.event("chunk", {"bytes": base64.b64encode(json.dumps(obj).encode()).decode()})
        chunk({"type": "message_start", "message": {"id": rid, "type": "message", "role": "assistant",
                                                    "usage": {"input_tokens": inp, "output_tokens": 1}}})
        chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello!"}})
        chunk({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": out}})
        chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": inp, "outputTokenCount": out, "invocationLatency": 300, "firstByteLatency": 90}})
        self.end_stream()

    # -- Ollama ------------------------------------------------------------
    def ollama(self, req, n, path):
        model = req.get("model", "llama3.2")
        request_id = "req_" + uuid.uuid4().hex[:16]
        prompt, evals = 30 + n, 10 + n
        stream = req.get("stream", True)
        log({"response_id": None, "request_id": request_id, "api": "ollama", "model": model, "stream": stream,
             "priced": False, "expected": {"input": prompt, "output": evals, "cached": None, "cache_write": None,
                                           "reasoning": None, "usage_source": "reported"}})
        chat = path == "/api/chat"

        def line(text, done):
            o = {"model": model, "created_at": "2025-01-01T00:00:00Z", "done": done}
            if chat:
                o["message"] = {"role": "assistant", "content": text}
            else:
                o["response"] = text
            if done:
                o.update({"done_reason": "stop", "total_duration": 1000, "prompt_eval_count": prompt,
                          "eval_count": evals, "eval_duration": 900})
            return o
        if not stream:
            return self.send_json(200, line("Hello!", True), extra_headers=[("x-request-id", request_id)])
        self.start_stream("application/x-ndjson", request_id)
        for t in ["Hel", "lo", "!"]:
            self.chunk(json.dumps(line(t, False)) + "\n")
        self.chunk(json.dumps(line("", True)) + "\n")
        self.end_stream()


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Bursts of new connections (a client's pool opening at once) must not
    # overflow the listen queue.
    request_queue_size = 256

    def handle_error(self, request, client_address):
        # A client resetting its connection between requests is not a server error.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, ssl.SSLError)):
            super().handle_error(request, client_address)

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread, not in
        # the accept loop: one slow handshake must not hold up the others.
        if hasattr(request, "do_handshake"):
            try:
                request.settimeout(10)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ssl.SSLError):
                return
        if getattr(request, "selected_alpn_protocol", lambda: None)() == "h2":
            return h2_server.H2Conn(request, self, CONN).run()
        return super().finish_request(request, client_address)


def main():
    global LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--h2", action="store_true", help="offer HTTP/2 by ALPN (h2, then http/1.1)")
    ap.add_argument("--plain", action="store_true", help="plaintext HTTP/1.1, no TLS")
    a = ap.parse_args()
    LOG = open(a.log, "a")
    srv = Server(("127.0.0.1", a.port), Handler)
    if not a.plain:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        ctx.set_alpn_protocols(["h2", "http/1.1"] if a.h2 else ["http/1.1"])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
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
