"""Chunks of an annotation request, end to end on real parts: the local platform serving the real
YOLO v3 function (tiny IR), the SQLite task store, and Redis."""

import dataclasses
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis
import rq

from dispatcher import batches, reid
from dispatcher import settings as dispatcher_settings
from dispatcher.call_slots import CallSlots
from dispatcher.chunks import WorkerServices, run_chunk
from dispatcher.circuit_breaker import CircuitBreaker
from dispatcher.gateway import Gateway
from dispatcher.job_metrics import JobMetrics
from dispatcher.registry import Registry
from dispatcher.request_book import RequestBook, Run, Target, key_prefix
from dispatcher.store import Store
from dispatcher.submission import QUEUE, cancel, plan_chunks, queue_name, submit

from helpers import PROBE, REPO, TESTDATA, copy_function, serve_platform

PIXELS = 100_000_000  # MAX_IMAGE_PIXELS's default
YOLO = "openvino-omz-public-yolo-v3-tf"
FRAMES = [TESTDATA / "ultralytics/bus.jpg", TESTDATA / "ultralytics/zidane.jpg"] + [
    TESTDATA / f"coco128-val2017/images/{name}.jpg" for name in ("000000000139", "000000000632", "000000000785",
                                                                 "000000000872")]
LABELS = [{"name": "person", "type": "rectangle"}, {"name": "human", "type": "rectangle"},
          {"name": "bus", "type": "rectangle"}, {"name": "car", "type": "any"}]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tree = tmp_path_factory.mktemp("tree")
    copy_function(REPO / "serverless/openvino/omz/public/yolo-v3-tf/nuclio", tree / "yolo")
    # Answers an object, not a list of items: unusable output. Frames are bigger than its 64 KiB limit.
    copy_function(PROBE, tree / "probe", **{"spec.triggers.myHttpTrigger.attributes.maxRequestBodySize": 33554432})
    copy_function(PROBE, tree / "down", **{"metadata.name": "probe-down",
                                           "spec.env": [{"name": "PROBE_INIT_FAIL", "value": "no weights"}]})
    copy_function(REPO / "serverless/opencv/reid-colour-histogram/nuclio", tree / "reid")
    # The same YOLO, one frame per call as CVAT sends them; and one that refuses every batch (413).
    copy_function(REPO / "serverless/openvino/omz/public/yolo-v3-tf/nuclio", tree / "yolo-single",
                  **{"metadata.name": "yolo-single", "metadata.annotations.max_batch": "1"})
    copy_function(REPO / "serverless/openvino/omz/public/yolo-v3-tf/nuclio", tree / "yolo-tight",
                  **{"metadata.name": "yolo-tight", "spec.env": [{"name": "MAX_BATCH_PIXELS", "value": "1"}]})
    # A detector taking 0.2 s a frame, batches allowed, one worker: a chunk takes seconds.
    copy_function(PROBE, tree / "probe-slow", **{
        "metadata.name": "probe-slow", "metadata.annotations.max_batch": "16",
        "spec.env": [{"name": "PROBE_DETECT_SECONDS", "value": "0.2"}],
        "spec.triggers.myHttpTrigger.maxWorkers": 1, "spec.triggers.myHttpTrigger.numWorkers": 1,
        "spec.triggers.myHttpTrigger.attributes.maxRequestBodySize": 67108864})
    # A ReID function whose reply (a description of what it got) is no matching.
    copy_function(PROBE, tree / "probe-reid", **{"metadata.name": "probe-reid", "metadata.annotations.type": "reid",
                                                 "spec.triggers.myHttpTrigger.attributes.maxRequestBodySize": 33554432})
    with serve_platform(tree) as running:
        yield running


@pytest.fixture
def services(platform, tmp_path):
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"dispatcher-test-{uuid.uuid4().hex}"
    store = Store(None, tmp_path / "data", None, PIXELS)
    settings = dispatcher_settings.load({"NUCLIO_URL": platform.url})
    yield WorkerServices(RequestBook(client, 1800, 10800, prefix), CallSlots(client, prefix=prefix),
                         Registry(Gateway(settings)), store, retries=1, backoff=0.05,
                         breaker=CircuitBreaker(client, prefix, failures=5, wait=30),
                         metrics=JobMetrics(client, prefix))
    store.close()
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)


