"""Fuzz the dispatcher's API with schemathesis, from its own OpenAPI document, and count what it got.

Starts the local platform (the weightless GrabCut and colour-histogram ReID functions), the API with
an ``API_TOKEN`` (sent with every call, so what lies behind the credentials check is fuzzed, not
only its 401) on SQLite (or ``--database-url``) in a temporary folder with server files, and a Redis
database of its own, emptied before and after. A few tasks with frames and labels give the fuzzer ids to hit.
Then ``st run`` against it, and a summary from its reports: requests sent (HAR), responses by
status class, every 5xx with its request, and the checks that failed (JUnit). Exits 1 on any server
error, or with ``--strict`` on any failed check too (a schemathesis error of its own is reported,
not counted: it is about the fuzzer, not the API).

    .venv/bin/python scripts/fuzz_api.py --max-time 480             # 33,120 requests, 0 5xx, here on 2 cores
    .venv/bin/python scripts/fuzz_api.py --max-time 240 --database-url postgresql://postgres@127.0.0.1/fuzz
                                      # on an empty PostgreSQL database: 16,819 requests, 0 5xx
    .venv/bin/python scripts/fuzz_api.py --max-examples 20 --strict  # a quick pass, every check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from dispatcher.folder import free_port

REPO = Path(__file__).resolve().parents[1]
FUNCTIONS = [REPO / "serverless/opencv/grabcut/nuclio", REPO / "serverless/opencv/reid-colour-histogram/nuclio"]
TOKEN = "fuzz-token"
# What every response is held to. Left out: the stateful checks (they need links between operations,
# which the document does not declare) and the authorization checks (one user, no security scheme).
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection,unsupported_method,allow_header_conformance")


def wait_for(url: str, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not come up within {timeout:g}s")


def png(width: int, height: int) -> bytes:
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def seed(api: httpx.Client, share: Path) -> None:
    """Tasks 1-3 with frames, labels and a shape, so small ids reach real rows."""
    (share / "folder").mkdir()
    (share / "folder/frame.png").write_bytes(png(32, 24))
    (share / "loop").symlink_to(share / "loop")
    labels = [{"name": "car", "type": "rectangle", "attributes": [
        {"name": "colour", "input_type": "select", "values": ["red", "blue"]}]}, {"name": "scene", "type": "tag"}]
    for segment_size in (None, 1, 2):
        task = api.post("/api/tasks", json={"name": "seed", "labels": labels, "segment_size": segment_size}).json()
        api.post(f"/api/tasks/{task['id']}/data", files=[
            (f"client_files[{index}]", (f"{index}.png", png(40 + index, 30))) for index in range(3)]).raise_for_status()
        label = api.get("/api/labels", params={"task_id": task["id"]}).json()["results"][0]["id"]
        api.put(f"/api/tasks/{task['id']}/annotations", json={"shapes": [
            {"type": "rectangle", "frame": 0, "label_id": label, "points": [1, 2, 10, 12]}]}).raise_for_status()


@dataclass
class Outcome:
    requests: int
    statuses: Counter  # "2xx", "4xx", ...
    server_errors: list[str]  # each 5xx: the request and the start of the answer
    failed_checks: list[str]  # each failed check: the operation and what failed
    seconds: float
    output: str  # schemathesis' own


def outcome(reports: Path, seconds: float, output: str) -> Outcome:
    har, junit = sorted(reports.glob("har-*.json")), sorted(reports.glob("junit-*.xml"))
    if not (har and junit):
        raise RuntimeError(f"schemathesis wrote no reports; the end of its output:\n{output[-3000:]}")
    entries = json.loads(har[-1].read_text())["log"]["entries"]
    server_errors = [f"{entry['request']['method']} {entry['request']['url']} -> {entry['response']['status']}: "
                     f"{entry['response']['content'].get('text', '')[:300]}"
                     for entry in entries if entry["response"]["status"] >= 500]
    failed = [f"{case.get('name')}: {(failure.get('message') or failure.text or '').strip()[:300]}"
              for case in ElementTree.parse(junit[-1]).iter("testcase")
              for failure in case.iter("failure")]
    return Outcome(len(entries), Counter(f"{entry['response']['status'] // 100}xx" for entry in entries),
                   server_errors, failed, seconds, output)


def fuzz(max_time: int | None = None, max_examples: int = 30, workers: str = "2", redis_db: int = 1,
         seed_value: int | None = None, report_dir: Path | None = None, database_url: str | None = None) -> Outcome:
    """One run against a fresh API (above), its processes stopped and its Redis database emptied after;
    ``database_url``: an empty database for the task store instead of SQLite."""
    work = Path(tempfile.mkdtemp(prefix="fuzz-api-"))
    reports = report_dir or work / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    share = work / "share"
    share.mkdir()
    redis_url = f"redis://127.0.0.1:6379/{redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    platform_port, api_port = free_port(), free_port()
    tree = work / "functions"
    for folder in FUNCTIONS:
        shutil.copytree(folder, tree / folder.parent.name, ignore=shutil.ignore_patterns("__pycache__"))
    environment = {**os.environ, "API_TOKEN": TOKEN, "REDIS_URL": redis_url, "DATA_DIR": str(work / "data"),
                   "SERVER_FILES_ROOT": str(share), "NUCLIO_URL": f"http://127.0.0.1:{platform_port}"}
    if database_url:
        environment["DATABASE_URL"] = database_url
    processes = [subprocess.Popen([sys.executable, "-m", "serverless.runtime", "platform", str(tree), "--port",
                                   str(platform_port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                 subprocess.Popen([sys.executable, "-m", "dispatcher", "serve", "--port", str(api_port)], cwd=REPO,
                                  env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    url = f"http://127.0.0.1:{api_port}"
    try:
        wait_for(f"{url}/health", "the API")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as api:
            seed(api, share)
        command = [str(Path(sys.executable).with_name("st")), "run", f"{url}/openapi.json", "--checks", CHECKS,
                   "--header", f"Authorization: Bearer {TOKEN}", "--workers", workers,
                   "--max-examples", str(max_examples), "--request-timeout", "60", "--no-color",
                   "--generation-database", "none", "--report", "har,junit", "--report-dir", str(reports),
                   "--suppress-health-check", "all"]
        if max_time:
            command += ["--max-time", str(max_time)]
        if seed_value is not None:
            command += ["--seed", str(seed_value)]
        started = time.monotonic()
        run = subprocess.run(command, cwd=work, capture_output=True, text=True)
        return outcome(reports, time.monotonic() - started, run.stdout + run.stderr)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        redis.Redis.from_url(redis_url).flushdb()
        if report_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", type=int, help="seconds of fuzzing (repeats until spent)")
    parser.add_argument("--max-examples", type=int, default=30, help="test cases per operation and phase")
    parser.add_argument("--workers", default="2", help="schemathesis workers")
    parser.add_argument("--redis-db", type=int, default=1, help="a Redis database for this run alone (emptied)")
    parser.add_argument("--seed", type=int, help="schemathesis' random seed")
    parser.add_argument("--strict", action="store_true", help="fail on a failed check too, not only on a 5xx")
    parser.add_argument("--report-dir", type=Path, help="keep schemathesis' reports and output here")
    parser.add_argument("--database-url", help="an empty PostgreSQL database for the task store (default: SQLite)")
    args = parser.parse_args(argv)
    result = fuzz(args.max_time, args.max_examples, args.workers, args.redis_db, args.seed, args.report_dir,
                  args.database_url)
    if args.report_dir:
        (args.report_dir / "schemathesis.txt").write_text(result.output)
    print(f"{result.requests} requests in {result.seconds:.0f}s: "
          + ", ".join(f"{count} {kind}" for kind, count in sorted(result.statuses.items())))
    print(f"{len(result.server_errors)} server errors (5xx)", *result.server_errors[:20], sep="\n  ")
    print(f"{len(result.failed_checks)} failed checks", *result.failed_checks[:20], sep="\n  ")
    return 1 if result.server_errors or (args.strict and result.failed_checks) else 0


if __name__ == "__main__":
    sys.exit(main())
