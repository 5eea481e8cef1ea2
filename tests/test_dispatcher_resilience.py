"""What task-wide runs and chunk workers ride out, on real processes: a Redis of these tests' own
on a free port (stopped and started again), the local platform with probe functions (stopped and
started again), the API and ``python -m dispatcher worker`` processes, the SQLite task store."""

from __future__ import annotations

import io
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from PIL import Image

from dispatcher import settings as dispatcher_settings
from dispatcher.call_slots import CallSlots
from dispatcher.chunks import WorkerServices, run_chunk
from dispatcher.circuit_breaker import CircuitBreaker, Open
from dispatcher.gateway import Gateway
from dispatcher.job_metrics import JobMetrics
from dispatcher.registry import Registry
from dispatcher.request_book import RequestBook, Target, key_prefix
from dispatcher.store import Store
from dispatcher.worker import ChunkWorker

from helpers import PROBE, REPO, RunningProcess, Stack, copy_function, free_port, wait_until

LABELS = [{"name": "thing", "type": "rectangle"}]
FAST = "probe-fast"  # 10 ms a frame, 2 workers
SLOW = "probe-slow"  # 100 ms a frame, 2 workers
SMALL = "probe-small"  # refuses bodies over 64 KiB (413)
REDIS_DB = 2  # of 127.0.0.1:6379, which Stack empties before and after; the runs here use their own Redis


class RedisServer:
    """redis-server on a free port; without persistence a restart comes back empty, with it
    (an append-only file, fsync'd always) as it was."""

    def __init__(self, directory: Path, persistent: bool = False):
        self.port = free_port()
        self.directory = directory
        self.persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", *self.persistence, "--dir", str(self.directory)],
                                        stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _answers(client), 10, "redis-server to answer")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def running(self) -> bool:
        return self.process.poll() is None


def _answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


