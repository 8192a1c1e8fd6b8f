"""An app that logs in to PostgreSQL once, at start, with $DB_PASSWORD (one psql session: a pool
of one) and runs a query on that session for every request; a login that fails exits 1, so the
instance is never ready. Used by the SecretRotation tests and the fault loop: a database session
outlives a password change, as real connection pools do.

Environment: PORT, DB_PORT, DB_PASSWORD.
"""
import os, signal, subprocess, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
env = dict(os.environ, PGPASSWORD=os.environ["DB_PASSWORD"])
psql = subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", os.environ["DB_PORT"], "-U", "app", "-d", "app"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)
lock = threading.Lock()
def query():
    with lock:
        try:
            psql.stdin.write("SELECT 'ok-' || 1;\n")
            psql.stdin.flush()
            return psql.stdout.readline().strip()
        except OSError:
            return ""
if query() != "ok-1":
    print("login failed", flush=True)
    sys.exit(1)
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = query() == "ok-1"
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"no")
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
psql.terminate()
