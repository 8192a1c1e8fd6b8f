#!/usr/bin/env python3
"""Benchmarks of the local platform (issue 4), against supervisord in the same run.

1. kill -9 -> replacement ready: a Deployment of one `python3 -m http.server` instance behind
   Capstan's router, killed KILLS times; the clock stops when the router answers 200 again
   (it routes to ready instances only). The same program under supervisord (autorestart,
   startsecs=1), clock stopped when its port answers 200.
2. Rollout time: 3 instances (maxSurge 1, maxUnavailable 0) to a new version, from the spec
   write to phase Succeeded.
3. Router throughput: wrk against the router port and straight against the one instance
   behind it.
4. BlueGreen switch time: 2 instances per colour, autoPromote; a client on the port (a new
   connection per request) from the moment the last preview instance answered its first health
   check (the app notes the time) to the first answer of the new colour, BG_RUNS times.

Environment: CAPSTAN_BIN (hack/bench sets it), KILLS (default 100), WRK_SECONDS (default 10).
"""
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("CAPSTAN_BIN", ".build/debug/capstan")
KILLS = int(os.environ.get("KILLS", "100"))
WRK_SECONDS = int(os.environ.get("WRK_SECONDS", "10"))
BG_RUNS = int(os.environ.get("BG_RUNS", "20"))

# The BlueGreen app: answers its version; notes when it first answered a health check.
BG_APP = """import http.server, os, time
V, D, I = os.environ["V"], os.environ["READY_DIR"], os.environ["CAPSTAN_INSTANCE"]
first = [True]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz" and first[0]:
            first[0] = False
            with open(f"{D}/{V}-{I}", "w") as f:
                f.write(repr(time.time()))
        body = V.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def bg_spec(version, port, preview, ready):
    return f"""apiVersion: capstan.dev/v1alpha1
kind: Application
metadata: {{name: bg}}
spec:
  source: {{path: bg}}
  command: [python3, app.py]
  env: [{{name: READY_DIR, value: "{ready}"}}]
  ports: [{{name: http, containerPort: 8000}}]
  healthCheck: {{http: {{path: /healthz, port: http}}, interval: 2s, timeout: 1s}}
---
apiVersion: capstan.dev/v1alpha1
kind: Deployment
metadata: {{name: bg}}
spec:
  application: bg
  version: "{version}"
  replicas: 2
  port: {port}
  env: [{{name: V, value: "{version}"}}]
  strategy: {{type: BlueGreen, blueGreen: {{previewPort: {preview}, autoPromote: true, scaleDownDelay: 1s}}}}
"""


def bluegreen(specs, root):
    import threading
    os.makedirs(f"{specs}/bg", exist_ok=True)
    with open(f"{specs}/bg/app.py", "w") as f:
        f.write(BG_APP)
    ready = f"{root}/bg-ready"
    os.makedirs(ready, exist_ok=True)
    port, preview = free_port(), free_port()
    with open(f"{specs}/bg.yaml", "w") as f:
        f.write(bg_spec("g0", port, preview, ready))
    assert wait_until(lambda: answers_body(port) == "g0", 60, 0.05)
    samples = []
    for run in range(1, BG_RUNS + 1):
        version = f"g{run}"
        seen = {}
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                body = answers_body(port)
                if body == version and "first" not in seen:
                    seen["first"] = time.time()
        thread = threading.Thread(target=hammer)
        thread.start()
        with open(f"{specs}/bg.yaml", "w") as f:
            f.write(bg_spec(version, port, preview, ready))
        wait_until(lambda: "first" in seen, 60, 0.01)
        stop.set()
        thread.join()
        marks = [float(open(f"{ready}/{name}").read()) for name in os.listdir(ready) if name.startswith(version + "-")]
        assert len(marks) == 2 and "first" in seen, (marks, seen)
        samples.append((seen["first"] - max(marks)) * 1000)
        time.sleep(2)  # the old colour goes after scaleDownDelay
    return samples


def answers_body(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return body.decode() if head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200") else None
    except OSError:
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = s.recv(16)
            return head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_until(predicate, seconds=30, step=0.002):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def pids_in(directory):
    """Processes whose working directory is below `directory`."""
    directory = os.path.realpath(directory)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(directory):
                    with open(f"/proc/{entry}/stat") as f:
                        if ") Z " not in f.read():
                            found.append(int(entry))
            except OSError:
                pass
    return found


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summary(name, samples):
    ms = [s * 1000 for s in samples]
    return f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {percentile(ms, 99):.0f} | {max(ms):.0f} |"


def spec(version, port, replicas):
    return f"""apiVersion: capstan.dev/v1alpha1
kind: Application
metadata: {{name: files}}
spec:
  source: {{path: site}}
  command: [python3, -m, http.server, $(PORT), --bind, 127.0.0.1]
  ports: [{{name: http, containerPort: 8000}}]
  healthCheck: {{http: {{path: /, port: http}}, interval: 2s, timeout: 1s}}
---
apiVersion: capstan.dev/v1alpha1
kind: Deployment
metadata: {{name: files}}
spec:
  application: files
  version: "{version}"
  replicas: {replicas}
  port: {port}
  env: [{{name: V, value: "{version}"}}]
  strategy: {{maxSurge: 1, maxUnavailable: 0}}
