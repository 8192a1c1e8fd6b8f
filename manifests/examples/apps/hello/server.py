#!/usr/bin/env python3
"""A tiny HTTP app for Capstan's examples: the Python standard library only.

GET  /          a greeting naming the version and instance that answered
GET  /healthz   200 "ok" (Capstan's health check); 503 while the file $UNHEALTHY_FILE exists
GET  /version   the version, as plain text
GET  /metrics   hello_requests_total{version,code} of / and /version (Prometheus text format)
POST /alerts    accepts Alertmanager-style webhook payloads and logs them (the AlertRule example)

/ and /version answer 500 while the file $FAIL_FILE exists (a version that returns errors).

It listens on 127.0.0.1:$PORT (Capstan allocates PORT per instance), or on $BIND_ADDR if set,
and stops cleanly on SIGTERM.
"""
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("CAPSTAN_VERSION", os.environ.get("APP_VERSION", "dev"))
INSTANCE = os.environ.get("CAPSTAN_INSTANCE", "local")
GREETING = os.environ.get("GREETING", "Hello from Capstan")
UNHEALTHY_FILE = os.environ.get("UNHEALTHY_FILE", "")
FAIL_FILE = os.environ.get("FAIL_FILE", "")
COUNTS = {}  # status code -> requests answered
COUNTS_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server_version = "hello/" + VERSION

    def _send(self, status, body, content_type="text/plain; charset=utf-8"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/healthz":
            if UNHEALTHY_FILE and os.path.exists(UNHEALTHY_FILE):
                self._send(503, f"unhealthy: {UNHEALTHY_FILE} exists\n")
            else:
                self._send(200, "ok\n")
        elif self.path == "/metrics":
            with COUNTS_LOCK:
                counts = sorted(COUNTS.items())
            lines = ["# HELP hello_requests_total Requests answered, by status code.", "# TYPE hello_requests_total counter"]
            version = VERSION.replace("\\", "\\\\").replace('"', '\\"')
            lines += [f'hello_requests_total{{version="{version}",code="{code}"}} {count}' for code, count in counts]
            self._send(200, "\n".join(lines) + "\n", "text/plain; version=0.0.4")
        elif self.path in ("/", "/version"):
            status = 500 if FAIL_FILE and os.path.exists(FAIL_FILE) else 200
            with COUNTS_LOCK:
                COUNTS[status] = COUNTS.get(status, 0) + 1
            if status == 500:
                self._send(500, f"failing: {FAIL_FILE} exists\n")
            elif self.path == "/version":
                self._send(200, VERSION + "\n")
            else:
                self._send(200, f"{GREETING} (version {VERSION}, instance {INSTANCE})\n")
        else:
            self._send(404, "not found\n")

    def do_POST(self):
        if self.path != "/alerts":
            self._send(404, "not found\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > 1 << 20:
            self._send(413, "payload too large\n")
            return
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._send(400, "invalid JSON\n")
            return
        for alert in payload.get("alerts", []):
            print(f"alert {alert.get('status')}: {alert.get('labels', {}).get('alertname')}", flush=True)
        self._send(200, "received\n")

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))
        sys.stdout.flush()


def main():
    port = int(os.environ.get("PORT", "8080"))
    address = os.environ.get("BIND_ADDR", "127.0.0.1")
    server = ThreadingHTTPServer((address, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown() if False else sys.exit(0))
    print(f"hello {VERSION} listening on {address}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
