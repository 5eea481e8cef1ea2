"""The dispatcher in front of a CVAT server (docs/architecture.md §11): tasks, frames and labels read
from CVAT's REST API, results written into CVAT exactly once, callers identified and checked by CVAT.

"CVAT" here is a standalone dispatcher serving CVAT's REST subset (the one cvat-sdk and cvat-cli
use unchanged, tests/test_cvat_rest.py), on Redis database 4; the dispatcher under test fronts it,
on Redis database 3, through a small HTTP proxy that can lose an answer after CVAT has applied the
call. CVAT is also killed and restarted mid-run, and stopped (SIGSTOP) with a write in flight for
longer than the dispatcher's CVAT_TIMEOUT. A real CVAT server was checked by hand (README, "In front of CVAT")."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import signal
import sqlite3
import threading
import time
import types
import zipfile
from collections import Counter

import httpx
import pytest

from dispatcher.authentication import django_csrf_secret
from dispatcher.cvat.client import CvatClient
from dispatcher.cvat.store import CvatStore
from dispatcher.store import NotFound

from helpers import PROBE, REPO, TESTDATA, TOKEN, Stack, copy_function, free_port, serve_platform, wait_until

YOLO = "openvino-omz-public-yolo-v3-tf"
REID = "opencv-reid-colour-histogram"
COCO_IMAGES = sorted((TESTDATA / "coco128-val2017/images").glob("*.jpg"))
THING = [{"name": "thing", "type": "rectangle"}]
CVAT_TIMEOUT = 3  # seconds per call to CVAT, short so that a stalled CVAT is given up on soon


class FaultyProxy:
    """Passes HTTP calls on to CVAT, except that
    - the next ``lose[method]`` calls of a method are applied by CVAT and then their answer is lost
      (the connection closes with no reply), as when a network drops or a load balancer times out
      after the server did the work;
    - with ``stall = (method, process, seconds)``, the next call of that method finds CVAT's process
      stopped (SIGSTOP) and waits in CVAT's queue until it resumes, ``seconds`` later;
    - with ``hold = (method, seconds)``, the next call of that method is held here that long before
      it reaches CVAT, as a busy front end or a queue before CVAT's workers would;
    - with ``cut = n``, the next chunk download stops after n bytes (the connection drops);
    - with ``rezip``, chunks are written again as ZIPs whose members' sizes come after their data
      (as ``zipfile`` writes to a pipe): valid, but not readable front to back;
    - for the task ids in ``videos``, data/meta answers as CVAT does for a video: one frame entry,
      standing for every frame."""

    def __init__(self, target: str):
        self.target = target
        self.lose: dict[str, int] = {}
        self.stall: tuple[str, int, float] | None = None
        self.hold: tuple[str, float] | None = None
        self.cut: int | None = None
        self.rezip = False
        self.videos: set[int] = set()
        self.lost: list[str] = []
        self.unreachable = 0  # calls made while CVAT was down
        self.stalled: Counter = Counter()  # calls by method that CVAT answered only after CVAT_TIMEOUT
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                started = time.monotonic()
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                if proxy.stall is not None and proxy.stall[0] == self.command:
                    _, pid, seconds = proxy.stall
                    proxy.stall = None
                    os.kill(pid, signal.SIGSTOP)
                    threading.Timer(seconds, os.kill, (pid, signal.SIGCONT)).start()
                if proxy.hold is not None and proxy.hold[0] == self.command:
                    seconds, proxy.hold = proxy.hold[1], None
                    time.sleep(seconds)
                try:
                    reply = httpx.request(self.command, proxy.target + self.path, headers=headers, content=body,
                                          timeout=60)
                except httpx.TransportError:  # CVAT is down: the caller sees its connection closed
                    proxy.unreachable += 1
                    self.close_connection = True
                    return
                if time.monotonic() - started > CVAT_TIMEOUT:
                    proxy.stalled[self.command] += 1  # given up on by the caller, applied all the same
                if proxy.lose.get(self.command, 0) > 0:
                    proxy.lose[self.command] -= 1
                    proxy.lost.append(f"{self.command} {self.path}")
                    self.close_connection = True
                    return
                content, chunk = reply.content, "type=chunk" in self.path
                if chunk and proxy.rezip:
                    content = zip_to_a_pipe(content)
                if any(self.path == f"/api/tasks/{task}/data/meta" for task in proxy.videos):
                    meta = json.loads(content)
                    content = json.dumps({**meta, "frames": meta["frames"][:1]}).encode()
                self.send_response(reply.status_code)
                for key, value in reply.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if chunk and proxy.cut is not None:
                    content, proxy.cut = content[:proxy.cut], None
                    self.close_connection = True
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Pipe(io.RawIOBase):
    def __init__(self):
        self.parts = []

    def writable(self):
        return True

    def write(self, data):
        self.parts.append(bytes(data))
        return len(data)


def zip_to_a_pipe(content: bytes) -> bytes:
    """The same members, written by ``zipfile`` to an unseekable file: sizes in data descriptors."""
    pipe = Pipe()
    with zipfile.ZipFile(io.BytesIO(content)) as source, zipfile.ZipFile(pipe, "w") as target:
        for member in source.infolist():
            target.writestr(member.filename, source.read(member))
    return b"".join(pipe.parts)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tree = tmp_path_factory.mktemp("tree")
    for folder in ("openvino/omz/public/yolo-v3-tf/nuclio", "opencv/reid-colour-histogram/nuclio"):
        copy_function(REPO / "serverless" / folder, tree / folder.split("/")[-2])
    copy_function(PROBE, tree / "slow", **{
        "metadata.name": "probe-slow", "spec.eventTimeout": "30s",
        "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "0.05"}],
        "spec.triggers.myHttpTrigger.attributes.maxRequestBodySize": 33554432})
    # 0.25 s a frame: a 96-frame run lasts ~12 s, long enough to find a worker mid-chunk on a busy machine.
    copy_function(PROBE, tree / "steady", **{
        "metadata.name": "probe-steady", "spec.eventTimeout": "30s",
        "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "0.25"}],
        "spec.triggers.myHttpTrigger.attributes.maxRequestBodySize": 33554432})
    with serve_platform(tree) as running:
        yield running


@pytest.fixture(scope="module")
def cvat(tmp_path_factory):
    """The CVAT server: tasks, frames and annotations; it calls no function itself."""
    nowhere = types.SimpleNamespace(url=f"http://127.0.0.1:{free_port()}")
    running = Stack(nowhere, tmp_path_factory.mktemp("cvat"), 4, None, workers=0)
    yield running
    running.close()


@pytest.fixture(scope="module")
def proxy(cvat):
    running = FaultyProxy(cvat.url)
    yield running
    running.close()


@pytest.fixture(scope="module")
def stack(platform, proxy, tmp_path_factory):
    """The dispatcher fronting CVAT: its service account is CVAT's token holder; callers send their
    own CVAT credentials (the Stack's client sends the same token, as CVAT's admin)."""
    running = Stack(platform, tmp_path_factory.mktemp("data"), 3, None, API_TOKEN="", CVAT_URL=proxy.url,
                    CVAT_TOKEN=TOKEN, CVAT_TIMEOUT=str(CVAT_TIMEOUT), AUTH_CACHE_SECONDS="1")
    yield running
    running.close()


def frames_of(cvat, task_id: int, kind: str = "shapes") -> Counter:
    return Counter(item["frame"] for item in cvat.ok("GET", f"/api/tasks/{task_id}/annotations")[kind])


def run_probe(stack, task_id: int, function: str = "probe-slow", **extra) -> str:
    return stack.ok("POST", "/api/lambda/requests", json={"function": function, "task": task_id, **extra})["id"]


def current_run(stack, request_id: str) -> str:
    with sqlite3.connect(stack.data_dir / "dispatcher.sqlite3") as db:
        return db.execute("SELECT run FROM cvat_runs WHERE request_id = ?", (request_id,)).fetchone()[0]


# Reading and writing CVAT's tasks

def test_a_request_annotates_cvats_task_with_the_functions_own_answers(stack, cvat, platform):
    """34 photos: two of CVAT's 32-frame chunks, read whole by the workers, the second fetched ahead."""
    labels = [{"name": label["name"], "type": "rectangle"}
              for label in stack.ok("GET", f"/api/lambda/functions/{YOLO}")["labels_v2"]]
    task = cvat.task(labels, COCO_IMAGES[:34])
    request = stack.wait(stack.ok("POST", "/api/lambda/requests", json={
        "function": YOLO, "task": task["id"], "threshold": 0.4})["id"])
    assert (request["status"], request["frames"]) == ("finished", {"total": 34, "done": 34, "failed": 0})
    assert request["owner"] == {"id": 1, "username": "admin"}  # the CVAT user the credentials name

    label_names = {label["id"]: label["name"] for label in cvat.labels(task["id"])}
    written = Counter()
    for shape in cvat.ok("GET", f"/api/tasks/{task['id']}/annotations")["shapes"]:
        written[(shape["frame"], label_names[shape["label_id"]], tuple(round(p, 1) for p in shape["points"]))] += 1
    expected = Counter()
    for frame, path in enumerate(COCO_IMAGES[:34]):  # the function itself, on the file CVAT was given
        reply = httpx.post(f"{platform.url}/api/function_invocations", timeout=60,
                           headers={"x-nuclio-function-name": YOLO, "x-nuclio-path": "/"},
                           json={"image": base64.b64encode(path.read_bytes()).decode(), "threshold": 0.4})
        for item in reply.json():
            expected[(frame, item["label"], tuple(round(p, 1) for p in item["points"]))] += 1
    assert written == expected and len(expected) > 34