"""


def status(state):
    out = subprocess.run([BIN, "get", "deployment", "files", "-o", "json", "--state-dir", state], capture_output=True, text=True)
    return json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}


def capstan_kills(root):
    specs, state = f"{root}/specs", f"{root}/state"
    os.makedirs(f"{specs}/site")
    with open(f"{specs}/site/index.html", "w") as f:
        f.write("hello\n")
    port = free_port()
    with open(f"{specs}/files.yaml", "w") as f:
        f.write(spec("1", port, 1))
    daemon = subprocess.Popen([BIN, "run", "--spec-dir", specs, "--state-dir", state, "--metrics-addr", "127.0.0.1:0"],
                              stdout=subprocess.DEVNULL, stderr=open(f"{root}/daemon.log", "w"))
    try:
        assert wait_until(lambda: answers(port)), "capstan: the router never answered"
        samples = []
        for _ in range(KILLS):
            time.sleep(1.2)  # ready for a while: an instance that crashes at once backs off
            pids = pids_in(f"{state}/artifacts")
            assert len(pids) == 1, pids
            start = time.monotonic()
            os.kill(pids[0], signal.SIGKILL)
            # The router stops routing to it once the exit is seen; it answers 200 again
            # when the replacement passed its health check.
            wait_until(lambda: pids_in(f"{state}/artifacts") != pids, 10, 0.0005)
            assert wait_until(lambda: answers(port), 30), "capstan: no replacement"
            samples.append(time.monotonic() - start)
        return samples, daemon, specs, state, port
    except BaseException:
        daemon.kill()
        raise


def supervisord_kills(root):
    port = free_port()
    site = f"{root}/sv-site"
    os.makedirs(site)
    with open(f"{site}/index.html", "w") as f:
        f.write("hello\n")
    config = f"{root}/supervisord.conf"
    with open(config, "w") as f:
        f.write(f"""[supervisord]
nodaemon=true
logfile={root}/supervisord.log
pidfile={root}/supervisord.pid
[unix_http_server]
file={root}/supervisor.sock
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[program:files]
command=python3 -m http.server {port} --bind 127.0.0.1
directory={site}
autorestart=true
startsecs=1
""")
    supervisor = subprocess.Popen(["supervisord", "-c", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: answers(port)), "supervisord: the program never answered"
        samples = []
        for _ in range(KILLS):
            time.sleep(1.2)
            pids = pids_in(site)
            assert len(pids) == 1, pids
            start = time.monotonic()
            os.kill(pids[0], signal.SIGKILL)
            wait_until(lambda: not answers(port), 5, 0.0005)
            assert wait_until(lambda: answers(port), 30), "supervisord: no restart"
            samples.append(time.monotonic() - start)
        return samples
    finally:
        supervisor.terminate()
        supervisor.wait()


def rollout(specs, state, port, runs=5):
    with open(f"{specs}/files.yaml", "w") as f:
        f.write(spec("r0", port, 3))
    assert wait_until(lambda: status(state).get("readyReplicas") == 3 and status(state).get("phase") == "Succeeded", 60, 0.05)
    samples = []
    for run in range(1, runs + 1):
        start = time.monotonic()
        with open(f"{specs}/files.yaml", "w") as f:
            f.write(spec(f"r{run}", port, 3))
        assert wait_until(lambda: status(state).get("version") == f"r{run}" and status(state).get("phase") == "Succeeded"
                          and status(state).get("readyReplicas") == 3, 60, 0.02), status(state)
        samples.append(time.monotonic() - start)
    return samples


def wrk(port):
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{WRK_SECONDS}s", f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(out)


def main():
    for tool in ("supervisord", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"bench_workload: {tool} is missing (Debian packages supervisor and wrk)")
    root = tempfile.mkdtemp(prefix="capstan-bench-workload-")
    daemon = None
    state = None
    try:
        capstan, daemon, specs, state, port = capstan_kills(root)
        supervisor = supervisord_kills(root)
        print(f"## kill -9 -> replacement ready ({KILLS} kills, python3 -m http.server)\n")
        print("| supervisor | kills | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|")
        print(summary("capstan", capstan))
        print(summary("supervisord", supervisor))
        print(f"\np99 ratio supervisord/capstan: {percentile(supervisor, 99) / percentile(capstan, 99):.1f}x\n")

        samples = rollout(specs, state, port)
        print("## rollout of 3 instances (maxSurge 1, maxUnavailable 0), spec write -> Succeeded\n")
        print("| runs | median s | max s |\n|---|---|---|")
        print(f"| {len(samples)} | {statistics.median(samples):.2f} | {max(samples):.2f} |\n")

        # Overhead: one instance, through the router and straight to it.
        with open(f"{specs}/files.yaml", "w") as f:
            f.write(spec(f"r{len(samples)}", port, 1))
        assert wait_until(lambda: status(state).get("replicas") == 1 and status(state).get("readyReplicas") == 1, 60, 0.05)
        instance = None
        for pid in pids_in(f"{state}/artifacts"):
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            instance = int(env[b"PORT"])
            break
        rows = []
        for _ in range(3):
            rows.append((wrk(port), wrk(instance)))
        routed = statistics.median(r for r, _ in rows)
        direct = statistics.median(d for _, d in rows)
        print(f"## router throughput (wrk -t2 -c32 -d{WRK_SECONDS}s, median of 3; the same single instance)\n")
        print("| path | requests/s |\n|---|---|")
        print(f"| through the router | {routed:.0f} |\n| straight to one instance | {direct:.0f} |")
        print(f"\nrouter/direct: {routed / direct:.2f}")

        switch = bluegreen(specs, root)
        print(f"\n## BlueGreen switch: last preview instance ready -> first answer of the new colour on the port ({len(switch)} switches)\n")
        print("| runs | p50 ms | p99 ms | max ms |\n|---|---|---|---|")
        print(f"| {len(switch)} | {percentile(switch, 50):.0f} | {percentile(switch, 99):.0f} | {max(switch):.0f} |")
    finally:
        if daemon:
            daemon.terminate()
            daemon.wait()
        if state:
            subprocess.run([BIN, "down", "--state-dir", state], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
