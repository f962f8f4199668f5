"""The WebSocket side of the test LLM server (llm_server.py), by hand on the stdlib:
RFC 6455 (handshake, framing both ways, fragmented incoming messages, ping/pong/close)
and RFC 7692 permessage-deflate (context takeover or not, either side), serving

- the OpenAI Responses API over WebSocket (Codex CLI), path ending `/responses`;
- the OpenAI Realtime API (GA event shapes), path ending `/realtime`;
- the Gemini Live API, path `/ws/google.ai.generativelanguage.<v>.GenerativeService.BidiGenerateContent`.

llm_server.py's Handler.do_GET calls serve() for a request with `Upgrade: websocket`.
The per-connection `tt_*` controls and the truth-log fields are documented in
llm_server.py's docstring.
"""
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import time
import urllib.parse
import uuid
import zlib

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 16 << 20  # bytes, after inflating
IDLE_TIMEOUT = 300  # seconds without a byte from the client: the connection ends


class Closed(Exception):
    """The client closed the connection (Close frame, or EOF)."""


class ProtocolError(Exception):
    def __init__(self, code, reason):
        super().__init__(reason)
        self.code, self.reason = code, reason


def accept_key(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def negotiate_deflate(offers):
    """The Sec-WebSocket-Extensions reply accepting the first acceptable
    permessage-deflate offer, and its parameters; None to decline."""
    for offer in offers.split(","):
        name, *params = [p.strip() for p in offer.split(";")]
        if name.lower() != "permessage-deflate":
            continue
        reply, p, seen, ok = ["permessage-deflate"], {"server_nct": False, "client_nct": False, "bits": 15}, set(), True
        for param in params:
            k, _, v = param.partition("=")
            k, v = k.strip().lower(), v.strip().strip('"') or None
            if k in seen:
                ok = False
            seen.add(k)
            if k in ("server_no_context_takeover", "client_no_context_takeover") and v is None:
                p["server_nct" if k[0] == "s" else "client_nct"] = True
                reply.append(k)
            elif k == "server_max_window_bits" and v and v.isdigit() and 9 <= int(v) <= 15:
                p["bits"] = int(v)
                reply.append(f"{k}={int(v)}")
            elif k == "client_max_window_bits" and (v is None or (v.isdigit() and 8 <= int(v) <= 15)):
                pass  # a 15-bit inflater reads any window: accepted by not replying it
            else:
                ok = False
        if ok:
            return "; ".join(reply), p
    return None


def unmask(data, key):
    if not data:
        return data
    k = (key * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(len(data), "big")


def frame_header(b0, n):
    if n < 126:
        return bytes([b0, n])
    if n < 65536:
        return struct.pack(">BBH", b0, 126, n)
    return struct.pack(">BBQ", b0, 127, n)


class WebSocket:
    """The server end of one connection: recv() whole messages, send() them."""

    def __init__(self, sock, rfile, wfile, deflate, opts):
        self.sock, self.rfile, self.wfile = sock, rfile, wfile
        self.deflate = deflate  # negotiated parameters, or None
        self.compress = deflate is not None and opts.get("compress") != "0"
        self.fragment = int(opts.get("fragment") or 0)
        self.ping = opts.get("ping") == "1"
        self.inflater = self.deflater = None
        self.close_sent = False

    # -- reading -----------------------------------------------------------
    def read(self, n):
        b = self.rfile.read(n)
        if len(b) < n:
            raise Closed()
        return b

    def read_frame(self):
        b0, b1 = self.read(2)
        n = b1 & 127
        if n == 126:
            n = struct.unpack(">H", self.read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self.read(8))[0]
        if not b1 & 0x80:
            raise ProtocolError(1002, "unmasked client frame")
        if n > MAX_MESSAGE:
            raise ProtocolError(1009, "frame too big")
        key = self.read(4)
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 15, unmask(self.read(n), key)

    def recv(self):
        """The next data message, (opcode 1 or 2, bytes); pings are answered on the way."""
        parts, opcode, compressed, size = [], None, False, 0
        while True:
            fin, rsv, op, data = self.read_frame()
            if op >= 8:
                if not fin or rsv or len(data) > 125:
                    raise ProtocolError(1002, "bad control frame")
                if op == 8:
                    self.on_close(data)
                elif op == 9:
                    self.send_frame(0x8A, data)
                elif op != 10:
                    raise ProtocolError(1002, "unknown opcode")
                continue
            if op == 0:
                if opcode is None or rsv:
                    raise ProtocolError(1002, "bad continuation frame")
            elif op in (1, 2):
                if opcode is not None:
                    raise ProtocolError(1002, "new message inside a fragmented one")
                if rsv & 3 or (rsv & 4 and not self.deflate):
                    raise ProtocolError(1002, "reserved bits set")
                opcode, compressed = op, bool(rsv & 4)
            else:
                raise ProtocolError(1002, "unknown opcode")
            size += len(data)
            if size > MAX_MESSAGE:
                raise ProtocolError(1009, "message too big")
            parts.append(data)
            if fin:
                break
        payload = b"".join(parts)
        if compressed:
            payload = self.inflate(payload)
        if opcode == 1:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(1007, "invalid UTF-8") from None
        return opcode, payload

    def inflate(self, data):
        if self.inflater is None or self.deflate["client_nct"]:
            self.inflater = zlib.decompressobj(-15)
        try:
            out = self.inflater.decompress(data + b"\x00\x00\xff\xff", MAX_MESSAGE + 1)
        except zlib.error:
            raise ProtocolError(1007, "bad deflate data") from None
        if len(out) > MAX_MESSAGE or self.inflater.unconsumed_tail:
            raise ProtocolError(1009, "message too big")
        return out

    def on_close(self, data):
        if len(data) == 1:
            raise ProtocolError(1002, "bad close frame")
        if not self.close_sent:
            self.close_sent = True
            self.send_frame(0x88, data[:2])
        raise Closed()

    # -- writing -----------------------------------------------------------
    def send_frame(self, b0, data):
        self.wfile.write(frame_header(b0, len(data)) + data)

    def send(self, obj, binary=False):
        """One message, JSON-encoded if not bytes: compressed and fragmented as the
        connection says; with tt_ping=1 a ping goes out before its last frame."""
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        rsv1 = 0
        if self.compress:
            if self.deflater is None or self.deflate["server_nct"]:
                self.deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.deflate["bits"])
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
            if data.endswith(b"\x00\x00\xff\xff"):
                data = data[:-4]
            rsv1 = 0x40
        step = self.fragment or len(data) or 1
        chunks = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
        for i, c in enumerate(chunks):
            last = i == len(chunks) - 1
            if last and self.ping:
                self.send_frame(0x89, b"tt-ping")
            b0 = (0x80 if last else 0) | ((rsv1 | (2 if binary else 1)) if i == 0 else 0)
            self.send_frame(b0, c)

    def close(self, code, reason=""):
        """Close from this side: send Close, then wait (briefly) for the client's."""
        if not self.close_sent:
            self.close_sent = True
            self.send_frame(0x88, struct.pack(">H", code) + reason.encode()[:120])
        self.sock.settimeout(2)
        try:
            while True:
                self.read_frame()
        except Exception:
            pass


# -- the APIs -----------------------------------------------------------------
def hexid(prefix, n=24):
    return prefix + uuid.uuid4().hex[:n]


class App:
    binary = False  # server messages as BINARY frames (tt_binary overrides)

    def __init__(self, ws, env):
        self.ws, self.env, self.served = ws, env, 0
        b = env.opts.get("binary")
        self.binary = self.binary if b is None else b == "1"

    def send(self, obj):
        self.ws.send(obj, self.binary)

    def start(self):
        pass


class Responses(App):
    """Responses API over WebSocket: each `response.create` message is answered with
    the events the SSE stream would carry, one TEXT message each."""

    def on_message(self, req):
        extra = {"stream_id": req["stream_id"]} if "stream_id" in req else {}
        if req.get("type") != "response.create":
            return self.send({"type": "error", "status": 400, **extra, "error": {
                "type": "invalid_request_error", "code": "unknown_event_type", "param": "type",
                "message": f"Unsupported event type {req.get('type')!r}."}})
        self.served += 1
        n, model = self.env.next_n(), self.env.dated(req.get("model") or "gpt-4.1")
        entry = {"response_id": None, "api": "responses", "model": model, "stream": True, "transport": "websocket"}
        if model == "ws-error":
            self.env.log({**entry, "expected": None, "status": 400})
            return self.send({"type": "error", "status": 400, **extra, "error": {
                "type": "invalid_request_error", "code": "model_not_found", "param": "model",
                "message": "The model `ws-error` does not exist or you do not have access to it."}})
        warmup = req.get("generate") is False
        rid = "resp_" + uuid.uuid4().hex
        inp, out = 300 + 11 * n, 0 if warmup else 20 + n
        cached = 128 if n % 2 == 0 else 0
        reasoning = 0 if warmup or n % 3 else 5
        usage = {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
                 "output_tokens": out, "output_tokens_details": {"reasoning_tokens": reasoning},
                 "total_tokens": inp + out}
        entry.update(response_id=rid, expected={"input": inp, "output": out, "cached": cached, "cache_write": None,
                                                "reasoning": reasoning, "usage_source": "reported"})
        if warmup:
            entry["warmup"] = True
        self.env.log(entry)
        mid = "msg_" + uuid.uuid4().hex
        done_item = {"type": "message", "id": mid, "status": "completed", "role": "assistant",
                     "content": [{"type": "output_text", "text": "Hi there", "annotations": []}]}
        resp = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": model, "output": [] if warmup else [done_item], "usage": usage,
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                "previous_response_id": req.get("previous_response_id")}
        seq = iter(range(1 << 30))

        def ev(kind, **fields):
            self.send({"type": kind, "sequence_number": next(seq), **fields, **extra})
        ev("response.created", response={**resp, "status": "in_progress", "output": [], "usage": None})
        if not warmup:
            at = {"item_id": mid, "output_index": 0, "content_index": 0}
            ev("response.in_progress", response={**resp, "status": "in_progress", "output": [], "usage": None})
            ev("response.output_item.added", output_index=0,
               item={**done_item, "status": "in_progress", "content": []})
            ev("response.content_part.added", **at, part={"type": "output_text", "text": "", "annotations": []})
            ev("response.output_text.delta", **at, delta="Hi")
            ev("response.output_text.delta", **at, delta=" there")
            ev("response.output_text.done", **at, text="Hi there")
            ev("response.content_part.done", **at, part=done_item["content"][0])
            ev("response.output_item.done", output_index=0, item=done_item)
        ev("response.completed", response=resp)


