#!/usr/bin/env python3
"""Stand-in for a Kubernetes API server, for tests: no cluster runs here.

Serves, over HTTPS with bearer-token auth, responses in the API server's format
from agent/tests/fixtures/kubernetes/: the node's pod list, a watch stream
(events, then the stream stays open like a real watch), ReplicaSets and Jobs,
and the kubelet's /pods.
Logs each request path to --log (one per line).

Usage: kube_api.py --cert C --key K --token T --fixtures DIR --port-file F --log L
"""
import argparse
import json
import os
import socketserver
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

A = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def send(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with open(A.log, "a") as f:
            f.write(self.path + "\n")
        if self.headers.get("Authorization") != "Bearer " + A.token:
            return self.send(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
        path, _, query = self.path.partition("?")
        fx = lambda n: json.load(open(os.path.join(A.fixtures, n)))
        try:
            if path == "/api/v1/pods" and "watch=1" in query:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for line in open(os.path.join(A.fixtures, "watch_events.jsonl")):
                    if '"ERROR"' in line or '"DELETED"' in line or '"MODIFIED"' in line:
                        continue
                    data = line.encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                time.sleep(600)
                return
            if path == "/pods":  # the kubelet's endpoint
                return self.send(200, fx("pods_list.json"))
            if path == "/api/v1/pods" and "spec.nodeName%3Dnode-1" in query:
                return self.send(200, fx("pods_list.json"))
            routes = {
                "/apis/apps/v1/namespaces/shop/replicasets/checkout-7d9f8b6c5d": "replicaset_checkout.json",
                "/apis/apps/v1/namespaces/shop/replicasets/search-5f6b7c8d9": "replicaset_search.json",
                "/apis/batch/v1/namespaces/batch/jobs/nightly-report-28977120": "job_report.json",
            }
            if path in routes:
                return self.send(200, fx(routes[path]))
            return self.send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True


def main():
    global A
    ap = argparse.ArgumentParser()
    for k in ["cert", "key", "token", "fixtures", "port-file", "log"]:
        ap.add_argument("--" + k, required=True)
    A = ap.parse_args()
    srv = Server(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(A.cert, A.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with open(A.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.replace(A.port_file + ".tmp", A.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
