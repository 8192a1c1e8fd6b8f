#!/usr/bin/env python3
"""Writes hack/capstan.order: the functions the operator runs in Kubernetes mode, for the
linker to place side by side (lld --symbol-ordering-file; hack/build-image-binary uses it).

Every page of code a process has run stays resident, and the kernel maps code 64 KiB around
each page it faults in; the few MiB of functions the operator runs are spread over 30 MiB of
code, so most of its resident code is their neighbours. Placed together, they take a few MiB.

How: the binary (debug info stripped: valgrind 3.19 cannot read it) runs under callgrind
against hack/fake-apiserver through what an operator does on a cluster: leader election,
listing and watching, 100 Deployments with routes created, rolled out and made ready, new
versions, a child edited and one deleted behind its back, a reconcile requested, owners
deleted, then a graceful stop. Every function callgrind saw run, defined in the binary, is
written out, sorted by name: what matters for memory is that they sit together, and a sorted
list changes only where the code did when it is written again.

    hack/gen_order.py BINARY        # e.g. .build-image/release/capstan (hack/build-image-binary)

A function missing from the list (code changed since) is only placed after the listed ones:
regenerate when the list has gone stale, not for correctness.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_kube  # noqa: E402  (the fake's start-up and the objects of the benchmark)

OBJECTS = 100


def wait(what, condition, seconds=600):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


def exercise(binary, profile):
    root = tempfile.mkdtemp(prefix="capstan-order-")
    fake, api = bench_kube.start_fake(root)
    env = dict(os.environ, KUBECONFIG=f"{root}/kubeconfig")
    operator = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}", "--demangle=no", "--dump-instr=no",
         binary, "run", "--kube", "--leader-elect", "--kube-qps", "0", "--metrics-addr", "127.0.0.1:0", "--concurrency", "8"],
        stdout=subprocess.DEVNULL, stderr=open(f"{root}/operator.log", "w"), env=env)
    base = "/apis/capstan.dev/v1alpha1/namespaces/default"
    apps = "/apis/apps/v1/namespaces/default/deployments"
    merge = "application/merge-patch+json"
    try:
        application = bench_kube.application()
        application["spec"]["routes"] = [{"host": "web.example.com", "port": "http"}]
        api.request("POST", f"{base}/applications", application)
        names = [f"d{i:04d}" for i in range(OBJECTS)]
        for name in names:
            api.request("POST", f"{base}/deployments", bench_kube.deployment(name))
        wait("the children", lambda: api.count(apps) >= OBJECTS)
        # The cluster's Deployment controller reports the pods ready.
        for name in names[:20]:
            child = api.request("GET", f"{apps}/{name}")[1]
            status = {"status": {"observedGeneration": child["metadata"].get("generation", 1), "replicas": 1, "updatedReplicas": 1,
                                 "readyReplicas": 1, "availableReplicas": 1,
                                 "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                                                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}}
            api.request("PATCH", f"{apps}/{name}/status", status, merge)
        for name in names[:10]:
            api.request("PATCH", f"{base}/deployments/{name}", {"spec": {"version": "2.0.0"}}, merge)
        api.request("PATCH", f"{apps}/{names[20]}", {"spec": {"replicas": 5}}, merge)
        api.request("DELETE", f"/api/v1/namespaces/default/services/{names[21]}")
        api.request("PATCH", f"{base}/deployments/{names[22]}",
                    {"metadata": {"annotations": {"capstan.dev/reconcile-requested-at": "now"}}}, merge)
        wait("version 2.0.0", lambda: all("2.0.0" in api.request("GET", f"{apps}/{name}")[1]["spec"]["template"]["spec"]["containers"][0]["image"]
                                          for name in names[:10]))
        for name in names[-10:]:
            api.request("DELETE", f"{base}/deployments/{name}")
        wait("the deleted owners' children gone", lambda: api.count(apps) <= OBJECTS - 10)
        time.sleep(5)
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=300)  # callgrind writes its profile when the process exits
        except subprocess.TimeoutExpired:
            operator.kill()
        fake.terminate()
        fake.wait()
        shutil.rmtree(root, ignore_errors=True)


def functions(profile):
    """Names callgrind saw run (its name compression: `(id) name` the first time, `(id)` after);
    a recursion suffix ('2) is dropped."""
    names = {}
    with open(profile) as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                match = re.match(r"c?fn=\((\d+)\) (.*)", line.strip())
                if match:
                    names[match.group(1)] = re.sub(r"'\d+$", "", match.group(2))
    return set(names.values())


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    work = tempfile.mkdtemp(prefix="capstan-order-")
    try:
        stripped = f"{work}/capstan"
        shutil.copy(binary, stripped)
        subprocess.run(["strip", "--strip-debug", stripped], check=True)
        profile = f"{work}/callgrind.out"
        exercise(stripped, profile)
        ran = functions(profile)
        defined = set()
        listing = subprocess.run(["nm", "--defined-only", binary], check=True, capture_output=True, text=True).stdout
        for line in listing.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tTwW":
                defined.add(parts[2])
        ordered = sorted(ran & defined)
        with open(os.path.join(HERE, "capstan.order"), "w") as f:
            f.write("".join(name + "\n" for name in ordered))
        print(f"hack/capstan.order: {len(ordered)} functions")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
