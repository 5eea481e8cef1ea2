"""Benchmark the product's main job against the function it calls and against CVAT's loop.

    .venv/bin/python scripts/bench_dispatcher.py              # everything, about 25 minutes on 2 cores
    .venv/bin/python scripts/bench_dispatcher.py --runs 1 --large-frames 0 --no-probes   # a quick look

For YOLO v3 (openvino-omz-public-yolo-v3-tf; here its yolo-v3-tiny IR) and attributed face
detection (openvino-omz-intel-face-detection-0205), over the COCO-128 val2017 JPEGs of
../shared/testdata repeated to --frames, each of --runs rounds measures, one after the other:

1. in process: the function's own ``init_context`` and ``handler`` in this process, from 1 thread
   and from 2 threads (each thread with a context of its own, as each nuclio worker has): the
   model's frames/s; the better of the two is the bar;
2. CVAT-style loop: one call per frame through the platform's dashboard API, the next sent when
   the last has answered, as CVAT's lambda manager does;
3. end to end: ``POST /detectors/<id>/annotate`` on a task of server files, with the platform
   serving the function, ``python -m dispatcher serve`` and --workers ``python -m dispatcher
   worker`` processes (calls straight to the function's port, batched as its function.yaml allows),
   polled every 0.1 s: frames/s from the POST to the final status, and the longest time the
   request's done count stood still before it reached the total.

The ratios e2e / in process (target >= 0.9) and e2e / loop (target >= 1.3) are taken within each
round; the median over the rounds is the result.

4. memory: peak resident memory of the API and of each worker's process tree during a YOLO v3
   task of --frames and one of --large-frames (default 10,000), on the same processes: flat in
   task size.
5. probes (--no-probes skips them): the test probe as a detector that sleeps 50 ms per frame, with
   1, 2, 4 and 8 workers, end to end vs the loop (target >= 2 from 2 workers on: capacity the loop
   cannot use), and one that does not sleep: the dispatcher's and the runtime's own cost per frame
   (target <= 2 ms).

Needs Redis at 127.0.0.1:6379; database 11 is the benchmark's own, flushed before and after. The processes'
logs go to a temporary folder, kept (and named) when the run fails.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib
import logging
import os
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nuclio_sdk
import redis
import rq
import yaml

from dispatcher.folder import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared/testdata/coco128-val2017/images"
FUNCTIONS = {
    "openvino-omz-public-yolo-v3-tf": REPO / "serverless/openvino/omz/public/yolo-v3-tf/nuclio",
    "openvino-omz-intel-face-detection-0205": REPO / "serverless/openvino/omz/intel/face-detection-0205/nuclio",
}
YOLO = "openvino-omz-public-yolo-v3-tf"
PROBE_DIR = REPO / "tests/functions/probe"
PROBE_LABELS = [{"name": "thing", "type": "rectangle"}]
PROBE_SECONDS = 0.05
PROBE_WORKER_COUNTS = (1, 2, 4, 8)
REDIS_URL = "redis://127.0.0.1:6379/11"
FINAL_STATES = ("finished", "failed", "canceled")
POLL_SECONDS = 0.1
STARTUP_SECONDS = 300  # loading models on a busy machine can take minutes
# name -> (target, whether the value must be at least it (else at most it))
TARGETS = {"e2e / in process": (0.9, True), "e2e / loop": (1.3, True), "progress stood still, s": (1.0, False),
           "probe e2e / loop": (2.0, True), "no-op ms per frame": (2.0, False)}

tree_rss_mib = runpy.run_path(str(REPO / "scripts/bench_function.py"))["tree_rss_mib"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=512, help="frames per task (default 512)")
    parser.add_argument("--runs", type=int, default=3, help="rounds per function; the median counts (default 3)")
    parser.add_argument("--large-frames", type=int, default=10000,
                        help="frames of the memory task (default 10000; 0 skips it)")
    parser.add_argument("--workers", type=int, default=2, help="dispatcher workers (default 2)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--probes", action=argparse.BooleanOptionalAction, default=True,
                        help="run the probe section (default: on)")
    parser.add_argument("--probe-frames", type=int, default=512, help="frames per probe task (default 512)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-dispatcher-"))
    try:
        results = run(args, work)
    except BaseException:
        print(f"\nprocess logs kept in {work}/logs", file=sys.stderr)
        raise
    shutil.rmtree(work)
    return print_summary(results, args)


def run(args: argparse.Namespace, work: Path) -> dict:
    images = sorted(IMAGES.glob("*.jpg"))
    names = [path.name for path in images]  # server files: paths relative to SERVER_FILES_ROOT
    bodies = [{"image": base64.b64encode(path.read_bytes()).decode(), "threshold": args.threshold} for path in images]
    files, calls = repeated(names, args.frames), repeated(bodies, args.frames)
    print(f"{args.frames} frames ({len(images)} COCO val2017 JPEGs repeated), threshold {args.threshold}, "
          f"{args.workers} dispatcher workers, {os.cpu_count()} CPU cores, {args.runs} round(s)")
    results = {"functions": {}}
    for function_id, folder in FUNCTIONS.items():
        print(f"\n{function_id}")
        model = InProcess(folder, contexts=2)
        rounds = []
        with Stack(work, function_id, ["serverless", "--function", function_id], args.workers) as stack:
            labels = stack.labels(function_id)
            for index in range(args.runs):
                print(f" round {index + 1}")
                one, two = model.throughput(calls, 1), model.throughput(calls, 2)
                print(f"  in process: {one:6.1f} frames/s from 1 thread, {two:6.1f} from 2")
                loop = sequential_loop(stack.platform_url, function_id, calls)
                print(f"  CVAT-style loop: {loop:6.1f} frames/s")
                e2e = stack.annotate(function_id, labels, files, args.threshold)
                rounds.append({"in process": max(one, two), "loop": loop, "e2e": e2e["fps"], "stall": e2e["stall"],
                               "e2e / in process": e2e["fps"] / max(one, two), "e2e / loop": e2e["fps"] / loop})
            if function_id == YOLO and args.large_frames:
                results["memory"] = memory(stack, labels, files, repeated(names, args.large_frames), args.threshold)
        results["functions"][function_id] = rounds
    if args.probes:
        results["probes"] = probes(work, args, repeated(names, args.probe_frames), repeated(bodies, args.probe_frames))
    return results


def repeated(items: list, count: int) -> list:
    return [items[index % len(items)] for index in range(count)]


class InProcess:
    """A function folder's ``main.py`` in this process, with one nuclio context per thread, each
    through ``init_context`` (its own model), as each nuclio worker process has its own."""

    def __init__(self, folder: Path, contexts: int):
        for module in ("main", "model_handler", "network"):  # another function's modules of the same names
            sys.modules.pop(module, None)
        sys.path.insert(0, str(folder))
        try:
            self.main = importlib.import_module("main")
            self.contexts = []
            for worker_id in range(contexts):
                logger = nuclio_sdk.Logger(logging.WARNING)
                context = nuclio_sdk.Context(logger, nuclio_sdk.Platform("local"), worker_id)
                self.main.init_context(context)
                self.contexts.append(context)
        finally:
            sys.path.remove(str(folder))

    def call(self, context, body: dict) -> None:
        response = self.main.handler(context, nuclio_sdk.Event(body=body, content_type="application/json"))
        if response.status_code != 200:
            raise SystemExit(f"the handler answered {response.status_code}: {response.body}")

    def throughput(self, bodies: list[dict], threads: int) -> float:
        """Frames/s over ``bodies``, split between ``threads`` threads, each with its own context."""
        for context in self.contexts[:threads]:
            self.call(context, bodies[0])  # warm-up

        def share(index: int) -> None:
            for body in bodies[index::threads]:
                self.call(self.contexts[index], body)

        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(share, range(threads)))
        return len(bodies) / (time.perf_counter() - started)


class Stack:
    """The local platform, the dispatcher API and its workers as processes (each in its own process
    group, stopped on exit even on Ctrl-C), on Redis database 11 and a data folder of their own."""

    def __init__(self, work: Path, name: str, platform_args: list[str], workers: int):
        self.logs = work / "logs" / name
        self.workers = workers
        self.platform_args = platform_args
        self.platform_port, self.api_port = free_port(), free_port()
        self.platform_url = f"http://127.0.0.1:{self.platform_port}"
        # Calls go straight to each function's port, as annotate-folder and docker compose do.
        self.env = {**os.environ, "NUCLIO_URL": self.platform_url, "NUCLIO_INVOKE_METHOD": "direct",
                    "REDIS_URL": REDIS_URL, "DATA_DIR": str(work / name / "data"), "SERVER_FILES_ROOT": str(IMAGES)}
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
        redis.Redis.from_url(REDIS_URL).flushdb()  # and left empty, as it was found

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

    def labels(self, function_id: str) -> list[dict]:
        """The function's own labels, so that every result maps to a task label by name."""
        function = checked(self.api.get(f"/api/lambda/functions/{function_id}"))
        return [{key: label[key] for key in ("name", "type", "attributes")} for label in function["labels_v2"]]

    def memory_probes(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items() if name != "platform"}

    def annotate(self, function_id: str, labels: list[dict], files: list[str], threshold: float) -> dict:
        """One task of server files annotated end to end: frames/s from the POST to the final status,
        and the longest the request's done count stood still before the last frame was done."""
        task = checked(self.api.post("/api/tasks", json={"name": f"bench {function_id}", "labels": labels}))
        checked(self.api.post(f"/api/tasks/{task['id']}/data", json={"server_files": files}))
        started = time.perf_counter()
        request = checked(self.api.post(f"/detectors/{function_id}/annotate",
                                        json={"task": task["id"], "threshold": threshold}))
        done, moved, stall = 0, started, 0.0
        while request["status"] not in FINAL_STATES:
            time.sleep(POLL_SECONDS)
            request = checked(self.api.get(f"/api/lambda/requests/{request['id']}"))
            now = time.perf_counter()
            if request["frames"]["done"] != done:
                done, stall, moved = request["frames"]["done"], max(stall, now - moved), now
        seconds = time.perf_counter() - started
        frames = request["frames"]
        if request["status"] != "finished" or frames["done"] != frames["total"]:
            for failure in request["failures"][:20]:
                print(f"  frame {failure['frame']} failed: {failure['reason']}", file=sys.stderr)
            raise SystemExit(f"{function_id}: the request {request['status']} with {frames} "
                             f"({request['exc_info']}); see {self.logs}")
        checked(self.api.delete(f"/api/tasks/{task['id']}"))  # the next run starts from the same store size
        print(f"  end to end, {len(files)} frames: {len(files) / seconds:6.1f} frames/s ({seconds:.1f} s), "
              f"progress stood still at most {stall:.2f} s")
        return {"fps": len(files) / seconds, "stall": stall, "seconds": seconds}


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
    return reply.json() if reply.content else None


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
        return len(latencies) / (time.perf_counter() - started)


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


