"""Benchmark the dispatcher end to end against the function it calls.

    .venv/bin/python scripts/bench_dispatcher.py
    .venv/bin/python scripts/bench_dispatcher.py --frames 128 --large-frames 300 --scaling-frames 64

With the YOLO v3 function (openvino-omz-public-yolo-v3-tf; here the yolo-v3-tiny IR from
MODELS_DIR) over the COCO-128 val2017 JPEGs in ../shared/testdata, repeated to --frames:

1. in process: the function's ``init_context`` and ``handler`` called in this process, one frame
   after the other (scripts/bench_function.py's in-process mode): the model's own frames/s.
2. CVAT-style loop: one HTTP call per frame through the local platform's dashboard API
   (``POST /api/function_invocations``), exactly one call in flight, as CVAT's own loop does.
3. end to end: the platform serving just this function, ``python -m dispatcher serve`` and
   --workers ``python -m dispatcher worker`` processes; a task of server files, one
   ``POST /detectors/<id>/annotate``, polled until it ends. frames/s = frames / (the time from the
   POST to the final status). Any frame that fails is printed and the script exits non-zero.
4. the ratios end to end / in process (target >= 0.9) and end to end / loop (target >= 2.0).
5. peak resident memory of the API process and of each worker's process tree (RQ forks a child per
   chunk), sampled during the --frames task and then a --large-frames task on the same processes
   and settings (5000 frames: about 2.5 minutes on 2 cores).
6. scaling (--no-scaling skips it): the test probe function as a detector that sleeps 50 ms per
   call, with 1, 2, 4 and 8 workers, end to end vs the one-call loop; and a probe that does not
   sleep at all (2 workers), for the dispatcher's own cost per frame.

Needs Redis at 127.0.0.1:6379; database 11 is the benchmark's own and is flushed. The processes'
logs go to a temporary folder, kept (and named) when the run fails.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import redis
import rq
import yaml

from dispatcher.folder import free_port, stop_process
from dispatcher.registry import LambdaFunction

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared/testdata/coco128-val2017/images"
YOLO = "openvino-omz-public-yolo-v3-tf"
YOLO_DIR = REPO / "serverless/openvino/omz/public/yolo-v3-tf/nuclio"
PROBE_DIR = REPO / "tests/functions/probe"
PROBE_LABELS = [{"name": "thing", "type": "rectangle"}]
PROBE_SECONDS = 0.05
PROBE_WORKER_COUNTS = (1, 2, 4, 8)
REDIS_URL = "redis://127.0.0.1:6379/11"
FINAL_STATES = ("finished", "failed", "canceled")
POLL_SECONDS = 0.1
STARTUP_SECONDS = 300  # loading models on a busy machine can take minutes
TARGETS = {"e2e / in process": 0.9, "e2e / loop": 2.0}

# bench_function's in-process measurement, its latency line and its /proc memory walk.
bench_function = runpy.run_path(str(REPO / "scripts/bench_function.py"))
in_process, summary, tree_rss_mib = (bench_function[name] for name in ("in_process", "summary", "tree_rss_mib"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=512, help="frames of the main task (default 512)")
    parser.add_argument("--large-frames", type=int, default=5000, help="frames of the memory task (default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="dispatcher workers (default 2)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True,
                        help="run the probe scaling section (default: on)")
    parser.add_argument("--scaling-frames", type=int, default=256, help="frames per scaling run (default 256)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-dispatcher-"))
    try:
        results = run(args, work)
    except BaseException:
        print(f"\nprocess logs kept in {work}/logs", file=sys.stderr)
        raise
    shutil.rmtree(work)
    print_summary(results, args)
    return 0


def run(args: argparse.Namespace, work: Path) -> dict:
    images = sorted(IMAGES.glob("*.jpg"))
    names = [path.name for path in images]  # server files: paths relative to SERVER_FILES_ROOT
    bodies = [{"image": base64.b64encode(path.read_bytes()).decode(), "threshold": args.threshold} for path in images]
    files, calls = repeated(names, args.frames), repeated(bodies, args.frames)
    results = {}
    print(f"{YOLO}: {args.frames} frames ({len(images)} COCO val2017 JPEGs repeated), threshold {args.threshold}, "
          f"{args.workers} dispatcher workers, {os.cpu_count()} CPU cores\n")

    # First, while nothing else runs: the model alone.
    results["in process"] = in_process(YOLO_DIR, calls, 1)["images_per_s"]

    with Stack(work, "yolo", ["serverless", "--function", YOLO], args.workers) as stack:
        results["yolo workers"] = stack.function_workers(YOLO)
        results["loop"] = sequential_loop(stack.platform_url, YOLO, calls)
        labels = stack.labels(YOLO)
        results["memory"] = []  # (frames, peak MiB by process)
        for name, task_files in (("e2e", files), ("e2e large", repeated(names, args.large_frames))):
            with PeakMemory(stack.memory_probes()) as memory:
                results[name] = stack.annotate(YOLO, labels, task_files, args.threshold)
            results["memory"].append((len(task_files), memory.peaks))
    results["ratios"] = {"e2e / in process": results["e2e"] / results["in process"],
                         "e2e / loop": results["e2e"] / results["loop"]}
    print_ratios(results, args)
    print_memory(results["memory"])

    if args.scaling:
        results["scaling"] = scaling(work, args, repeated(names, args.scaling_frames),
                                     repeated(bodies, args.scaling_frames))
    return results


def repeated(items: list, count: int) -> list:
    return [items[index % len(items)] for index in range(count)]


class Stack:
    """The local platform, the dispatcher API and its workers as processes (each in its own process
    group, stopped on exit even on Ctrl-C), on Redis database 11 and a data folder of their own."""

    def __init__(self, work: Path, name: str, platform_args: list[str], workers: int):
        self.logs = work / "logs" / name
        self.workers = workers
        self.platform_args = platform_args
        self.platform_port, self.api_port = free_port(), free_port()
        self.platform_url = f"http://127.0.0.1:{self.platform_port}"
        self.env = {**os.environ, "NUCLIO_URL": self.platform_url, "REDIS_URL": REDIS_URL,
                    "DATA_DIR": str(work / name / "data"), "SERVER_FILES_ROOT": str(IMAGES)}
        self.processes: dict[str, subprocess.Popen] = {}
        self.platform = httpx.Client(base_url=self.platform_url, timeout=120)
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=120)

    def __enter__(self) -> Stack:
        self.logs.mkdir(parents=True)
        redis.Redis.from_url(REDIS_URL).flushdb()  # the benchmark's own database: no stale requests or workers
        try:
            self._start("platform", "serverless.runtime", "platform", *self.platform_args,
                        "--port", str(self.platform_port))
            self._start("api", "dispatcher", "serve", "--port", str(self.api_port))
            for index in range(1, self.workers + 1):
                self._start(f"worker {index}", "dispatcher", "worker")
            self._wait_ready()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop()

    def _start(self, name: str, module: str, *args: str) -> None:
        with open(self.logs / f"{name.replace(' ', '-')}.log", "wb") as log:
            self.processes[name] = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=self.env,
                                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _stop(self) -> None:
        self.platform.close()
        self.api.close()
        for process in self.processes.values():
            stop_process(process)

    def _wait_ready(self) -> None:
        """Every function loaded, the API answering and every worker listening: none of the
        start-up may count in a measurement."""
        def functions_settled():
            configs = self._get(self.platform, "/api/functions")
            return configs and all(c["status"]["state"] != "building" for c in configs.values()) and configs

        configs = wait(functions_settled, "the platform's functions to load", self)
        broken = {name: c["status"]["message"] for name, c in configs.items() if c["status"]["state"] != "ready"}
        if broken:
            raise SystemExit(f"functions not ready: {broken}")
        wait(lambda: self._get(self.api, "/health"), "the dispatcher API to answer", self)
        connection = redis.Redis.from_url(REDIS_URL)
        wait(lambda: rq.Worker.count(connection=connection) == self.workers, "the dispatcher workers to start", self)

    def _get(self, client: httpx.Client, path: str):
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with code {process.returncode}; see {self.logs}")
        with contextlib.suppress(httpx.TransportError):
            reply = client.get(path)
            return reply.json() if reply.status_code == 200 else None

    def function_workers(self, function_id: str) -> int:
        """How many calls the function serves at once, as the dispatcher reads it."""
        return LambdaFunction.from_config(checked(self.platform.get(f"/api/functions/{function_id}"))).workers

    def labels(self, function_id: str) -> list[dict]:
        """The function's own labels, so that every result maps to a task label by name."""
        function = checked(self.api.get(f"/api/lambda/functions/{function_id}"))
        return [{key: label[key] for key in ("name", "type", "attributes")} for label in function["labels_v2"]]

    def memory_probes(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items() if name != "platform"}

    def annotate(self, function_id: str, labels: list[dict], files: list[str], threshold: float) -> float:
        """One task of server files annotated end to end; returns frames/s from the POST to the final status."""
        task = checked(self.api.post("/api/tasks", json={"name": f"bench {function_id}", "labels": labels}))
        checked(self.api.post(f"/api/tasks/{task['id']}/data", json={"server_files": files}))
        started = time.perf_counter()
        request = checked(self.api.post(f"/detectors/{function_id}/annotate",
                                        json={"task": task["id"], "threshold": threshold}))
        while request["status"] not in FINAL_STATES:
            time.sleep(POLL_SECONDS)
            request = checked(self.api.get(f"/api/lambda/requests/{request['id']}"))
        seconds = time.perf_counter() - started
        frames = request["frames"]
        if request["status"] != "finished" or frames["done"] != frames["total"]:
            for failure in request["failures"][:20]:
                print(f"  frame {failure['frame']} failed: {failure['reason']}", file=sys.stderr)
            raise SystemExit(f"{function_id}: the request {request['status']} with {frames} "
                             f"({request['exc_info']}); see {self.logs}")
        # Aligned with bench_function's summary lines. The request's own fps counts from its first
        # chunk's start, which comes after RQ forked a child for it and that child set itself up.
        queued = datetime.fromisoformat(request["started"]) - datetime.fromisoformat(request["enqueued"])
        print(f"{f'end to end, {len(files)} frames':<30} {'':<34}{len(files) / seconds:6.1f} frames/s"
              f"   ({seconds:.1f} s; first chunk started after {queued.total_seconds():.2f} s; "
              f"the request's own fps {request['fps']:.1f})")
        return len(files) / seconds


