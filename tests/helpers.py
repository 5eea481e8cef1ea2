"""What the tests share: real processes, real HTTP, real weights (never mocks). Fixtures are in
conftest.py; test modules import these by name (``from helpers import ...``)."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
import redis
import rq
import yaml
from cvat_sdk.masks import decode_mask

from dispatcher.folder import free_port, stop_process
from dispatcher.request_book import key_prefix
from dispatcher.settings import load as load_settings
from dispatcher.worker import busy_worker_pids

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TESTDATA = SHARED / "testdata"
PROBE = Path(__file__).with_name("functions") / "probe"
FACE_FUNCTION = REPO / "serverless/openvino/omz/intel/face-detection-0205/nuclio"
ASTRONAUT = TESTDATA / "skimage/astronaut.png"
# The astronaut's visible face (hairline to chin, cheek to cheek), marked by hand on the image.
ASTRONAUT_FACE = (185, 70, 265, 178)
POSTGRES = "host=127.0.0.1 port=5432 user=postgres"  # the local server, as .ci/run starts it
TOKEN = "test-token-" + uuid.uuid4().hex  # the API_TOKEN of every dispatcher the tests start
FINAL = ("finished", "failed", "canceled")


def b64_file(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def detect(function: RunningProcess, image_path: Path, **extra) -> list:
    """One frame through a served detector over HTTP; the reply must be a 200 JSON list."""
    reply = function.http.post("/", json={"image": b64_file(image_path), **extra})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    return reply.json()


def interactor_shapes_reply(function: RunningProcess, body: dict, text_prompts) -> tuple[np.ndarray, list[dict]]:
    """A served interactor's default reply and its ``mask_format: shapes`` reply to the same body,
    the latter with CVAT 2.60+'s ``text_prompts`` (which ours ignore): the one mask shape must cover
    exactly the default mask. Returns that mask (0/255) and the shape's attributes."""
    full = np.asarray(function.http.post("/", json=body).json()["mask"])
    reply = function.http.post("/", json={**body, "mask_format": "shapes", "text_prompts": text_prompts})
    assert reply.status_code == 200, reply.text
    (shape,) = reply.json()["shapes"]
    assert shape["type"] == "mask"
    height, width = full.shape
    np.testing.assert_array_equal(decode_mask(shape["points"], image_width=width, image_height=height), full == 255)
    return full, shape["attributes"]


def function_module(folder: Path, module: str = "model_handler"):
    """Import a function folder's module under a name of its own (every folder has a model_handler),
    once. As nuclio runs it, the folder is first on ``sys.path`` meanwhile, so ``from network import
    ...`` finds the sibling; the folder's modules it imports get names of their own too, and asking
    for one of them returns that same module."""
    prefix = folder.relative_to(REPO / "serverless").as_posix().replace("/", ".")
    if f"{prefix}.{module}" not in sys.modules:
        own = {path.stem for path in folder.glob("*.py")}
        # Another folder's modules of the same names step aside; this folder's loaded ones answer.
        shadowed = {name: sys.modules.pop(name) for name in own if name in sys.modules}
        sys.modules.update({name: sys.modules[f"{prefix}.{name}"] for name in own if f"{prefix}.{name}" in sys.modules})
        sys.path.insert(0, str(folder))
        try:
            spec = importlib.util.spec_from_file_location(f"{prefix}.{module}", folder / f"{module}.py")
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[f"{prefix}.{module}"] = loaded  # dataclasses and pickling look their module up here
            spec.loader.exec_module(loaded)
        finally:
            sys.path.remove(str(folder))
            for name in own & sys.modules.keys():
                sys.modules[f"{prefix}.{name}"] = sys.modules.pop(name)
            sys.modules.update(shadowed)
    return sys.modules[f"{prefix}.{module}"]


