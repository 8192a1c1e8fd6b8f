#!/usr/bin/env python3
"""The fault loop (issue 5): two daemons with --leader-elect on one state directory; each
iteration edits the specs (version, replicas, a Deployment added or removed), kills one daemon
with SIGKILL at a random moment (mid-rollout as often as not, leader or follower) and starts
it again; some iterations add another fault: a daemon started without --leader-elect beside
them (it must be refused at once, naming the holder), both daemons killed and a page of the
database's write-ahead log overwritten before they start again, or the leader frozen with
SIGSTOP past its lease and then resumed (it must exit at once without starting a reconcile: the
other daemon leads by then). After every iteration it waits
for the world to match the specs and checks:

- every Deployment in the specs is Ready at its version with `replicas` instances, observed at
  its generation, and its router port answers with that version;
- no instance is duplicated (one process per instance id, `replicas` per Deployment) and no
  process, release directory or inventory entry of a removed Deployment is left;
- every live instance of the state directory (found by its environment) has an inventory
  row, and every inventory row a live instance: nothing outside the inventory, none missing;
- at no moment did two daemons act at once: each daemon's leadership lasts from its
  "leading" line to its kill, its exit or the moment it was frozen, these intervals never
  overlap, and every reconcile of a daemon started inside one of its own intervals (a
  "reconciled X in N ms" line started N ms before it was written).

At the end the state directory is deleted under the running daemons: both must stop within a
second or two, and `capstan down` must still stop every instance.

    hack/faultloop.py [ITERATIONS] [--rotations N]   # default 50; hack/test runs a few

With --rotations N it then runs the rotation loop (RotationLoop below): N kills of a daemon in
the middle of SecretRotations.

Environment: CAPSTAN_BIN (default .build/debug/capstan), SEED (random seed, printed).
"""
import datetime
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.environ.get("CAPSTAN_BIN", ".build/debug/capstan")
ELECTION = ["--leader-elect", "--lease-duration", "2s", "--renew-deadline", "1500ms", "--retry-period", "500ms"]
CONVERGE_SECONDS = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stamp(line):
    """The wall-clock time at the start of a daemon log line, as seconds since the epoch."""
    try:
        return datetime.datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Loop:
    def __init__(self, iterations, seed):
        self.iterations = iterations
        self.random = random.Random(seed)
        self.root = tempfile.mkdtemp(prefix="capstan-faultloop-")
        self.specs, self.state = f"{self.root}/specs", f"{self.root}/state"
        os.makedirs(f"{self.specs}/apps")
        shutil.copytree("manifests/examples/apps/hello", f"{self.specs}/apps/hello")
        self.ports = {"web": free_port(), "extra": free_port()}
        self.daemons = {}       # name -> (process, incarnation)
        self.incarnations = []  # (identity, log path, killed or frozen at (wall clock) or None)
        self.wanted = {}

    # -- specs ---------------------------------------------------------------------------

    def write_specs(self):
        app = """apiVersion: capstan.dev/v1alpha1
kind: Application
metadata: {name: hello}
spec:
  source: {path: apps/hello}
  command: [python3, server.py]
  ports: [{name: http, containerPort: 8080}]
  healthCheck: {http: {path: /healthz, port: http}, interval: 1s, timeout: 1s, failureThreshold: 2}
"""
        with open(f"{self.specs}/app.yaml", "w") as f:
            f.write(app)
        for name in ("web", "extra"):
            path = f"{self.specs}/{name}.yaml"
            if name not in self.wanted:
                if os.path.exists(path):
                    os.remove(path)
                continue
            version, replicas = self.wanted[name]
            with open(path + ".tmp", "w") as f:
                f.write(f"""apiVersion: capstan.dev/v1alpha1
kind: Deployment
metadata: {{name: {name}}}
spec:
  application: hello
  version: "{version}"
  replicas: {replicas}
  port: {self.ports[name]}
  progressDeadline: 30s
""")
            os.rename(path + ".tmp", path)

    def edit(self):
        self.wanted["web"] = (str(self.random.randint(1, 3)), self.random.randint(1, 3))
        if self.random.random() < 0.4:
            if "extra" in self.wanted:
                del self.wanted["extra"]
            else:
                self.wanted["extra"] = (str(self.random.randint(1, 3)), self.random.randint(1, 2))
        elif "extra" in self.wanted:
            self.wanted["extra"] = (str(self.random.randint(1, 3)), self.wanted["extra"][1])
        self.write_specs()

    # -- daemons -------------------------------------------------------------------------

    def start(self, name):
        identity = f"{name}-{len(self.incarnations) + 1}"
        log = f"{self.root}/{identity}.log"
        process = subprocess.Popen(
            [BIN, "run", "--spec-dir", self.specs, "--state-dir", self.state, "--metrics-addr", "127.0.0.1:0",
             "--resync", "10s", "--identity", identity] + ELECTION,
            stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        self.daemons[name] = (process, len(self.incarnations))
        self.incarnations.append([identity, log, None])

    def kill(self, name):
        process, index = self.daemons[name]
        process.send_signal(signal.SIGKILL)
        self.incarnations[index][2] = time.time()
        process.wait()

    def leader(self):
        out = subprocess.run([BIN, "get", "leases", "--state-dir", self.state], capture_output=True, text=True).stdout
        for name, (_, index) in self.daemons.items():
            if f" {self.incarnations[index][0]} " in out:
                return name
        return None

    # -- checks --------------------------------------------------------------------------

    def instance_processes(self):
        """CAPSTAN_INSTANCE -> pids of live process group leaders marked as this state dir's."""
        found = {}
        marker = f"CAPSTAN_STATE={self.state}".encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                continue
            if marker not in environ or fields[0] == "Z" or fields[2] != entry:
                continue
            for variable in environ:
                if variable.startswith(b"CAPSTAN_INSTANCE="):
                    found.setdefault(variable.split(b"=", 1)[1].decode(), []).append(int(entry))
        return found

    def deployment(self, name):
        run = subprocess.run([BIN, "get", "deployment", name, "-o", "json", "--state-dir", self.state], capture_output=True, text=True)
        return json.loads(run.stdout) if run.returncode == 0 else None

    def answer(self, port):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=2) as response:
                return response.read().decode().strip()
        except OSError:
            return None

    def problems(self):
        """What differs from the specs now (empty when converged)."""
        found = []
        processes = self.instance_processes()
        for instance, pids in processes.items():
            if len(pids) > 1:
                found.append(f"instance {instance} runs {len(pids)} times: {pids}")
        for name in ("web", "extra"):
            mine = [i for i in processes if i.startswith(name + "-")]
            if name not in self.wanted:
                if mine:
                    found.append(f"{name} was removed but {len(mine)} instance(s) run")
                if os.path.exists(f"{self.state}/deployments/default/{name}"):
                    found.append(f"{name} was removed but its releases are left")
                continue
            version, replicas = self.wanted[name]
            if len(mine) != replicas:
                found.append(f"{name}: {len(mine)} instance processes, want {replicas}")
            object = self.deployment(name)
            if object is None:
                found.append(f"{name}: not in the store")
                continue
            status, generation = object.get("status", {}), object["metadata"].get("generation")
            ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
            if status.get("observedGeneration") != generation or ready.get("status") != "True":
                found.append(f"{name}: not Ready at generation {generation}: {ready.get('reason')} {ready.get('message')}")
            if status.get("version") != version or status.get("readyReplicas") != replicas or status.get("replicas") != replicas:
                found.append(f"{name}: status says version {status.get('version')}, {status.get('readyReplicas')}/{status.get('replicas')} ready; want {version}, {replicas}")
            if self.answer(self.ports[name]) != version:
                found.append(f"{name}: port {self.ports[name]} does not answer {version}")
        try:
            database = sqlite3.connect(f"file:{self.state}/capstan.db?mode=ro", uri=True)
            try:
                owners = database.execute("SELECT DISTINCT type, owner_kind, owner_name FROM inventory").fetchall()
                recorded = {row[0] for row in database.execute("SELECT id FROM inventory WHERE type = 'instance'")}
            finally:
                database.close()
        except sqlite3.Error as error:
            # A store being created again (after a damaged WAL lost its first commits) has no
            # tables for a moment: not converged yet.
            return found + [f"state store not readable yet: {error}"]
        for type, kind, owner in owners:
            if kind == "Deployment" and owner not in self.wanted:
                found.append(f"inventory still holds a {type} of removed Deployment {owner}")
        for instance in sorted(set(processes) - recorded):
            found.append(f"instance {instance} runs but no inventory row knows it")
        for instance in sorted(recorded - set(processes)):
            found.append(f"inventory row {instance} has no live instance")
        return found

    def converge(self, iteration):
        deadline = time.monotonic() + CONVERGE_SECONDS
        started = time.monotonic()
        while True:
            problems = self.problems()
            if not problems:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise SystemExit(f"iteration {iteration}: not converged after {CONVERGE_SECONDS} s:\n  " + "\n  ".join(problems)
                                 + f"\nlogs in {self.root}")
            time.sleep(0.2)

    def check_no_overlap(self):
        """Leadership intervals from the logs never overlap; reconciles start inside them."""
        intervals = []  # (start, end, identity)
        for identity, log, ended in self.incarnations:
            with open(log) as f:
                lines = f.read().splitlines()
            start = None
            spans = []
            reconciles = []  # (started at, line)
            for line in lines:
                at = stamp(line)
                if at is None:
                    continue
                if "leading: this daemon acts now" in line:
                    start = at
                elif start is not None and ("released lease" in line or "lost the lease" in line or "lease lapsed" in line
                                            or line.endswith(" info stopped")):
                    spans.append((start, at))
                    start = None
                elif "reconciled " in line or "reconcile of " in line:
                    took = line.rsplit(" in ", 1)[-1] if "reconciled " in line else ""
                    began = at - (int(took[:-3]) / 1000 if took.endswith(" ms") and took[:-3].isdigit() else 0)
                    reconciles.append((began, line))
            if start is not None:
                spans.append((start, ended if ended is not None else time.time()))
            if ended is not None:  # killed or frozen: whatever it logged later, it led until then
                spans = [(s, min(e, ended)) for s, e in spans if s <= ended]
            for began, line in reconciles:
                if not any(s - 0.002 <= began <= e + 0.002 for s, e in spans):
                    raise SystemExit(f"{identity} started a reconcile while not leading: {line}")
            intervals += [(s, e, identity) for s, e in spans]
        intervals.sort()
        for (s1, e1, a), (s2, e2, b) in zip(intervals, intervals[1:]):
            if s2 < e1:
                raise SystemExit(f"{a} and {b} acted at once: {a} led until {e1:.3f}, {b} from {s2:.3f}")
        return len(intervals)

    # -- the loop ------------------------------------------------------------------------

    def lone_daemon_is_refused(self):
        """A daemon without --leader-elect beside electing ones must not act: refused at once."""
        run = subprocess.run([BIN, "run", "--spec-dir", self.specs, "--state-dir", self.state, "--metrics-addr", "127.0.0.1:0"],
                             capture_output=True, text=True, timeout=30)
        if run.returncode != 2 or "in use by a daemon (pid" not in run.stderr:
            raise SystemExit(f"a daemon without --leader-elect was not refused (exit {run.returncode}): {run.stderr[-500:]}")

    def freeze_leader(self, leader):
        """SIGSTOP the leader past its lease, SIGCONT it: it must exit non-zero at once."""
        process, index = self.daemons[leader]
        process.send_signal(signal.SIGSTOP)
        self.incarnations[index][2] = time.time()
        time.sleep(3.5)  # the 2 s lease expires; the other daemon takes over
        process.send_signal(signal.SIGCONT)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{leader} went on after it was frozen past its lease")
        if process.returncode == 0:
            raise SystemExit(f"{leader} exited 0 after it was frozen past its lease")
        self.start(leader)

    def damage_wal(self):
        """Both daemons killed, a page of the write-ahead log overwritten, both started again."""
        for name in list(self.daemons):
            self.kill(name)
        wal = f"{self.state}/capstan.db-wal"
        size = os.path.getsize(wal) if os.path.exists(wal) else 0
        where = "no WAL to damage"
        if size > 8192:
            offset = self.random.randrange(32, size - 4096)
            with open(wal, "r+b") as f:
                f.seek(offset)
                f.write(bytes(self.random.getrandbits(8) for _ in range(4096)))
            where = f"4 KiB at offset {offset} of {size}"
        check = subprocess.run([BIN, "get", "deployments", "--state-dir", self.state], capture_output=True, text=True)
        if "not a healthy SQLite database" in check.stderr:
            # Refused as damaged: the advice is followed (instances stopped first, found by
            # their environment; then the store moved aside), never an orphan left behind.
            subprocess.run([BIN, "down", "--grace", "2s", "--state-dir", self.state], capture_output=True)
            os.rename(self.state, self.state + f".damaged-{time.time_ns()}")
            where += ", store refused as damaged and replaced"
        for name in ("a", "b"):
            self.start(name)
        return where

    def all_hold_the_lock(self):
        """Every running daemon has the lifetime lock open (it takes the directory's identity next)."""
        lock = os.path.realpath(f"{self.state}/daemon.lock")
        for process, _ in self.daemons.values():
            if process.poll() is not None:
                continue
            try:
                fds = os.listdir(f"/proc/{process.pid}/fd")
                if not any(os.readlink(f"/proc/{process.pid}/fd/{fd}") == lock for fd in fds):
                    return False
            except OSError:
                return False
        return True

    def remove_state_directory(self):
        """The state directory deleted under the running daemons: they stop, nothing is orphaned."""
        # A daemon started a moment ago may not have opened the directory yet (one that opens
        # it after the deletion makes a new one, rightly): wait until each holds the lifetime
        # lock, which it takes just before the directory's identity.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.all_hold_the_lock():
            time.sleep(0.05)
        if not self.all_hold_the_lock():
            raise SystemExit("a daemon never took the state directory's lifetime lock")
        time.sleep(0.3)
        before = self.instance_processes()
        shutil.rmtree(self.state)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.poll() is None for p, _ in self.daemons.values()):
            time.sleep(0.05)
        alive = [name for name, (p, _) in self.daemons.items() if p.poll() is None]
        if alive:
            raise SystemExit(f"daemons {alive} kept running after their state directory was deleted")
        for name, (process, index) in self.daemons.items():
            self.incarnations[index][2] = time.time()
            if process.returncode == 0:
                raise SystemExit(f"daemon {name} exited 0 after its state directory was deleted")
        if set(self.instance_processes()) != set(before):
            raise SystemExit("instances changed when the state directory went away")
        subprocess.run([BIN, "down", "--grace", "2s", "--state-dir", self.state], capture_output=True)
        deadline = time.monotonic() + 15
        while self.instance_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.instance_processes():
            raise SystemExit(f"capstan down left instances of a deleted state directory: {self.instance_processes()}")
        return len(before)

    def run(self):
        self.wanted = {"web": ("1", 2)}
        self.write_specs()
        self.start("a")
        self.start("b")
        durations = []
        for iteration in range(1, self.iterations + 1):
            self.edit()
            time.sleep(self.random.uniform(0, 2.5))
            leader = self.leader()
            fault = self.random.random()
            if fault < 0.15:
                what = "damaged the WAL: " + self.damage_wal()
            elif fault < 0.27 and leader:
                self.freeze_leader(leader)
                what = f"froze {leader} (leader) past its lease"
            else:
                victim = leader if (leader and self.random.random() < 0.7) else self.random.choice(["a", "b"])
                self.kill(victim)
                if self.random.random() < 0.5:
                    time.sleep(self.random.uniform(0, 1.5))
                self.start(victim)
                what = f"killed {victim}{' (leader)' if victim == leader else ''}"
                if fault > 0.8:
                    self.lone_daemon_is_refused()
                    what += ", a lone daemon refused"
            durations.append(self.converge(iteration))
            print(f"iteration {iteration}: {what}, specs {self.wanted}, converged in {durations[-1]:.1f} s", flush=True)
        leaderships = self.check_no_overlap()
        stopped = self.remove_state_directory()
        durations.sort()
        print(f"faultloop: {self.iterations} iterations passed; {leaderships} leaderships, none overlapping; "
              f"convergence p50 {durations[len(durations) // 2]:.1f} s, max {durations[-1]:.1f} s; "
              f"state directory deleted: daemons stopped, {stopped} instance(s) stopped by capstan down")

    def close(self, keep):
        for process, _ in self.daemons.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        subprocess.run([BIN, "down", "--grace", "2s", "--state-dir", self.state], capture_output=True)
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