def test_an_online_call_reads_cvats_frame(stack, cvat):
    task = cvat.task(THING, [TESTDATA / "ultralytics/bus.jpg", TESTDATA / "skimage/astronaut.png"])
    reply = stack.ok("POST", "/api/lambda/functions/probe-slow", json={"task": task["id"], "frame": 1})
    thing = cvat.labels(task["id"])[0]["id"]
    assert [(shape["frame"], shape["label_id"], shape["points"]) for shape in reply["shapes"]] == \
        [(1, thing, [1, 2, 3, 4])]
    assert stack.error("POST", "/api/lambda/functions/probe-slow", 400, json={"task": task["id"], "frame": 2}) == \
        f"frame: 2 is outside task {task['id']} (frames 0..1)"
    assert "task 999999 does not exist" in stack.error("POST", "/api/lambda/functions/probe-slow", 400,
                                                       json={"task": 999999, "frame": 0})  # as CVAT answers
    assert frames_of(cvat, task["id"]) == Counter()  # an online call writes nothing


def test_a_job_run_writes_its_frames_and_cleanup_clears_only_its_job(stack, cvat):
    task = cvat.task(THING, COCO_IMAGES[:12], segment_size=8)
    first, second = cvat.jobs(task["id"])
    assert stack.wait(run_probe(stack, task["id"]))["status"] == "finished"
    request = stack.wait(run_probe(stack, task["id"], job=second["id"], cleanup=True))
    assert (request["status"], request["frames"]["done"]) == ("finished", 4)
    assert frames_of(cvat, task["id"]) == Counter(dict.fromkeys(range(12), 1))
    request = stack.wait(run_probe(stack, task["id"], job=first["id"]))  # no cleanup: adds
    assert frames_of(cvat, task["id"]) == Counter({**dict.fromkeys(range(8), 2), **dict.fromkeys(range(8, 12), 1)})


