#!/usr/bin/env python3
"""Benchmarks of AlertRule on the local platform (issue 20).

1. Load: RULES AlertRules (default 1,000) at `interval: 1s` on builtin metrics (a Deployment's
   up/ready_replicas/probe_failure_ratio and the host's memory), none true; once every rule has
   been evaluated, the daemon's CPU over LOAD_SECONDS (default 60) as a share of one core, and
   its RSS (now and peak). The peers in the same run: the same daemon and Deployment without
   rules; Debian's `prometheus` evaluating as many rules (ten groups at 1 s, on its scrape of an
   exporter) and none.
2. Latency, on that loaded daemon: a Deployment `flip` whose health check fails while a file
   exists; the rule `probe_success{deployment="flip"} < 1`, `for: 2s`, `interval: 1s`, a webhook
   to a receiver here. Each run creates the file (and, for the peer, sets an exporter's series
   for this run to 1 at the same moment) and clocks when the firing notification arrives:
   * "for elapsed -> received": arrival minus the alert's own firing time (the payload's
     startsAt: Capstan's evaluation at which `for` had elapsed; Prometheus' FiredAt);
   * "condition -> received": arrival minus (the moment the file/series changed + `for`).
   Side by side: Debian's `prometheus` (scrape and evaluation every 1 s, the same rule on the
   exporter's series, `for: 2s`) sending to two `prometheus-alertmanager`s, one with the default
   `group_wait` (30 s), one with `group_wait: 0s`, each posting to the same receiver.

Environment: CAPSTAN_BIN (hack/bench sets it), RULES (1000), LOAD_SECONDS (60), RUNS (10).
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIN = os.environ.get("CAPSTAN_BIN", ".build/debug/capstan")
RULES = int(os.environ.get("RULES", "1000"))
LOAD_SECONDS = int(os.environ.get("LOAD_SECONDS", "60"))
RUNS = int(os.environ.get("RUNS", "10"))
FOR = 2.0
HERE = os.path.dirname(os.path.abspath(__file__))
HELLO = os.path.join(HERE, "..", "manifests", "examples", "apps", "hello", "server.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capstan(*args, state):
    return subprocess.run([BIN, *args, "--state-dir", state], capture_output=True, text=True)


def wait(condition, seconds=120, interval=0.02, what="a condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory(pid):
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def parse_time(text):
    # RFC 3339 with up to nanoseconds (Go) or microseconds; to seconds since the epoch.
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    return datetime.fromisoformat(text).timestamp()


class Receiver:
    """Records each firing alert it is sent, with the time it arrived; serves the exporter."""

    def __init__(self):
        self.lock = threading.Lock()
        self.firing = []  # (path, labels, startsAt, arrival)
        self.values = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                arrival = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {}
                with receiver.lock:
                    for alert in payload.get("alerts", []):
                        if alert.get("status") == "firing":
                            receiver.firing.append((self.path, alert.get("labels", {}), alert.get("startsAt", ""), arrival))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                with receiver.lock:
                    lines = ["# TYPE flip_value gauge"] + [f'flip_value{{run="{r}"}} {v}' for r, v in sorted(receiver.values.items())]
                data = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def rules_yaml(count):
    # None of them true: a healthy Deployment and a host with memory to spare.
    rules = [('up{deployment="web"}', "<", 1), ('ready_replicas{deployment="web"}', "<", 1),
             ('probe_failure_ratio{deployment="web"}', ">", 0.5), ("host_memory_ratio", ">", 0.999)]
    out = []
    for i in range(count):
        query, op, threshold = rules[i % len(rules)]
        out.append(f"""---
apiVersion: capstan.dev/v1alpha1
kind: AlertRule
metadata: {{name: rule-{i}}}
spec:
  query: '{query}'
  condition: {{op: "{op}", threshold: {threshold}}}
  interval: 1s
  notify: [{{webhook: {{url: "http://127.0.0.1:9/never"}}}}]
""")
    return "".join(out)


def deployments_yaml(web_port, flip_port, unhealthy):
    return f"""apiVersion: capstan.dev/v1alpha1
