#!/usr/bin/env python3
"""WebSocket LLM calls against the test server (tests/server/llm_server.py), through
the real SDKs or the `websockets` package directly. Prints one JSON line per completed
call (what the client saw: ids, usage) and exits 0 only if every call completed.

Usage: ws_client.py --url-base https://127.0.0.1:PORT --api responses|realtime|gemini_live
         [--sdk | --raw] [--deflate on|off] [--calls N] [--connections C] [--fragment N]
         [--audio] [--warmup] [--model M] [--expect-error] [--pause S]
         [--server-fragment N] [--server-compress 0] [--server-query 'tt_ping=1&...']
         [--wait-file F] [--timeout S]

--sdk: openai `client.responses.connect()` / `client.realtime.connect()`, google-genai
`client.aio.live.connect()`; --raw (the default): `websockets.asyncio.client.connect`.
--deflate: raw default on; with --sdk, passed to openai (whose default is off);
google-genai always offers permessage-deflate. --fragment: raw only (each client message
sent as frames of at most N bytes). --server-*: the server's tt_* controls, sent as query
parameters (as X-TT-* headers for google-genai, whose URL takes no query).
The TLS CA comes from SSL_CERT_FILE. google-genai always connects with wss://.
"""
import argparse
import asyncio
import base64
import json
import os
import ssl
import sys
import time
import urllib.parse