def test_reid_links_cvats_rectangles_into_tracks(stack, cvat):
    frames = [TESTDATA / "ultralytics/zidane.jpg"] * 3
    task = cvat.task([{"name": "person", "type": "rectangle"}], frames)
    person = cvat.labels(task["id"])[0]["id"]
    boxes = [[120, 60, 420, 700], [700, 40, 1130, 710]]  # the two people, still in all three frames
    cvat.ok("PUT", f"/api/tasks/{task['id']}/annotations", json={"version": 0, "tags": [], "tracks": [], "shapes": [
        {"type": "rectangle", "frame": frame, "label_id": person, "points": box, "attributes": [], "group": 0,
         "source": "manual", "occluded": False, "z_order": 0} for frame in range(3) for box in boxes]})
    request = stack.wait(stack.ok("POST", "/api/lambda/requests", json={"function": REID, "task": task["id"]})["id"])
    assert request["status"] == "finished", request
    annotations = cvat.ok("GET", f"/api/tasks/{task['id']}/annotations")
    assert annotations["shapes"] == []
    tracks = sorted(annotations["tracks"], key=lambda track: track["shapes"][0]["points"][0])
    assert [[shape["frame"] for shape in track["shapes"] if not shape["outside"]] for track in tracks] == \
        [[0, 1, 2], [0, 1, 2]]
    assert [track["shapes"][0]["points"] for track in tracks] == boxes


