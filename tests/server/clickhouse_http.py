#!/usr/bin/env python3
"""The real ClickHouse engine (chdb-core, embedded) behind ClickHouse's HTTP
interface, for tests on machines without a ClickHouse server.

Test harness only, never part of the product: a stand-in for the server
*process*. The engine, SQL, table engines, materialized views, input/output
formats and insert deduplication are ClickHouse's own (chdb is ClickHouse built
as a library); this file only speaks the part of the HTTP protocol that the
`clickhouse` crate (0.15) and the tests' own clients use:

- the SQL in the `query` URL parameter, or in the body when there is no
  `query`; `database` and `default_format` URL parameters; `/ping`;
- `INSERT ... FORMAT <fmt>` with the rows in the (possibly chunked) body. The
  rows go to the engine as a real INSERT (`FROM INFILE`), so deduplication,
  defaults and materialized views behave as on a server;
- `decompress=1`: the body is ClickHouse's native compressed framing (16-byte
  CityHash128 v1.0.2 checksum, method byte 0x82 LZ4 / 0x02 none / 0x90 ZSTD
  when the `zstandard` module is installed, u32 compressed and uncompressed
  sizes, data). A bad checksum answers `Code: 40 ... Checksum doesn't match`,
  truncated framing `Code: 33 ... Cannot read all data`, an unknown method
  `Code: 432 ... Unknown codec family code`;
- `compress=1`: the response body in that same framing (LZ4);
- `Accept-Encoding: lz4` (or `zstd` when the `zstandard` module is installed):
  the response body as an LZ4 frame with `Content-Encoding: lz4`, as
  ClickHouse 25.10+ answers by default (`enable_http_compression=0` turns it
  off); error bodies are sent plain;
- other URL parameters are ClickHouse settings: INSERTs get them as
  `SETTINGS k = 'v'` (e.g. insert_deduplication_token,
  max_partitions_per_insert_block, insert_deduplicate,
  throw_on_max_partitions_per_insert_block,
  deduplicate_blocks_in_dependent_materialized_views), so an unknown one fails
  the INSERT as on a server; other statements ignore them;
- errors as ClickHouse sends them: HTTP 500, `X-ClickHouse-Exception-Code`, and
  the `Code: N. DB::Exception: ...` text as the body.

Not spoken: sessions, authentication, query parameters (`param_*`), progress
headers, multipart bodies. One engine session serves every request, under one
lock (chdb sessions are not thread safe).

`--fail-file F`: while F exists every request gets 503 (tests make "ClickHouse
is away" real without killing the engine's data).

`--slow-file F`: while F exists and holds a number of seconds S, each INSERT
with its rows in the body (as the crate sends them) is executed (rows
committed) and then answered only S seconds later; the lock is not held
meanwhile, so other queries proceed (tests make an insert time out after
ClickHouse has committed it).

Usage: clickhouse_http.py --data DIR --port-file F [--port N] [--fail-file F]
                          [--slow-file F]
"""
import argparse
import os
import re
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn


def _name_process():
    """Named before the engine's library loads, so that the tests' agents
    leave its files alone (`--exclude-process tt-clickhouse`): inspecting
    chdb's ~500 MB library for TLS code took each agent seconds."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, b"tt-clickhouse", 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


_name_process()

import lz4.block  # noqa: E402
import lz4.frame  # noqa: E402
from chdb import session  # noqa: E402
from clickhouse_cityhash.cityhash import CityHash128  # noqa: E402

try:  # optional: ZSTD only when the module happens to be installed
    import zstandard
except ImportError:  # pragma: no cover - depends on the machine
    zstandard = None

LOCK = threading.Lock()
SESSION = None
FAIL_FILE = None
SLOW_FILE = None

# `INSERT INTO t (cols) [SETTINGS ...] FORMAT fmt`, the data being the body.
INSERT_RE = re.compile(r"^\s*(INSERT\s+INTO\s+.*?)\s*\bFORMAT\s+(\w+)\s*;?\s*$", re.I | re.S)
# The same statement at the head of a body that also carries the data.
BODY_INSERT_RE = re.compile(rb"^\s*(INSERT\s+INTO\s.*?\bFORMAT\s+\w+)[ \t]*(?:\r?\n)?", re.I | re.S)
SELECT_RE = re.compile(r"\bSELECT\b", re.I)
SETTINGS_RE = re.compile(r"^(.*?)\s+SETTINGS\s+(.*)$", re.I | re.S)
FORMAT_RE = re.compile(r"\sFORMAT\s+(\w+)\s*;?\s*$", re.I)
SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# URL parameters of the HTTP protocol itself, never settings.
PROTOCOL_PARAMS = {
    "query", "database", "default_format", "compress", "decompress", "user", "password",
    "quota_key", "query_id", "session_id", "session_timeout", "session_check",
    "close_session", "stacktrace", "role", "buffer_size", "wait_end_of_query",
    "client_protocol_version", "enable_http_compression", "http_zlib_compression_level",
}

# Native compressed framing (ClickHouse's CompressedReadBuffer).
CHECKSUM_SIZE = 16
HEADER_SIZE = 9
METHOD_NONE = 0x02
METHOD_LZ4 = 0x82
METHOD_ZSTD = 0x90
MAX_COMPRESSED_SIZE = 0x40000000  # DBMS_MAX_COMPRESSED_SIZE
RESPONSE_BLOCK = 1 << 20  # DBMS_DEFAULT_BUFFER_SIZE
U64 = (1 << 64) - 1


class ChError(Exception):
    """An error the server itself raises, in ClickHouse's words."""

    def __init__(self, code, message):
        super().__init__(f"Code: {code}. DB::Exception: {message}")
        self.code = code