class Realtime(App):
    """OpenAI Realtime API, GA event shapes."""

    def start(self):
        self.model = self.env.query.get("model") or "gpt-realtime"
        self.session = {
            "type": "realtime", "object": "realtime.session", "id": hexid("sess_"), "model": self.model,
            "output_modalities": ["audio"], "instructions": "You are a helpful assistant.", "tools": [],
            "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None, "prompt": None,
            "truncation": "auto", "expires_at": int(time.time()) + 3600, "include": None,
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": None,
                                "noise_reduction": None,
                                "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                                   "silence_duration_ms": 200, "create_response": True,
                                                   "interrupt_response": True, "idle_timeout_ms": None}},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0}}}
        self.last_item = None
        self.conversation = hexid("conv_")
        self.emit("session.created", session=self.session)

    def emit(self, kind, **fields):
        self.send({"type": kind, "event_id": hexid("event_"), **fields})

    def error(self, req, message, code="invalid_value"):
        self.emit("error", error={"type": "invalid_request_error", "code": code, "message": message,
                                  "param": None, "event_id": req.get("event_id")})

    def add_item(self, item):
        prev, self.last_item = self.last_item, item["id"]
        self.emit("conversation.item.added", previous_item_id=prev, item=item)
        self.emit("conversation.item.done", previous_item_id=prev, item=item)

    def on_message(self, req):
        kind = req.get("type")
        if kind == "session.update":
            s = req.get("session")
            if not isinstance(s, dict):
                return self.error(req, "Missing required parameter: 'session'.")
            self.session.update({k: v for k, v in s.items() if k not in ("type", "object", "id", "model")})
            self.emit("session.updated", session=self.session)
        elif kind == "conversation.item.create":
            item = req.get("item")
            if not isinstance(item, dict):
                return self.error(req, "Missing required parameter: 'item'.")
            self.add_item({**item, "id": item.get("id") or hexid("item_"), "object": "realtime.item",
                           "status": "completed"})
        elif kind == "input_audio_buffer.append":
            pass
        elif kind == "input_audio_buffer.commit":
            item = hexid("item_")
            self.emit("input_audio_buffer.committed", previous_item_id=self.last_item, item_id=item)
            self.add_item({"id": item, "object": "realtime.item", "type": "message", "status": "completed",
                           "role": "user", "content": [{"type": "input_audio", "transcript": None}]})
        elif kind == "input_audio_buffer.clear":
            self.emit("input_audio_buffer.cleared")
        elif kind == "response.create":
            self.respond(req.get("response") or {})
        elif kind == "response.cancel":
            pass
        else:
            self.error(req, f"Invalid value: '{kind}'. Supported values are: 'session.update', "
                            "'conversation.item.create', 'input_audio_buffer.append', 'input_audio_buffer.commit', "
                            "'response.create', ...", code="invalid_value")

    def respond(self, params):
        self.served += 1
        n = self.env.next_n()
        audio = "audio" in (params.get("output_modalities") or self.session.get("output_modalities") or [])
        in_text, in_audio = 150 + 7 * n, (0 if n % 4 == 0 else 40 + 3 * n)
        cached_text, cached_audio = (64 if n % 2 == 0 else 0), (32 if n % 3 == 0 and in_audio else 0)
        out_audio, out_text = (60 + 2 * n, 10 + n) if audio else (0, 15 + n)
        inp, out, cached = in_text + in_audio, out_text + out_audio, cached_text + cached_audio
        usage = {"total_tokens": inp + out, "input_tokens": inp, "output_tokens": out,
                 "input_token_details": {"cached_tokens": cached, "text_tokens": in_text, "audio_tokens": in_audio,
                                         "image_tokens": 0,
                                         "cached_tokens_details": {"text_tokens": cached_text,
                                                                   "audio_tokens": cached_audio,
                                                                   "image_tokens": 0}},
                 "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio}}
        rid, iid = hexid("resp_"), hexid("item_")
        self.env.log({"response_id": rid, "api": "realtime", "model": self.model, "stream": True,
                      "transport": "websocket",
                      "expected": {"input": inp, "output": out, "cached": cached, "cache_write": None,
                                   "reasoning": None, "usage_source": "reported", "input_audio": in_audio,
                                   "input_text": in_text, "output_audio": out_audio, "output_text": out_text,
                                   "cached_audio": cached_audio}})
        mods = ["audio"] if audio else ["text"]
        resp = {"object": "realtime.response", "id": rid, "status": "in_progress", "status_details": None,
                "output": [], "conversation_id": self.conversation, "output_modalities": mods,
                "max_output_tokens": "inf", "metadata": None, "usage": None,
                "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}}}
        self.emit("response.created", response=resp)
        part = {"type": "output_audio", "transcript": "Hi there"} if audio else {"type": "output_text",
                                                                                  "text": "Hi there"}
        item = {"id": iid, "object": "realtime.item", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        at = {"response_id": rid, "item_id": iid, "output_index": 0}
        self.emit("response.output_item.added", response_id=rid, output_index=0, item=item)
        self.emit("conversation.item.added", previous_item_id=self.last_item, item=item)
        self.emit("response.content_part.added", **at, content_index=0,
                  part={**part, "transcript": ""} if audio else {**part, "text": ""})
        if audio:
            for i, t in enumerate(["Hi", " there", ""]):
                self.emit("response.output_audio.delta", **at, content_index=0,
                          delta=base64.b64encode(os.urandom(4800 + 1200 * i)).decode())
                if t:
                    self.emit("response.output_audio_transcript.delta", **at, content_index=0, delta=t)
            self.emit("response.output_audio.done", **at, content_index=0)
            self.emit("response.output_audio_transcript.done", **at, content_index=0, transcript="Hi there")
        else:
            for t in ["Hi", " there"]:
                self.emit("response.output_text.delta", **at, content_index=0, delta=t)
            self.emit("response.output_text.done", **at, content_index=0, text="Hi there")
        self.emit("response.content_part.done", **at, content_index=0, part=part)
        item = {**item, "status": "completed", "content": [part]}
        self.emit("response.output_item.done", response_id=rid, output_index=0, item=item)
        self.emit("conversation.item.done", previous_item_id=self.last_item, item=item)
        self.last_item = iid
        self.emit("response.done", response={**resp, "status": "completed", "output": [item], "usage": usage})
        if n % 2 == 0:
            self.emit("rate_limits.updated", rate_limits=[
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 400000, "remaining": 400000 - inp - out, "reset_seconds": 0.6}])


def field(d, name):
    """A field of a Gemini message by its JSON (lowerCamel) name or its proto name
    (snake_case), both accepted by Google: google-genai sends `client_content`."""
    if not isinstance(d, dict):
        return None
    if name in d:
        return d[name]
    return d.get("".join("_" + c.lower() if c.isupper() else c for c in name))


class GeminiLive(App):
    """Gemini Live API (BidiGenerateContent): JSON in BINARY frames, per-turn usage."""
    binary = True

    def start(self):
        self.model = None
        self.turns = 0

    def on_message(self, msg):
        if self.model is None:
            setup = msg.get("setup")
            if not isinstance(setup, dict) or not isinstance(setup.get("model"), str):
                raise ProtocolError(1007, "Invalid JSON payload received. First message must be setup.")
            self.model = setup["model"].split("/", 1)[1] if setup["model"].startswith("models/") else setup["model"]
            mods = field(field(setup, "generationConfig"), "responseModalities") or ["TEXT"]
            self.audio = "AUDIO" in [str(m).upper() for m in mods]
            return self.send({"setupComplete": {}})
        if "setup" in msg:
            raise ProtocolError(1007, "Invalid JSON payload received. Setup sent twice.")
        if field(field(msg, "clientContent"), "turnComplete") or field(msg, "toolResponse") is not None:
            return self.turn()
        ri = field(msg, "realtimeInput")
        if field(ri, "audioStreamEnd") or field(ri, "activityEnd") is not None:
            return self.turn()

    def turn(self):
        self.served += 1
        self.turns += 1
        n = self.env.next_n()
        prompt, cand = 100 + n, 20 + n
        thoughts = 5 if n % 2 else 0
        cached = 64 if n % 3 == 0 else 0
        modality = "AUDIO" if self.audio else "TEXT"
        usage = {"promptTokenCount": prompt, "responseTokenCount": cand,
                 "totalTokenCount": prompt + cand + thoughts,
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
                 "responseTokensDetails": [{"modality": modality, "tokenCount": cand}]}
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        if cached:
            usage["cachedContentTokenCount"] = cached
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
        self.env.log({"response_id": None, "turn": self.turns, "api": "gemini_live", "model": self.model,
                      "stream": True, "transport": "websocket",
                      "expected": {"input": prompt, "output": cand + thoughts, "cached": cached or None,
                                   "cache_write": None, "reasoning": thoughts or None, "usage_source": "reported"}})
        for t in ["Hi", " there"]:
            part = ({"inlineData": {"mimeType": "audio/pcm;rate=24000",
                                    "data": base64.b64encode(os.urandom(4800)).decode()}}
                    if self.audio else {"text": t})
            self.send({"serverContent": {"modelTurn": {"parts": [part]}}})
        self.send({"serverContent": {"generationComplete": True}})
        self.send({"serverContent": {"turnComplete": True}, "usageMetadata": usage})


def route(path):
    if path.endswith("/responses"):
        return Responses
    if path.endswith("/realtime"):
        return Realtime
    tail = path.rsplit("/", 1)[-1]
    if path.startswith("/ws/") and tail.startswith("google.ai.generativelanguage.") and \
            tail.split(".GenerativeService.")[-1] in ("BidiGenerateContent", "BidiGenerateContentConstrained"):
        return GeminiLive
    return None


class Env:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def serve(h, next_n, log, dated):
    """Upgrade the request on handler h to a WebSocket and serve the API of its path."""
    h.close_connection = True
    url = urllib.parse.urlsplit(h.path)
    app_class = route(url.path.rstrip("/"))
    if app_class is None:
        return h.send_json(404, {"error": {"message": "no route"}})
    query = dict(urllib.parse.parse_qsl(url.query))
    opts = {k[3:]: v for k, v in query.items() if k.startswith("tt_")}
    opts.update({k[5:].lower().replace("-", "_"): v for k, v in h.headers.items() if k.lower().startswith("x-tt-")})
    key = h.headers.get("Sec-WebSocket-Key") or ""
    try:
        key_ok = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:  # binascii.Error included
        key_ok = False
    conn_tokens = [t.strip().lower() for t in (h.headers.get("Connection") or "").split(",")]
    if (h.headers.get("Sec-WebSocket-Version") or "").strip() != "13":
        return h.send_json(426, {"error": {"message": "unsupported WebSocket version"}},
                           extra_headers=[("Sec-WebSocket-Version", "13")])
    if "upgrade" not in conn_tokens or not key_ok or h.command != "GET":
        return h.send_json(400, {"error": {"message": "bad WebSocket upgrade"}})
    deflate = None
    offers = ",".join(h.headers.get_all("Sec-WebSocket-Extensions") or [])
    if opts.get("deflate") != "0" and offers:
        deflate = negotiate_deflate(offers)
    h.send_response(101, "Switching Protocols")
    h.send_header("Upgrade", "websocket")
    h.send_header("Connection", "Upgrade")
    h.send_header("Sec-WebSocket-Accept", accept_key(key))
    if deflate:
        h.send_header("Sec-WebSocket-Extensions", deflate[0])
    h.send_header("x-request-id", "req_" + uuid.uuid4().hex[:16])
    h.end_headers()
    h.wfile.flush()
    sock = h.connection
    ws = WebSocket(sock, h.rfile, h.wfile, deflate[1] if deflate else None, opts)
    env = Env(next_n=next_n, log=log, dated=dated, query=query, opts=opts, headers=h.headers)
    close_after = int(opts.get("close_after") or 0)
    try:
        sock.settimeout(IDLE_TIMEOUT)
        app = app_class(ws, env)
        app.start()
        while True:
            _, data = ws.recv()
            try:
                msg = json.loads(data)
            except ValueError:
                raise ProtocolError(1007, "invalid JSON") from None
            if not isinstance(msg, dict):
                raise ProtocolError(1007, "a message must be a JSON object")
            app.on_message(msg)
            if close_after and app.served >= close_after:
                return ws.close(1000, "tt_close_after")
    except Closed:
        pass
    except ProtocolError as e:
        try:
            ws.close(e.code, e.reason)
        except (OSError, ssl.SSLError):
            pass
    except (OSError, ssl.SSLError, socket.timeout):
        pass
    except Exception as e:  # a bug here: one line, and this connection ends
        sys.stderr.write(f"ws_server: {h.path}: {type(e).__name__}: {e}\n")
        try:
            ws.close(1011, "internal error")
        except (OSError, ssl.SSLError):
            pass