def test_frames_come_from_cvats_chunks_however_they_arrive(cvat, proxy, tmp_path):
    """The workers' reads: members streamed from each chunk (36 frames: two chunks), a download
    that drops half-way resumed, and a ZIP that cannot be read front to back read whole. Every
    frame's bytes are the file CVAT was given."""
    images = COCO_IMAGES[:36]
    task = cvat.task(THING, images)
    for fault in ("none", "cut", "rezip"):
        proxy.cut = 3_000_000 if fault == "cut" else None
        proxy.rezip = fault == "rezip"
        store = CvatStore(CvatClient(proxy.url, CVAT_TIMEOUT, token=TOKEN), None, tmp_path / fault, 30, chunks=True)
        try:
            store.prepare(task["id"], list(range(36)))
            assert store.frames_per_read(task["id"]) == 32
            assert [store.frame_bytes(task["id"], frame) for frame in range(36)] == [p.read_bytes() for p in images]
            with pytest.raises(NotFound):
                store.frame_bytes(task["id"], 36)
        finally:
            store.close()
        assert proxy.cut is None  # the fault happened
    proxy.rezip = False


def test_a_region_on_a_video_task(stack, cvat, proxy):
    """A video's data/meta lists its frame size once: a region is checked against that size on
    every frame, online and offline."""
    task = cvat.task(THING, [COCO_IMAGES[0]] * 3)
    proxy.videos.add(task["id"])
    meta = httpx.get(f"{proxy.url}/api/tasks/{task['id']}/data/meta", headers={"Authorization": f"Token {TOKEN}"})
    (frame,) = meta.json()["frames"]  # as CVAT answers for a video
    width, height = frame["width"], frame["height"]
    region = [width // 2, 0, width, height]
    shapes = stack.ok("POST", "/api/lambda/functions/probe-slow", json={"task": task["id"], "frame": 2,
                                                                        "roi": region})["shapes"]
    assert shapes and all(min(shape["points"][0::2]) >= width // 2 for shape in shapes)
    final = stack.wait(run_probe(stack, task["id"], roi=region))
    assert (final["status"], final["frames"]["done"]) == ("finished", 3)
    assert stack.error("POST", "/api/lambda/requests", 400, json={
        "function": "probe-slow", "task": task["id"], "roi": [0, 0, width + 1, height]}) == \
        f"ROI is outside the image: frame 0 is {width}x{height}"


# Who may do what

def test_the_home_page_leads_to_the_api_pages_not_to_a_missing_web_ui(stack):
    home = httpx.get(f"{stack.url}/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/docs"
    assert httpx.get(f"{stack.url}/", follow_redirects=True).status_code == 200
    assert httpx.get(f"{stack.url}/ui/").status_code == 404  # CVAT's UI is the UI here


def test_callers_are_who_cvat_says_they_are(stack, cvat):
    assert "authentication required" in stack.error("GET", "/api/lambda/requests", 401, headers={"Authorization": ""})
    wrong = {"Authorization": "Token not-a-cvat-token"}
    assert stack.http.get("/api/lambda/functions", headers=wrong).status_code == 401  # CVAT's refusal, passed on
    assert stack.http.post("/api/lambda/requests", headers=wrong,
                           json={"function": "probe-slow", "task": 1}).status_code == 401
    task = cvat.task(THING, COCO_IMAGES[:2])
    # CVAT's words, with its lambda manager's status for a target that is not there (400).
    assert stack.error("POST", "/api/lambda/requests", 400, json={"function": "probe-slow", "task": 99999}) == \
        "CVAT: GET /api/tasks/99999: task 99999 does not exist"
    assert stack.error("POST", "/api/lambda/requests", 400,
                       json={"function": "probe-slow", "task": task["id"], "job": 99999}) == \
        "CVAT: GET /api/jobs/99999: job 99999 does not exist"
    # CVAT's task store is CVAT's to serve: this API has only /api/lambda.
    assert stack.http.get(f"/api/tasks/{task['id']}").status_code == 404


def test_cvats_session_works_with_its_csrf_token(stack, cvat):
    """CVAT's UI calls with its session cookie; unsafe methods need X-CSRFToken, as Django demands."""
    login = httpx.post(f"{cvat.url}/api/auth/login", json={"username": "admin", "password": TOKEN})
    cookies = {name: login.cookies[name] for name in ("sessionid", "csrftoken")}
    browser = httpx.Client(base_url=stack.url, cookies=cookies, timeout=60)
    task = cvat.task(THING, COCO_IMAGES[:2])
    body = {"function": "probe-slow", "task": task["id"]}
    assert browser.get("/api/lambda/requests").status_code == 200
    refused = browser.post("/api/lambda/requests", json=body)
    assert (refused.status_code, refused.json()["detail"]) == (403, "CSRF Failed: CSRF token missing.")
    refused = browser.post("/api/lambda/requests", json=body, headers={"X-CSRFToken": "x" * 43})
    assert (refused.status_code, refused.json()["detail"]) == (403, "CSRF Failed: CSRF token incorrect.")
    accepted = browser.post("/api/lambda/requests", json=body, headers={"X-CSRFToken": cookies["csrftoken"]})
    assert accepted.status_code == 200, accepted.text
    assert stack.wait(accepted.json()["id"])["status"] == "finished"
    browser.cookies.set("sessionid", "1.forged.session")
    assert browser.get("/api/lambda/requests").status_code == 401  # CVAT does not know the session


def test_django_masked_csrf_tokens_are_unmasked():
    """Django sends its 32-character secret masked as 64: a mask, then the secret shifted by it (here
    by hand: secret "b" * 32 under the mask "a" * 32 shifts each character by 0, under "b" by 1)."""
    assert django_csrf_secret("a" * 32 + "b" * 32) == "b" * 32
    assert django_csrf_secret("b" * 32 + "c" * 32) == "b" * 32
    assert django_csrf_secret("b" * 32 + "a" * 32) == "9" * 32  # wraps around: a - 1 is the last of a-zA-Z0-9
    assert django_csrf_secret("short") == "short"


# Exactly once, whatever fails

def test_a_worker_killed_mid_run_writes_every_frame_once(stack, cvat):
    task = cvat.task(THING, COCO_IMAGES[:96])  # three chunks, one per CVAT chunk of 32 frames
    rid = run_probe(stack, task["id"], "probe-steady")
    # Whichever worker runs a chunk first.
    index = stack.first_busy_worker()
    victim = stack.workers[index]
    victim.kill()
    victim.wait()
    request = stack.wait(rid, 180)
    stack.replace_worker(index)
    assert (request["status"], request["frames"]) == ("finished", {"total": 96, "done": 96, "failed": 0})
    assert frames_of(cvat, task["id"]) == Counter(dict.fromkeys(range(96), 1))


def test_a_write_whose_answer_is_lost_is_not_repeated(stack, cvat, proxy):
    task = cvat.task(THING, COCO_IMAGES[:64])  # two chunks: one per CVAT chunk of 32 frames
    proxy.lose["PATCH"] = 2  # CVAT applies both chunks' writes; their answers never arrive
    request = stack.wait(run_probe(stack, task["id"]), 180)
    assert len(proxy.lost) == 2 and all("action=create" in call for call in proxy.lost)
    assert (request["status"], request["frames"]["done"]) == ("finished", 64)
    assert frames_of(cvat, task["id"]) == Counter(dict.fromkeys(range(64), 1))


def test_a_write_applied_but_not_recorded_is_found_in_cvat(stack, cvat, tmp_path):
    """The one state the proxy cannot reach: CVAT applied a chunk's write and the worker died before
    recording it. The store, asked to write the same staged frames again, finds them in CVAT; a
    frame staged but truly missing is written, once."""
    task = cvat.task(THING, COCO_IMAGES[:8])
    rid = run_probe(stack, task["id"])
    assert stack.wait(rid)["status"] == "finished"
    run = current_run(stack, rid)
    with sqlite3.connect(stack.data_dir / "dispatcher.sqlite3") as db:
        staged = {frame: json.loads(content) for frame, content in db.execute(
            "SELECT frame, content FROM cvat_frames WHERE run = ?", (run,))}
        assert sorted(staged) == list(range(8))
        db.execute("UPDATE cvat_frames SET written = 0 WHERE run = ? AND frame < 4", (run,))
        db.execute("DELETE FROM cvat_frames WHERE run = ? AND frame = 7", (run,))
    cvat.ok("DELETE", f"/api/jobs/{cvat.jobs(task['id'])[0]['id']}/annotations", 204)  # CVAT lost them all
    cvat.ok("PATCH", f"/api/tasks/{task['id']}/annotations", params={"action": "create"}, json={
        "version": 0, "tags": [], "tracks": [], "shapes": [
            {**shape, "frame": frame} for frame in range(4) for shape in
            staged[frame]["shapes"]]})  # ... except frames 0-3, written before
    store = CvatStore(CvatClient(cvat.url, CVAT_TIMEOUT, token=TOKEN), None, stack.data_dir, 0, chunks=False)
    try:
        results = {frame: tuple(staged[frame][kind] for kind in ("tags", "shapes"))
                   for frame in (0, 1, 2, 3, 7)}
        store.write_results(rid, run, task["id"], results, None)
    finally:
        store.close()
    # 0-3 were found, not rewritten; 7 (never staged by that attempt) is new; 4-6 stay lost, as
    # nothing asked to write them.
    assert frames_of(cvat, task["id"]) == Counter({0: 1, 1: 1, 2: 1, 3: 1, 7: 1})


def test_cvat_restarting_mid_run_costs_nothing(stack, cvat, proxy):
    task = cvat.task(THING, COCO_IMAGES[:64])
    rid = run_probe(stack, task["id"])
    wait_until(lambda: stack.ok("GET", f"/api/lambda/requests/{rid}")["frames"]["done"] >= 8, 60, "frames to be done")
    # Down until a call found it down: with frames read ahead, the next call may be a chunk's write.
    cvat.restart_api(down_seconds=3, down_until=lambda: proxy.unreachable > 0)
    request = stack.wait(rid, 180)
    assert (request["status"], request["frames"]) == ("finished", {"total": 64, "done": 64, "failed": 0})
    assert frames_of(cvat, task["id"]) == Counter(dict.fromkeys(range(64), 1))


def test_cvat_stalled_past_the_timeout_costs_nothing(stack, cvat, proxy):
    """A write in flight when CVAT stalls times out here, and is applied there when CVAT resumes."""
    task = cvat.task(THING, COCO_IMAGES[:64])
    proxy.stall = ("PATCH", cvat.api.pid, 3 * CVAT_TIMEOUT)
    rid = run_probe(stack, task["id"])
    wait_until(lambda: proxy.stall is None, 60, "a write to reach CVAT")
    time.sleep(3 * CVAT_TIMEOUT)  # meanwhile this API answers 503: it cannot ask CVAT who is calling
    request = stack.wait(rid, 240)
    assert proxy.stalled["PATCH"] > 0  # writes were given up on here, then applied there
    assert (request["status"], request["frames"]) == ("finished", {"total": 64, "done": 64, "failed": 0})
    assert frames_of(cvat, task["id"]) == Counter(dict.fromkeys(range(64), 1))


def test_a_write_cvat_applies_after_the_timeout_is_found_not_repeated(stack, cvat, proxy):
    """The write times out here after CVAT_TIMEOUT, and reaches CVAT 2 s later, before the re-check
    (which waits as long again as a call may take) but after a re-check that did not wait."""
    task = cvat.task(THING, COCO_IMAGES[:32])
    proxy.hold = ("PATCH", CVAT_TIMEOUT + 2)
    request = stack.wait(run_probe(stack, task["id"]), 120)
    wait_until(lambda: proxy.stalled["PATCH"], 30, "the held write to reach CVAT")
    assert (request["status"], request["frames"]) == ("finished", {"total": 32, "done": 32, "failed": 0})
    assert frames_of(cvat, task["id"]) == Counter(dict.fromkeys(range(32), 1))


def test_cancel_keeps_what_cvat_has(stack, cvat):
    task = cvat.task(THING, COCO_IMAGES * 2)  # 256 frames: 8 chunks, 2 workers
    rid = run_probe(stack, task["id"])
    wait_until(lambda: stack.ok("GET", f"/api/lambda/requests/{rid}")["frames"]["done"] >= 16, 60, "a chunk to finish")
    stack.ok("DELETE", f"/api/lambda/requests/{rid}", 204)
    request = stack.wait(rid)
    assert request["status"] == "failed" and request["cancel_requested"]
    assert 16 <= request["frames"]["done"] < 256
    written = frames_of(cvat, task["id"])
    assert set(written.values()) == {1} and len(written) == request["frames"]["done"]