def memory(stack: Stack, labels: list[dict], small: list[str], large: list[str], threshold: float) -> list:
    """Peak RSS by process during a small and a large task on the same processes."""
    rows = []
    for files in (small, large):
        print(f"  memory: a task of {len(files)} frames")
        with PeakMemory(stack.memory_probes()) as peaks:
            stack.annotate(YOLO, labels, files, threshold)
        rows.append((len(files), peaks.peaks))
    return rows


def probes(work: Path, args: argparse.Namespace, files: list[str], bodies: list[dict]) -> dict:
    """Probe copies that sleep PROBE_SECONDS per frame (and one that does not), served together;
    like our detectors, each takes batches of up to 16 frames."""
    tree = work / "probes"
    copies = {f"bench-probe-{n}w": (n, PROBE_SECONDS) for n in PROBE_WORKER_COUNTS}
    copies["bench-probe-noop"] = (2, 0)
    for name, (workers, seconds) in copies.items():
        probe_copy(tree / name, name, workers, seconds)
    print(f"\nprobes: {len(files)} frames, {args.workers} dispatcher workers")
    rows = {}
    with Stack(work, "probes", [str(tree)], args.workers) as stack:
        for name, (workers, seconds) in copies.items():
            print(f" {name}: {workers} worker(s), sleeps {seconds * 1000:.0f} ms per frame")
            loop = sequential_loop(stack.platform_url, name, bodies)
            e2e = stack.annotate(name, PROBE_LABELS, files, args.threshold)["fps"]
            rows[name] = {"workers": workers, "seconds": seconds, "loop": loop, "e2e": e2e}
    return rows


