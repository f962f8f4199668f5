#!/usr/bin/env python3
"""A local OTLP/HTTP receiver for the end-to-end tests (tests/tests/e2e_otlp.rs).

It decodes what it receives itself, with the message types of the official
`opentelemetry-proto` package (binary protobuf, gzip or not), and writes one
JSON line per span and per metric data point, before answering: once the
sender has its answer, the file has the data. Ids are hex; attribute values
keep their protobuf type (int, float, bool, string).

    otlp_receiver.py --port-file F --out OUT.jsonl [--port N] [--lose-answers N]

`--lose-answers N`: the first N requests of each signal are stored, then the
connection is closed unanswered (an answer lost on the way): the sender must
resend, and what it resends must be the same spans and points.
"""
import argparse
import gzip
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest, ExportMetricsServiceResponse)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

LOCK = threading.Lock()
# Requests of each signal whose answer is still to be lost.
LOSE = {}


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value", "bytes_value"):
        return str(getattr(v, kind))
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def spans(req):
    for rs in req.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "signal": "span",
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "status_code": s.status.code,
                    "status_message": s.status.message,
                    "attributes": attributes(s.attributes),
                    "resource": resource,
                    "scope": ss.scope.name,
                }


def points(req):
    for rm in req.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.WhichOneof("data") != "histogram":
                    raise ValueError(f"{m.name}: not a histogram")
                for p in m.histogram.data_points:
                    yield {
                        "signal": "point",
                        "name": m.name,
                        "unit": m.unit,
                        "temporality": m.histogram.aggregation_temporality,
                        "start": p.start_time_unix_nano,
                        "time": p.time_unix_nano,
                        "count": p.count,
                        "sum": p.sum,
                        "bucket_counts": list(p.bucket_counts),
                        "bounds": list(p.explicit_bounds),
                        "attributes": attributes(p.attributes),
                        "resource": resource,
                    }


ROUTES = {
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse, spans),
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse, points),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        route = ROUTES.get(self.path)
        if route is None:
            return self.answer(404, b"no such signal")
        if self.headers.get("content-type") != "application/x-protobuf":
            return self.answer(415, b"binary protobuf only")
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request_type, response_type, flatten = route
        try:
            req = request_type.FromString(body)
            lines = [json.dumps(x) for x in flatten(req)]
        except Exception as e:  # a malformed request is the sender's bug: 400 and say why
            return self.answer(400, str(e).encode())
        with LOCK, open(self.server.out, "a") as f:
            f.write("".join(line + "\n" for line in lines))
            lose = LOSE.get(self.path, 0) > 0
            if lose:
                LOSE[self.path] -= 1
        if lose:
            self.close_connection = True
            return
        self.answer(200, response_type().SerializeToString())

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lose-answers", type=int, default=0)
    a = ap.parse_args()
    LOSE.update({path: a.lose_answers for path in ROUTES})
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.out = a.out
    with open(a.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(a.port_file + ".tmp", a.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
