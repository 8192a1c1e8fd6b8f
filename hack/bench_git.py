#!/usr/bin/env python3
"""Benchmarks of the git source (issue 22).

1. Push to reconcile: a repository served by `git daemon` on loopback; each run commits a change
   to one BackupSchedule's spec, pushes it, and sends a GitHub-signed push webhook. The clock
   runs from the webhook's send to the start of that object's reconcile (the daemon's log line
   "reconciled ... in D ms" at time T: started at T - D). The peer in the same run: the same
   change picked up by polling at a 10 s interval (no webhook), from the push.
2. A large repository: SPECS (default 10,000) BackupSchedules in as many files; the first read,
   then one-file commits through the webhook: the fetch, checkout and read of one commit (the
   daemon's "git: commit ... in D ms" line) must cost one changed file, not a re-read of all.
   The same at 10 specs in the same run.

Environment: CAPSTAN_BIN (hack/bench sets it), RUNS (default 20), SPECS (default 10000).
"""
import datetime
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

BIN = os.environ.get("CAPSTAN_BIN", ".build/debug/capstan")
RUNS = int(os.environ.get("RUNS", "20"))
SPECS = int(os.environ.get("SPECS", "10000"))
SECRET = "bench-secret"
GIT_ENV = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.com", GIT_COMMITTER_NAME="bench",
               GIT_COMMITTER_EMAIL="bench@example.com", GIT_CONFIG_NOSYSTEM="1")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(condition, seconds=120, interval=0.005, what="a condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def git(*arguments, cwd):
    subprocess.run(["git", *arguments], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)


def schedule(name, keep, destination):
    return f"""apiVersion: capstan.dev/v1alpha1
kind: BackupSchedule
metadata: {{name: {name}}}
spec:
  schedule: "@yearly"
  source: {{directory: {{path: /nonexistent-{name}}}}}
  destination: {{local: {{path: {destination}}}}}
  retention: {{keepLast: {keep}}}
"""


class Setup:
    """A work tree with `count` schedules, its bare remote, `git daemon`, and a daemon."""

    def __init__(self, count, webhook):
        self.root = tempfile.mkdtemp(prefix="capstan-bench-git-")
        self.work, self.remote = self.root + "/work", self.root + "/remote"
        os.makedirs(self.work + "/specs")
        os.makedirs(self.remote)
        self.destination = self.root + "/backups"
        os.makedirs(self.destination)
        for index in range(count):
            with open(f"{self.work}/specs/b{index}.yaml", "w") as handle:
                handle.write(schedule(f"b{index}", 1, self.destination))
        git("init", "--quiet", "--bare", self.remote + "/specs.git", cwd=self.root)
        git("init", "--quiet", "-b", "main", cwd=self.work)
        git("add", "-A", cwd=self.work)
        git("commit", "--quiet", "-m", "initial", cwd=self.work)
        git("push", "--quiet", self.remote + "/specs.git", "HEAD:refs/heads/main", cwd=self.work)
        self.git_port = free_port()
        exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
        self.git_daemon = subprocess.Popen([exec_path + "/git-daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={self.git_port}",
                                            f"--base-path={self.remote}", "--export-all", self.remote],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait(lambda: self.accepts(self.git_port), what="git daemon")
        self.hook_port = free_port() if webhook else None
        with open(self.root + "/secret", "w") as handle:
            handle.write(SECRET)
        arguments = [BIN, "run", "--git-url", f"git://127.0.0.1:{self.git_port}/specs.git", "--git-path", "specs",
                     "--git-interval", "1h" if webhook else "10s", "--state-dir", self.root + "/state", "--resync", "1h",
                     "--metrics-addr", "127.0.0.1:0"]
        if webhook:
            arguments += ["--webhook-addr", f"127.0.0.1:{self.hook_port}", "--webhook-secret-file", self.root + "/secret"]
        self.log_path = self.root + "/daemon.log"
        self.log = open(self.log_path, "w")
        started = time.monotonic()
        self.daemon = subprocess.Popen(arguments, stdout=self.log, stderr=subprocess.STDOUT)
        wait(lambda: len(self.lines("reconciled BackupSchedule/")) >= count, seconds=600, interval=0.05, what="the first read")
        self.first_read = time.monotonic() - started
        if webhook:
            wait(lambda: self.accepts(self.hook_port), what="the webhook listener")
        self.keep = {}

    @staticmethod
    def accepts(port):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def lines(self, text):
        with open(self.log_path) as handle:
            return [line for line in handle if text in line]

    def push(self, index):
        """Commits a change to b<index> and pushes it; returns the new commit."""
        self.keep[index] = self.keep.get(index, 1) % 9 + 1
        with open(f"{self.work}/specs/b{index}.yaml", "w") as handle:
            handle.write(schedule(f"b{index}", self.keep[index], self.destination))
        git("commit", "--quiet", "-am", f"b{index} keeps {self.keep[index]}", cwd=self.work)
        git("push", "--quiet", self.remote + "/specs.git", "HEAD:refs/heads/main", cwd=self.work)
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.work, capture_output=True, text=True).stdout.strip()

    def webhook(self, commit):
        body = json.dumps({"ref": "refs/heads/main", "after": commit, "repository": {"full_name": "bench/specs"}})
        signature = "sha256=" + hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
        connection = http.client.HTTPConnection("127.0.0.1", self.hook_port, timeout=10)
        connection.request("POST", "/hooks/git", body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": signature,
                                                        "Content-Type": "application/json"})
        status = connection.getresponse().status
        connection.close()
        if status != 202:
            raise SystemExit(f"webhook answered {status}")

    def reconcile_start(self, name, after):
        """The start of the first reconcile of `name` that ended after `after` (epoch seconds)."""
        pattern = re.compile(r"^(\S+) info reconciled BackupSchedule/default/" + re.escape(name) + r" in ([0-9.]+) ms")
        for line in self.lines(f"reconciled BackupSchedule/default/{name} "):
            match = pattern.match(line)
            if not match:
                continue
            text = match.group(1).rstrip("Z")
            if "." in text:
                head, fraction = text.split(".")
                text = head + "." + fraction[:6].ljust(6, "0")
            ended = datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp()
            if ended > after:
                return ended - float(match.group(2)) / 1000
        return None

    def stop(self):
        self.daemon.terminate()
        self.daemon.wait(timeout=60)
        self.git_daemon.kill()
        self.git_daemon.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def push_to_reconcile():
    hook = Setup(10, webhook=True)
    latencies = []
    try:
        for run in range(RUNS):
            index = run % 10
            commit = hook.push(index)
            sent = time.time()
            hook.webhook(commit)
            start = wait(lambda: hook.reconcile_start(f"b{index}", sent), seconds=30, what="the reconcile")
            latencies.append((start - sent) * 1000)
    finally:
        hook.stop()
    polled = Setup(10, webhook=False)
    polling = []
    try:
        for run in range(max(3, RUNS // 4)):
            index = run % 10
            time.sleep(random.uniform(0, 10))  # a push lands anywhere in the interval
            pushed = time.time()
            polled.push(index)
            start = wait(lambda: polled.reconcile_start(f"b{index}", pushed), seconds=40, what="the polled reconcile")
            polling.append((start - pushed) * 1000)
    finally:
        polled.stop()
    print("push -> reconcile start (ms)        runs   p50      p99      max")
    print(f"  webhook (GitHub-signed)           {len(latencies):4d}   {statistics.median(latencies):7.1f}  {percentile(latencies, 0.99):7.1f}  {max(latencies):7.1f}")
    print(f"  polling at a 10 s interval        {len(polling):4d}   {statistics.median(polling):7.1f}  {percentile(polling, 0.99):7.1f}  {max(polling):7.1f}")
    print(f"  ratio polling/webhook (p50)              {statistics.median(polling) / statistics.median(latencies):.0f}x")


def large_repository():
    print(f"\none-file commits (webhook to the read done, the daemon's own 'git: commit ... in D ms')")
    print("  specs    first read (s)   runs   p50 (ms)   p99 (ms)   files read per commit")
    for count in [10, SPECS]:
        setup = Setup(count, webhook=True)
        took, files = [], set()
        try:
            for run in range(min(RUNS, 10)):
                before = len(setup.lines("git: commit "))
                commit = setup.push(run % count)
                setup.webhook(commit)
                wait(lambda: len(setup.lines("git: commit ")) > before, seconds=60, what="the commit read")
                line = setup.lines("git: commit ")[-1]
                took.append(float(re.search(r" in ([0-9.]+) ?ms", line).group(1)))
                files.add(re.search(r", (\d+) file\(s\) changed", line).group(1) + ("" if "(full read)" not in line else " (full read)"))
        finally:
            setup.stop()
        print(f"  {count:6d}   {setup.first_read:13.1f}   {len(took):4d}   {statistics.median(took):8.1f}   {percentile(took, 0.99):8.1f}   {', '.join(sorted(files))}")


if __name__ == "__main__":
    push_to_reconcile()
    large_repository()
