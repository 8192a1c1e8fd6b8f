#!/usr/bin/env python3
"""Decode + validate throughput of `capstan validate` on a generated directory of mixed specs.

Generates OBJECTS specs (all six kinds, realistic sizes, some multi-document files) in a
temporary directory, runs `capstan validate` RUNS times and reports the median objects/s,
wall time and peak RSS. As a peer measured in the same run on the same files, PyYAML with its
libyaml C loader parses them (parsing only: no validation, no positions) so the ratio shows
what our decoding, validation and error positions cost on top of libyaml.
"""
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

OBJECTS = int(os.environ.get("OBJECTS", "10000"))
RUNS = int(os.environ.get("RUNS", "5"))
BIN = os.environ["CAPSTAN_BIN"]

H = "apiVersion: capstan.dev/v1alpha1\n"


def spec(kind, i, rnd):
    n = f"svc-{i}"
    if kind == 0:
        return H + f"""kind: Application
metadata:
  name: {n}
  namespace: team-{i % 17}
  labels: {{app.kubernetes.io/name: {n}, tier: backend}}
spec:
  image: registry.example.com/acme/{n}
  source: {{path: ./apps/{n}}}
  command: ["python3", "server.py", "--port", "$(PORT)"]
  env:
  - {{name: LOG_LEVEL, value: info}}
  - name: DB_PASSWORD
    valueFrom: {{secretKeyRef: {{name: {n}-db, key: password}}}}
  ports: [{{name: http, containerPort: {8000 + i % 1000}}}]
  healthCheck:
    http: {{path: /healthz, port: http}}
    interval: 5s
    timeout: 2s
  resources: {{cpu: {100 + i % 900}m, memory: {64 * (1 + i % 8)}Mi}}
  routes: [{{host: {n}.example.com, port: http}}]
"""
    if kind == 1:
        return H + f"""kind: Deployment
metadata: {{name: {n}, namespace: team-{i % 17}}}
spec:
  application: {n}
  version: "1.{i % 50}.{rnd.randint(0, 9)}"
  replicas: {1 + i % 5}
  env: [{{name: FEATURE, value: "{i % 2 == 0}"}}]
  strategy: {{type: RollingUpdate, maxSurge: 1, maxUnavailable: 25%}}
  progressDeadline: 10m
  port: {20000 + i % 20000}
  window: {{schedule: "0 2 * * 1-5", duration: 2h, timeZone: Europe/Amsterdam}}
"""
    if kind == 2:
        return H + f"""kind: Canary
metadata: {{name: {n}}}
spec:
  deployment: {n}
  steps: [{{setWeight: 10}}, {{pause: {{duration: 2m}}}}, {{analysis: {{}}}}, {{setWeight: 50}}, {{pause: {{}}}}]
  analysis:
    interval: 30s
    failureLimit: 2
    metrics:
    - {{name: errors, source: builtin, query: probe_failure_ratio, max: 0.01}}
    - {{name: p99, source: prometheus, address: "http://prometheus:9090", query: "histogram_quantile(0.99, rate(x[1m]))", max: 0.5}}
"""
    if kind == 3:
        return H + f"""kind: AlertRule
metadata: {{name: {n}}}
spec:
  query: probe_failure_ratio{{deployment="{n}"}}
  condition: {{op: ">", threshold: 0.05}}
  for: 5m
  severity: critical
  labels: {{team: web}}
  annotations: {{summary: "error ratio {{{{ $value }}}}"}}
  notify:
  - webhook: {{url: "https://hooks.example.com/{n}"}}
  - email: {{to: [oncall@example.com], smtp: {{host: smtp.example.com}}}}
  escalation: [{{after: 15m, notify: [{{webhook: {{url: "https://pager.example.com/hook"}}}}]}}]
"""
    if kind == 4:
        return H + f"""kind: SecretRotation
metadata: {{name: {n}}}
spec:
  secretName: {n}-db
  keys:
  - {{name: password, generator: {{type: random, length: 32}}}}
  - {{name: token, generator: {{type: token, bytes: 32}}}}
  - {{name: ssh, generator: {{type: ed25519}}}}
  interval: 720h
  restartDeployments: [{n}]
"""
    return H + f"""kind: BackupSchedule
metadata: {{name: {n}}}
spec:
  schedule: "{i % 60} {i % 24} * * *"
  timeZone: UTC
  source: {{postgres: {{host: 127.0.0.1, database: db{i}, user: app, passwordFrom: {{secretKeyRef: {{name: {n}-db, key: password}}}}}}}}
  destination: {{local: {{path: /var/backups/{n}}}}}
  retention: {{keepLast: 7, keepDaily: 7, keepWeekly: 4}}
"""