def new_task(store, segment_size=None) -> dict:
    task = store.create_task("street", LABELS, segment_size)
    store.add_frames(task["id"], [(path.name, path.read_bytes()) for path in FRAMES])
    return store.get_task(task["id"])


def start_request(services, task, function=YOLO, job=None, **parameters) -> tuple[Run, list[int]]:
    """A run recorded and begun as the API does it, its chunks not yet run."""
    frames = services.store.job_frames(job) if job else list(range(task["size"]))
    run = services.book.create(Target(task["id"], job), function, parameters, frames)
    services.store.begin_run(run.request_id, run.id, task["id"])
    return run, frames


def run_request(services, task, function=YOLO, job=None, chunk_size=3, **parameters) -> str:
    run, frames = start_request(services, task, function, job, **parameters)
    for index, chunk in enumerate(plan_chunks(frames, chunk_size)):
        run_chunk(run.id, chunk, services, f"chunk-{index}")
    return run.request_id


def label_ids(task) -> dict[str, int]:
    return {label["name"]: label["id"] for label in task["labels"]}


def shapes_by_frame(services, task) -> dict[int, list[dict]]:
    shapes = {}
    for shape in services.store.get_annotations(task["id"])["shapes"]:
        shapes.setdefault(shape["frame"], []).append(shape)
    return shapes


def test_chunks_hold_whole_blocks_of_what_the_store_reads_together():
    assert plan_chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    # CVAT's chunks of 72 frames, CHUNK_SIZE 64: one CVAT chunk per RQ chunk, never split.
    assert [(c[0], c[-1], len(c)) for c in plan_chunks(list(range(150)), 64, 72)] == [(0, 71, 72), (72, 143, 72),
                                                                                       (144, 149, 6)]
    # Chunks of 10: six make 60 frames, the closest to 64.
    assert [(c[0], c[-1]) for c in plan_chunks(list(range(130)), 64, 10)] == [(0, 59), (60, 119), (120, 129)]
    # A job's frames, or frames with deleted ones left out: grouped by the blocks they are in.
    assert plan_chunks([70, 71, 72, 80, 150, 200], 64, 72) == [[70, 71], [72, 80], [150, 200]]
    # Blocks larger than CHUNK_SIZE: one block per chunk.
    assert plan_chunks(list(range(5, 12)), 2, 4) == [[5, 6, 7], [8, 9, 10, 11]]


def test_a_request_in_two_chunks_annotates_every_frame_with_task_label_ids(services):
    task = new_task(services.store)
    rid = run_request(services, task, threshold=0.3)
    request = services.book.get(rid)
    assert (request["status"], request["progress"], request["frames"]) == (
        "finished", 100, {"total": 6, "done": 6, "failed": 0})
    ids = label_ids(task)
    shapes = shapes_by_frame(services, task)
    on_bus = Counter(shape["label_id"] for shape in shapes[0])
    assert on_bus[ids["person"]] >= 3 and on_bus[ids["bus"]] == 0  # tiny sees this bus only at 0.15
    assert all(shape["source"] == "auto" and shape["type"] == "rectangle" for s in shapes.values() for shape in s)
    # By-name mapping: YOLO's "person" and "car" only; "human" is no YOLO label.
    assert {shape["label_id"] for s in shapes.values() for shape in s} <= {ids["person"], ids["car"], ids["bus"]}
    assert services.store.request_frames(rid) == set(range(6))


class RecordingRegistry(Registry):
    """The real registry, noting how many frames each call carried."""

    def __init__(self, gateway):
        super().__init__(gateway)
        self.frames_per_call = []

    def call(self, function, payload, replica=None):
        self.frames_per_call.append(len(payload["images"]) if "images" in payload else 1)
        return super().call(function, payload, replica)