GEMINI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
MODELS = {"responses": "gpt-4.1", "realtime": "gpt-realtime", "gemini_live": "gemini-live-2.5-flash-native-audio"}


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Run:
    def __init__(self, a):
        self.a = a
        self.model = a.model or MODELS[a.api]
        self.tt = dict(urllib.parse.parse_qsl(a.server_query or ""))
        if a.server_fragment:
            self.tt["tt_fragment"] = str(a.server_fragment)
        if a.server_compress is not None:
            self.tt["tt_compress"] = str(a.server_compress)
        base = a.url_base.rstrip("/")
        self.ws_base = {"https": "wss", "http": "ws"}[base.split("://")[0]] + "://" + base.split("://", 1)[1]
        self.http_base = base
        self.ssl = None
        if self.ws_base.startswith("wss"):
            self.ssl = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
        self.ok = self.expected = 0

    def done(self, conn, call, **seen):
        self.ok += 1
        emit({"api": self.a.api, "client": "sdk" if self.a.sdk else "raw", "conn": conn, "call": call,
              "model": self.model, **seen})

    # -- raw websockets ----------------------------------------------------
    async def raw_connect(self, path, headers, query=()):
        from websockets.asyncio.client import connect
        q = urllib.parse.urlencode([*query, *self.tt.items()])
        return await connect(self.ws_base + path + ("?" + q if q else ""), additional_headers=headers,
                             ssl=self.ssl, compression="deflate" if self.a.deflate != "off" else None,
                             max_size=None, open_timeout=self.a.timeout)

    async def raw_send(self, ws, obj):
        text = json.dumps(obj)
        n = self.a.fragment
        if n and len(text) > n:
            await ws.send([text[i:i + n] for i in range(0, len(text), n)])
        else:
            await ws.send(text)

    async def raw_events(self, ws):
        while True:
            msg = await ws.recv()
            yield json.loads(msg)

    # -- Responses ---------------------------------------------------------
    def responses_body(self, i, warmup):
        body = {"type": "response.create", "model": self.model, "instructions": "You are terse.",
                "input": [{"type": "message", "role": "user",
                           "content": [{"type": "input_text", "text": f"Say hello ({i})."}]}],
                "tools": [], "tool_choice": "auto", "parallel_tool_calls": False, "store": False,
                "prompt_cache_key": "ws-client", "include": []}
        if warmup:
            body["generate"] = False
        return body

    async def responses(self, conn):
        sdk_conn = ws = None
        if self.a.sdk:
            import openai
            client = openai.AsyncOpenAI(base_url=self.http_base + "/v1", api_key="sk-test", max_retries=0)
            opts = {} if self.a.deflate is None else {"compression": "deflate" if self.a.deflate == "on" else None}
            sdk_conn = await client.responses.connect(extra_query=self.tt, websocket_connection_options=opts).enter()

            async def send(body):
                await sdk_conn.send(body)

            async def events():
                while True:
                    yield (await sdk_conn.recv()).to_dict()
        else:
            ws = await self.raw_connect("/v1/responses", {"Authorization": "Bearer sk-test",
                                                          "OpenAI-Beta": "responses_websockets=2026-02-06"})

            async def send(body):
                await self.raw_send(ws, body)

            def events():
                return self.raw_events(ws)
        stream = events()
        try:
            for i in range(self.a.calls):
                if i and self.a.pause:
                    await asyncio.sleep(self.a.pause)
                for warmup in ([True, False] if self.a.warmup else [False]):
                    await send(self.responses_body(i, warmup))
                    async for ev in stream:
                        if ev["type"] == "error":
                            if self.a.expect_error:
                                self.done(conn, i, error=ev.get("error"), status=ev.get("status"))
                            else:
                                emit({"conn": conn, "call": i, "unexpected": ev})
                            break
                        if ev["type"] == "response.completed":
                            r = ev["response"]
                            if not self.a.expect_error:
                                self.done(conn, i, response_id=r["id"], usage=r["usage"], warmup=warmup,
                                          text="".join(c.get("text", "") for o in r.get("output") or []
                                                       for c in o.get("content") or []))
                            break
        finally:
            if sdk_conn:
                await sdk_conn.close()
            if ws:
                await ws.close()

    # -- Realtime ----------------------------------------------------------
    async def realtime(self, conn):
        mods = ["audio"] if self.a.audio else ["text"]
        user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hi."}]}
        audio_in = base64.b64encode(bytes(9600)).decode()
        if self.a.sdk:
            import openai
            client = openai.AsyncOpenAI(base_url=self.http_base + "/v1", api_key="sk-test", max_retries=0)
            opts = {} if self.a.deflate is None else {"compression": "deflate" if self.a.deflate == "on" else None}
            async with client.realtime.connect(model=self.model, extra_query=self.tt,
                                               websocket_connection_options=opts) as c:
                async def next_of(kind):
                    while True:
                        ev = await c.recv()
                        if ev.type == "error":
                            raise RuntimeError(f"error event: {ev.to_dict()}")
                        if ev.type == kind:
                            return ev
                await next_of("session.created")
                await c.session.update(session={"type": "realtime", "output_modalities": mods})
                await next_of("session.updated")
                for i in range(self.a.calls):
                    await c.conversation.item.create(item=user)
                    await c.input_audio_buffer.append(audio=audio_in)
                    await c.input_audio_buffer.commit()
                    await c.response.create()
                    audio_bytes, text = 0, ""
                    while True:
                        ev = await c.recv()
                        if ev.type == "error":
                            raise RuntimeError(f"error event: {ev.to_dict()}")
                        if ev.type == "response.output_audio.delta":
                            audio_bytes += len(base64.b64decode(ev.delta))
                        elif ev.type in ("response.output_text.delta", "response.output_audio_transcript.delta"):
                            text += ev.delta
                        elif ev.type == "response.done":
                            self.done(conn, i, response_id=ev.response.id, usage=ev.response.usage.to_dict(),
                                      audio_bytes=audio_bytes, text=text)
                            break
            return
        ws = await self.raw_connect("/v1/realtime", {"Authorization": "Bearer sk-test"}, [("model", self.model)])
        try:
            stream = self.raw_events(ws)

            async def next_of(kind):
                async for ev in stream:
                    if ev["type"] == "error":
                        raise RuntimeError(f"error event: {ev}")
                    if ev["type"] == kind:
                        return ev
            await next_of("session.created")
            await self.raw_send(ws, {"type": "session.update", "session": {"type": "realtime",
                                                                           "output_modalities": mods}})
            await next_of("session.updated")
            for i in range(self.a.calls):
                await self.raw_send(ws, {"type": "conversation.item.create", "item": user})
                await self.raw_send(ws, {"type": "input_audio_buffer.append", "audio": audio_in})
                await self.raw_send(ws, {"type": "input_audio_buffer.commit"})
                await self.raw_send(ws, {"type": "response.create"})
                audio_bytes, text = 0, ""
                async for ev in stream:
                    if ev["type"] == "error":
                        raise RuntimeError(f"error event: {ev}")
                    if ev["type"] == "response.output_audio.delta":
                        audio_bytes += len(base64.b64decode(ev["delta"]))
                    elif ev["type"] in ("response.output_text.delta", "response.output_audio_transcript.delta"):
                        text += ev["delta"]
                    elif ev["type"] == "response.done":
                        r = ev["response"]
                        self.done(conn, i, response_id=r["id"], usage=r["usage"], audio_bytes=audio_bytes,
                                  text=text)
                        break
        finally:
            await ws.close()

    # -- Gemini Live -------------------------------------------------------
    async def gemini_live(self, conn):
        mods = ["AUDIO"] if self.a.audio else ["TEXT"]
        if self.a.sdk:
            from google import genai
            from google.genai import types
            headers = {"x-tt-" + k[3:].replace("_", "-"): v for k, v in self.tt.items() if k.startswith("tt_")}
            client = genai.Client(api_key="test-key", http_options=types.HttpOptions(
                base_url=self.http_base, api_version="v1beta", headers=headers))
            config = types.LiveConnectConfig(response_modalities=mods)
            async with client.aio.live.connect(model=self.model, config=config) as session:
                for i in range(self.a.calls):
                    await session.send_client_content(
                        turns=types.Content(role="user", parts=[types.Part(text=f"Say hi ({i}).")]),
                        turn_complete=True)
                    text, audio_bytes, usage = "", 0, None
                    async for msg in session.receive():
                        sc = msg.server_content
                        if sc and sc.model_turn:
                            for p in sc.model_turn.parts or []:
                                text += p.text or ""
                                audio_bytes += len(p.inline_data.data) if p.inline_data else 0
                        if msg.usage_metadata:
                            usage = msg.usage_metadata.model_dump(mode="json", by_alias=True, exclude_none=True)
                        if sc and sc.turn_complete:
                            break
                    if usage is None:
                        raise RuntimeError("turn without usageMetadata")
                    self.done(conn, i, response_id=None, usage=usage, text=text, audio_bytes=audio_bytes)
            return
        ws = await self.raw_connect(GEMINI_PATH, {"x-goog-api-key": "test-key"})
        try:
            stream = self.raw_events(ws)
            await self.raw_send(ws, {"setup": {"model": "models/" + self.model,
                                               "generationConfig": {"responseModalities": mods}}})
            first = await stream.__anext__()
            if "setupComplete" not in first:
                raise RuntimeError(f"no setupComplete: {first}")
            for i in range(self.a.calls):
                await self.raw_send(ws, {"clientContent": {"turns": [{"role": "user", "parts": [
                    {"text": f"Say hi ({i})."}]}], "turnComplete": True}})
                text, audio_bytes = "", 0
                async for msg in stream:
                    sc = msg.get("serverContent") or {}
                    for p in (sc.get("modelTurn") or {}).get("parts") or []:
                        text += p.get("text", "")
                        audio_bytes += len(base64.b64decode(p["inlineData"]["data"])) if "inlineData" in p else 0
                    if sc.get("turnComplete"):
                        self.done(conn, i, response_id=None, usage=msg["usageMetadata"], text=text,
                                  audio_bytes=audio_bytes)
                        break
        finally:
            await ws.close()

    async def connection(self, conn):
        try:
            await asyncio.wait_for(getattr(self, self.a.api)(conn), self.a.timeout)
        except Exception as e:
            emit({"conn": conn, "failed": f"{type(e).__name__}: {e}"})

    async def main(self):
        await asyncio.gather(*(self.connection(c) for c in range(self.a.connections)))
        per_call = 2 if self.a.warmup and self.a.api == "responses" else 1
        return self.ok == self.a.connections * self.a.calls * per_call


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url-base", required=True, help="https://127.0.0.1:PORT or http://…")
    ap.add_argument("--api", required=True, choices=["responses", "realtime", "gemini_live"])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--sdk", action="store_true", help="the real SDK (openai / google-genai)")
    mode.add_argument("--raw", action="store_true", help="websockets directly (the default)")
    ap.add_argument("--deflate", choices=["on", "off"], help="offer permessage-deflate (raw default: on)")
    ap.add_argument("--calls", type=int, default=1, help="responses / turns per connection")
    ap.add_argument("--pause", type=float, default=0, help="responses: seconds between calls on a connection")
    ap.add_argument("--connections", type=int, default=1, help="connections, run concurrently")
    ap.add_argument("--fragment", type=int, default=0, help="raw: client frames of at most N bytes")
    ap.add_argument("--audio", action="store_true", help="audio output (realtime, gemini_live)")
    ap.add_argument("--warmup", action="store_true", help="responses: a generate:false warm-up before each call")
    ap.add_argument("--model", help="default: gpt-4.1 / gpt-realtime / gemini-live-2.5-flash-preview")
    ap.add_argument("--expect-error", action="store_true",
                    help="responses: every call must get an error event (use with --model ws-error)")
    ap.add_argument("--server-fragment", type=int, help="tt_fragment=N")
    ap.add_argument("--server-compress", type=int, choices=[0, 1], help="tt_compress=0|1")
    ap.add_argument("--server-query", help="more tt_* parameters, e.g. 'tt_ping=1&tt_binary=1'")
    ap.add_argument("--wait-file", help="wait until this file exists before starting")
    ap.add_argument("--timeout", type=float, default=60, help="seconds per connection")
    a = ap.parse_args()
    if a.sdk and a.fragment:
        ap.error("--fragment needs --raw")
    if a.wait_file:
        deadline = time.time() + 120
        while not os.path.exists(a.wait_file):
            if time.time() > deadline:
                sys.exit(f"{a.wait_file} did not appear")
            time.sleep(0.05)
    return 0 if asyncio.run(Run(a).main()) else 1


if __name__ == "__main__":
    sys.exit(main())
