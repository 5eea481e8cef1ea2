"""The fault matrix: one task-wide request per case, a process killed in the middle of it, and what
it cost.

    .venv/bin/python scripts/fault_matrix.py
    .venv/bin/python scripts/fault_matrix.py --frames 400 --cases redis-no-persistence,api
    .venv/bin/python scripts/fault_matrix.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/faults

Each case runs on a deployment of its own: a Redis on a free port (persistence off, or
``appendonly yes`` for the case that says so), the local platform serving the test probe as a
detector that sleeps --sleep seconds per frame (two worker processes, restarted when they die), the
API and two chunk workers (``python -m dispatcher serve`` / ``worker``), a task of --frames small
PNGs. Once a third of the frames are done, the fault happens; then the request is polled to its
end. A case passes when the request finished and every frame holds exactly one shape (the probe's
one box) or failed with its reason.

Printed per case: the time from the fault until the request's done count moves again as a client
sees it (GET /api/lambda/requests/<id>, polled every 0.1 s), the longest time after the fault that
it stood still (a chunk lost with its worker shows here once the other chunks are done), the run's
total time, and that against the clean run.
Settings are the defaults (RECOVERY_INTERVAL 10 s; a dead worker's chunk is found in about 30 s)
except CHUNK_SIZE 16, FRAME_RETRIES 5 and RETRY_BACKOFF 0.5 (a call retried for about 15 s: long
enough for a restarted platform). Logs go to a temporary folder, kept and named when a case fails.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
import yaml
from PIL import Image

from dispatcher.folder import child_pids, free_port, stop_process
from dispatcher.settings import load as load_settings
from dispatcher.worker import busy_worker_pids

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "tests/functions/probe"
FUNCTION = "probe-slow"
TOKEN = "fault-matrix"
FINAL = ("finished", "failed", "canceled")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def png(index: int) -> bytes:
    """A small frame of its own colour: the probe does not look at it."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (index % 256, index // 256 % 256, 128)).save(buffer, "PNG")
    return buffer.getvalue()


class Deployment:
    """Redis, the platform, the API and chunk workers as processes of their own, each killable."""

    def __init__(self, root: Path, *, persistence: bool, sleep: float, database_url: str | None = None,
                 workers: int = 2, **settings: str):
        self.root = root
        self.persistence = persistence
        self.redis_port, self.platform_port, self.api_port = free_port(), free_port(), free_port()
        self.redis_dir = root / "redis"
        self.redis_dir.mkdir(parents=True)
        tree = root / "functions"
        self._function(tree, sleep)
        self.tree = tree
        self.env = {**os.environ, "NUCLIO_URL": f"http://127.0.0.1:{self.platform_port}",
                    "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0", "DATA_DIR": str(root / "data"),
                    "API_TOKEN": TOKEN, "CHUNK_SIZE": "16", "FRAME_RETRIES": "5", "RETRY_BACKOFF": "0.5",
                    **settings}
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.redis = self.platform = self.api = None
        self.workers: list[subprocess.Popen] = []
        self._logs: list = []
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=60,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            self.start_redis()
            self.start_platform()
            self.start_api()
            for _ in range(workers):
                self.start_worker()
        except BaseException:  # what did start must not outlive the script
            self.close()
            raise

    @staticmethod
    def _function(tree: Path, sleep: float) -> None:
        folder = tree / "probe"
        shutil.copytree(PROBE, folder, ignore=shutil.ignore_patterns("__pycache__"))
        config = yaml.safe_load((folder / "function.yaml").read_text())
        config["metadata"]["name"] = FUNCTION
        config["spec"]["env"] = [{"name": "PROBE_DETECT_SECONDS", "value": str(sleep)}]
        config["spec"]["eventTimeout"] = "30s"
        config["spec"]["triggers"]["myHttpTrigger"]["workerAvailabilityTimeoutMilliseconds"] = 10000
        config["spec"]["triggers"]["myHttpTrigger"]["attributes"]["maxRequestBodySize"] = 33554432
        config["spec"]["platform"] = {"attributes": {"restartPolicy": {"name": "always", "maximumRetryCount": 0}}}
        (folder / "function.yaml").write_text(yaml.safe_dump(config))

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115  closed with the deployment
        self._logs.append(log)
        return subprocess.Popen(args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    # Redis

    def start_redis(self) -> None:
        persistence = ["--appendonly", "yes"] if self.persistence else ["--appendonly", "no"]
        self.redis = self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                           "--dir", str(self.redis_dir), "--save", "", *persistence])
        client = redis.Redis(port=self.redis_port)
        wait_until(lambda: _pings(client), 30, "Redis to answer")

    def kill_redis(self) -> None:
        self.redis.kill()
        self.redis.wait()

    # The platform

    def start_platform(self) -> None:
        self.platform = self._spawn("platform", [sys.executable, "-m", "serverless.runtime", "platform",
                                                 str(self.tree), "--port", str(self.platform_port)])
        url = f"http://127.0.0.1:{self.platform_port}/api/functions"

        def ready():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                return httpx.get(url).json()[FUNCTION]["status"]["state"] == "ready"
            return False

        wait_until(ready, 60, "the platform's function to be ready", 0.1)

    def kill_platform(self) -> None:
        """The platform's process SIGKILLed; its processors follow it (they watch their parent)."""
        processors = child_pids(self.platform.pid)
        self.platform.kill()
        self.platform.wait()
        for pid in processors:
            with contextlib.suppress(TimeoutError):
                wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 15, "the processors to exit")

    def function_worker_pid(self) -> int:
        """A pid of one of the function's worker processes (the probe answers with its own)."""
        reply = httpx.post(f"http://127.0.0.1:{self.platform_port}/api/function_invocations", json={},
                           headers={"x-nuclio-function-name": FUNCTION}, timeout=30)
        return reply.json()["pid"]

    # The API and the workers

    def start_api(self) -> None:
        self.api = self._spawn("api", [sys.executable, "-m", "dispatcher", "serve", "--port", str(self.api_port)])
        wait_until(lambda: _answers(f"http://127.0.0.1:{self.api_port}/health"), 60, "the API to answer", 0.1)

    def kill_api(self) -> None:
        self.api.kill()
        self.api.wait()

    def start_worker(self) -> None:
        self.workers.append(self._spawn(f"worker-{len(self.workers)}", [sys.executable, "-m", "dispatcher", "worker"]))

    def kill_worker(self, index: int) -> None:
        """SIGKILL to a worker once it is running a chunk (which runs in its process)."""
        worker = self.workers[index]
        wait_until(lambda: worker.pid in busy_worker_pids(load_settings(self.env)), 30,
                   "the worker to be running a chunk", 0.01)
        worker.kill()
        worker.wait()

    def close(self) -> None:
        self.http.close()
        for process in [self.api, *self.workers, self.platform, self.redis]:
            if process is not None:
                stop_process(process, grace=15)
        for log in self._logs:
            log.close()

    # A task and its request

    def new_task(self, frames: int) -> int:
        task = self.http.post("/api/tasks", json={"name": "faults", "labels": [{"name": "thing", "type": "rectangle"}]})
        task.raise_for_status()
        task_id = task.json()["id"]
        files = [(f"client_files[{index}]", (f"{index:05}.png", png(index))) for index in range(frames)]
        self.http.post(f"/api/tasks/{task_id}/data", files=files).raise_for_status()
        return task_id

    def request(self, rid: str) -> dict | None:
        """The request as a client sees it; None while the API does not answer, and {} once it
        answers 404 (the request is gone)."""
        with contextlib.suppress(httpx.HTTPError):
            reply = self.http.get(f"/api/lambda/requests/{rid}", timeout=5)
            if reply.status_code in (200, 404):
                return reply.json() if reply.status_code == 200 else {}
        return None


