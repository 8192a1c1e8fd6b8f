#!/usr/bin/env python3
"""Benchmarks of BackupSchedule on the local platform (issue 19), side by side in one run.

1. A 1 GiB directory (half random bytes, half text) to a local directory: a Capstan backup
   (tar -> gzip -> SHA-256 -> file, in the `capstan backup-job` child) from `capstan backup run`
   to the run's record, against `tar -C DIR -czf - . | tee OUT | sha256sum` (the same work
   without Capstan). With verify off (the same work) and on (reads it back and lists the tar:
   reported apart).
2. The same to S3 (moto's server, hack/testapps/s3_server.py) against
   `tar -C DIR -czf - . | aws s3 cp - s3://...` to the same server.
3. Peak RSS (VmHWM) of the job process and of the daemon during the 1 GiB backups.

Environment: CAPSTAN_BIN (hack/bench sets it), RUNS (default 3), SIZE_MIB (default 1024).
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

BIN = os.environ.get("CAPSTAN_BIN", ".build/debug/capstan")
RUNS = int(os.environ.get("RUNS", "3"))
SIZE_MIB = int(os.environ.get("SIZE_MIB", "1024"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data(path):
    os.makedirs(path, exist_ok=True)
    text = ("capstan backs this line up, compressible as logs and dumps are; " * 64 + "\n").encode()
    for i in range(SIZE_MIB // 4):
        with open(os.path.join(path, f"file-{i:04d}.bin"), "wb") as f:
            f.write(os.urandom(2 << 20))
            f.write((text * ((2 << 20) // len(text) + 1))[: 2 << 20])


def capstan(args, state):
    return subprocess.run([BIN] + args + ["--state-dir", state], capture_output=True, text=True)


class Peak:
    """Samples VmHWM of the daemon and of its backup-job children until stopped."""

    def __init__(self, daemon_pid):
        self.daemon_pid, self.job, self.daemon, self.stop = daemon_pid, 0, 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @staticmethod
    def hwm(pid):
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def run(self):
        while not self.stop:
            self.daemon = max(self.daemon, self.hwm(self.daemon_pid))
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read()
                except OSError:
                    continue
                if b"backup-job" in cmd:
                    self.job = max(self.job, self.hwm(pid))
            time.sleep(0.05)

    def done(self):
        self.stop = True
        self.thread.join()


def backups(state, name):
    out = capstan(["get", f"backupschedule/{name}", "-o", "json"], state).stdout
    try:
        return json.loads(out).get("status", {}).get("backups", [])
    except ValueError:
        return []


def capstan_run(state, name):
    before = len(backups(state, name))
    start = time.monotonic()
    result = capstan(["backup", "run", f"backupschedule/{name}"], state)
    assert result.returncode == 0, result.stderr
    while True:
        records = backups(state, name)
        if len(records) > before:
            elapsed = time.monotonic() - start
            assert records[0]["outcome"] == "Succeeded", records[0]
            return elapsed
        time.sleep(0.05)


def main():
    work = tempfile.mkdtemp(prefix="capstan-bench-backup-")
    data, dest, state, specs = (os.path.join(work, d) for d in ("data", "dest", "state", "specs"))
    for d in (dest, specs):
        os.makedirs(d)
    print(f"making {SIZE_MIB} MiB of data ...", flush=True)
    make_data(data)
    info = os.path.join(work, "s3.json")
    s3 = subprocess.Popen(["python3", os.path.join(ROOT, "hack/testapps/s3_server.py"), str(free_port()), info],
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(info):
        time.sleep(0.1)
    s3info = json.load(open(info))
    subprocess.run([BIN, "secret", "set", "s3", "--from-literal", f"credentials={s3info['accessKeyId']}:{s3info['secretAccessKey']}",
                    "--state-dir", state], check=True, capture_output=True)
    spec = ""
    for name, destination, verify in [("local", f"{{local: {{path: {dest}}}}}", "false"), ("local-verified", f"{{local: {{path: {dest}}}}}", "true"),
                                      ("remote", f'{{s3: {{endpoint: "{s3info["endpoint"]}", bucket: {s3info["bucket"]}, prefix: "bench-", '
                                                 f'credentialsFrom: {{secretKeyRef: {{name: s3, key: credentials}}}}}}}}', "false")]:
        spec += (f"apiVersion: capstan.dev/v1alpha1\nkind: BackupSchedule\nmetadata: {{name: {name}}}\nspec:\n  schedule: '@yearly'\n"
                 f"  source: {{directory: {{path: {data}}}}}\n  destination: {destination}\n  verify: {verify}\n  retention: {{keepLast: 1}}\n---\n")
    open(os.path.join(specs, "backups.yaml"), "w").write(spec)
    daemon = subprocess.Popen([BIN, "run", "--spec-dir", specs, "--state-dir", state, "--metrics-addr", "127.0.0.1:0"],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "daemon.log"), "w"))
    while capstan(["get", "backupschedule/remote"], state).returncode != 0:
        time.sleep(0.1)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=s3info["accessKeyId"], AWS_SECRET_ACCESS_KEY=s3info["secretAccessKey"], AWS_DEFAULT_REGION="us-east-1")
    results = {k: [] for k in ("capstan local", "pipeline local", "capstan local verified", "capstan s3", "aws s3 cp")}
    peak = Peak(daemon.pid)
    try:
        for run in range(RUNS):
            order = ["capstan", "pipeline"] if run % 2 == 0 else ["pipeline", "capstan"]
            for who in order:
                if who == "capstan":
                    results["capstan local"].append(capstan_run(state, "local"))
                    results["capstan s3"].append(capstan_run(state, "remote"))
                else:
                    start = time.monotonic()
                    subprocess.run(f"tar -C {data} -czf - . | tee {dest}/pipeline.tar.gz | sha256sum > /dev/null", shell=True, check=True)
                    results["pipeline local"].append(time.monotonic() - start)
                    os.unlink(f"{dest}/pipeline.tar.gz")
                    start = time.monotonic()
                    subprocess.run(f"tar -C {data} -czf - . | aws --endpoint-url {s3info['endpoint']} s3 cp - s3://{s3info['bucket']}/aws-cp.tar.gz",
                                   shell=True, check=True, env=env, stdout=subprocess.DEVNULL)
                    results["aws s3 cp"].append(time.monotonic() - start)
                    subprocess.run(f"aws --endpoint-url {s3info['endpoint']} s3 rm s3://{s3info['bucket']}/aws-cp.tar.gz", shell=True, env=env,
                                   stdout=subprocess.DEVNULL)
            results["capstan local verified"].append(capstan_run(state, "local-verified"))
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in results.items()), flush=True)
    finally:
        peak.done()
        daemon.terminate()
        daemon.wait()
        s3.stdin.close()
        s3.wait()
    med = {k: statistics.median(v) for k, v in results.items()}
    size = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data))
    print(f"\n{size / 2**30:.2f} GiB directory, {RUNS} runs, medians (wall time):")
    print(f"| | Capstan | pipeline | ratio |")
    print(f"|---|---|---|---|")
    print(f"| to a local directory | {med['capstan local']:.1f} s | {med['pipeline local']:.1f} s (tar czf \\| tee \\| sha256sum) | {med['capstan local'] / med['pipeline local']:.2f}x |")
    print(f"| to S3 (moto) | {med['capstan s3']:.1f} s | {med['aws s3 cp']:.1f} s (tar czf \\| aws s3 cp -) | {med['capstan s3'] / med['aws s3 cp']:.2f}x |")
    print(f"| local, verify: true (read back, tar listed) | {med['capstan local verified']:.1f} s | | |")
    print(f"\npeak RSS: backup job {peak.job / 2**20:.0f} MiB, daemon {peak.daemon / 2**20:.0f} MiB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