def box_iou(a, b) -> float:
    """Intersection over union of two ``x1, y1, x2, y2`` boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RunningProcess:
    """A runtime command (``serve`` or ``platform``) in its own process, with an HTTP client to it."""

    def __init__(self, args: list[str], port: int, env: dict | None = None):
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-m", "serverless.runtime", *args, "--port", str(port)],
                                        cwd=REPO, env={**os.environ, **(env or {})})
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def get_json(self, path: str):
        try:
            return self.http.get(path).json()
        except (httpx.TransportError, ValueError):
            return None

    def readiness(self) -> dict | None:
        assert self.process.poll() is None, f"process exited with {self.process.returncode}"
        return self.get_json("/__runtime/ready")

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def serve_function(path: Path, *, env: dict | None = None, until: str = "ready", timeout: float = 90):
    """Run ``serve`` on a function; wait until its state is ``until`` (or, for "any", until it answers)."""
    running = RunningProcess(["serve", str(path)], free_port(), env)
    try:
        def reached():
            status = running.readiness()
            return status and (until == "any" or status["state"] == until)

        wait_until(reached, timeout, f"{path} to reach state {until}")
        yield running
    finally:
        running.close()


@contextlib.contextmanager
def serve_platform(tree: Path, timeout: float = 90, extra: tuple[str, ...] = ()):
    """Run ``platform`` on a tree (``extra``: more arguments); wait until none of its functions is
    still building."""
    running = RunningProcess(["platform", str(tree), *extra], free_port())
    try:
        def settled():
            functions = running.get_json("/api/functions")
            return functions and all(f["status"]["state"] != "building" for f in functions.values())

        wait_until(settled, timeout, f"every function under {tree} to leave state building")
        yield running
    finally:
        running.close()


def copy_function(source: Path, destination: Path, **changes) -> Path:
    """Copy a function folder and apply ``changes`` to its function.yaml (dotted keys, e.g. spec.eventTimeout)."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
    config_path = destination / "function.yaml"
    config = yaml.safe_load(config_path.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    config_path.write_text(yaml.safe_dump(config))
    return destination


class StateDictShapes(dict):
    """A PyTorch state dict's names and shapes, written down module by module as a model's official
    code builds it, so checkpoint tests never take them from the code under test."""

    def __init__(self, *, batches_tracked: bool):
        super().__init__()
        self.batches_tracked = batches_tracked  # BatchNorm2d's num_batches_tracked (newer than some checkpoints)

    def conv(self, name: str, out_channels: int, in_channels: int, kernel: int, bias: bool = False):
        self[f"{name}.weight"] = (out_channels, in_channels, kernel, kernel)
        if bias:
            self[f"{name}.bias"] = (out_channels,)

    def bn(self, name: str, channels: int):
        for part in ("weight", "bias", "running_mean", "running_var"):
            self[f"{name}.{part}"] = (channels,)
        if self.batches_tracked:
            self[f"{name}.num_batches_tracked"] = ()


@contextlib.contextmanager
def postgres_database(purpose: str):
    """A database of its own on the local PostgreSQL, dropped at the end; yields its SQLAlchemy URL."""
    name = f"dispatcher_test_{purpose}_{os.getpid()}"
    with psycopg.connect(f"{POSTGRES} dbname=postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(f"{POSTGRES} dbname=postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Stack:
    """The API and chunk workers as processes, and an authenticated client to the API."""

    def __init__(self, platform, data_dir: Path, redis_db: int, database_url: str | None, workers: int = 2,
                 **settings: str):
        self.platform = platform
        self.data_dir = data_dir
        self.redis_url = f"redis://127.0.0.1:6379/{redis_db}"
        redis.Redis.from_url(self.redis_url).flushdb()  # a database of this module's own
        self.env = {**os.environ, "NUCLIO_URL": platform.url, "REDIS_URL": self.redis_url, "DATA_DIR": str(data_dir),
                    "API_TOKEN": TOKEN, "CHUNK_SIZE": "16", "RETRY_BACKOFF": "0.3", "FRAME_RETRIES": "3"}
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.env.update(settings)
        self.settings = load_settings(self.env)  # the processes' own
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self._start("serve", "--port", str(self.port))
        self.workers = [self._start("worker") for _ in range(workers)]
        self.http = httpx.Client(base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
        wait_until(lambda: self._answers(), 60, "the API to answer")

    def restart_api(self, down_seconds: float = 0, down_until=None) -> None:
        """The API process killed outright and, ``down_seconds`` later (and once ``down_until()`` holds,
        if given), started again on its port."""
        self.api.kill()
        self.api.wait()
        time.sleep(down_seconds)
        if down_until is not None:
            wait_until(down_until, 60, "the condition to restart the API on")
        self.api = self._start("serve", "--port", str(self.port))
        wait_until(lambda: self._answers(), 60, "the API to answer again")

    def _start(self, *args) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "dispatcher", *args], cwd=REPO, env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def _answers(self) -> bool:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{self.url}/health").status_code == 200
        return False

    def busy_workers(self) -> list[int]:
        """The indexes of the workers that are running a chunk."""
        busy = busy_worker_pids(self.settings)
        return [index for index, worker in enumerate(self.workers) if worker.pid in busy]

    def first_busy_worker(self, timeout: float = 30) -> int:
        """The index of the first worker seen running a chunk; on a timeout, what RQ and the
        processes said instead."""
        try:
            return wait_until(self.busy_workers, timeout, "a worker to be running a chunk", 0.01)[0]
        except AssertionError:
            pass
        with redis.Redis.from_url(self.redis_url) as client:
            recorded = [(worker.name, worker.pid, worker.get_state(), worker.queue_names())
                        for worker in rq.Worker.all(connection=client)]
            queues = {queue.name: queue.count for queue in rq.Queue.all(connection=client)}
        processes = [(worker.pid, worker.poll()) for worker in self.workers]
        raise AssertionError(f"no worker ran a chunk within {timeout}s: the workers {processes} (pid, exit code), "
                             f"RQ's record {recorded}, queues {queues}, "
                             f"expected queue of namespace {self.settings.deployment_namespace}")

    def calls_in_flight(self, function_id: str) -> int:
        """The calls the workers have out to a function now: its call slots' leases in Redis that
        have not lapsed (each is scored by its expiry)."""
        prefix = key_prefix(self.settings.deployment_namespace)
        with redis.Redis.from_url(self.redis_url) as client:
            return sum(client.zcount(key, time.time(), "+inf")
                       for key in client.scan_iter(f"{prefix}:slots:{function_id}@*"))

    def replace_worker(self, index: int) -> None:
        self.workers[index] = self._start("worker")

    def close(self) -> None:
        self.http.close()
        for process in [self.api, *self.workers]:
            stop_process(process, grace=20)
        redis.Redis.from_url(self.redis_url).flushdb()  # the database is left as it was found: empty

    # helpers

    def ok(self, method: str, path: str, status: int = 200, **kwargs):
        reply = self.http.request(method, path, **kwargs)
        assert reply.status_code == status, f"{method} {path}: {reply.status_code} {reply.text}"
        return reply.json() if reply.content and reply.headers["content-type"] == "application/json" else reply

    def error(self, method: str, path: str, status: int, **kwargs) -> str:
        reply = self.http.request(method, path, **kwargs)
        assert reply.status_code == status, f"{method} {path}: {reply.status_code} {reply.text}"
        assert reply.headers["content-type"] == "application/json"
        return reply.json()["detail"]

    def task(self, labels: list[dict], images: list[Path], segment_size: int | None = None) -> dict:
        """A new task with these frames, as ``GET /api/tasks/<id>`` answers it (CVAT's TaskRead: its
        labels and jobs are read with ``labels`` and ``jobs``)."""
        task = self.ok("POST", "/api/tasks", 201, json={"name": "t", "labels": labels, "segment_size": segment_size})
        self.ok("POST", f"/api/tasks/{task['id']}/data", files=[
            (f"client_files[{index}]", (path.name, path.read_bytes())) for index, path in enumerate(images)])
        return self.ok("GET", f"/api/tasks/{task['id']}")

    def labels(self, task_id: int) -> list[dict]:
        """The task's labels (sublabels inside their skeletons), every page of ``GET /api/labels``."""
        return self.pages("/api/labels", task_id=task_id)

    def jobs(self, task_id: int) -> list[dict]:
        """The task's jobs in frame order, every page of ``GET /api/jobs``."""
        return sorted(self.pages("/api/jobs", task_id=task_id), key=lambda job: job["start_frame"])

    def pages(self, path: str, page_size: int = 1000, **params) -> list[dict]:
        """Every item of one of CVAT's paginated lists, following ``next``."""
        results, url = [], path
        query = {**params, "page_size": page_size}
        while url:
            body = self.ok("GET", url, params=query)
            results += body["results"]
            url, query = body["next"], None
        return results

    def wait(self, request_id: str, timeout: float = 120) -> dict:
        return wait_until(lambda: (lambda r: r if r["status"] in FINAL else None)(
            self.ok("GET", f"/api/lambda/requests/{request_id}")), timeout, f"request {request_id} to end", 0.2)
