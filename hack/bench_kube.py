#!/usr/bin/env python3
"""Kubernetes mode against hack/fake-apiserver (issue 6), with kopf as the peer in the same run.

For each operator and run: a fresh fake API server with the CRDs, the operator started, then
OBJECTS (default 1,000) Capstan Deployments created by 8 client threads; measured: seconds
from the first create until every apps/v1 child exists (and objects/s), then the latency of
one more Deployment -> its child existing (SAMPLES sequential, p50/p99), and the operator's
peak RSS. Capstan runs with --kube-qps 0 (kopf has no client-side limit either).

Also measured: the operator's CPU time (user + system) over the 1,000, which says what it
would manage against an API server that is not the bottleneck (this Python fake is); and for
Capstan, watch event -> reconcile start: how long a Deployment's key waited in the work queue
(capstan_workqueue_queue_duration_seconds{kind="deployment"} from its /metrics, p50/p99
interpolated in the histogram's buckets as Prometheus' histogram_quantile does), over the burst
and over the single creates. kopf publishes no such figure.

Since issue 23, the fake runs as a cluster would: its garbage collector (--gc), kube-controller-
manager's status writes on every apps/v1 Deployment (--deployment-controller: three per
rollout, one of them refreshing only condition times) and a CPU cost per write (--write-cpu,
WRITE_CPU_MS, default 2 ms: a real server spent ~3.7 CPU-ms per write in the issue's run). Counted
per object, from the fake's requests by user agent (the bench's own requests are not counted):
writes by what they wrote, reads (GETs and LISTs, not watches), and for Capstan reconciles
(capstan_reconcile_total). Then every Deployment is deleted: nothing may be left (children,
ConfigMaps). The run fails loudly (exit 1, REGRESSION) when Capstan's counts pass the budget.

Environment: CAPSTAN_IMAGE_BIN or CAPSTAN_BIN (hack/bench sets both), RUNS (default 3), OBJECTS, SAMPLES (default 50),
KOPF_PYTHON (a Python with kopf and kubernetes; hack/bench makes .bench-venv), CAPSTAN_ARGS (default
--concurrency 8), FAKE_CONTROLLER=0 (no status churn), FAKE_READY=0 (churn, pods never ready:
the budget is then one status write, no Event, one reconcile), PORTS=0 (no port on the
Application: no Service, one child; with FAKE_READY=0, the issue's real-server scenario).
"""
import sys
import json
import math
import os
import re
import urllib.request
import shutil
import signal
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import http.client

import yaml

# The binary the Containerfile ships when hack/bench built it, else CAPSTAN_BIN.
BIN = os.environ.get("CAPSTAN_IMAGE_BIN") or os.environ.get("CAPSTAN_BIN", ".build/debug/capstan")
RUNS = int(os.environ.get("RUNS", "3"))
OBJECTS = int(os.environ.get("OBJECTS", "1000"))
SAMPLES = int(os.environ.get("SAMPLES", "50"))
KOPF_PYTHON = os.environ.get("KOPF_PYTHON", ".bench-venv/bin/python3")
PEERS = os.environ.get("PEERS", "capstan,kopf").split(",")
WRITE_LATENCY_MS = float(os.environ.get("WRITE_LATENCY_MS", "0"))
WRITE_CPU_MS = float(os.environ.get("WRITE_CPU_MS", "2"))
# FAKE_CONTROLLER=0: no status churn on the children (the fake as before issue 23).
FAKE_CONTROLLER = os.environ.get("FAKE_CONTROLLER", "1") != "0"
# FAKE_READY=0: the controller's status churn, but the pods never become ready (the issue's
# real cluster had a controller manager and no nodes).
FAKE_READY = os.environ.get("FAKE_READY", "1") != "0"
# PORTS=0: the Application has no port, so no Service: one child, as in the real-server
# run (with FAKE_READY=0 that run's whole scenario: a controller manager, no nodes).
PORTS = os.environ.get("PORTS", "1") != "0"
# Capstan's budget per new Deployment (issue 23): its children (the apps/v1 Deployment and,
# the bench's Application having a port, a Service), its status (rolling out, then ready),
# one Event (the rollout's outcome), no other write; reads after the caches synced; reconciles
# (its creation, and one when its pods are ready: the cluster's other status writes change
# nothing the reconciler decides on). Pods that never become ready: one status write, no
# Event, one reconcile.
BUDGET = ({"children": 2.0, "status": 2.02, "events": 1.0, "other writes": 0.0, "reads": 0.1, "reconciles": 2.2} if FAKE_READY else
          {"children": 2.0, "status": 1.02, "events": 0.0, "other writes": 0.0, "reads": 0.1, "reconciles": 1.2})
