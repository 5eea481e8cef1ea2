"""Benchmark the attributed face detection function: in process vs. through the local runtime over HTTP.

    .venv/bin/python scripts/bench_face.py [--images 64] [--repeat 2] [--concurrency 2]

Uses real COCO val2017 JPEGs from ../shared/testdata. Every path decodes the same base64 JPEG,
so the difference between them is what the runtime adds: JSON, HTTP, the hop to a worker process.
"""

from __future__ import annotations

import argparse
import base64
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
FUNCTION = REPO / "serverless/openvino/omz/intel/face-detection-0205/nuclio"
IMAGES = REPO.parent / "shared/testdata/coco128-val2017/images"


def summary(name: str, latencies: list[float], wall: float, count: int) -> dict:
    ordered = sorted(latencies)
    row = {"path": name, "p50_ms": 1000 * statistics.median(ordered),
           "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
           "images_per_s": count / wall}
    print(f"{name:<34} p50 {row['p50_ms']:7.1f} ms   p95 {row['p95_ms']:7.1f} ms   {row['images_per_s']:6.1f} images/s")
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


def in_process(payloads: list[str], repeat: int) -> dict:
    sys.path.insert(0, str(FUNCTION))
    from model_handler import FaceDetector

    from serverless.common.images import decode_image

    detector = FaceDetector()
    detector.detect(decode_image(payloads[0]), 0.5)  # warm-up
    latencies, started = [], time.perf_counter()
    for _ in range(repeat):
        for payload in payloads:
            t0 = time.perf_counter()
            detector.detect(decode_image(payload), 0.5)
            latencies.append(time.perf_counter() - t0)
    return summary("in process (decode + infer)", latencies, time.perf_counter() - started, len(latencies))


def over_http(payloads: list[str], repeat: int, concurrency: int) -> tuple[dict, dict, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processor = subprocess.Popen([sys.executable, "-m", "serverless.runtime", "serve", str(FUNCTION), "--port", str(port)],
                                 cwd=REPO, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_keepalive_connections=concurrency)) as http:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if http.get("/__runtime/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                raise SystemExit("the processor did not become ready")

            def call(payload: str) -> float:
                t0 = time.perf_counter()
                reply = http.post("/", json={"image": payload, "threshold": 0.5})
                reply.raise_for_status()
                return time.perf_counter() - t0

            call(payloads[0])
            started = time.perf_counter()
            latencies = [call(p) for _ in range(repeat) for p in payloads]
            sequential = summary("runtime over HTTP, 1 client", latencies, time.perf_counter() - started, len(latencies))

            with ThreadPoolExecutor(concurrency) as pool:
                started = time.perf_counter()
                latencies = list(pool.map(call, [p for _ in range(repeat) for p in payloads]))
                parallel = summary(f"runtime over HTTP, {concurrency} clients", latencies,
                                   time.perf_counter() - started, len(latencies))
            return sequential, parallel, tree_rss_mib(processor.pid)
    finally:
        processor.terminate()
        processor.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="how many COCO images (default 64)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2, help="parallel HTTP clients (the function has 2 workers)")
    args = parser.parse_args()

    paths = sorted(IMAGES.glob("*.jpg"))[: args.images]
    payloads = [base64.b64encode(p.read_bytes()).decode() for p in paths]
    print(f"{len(payloads)} COCO val2017 JPEGs x {args.repeat}, threshold 0.5\n")
    local = in_process(payloads, args.repeat)
    sequential, parallel, rss = over_http(payloads, args.repeat, args.concurrency)
    print(f"\noverhead per call (HTTP p50 - in-process p50): {sequential['p50_ms'] - local['p50_ms']:.1f} ms")
    print(f"processor + workers resident memory: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