def error_text(e):
    """ClickHouse's exception text from an engine error (chdb may prefix it)."""
    msg = str(e).strip()
    i = msg.find("Code: ")
    return (msg[i:] if i > 0 else msg) + "\n"


def error_code(msg):
    m = re.search(r"Code: (\d+)", msg)
    return m.group(1) if m else "1001"


def checksum(block):
    """CityHash128 v1.0.2 of a block as ClickHouse stores it: its two u64 halves in
    order (`first`, `second`), each little-endian. CityHash128 here returns
    `first << 64 | second` (cityhash-rs does the same, which is why the crate
    rotates it by 64 bits before writing it as one little-endian u128)."""
    h = CityHash128(block)
    return h >> 64, h & U64


def decompress_native(data):
    """The body of a `decompress=1` request, unframed; ChError as ClickHouse would."""
    out = []
    mv = memoryview(data)
    pos, n = 0, len(data)
    while pos < n:
        meta = CHECKSUM_SIZE + HEADER_SIZE
        if n - pos < meta:
            raise ChError(33, f"Cannot read all data. Bytes read: {n - pos}. Bytes expected: {meta}.")
        method = data[pos + CHECKSUM_SIZE]
        csize, usize = struct.unpack_from("<II", data, pos + CHECKSUM_SIZE + 1)
        if method not in (METHOD_NONE, METHOD_LZ4) and not (method == METHOD_ZSTD and zstandard):
            raise ChError(432, f"Unknown codec family code: {method}")
        if csize > MAX_COMPRESSED_SIZE:
            raise ChError(39, f"Too large size_compressed_without_checksum: {csize}. Most likely corrupted data.")
        if csize < HEADER_SIZE:
            raise ChError(246, f"Can't decompress data: the compressed data size ({csize}, this should "
                               f"include header size) is less than the header size ({HEADER_SIZE})")
        end = pos + CHECKSUM_SIZE + csize
        if end > n:
            raise ChError(33, f"Cannot read all data. Bytes read: {n - pos - meta}. "
                              f"Bytes expected: {csize - HEADER_SIZE}.")
        block = mv[pos + CHECKSUM_SIZE:end]
        expected = struct.unpack_from("<QQ", data, pos)
        actual = checksum(block)
        if expected != actual:
            raise ChError(40, "Checksum doesn't match: corrupted data. Reference: %016x%016x. "
                              "Actual: %016x%016x. Size of compressed block: %d" % (*expected, *actual, csize))
        payload = block[HEADER_SIZE:]
        if method == METHOD_NONE:
            if len(payload) != usize:
                raise ChError(271, f"Wrong data for compression codec NONE: source_size ({len(payload)}) "
                                   f"!= uncompressed_size ({usize})")
            out.append(payload)
        elif method == METHOD_LZ4:
            try:
                raw = lz4.block.decompress(payload, uncompressed_size=usize)
            except lz4.block.LZ4BlockError:
                raw = None
            if raw is None or len(raw) != usize:
                raise ChError(271, "Cannot decompress LZ4-encoded data")
            out.append(raw)
        else:
            try:
                raw = zstandard.ZstdDecompressor().decompress(bytes(payload), max_output_size=usize)
            except zstandard.ZstdError as e:
                raise ChError(271, f"Cannot decompress ZSTD-encoded data: {e}") from None
            if len(raw) != usize:
                raise ChError(271, "Cannot decompress ZSTD-encoded data")
            out.append(raw)
        pos = end
    return b"".join(out)


def compress_native(data):
    """`data` in the native framing (LZ4 blocks), as for a `compress=1` request."""
    out = []
    for i in range(0, len(data), RESPONSE_BLOCK):
        chunk = data[i:i + RESPONSE_BLOCK]
        comp = lz4.block.compress(chunk, store_size=False)
        block = struct.pack("<BII", METHOD_LZ4, HEADER_SIZE + len(comp), len(chunk)) + comp
        out += [struct.pack("<QQ", *checksum(block)), block]
    return b"".join(out)


