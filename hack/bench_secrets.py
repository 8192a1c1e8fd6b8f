#!/usr/bin/env python3
"""Benchmarks of SecretRotation on the local platform (issue 18).

1. Rotation to every dependent serving the new value: a Deployment of 3 instances
   (RollingUpdate, maxSurge 1, maxUnavailable 0) whose app answers a digest of its
   DB_PASSWORD; the clock runs from `capstan rotate` to the moment the Deployment reports the
   rotation's restart rolled out (every instance replaced) and the router answers the new
   digest. The peer in the same run: a plain rollout of the same Deployment (a new version),
   from the spec write to phase Succeeded — what the restart part costs anyway.
2. Idle cost: 1,000 SecretRotations (interval 720h) generated, then the daemon's CPU time over
   IDLE_SECONDS (default 60) while nothing is due (timers, not polling); the same daemon with
   no SecretRotation in the same run as the peer.

Environment: CAPSTAN_BIN (hack/bench sets it), RUNS (default 5), ROTATIONS (default 1000),
IDLE_SECONDS (default 60).
"""
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

BIN = os.environ.get("CAPSTAN_BIN", ".build/debug/capstan")
RUNS = int(os.environ.get("RUNS", "5"))
ROTATIONS = int(os.environ.get("ROTATIONS", "1000"))
IDLE_SECONDS = int(os.environ.get("IDLE_SECONDS", "60"))

APP = r"""
import hashlib, http.server, os, signal, threading
DIGEST = hashlib.sha256(os.environ["DB_PASSWORD"].encode()).hexdigest()[:16].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(DIGEST)))
        self.end_headers()
        self.wfile.write(DIGEST)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capstan(*args, state):
    return subprocess.run([BIN, *args, "--state-dir", state], capture_output=True, text=True)


def get(reference, state):
    out = capstan("get", reference, "-o", "json", state=state).stdout
    return json.loads(out) if out.startswith("{") else None


def wait(condition, seconds=120, interval=0.02):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit("timed out")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def deployment_spec(port, version):
    return f"""apiVersion: capstan.dev/v1alpha1
kind: Application
metadata: {{name: app}}
spec:
  source: {{path: app}}
  command: [python3, app.py]
  ports: [{{name: http, containerPort: 8080}}]
  healthCheck: {{http: {{path: /, port: http}}, interval: 1s, timeout: 1s, failureThreshold: 2}}
  env:
  - name: DB_PASSWORD
    valueFrom: {{secretKeyRef: {{name: app-credentials, key: password}}}}
---
apiVersion: capstan.dev/v1alpha1
kind: Deployment
metadata: {{name: app}}
spec:
  application: app
  version: "{version}"
  replicas: 3
  port: {port}
  strategy: {{type: RollingUpdate, maxSurge: 1, maxUnavailable: 0}}
---
apiVersion: capstan.dev/v1alpha1
kind: SecretRotation
metadata: {{name: app-credentials}}
spec:
  secretName: app-credentials
  keys: [{{name: password, generator: {{type: random, length: 24}}}}]
  restartDeployments: [app]
