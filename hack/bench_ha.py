#!/usr/bin/env python3
"""Leader failover and handoff (issue 5): two daemons with --leader-elect on one state
directory running the examples' hello Deployment.

- failover: kill -9 of the leader -> the follower's first reconcile after it leads;
- handoff: SIGTERM of the leader -> the follower's first reconcile after it leads.
The stopped daemon is started again as the new follower each time.

Environment: CAPSTAN_BIN (hack/bench sets it), RUNS (default 20), LEASE (default 15s: the
Kubernetes default; RENEW and RETRY default to 10s and 2s).
"""
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

BIN = os.environ.get("CAPSTAN_BIN", ".build/debug/capstan")
RUNS = int(os.environ.get("RUNS", "20"))
LEASE, RENEW, RETRY = os.environ.get("LEASE", "15s"), os.environ.get("RENEW", "10s"), os.environ.get("RETRY", "2s")


def main():
    root = tempfile.mkdtemp(prefix="capstan-bench-ha-")
    specs, state = f"{root}/specs", f"{root}/state"
    shutil.copytree("manifests/examples", specs)
    os.remove(f"{specs}/canary.yaml")
    daemons = {}

    def start(name):
        log = open(f"{root}/{name}.log", "a")
        daemons[name] = subprocess.Popen(
            [BIN, "run", "--spec-dir", specs, "--state-dir", state, "--metrics-addr", "127.0.0.1:0", "--leader-elect",
             "--lease-duration", LEASE, "--renew-deadline", RENEW, "--retry-period", RETRY, "--identity", name],
            stdout=subprocess.DEVNULL, stderr=log)

    def size(name):
        return os.path.getsize(f"{root}/{name}.log")

    def led_after(name, offset):
        """Seconds (monotonic) when `name` logged its first reconcile after leading, past `offset`."""
        with open(f"{root}/{name}.log") as f:
            f.seek(offset)
            text = f.read()
        at = text.find("leading: this daemon acts now")
        return at >= 0 and text.find("reconciled ", at) >= 0

    def leader():
        out = subprocess.run([BIN, "get", "leases", "--state-dir", state], capture_output=True, text=True).stdout
        for name in daemons:
            if f" {name} " in out:
                return name
        return None

    try:
        start("a")
        time.sleep(1)
        start("b")
        deadline = time.monotonic() + 60
        while leader() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        results = {"failover (kill -9)": [], "handoff (SIGTERM)": []}
        for run in range(RUNS * 2):
            kind = "failover (kill -9)" if run % 2 == 0 else "handoff (SIGTERM)"
            time.sleep(3)  # the follower is settled
            current = leader()
            other = "b" if current == "a" else "a"
            offset = size(other)
            start_time = time.monotonic()
            daemons[current].send_signal(signal.SIGKILL if run % 2 == 0 else signal.SIGTERM)
            while not led_after(other, offset):
                time.sleep(0.005)
                if time.monotonic() - start_time > 120:
                    raise SystemExit(f"no new leader after 120 s ({kind})")
            results[kind].append(time.monotonic() - start_time)
            daemons[current].wait()
            start(current)
        print(f"## leader election: lease {LEASE}, renew deadline {RENEW}, retry {RETRY}; {RUNS} runs each\n")
        print("| event | p50 s | p99 s | max s |\n|---|---|---|---|")
        for kind, samples in results.items():
            samples.sort()
            p99 = samples[min(len(samples) - 1, int(round(0.99 * (len(samples) - 1))))]
            print(f"| {kind} | {statistics.median(samples):.2f} | {p99:.2f} | {max(samples):.2f} |")
    finally:
        for process in daemons.values():
            if process.poll() is None:
                process.terminate()
                process.wait()
        subprocess.run([BIN, "down", "--state-dir", state], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