if not PORTS:
    BUDGET["children"] = 1.0
# 8 workers: against this fake (Python threads, a CPU cost per write) 32 made every figure
# worse in the same run (2,000 children in 52 s instead of 41, operator CPU 29 s instead of 20,
# the fake's 45 s instead of 36, peak RSS 121 MiB instead of 94); kopf runs its sync handlers
# on asyncio's default thread pool (6 threads on 2 cores).
CAPSTAN_ARGS = os.environ.get("CAPSTAN_ARGS", "--concurrency 8").split()
HERE = os.path.dirname(os.path.abspath(__file__))


class API:
    def __init__(self, directory, port):
        self.context = ssl.create_default_context(cafile=f"{directory}/ca.crt")
        self.context.load_cert_chain(f"{directory}/client.crt", f"{directory}/client.key")
        self.port = port
        self.local = threading.local()

    def request(self, method, path, body=None, content_type="application/json"):
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context)
        data = json.dumps(body).encode() if body is not None else None
        try:
            connection.request(method, path, body=data, headers={"Content-Type": content_type, "User-Agent": "bench"})
            response = connection.getresponse()
            payload = response.read()
        except (ConnectionError, http.client.HTTPException):
            self.local.connection = None
            raise
        if response.status >= 300 and response.status != 404:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")
        return response.status, (json.loads(payload) if payload else None)

    def count(self, path):
        # One item and the server's remainingItemCount: polling with whole lists of 1,000
        # objects every 0.2 s cost the fake a tenth of its time.
        body = self.request("GET", path + "?limit=1")[1]
        return len(body["items"]) + int(body["metadata"].get("remainingItemCount") or 0)