def _pings(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.ConnectionError):
        return client.ping()
    return False


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=5).status_code == 200
    return False


def kill_both_workers(deployment: Deployment) -> None:
    for index in range(len(deployment.workers)):
        deployment.kill_worker(index)
    deployment.start_worker()
    deployment.start_worker()


def kill_platform(deployment: Deployment) -> None:
    deployment.kill_platform()
    deployment.start_platform()


def kill_api(deployment: Deployment) -> None:
    deployment.kill_api()
    deployment.start_api()


def restart_redis(deployment: Deployment) -> None:
    deployment.kill_redis()
    deployment.start_redis()


# name -> (what happens, the fault, Redis persistence)
CASES = {
    "none": ("no fault (the clean run)", lambda d: None, False),
    "worker": ("SIGKILL a worker mid-chunk", lambda d: d.kill_worker(0), False),
    "both-workers": ("SIGKILL both workers mid-chunk, start two new ones", kill_both_workers, False),
    "function-worker": ("SIGKILL a function worker process", lambda d: os.kill(d.function_worker_pid(),
                                                                                signal.SIGKILL), False),
    "processor": ("SIGKILL the function's processor (the platform restarts it)",
                  lambda d: os.kill(_parent(d.function_worker_pid()), signal.SIGKILL), False),
    "platform": ("SIGKILL the platform and its processors, start it again", kill_platform, False),
    "api": ("SIGKILL the API, start it again", kill_api, False),
    "redis-persistence": ("SIGKILL Redis with appendonly yes, start it again", restart_redis, True),
    "redis-no-persistence": ("SIGKILL Redis without persistence, start it again empty", restart_redis, False),
}


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@dataclass
class Outcome:
    case: str
    frames: int
    done: int
    failed: int
    status: str
    resumed_after: float | None  # seconds from the fault until the done count moved again
    longest_stall: float  # the longest time after the fault that the done count stood still
    total: float  # seconds from the request to its end
    problems: list[str]