# The app of the rotation loop: it "logs in" at start (its DB_PASSWORD must be what the
# database file holds, else it exits 1 and is never ready) and keeps that session: every
# request is served while it runs, as a database session outlives a password change.
DB_APP = r"""
import os, signal, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
with open(os.environ["DB_FILE"]) as f:
    if f.read() != os.environ["DB_PASSWORD"]:
        print("login failed", flush=True)
        sys.exit(1)
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
"""


# The same with a real PostgreSQL (hack/testapps/pg_session_app.py): the login is a psql session
# opened at start, and every request runs a query on it.
PG_APP = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "testapps", "pg_session_app.py")).read()


def pg_binary(name):
    for candidate in (f"/usr/local/bin/{name}", f"/usr/bin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    versions = sorted(os.listdir("/usr/lib/postgresql"), reverse=True) if os.path.isdir("/usr/lib/postgresql") else []
    for version in versions:
        path = f"/usr/lib/postgresql/{version}/bin/{name}"
        if os.access(path, os.X_OK):
            return path
    return None


class Postgres:
    """initdb and pg_ctl in a directory, as `nobody` when run as root; `app` logs in over TCP
    with a password, `postgres` over the private socket without one."""

    def __init__(self, root):
        self.dir, self.port = f"{root}/pg", free_port()
        self.socket = f"{self.dir}/sock"
        os.makedirs(self.socket)
        self.user = ["runuser", "-u", "nobody", "--"] if os.getuid() == 0 else []
        if self.user:
            os.chmod(root, 0o711)  # mkdtemp makes it 0700: nobody must reach its own directory
            subprocess.run(["chown", "-R", "nobody", self.dir], check=True)
        subprocess.run(self.user + [pg_binary("initdb"), "-D", f"{self.dir}/data", "-U", "postgres", "--auth-local=trust",
                                    "--auth-host=scram-sha-256", "-E", "UTF8"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        subprocess.run(self.user + [pg_binary("pg_ctl"), "-D", f"{self.dir}/data", "-l", f"{self.dir}/server.log", "-w", "start",
                                    "-o", f"-p {self.port} -k {self.socket} -c listen_addresses=127.0.0.1 -c fsync=off"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        for sql in ("CREATE USER app", "CREATE DATABASE app OWNER app"):
            subprocess.run([pg_binary("psql"), "-X", "-q", "-h", self.socket, "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-c", sql],
                           stdout=subprocess.DEVNULL, check=True)

    def logs_in(self, password):
        return subprocess.run([pg_binary("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "app", "-d", "app", "-c", "select 1"],
                              env=dict(os.environ, PGPASSWORD=password), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    def stop(self):
        subprocess.run(self.user + [pg_binary("pg_ctl"), "-D", f"{self.dir}/data", "-m", "immediate", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class RotationLoop:
    """SecretRotation under kill -9 (issue 18): each iteration asks for a rotation (a third of
    them with a verify that fails), kills the daemon at a random moment of it, starts it again
    and waits until it settles. Every time the rotation must end rotated (one version more) or
    rolled back (the same version, Stalled VerificationFailed), the database (a file the apply
    step writes) must hold the vault's current password, the app must log in with it and serve,
    and the versions in the status must be those in the vault."""

    def __init__(self, iterations, seed):
        self.iterations = iterations
        self.random = random.Random(seed)
        self.root = tempfile.mkdtemp(prefix="capstan-rotationloop-")
        self.specs, self.state = f"{self.root}/specs", f"{self.root}/state"
        self.db, self.fail_flag = f"{self.root}/db-password", f"{self.root}/verify-fails"
        self.port = free_port()
        self.daemon = None
        os.makedirs(f"{self.specs}/db")
        # A real PostgreSQL when it is installed (hack/test installs it); else a file.
        self.postgres = Postgres(self.root) if pg_binary("initdb") and pg_binary("pg_ctl") else None
        with open(f"{self.specs}/db/app.py", "w") as f:
            f.write(PG_APP if self.postgres else DB_APP)
        with open(self.db, "w") as f:
            f.write("")
        if self.postgres:
            psql, pg = pg_binary("psql"), self.postgres
            env = f'  - {{name: DB_PORT, value: "{pg.port}"}}'
            apply = (f"""echo "ALTER USER app PASSWORD '$NEW_PASSWORD';" | {psql} -X -q -v ON_ERROR_STOP=1 """
                     f"""-h {pg.socket} -p {pg.port} -U postgres -d postgres""")
            verify = (f"""PGPASSWORD="$NEW_PASSWORD" {psql} -X -q -h 127.0.0.1 -p {pg.port} -U app -d app -c "select 1" """
                      f"""&& test ! -e {self.fail_flag}""")
        else:
            env = ""
            apply = f"""printf %s "$NEW_PASSWORD" > {self.db}.tmp && mv {self.db}.tmp {self.db}"""
            verify = f"""test "$(cat {self.db})" = "$NEW_PASSWORD" && test ! -e {self.fail_flag}"""
        # The commands as JSON (valid YAML): no quoting of quotes by hand.
        apply, verify = json.dumps(["sh", "-c", apply]), json.dumps(["sh", "-c", verify])
        with open(f"{self.specs}/db.yaml", "w") as f:
            f.write(f"""apiVersion: capstan.dev/v1alpha1
kind: Application
metadata: {{name: db}}
spec:
  source: {{path: db}}
  command: [python3, app.py]
  ports: [{{name: http, containerPort: 8080}}]
  healthCheck: {{http: {{path: /, port: http}}, interval: 1s, timeout: 1s, failureThreshold: 2}}
  env:
  - {{name: DB_FILE, value: "{self.db}"}}
{env}
  - name: DB_PASSWORD
    valueFrom: {{secretKeyRef: {{name: db-credentials, key: password}}}}
---
apiVersion: capstan.dev/v1alpha1
kind: Deployment
metadata: {{name: db}}
spec:
  application: db
  version: "1"
  replicas: 2
  port: {self.port}
  strategy: {{type: RollingUpdate, maxSurge: 1, maxUnavailable: 0}}
  progressDeadline: 20s
---
apiVersion: capstan.dev/v1alpha1
kind: SecretRotation
metadata: {{name: db-credentials}}
spec:
  secretName: db-credentials
  keys:
  - {{name: password, generator: {{type: random, length: 16}}}}
  keepVersions: 2
  apply:
    exec: {{command: {apply}}}
  restartDeployments: [db]
  verify:
    exec: {{command: {verify}}}
""")

    def start(self):
        self.daemon = subprocess.Popen(
            [BIN, "run", "--spec-dir", self.specs, "--state-dir", self.state, "--metrics-addr", "127.0.0.1:0", "--resync", "1h"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.root}/daemon.log", "a"))

    def kill(self):
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait()

    def get(self, reference):
        out = subprocess.run([BIN, "get", reference, "-o", "json", "--state-dir", self.state], capture_output=True, text=True).stdout
        return json.loads(out) if out.startswith("{") else None

    def password(self):
        return subprocess.run([BIN, "secret", "get", "db-credentials", "--key", "password", "--reveal", "--state-dir", self.state],
                              capture_output=True, text=True).stdout

    @staticmethod
    def condition(obj, kind):
        for c in (obj or {}).get("status", {}).get("conditions", []):
            if c.get("type") == kind and c.get("status") == "True":
                return c.get("reason")
        return None

    def settled(self, since):
        """The request was taken and its rotation (or rollback) finished after `since` (the last
        rotation's time before the request; events are not counted: one recorded after a status
        write is lost when the daemon dies between them), the Deployment rolled out its token."""
        rotation, deployment = self.get("secretrotation/db-credentials"), self.get("deployment/db")
        if not rotation or not deployment:
            return None
        status, dstatus = rotation.get("status", {}), deployment.get("status", {})
        if "rotation" in status or status.get("currentVersion") is None:
            return None
        if since is not None and status.get("lastRotationTime") == since:
            return None
        token = status.get("restartToken")
        if token and dstatus.get("secretRestarts", {}).get("db-credentials") != token:
            return None
        if dstatus.get("phase") != "Succeeded" or dstatus.get("readyReplicas") != 2 or dstatus.get("replicas") != 2:
            return None
        return rotation

    def converge(self, iteration, since=None):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rotation = self.settled(since)
            if rotation:
                return rotation
            time.sleep(0.2)
        raise SystemExit(f"rotation iteration {iteration}: did not settle in 120 s; see {self.root}")

    def check(self, iteration, rotation, before, fails):
        status = rotation["status"]
        current = status["currentVersion"]
        if fails:
            if current != before or self.condition(rotation, "Stalled") != "VerificationFailed":
                raise SystemExit(f"rotation iteration {iteration}: a failing verify should roll back to {before}: {json.dumps(status)}")
        elif current != before + 1 or self.condition(rotation, "Ready") is None:
            raise SystemExit(f"rotation iteration {iteration}: expected version {before + 1}, ready: {json.dumps(status)}")
        password = self.password()
        if self.postgres:
            if not self.postgres.logs_in(password):
                raise SystemExit(f"rotation iteration {iteration}: PostgreSQL does not take the vault's current password (version {current})")
        else:
            with open(self.db) as f:
                if f.read() != password:
                    raise SystemExit(f"rotation iteration {iteration}: the database does not hold the vault's current password (version {current})")
        listed = subprocess.run([BIN, "secret", "get", "db-credentials", "--state-dir", self.state], capture_output=True, text=True).stdout
        in_vault = sorted(int(line.split()[0]) for line in listed.splitlines() if line.startswith("  ") and line.split()[0].isdigit())
        if in_vault != sorted(v["version"] for v in status.get("versions", [])):
            raise SystemExit(f"rotation iteration {iteration}: vault versions {in_vault} differ from the status: {status.get('versions')}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5) as response:
                if response.status != 200:
                    raise SystemExit(f"rotation iteration {iteration}: the app answered {response.status}")
        except OSError as error:
            raise SystemExit(f"rotation iteration {iteration}: the app does not answer: {error}")
        return current

    def run(self):
        self.start()
        current = self.converge(0)["status"]["currentVersion"]
        outcomes = {"rotated": 0, "rolled back": 0}
        steps = {}
        for iteration in range(1, self.iterations + 1):
            fails = self.random.random() < 0.33
            if fails:
                open(self.fail_flag, "w").close()
            elif os.path.exists(self.fail_flag):
                os.remove(self.fail_flag)
            since = ((self.get("secretrotation/db-credentials") or {}).get("status", {})).get("lastRotationTime")
            subprocess.run([BIN, "rotate", "secretrotation/db-credentials", "--wait", "0", "--state-dir", self.state], capture_output=True, check=True)
            time.sleep(self.random.uniform(0, 1.2))  # a rotation here takes about a second
            during = ((self.get("secretrotation/db-credentials") or {}).get("status", {}).get("rotation") or {}).get("step", "no step")
            self.kill()
            steps[during] = steps.get(during, 0) + 1
            if self.random.random() < 0.3:
                time.sleep(self.random.uniform(0, 1.0))
            self.start()
            started = time.monotonic()
            rotation = self.converge(iteration, since)
            current = self.check(iteration, rotation, current, fails)
            outcomes["rolled back" if fails else "rotated"] += 1
            print(f"rotation iteration {iteration}: killed at {during}, {'rolled back' if fails else 'rotated'} to version {current}, "
                  f"settled in {time.monotonic() - started:.1f} s", flush=True)
        print(f"rotationloop ({'PostgreSQL' if self.postgres else 'a file as the database'}): "
              f"{self.iterations} kills (at {', '.join(f'{k}: {v}' for k, v in sorted(steps.items()))}), "
              f"{outcomes['rotated']} rotated, {outcomes['rolled back']} rolled back; "
              f"the database always took the vault's current password and the app served", flush=True)

    def close(self, keep):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        subprocess.run([BIN, "down", "--grace", "2s", "--state-dir", self.state], capture_output=True)
        if self.postgres:
            self.postgres.stop()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


def main():
    arguments = sys.argv[1:]
    rotations = 0
    if "--rotations" in arguments:
        index = arguments.index("--rotations")
        rotations = int(arguments[index + 1])
        del arguments[index:index + 2]
    iterations = int(arguments[0]) if arguments else 50
    seed = int(os.environ.get("SEED", str(random.randrange(1 << 30))))
    print(f"faultloop: {iterations} iterations, {rotations} rotation kills, SEED={seed}", flush=True)
    for loop in ([Loop(iterations, seed)] if iterations else []) + ([RotationLoop(rotations, seed)] if rotations else []):
        passed = False
        try:
            loop.run()
            passed = True
        finally:
            loop.close(keep=not passed)


if __name__ == "__main__":
    main()
