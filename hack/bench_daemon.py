#!/usr/bin/env python3
"""Daemon benchmarks: cold start to all Ready, and reaction latency.

(a) COUNTS Applications (default 1000 and 10000) in a fresh spec directory: `capstan run` from
    a cold, empty state directory until /metrics reports every Application ready. Reports
    seconds, reconciles/s and peak RSS (VmHWM).
(b) EDITS edits (default 200) of one spec file: time from the write to the daemon's log line
    that applies the new generation (the moment the key is queued for reconcile); p50/p99.
"""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

BIN = os.environ["CAPSTAN_BIN"]
COUNTS = [int(c) for c in os.environ.get("COUNTS", "1000,10000").split(",") if c]
EDITS = int(os.environ.get("EDITS", "200"))
# Spec-directory sizes for the reaction benchmark: one file alone, and one among many.
REACTION_FILES = [int(c) for c in os.environ.get("REACTION_FILES", "1,10000").split(",") if c]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app(i, greeting="hi"):
    return f"""apiVersion: capstan.dev/v1alpha1
kind: Application
metadata: {{name: app-{i}, namespace: team-{i % 10}}}
spec:
  source: {{path: ../src}}
  command: [python3, server.py]
  env: [{{name: GREETING, value: "{greeting}"}}]
  ports: [{{name: http, containerPort: 8080}}]
  healthCheck: {{http: {{path: /healthz, port: http}}}}
"""


def metric(port, name):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    m = re.search(re.escape(name) + r" ([0-9.e+]+)", data.decode())
    return float(m.group(1)) if m else None


def peak_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cold_start(count):
    root = tempfile.mkdtemp(prefix="capstan-bench-")
    try:
        os.makedirs(f"{root}/src")
        os.makedirs(f"{root}/specs")
        for i in range(count):
            with open(f"{root}/specs/app-{i}.yaml", "w") as f:
                f.write(app(i))
        port = free_port()
        start = time.perf_counter()
        daemon = subprocess.Popen([BIN, "run", "--spec-dir", f"{root}/specs", "--state-dir", f"{root}/state",
                                   "--metrics-addr", f"127.0.0.1:{port}", "--resync", "1h"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = start + 600

        def wait_for(name, interval):
            value = 0
            while time.perf_counter() < deadline:
                value = metric(port, name) or 0
                if value >= count:
                    break
                time.sleep(interval)
            return value

        # Every Application reconciled to Ready once: the success counter moves at each
        # reconcile (the readiness gauge is refreshed only every 3 s, too coarse to time).
        wait_for('capstan_reconcile_total{kind="application",result="success"}', 0.02)
        elapsed = time.perf_counter() - start
        # Then check that the store agrees: all of them Ready at their generation.
        ready = wait_for('capstan_resources{kind="application",ready="true"}', 0.1)
        rss = peak_rss_mib(daemon.pid)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        if ready < count:
            return count, None, None, rss
        return count, elapsed, count / elapsed, rss
    finally:
        shutil.rmtree(root, ignore_errors=True)


def reaction(files):
    root = tempfile.mkdtemp(prefix="capstan-bench-")
    try:
        os.makedirs(f"{root}/src")
        os.makedirs(f"{root}/specs")
        spec = f"{root}/specs/app-0.yaml"
        for i in range(files):
            with open(f"{root}/specs/app-{i}.yaml", "w") as f:
                f.write(app(i))
        log = open(f"{root}/daemon.log", "w+")
        daemon = subprocess.Popen([BIN, "run", "--spec-dir", f"{root}/specs", "--state-dir", f"{root}/state",
                                   "--metrics-addr", f"127.0.0.1:{free_port()}", "--resync", "1h"],
                                  stdout=subprocess.DEVNULL, stderr=log)
        wait_until = time.time() + 120
        while time.time() < wait_until:
            log.seek(0)
            if f"read {files} objects" in log.read():
                break
            time.sleep(0.1)
        time.sleep(1.0)
        latencies = []
        pattern = re.compile(r"^(\S+) info Application/team-0/app-0: spec changed, generation (\d+)$", re.M)
        for edit in range(EDITS):
            generation = edit + 2
            written = time.time()
            with open(spec + ".tmp", "w") as f:
                f.write(app(0, greeting=f"edit {edit}"))
            os.rename(spec + ".tmp", spec)  # atomic, as git and editors write
            deadline = written + 10
            seen = None
            while time.time() < deadline and seen is None:
                log.seek(0)
                for m in pattern.finditer(log.read()):
                    if int(m.group(2)) == generation:
                        seen = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                time.sleep(0.005)
            if seen is None:
                sys.exit(f"edit {edit} was not seen within 10 s")
            latencies.append((seen - written) * 1000)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        latencies.sort()
        p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
        return statistics.median(latencies), p99, max(latencies)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    print(f"{'cold start':24}{'seconds':>10}{'reconciles/s':>15}{'peak RSS MiB':>15}")
    for count in COUNTS:
        n, elapsed, rate, rss = cold_start(count)
        if elapsed is None:
            print(f"{n:>8} Applications      did not converge within 600 s (peak RSS {rss:.1f} MiB)")
        else:
            print(f"{n:>8} Applications  {elapsed:>10.2f}{rate:>15.0f}{rss:>15.1f}")
    for files in REACTION_FILES:
        p50, p99, worst = reaction(files)
        print(f"reaction (file write -> reconcile queued), {EDITS} edits, {files} spec files: "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms")


if __name__ == "__main__":
    main()