def test_batched_calls_give_what_one_frame_per_call_gives(services, platform, monkeypatch):
    # YOLO's function.yaml allows 16 frames per call; a copy that allows 1 is what CVAT would send.
    # Batches are sized to take BATCH_SECONDS: on a loaded machine a YOLO frame can take over half of
    # the default, which leaves every batch one frame. With a minute, every machine batches.
    monkeypatch.setattr(batches, "BATCH_SECONDS", 60.0)
    registry = RecordingRegistry(Gateway(dispatcher_settings.load({"NUCLIO_URL": platform.url})))
    batched = dataclasses.replace(services, registry=registry)
    results = {}
    for function in (YOLO, "yolo-single", "yolo-tight"):
        task = new_task(services.store)
        registry.frames_per_call.clear()
        rid = run_request(batched, task, function=function, chunk_size=6, threshold=0.3)
        assert services.book.get(rid)["frames"] == {"total": 6, "done": 6, "failed": 0}, function
        results[function] = {frame: sorted((s["label_id"] - min(label_ids(task).values()), s["points"]) for s in shapes)
                             for frame, shapes in shapes_by_frame(services, task).items()}
        calls = list(registry.frames_per_call)
        if function == YOLO:  # the first calls carry one frame each; once timed, the rest go together
            assert sum(calls) == 6 and max(calls) > 1, calls
        elif function == "yolo-single":
            assert calls == [1] * 6
        else:  # every batch refused with 413 (MAX_BATCH_PIXELS): its frames were sent one by one
            assert max(calls) > 1 and calls.count(1) >= 6, calls
    assert results[YOLO] == results["yolo-single"] == results["yolo-tight"] and results[YOLO]


def test_a_chunk_stores_and_reports_frames_as_they_finish(services):
    # 12 frames at 0.2 s each: the chunk takes about 2.4 s, and its progress must move before it ends.
    task = services.store.create_task("slow", [{"name": "thing", "type": "rectangle"}])
    services.store.add_frames(task["id"], [(f"{i}.jpg", FRAMES[2].read_bytes()) for i in range(12)])
    run, frames = start_request(services, services.store.get_task(task["id"]), "probe-slow")
    seen = []
    chunk = threading.Thread(target=run_chunk, args=(run.id, frames, services, "chunk-0"))
    chunk.start()
    while chunk.is_alive():
        seen.append(services.book.get(run.request_id)["frames"]["done"])
        time.sleep(0.05)
    chunk.join()
    assert services.book.get(run.request_id)["frames"]["done"] == 12
    during = sorted(set(seen) - {0, 12})
    assert len(during) >= 2, seen  # done moved at least twice before the last frame
    assert services.store.request_frames(run.request_id) == set(range(12))


def test_threshold_zero_is_forwarded(services):
    task = new_task(services.store)
    run_request(services, task, threshold=0.5)
    default = len(services.store.get_annotations(task["id"])["shapes"])
    other = services.store.create_task("again", LABELS)
    services.store.add_frames(other["id"], [(p.name, p.read_bytes()) for p in FRAMES])
    run_request(services, services.store.get_task(other["id"]), threshold=0.1)
    assert len(services.store.get_annotations(other["id"])["shapes"]) > default


def test_a_chunk_that_runs_again_does_not_duplicate_shapes(services):
    task = new_task(services.store)
    rid = run_request(services, task, threshold=0.3)
    before = services.store.get_annotations(task["id"])["shapes"]
    run = services.book.current_run(rid)
    # As if it never ended: its worker died after writing, and RQ runs the chunk again.
    services.book.redis.hset(f"{services.book.prefix}:run:{run}", "status", "started")
    services.book.redis.hdel(f"{services.book.prefix}:run:{run}", "ended_marker")
    run_chunk(run, [0, 1, 2], services, "chunk-0")
    after = services.store.get_annotations(task["id"])["shapes"]
    assert len(after) == len(before)
    assert services.book.get(rid)["frames"]["done"] == 6


def test_cleanup_removes_old_annotations_once(services):
    task = new_task(services.store)
    ids = label_ids(task)
    services.store.put_annotations(task["id"], {"version": 0, "tags": [], "tracks": [], "shapes": [
        {"frame": 5, "label_id": ids["human"], "type": "rectangle", "points": [1, 1, 5, 5], "attributes": []}]})
    run_request(services, task, threshold=0.3, cleanup=True)
    shapes = services.store.get_annotations(task["id"])["shapes"]
    assert ids["human"] not in {shape["label_id"] for shape in shapes}
    assert {shape["frame"] for shape in shapes} >= {0, 1}  # the first chunk's results survived the second


def test_explicit_mapping(services):
    task = new_task(services.store)
    run_request(services, task, threshold=0.3, mapping={"person": {"name": "human"}})
    ids = label_ids(task)
    assert {shape["label_id"] for shape in services.store.get_annotations(task["id"])["shapes"]} == {ids["human"]}


