"""Many hosts on one machine: the dispatcher spread over Linux network namespaces, scaled, and cut off.

    sudo .venv/bin/python scripts/many_hosts.py                 # everything, about 4 minutes on 2 cores
    sudo .venv/bin/python scripts/many_hosts.py --json out.json # and the outcome as JSON (the test reads it)

Each host is a network namespace with one address on 10.231.0.0/24, its ``eth0`` a veth pair whose
other end is on a bridge in a switch namespace of its own; this script talks to them from a client
namespace on the same switch, so no traffic enters or leaves the machine's own network stack.

- ``store`` (.1): Redis and PostgreSQL (the task store);
- ``api`` (.2): ``python -m dispatcher serve``;
- ``worker1``-``worker3`` (.11-.13): ``python -m dispatcher worker``, one each;
- ``functions1``-``functions3`` (.21-.23): ``python -m serverless.runtime platform``, each serving
  the test probe as a detector that sleeps 50 ms per frame, with 2 workers: one replica per host.
  ``NUCLIO_URL`` lists their dashboards, so the function has a replica on each.

Every process binds its host's address; the API and the platforms need their tokens there. Frames
are server files: the one filesystem stands for the shared volume hosts would mount.

1. Scaling: 1, 2 and 3 worker hosts, each with a function host alongside: frames/s of a task end to
   end, and the gain over one host.
2. A worker host's link cut mid-task (``ip link set ... down`` on the switch's side): the request
   still finishes with every frame once. Its chunks run again elsewhere once their heartbeats lapse.
3. The link restored: the stale worker's chunk goes on, and is refused at its first write; nothing
   in the store changes (the shapes' ids stay the same).
4. A function host's link cut mid-task: its calls fail (connect or call timeout) and are retried on
   the other replica; every frame once.

Needs root (``ip netns``), redis-server and PostgreSQL's binaries (initdb, postgres, run as the
``postgres`` user). Exits 1 if a frame is lost or written twice, or a request does not finish.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import redis
from bench_dispatcher import IMAGES, PROBE_LABELS, probe_copy, repeated

from dispatcher.folder import stop_process
from dispatcher.settings import load as load_settings
from dispatcher.worker import busy_worker_pids

REPO = Path(__file__).resolve().parents[1]

SUBNET = "10.231.0"
HOSTS = {"store": 1, "api": 2, "client": 3, **{f"worker{n}": 10 + n for n in (1, 2, 3)},
         **{f"functions{n}": 20 + n for n in (1, 2, 3)}}
FUNCTION = "many-hosts-probe"
TOKEN, FUNCTION_TOKEN = "many-hosts-api-token", "many-hosts-function-token"
CLONE_NEWNET = 0x40000000
FINAL = ("finished", "failed", "canceled")
NUCLIO_TIMEOUT = 10  # seconds: a call to a host that vanished fails after this, and is retried elsewhere


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


class Network:
    """The namespaces, the switch, and the links."""

    def __init__(self, tag: str):
        self.tag = tag
        self.made: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def __enter__(self) -> Network:
        try:
            switch = self._add("switch")
            sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", switch, "link", "set", "br0", "up")
            for host, number in HOSTS.items():
                namespace = self._add(host)
                sh("ip", "-n", switch, "link", "add", f"p-{host}", "type", "veth", "peer", "name", "eth0",
                   "netns", namespace)
                sh("ip", "-n", switch, "link", "set", f"p-{host}", "master", "br0", "up")
                sh("ip", "-n", namespace, "addr", "add", f"{SUBNET}.{number}/24", "dev", "eth0")
                sh("ip", "-n", namespace, "link", "set", "eth0", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _add(self, host: str) -> str:
        namespace = self.ns(host)
        sh("ip", "netns", "add", namespace)
        self.made.append(namespace)
        sh("ip", "-n", namespace, "link", "set", "lo", "up")
        return namespace

    def link(self, host: str, up: bool) -> None:
        """The host's cable, pulled or put back at the switch."""
        sh("ip", "-n", self.ns("switch"), "link", "set", f"p-{host}", "up" if up else "down")

    def enter(self, host: str) -> None:
        """Move this process (its one thread: call before any other starts) into the host's namespace."""
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/var/run/netns/{self.ns(host)}") as handle:
            if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.ns(host)}")

    def __exit__(self, *exc_info) -> None:
        for namespace in reversed(self.made):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.made.clear()


