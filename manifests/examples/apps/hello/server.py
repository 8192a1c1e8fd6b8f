#!/usr/bin/env python3
"""A tiny HTTP app for Capstan's examples: the Python standard library only.

GET  /          a greeting naming the version and instance that answered
GET  /healthz   200 "ok" (Capstan's health check); 503 while the file $UNHEALTHY_FILE exists
GET  /version   the version, as plain text
POST /alerts    accepts Alertmanager-style webhook payloads and logs them (the AlertRule example)

It listens on 127.0.0.1:$PORT (Capstan allocates PORT per instance), or on $BIND_ADDR if set,
and stops cleanly on SIGTERM.
"""
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("CAPSTAN_VERSION", os.environ.get("APP_VERSION", "dev"))
INSTANCE = os.environ.get("CAPSTAN_INSTANCE", "local")
GREETING = os.environ.get("GREETING", "Hello from Capstan")
UNHEALTHY_FILE = os.environ.get("UNHEALTHY_FILE", "")


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
        elif self.path == "/version":
            self._send(200, VERSION + "\n")
        elif self.path == "/":
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
