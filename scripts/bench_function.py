"""Benchmark one function: in process vs. through the local runtime over HTTP.

    .venv/bin/python scripts/bench_function.py serverless/openvino/omz/intel/face-detection-0205/nuclio
    .venv/bin/python scripts/bench_function.py <function dir> --env NAME=VALUE --images 32 --concurrency 2

In process, the function's own ``init_context`` and ``handler`` run with nuclio-sdk objects, as a
nuclio worker calls them (the body arrives parsed, as nuclio parses JSON). Over HTTP, the same
images go through ``python -m serverless.runtime serve`` from 1 client, then from N in parallel.
Images are real COCO val2017 JPEGs from ../shared/testdata, sent as base64 of the file.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import logging
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nuclio_sdk

from serverless.runtime.ports import free_port

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared/testdata/coco128-val2017/images"


def summary(name: str, latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    row = {"path": name, "p50_ms": 1000 * statistics.median(ordered),
           "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
           "images_per_s": len(ordered) / wall}
    print(f"{name:<30} p50 {row['p50_ms']:7.1f} ms   p95 {row['p95_ms']:7.1f} ms   {row['images_per_s']:6.1f} images/s")
    return row


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def in_process(function_dir: Path, bodies: list[dict], repeat: int) -> dict:
    sys.path.insert(0, str(function_dir))
    main = importlib.import_module("main")
    context = nuclio_sdk.Context(nuclio_sdk.Logger(logging.WARNING), nuclio_sdk.Platform("local"), 0)
    started = time.perf_counter()
    main.init_context(context)
    print(f"init_context: {time.perf_counter() - started:.2f} s")

    def call(body: dict) -> float:
        t0 = time.perf_counter()
        response = main.handler(context, nuclio_sdk.Event(body=body, content_type="application/json"))
        if response.status_code != 200:
            raise SystemExit(f"the handler answered {response.status_code}: {response.body}")
        return time.perf_counter() - t0

    call(bodies[0])  # warm-up
    started = time.perf_counter()
    latencies = [call(body) for _ in range(repeat) for body in bodies]
    return summary("in process, sequential", latencies, time.perf_counter() - started)


def over_http(function_dir: Path, bodies: list[dict], repeat: int, concurrency: int) -> tuple[list[dict], float]:
    port = free_port()
    processor = subprocess.Popen([sys.executable, "-m", "serverless.runtime", "serve", str(function_dir),
                                  "--port", str(port)], cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                          limits=httpx.Limits(max_keepalive_connections=concurrency)) as http:
            deadline = time.monotonic() + 180
            while True:
                try:
                    state = http.get("/__runtime/ready").json()["state"]
                except (httpx.TransportError, ValueError):
                    state = "building"
                if state == "ready":
                    break
                if state == "error" or time.monotonic() > deadline:
                    raise SystemExit(f"the function did not become ready ({state})")
                time.sleep(0.1)

            def call(body: dict) -> float:
                t0 = time.perf_counter()
                http.post("/", json=body).raise_for_status()
                return time.perf_counter() - t0

            call(bodies[0])
            rows = []
            for clients in sorted({1, concurrency}):
                with ThreadPoolExecutor(clients) as pool:
                    started = time.perf_counter()
                    latencies = list(pool.map(call, [b for _ in range(repeat) for b in bodies]))
                    rows.append(summary(f"over HTTP, {clients} client(s)", latencies, time.perf_counter() - started))
            return rows, tree_rss_mib(processor.pid)
    finally:
        processor.terminate()
        processor.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("function", type=Path, help="a function folder")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment for the function")
    parser.add_argument("--images", type=int, default=64, help="how many COCO images (default 64)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=2, help="parallel HTTP clients")
    args = parser.parse_args()
    os.environ.update(dict(item.split("=", 1) for item in args.env))  # for both paths: the processor inherits it

    function_dir = args.function.resolve()
    paths = sorted(IMAGES.glob("*.jpg"))[: args.images]
    bodies = [{"image": base64.b64encode(p.read_bytes()).decode(), "threshold": args.threshold} for p in paths]
    print(f"{function_dir.relative_to(REPO)}: {len(bodies)} COCO val2017 JPEGs x {args.repeat}, "
          f"threshold {args.threshold}\n")
    local = in_process(function_dir, bodies, args.repeat)
    rows, rss = over_http(function_dir, bodies, args.repeat, args.concurrency)
    print(f"\noverhead per call (HTTP p50 - in-process p50): {rows[0]['p50_ms'] - local['p50_ms']:.1f} ms")
    print(f"processor + workers resident memory: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