def quote(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def insert_settings(params, given):
    """URL parameters that are settings, as `k = 'v'` (those `given` in the SQL win)."""
    out = []
    for k, v in params.items():
        if k in PROTOCOL_PARAMS or k.startswith("param_") or k.lower() in given:
            continue
        if not SETTING_NAME_RE.match(k):
            raise ChError(115, f"Unknown setting '{k}'")
        out.append(f"{k} = {quote(v)}")
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def read_body(self):
        """The request body, de-chunked; None when the client went away mid-body."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                line = self.rfile.readline()
                if not line:
                    return None
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                chunk = self.rfile.read(size)
                if len(chunk) != size:
                    return None
                out += chunk
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        return body if len(body) == n else None

    def reply(self, status, body, headers=()):
        try:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its timeout)
            self.close_connection = True

    def fail(self, e):
        msg = error_text(e)
        self.reply(500, msg.encode(), [("X-ClickHouse-Exception-Code", error_code(msg))])

    def encoded(self, params, body):
        """The response body as the client accepts it, and its headers."""
        if params.get("compress") == "1":
            body = compress_native(body)
        if params.get("enable_http_compression") == "0":
            return body, []
        for token in self.headers.get("Accept-Encoding", "").split(","):
            name, _, q = token.strip().lower().partition(";")
            if q.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
                continue
            if name == "lz4":
                # As ClickHouse's Lz4DeflatingWriteBuffer: 256 KiB linked blocks, no checksums.
                return lz4.frame.compress(body, block_size=lz4.frame.BLOCKSIZE_MAX256KB, block_linked=True,
                                          content_checksum=False, block_checksum=False,
                                          store_size=False), [("Content-Encoding", "lz4")]
            if name == "zstd" and zstandard:
                return zstandard.ZstdCompressor().compress(body), [("Content-Encoding", "zstd")]
        return body, []

    def do_GET(self):
        self.handle_query()

    def do_POST(self):
        self.handle_query()

    def handle_query(self):
        url = urllib.parse.urlparse(self.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        body = self.read_body()
        if body is None:
            self.close_connection = True
            return
        if url.path in ("/ping", "/") and not params.get("query") and not body:
            return self.reply(200, b"Ok.\n")
        if FAIL_FILE and os.path.exists(FAIL_FILE):
            return self.reply(503, b"Code: 210. DB::NetException: test: ClickHouse unavailable\n",
                              [("X-ClickHouse-Exception-Code", "210")])
        try:
            if params.get("decompress") == "1" and body:
                body = decompress_native(body)
            out, inserted = self.execute(params, body)
        except Exception as e:  # chdb raises its own error types with the server's text
            return self.fail(e)
        if inserted:
            slow = slow_seconds()
            if slow > 0:
                time.sleep(slow)  # rows committed, lock released: only the answer is late
        out, headers = self.encoded(params, out)
        self.reply(200, out, headers)

    def execute(self, params, body):
        """Runs the request's statement: (result bytes, whether it was an INSERT with data)."""
        sql = params.get("query")
        data = body
        if sql is None:
            m = BODY_INSERT_RE.match(body)
            if m:
                sql, data = m.group(1).decode(), body[m.end():]
            else:
                sql, data = body.decode(), b""
        with LOCK:
            SESSION.query("USE " + params.get("database", "default"))
            m = INSERT_RE.match(sql)
            if m and not SELECT_RE.search(m.group(1)):  # no data: no rows, as on a server
                return (self.insert(m.group(1), m.group(2), data, params) if data else b""), True
            fmt = params.get("default_format", "TabSeparated")
            f = FORMAT_RE.search(sql)
            if f:
                fmt, sql = f.group(1), sql[: f.start()]
            r = SESSION.query(sql, fmt)
            return (r.bytes() if hasattr(r, "bytes") else bytes(r)), False

    def insert(self, head, fmt, data, params):
        """A real INSERT of `data` (format `fmt`) with the URL's settings; under LOCK."""
        given, m = "", SETTINGS_RE.match(head)
        if m:
            head, given = m.group(1), m.group(2)
        names = {s.split("=")[0].strip().lower() for s in given.split(",") if "=" in s}
        settings = ", ".join(x for x in [given] + insert_settings(params, names) if x)
        fd, path = tempfile.mkstemp(suffix=".bin", prefix="chhttp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            SESSION.query(f"{head} FROM INFILE {quote(path)}"
                          + (f" SETTINGS {settings}" if settings else "") + f" FORMAT {fmt}")
        finally:
            os.unlink(path)
        return b""


def slow_seconds():
    if not SLOW_FILE:
        return 0.0
    try:
        with open(SLOW_FILE) as f:
            return max(0.0, float(f.read().strip() or 0))
    except (OSError, ValueError):
        return 0.0


class Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    global SESSION, FAIL_FILE, SLOW_FILE
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--fail-file")
    ap.add_argument("--slow-file")
    a = ap.parse_args()
    SESSION = session.Session(a.data)
    FAIL_FILE = a.fail_file
    SLOW_FILE = a.slow_file
    srv = Server(("127.0.0.1", a.port), Handler)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.replace(tmp, a.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