kind: Application
metadata: {{name: hello}}
spec:
  source: {{path: app}}
  command: [python3, server.py]
  ports: [{{name: http, containerPort: 8080}}]
  # A high threshold: the flipped instance is never replaced as hung (a replacement in restart
  # backoff would not be probed, and probe_success would keep its last value).
  healthCheck: {{http: {{path: /healthz, port: http}}, interval: 1s, timeout: 1s, failureThreshold: 1000}}
---
apiVersion: capstan.dev/v1alpha1
kind: Deployment
metadata: {{name: web}}
spec: {{application: hello, version: "1", replicas: 1, port: {web_port}}}
---
apiVersion: capstan.dev/v1alpha1
kind: Deployment
metadata: {{name: flip}}
spec:
  application: hello
  version: "1"
  replicas: 1
  port: {flip_port}
  env: [{{name: UNHEALTHY_FILE, value: "{unhealthy}"}}]
"""


def start_daemon(root, specs, state):
    return subprocess.Popen([BIN, "run", "--spec-dir", specs, "--state-dir", state, "--metrics-addr", "127.0.0.1:0", "--resync", "1h"],
                            stdout=subprocess.DEVNULL, stderr=open(f"{root}/daemon.log", "a"))


def evaluated(state, count):
    out = capstan("get", "alertrules", "-o", "json", state=state).stdout
    try:
        items = json.loads(out).get("items", []) if out.startswith("{") else json.loads(out or "[]")
    except ValueError:
        return False
    return sum(1 for item in items if item.get("status", {}).get("lastEvaluation")) >= count


def tool(name):
    for prefix in ("/usr/bin/", "/usr/local/bin/"):
        if os.access(prefix + name, os.X_OK):
            return prefix + name
    raise SystemExit(f"{name} is not installed (Debian: prometheus, prometheus-alertmanager)")


def start_peers(root, receiver):
    """Prometheus scraping the receiver's exporter, and two Alertmanagers (default, group_wait 0)."""
    processes, ports = [], {}
    for name, group_wait in (("default", None), ("zero", "0s")):
        port = free_port()
        ports[name] = port
        route = f"group_wait: {group_wait}, " if group_wait else ""
        with open(f"{root}/am-{name}.yml", "w") as f:
            f.write(f"""route: {{receiver: hook, {route}group_by: ["..."]}}
receivers:
- name: hook
  webhook_configs: [{{url: "http://127.0.0.1:{receiver.port}/am-{name}", send_resolved: true}}]
""")
        os.makedirs(f"{root}/am-{name}")
        processes.append(subprocess.Popen([tool("prometheus-alertmanager"), f"--config.file={root}/am-{name}.yml", f"--storage.path={root}/am-{name}",
                                           f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                          stdout=subprocess.DEVNULL, stderr=open(f"{root}/am-{name}.log", "w")))
    with open(f"{root}/rules.yml", "w") as f:
        f.write(f"""groups:
- name: bench
  rules:
  - alert: Flip
    expr: flip_value > 0
    for: {int(FOR)}s
""")
    with open(f"{root}/prometheus.yml", "w") as f:
        f.write(f"""global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
rule_files: ["{root}/rules.yml"]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["127.0.0.1:{ports['default']}", "127.0.0.1:{ports['zero']}"]}}]}}]
scrape_configs:
- job_name: flip
  static_configs: [{{targets: ["127.0.0.1:{receiver.port}"]}}]
""")
    os.makedirs(f"{root}/prometheus")
    prometheus_port = free_port()
    processes.append(subprocess.Popen([tool("prometheus"), f"--config.file={root}/prometheus.yml", f"--storage.tsdb.path={root}/prometheus",
                                       f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                                      stdout=subprocess.DEVNULL, stderr=open(f"{root}/prometheus.log", "w")))
    def ready(port):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False
    wait(lambda: all(ready(p) for p in (prometheus_port, ports["default"], ports["zero"])), 60, 0.2, "Prometheus and Alertmanager")
    return processes


def prometheus_load(root, receiver, rules):
    """Prometheus scraping the exporter and evaluating `rules` rules (ten groups, interval 1s,
    none true) in the shapes of Capstan's: its CPU over LOAD_SECONDS as a share of a core."""
    directory = f"{root}/prometheus-load-{rules}"
    os.makedirs(f"{directory}/data")
    shapes = ['up{job="flip"} < 1', 'scrape_duration_seconds{job="flip"} > 5', 'scrape_samples_scraped{job="flip"} < 0',
              'scrape_series_added{job="flip"} > 1e6']
    with open(f"{directory}/rules.yml", "w") as f:
        f.write("groups:\n")
        for group in range(10 if rules else 0):
            f.write(f"- name: load-{group}\n  interval: 1s\n  rules:\n")
            for i in range(group, rules, 10):
                f.write(f"  - alert: Rule{i}\n    expr: '{shapes[i % len(shapes)]}'\n")
    port = free_port()
    with open(f"{directory}/prometheus.yml", "w") as f:
        f.write(f"""global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
rule_files: ["{directory}/rules.yml"]
scrape_configs:
- job_name: flip
  static_configs: [{{targets: ["127.0.0.1:{receiver.port}"]}}]
""")
    process = subprocess.Popen([tool("prometheus"), f"--config.file={directory}/prometheus.yml", f"--storage.tsdb.path={directory}/data",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=open(f"{directory}/log", "w"))
    try:
        def evaluated():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=2) as response:
                    groups = json.load(response)["data"]["groups"]
                return sum(1 for g in groups for r in g["rules"] if r.get("lastEvaluation", "").startswith("20")) >= rules
            except (OSError, ValueError, KeyError):
                return False
        wait(evaluated, 120, 0.5, f"Prometheus evaluating {rules} rules")
        time.sleep(5)
        before = cpu_seconds(process.pid)
        time.sleep(LOAD_SECONDS)
        return (cpu_seconds(process.pid) - before) / LOAD_SECONDS, memory(process.pid)[0]
    finally:
        process.kill()
        process.wait()


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def describe(name, values):
    if not values:
        return f"{name}: no samples"
    return (f"{name}: p50 {percentile(values, 0.5) * 1000:.0f} ms, p99 {percentile(values, 0.99) * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms ({len(values)} runs)")


def main():
    root = tempfile.mkdtemp(prefix="capstan-bench-alerts-")
    specs, state = f"{root}/specs", f"{root}/state"
    os.makedirs(f"{specs}/app")
    shutil.copy(HELLO, f"{specs}/app/server.py")
    unhealthy = f"{root}/unhealthy"
    receiver = Receiver()
    with open(f"{specs}/deployments.yaml", "w") as f:
        f.write(deployments_yaml(free_port(), free_port(), unhealthy))
    peers = []
    daemon = None
    try:
        # The peer for load: the daemon with the Deployments and no rules.
        daemon = start_daemon(root, specs, state)
        wait(lambda: capstan("get", "deployments", state=state).stdout.count("1/1") == 2, 60, 0.2, "the Deployments")
        time.sleep(5)
        before = cpu_seconds(daemon.pid)
        time.sleep(LOAD_SECONDS)
        idle_cpu = cpu_seconds(daemon.pid) - before
        idle_rss, _ = memory(daemon.pid)

        # The rules added to the same daemon.
        with open(f"{specs}/rules.yaml", "w") as f:
            f.write(rules_yaml(RULES))
        start = time.monotonic()
        wait(lambda: evaluated(state, RULES), 180, 0.5, f"{RULES} rules evaluated")
        ready = time.monotonic() - start
        time.sleep(5)
        before = cpu_seconds(daemon.pid)
        time.sleep(LOAD_SECONDS)
        load_cpu = cpu_seconds(daemon.pid) - before
        rss, peak = memory(daemon.pid)
        print(f"{RULES} rules at interval 1s (builtin): all evaluated {ready:.1f} s after the file was written; "
              f"CPU {load_cpu / LOAD_SECONDS * 100:.1f}% of a core over {LOAD_SECONDS} s (without rules: {idle_cpu / LOAD_SECONDS * 100:.1f}%); "
              f"RSS {rss:.0f} MiB (peak {peak:.0f} MiB; without rules {idle_rss:.0f} MiB)")

        # The peer for load: Prometheus evaluating as many rules, and none.
        peer_cpu, peer_rss = prometheus_load(root, receiver, RULES)
        peer_idle, peer_idle_rss = prometheus_load(root, receiver, 0)
        capstan_rules = (load_cpu - idle_cpu) / LOAD_SECONDS
        print(f"Prometheus with {RULES} rules at 1s (10 groups): CPU {peer_cpu * 100:.1f}% of a core (without rules {peer_idle * 100:.1f}%); "
              f"RSS {peer_rss:.0f} MiB (without rules {peer_idle_rss:.0f} MiB)")
        print(f"the rules' own CPU: Capstan {capstan_rules * 100:.1f}%, Prometheus {(peer_cpu - peer_idle) * 100:.1f}% "
              f"(ratio {capstan_rules / max(1e-9, peer_cpu - peer_idle):.2f}x)")

        # Latency on the loaded daemon, beside Prometheus + Alertmanager.
        with open(f"{specs}/flip-rule.yaml", "w") as f:
            f.write(f"""apiVersion: capstan.dev/v1alpha1
kind: AlertRule
metadata: {{name: flip}}
spec:
  query: probe_success{{deployment="flip"}}
  condition: {{op: "<", threshold: 1}}
  for: {int(FOR)}s
  interval: 1s
  notify: [{{webhook: {{url: "http://127.0.0.1:{receiver.port}/capstan"}}}}]
""")
        peers = start_peers(root, receiver)
        wait(lambda: (json.loads(capstan("get", "alertrule/flip", "-o", "json", state=state).stdout or "{}").get("status", {}).get("state")
                      == "Inactive"), 60, 0.2, "the flip rule")
        pipeline = {"capstan": [], "zero": [], "default": []}
        e2e = {"capstan": [], "zero": [], "default": []}
        for run in range(RUNS):
            flipped = time.time()
            open(unhealthy, "w").close()
            with receiver.lock:
                receiver.values[str(run)] = 1
            found = {}

            def arrived():
                with receiver.lock:
                    firing = list(receiver.firing)
                for name in ("capstan", "zero", "default"):
                    if name in found:
                        continue
                    if name == "capstan":
                        entry = next((e for e in firing if e[0] == "/capstan" and e[3] > flipped), None)
                    else:
                        entry = next((e for e in firing if e[0] == f"/am-{name}" and e[1].get("run") == str(run)), None)
                    if entry:
                        found[name] = entry
                return len(found) == 3
            wait(arrived, 120, 0.01, f"run {run}'s notifications")
            for name, entry in found.items():
                pipeline[name].append(entry[3] - parse_time(entry[2]))
                e2e[name].append(entry[3] - (flipped + FOR))
            os.unlink(unhealthy)
            with receiver.lock:
                receiver.values[str(run)] = 0
            wait(lambda: (json.loads(capstan("get", "alertrule/flip", "-o", "json", state=state).stdout or "{}").get("status", {}).get("state")
                          != "Firing"), 60, 0.1, "the flip rule resolved")
            time.sleep(2)
        print(describe("Capstan (builtin, interval 1s), for elapsed -> received", pipeline["capstan"]))
        print(describe("Prometheus + Alertmanager group_wait 0s, for elapsed -> received", pipeline["zero"]))
        print(describe("Prometheus + Alertmanager default group_wait, for elapsed -> received", pipeline["default"]))
        print(describe("Capstan, condition true + for -> received", e2e["capstan"]))
        print(describe("Prometheus (scrape/eval 1s) + Alertmanager group_wait 0s, condition true + for -> received", e2e["zero"]))
        print(describe("Prometheus (scrape/eval 1s) + Alertmanager default, condition true + for -> received", e2e["default"]))
    finally:
        for process in peers:
            process.kill()
        if daemon:
            daemon.kill()
            daemon.wait()
        capstan("down", "--grace", "2s", state=state)
        receiver.server.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