"""


def answer(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def rotation_bench():
    root = tempfile.mkdtemp(prefix="capstan-bench-secrets-")
    specs, state = f"{root}/specs", f"{root}/state"
    os.makedirs(f"{specs}/app")
    with open(f"{specs}/app/app.py", "w") as f:
        f.write(APP)
    port = free_port()
    with open(f"{specs}/app.yaml", "w") as f:
        f.write(deployment_spec(port, "1"))
    daemon = subprocess.Popen([BIN, "run", "--spec-dir", specs, "--state-dir", state, "--metrics-addr", "127.0.0.1:0", "--resync", "1h"],
                              stdout=subprocess.DEVNULL, stderr=open(f"{root}/daemon.log", "w"))
    rotations, rollouts = [], []
    try:
        wait(lambda: (get("deployment/app", state) or {}).get("status", {}).get("phase") == "Succeeded" and answer(port))
        for run in range(RUNS):
            # The peer: a rollout of a new version, spec write to Succeeded.
            start = time.monotonic()
            with open(f"{specs}/app.yaml.tmp", "w") as f:
                f.write(deployment_spec(port, str(run + 2)))
            os.rename(f"{specs}/app.yaml.tmp", f"{specs}/app.yaml")
            wait(lambda: (get("deployment/app", state) or {}).get("status", {}).get("version") == str(run + 2)
                 and get("deployment/app", state)["status"].get("phase") == "Succeeded")
            rollouts.append(time.monotonic() - start)
            # A rotation: rotate to every instance serving the new value.
            before = get("secretrotation/app-credentials", state)["status"]["currentVersion"]
            start = time.monotonic()
            capstan("rotate", "secretrotation/app-credentials", "--wait", "0", state=state)

            def done():
                rotation, deployment = get("secretrotation/app-credentials", state), get("deployment/app", state)
                if not rotation or rotation["status"].get("currentVersion") != before + 1:
                    return False
                token = rotation["status"].get("restartToken")
                status = deployment["status"]
                return status.get("secretRestarts", {}).get("app-credentials") == token and status.get("phase") == "Succeeded"
            wait(done)
            elapsed = time.monotonic() - start
            password = capstan("secret", "get", "app-credentials", "--key", "password", "--reveal", state=state).stdout
            digest = hashlib.sha256(password.encode()).hexdigest()[:16]
            answers = {answer(port) for _ in range(30)}
            if answers != {digest}:
                raise SystemExit(f"the router served {answers}, not only the new value's digest {digest}")
            rotations.append(elapsed)
    finally:
        daemon.kill()
        daemon.wait()
        capstan("down", "--grace", "2s", state=state)
        shutil.rmtree(root, ignore_errors=True)
    r, p = statistics.median(rotations), statistics.median(rollouts)
    print(f"rotation -> 3 instances serving the new value: median {r:.2f} s (runs {', '.join(f'{x:.2f}' for x in rotations)}); "
          f"plain rollout of 3 instances: median {p:.2f} s; ratio {r / p:.2f}")


def idle_bench(count):
    root = tempfile.mkdtemp(prefix="capstan-bench-idle-")
    specs, state = f"{root}/specs", f"{root}/state"
    os.makedirs(specs)
    with open(f"{specs}/rotations.yaml", "w") as f:
        for i in range(count):
            f.write(f"""---
apiVersion: capstan.dev/v1alpha1
kind: SecretRotation
metadata: {{name: secret-{i}}}
spec:
  secretName: secret-{i}
  keys: [{{name: password, generator: {{type: random, length: 32}}}}, {{name: token, generator: {{type: token, bytes: 32}}}}]
  interval: 720h
""")
    if count == 0:
        with open(f"{specs}/empty.yaml", "w") as f:
            f.write("# nothing\n")
    start = time.monotonic()
    daemon = subprocess.Popen([BIN, "run", "--spec-dir", specs, "--state-dir", state, "--metrics-addr", "127.0.0.1:0", "--allow-empty"],
                              stdout=subprocess.DEVNULL, stderr=open(f"{root}/daemon.log", "w"))
    try:
        def generated():
            # Every rotation done with its first version (Ready), not only its secret written.
            out = capstan("get", "secretrotations", state=state).stdout
            return len([line for line in out.splitlines()[1:] if line.split()[2:3] == ["True"]]) >= count
        if count:
            wait(generated, seconds=600, interval=0.5)  # listing 1,000 secrets is not free: not too often
        ready = time.monotonic() - start
        time.sleep(5)
        cpu0 = cpu_seconds(daemon.pid)
        time.sleep(IDLE_SECONDS)
        cpu = cpu_seconds(daemon.pid) - cpu0
    finally:
        daemon.kill()
        daemon.wait()
        shutil.rmtree(root, ignore_errors=True)
    return ready, cpu


def main():
    rotation_bench()
    ready, cpu = idle_bench(ROTATIONS)
    _, base = idle_bench(0)
    print(f"{ROTATIONS} SecretRotations: all generated in {ready:.1f} s; idle CPU over {IDLE_SECONDS} s: {cpu:.2f} s "
          f"({100 * cpu / IDLE_SECONDS:.2f} % of a core); the same daemon with none: {base:.2f} s")


if __name__ == "__main__":
    main()