def wait(check, what: str, stack: Stack):
    deadline = time.monotonic() + STARTUP_SECONDS
    while not (result := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}; see {stack.logs}")
        time.sleep(0.2)
    return result


def checked(reply: httpx.Response):
    if reply.status_code >= 400:
        raise SystemExit(f"{reply.request.method} {reply.request.url} answered {reply.status_code}: {reply.text}")
    return reply.json()


def sequential_loop(platform_url: str, function_id: str, bodies: list[dict], label: str = "CVAT-style loop") -> float:
    """One call per frame through the dashboard API, the next sent when the last has answered."""
    with httpx.Client(base_url=platform_url, timeout=120) as http:
        def call(body: dict) -> float:
            started = time.perf_counter()
            checked(http.post("/api/function_invocations", headers={"x-nuclio-function-name": function_id}, json=body))
            return time.perf_counter() - started

        call(bodies[0])  # warm-up: the connection and the function's first call
        started = time.perf_counter()
        latencies = [call(body) for body in bodies]
        return summary(f"{label}, 1 in flight", latencies, time.perf_counter() - started)["images_per_s"]


class PeakMemory(threading.Thread):
    """Samples the resident memory of process trees (a process and its children) while in use."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2):
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.peaks = dict.fromkeys(pids, 0.0)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            for name, pid in self.pids.items():
                self.peaks[name] = max(self.peaks[name], tree_rss_mib(pid))

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.done.set()
        self.join()


def verdict(name: str, ratio: float) -> str:
    return f"target >= {TARGETS[name]}   {'PASS' if ratio >= TARGETS[name] else 'MISS'}"


def print_ratios(results: dict, args: argparse.Namespace) -> None:
    print()
    for name, ratio in results["ratios"].items():
        print(f"{name:<30}{ratio:6.2f}   {verdict(name, ratio)}")
    print(f"note: the CPU bounds both ratios: the function ({results['yolo workers']} workers) and the dispatcher "
          f"(API, {args.workers} workers) share this machine's {os.cpu_count()} cores")


def print_memory(memory: list[tuple[int, dict[str, float]]]) -> None:
    print(f"\n{'peak resident memory, MiB':<30}" + "".join(f"{f'{size} frames':>14}" for size, _ in memory))
    for name in memory[0][1]:
        print(f"  {name + (' + chunk child' if name.startswith('worker') else ''):<28}"
              + "".join(f"{peaks[name]:14.0f}" for _, peaks in memory))


def scaling(work: Path, args: argparse.Namespace, files: list[str], bodies: list[dict]) -> dict:
    """Probe copies that sleep PROBE_SECONDS per call (and one that does not), served together."""
    tree = work / "probes"
    probes = {f"bench-probe-{n}w": (n, PROBE_SECONDS) for n in PROBE_WORKER_COUNTS}
    probes["bench-probe-noop"] = (2, 0)
    for name, (workers, seconds) in probes.items():
        probe_copy(tree / name, name, workers, seconds)
    print(f"\nscaling: the probe sleeping {PROBE_SECONDS * 1000:.0f} ms per call, {len(files)} frames, "
          f"{args.workers} dispatcher workers\n(up to {args.workers} chunks at once, "
          f"each keeping as many calls in flight as the function has workers)")
    rows = {}
    with Stack(work, "probes", [str(tree)], args.workers) as stack:
        for name, (workers, seconds) in probes.items():
            print(f"\n{name}: {workers} worker(s), sleeps {seconds * 1000:.0f} ms")
            loop = sequential_loop(stack.platform_url, name, bodies, "loop")
            e2e = stack.annotate(name, PROBE_LABELS, files, args.threshold)
            rows[name] = {"workers": workers, "seconds": seconds, "loop": loop, "e2e": e2e}
            print(f"{'e2e / loop':<30}{e2e / loop:6.2f}" if seconds else f"{'e2e ms per frame':<30}{1000 / e2e:6.1f}")
    return rows


def probe_copy(folder: Path, name: str, workers: int, seconds: float) -> None:
    shutil.copytree(PROBE_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    config_path = folder / "function.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["metadata"]["name"] = name
    spec = config["spec"]
    spec["env"] = [{"name": "PROBE_DETECT_SECONDS", "value": str(seconds)}]
    spec["eventTimeout"] = "30s"
    trigger = spec["triggers"]["myHttpTrigger"]
    trigger["attributes"]["maxRequestBodySize"] = 33554432  # the frames are whole COCO JPEGs
    trigger["maxWorkers"] = trigger["numWorkers"] = workers
    config_path.write_text(yaml.safe_dump(config))


def print_summary(results: dict, args: argparse.Namespace) -> None:
    def row(label: str, value: float, note: str = "") -> None:
        print(f"{label:<40}{value:9.2f}   {note}".rstrip())

    print("\nsummary")
    row("yolo in process, sequential", results["in process"], "frames/s")
    row("yolo CVAT-style loop, 1 in flight", results["loop"], "frames/s")
    row(f"yolo end to end, {args.frames} frames", results["e2e"], "frames/s")
    row(f"yolo end to end, {args.large_frames} frames", results["e2e large"], "frames/s")
    for name, ratio in results["ratios"].items():
        row(name, ratio, verdict(name, ratio))
    for size, peaks in results["memory"]:
        print(f"{f'peak RSS at {size} frames, MiB':<40}" + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    for _name, probe in results.get("scaling", {}).items():
        if probe["seconds"]:
            row(f"probe {probe['seconds'] * 1000:.0f} ms, {probe['workers']} worker(s), e2e", probe["e2e"],
                f"frames/s   loop {probe['loop']:.1f}   e2e / loop {probe['e2e'] / probe['loop']:.2f}")
        else:
            row(f"probe no-op, {probe['workers']} worker(s), e2e", 1000 / probe["e2e"], "ms per frame")

if __name__ == "__main__":
    sys.exit(main())