def test_a_job_run_covers_its_frames_only_and_reaches_100(services):
    task = new_task(services.store, segment_size=4)
    second_job = task["jobs"][1]
    rid = run_request(services, task, job=second_job["id"], threshold=0.3)
    request = services.book.get(rid)
    assert (request["status"], request["progress"], request["frames"]["total"]) == ("finished", 100, 2)
    assert set(shapes_by_frame(services, task)) <= {4, 5}


def test_unusable_output_fails_each_frame_and_the_request_says_why(services):
    task = new_task(services.store)
    rid = run_request(services, task, function="runtime-probe")
    request = services.book.get(rid)
    assert request["status"] == "failed" and request["frames"]["failed"] == 6
    assert "runtime-probe returned unusable results" in request["failures"][0]["reason"]
    assert request["exc_info"].startswith("every frame failed; first: frame 0")
    assert services.store.get_annotations(task["id"])["shapes"] == []


def test_a_function_that_is_down_fails_its_frames_after_retries(services):
    task = new_task(services.store)
    rid = run_request(services, task, function="probe-down")
    failure = services.book.get(rid)["failures"][0]["reason"]
    assert failure.startswith("function probe-down answered 503: function probe-down is not ready (state error)")


def test_a_cancelled_request_runs_no_more_chunks(services):
    task = new_task(services.store)
    run, frames = start_request(services, task, threshold=0.3)
    run_chunk(run.id, frames[:3], services, "chunk-0")
    services.book.chunk_started(run.id, "chunk-1")  # another chunk is still running
    assert cancel(services.book, rq.Queue(QUEUE, connection=services.book.redis), run.request_id)
    assert run_chunk(run.id, frames[3:], services, "chunk-2") == {"skipped": True}
    assert {shape["frame"] for shape in services.store.get_annotations(task["id"])["shapes"]} <= {0, 1, 2}
    assert services.book.get(run.request_id)["status"] == "started"  # chunk-1 is still storing its frames
    assert run_chunk(run.id, [], services, "chunk-1") == {"skipped": True}  # the last running chunk ends it
    assert services.book.get(run.request_id)["status"] == "canceled"
    assert services.book.get(run.request_id)["frames"]["done"] == 3


def test_a_chunk_of_a_replaced_run_writes_nothing(services):
    task = new_task(services.store)
    old, frames = start_request(services, task, threshold=0.3)
    services.book.finish(old.id, "canceled")
    new, _ = start_request(services, task, threshold=0.3)
    # The old run's chunk had checked its run before the cancel and the new run; it reaches the store now.
    services.book.redis.hset(f"{services.book.prefix}:run:{old.id}", "status", "started")
    assert run_chunk(old.id, frames[:3], services, "chunk-0")["stale"]
    assert services.store.get_annotations(task["id"])["shapes"] == []
    assert services.book.get(new.request_id)["frames"]["done"] == 0


def test_chunks_run_on_real_rq_worker_processes(platform, tmp_path):
    redis_url = "redis://127.0.0.1:6379/14"  # a database of this test's own
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    data_dir = tmp_path / "data"
    store = Store(None, data_dir, None, PIXELS)
    # The workers' namespace, from their settings: DATA_DIR names their task store.
    namespace = dispatcher_settings.load({"DATA_DIR": str(data_dir)}).deployment_namespace
    try:
        task = new_task(store)
        book = RequestBook(client, 1800, 10800, key_prefix(namespace))
        frames = list(range(task["size"]))
        queue = rq.Queue(queue_name(namespace), connection=client)
        run = submit(book, queue, Target(task["id"]), YOLO, {"threshold": 0.3},
                     frames, chunk_size=2, unit_timeout=100,
                     begin=lambda run: store.begin_run(run.request_id, run.id, task["id"]))
        rid = run.request_id
        assert len(book.chunk_jobs(run.id)) == 3 and book.get(rid)["status"] == "queued"

        environment = {**os.environ, "NUCLIO_URL": platform.url, "REDIS_URL": redis_url, "DATA_DIR": str(data_dir)}
        rq_command = [str(Path(sys.executable).with_name("rq")), "worker", "--burst", "--url", redis_url, queue.name]
        workers = [subprocess.Popen(rq_command + ["--name", f"test-{uuid.uuid4().hex[:8]}-{n}"], env=environment,
                                    cwd=REPO, stdout=subprocess.DEVNULL) for n in range(2)]
        assert [worker.wait(120) for worker in workers] == [0, 0]

        request = book.get(rid)
        assert (request["status"], request["progress"], request["frames"]) == (
            "finished", 100, {"total": 6, "done": 6, "failed": 0})
        assert store.request_frames(rid) == set(frames)
        assert len(store.get_annotations(task["id"])["shapes"]) > 0
    finally:
        store.close()
        client.flushdb()


