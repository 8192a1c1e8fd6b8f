#!/usr/bin/env python3
"""Benchmarks of Canary on the local platform (issue 21).

1. Promotion overhead: a Deployment of 2 instances with a Canary of one step (setWeight 50,
   no pause, no analysis); the clock runs from the canary track's instances all ready to the
   Deployment's phase Succeeded at the new version with the canary track gone (the stable
   track rolled to the canary's revision with the port held on the canary meanwhile). Also the
   whole run from the spec write. The peer in the same run: the same Deployment rolled out
   without a Canary (spec write to Succeeded), what the rollout costs anyway.
2. Weight accuracy: CONNECTIONS (default 10,000) connections through the Deployment's port at
   each weight of a Canary paused at 5, 20 and 50 %, counting the share the canary answers.
   The peer in the same run: the same Canary with `trafficRouting: replicas` (one pool over
   both tracks, as a Service without a mesh splits by replica ratio; 4 replicas).

Environment: CAPSTAN_BIN (hack/bench sets it), RUNS (default 5), CONNECTIONS (default 10000).
"""
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time

BIN = os.environ.get("CAPSTAN_BIN", ".build/debug/capstan")
RUNS = int(os.environ.get("RUNS", "5"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "10000"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(reference, state):
    out = subprocess.run([BIN, "get", reference, "-o", "json", "--state-dir", state], capture_output=True, text=True).stdout
    return json.loads(out) if out.startswith("{") else None


def wait(condition, seconds=120, interval=0.02, what=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what or condition.__name__}")


def specs(version, port, replicas, canary_steps=None, routing="auto"):
    text = f"""
apiVersion: capstan.dev/v1alpha1
kind: Application
metadata: {{name: web}}
spec:
  source: {{path: web}}
  command: [python3, server.py]
  ports: [{{name: http, containerPort: 8080}}]
  healthCheck: {{http: {{path: /healthz, port: http}}, interval: 100ms, timeout: 100ms}}
---
apiVersion: capstan.dev/v1alpha1
kind: Deployment
metadata: {{name: web}}
spec:
  application: web
  version: "{version}"
  replicas: {replicas}
  port: {port}
"""
    if canary_steps is not None:
        text += f"""---
apiVersion: capstan.dev/v1alpha1
kind: Canary
metadata: {{name: web}}
spec:
  deployment: web
  trafficRouting: {routing}
  steps:
{canary_steps}
"""
    return text


class Daemon:
    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="capstan-bench-canary-")
        self.specs = os.path.join(self.root, "specs")
        self.state = os.path.join(self.root, "state")
        os.makedirs(os.path.join(self.specs, "web"))
        shutil.copy(os.path.join(ROOT, "manifests/examples/apps/hello/server.py"), os.path.join(self.specs, "web"))
        self.log = open(os.path.join(self.root, "daemon.log"), "w")
        self.process = None

    def write(self, text):
        path = os.path.join(self.specs, "web.yaml")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)

    def start(self):
        self.process = subprocess.Popen([BIN, "run", "--spec-dir", self.specs, "--state-dir", self.state, "--resync", "1h",
                                         "--metrics-addr", "127.0.0.1:0"], stdout=self.log, stderr=self.log)

    def stop(self):
        self.process.terminate()
        self.process.wait()
        subprocess.run([BIN, "down", "--grace", "2s", "--state-dir", self.state], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def version_of(port):
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/version")
        response = connection.getresponse()
        body = response.read().decode().strip()
        connection.close()
        return body if response.status == 200 else None
    except OSError:
        return None


def succeeded(state, version, canary_gone=True):
    def check():
        deployment = get("deployment/web", state)
        status = (deployment or {}).get("status", {})
        tracks = status.get("tracks", [])
        return (status.get("phase") == "Succeeded" and status.get("version") == version
                and (not canary_gone or not any(t.get("name") == "canary" for t in tracks)))
    return check


def canary_ready(state, replicas):
    def check():
        tracks = ((get("deployment/web", state) or {}).get("status") or {}).get("tracks", [])
        return any(t.get("name") == "canary" and t.get("readyReplicas", 0) >= replicas and t.get("version") == "2" for t in tracks)
    return check


def promotion(runs):
    rows = {"canary ready -> promoted": [], "spec write -> promoted (canary)": [], "spec write -> Succeeded (no canary)": []}
    for _ in range(runs):
        for with_canary in (True, False):
            daemon = Daemon()
            port = free_port()
            steps = "  - setWeight: 50" if with_canary else None
            daemon.write(specs("1", port, 2, steps))
            daemon.start()
            try:
                wait(succeeded(daemon.state, "1"), 60)
                if with_canary:
                    wait(lambda: ((get("canary/web", daemon.state) or {}).get("status") or {}).get("phase") == "Idle", 30)
                start = time.monotonic()
                daemon.write(specs("2", port, 2, steps))
                if with_canary:
                    wait(canary_ready(daemon.state, 1), 60, interval=0.01)
                    ready = time.monotonic()
                    wait(succeeded(daemon.state, "2"), 60, interval=0.01)
                    done = time.monotonic()
                    rows["canary ready -> promoted"].append(done - ready)
                    rows["spec write -> promoted (canary)"].append(done - start)
                else:
                    wait(succeeded(daemon.state, "2"), 60, interval=0.01)
                    rows["spec write -> Succeeded (no canary)"].append(time.monotonic() - start)
            finally:
                daemon.stop()
    return rows


def shares(routing, connections):
    """The canary's share of `connections` at weights 5, 20 and 50."""
    daemon = Daemon()
    port = free_port()
    steps = "  - setWeight: 5\n  - pause: {}\n  - setWeight: 20\n  - pause: {}\n  - setWeight: 50\n  - pause: {}"
    replicas = 4
    daemon.write(specs("1", port, replicas, steps, routing))
    daemon.start()
    results = []
    try:
        wait(succeeded(daemon.state, "1"), 60)
        daemon.write(specs("2", port, replicas, steps, routing))
        for weight in (5, 20, 50):
            def paused():
                status = (get("canary/web", daemon.state) or {}).get("status") or {}
                return status.get("phase") == "Paused" and status.get("canaryWeight") == weight and status
            wait(paused, 60)
            # Every instance of both tracks ready (the replica ratio's pool is whole).
            def whole():
                tracks = ((get("deployment/web", daemon.state) or {}).get("status") or {}).get("tracks", [])
                return tracks and all(t.get("readyReplicas", 0) >= t.get("replicas", 0) for t in tracks)
            wait(whole, 60)
            effective = (wait(paused, 10).get("canaryWeight"))
            deployment = get("deployment/web", daemon.state)
            track_weight = next((t.get("weight") for t in deployment["status"]["tracks"] if t["name"] == "canary"), None)
            answers = {"1": 0, "2": 0, None: 0}
            lock = threading.Lock()
            per_thread = connections // 4

            def client():
                counts = {"1": 0, "2": 0, None: 0}
                for _ in range(per_thread):
                    answer = version_of(port)
                    counts[answer if answer in ("1", "2") else None] += 1
                with lock:
                    for key, value in counts.items():
                        answers[key] += value
            threads = [threading.Thread(target=client) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            total = answers["1"] + answers["2"]
            share = 100.0 * answers["2"] / max(1, total)
            results.append((weight, effective, track_weight, share, total, answers[None]))
            subprocess.run([BIN, "promote", "canary/web", "--state-dir", daemon.state], capture_output=True)
    finally:
        daemon.stop()
    return results


def main():
    print(f"Canary benchmarks: {RUNS} runs, {CONNECTIONS} connections per weight")
    rows = promotion(RUNS)
    print("\n| measure | median | min | max |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values) * 1000:.0f} ms | {min(values) * 1000:.0f} ms | {max(values) * 1000:.0f} ms |")
    overhead = statistics.median(rows["spec write -> promoted (canary)"]) / statistics.median(rows["spec write -> Succeeded (no canary)"])
    print(f"\nA run through a one-step canary costs {overhead:.2f}x the plain rollout (medians).")
    print("\n| routing | weight | track weight in status | canary's share | error | connections | failed |")
    print("|---|---|---|---|---|---|---|")
    for routing in ("router", "replicas"):
        for weight, _, track_weight, share, total, failed in shares(routing, CONNECTIONS):
            print(f"| {routing} | {weight}% | {track_weight}% | {share:.2f}% | {share - weight:+.2f} points | {total} | {failed} |")


if __name__ == "__main__":
    main()
