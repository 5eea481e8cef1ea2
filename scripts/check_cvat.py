"""Check the dispatcher in front of a real CVAT server, and time it against CVAT's own lambda manager.

    .venv/bin/python scripts/check_cvat.py --cvat-url http://127.0.0.1:18480 --token KEY \\
        --nuclio-url http://127.0.0.1:8070 [--other-token KEY2] [--runs 3] [--frames 32]

What it needs: a CVAT server whose lambda manager calls the nuclio dashboard API at --nuclio-url
(CVAT's NUCLIO_HOST and NUCLIO_PORT), that platform serving YOLO v3 and face detection (for example
``platform`` on a tree holding the two function folders, see the README), Redis at 127.0.0.1:6379
(database 15 is this script's own and is flushed). --token is a CVAT user's key (``POST
/api/auth/login``); the dispatcher uses it as its service account too.

What it does:
1. creates two tasks in CVAT with the user's token: --frames COCO-128 images with YOLO v3's labels,
   and photos of people with face detection's label and attributes (age, gender, emotion);
2. starts the dispatcher in front of that CVAT (``CVAT_URL``, ``CVAT_TOKEN``): the API and
   --workers workers, calling the same platform;
3. for each function, --runs times each, alternating: the same request body (``cleanup: true``)
   through CVAT's own ``/api/lambda/requests`` and through the dispatcher's; frames/s = frames /
   (the time from the POST to the final status, polled every 0.1 s); after each run, reads the
   task's shapes back from CVAT and compares them with the function's direct replies on the same
   frames (the original files, read from CVAT): count, labels, boxes to 0.1 px, attributes;
4. SIGKILLs a dispatcher worker (and the chunk it runs) mid-run, starts another, and checks that
   every frame's shapes are in CVAT exactly once;
5. with --other-token (a user who may not see the tasks; CVAT's rules decide), checks that the
   dispatcher answers that user with CVAT's refusal and lists none of the requests.

Prints one line per run, the medians and their ratio, and a verdict per check; exits non-zero if a
check fails. The tasks are left in CVAT for a look in its UI (their ids are printed).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import redis

from dispatcher.folder import free_port, stop_process
from dispatcher.settings import load as load_settings
from dispatcher.worker import busy_worker_pids

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared/testdata"
COCO = sorted((TESTDATA / "coco128-val2017/images").glob("*.jpg"))
PEOPLE = [TESTDATA / "skimage/astronaut.png", TESTDATA / "ultralytics/zidane.jpg", TESTDATA / "ultralytics/bus.jpg"]
YOLO = "openvino-omz-public-yolo-v3-tf"
FACE = "openvino-omz-intel-face-detection-0205"
REDIS_URL = "redis://127.0.0.1:6379/15"
FINAL = ("finished", "failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cvat-url", required=True)
    parser.add_argument("--token", required=True, help="a CVAT user's key: the caller, and the service account")
    parser.add_argument("--nuclio-url", required=True, help="the nuclio dashboard API CVAT's lambda manager calls")
    parser.add_argument("--other-token", help="a CVAT user's key who may not see the tasks")
    parser.add_argument("--frames", type=int, default=128, help="COCO images in the YOLO task (default 128)")
    parser.add_argument("--people", type=int, default=10,
                        help="times the 3 photos of people repeat in the face task (default 10: 30 frames)")
    parser.add_argument("--runs", type=int, default=3, help="runs per function and path (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="dispatcher workers (default 2)")
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()

    cvat = httpx.Client(base_url=args.cvat_url, timeout=120, headers={"Authorization": f"Token {args.token}"})
    about = checked(cvat.get("/api/server/about"))
    print(f"CVAT {about['version']} at {args.cvat_url}; functions from {args.nuclio_url}")
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="check-cvat-") as work, \
            Dispatcher(Path(work), args) as dispatcher:
        api = httpx.Client(base_url=dispatcher.url, timeout=120, headers={"Authorization": f"Token {args.token}"})
        nuclio = httpx.Client(base_url=args.nuclio_url, timeout=120)
        tasks = {YOLO: create_task(cvat, "check-cvat yolo", function_labels(api, YOLO), COCO[:args.frames]),
                 FACE: create_task(cvat, "check-cvat faces", function_labels(api, FACE), PEOPLE * args.people)}
        speeds: dict[tuple[str, str], list[float]] = {}
        for function_id, task in tasks.items():
            expected = direct_replies(cvat, nuclio, function_id, task, args.threshold)
            print(f"\n{function_id} on task {task['id']} ({task['size']} frames; "
                  f"{sum(expected.values())} shapes from direct calls)")
            for run in range(args.runs):
                for path, client in (("CVAT's lambda manager", cvat), ("dispatcher", api)):
                    fps = annotate(client, function_id, task, args.threshold)
                    speeds.setdefault((function_id, path), []).append(fps)
                    written = shapes_in_cvat(cvat, task)
                    same = written == expected
                    print(f"  run {run + 1}, {path:22s} {fps:7.1f} frames/s  {sum(written.values()):4d} shapes"
                          f"  {'= direct replies' if same else 'DIFFER from direct replies'}")
                    if not same:
                        failures.append(f"{function_id} through {path}: shapes differ: {diff(written, expected)}")
        print()
        for function_id in tasks:
            own, ours = (statistics.median(speeds[(function_id, path)])
                         for path in ("CVAT's lambda manager", "dispatcher"))
            print(f"{function_id}: median {own:.1f} frames/s through CVAT's lambda manager, {ours:.1f} through "
                  f"the dispatcher ({args.workers} workers): x{ours / own:.2f}")
            if ours <= own:
                failures.append(f"{function_id}: the dispatcher is not faster than CVAT's lambda manager")

        failures += kill_a_worker(dispatcher, api, cvat, tasks[YOLO], args.threshold)
        if args.other_token:
            failures += refusals(dispatcher, tasks[YOLO], args.other_token)
    print(f"\ntasks left in CVAT: {', '.join(str(task['id']) for task in tasks.values())}")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


class Dispatcher:
    """The API and workers as processes in front of CVAT, on Redis database 15."""

    def __init__(self, work: Path, args: argparse.Namespace):
        self.work, self.args = work, args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "CVAT_URL": args.cvat_url, "CVAT_TOKEN": args.token, "NUCLIO_URL": args.nuclio_url,
                    "REDIS_URL": REDIS_URL, "DATA_DIR": str(work / "data"), "API_TOKEN": ""}
        self.processes: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Dispatcher:
        redis.Redis.from_url(REDIS_URL).flushdb()
        self.start("api", "serve", "--port", str(self.port))
        for index in range(self.args.workers):
            self.start(f"worker-{index}", "worker")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the dispatcher did not start; see {self.work}/*.log")

    def start(self, name: str, *args: str) -> None:
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.processes[name] = subprocess.Popen([sys.executable, "-m", "dispatcher", *args], cwd=REPO, env=self.env,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def __exit__(self, *exc_info) -> None:
        for process in self.processes.values():
            stop_process(process, grace=20)
        redis.Redis.from_url(REDIS_URL).flushdb()


def checked(reply: httpx.Response):
    if reply.status_code >= 400:
        raise SystemExit(f"{reply.request.method} {reply.request.url}: {reply.status_code} {reply.text[:500]}")
    return reply.json() if reply.content else None


def function_labels(api: httpx.Client, function_id: str) -> list[dict]:
    """The function's labels as task labels, with their attributes (face detection's age, gender, emotion)."""
    labels = []
    for label in checked(api.get(f"/api/lambda/functions/{function_id}"))["labels_v2"]:
        attributes = [{"name": a["name"], "input_type": a["input_type"], "mutable": False, "values": a["values"],
                       "default_value": a["values"][0] if a["values"] else ""}
                      for a in label.get("attributes", [])]
        labels.append({"name": label["name"], "type": "rectangle", "attributes": attributes})
    return labels


def create_task(cvat: httpx.Client, name: str, labels: list[dict], images: list[Path]) -> dict:
    task = checked(cvat.post("/api/tasks", json={"name": name, "labels": labels}))
    # Unique names in frame order: CVAT stores uploads by name and sorts them by name.
    files = [(f"client_files[{index}]", (f"{index:04d}-{path.name}", path.read_bytes()))
             for index, path in enumerate(images)]
    checked(cvat.post(f"/api/tasks/{task['id']}/data", files=files, data={"image_quality": 95}))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # CVAT prepares the data in the background
        task = checked(cvat.get(f"/api/tasks/{task['id']}"))
        if task["size"] == len(images) and task["jobs"]["count"]:
            return {**task, "function_labels": labels}
        time.sleep(0.5)
    raise SystemExit(f"CVAT did not prepare task {task['id']} in 5 minutes")


def direct_replies(cvat: httpx.Client, nuclio: httpx.Client, function_id: str, task: dict, threshold: float) -> Counter:
    """The function's own answers on the task's frames, as CVAT stores them (label names)."""
    found = Counter()
    for frame in range(task["size"]):
        data = cvat.get(f"/api/tasks/{task['id']}/data", params={"type": "frame", "number": frame,
                                                                 "quality": "original"}).content
        reply = checked(nuclio.post("/api/function_invocations", json={
            "image": base64.b64encode(data).decode(), "threshold": threshold},
            headers={"x-nuclio-function-name": function_id, "x-nuclio-path": "/"}))
        for item in reply:
            attributes = tuple(sorted((a["name"], str(a["value"])) for a in item.get("attributes", [])))
            found[(frame, item["label"], item["type"], rounded(item["points"]), attributes)] += 1
    return found


def shapes_in_cvat(cvat: httpx.Client, task: dict) -> Counter:
    labels = {label["id"]: label for label in paginated(cvat, "/api/labels", task_id=task["id"])}
    specs = {spec["id"]: spec["name"] for label in labels.values() for spec in label.get("attributes", [])}
    found = Counter()
    for shape in checked(cvat.get(f"/api/tasks/{task['id']}/annotations"))["shapes"]:
        attributes = tuple(sorted((specs[a["spec_id"]], str(a["value"])) for a in shape["attributes"]))
        found[(shape["frame"], labels[shape["label_id"]]["name"], shape["type"], rounded(shape["points"]),
               attributes)] += 1
    return found


def paginated(cvat: httpx.Client, path: str, **params) -> list[dict]:
    results, page = [], 1
    while True:
        body = checked(cvat.get(path, params={**params, "page": page, "page_size": 100}))
        results += body["results"]
        if not body.get("next"):
            return results
        page += 1


def rounded(points) -> tuple:
    return tuple(round(float(p), 1) for p in points)


def diff(written: Counter, expected: Counter) -> str:
    extra, missing = written - expected, expected - written
    return f"{sum(extra.values())} extra (e.g. {list(extra)[:2]}), {sum(missing.values())} missing " \
           f"(e.g. {list(missing)[:2]})"


def annotate(client: httpx.Client, function_id: str, task: dict, threshold: float) -> float:
    """frames/s of one request on the whole task, cleanup on, from the POST to the final status.
    The mapping is spelled out (labels and attributes by name, as the default would map them):
    CVAT 2.15's own default mapping fails on a function with attributes (AttributeError: 'dict'
    object has no attribute 'attributespec_set'), so face detection needs it there."""
    mapping = {label["name"]: {"name": label["name"], "attributes": {a["name"]: a["name"] for a in label["attributes"]}}
               for label in task["function_labels"]}
    started = time.perf_counter()
    request = checked(client.post("/api/lambda/requests", json={
        "function": function_id, "task": task["id"], "cleanup": True, "threshold": threshold, "mapping": mapping}))
    status = wait(client, request["id"])
    elapsed = time.perf_counter() - started
    if status["status"] != "finished":
        raise SystemExit(f"{client.base_url} request {request['id']} ended {status['status']}: "
                         f"{status.get('exc_info') or status}")
    return task["size"] / elapsed


def wait(client: httpx.Client, request_id: str, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = checked(client.get(f"/api/lambda/requests/{request_id}"))
        if status["status"] in FINAL:
            return status
        time.sleep(0.1)
    raise SystemExit(f"request {request_id} did not end in {timeout} s")


def kill_a_worker(dispatcher: Dispatcher, api: httpx.Client, cvat: httpx.Client, task: dict, threshold: float) -> list:
    expected = shapes_in_cvat(cvat, task)  # the last run's, equal to the direct replies
    request = checked(api.post("/api/lambda/requests", json={
        "function": YOLO, "task": task["id"], "cleanup": True, "threshold": threshold}))
    victim = dispatcher.processes["worker-0"]
    deadline = time.monotonic() + 60
    while victim.pid not in busy_worker_pids(load_settings(dispatcher.env)) and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.kill()
    victim.wait()
    dispatcher.start("worker-0", "worker")
    status = wait(api, request["id"])
    written = shapes_in_cvat(cvat, task)
    print(f"\na worker SIGKILLed mid-run: request {status['status']}, frames {status.get('frames')}, "
          f"{sum(written.values())} shapes in CVAT, {'each once' if written == expected else 'NOT each once'}")
    if status["status"] != "finished" or written != expected:
        return [f"worker killed mid-run: {status['status']}; {diff(written, expected)}"]
    return []


def refusals(dispatcher: Dispatcher, task: dict, other_token: str) -> list:
    other = httpx.Client(base_url=dispatcher.url, timeout=60, headers={"Authorization": f"Token {other_token}"})
    reply = other.post("/api/lambda/requests", json={"function": YOLO, "task": task["id"]})
    listed = checked(other.get("/api/lambda/requests"))
    print(f"\na user CVAT does not let see task {task['id']}: POST answered {reply.status_code} "
          f"{reply.json().get('detail')!r}; lists {len(listed)} request(s)")
    failures = []
    if reply.status_code not in (403, 404):
        failures.append(f"the other user's request answered {reply.status_code}, not CVAT's refusal")
    if listed:
        failures.append(f"the other user sees {len(listed)} request(s) on targets they may not see")
    return failures


if __name__ == "__main__":
    sys.exit(main())