def generate(directory):
    rnd = random.Random(42)
    written = 0
    i = 0
    while written < OBJECTS:
        sub = os.path.join(directory, f"team-{i % 17}")
        os.makedirs(sub, exist_ok=True)
        # Every tenth file holds three documents, as an app's whole bundle would.
        count = 3 if i % 10 == 0 and written + 3 <= OBJECTS else 1
        docs = [spec((written + k) % 6, written + k, rnd) for k in range(count)]
        with open(os.path.join(sub, f"spec-{i}.yaml"), "w") as f:
            f.write("---\n".join(docs))
        written += count
        i += 1
    return i


def measure(command):
    """Runs a command; returns its result, wall seconds and CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result, elapsed, cpu


PEER = """
import os, sys, yaml
count = 0
for root, dirs, files in os.walk(sys.argv[1]):
    for name in files:
        with open(os.path.join(root, name)) as f:
            count += sum(1 for d in yaml.load_all(f, Loader=yaml.CSafeLoader) if d)
print(count)
"""


def main():
    directory = tempfile.mkdtemp(prefix="capstan-bench-")
    try:
        files = generate(directory)
        capstan_times, peer_times, peaks, capstan_cpu, peer_cpu = [], [], [], [], []
        for run in range(RUNS):
            result, elapsed, cpu = measure([BIN, "validate", directory])
            capstan_cpu.append(cpu)
            if result.returncode != 0:
                print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
                sys.exit("capstan validate failed on the generated specs")
            # Peak RSS of this run alone, from GNU time when present.
            timed = subprocess.run(["/usr/bin/time", "-f", "%M", BIN, "validate", "--quiet", directory],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) if os.path.exists("/usr/bin/time") else None
            if timed is not None:
                peaks.append(int(timed.stderr.strip().splitlines()[-1]))
            capstan_times.append(elapsed)
            peer, peer_elapsed, cpu = measure([sys.executable, "-c", PEER, directory])
            peer_cpu.append(cpu)
            assert int(peer.stdout.strip()) == OBJECTS, peer.stdout
            peer_times.append(peer_elapsed)
        ct, pt = statistics.median(capstan_times), statistics.median(peer_times)
        cc, pc = statistics.median(capstan_cpu), statistics.median(peer_cpu)
        print(f"validate: {OBJECTS} objects in {files} files, {RUNS} runs (median)")
        print(f"{'':28}{'wall s':>10}{'objects/s':>12}{'CPU s':>10}{'obj/CPU-s':>12}{'peak RSS MiB':>14}")
        peak = f"{max(peaks) / 1024:.1f}" if peaks else "n/a"
        print(f"{'capstan validate':28}{ct:>10.3f}{OBJECTS / ct:>12.0f}{cc:>10.3f}{OBJECTS / cc:>12.0f}{peak:>14}")
        print(f"{'PyYAML CSafeLoader (parse)':28}{pt:>10.3f}{OBJECTS / pt:>12.0f}{pc:>10.3f}{OBJECTS / pc:>12.0f}{'':>14}")
        print(f"ratio capstan/PyYAML throughput: {pt / ct:.2f}x  (all runs capstan: {', '.join(f'{t:.3f}' for t in capstan_times)})")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