class Cluster:
    """Processes on hosts; each one's output goes to a log file under ``work``."""

    def __init__(self, network: Network, work: Path):
        self.network, self.work = network, work
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs = work / "logs"
        self.logs.mkdir()

    def start(self, name: str, host: str, argv: list[str], env: dict | None = None, user: str | None = None):
        prefix = ["ip", "netns", "exec", self.network.ns(host)] + (["runuser", "-u", user, "--"] if user else [])
        with open(self.logs / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(prefix + argv, cwd=REPO, env={**os.environ, **(env or {})},
                                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.processes[name]

    def stop(self, *names: str) -> None:
        for name in names or list(self.processes):
            process = self.processes.pop(name, None)
            if process is not None:
                stop_process(process, grace=10)

    def log_of(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


def wait_until(check, seconds: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if result := check():
                return result
        time.sleep(every)
    raise SystemExit(f"timed out after {seconds:g} s waiting for {what}")


def address(host: str) -> str:
    return f"{SUBNET}.{HOSTS[host]}"


class Deployment:
    """The store host's services for the whole run; the API, workers and platforms per scenario."""

    def __init__(self, cluster: Cluster, work: Path):
        self.cluster, self.work = cluster, work
        self.tree = work / "functions"
        probe_copy(self.tree / FUNCTION, FUNCTION, 2, 0.05)
        pgdata = work / "pgdata"
        pgdata.mkdir()
        shutil.chown(pgdata, "postgres", "postgres")
        sh("runuser", "-u", "postgres", "--", "initdb", "-D", str(pgdata), "-A", "trust", "-U", "postgres", "--no-sync")
        with open(pgdata / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        cluster.start("postgres", "store", ["postgres", "-D", str(pgdata), "-p", "5432", "-k", str(pgdata),
                                            "-c", f"listen_addresses={address('store')}", "-c", "fsync=off"],
                      user="postgres")
        cluster.start("redis", "store", ["redis-server", "--bind", address("store"), "--port", "6379", "--save", "",
                                         "--appendonly", "no", "--protected-mode", "no"])
        self.database_url = f"postgresql://postgres@{address('store')}:5432/postgres"
        self.redis_url = f"redis://{address('store')}:6379/0"
        wait_until(lambda: psycopg.connect(self.database_url).close() or True, 60, "PostgreSQL on the store host")
        wait_until(lambda: redis.Redis.from_url(self.redis_url).ping(), 30, "Redis on the store host")
        self.env: dict = {}
        self.http: httpx.Client | None = None

    def up(self, hosts: int) -> None:
        """``hosts`` function hosts and as many worker hosts, and the API, on a clean store."""
        redis.Redis.from_url(self.redis_url).flushdb()
        dashboards = [f"http://{address(f'functions{n}')}:8070" for n in range(1, hosts + 1)]
        self.env = {"NUCLIO_URL": ",".join(dashboards), "NUCLIO_INVOKE_METHOD": "direct",
                    "NUCLIO_TIMEOUT": str(NUCLIO_TIMEOUT), "FUNCTION_TOKEN": FUNCTION_TOKEN, "API_TOKEN": TOKEN,
                    "REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url,
                    "DATA_DIR": str(self.work / "data"), "SERVER_FILES_ROOT": str(IMAGES), "CHUNK_SIZE": "32"}
        for n in range(1, hosts + 1):
            self.cluster.start(f"functions{n}", f"functions{n}", [sys.executable, "-m", "serverless.runtime",
                                                                  "platform", str(self.tree), "--host",
                                                                  address(f"functions{n}"), "--port", "8070"],
                               {"FUNCTION_TOKEN": FUNCTION_TOKEN})
        self.cluster.start("api", "api", [sys.executable, "-m", "dispatcher", "serve", "--host", address("api"),
                                          "--port", "8080"], self.env)
        for n in range(1, hosts + 1):
            self.cluster.start(f"worker{n}", f"worker{n}", [sys.executable, "-m", "dispatcher", "worker"], self.env)
        self.http = httpx.Client(base_url=f"http://{address('api')}:8080", timeout=60,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
        wait_until(lambda: self.http.get("/health").status_code == 200, 60, "the API")

        def replicas_ready():
            functions = self.http.get("/api/lambda/functions").json()
            return any(f["id"] == FUNCTION and f["state"] == "ready" for f in functions)

        wait_until(replicas_ready, 90, "the function on every host")
        for dashboard in dashboards:  # each replica ready, not only one
            wait_until(lambda d=dashboard: httpx.get(f"{d}/api/functions/{FUNCTION}", headers={
                "Authorization": f"Bearer {FUNCTION_TOKEN}"}).json()["status"]["state"] == "ready", 90,
                f"the function at {dashboard}")

    def down(self) -> None:
        if self.http is not None:
            self.http.close()
        self.cluster.stop(*[name for name in list(self.cluster.processes) if name not in ("postgres", "redis")])

    def submit(self, frames: int) -> tuple[int, str]:
        names = [path.name for path in sorted(IMAGES.glob("*.jpg"))]
        task = self.http.post("/api/tasks", json={"name": "many hosts", "labels": PROBE_LABELS}).raise_for_status()
        task_id = task.json()["id"]
        self.http.post(f"/api/tasks/{task_id}/data", json={"server_files": repeated(names, frames)}).raise_for_status()
        request = self.http.post(f"/detectors/{FUNCTION}/annotate", json={"task": task_id}).raise_for_status()
        return task_id, request.json()["id"]

    def status(self, request_id: str) -> dict:
        return self.http.get(f"/api/lambda/requests/{request_id}").raise_for_status().json()

    def wait(self, request_id: str, seconds: float) -> dict:
        return wait_until(lambda: (lambda s: s if s["status"] in FINAL else None)(self.status(request_id)), seconds,
                          f"request {request_id} to end", 0.05)

    def shapes(self, task_id: int) -> list[dict]:
        return self.http.get(f"/api/tasks/{task_id}/annotations").raise_for_status().json()["shapes"]

    def busy_workers(self) -> list[str]:
        pids = set(busy_worker_pids(load_settings(self.env)))
        return [name for name, process in self.cluster.processes.items()
                if name.startswith("worker") and process.pid in pids]


def problems(frames: int, status: dict, shapes: list[dict]) -> list[str]:
    """What is wrong with a finished request: frames lost or written twice."""
    found = []
    if status["status"] != "finished" or status["frames"]["done"] != frames or status["frames"]["failed"]:
        found.append(f"request {status['status']}, frames {status['frames']}")
    counts = Counter(shape["frame"] for shape in shapes)
    lost = [frame for frame in range(frames) if frame not in counts]
    twice = sorted(frame for frame, count in counts.items() if count > 1)
    if lost:
        found.append(f"{len(lost)} frames without their shape, first {lost[:5]}")
    if twice:
        found.append(f"{len(twice)} frames with more than one shape, first {twice[:5]}")
    return found


def scaling(deployment: Deployment, frames: int) -> list[dict]:
    rows = []
    for hosts in (1, 2, 3):
        deployment.up(hosts)
        try:
            started = time.perf_counter()
            task_id, request_id = deployment.submit(frames)
            status = deployment.wait(request_id, 300)
            seconds = time.perf_counter() - started
            found = problems(frames, status, deployment.shapes(task_id))
        finally:
            deployment.down()
        fps = frames / seconds
        gain = fps / rows[0]["fps"] if rows else 1.0
        rows.append({"hosts": hosts, "fps": fps, "gain": gain, "problems": found})
        print(f"  {hosts} worker host(s), {hosts} function host(s): {fps:6.1f} frames/s, {gain:.2f} x one host"
              + (f"; PROBLEMS: {found}" if found else ""), flush=True)
    return rows


def worker_cut(deployment: Deployment, network: Network, frames: int) -> dict:
    deployment.up(2)
    try:
        task_id, request_id = deployment.submit(frames)
        wait_until(lambda: deployment.status(request_id)["frames"]["done"] >= frames // 6, 120, "a sixth of the frames")
        victim = wait_until(lambda: deployment.busy_workers(), 30, "a worker running a chunk", 0.01)[0]
        network.link(victim, up=False)
        cut = time.perf_counter()
        done_at_cut = deployment.status(request_id)["frames"]["done"]
        status = deployment.wait(request_id, 300)
        after_cut = time.perf_counter() - cut
        shapes = deployment.shapes(task_id)
        found = problems(frames, status, shapes)
        print(f"  {victim}'s link cut with {done_at_cut} of {frames} frames done: request {status['status']} "
              f"{after_cut:.1f} s later, frames {status['frames']}" + (f"; PROBLEMS: {found}" if found else ""),
              flush=True)
        # The link back: the stale chunk goes on where it was, and is fenced off at its first write.
        network.link(victim, up=True)
        restored = time.perf_counter()
        with contextlib.suppress(SystemExit):
            wait_until(lambda: "has been replaced" in deployment.cluster.log_of(victim), 120,
                       f"{victim}'s stale chunk to try a write", 0.2)
        fenced_after = time.perf_counter() - restored
        fenced = "has been replaced" in deployment.cluster.log_of(victim)
        unchanged = deployment.shapes(task_id) == shapes
        print(f"  link restored: {victim}'s stale chunk " + (f"refused at its first write {fenced_after:.1f} s later"
                                                              if fenced else "never tried to write")
              + f"; store unchanged (same shapes, same ids): {unchanged}", flush=True)
        if not fenced:
            print("  its log ends:\n" + "\n".join(deployment.cluster.log_of(victim).splitlines()[-15:]), flush=True)
        if not unchanged:
            found.append("the stale worker changed the store")
        return {"victim": victim, "done_at_cut": done_at_cut, "seconds_after_cut": after_cut,
                "status": status["status"], "frames": status["frames"], "fenced": fenced,
                "unchanged_after_restore": unchanged, "fenced_after_restore": fenced_after, "problems": found}
    finally:
        deployment.down()


def function_cut(deployment: Deployment, network: Network, frames: int) -> dict:
    deployment.up(2)
    try:
        task_id, request_id = deployment.submit(frames)
        wait_until(lambda: deployment.status(request_id)["frames"]["done"] >= frames // 6, 120, "a sixth of the frames")
        network.link("functions1", up=False)
        cut = time.perf_counter()
        done_at_cut = deployment.status(request_id)["frames"]["done"]
        status = deployment.wait(request_id, 300)
        after_cut = time.perf_counter() - cut
        found = problems(frames, status, deployment.shapes(task_id))
        print(f"  functions1's link cut with {done_at_cut} of {frames} frames done: request {status['status']} "
              f"{after_cut:.1f} s later, frames {status['frames']}" + (f"; PROBLEMS: {found}" if found else ""),
              flush=True)
        network.link("functions1", up=True)
        return {"done_at_cut": done_at_cut, "seconds_after_cut": after_cut, "status": status["status"],
                "frames": status["frames"], "problems": found}
    finally:
        deployment.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=480, help="frames per scaling task (default 480)")
    parser.add_argument("--fault-frames", type=int, default=1200, help="frames per fault task (default 1200)")
    parser.add_argument("--json", type=Path, help="also write the outcome here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces")
    work = Path(tempfile.mkdtemp(prefix="many-hosts-"))
    os.chmod(work, 0o755)  # PostgreSQL runs as its own user under it
    outcome: dict = {}
    try:
        with Network(f"mh{os.getpid() % 100000}") as network:
            network.enter("client")
            cluster = Cluster(network, work)
            try:
                deployment = Deployment(cluster, work)
                print(f"scaling: the probe at 50 ms per frame, 2 workers per function host, {args.frames} frames",
                      flush=True)
                outcome["scaling"] = scaling(deployment, args.frames)
                print(f"faults: 2 worker hosts, 2 function hosts, {args.fault_frames} frames", flush=True)
                outcome["worker_cut"] = worker_cut(deployment, network, args.fault_frames)
                outcome["function_cut"] = function_cut(deployment, network, args.fault_frames)
            finally:
                cluster.stop()
    except BaseException:
        print(f"logs kept in {work}/logs", file=sys.stderr)
        raise
    failed = [problem for part in ("worker_cut", "function_cut") for problem in outcome[part]["problems"]]
    failed += [problem for row in outcome["scaling"] for problem in row["problems"]]
    if args.json:
        args.json.write_text(json.dumps(outcome, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    print("PROBLEMS:\n  " + "\n  ".join(failed) if failed else "every frame once, in every case")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