def run_case(case: str, root: Path, frames: int, sleep: float, database_url: str | None = None,
             fault_at: float = 1 / 3, timeout: float = 300, **settings: str) -> Outcome:
    """One request over ``frames`` frames with the case's fault once ``fault_at`` of them are done."""
    _, fault, persistence = CASES[case]
    deployment = Deployment(root, persistence=persistence, sleep=sleep, database_url=database_url, **settings)
    try:
        task = deployment.new_task(frames)
        began = time.monotonic()
        reply = deployment.http.post("/api/lambda/requests", json={"function": FUNCTION, "task": task})
        reply.raise_for_status()
        rid = reply.json()["id"]
        seen = wait_until(lambda: (lambda r: r if r and (r["frames"]["done"] >= frames * fault_at
                                                         or r["status"] in FINAL) else None)(deployment.request(rid)),
                          timeout, "a third of the frames to be done")
        at_fault, faulted = seen["frames"]["done"], time.monotonic()
        fault(deployment)
        resumed_after, vanished = None, False
        deadline = faulted + timeout
        request, moved, longest_stall = seen, faulted, 0.0
        while time.monotonic() < deadline:
            answer = deployment.request(rid)
            vanished = vanished or answer == {}
            if answer and (answer["frames"]["done"] > request["frames"]["done"] or answer["status"] in FINAL):
                longest_stall, moved = max(longest_stall, time.monotonic() - moved), time.monotonic()
            request = answer or request
            if answer and resumed_after is None and (request["frames"]["done"] > at_fault
                                                     or request["status"] in FINAL):
                resumed_after = time.monotonic() - faulted
            if answer and request["status"] in FINAL:
                break
            time.sleep(0.1)
        total = time.monotonic() - began
        found = problems(deployment, task, request, frames)
        if vanished:
            found.insert(0, f"the request answered 404 after the fault; last seen {request['status']} with "
                            f"{request['frames']['done']} of {frames} frames done")
        return Outcome(case, frames, request["frames"]["done"], request["frames"]["failed"], request["status"],
                       resumed_after, longest_stall, total, found)
    finally:
        deployment.close()


def problems(deployment: Deployment, task: int, request: dict, frames: int) -> list[str]:
    """What keeps the case from passing: an unfinished request, a frame without its one shape or
    reason, a frame annotated twice."""
    found = []
    if request["status"] not in FINAL:
        found.append(f"the request did not end (still {request['status']})")
    elif request["status"] != "finished":
        found.append(f"the request ended {request['status']}: {request['exc_info']}")
    shapes = deployment.http.get(f"/api/tasks/{task}/annotations").json()["shapes"]
    per_frame = Counter(shape["frame"] for shape in shapes)
    failed = {failure["frame"]: failure["reason"] for failure in request["failures"]}
    twice = sorted(frame for frame, count in per_frame.items() if count > 1)
    if twice:
        found.append(f"{len(twice)} frames annotated more than once (first: {twice[0]})")
    missing = sorted(frame for frame in range(frames) if frame not in per_frame and not failed.get(frame))
    if missing:
        found.append(f"{len(missing)} frames neither annotated nor failed with a reason (first: {missing[0]})")
    if request["frames"]["done"] + request["frames"]["failed"] != frames:
        found.append(f"done {request['frames']['done']} + failed {request['frames']['failed']} != {frames}")
    if len(per_frame) != request["frames"]["done"]:
        found.append(f"{len(per_frame)} frames annotated, {request['frames']['done']} counted done")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--sleep", type=float, default=0.02, help="the probe's seconds per frame (default 0.02)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--database-url", help="the task store (default: SQLite in the case's folder)")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    unknown = [case for case in cases if case not in CASES]
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)}")
    if "none" not in cases:
        cases.insert(0, "none")
    logs = Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    outcomes = []
    for case in cases:
        print(f"{case}: {CASES[case][0]} ...", flush=True)
        outcome = run_case(case, logs / case, args.frames, args.sleep, args.database_url)
        outcomes.append(outcome)
        print(f"  {outcome}", flush=True)
    clean = outcomes[0].total
    print(f"\n{args.frames} frames, probe {args.sleep * 1000:.0f} ms per frame, 2 workers; clean run {clean:.1f} s\n")
    print("| fault | progress resumed after | longest stall | total | vs clean | done / failed | outcome |")
    print("|---|---|---|---|---|---|---|")
    for outcome in outcomes:
        resumed = "-" if outcome.case == "none" else (f"{outcome.resumed_after:.1f} s" if outcome.resumed_after
                                                      is not None else "never")
        verdict = "every frame once" if not outcome.problems else "; ".join(outcome.problems)
        if not outcome.problems and outcome.failed:
            verdict = "every frame once, or failed with its reason"
        print(f"| {CASES[outcome.case][0]} | {resumed} | {outcome.longest_stall:.1f} s | {outcome.total:.1f} s | "
              f"{outcome.total / clean:.2f}x | "
              f"{outcome.done} / {outcome.failed} | {verdict} |")
    failed = [outcome for outcome in outcomes if outcome.problems]
    if failed:
        print(f"\nlogs kept in {logs}", file=sys.stderr)
        return 1
    shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