def start_fake(root):
    process = subprocess.Popen(["python3", f"{HERE}/fake-apiserver/fake_apiserver.py", "--dir", root, "--history", "10000000",
                                "--write-latency", str(WRITE_LATENCY_MS / 1000), "--write-cpu", str(WRITE_CPU_MS / 1000),
                                "--gc"] + (["--deployment-controller"] if FAKE_CONTROLLER else [])
                               + ([] if FAKE_READY else ["--pods-never-ready"]),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    port = int(line.rsplit(":", 1)[1])
    api = API(root, port)
    for name in sorted(os.listdir("crds")):
        if name.startswith("capstan.dev_"):
            with open(f"crds/{name}") as f:
                api.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", yaml.safe_load(f))
    return process, api


def application():
    return {"apiVersion": "capstan.dev/v1alpha1", "kind": "Application", "metadata": {"name": "web"},
            "spec": {"image": "ghcr.io/example/web"} | ({"ports": [{"name": "http", "containerPort": 8080}]} if PORTS else {})}


def deployment(name):
    return {"apiVersion": "capstan.dev/v1alpha1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"application": "web", "version": "1.0.0", "replicas": 1}}


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid):
    """User + system CPU time of a process (and its reaped children), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_once(peer):
    root = tempfile.mkdtemp(prefix=f"capstan-bench-kube-{peer}-")
    fake, api = start_fake(root)
    log = open(f"{root}/operator.log", "w")
    env = dict(os.environ, KUBECONFIG=f"{root}/kubeconfig")
    if peer == "capstan":
        operator = subprocess.Popen([BIN, "run", "--kube", "--kube-qps", "0", "--metrics-addr", "127.0.0.1:0", "--resync", "1h"] + CAPSTAN_ARGS,
                                    stdout=subprocess.DEVNULL, stderr=log, env=env)
    else:
        operator = subprocess.Popen([KOPF_PYTHON, "-m", "kopf", "run", "--standalone", "--all-namespaces", "--quiet",
                                     f"{HERE}/bench-kopf/operator.py"], stdout=log, stderr=log, env=env)
    base = "/apis/capstan.dev/v1alpha1/namespaces/default"
    try:
        api.request("POST", f"{base}/applications", application())
        time.sleep(3)  # the operator is up and watching
        port = metrics_port(log.name) if peer == "capstan" else None
        counted_before = operator_requests(api)
        reconciles_before = reconciles(port) if port else 0
        started = time.monotonic()
        cpu_before, fake_cpu_before = cpu_seconds(operator.pid), cpu_seconds(fake.pid)
        names = [f"d{i:05d}" for i in range(OBJECTS)]

        def create(chunk):
            for name in chunk:
                api.request("POST", f"{base}/deployments", deployment(name))
        threads = [threading.Thread(target=create, args=(names[i::8],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        created = time.monotonic() - started
        while api.count("/apis/apps/v1/namespaces/default/deployments") < OBJECTS:
            if time.monotonic() - started > 900:
                raise RuntimeError(f"{peer}: children incomplete after 900 s")
            time.sleep(0.2)
        total = time.monotonic() - started
        cpu = cpu_seconds(operator.pid) - cpu_before
        fake_cpu = cpu_seconds(fake.pid) - fake_cpu_before
        if port:
            # The burst's last keys (owners queued again by their children's events) drain
            # first: a single create must not wait behind them.
            while not re.search(r'^capstan_workqueue_depth\{kind="deployment"\} 0(\.0)?$', metrics_text(port), re.M):
                if time.monotonic() - started > 900:
                    raise RuntimeError("capstan: the queue did not drain")
                time.sleep(0.1)
            time.sleep(1)
        burst_waits = queue_wait_buckets(port) if port else {}
        latencies = []
        for i in range(SAMPLES):
            name = f"lat{i:04d}"
            t0 = time.monotonic()
            api.request("POST", f"{base}/deployments", deployment(name))
            while api.request("GET", f"/apis/apps/v1/namespaces/default/deployments/{name}")[0] == 404:
                time.sleep(0.002)
            latencies.append(time.monotonic() - t0)
        # The cluster's status writes settle (every child ready), and what they cause.
        settle = time.monotonic()
        while time.monotonic() - settle < 60:
            before = api.request("GET", "/fake/stats")[1]["controllerWrites"]
            time.sleep(1.0)
            if api.request("GET", "/fake/stats")[1]["controllerWrites"] == before:
                break
        time.sleep(2.0)
        counts = per_object(operator_requests(api), counted_before, OBJECTS + SAMPLES)
        if port:
            counts["reconciles"] = (reconciles(port) - reconciles_before) / (OBJECTS + SAMPLES)
        rss = peak_rss_mib(operator.pid)
        stats = api.request("GET", "/fake/stats")[1]["requests"]
        # Everything deleted: nothing of the operator's may stay behind.
        names_all = names + [f"lat{i:04d}" for i in range(SAMPLES)]
        def delete(chunk):
            for name in chunk:
                api.request("DELETE", f"{base}/deployments/{name}")
        threads = [threading.Thread(target=delete, args=(names_all[i::8],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + 120
        left = None
        while time.monotonic() < deadline:
            left = {what: api.count(path) for what, path in (
                ("deployments", f"{base}/deployments"), ("children", "/apis/apps/v1/namespaces/default/deployments"),
                ("services", "/api/v1/namespaces/default/services"), ("configmaps", "/api/v1/namespaces/default/configmaps"))}
            if not any(left.values()):
                break
            time.sleep(0.5)
        counts["left after deletion"] = sum(left.values())
        all_waits = queue_wait_buckets(port) if port else {}
        single_waits = {le: count - burst_waits.get(le, 0) for le, count in all_waits.items()}
        return {"created": created, "total": total, "cpu": cpu, "fake_cpu": fake_cpu, "latencies": latencies, "rss": rss, "requests": stats, "counts": counts,
                "burst_waits": burst_waits, "single_waits": single_waits}
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()
        fake.terminate()
        fake.wait()
        shutil.rmtree(root, ignore_errors=True)


def operator_requests(api):
    """The requests of everyone but the bench (the operator's), by method and resource."""
    agents = api.request("GET", "/fake/stats")[1]["byAgent"]
    merged = {}
    for agent, counts in agents.items():
        if agent == "bench":
            continue
        for what, count in counts.items():
            merged[what] = merged.get(what, 0) + count
    return merged


def per_object(after, before, objects):
    """Writes by kind of write, and reads, per object, between two counts."""
    delta = {what: after.get(what, 0) - before.get(what, 0) for what in after}
    counts = {"children": 0, "status": 0, "events": 0, "other writes": 0, "reads": 0, "application status": 0}
    other = []
    for what, count in delta.items():
        if count <= 0:
            continue
        method, resource = what.split(" ", 1)
        if method == "GET":
            if not resource.startswith("watch "):
                counts["reads"] += count
        elif resource.endswith("/status") and resource.startswith("deployments.capstan.dev"):
            counts["status"] += count
        elif resource == "applications.capstan.dev/status":
            # The one Application lists its Deployments' readiness: not a per-Deployment write.
            counts["application status"] += count
        elif resource in ("events", "events.events.k8s.io"):
            counts["events"] += count
        elif method in ("PATCH", "PUT", "POST") and resource in ("deployments.apps", "services", "ingresses.networking.k8s.io"):
            counts["children"] += count
        else:
            counts["other writes"] += count
            other.append(f"{what}: {count}")
    result = {key: value / objects for key, value in counts.items()}
    result["other"] = ", ".join(other)
    return result


def reconciles(port):
    text = metrics_text(port)
    return sum(float(m.group(1)) for m in re.finditer(r'^capstan_reconcile_total\{[^}]*kind="deployment"[^}]*\} (\S+)$', text, re.M))


def metrics_port(log_path):
    """The port Capstan serves /metrics on, from its log line `serving /metrics ... on ADDRESS`."""
    for _ in range(100):
        with open(log_path) as f:
            for line in f:
                if "serving /metrics" in line:
                    match = re.search(r":(\d+)\b[^:]*$", line)
                    if match:
                        return int(match.group(1))
        time.sleep(0.05)
    raise RuntimeError("capstan did not say where it serves /metrics")


def metrics_text(port):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def queue_wait_buckets(port):
    """{le: cumulative count} of capstan_workqueue_queue_duration_seconds{kind="deployment"}."""
    buckets = {}
    for match in re.finditer(r'^capstan_workqueue_queue_duration_seconds_bucket\{kind="deployment",le="([^"]+)"\} (\S+)$', metrics_text(port), re.M):
        buckets[float(match.group(1))] = float(match.group(2))
    return buckets


def histogram_quantile(q, buckets):
    """As Prometheus: the bucket holding the q-th rank, linearly interpolated inside it."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return float("nan")
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-12)
        lower, below = bound, buckets[bound]
    return lower


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    results = {peer: [] for peer in PEERS}
    for run in range(RUNS):
        for peer in PEERS:  # alternated, so both see the same machine
            result = run_once(peer)
            results[peer].append(result)
            print(f"run {run + 1} {peer}: {OBJECTS} children in {result['total']:.2f} s (creates took {result['created']:.2f} s), "
                  f"operator CPU {result['cpu']:.2f} s, fake CPU {result['fake_cpu']:.2f} s, latency p50 {percentile(result['latencies'], 0.5) * 1000:.0f} ms, peak RSS {result['rss']:.0f} MiB, "
                  f"API requests {result['requests']}, per object {result['counts']}", flush=True)
    print()
    print(f"| operator | {OBJECTS} children, s (median) | objects/s | operator CPU s (median) | objects per CPU-second | create -> child p50 / p99, ms "
          f"| watch event -> reconcile start p50 / p99, ms: burst; single | peak RSS, MiB |")
    print("|---|---|---|---|---|---|---|---|")
    medians = {}
    for peer, runs in results.items():
        total = statistics.median(r["total"] for r in runs)
        latencies = [x for r in runs for x in r["latencies"]]
        rss = statistics.median(r["rss"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        medians[peer] = (total, rss, cpu)
        waits = "—"
        if peer == "capstan":
            def summed(name):
                merged = {}
                for r in runs:
                    for le, count in r[name].items():
                        merged[le] = merged.get(le, 0) + count
                return merged
            burst, single = summed("burst_waits"), summed("single_waits")
            waits = (f"{histogram_quantile(0.5, burst) * 1000:.1f} / {histogram_quantile(0.99, burst) * 1000:.1f}; "
                     f"{histogram_quantile(0.5, single) * 1000:.2f} / {histogram_quantile(0.99, single) * 1000:.2f}")
        print(f"| {peer} | {total:.2f} | {OBJECTS / total:.0f} | {cpu:.2f} | {OBJECTS / cpu:.0f} | {percentile(latencies, 0.5) * 1000:.0f} / {percentile(latencies, 0.99) * 1000:.0f} "
              f"| {waits} | {rss:.0f} |")
    print()
    print(f"| operator | writes per new Deployment: children / status / events / other | Application status writes (all) | reads per object | reconciles per object | left after deleting all |")
    print("|---|---|---|---|---|---|")
    failures = []
    for peer, runs in results.items():
        def median(key):
            values = [r["counts"].get(key) for r in runs if isinstance(r["counts"].get(key), (int, float))]
            return statistics.median(values) if values else float("nan")
        c = {key: median(key) for key in ("children", "status", "events", "other writes", "reads", "reconciles", "left after deletion", "application status")}
        reconciled = f"{c['reconciles']:.2f}" if peer == "capstan" else "—"
        print(f"| {peer} | {c['children']:.2f} / {c['status']:.2f} / {c['events']:.2f} / {c['other writes']:.2f} | {c['application status'] * (OBJECTS + SAMPLES):.0f} "
              f"| {c['reads']:.3f} | {reconciled} | {c['left after deletion']:.0f} |")
        if peer == "capstan":
            for key, limit in BUDGET.items():
                if not c[key] <= limit + 1e-9:
                    failures.append(f"{key} per object {c[key]:.3f} > budget {limit}")
            if c["left after deletion"] > 0:
                failures.append(f"{c['left after deletion']:.0f} objects left after deleting every Deployment")
            others = {r["counts"]["other"] for r in runs if r["counts"].get("other")}
            if others:
                print(f"capstan's other writes: {'; '.join(sorted(others))}")
    if failures:
        print()
        print("REGRESSION: " + "; ".join(failures), flush=True)
    if len(medians) >= 2:
        print()
        print(f"throughput ratio capstan/kopf: {medians['kopf'][0] / medians['capstan'][0]:.2f}x; "
              f"CPU per object ratio kopf/capstan: {medians['kopf'][2] / medians['capstan'][2]:.2f}x; "
              f"memory ratio: {medians['capstan'][1] / medians['kopf'][1]:.2f}")
    if failures:
        sys.exit(1)
    return

if __name__ == "__main__":
    main()
