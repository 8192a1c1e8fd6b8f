#!/usr/bin/env python3
"""An HTTP receiver and exporter for Capstan's alert tests (the standard library only).

    alert_receiver.py PORT

POST /hook/NAME          records the JSON body (answers 500 while /fail says so)
GET  /received?path=P    the bodies POSTed to P, oldest first, as a JSON list
POST /fail?path=P&count=N  the next N POSTs to P answer 500
POST /slow?path=P&seconds=S  POSTs to P are answered S seconds after they were recorded
GET  /metrics            `test_value{series="S"} V` for every series set
POST /set?series=S&value=V  sets a series (value "none" removes it)
POST /reset              forgets everything received

Serves on 127.0.0.1 until its standard input closes (the test process ended)."""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

lock = threading.Lock()
received = {}
failures = {}
delays = {}
values = {}


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body, content_type="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/received":
            with lock:
                self._send(200, json.dumps(received.get(query.get("path", [""])[0], [])))
        elif url.path == "/metrics":
            with lock:
                lines = ["# TYPE test_value gauge"] + [f'test_value{{series="{s}"}} {v}' for s, v in sorted(values.items())]
            self._send(200, "\n".join(lines) + "\n", "text/plain; version=0.0.4")
        else:
            self._send(404, "{}")

    def do_POST(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == "/fail":
            with lock:
                failures[query["path"][0]] = int(query["count"][0])
            self._send(200, "{}")
        elif url.path == "/slow":
            with lock:
                delays[query["path"][0]] = float(query["seconds"][0])
            self._send(200, "{}")
        elif url.path == "/set":
            with lock:
                if query["value"][0] == "none":
                    values.pop(query["series"][0], None)
                else:
                    values[query["series"][0]] = float(query["value"][0])
            self._send(200, "{}")
        elif url.path == "/reset":
            with lock:
                received.clear()
                failures.clear()
                delays.clear()
            self._send(200, "{}")
        elif url.path.startswith("/hook/"):
            with lock:
                if failures.get(url.path, 0) > 0:
                    failures[url.path] -= 1
                    fail = True
                else:
                    fail = False
                    try:
                        payload = json.loads(body or b"null")
                    except ValueError:
                        payload = {"invalid": body.decode(errors="replace")}
                    received.setdefault(url.path, []).append(payload)
                delay = delays.get(url.path, 0)
            if delay and not fail:
                time.sleep(delay)
            self._send(500, '{"error": "told to fail"}') if fail else self._send(200, "{}")
        else:
            self._send(404, "{}")

    def log_message(self, fmt, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
server.shutdown()