class LoggedStack(Stack):
    """A Stack whose processes write their logs to files, and whose workers start when asked."""

    def __init__(self, platform, data_dir: Path, redis_url: str, workers: int, **settings: str):
        self.logs = data_dir.parent / f"{data_dir.name}-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        super().__init__(platform, data_dir, REDIS_DB, None, workers, REDIS_URL=redis_url, **settings)

    def _start(self, *args) -> subprocess.Popen:
        log = (self.logs / f"{args[0]}-{time.monotonic_ns()}.log").open("w")
        return subprocess.Popen([sys.executable, "-m", "dispatcher", *args], cwd=REPO, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def add_worker(self) -> subprocess.Popen:
        self.workers.append(self._start("worker"))
        return self.workers[-1]

    def worker_logs(self) -> str:
        return "".join(path.read_text() for path in sorted(self.logs.glob("worker-*.log")))

    def annotate(self, function: str, task: dict) -> str:
        return self.ok("POST", "/api/lambda/requests", json={"function": function, "task": task["id"]})["id"]


def frames(directory: Path, count: int, size: int = 16) -> list[Path]:
    """PNGs of noise (which does not compress: a 200 x 200 one is over 64 KiB)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.frombytes("RGB", (size, size), random.Random(index).randbytes(size * size * 3)).save(buffer, "PNG")
        paths.append(directory / f"{index:04d}.png")
        paths[-1].write_bytes(buffer.getvalue())
    return paths


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    if server.running():
        server.stop()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    big = {"spec.triggers.myHttpTrigger.attributes.maxRequestBodySize": 33554432, "spec.eventTimeout": "30s"}
    copy_function(PROBE, tree / "fast", **{"metadata.name": FAST, **big,
                                           "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "0.01"}]})
    copy_function(PROBE, tree / "slow", **{"metadata.name": SLOW, **big,
                                           "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "0.1"}]})
    copy_function(PROBE, tree / "small", **{"metadata.name": SMALL, "spec.eventTimeout": "30s",
                                            "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "0.01"}]})
    return tree


def start_platform(tree: Path, port: int) -> RunningProcess:
    platform = RunningProcess(["platform", str(tree)], port)

    def settled():
        functions = platform.get_json("/api/functions")
        return functions and all(f["status"]["state"] != "building" for f in functions.values())

    wait_until(settled, 90, "every probe to leave state building")
    return platform


@pytest.fixture(scope="module")
def platform(tree):
    running = start_platform(tree, free_port())
    yield running
    running.close()


@pytest.fixture
def stack_factory(tmp_path, redis_server):
    stacks = []

    def make(platform, name: str = "data", workers: int = 1, **settings: str) -> LoggedStack:
        stacks.append(LoggedStack(platform, tmp_path / name, redis_server.url, workers, **settings))
        return stacks[-1]

    try:
        yield make
    finally:
        if not redis_server.running():  # a test that failed while it was down
            redis_server.start()
        for stack in stacks:
            stack.close()
        redis.Redis.from_url(redis_server.url).flushdb()


# D9: a chunk's function lookup is retried while nuclio cannot be reached

def test_a_run_that_starts_while_the_platform_restarts_annotates_every_frame(tree, tmp_path, stack_factory):
    port = free_port()
    platform = start_platform(tree, port)
    stack = stack_factory(platform, workers=0)
    try:
        task = stack.task(LABELS, frames(tmp_path / "frames", 32))
        rid = stack.annotate(FAST, task)  # checked against the platform, queued
        platform.close()
        stack.add_worker()
        stack.add_worker()
        # The chunks have begun (the run is started before its function is looked up), on no platform.
        wait_until(lambda: stack.ok("GET", f"/api/lambda/requests/{rid}")["status"] != "queued", 60,
                   "a chunk to start")
        time.sleep(3)
    finally:
        platform = start_platform(tree, port)
    try:
        request = stack.wait(rid, 120)
        assert (request["status"], request["frames"]) == ("finished", {"total": 32, "done": 32, "failed": 0})
        shapes = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
        assert sorted(shape["frame"] for shape in shapes) == list(range(32))
    finally:
        platform.close()


# D10: a function in state error fails a run in seconds, through its circuit breaker

def test_a_function_in_state_error_fails_a_128_frame_run_in_seconds(tmp_path, stack_factory):
    tree, port = tmp_path / "tree", free_port()
    fast = copy_function(PROBE, tree / "fast", **{"metadata.name": FAST})
    platform = start_platform(tree, port)
    stack = stack_factory(platform, workers=0, CHUNK_SIZE="64")  # FRAME_RETRIES 3, RETRY_BACKOFF 0.3
    task = stack.task(LABELS, frames(tmp_path / "frames", 128))
    rid = stack.annotate(FAST, task)  # accepted while the function is ready
    platform.close()
    broken = tmp_path / "broken"  # then redeployed broken: its init_context fails, state error
    copy_function(fast, broken, **{"spec.env": [{"name": "PROBE_INIT_FAIL", "value": "no weights"}]})
    (fast / "function.yaml").write_text((broken / "function.yaml").read_text())
    platform = start_platform(tree, port)
    try:
        assert platform.get_json(f"/api/functions/{FAST}")["status"]["state"] == "error"
        began = time.monotonic()
        stack.add_worker()
        stack.add_worker()
        request = stack.wait(rid, 300)
        took = time.monotonic() - began
    finally:
        platform.close()
    print(f"a function in state error failed 128 frames in {took:.1f}s")
    assert request["status"] == "failed" and request["frames"]["failed"] == 128
    assert took < 20, took  # each frame's 3 retries (2.1 s of backoff) would take over a minute on 2 workers
    # Once the circuit opened (5 failures in a row), frames failed at once, saying why.
    reasons = [failure["reason"] for failure in request["failures"]]
    opened = [reason for reason in reasons if reason.startswith(f"function {FAST} is unavailable after ")]
    assert len(opened) > 100 and all("(state error)" in reason and "no weights" in reason for reason in opened)
    assert request["outcome"] == "failed" and request["message"] == request["exc_info"]


def test_an_open_circuit_lets_calls_go_on_once_a_probe_succeeds(platform, redis_server):
    breaker = CircuitBreaker(redis.Redis.from_url(redis_server.url), "dispatcher-test-circuit", failures=2, wait=30)
    breaker.succeeded("f")
    assert breaker.admit("f") is False  # closed, nothing counted: a success need not be reported
    breaker.failed("f", "503: cannot connect", lasting=False)
    assert breaker.admit("f") is True  # one failure: still closed, and a success resets the count
    breaker.failed("f", "503: cannot connect", lasting=False)
    circuit = breaker.admit("f")
    assert isinstance(circuit, Open) and circuit.reason == "503: cannot connect" and not circuit.lasting
    began = time.monotonic()
    assert breaker.wait_until_closed("f") is True  # when this caller may probe
    assert 1.5 < time.monotonic() - began < 3
    assert isinstance(breaker.admit("f"), Open)  # the others still wait while it probes
    breaker.succeeded("f")
    assert breaker.admit("f") is False


# A run whose frames mostly failed says so

def test_a_run_whose_frames_mostly_failed_says_so(platform, tmp_path, stack_factory):
    stack = stack_factory(platform)
    small = frames(tmp_path / "small", 3)
    big = frames(tmp_path / "big", 9, size=200)  # over the function's 64 KiB body limit: 413, not retried
    assert all(len(path.read_bytes()) > 65536 for path in big)
    task = stack.task(LABELS, small + big)
    request = stack.wait(stack.annotate(SMALL, task))
    assert (request["status"], request["frames"]) == ("finished", {"total": 12, "done": 3, "failed": 9})
    assert request["outcome"] == "partly_failed"
    assert request["message"].startswith(f"9 of 12 frames failed, 3 done; first: frame 3: function {SMALL} "
                                         "answered 413")
    task2 = stack.task(LABELS, small)
    request = stack.wait(stack.annotate(SMALL, task2))
    assert (request["outcome"], request["message"]) == ("annotated", "All 3 frames done")


# D12, D13: workers ride out Redis outages and stop on SIGTERM

def test_workers_outlive_redis_outages_and_stop_on_sigterm(platform, tmp_path, redis_server, stack_factory):
    stack = stack_factory(platform, workers=0)
    redis_server.stop()
    early = stack.add_worker()  # started while Redis is down
    time.sleep(4)
    assert early.poll() is None, stack.worker_logs()
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: client.scard("rq:workers") == 1, 30, "the worker to register")
    idle = stack.add_worker()
    wait_until(lambda: client.scard("rq:workers") == 2, 30, "the second worker to register")

    redis_server.stop()  # both idle, waiting for chunks
    time.sleep(5)
    redis_server.start()  # empty: no persistence
    time.sleep(1)
    assert early.poll() is None and idle.poll() is None, stack.worker_logs()
    task = stack.task(LABELS, frames(tmp_path / "frames", 40))
    request = stack.wait(stack.annotate(FAST, task), 60)
    assert (request["status"], request["frames"]) == ("finished", {"total": 40, "done": 40, "failed": 0})

    assert seconds_to_stop(idle, stack) < 5
    redis_server.stop()
    time.sleep(2)
    assert seconds_to_stop(early, stack) < 5
    redis_server.start()


def seconds_to_stop(worker: subprocess.Popen, stack: LoggedStack) -> float:
    """SIGTERM to a worker: how long it took to exit 0 (the workers' logs if it did not within 10 s)."""
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    try:
        assert worker.wait(10) == 0, stack.worker_logs()[-6000:]
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker {worker.pid} still running 10 s after SIGTERM; the workers' logs:\n"
                    f"{stack.worker_logs()[-6000:]}")
    return time.monotonic() - began


def test_a_worker_stops_listening_for_commands_at_once_whenever_its_listener_read_the_unsubscribe(redis_server):
    """The race behind a worker that took 20-60 s to exit on SIGTERM: its command listener (RQ's
    pubsub thread) had already read the unsubscribe's reply when it was told to stop, and the stop
    waited for it. Here the listener reads that reply first, every time."""
    worker = ChunkWorker(["unused"], connection=redis.Redis.from_url(redis_server.url), stop=threading.Event())
    for _ in range(3):
        worker.subscribe()
        wait_until(lambda: worker.pubsub.subscribed, 10, "the listener to subscribe")
        worker.pubsub.unsubscribe()
        wait_until(lambda: not worker.pubsub.subscribed, 10, "the listener to read the unsubscribe's reply")
        began = time.monotonic()
        worker.unsubscribe()
        assert time.monotonic() - began < 2  # RQ's own unsubscribe: 60 s (a daemon thread, left to its wait)


def test_a_run_goes_on_through_a_redis_outage_while_its_chunks_run(platform, tmp_path):
    server = RedisServer(tmp_path / "redis", persistent=True)
    server.start()
    stack = LoggedStack(platform, tmp_path / "data", server.url, workers=2, CHUNK_SIZE="32")
    try:
        task = stack.task(LABELS, frames(tmp_path / "frames", 96))  # 3 chunks of 1.6 s each
        rid = stack.annotate(SLOW, task)
        wait_until(lambda: stack.ok("GET", f"/api/lambda/requests/{rid}")["frames"]["done"] > 0, 60,
                   "the first chunk to store its frames")
        server.stop()  # while chunks are calling the function
        time.sleep(5)
        server.start()
        request = stack.wait(rid, 180)
        assert (request["status"], request["frames"]) == ("finished", {"total": 96, "done": 96, "failed": 0})
        shapes = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
        assert sorted(shape["frame"] for shape in shapes) == list(range(96))
        assert all(worker.poll() is None for worker in stack.workers), stack.worker_logs()
    finally:
        if not server.running():
            server.start()
        stack.close()
        server.stop()


# Isolation: deployments that share a Redis

def test_two_deployments_on_one_redis_each_annotate_their_own_task(platform, tmp_path, stack_factory):
    stacks = [stack_factory(platform, name, workers=1) for name in ("one", "two")]
    tasks = [stack.task(LABELS, frames(tmp_path / f"frames-{n}", 48)) for n, stack in enumerate(stacks)]
    assert tasks[0]["id"] == tasks[1]["id"]  # the same CVAT request id on both
    rids = [stack.annotate(FAST, task) for stack, task in zip(stacks, tasks)]
    for stack, task, rid in zip(stacks, tasks, rids):
        request = stack.wait(rid, 120)
        assert (request["status"], request["frames"]) == ("finished", {"total": 48, "done": 48, "failed": 0})
        shapes = stack.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]
        assert sorted(shape["frame"] for shape in shapes) == list(range(48))
    namespaces = {dispatcher_settings.load({"DATA_DIR": str(stack.data_dir)}).deployment_namespace for stack in stacks}
    assert len(namespaces) == 2
    keys = {key.decode() for key in redis.Redis.from_url(stacks[0].env["REDIS_URL"]).keys("dispatcher:*")}
    assert {key.split(":")[1] for key in keys} == namespaces