# ReID: frame pairs fanned out over chunks, linked into tracks by the last one

REID = "opencv-reid-colour-histogram"


def boxes_task(services) -> dict:
    """Frames 0-2 of one photo, with the same two boxes on each (a person and the bus), and frame 3
    with none; label "person" for the first, "bus" for the second."""
    store = services.store
    task = store.create_task("reid", LABELS)
    store.add_frames(task["id"], [(f"{n}.jpg", FRAMES[0].read_bytes()) for n in range(4)])
    ids = label_ids(task)
    store.put_annotations(task["id"], {"shapes": [
        {"frame": frame, "label_id": ids[label], "type": "rectangle", "points": points, "source": "auto"}
        for frame in range(3) for label, points in (("person", [50, 400, 250, 900]), ("bus", [10, 230, 800, 750]))]})
    return store.get_task(task["id"])


def start_reid(services, task, function=REID) -> tuple[Run, list[int]]:
    frames = list(range(task["size"]))
    pairs = reid.pairs(services.store.rectangles(task["id"], frames), frames)
    run = services.book.create(Target(task["id"]), function, {"threshold": 0.5}, pairs, kind="reid")
    services.store.begin_run(run.request_id, run.id, task["id"])
    return run, pairs


def test_reid_links_pairs_from_several_chunks_into_tracks_once(services):
    task = boxes_task(services)
    run, pairs = start_reid(services, task)
    assert pairs == [0, 1]  # frame 3 holds no rectangle: no pair (2, 3)
    run_chunk(run.id, [1], services, "chunk-1")  # chunks finish in any order
    assert services.store.get_annotations(task["id"])["tracks"] == []  # linked only when every pair is in
    run_chunk(run.id, [0], services, "chunk-0")
    request = services.book.get(run.request_id)
    assert (request["status"], request["frames"]) == ("finished", {"total": 2, "done": 2, "failed": 0})
    data = services.store.get_annotations(task["id"])
    assert data["shapes"] == [] and len(data["tracks"]) == 2
    for track in data["tracks"]:  # frames 0-2, then closed on frame 3
        assert [(s["frame"], s["outside"]) for s in track["shapes"]] == [(0, False), (1, False), (2, False),
                                                                          (3, True)]
        assert len({tuple(s["points"]) for s in track["shapes"]}) == 1
    # The last chunk again (its worker died after linking): nothing is linked twice.
    services.book.redis.hset(f"{services.book.prefix}:run:{run.id}", "status", "started")
    services.book.redis.hdel(f"{services.book.prefix}:run:{run.id}", "ended_marker")
    run_chunk(run.id, [0], services, "chunk-0")
    assert services.store.get_annotations(task["id"]) == data


def test_a_canceled_reid_run_changes_nothing(services):
    task = boxes_task(services)
    before = services.store.get_annotations(task["id"])
    run, pairs = start_reid(services, task)
    run_chunk(run.id, [0], services, "chunk-0")
    assert cancel(services.book, rq.Queue(QUEUE, connection=services.book.redis), run.request_id)
    assert run_chunk(run.id, [1], services, "chunk-1") == {"skipped": True}
    assert services.book.get(run.request_id)["status"] == "canceled"
    assert services.store.get_annotations(task["id"]) == before


def test_a_reid_function_that_answers_no_matching_fails_its_pairs_and_changes_nothing(services):
    task = boxes_task(services)
    before = services.store.get_annotations(task["id"])
    run, pairs = start_reid(services, task, "probe-reid")
    run_chunk(run.id, pairs, services, "chunk-0")
    request = services.book.get(run.request_id)
    assert request["status"] == "failed" and request["frames"]["failed"] == 2
    assert request["failures"][0]["reason"].startswith("function probe-reid returned an unusable matching: "
                                                       "expected a list of 2 integers")
    assert request["exc_info"].startswith("every frame pair failed; first: frame pair 0: ")
    assert services.store.get_annotations(task["id"]) == before