def probe_copy(folder: Path, name: str, workers: int, seconds: float) -> None:
    shutil.copytree(PROBE_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    config_path = folder / "function.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["metadata"]["name"] = name
    config["metadata"]["annotations"]["max_batch"] = "16"
    spec = config["spec"]
    spec["env"] = [{"name": "PROBE_DETECT_SECONDS", "value": str(seconds)}]
    spec["eventTimeout"] = "30s"
    trigger = spec["triggers"]["myHttpTrigger"]
    trigger["attributes"]["maxRequestBodySize"] = 67108864  # up to 16 whole COCO JPEGs
    trigger["maxWorkers"] = trigger["numWorkers"] = workers
    config_path.write_text(yaml.safe_dump(config))


def verdict(name: str, value: float) -> str:
    target, at_least = TARGETS[name]
    met = value >= target if at_least else value <= target
    return f"target {'>=' if at_least else '<='} {target:g}: {'met' if met else 'MISSED'}"


def print_summary(results: dict, args: argparse.Namespace) -> int:
    """The table the README shows; exit status 1 when a target is missed."""
    missed = 0

    def row(label: str, value: float, unit: str, target: str | None = None) -> None:
        nonlocal missed
        note = verdict(target, value) if target else ""
        missed += "MISSED" in note
        print(f"{label:<62}{value:9.2f} {unit:<10}{note}")

    print(f"\nsummary: medians of {args.runs} round(s), {args.frames} frames, {os.cpu_count()} cores")
    for function_id, rounds in results["functions"].items():
        median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        print(function_id)
        row("  in process, the better of 1 and 2 threads", median["in process"], "frames/s")
        row("  CVAT-style loop", median["loop"], "frames/s")
        row("  end to end", median["e2e"], "frames/s")
        row("  end to end / in process", median["e2e / in process"], "", "e2e / in process")
        row("  end to end / loop", median["e2e / loop"], "", "e2e / loop")
        row("  progress stood still at most (worst round)", max(r["stall"] for r in rounds), "s",
            "progress stood still, s")
    for size, peaks in results.get("memory", []):
        print(f"{f'peak RSS at {size} frames, MiB':<62}" + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    for probe in results.get("probes", {}).values():
        if probe["seconds"]:
            row(f"probe {probe['seconds'] * 1000:.0f} ms/frame, {probe['workers']} worker(s): e2e / loop",
                probe["e2e"] / probe["loop"], f"({probe['e2e']:.0f} fps)",
                "probe e2e / loop" if probe["workers"] >= 2 else None)
        else:
            row(f"probe no-op, {probe['workers']} workers: end to end per frame", 1000 / probe["e2e"], "ms",
                "no-op ms per frame")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