def test_a_worker_whose_store_lacks_the_task_leaves_the_run_alone(platform, tmp_path, redis_server, caplog):
    client = redis.Redis.from_url(redis_server.url)
    prefix = key_prefix("shared-by-mistake")
    book = RequestBook(client, 1800, 10800, prefix)
    run = book.create(Target(7), FAST, {}, [0, 1, 2])
    store = Store(None, tmp_path / "data", None, 100_000_000)  # has no task 7
    settings = dispatcher_settings.load({"NUCLIO_URL": platform.url})
    services = WorkerServices(book, CallSlots(client, prefix=prefix), Registry(Gateway(settings)), store, retries=1,
                              backoff=0.05, breaker=CircuitBreaker(client, prefix, 5, 30),
                              metrics=JobMetrics(client, prefix))
    try:
        assert run_chunk(run.id, [0, 1, 2], services, "chunk-0") == {"skipped": True, "foreign": True}
        request = book.get(run.request_id)
        assert (request["status"], request["frames"]["failed"]) == ("queued", 0)
        assert "task 7 is not in this worker's task store" in caplog.text
    finally:
        store.close()
        client.delete(*client.keys(f"{prefix}:*"))


def test_the_namespace_comes_from_where_the_tasks_live_unless_set(tmp_path):
    def namespace(**environ) -> str:
        return dispatcher_settings.load(environ).deployment_namespace

    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert namespace(DATA_DIR=one) == namespace(DATA_DIR=f"{tmp_path}/x/../one")  # the resolved SQLite path
    assert namespace(DATA_DIR=one) != namespace(DATA_DIR=two)
    database = "postgresql://u:secret@db/tasks"
    assert namespace(DATA_DIR=one, DATABASE_URL=database) == namespace(DATA_DIR=two, DATABASE_URL=database)
    assert "secret" not in namespace(DATABASE_URL=database) and len(namespace(DATABASE_URL=database)) == 10
    assert namespace(DATA_DIR=one, DEPLOYMENT_NAMESPACE="main") == "main"
    with pytest.raises(ValueError, match="DEPLOYMENT_NAMESPACE='a:b' must be"):
        namespace(DEPLOYMENT_NAMESPACE="a:b")
