#!/usr/bin/env python3
"""The real ClickHouse engine (chdb-core, embedded) behind a minimal ClickHouse
HTTP interface, for tests on machines without a ClickHouse server.

Test harness only, never part of the product: the engine, SQL, table engines,
materialized views and RowBinary are ClickHouse's own; this file only speaks the
subset of the HTTP protocol the `clickhouse` crate uses:

- the SQL in the `query` URL parameter, or in the body when there is no `query`;
- `INSERT ... FORMAT RowBinary` with the rows in the (possibly chunked) body;
- `database` and `default_format` URL parameters; `insert_deduplication_token`
  is applied to inserts; other settings are accepted and ignored;
- errors as ClickHouse sends them: HTTP 500, `X-ClickHouse-Exception-Code`, and
  the `Code: N. DB::Exception: ...` text as the body.

`--fail-file F`: while F exists every request gets 503 (tests make "ClickHouse
is away" real without killing the engine's data).

Usage: clickhouse_http.py --data DIR --port-file F [--fail-file F]
"""
import argparse
import os
import re
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn

from chdb import session

LOCK = threading.Lock()
SESSION = None
FAIL_FILE = None
INSERT_RE = re.compile(r"^\s*INSERT\s+INTO\s+([`\w.]+)\s*\(([^)]*)\)\s*FORMAT\s+(\w+)\s*$", re.I | re.S)
FORMAT_RE = re.compile(r"\sFORMAT\s+(\w+)\s*;?\s*$", re.I)


def error_code(msg):
    m = re.search(r"Code: (\d+)", msg)
    return m.group(1) if m else "1001"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.handle_query()

    def do_POST(self):
        self.handle_query()

    def handle_query(self):
        url = urllib.parse.urlparse(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        body = self.read_body()
        if url.path in ("/ping", "/") and not params.get("query") and not body:
            return self.reply(200, b"Ok.\n")
        if FAIL_FILE and os.path.exists(FAIL_FILE):
            return self.reply(503, b"Code: 210. DB::NetException: test: ClickHouse unavailable\n",
                              [("X-ClickHouse-Exception-Code", "210")])
        try:
            out = self.execute(params, body)
        except Exception as e:  # chdb raises its own error type with the server's text
            msg = str(e).strip() + "\n"
            return self.reply(500, msg.encode(), [("X-ClickHouse-Exception-Code", error_code(msg))])
        self.reply(200, out)

    def execute(self, params, body):
        sql = params.get("query")
        data = body
        if sql is None:
            sql, data = body.decode(), b""
        with LOCK:
            SESSION.query("USE " + params.get("database", "default"))
            m = INSERT_RE.match(sql)
            if m and data:
                return self.insert(m, data, params)
            fmt = params.get("default_format", "TabSeparated")
            f = FORMAT_RE.search(sql)
            if f:
                fmt, sql = f.group(1), sql[: f.start()]
            r = SESSION.query(sql, fmt)
            return r.bytes() if hasattr(r, "bytes") else bytes(r)

    def insert(self, m, data, params):
        table, cols, fmt = m.group(1).replace("`", ""), m.group(2).replace("`", ""), m.group(3)
        cols = [c.strip() for c in cols.split(",") if c.strip()]
        described = SESSION.query(f"DESCRIBE TABLE {table}", "TabSeparated").bytes().decode()
        types = {l.split("\t")[0]: l.split("\t")[1] for l in described.splitlines() if "\t" in l}
        structure = ", ".join(f"`{c}` {types[c]}" for c in cols)
        with tempfile.NamedTemporaryFile(delete=False, suffix=".bin") as f:
            f.write(data)
            path = f.name
        try:
            settings = ""
            if params.get("insert_deduplication_token"):
                token = params["insert_deduplication_token"].replace("'", "")
                settings = f" SETTINGS insert_deduplication_token = '{token}'"
            collist = ", ".join(f"`{c}`" for c in cols)
            SESSION.query(f"INSERT INTO {table} ({collist}) SELECT {collist} FROM "
                          f"file('{path}', '{fmt}', '{structure}'){settings}")
        finally:
            os.unlink(path)
        return b""


class Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    global SESSION, FAIL_FILE
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--fail-file")
    a = ap.parse_args()
    SESSION = session.Session(a.data)
    FAIL_FILE = a.fail_file
    srv = Server(("127.0.0.1", a.port), Handler)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.replace(tmp, a.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
