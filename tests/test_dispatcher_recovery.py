"""Requests that outlive Redis (docs/architecture.md §12): the store's copy of each request, listed
and resumed when Redis restarts empty; and the fault matrix's cases that run in reasonable time
(scripts/fault_matrix.py: real Redis processes, the platform, the API and RQ workers)."""

import runpy
import sqlite3
import threading
import uuid

import pytest
import redis
import rq
from sqlalchemy import insert, update

from dispatcher import recovery
from dispatcher.cvat.client import CvatClient
from dispatcher.cvat.store import CvatStore, cvat_frames
from dispatcher.request_book import Conflict, RequestBook, Target
from dispatcher.store import Store
from dispatcher.store.tables import metadata, request_records
from dispatcher.submission import cancel, submit

from helpers import REPO, TESTDATA, postgres_database

PIXELS = 100_000_000
FINAL = ("finished", "failed", "canceled")
FRAMES = [TESTDATA / "ultralytics/bus.jpg", TESTDATA / "skimage/astronaut.png"] * 4  # 8 frames
matrix = runpy.run_path(str(REPO / "scripts/fault_matrix.py"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = Store(url, tmp_path / "data", None, PIXELS)
    yield store
    metadata.drop_all(store._engine)
    store.close()


@pytest.fixture
def parts(store):
    """A book backed by the store, on a namespace of its own on the shared Redis, and its queue."""
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"dispatcher-test-{uuid.uuid4().hex}"
    book = RequestBook(client, 1800, 10800, prefix, records=store.request_records)
    queue = rq.Queue(f"{prefix}-queue", connection=client)
    yield book, queue
    lose_redis(book, queue)
    queue.delete()  # and its name from RQ's list of queues: the shared Redis is left as it was


def lose_redis(book: RequestBook, queue: rq.Queue) -> None:
    """What a Redis restarted without persistence leaves of this namespace: nothing."""
    queue.empty()
    keys = list(book.redis.scan_iter(f"{book.prefix}:*"))
    if keys:
        book.redis.delete(*keys)


def start(book, queue, store, task):
    """A request on the whole task as the API submits it: recorded, begun, queued in chunks of 3."""
    return submit(book, queue, Target(task["id"]), "yolo", {"threshold": 0.5}, store.target_frames(task["id"], None),
                  3, 10.0, begin=lambda run: store.begin_run(run.request_id, run.id, task["id"]))


def queued_units(queue: rq.Queue) -> list[int]:
    return sorted(unit for job in queue.get_jobs() for unit in job.args[1])


def new_task(store) -> dict:
    task = store.create_task("t", [{"name": "car", "type": "rectangle"}])
    store.add_frames(task["id"], [(f"{index}-{path.name}", path.read_bytes()) for index, path in enumerate(FRAMES)])
    return store.get_task(task["id"])


def box(task: dict, frame: int) -> dict:
    return {"frame": frame, "label_id": task["labels"][0]["id"], "type": "rectangle", "points": [1, 2, 30, 40]}


def test_a_request_redis_lost_is_listed_from_the_store_and_resumed_without_its_written_frames(parts, store):
    book, queue = parts
    task = new_task(store)
    run = start(book, queue, store, task)
    assert queued_units(queue) == list(range(8))
    # Two chunks ran before Redis went: frames 0-2 written, frame 3 failed for good, 4-5 written.
    store.write_results(run.request_id, run.id, task["id"], {f: ([], [box(task, f)]) for f in (0, 1, 2)}, None)
    book.mark_started(run.id)
    book.frame_failed(run.id, 3, "function yolo answered 400: bad frame")
    store.write_results(run.request_id, run.id, task["id"], {f: ([], [box(task, f)]) for f in (4, 5)}, None)
    lose_redis(book, queue)

    listed = book.get(run.request_id)
    assert (listed["status"], listed["run"], listed["frames"]) == ("started", run.id,
                                                                   {"total": 8, "done": 5, "failed": 1})
    assert listed["failures"] == [{"frame": 3, "reason": "function yolo answered 400: bad frame"}]
    assert [request["id"] for request in book.list()] == [run.request_id]
    with pytest.raises(Conflict, match="being resumed"):  # the lost run still holds its task
        book.create(Target(task["id"], store.list_jobs(task["id"])[0]["id"]), "yolo", {}, [0])

    assert recovery.recover(book, queue) == [run.id]
    assert queued_units(queue) == [6, 7]  # only what was neither written nor failed
    restored = book.get_run(run.id)
    assert (restored["status"], restored["frames"]) == ("started", {"total": 8, "done": 5, "failed": 1})
    assert recovery.recover(book, queue) == []  # Redis knows it again and its chunks are queued
    with pytest.raises(Conflict, match="running: action=autoannotate&target=task"):
        book.create(Target(task["id"]), "yolo", {}, [0])
    # The end reaches the store's copy too, and the list keeps it after Redis forgets it again.
    book.finish(run.id, "finished")
    lose_redis(book, queue)
    assert book.get(run.request_id)["status"] == "finished" and recovery.recover(book, queue) == []


def test_two_processes_that_notice_the_same_lost_run_queue_it_once(parts, store):
    book, queue = parts
    task = new_task(store)
    start(book, queue, store, task)
    lose_redis(book, queue)
    requeued = []
    barrier = threading.Barrier(4)

    def sweep():
        barrier.wait()
        requeued.extend(recovery.recover(book, queue))

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(requeued) == 1 and queued_units(queue) == list(range(8))


def test_a_run_redis_knows_but_whose_chunks_were_lost_is_queued_again(parts, store):
    book, queue = parts
    task = new_task(store)
    run = start(book, queue, store, task)
    store.write_results(run.request_id, run.id, task["id"], {0: ([], [box(task, 0)])}, None)
    book.frame_done(run.id, 0)
    queue.empty()  # e.g. the API died while queueing them, or the queue was lost
    for job_id in book.chunk_jobs(run.id):
        book.redis.delete(f"rq:job:{job_id}")
    assert recovery.recover(book, queue) == [run.id] and queued_units(queue) == list(range(1, 8))


def test_a_request_that_cannot_be_resumed_ends_failed_with_its_reason(parts, store):
    book, queue = parts
    task = new_task(store)
    run = start(book, queue, store, task)
    lose_redis(book, queue)
    with store._engine.begin() as connection:  # it was resumed as often as allowed already
        connection.execute(update(request_records).where(request_records.c.run == run.id)
                           .values(generation=recovery.MAX_REQUEUES))
    assert recovery.recover(book, queue) == [] and queue.count == 0
    request = book.get(run.request_id)
    assert request["status"] == "failed" and "resumed 5 times" in request["exc_info"]


def test_a_lost_request_can_be_canceled(parts, store):
    book, queue = parts
    task = new_task(store)
    run = start(book, queue, store, task)
    lose_redis(book, queue)
    assert cancel(book, queue, run.request_id)
    assert book.get(run.request_id)["status"] == "canceled" and recovery.recover(book, queue) == []
    book.create(Target(task["id"]), "yolo", {}, [0])  # the target is free


def test_a_lost_reid_run_gets_its_matched_pairs_back_and_runs_the_others(parts, store):
    book, queue = parts
    task = new_task(store)
    run = submit(book, queue, Target(task["id"]), "reid", {}, [0, 2, 4], 1, 10.0, kind="reid",
                 begin=lambda run: store.begin_run(run.request_id, run.id, task["id"]))
    book.set_links(run.id, 0, [[11, 21]])
    book.frame_done(run.id, 0)
    book.frame_failed(run.id, 2, "function reid answered 500: boom")
    lose_redis(book, queue)
    assert book.get(run.request_id)["frames"] == {"total": 3, "done": 1, "failed": 1}
    assert recovery.recover(book, queue) == [run.id] and queued_units(queue) == [4]
    assert book.links(run.id) == {0: [[11, 21]]}  # what the end of the run links into tracks


def test_fronting_cvat_the_done_frames_are_those_written_to_cvat(tmp_path):
    """The CVAT store keeps the same records; a frame staged but not known to be in CVAT is not done."""
    cvat = CvatStore(CvatClient("http://127.0.0.1:9", 5, token="unused"), None, tmp_path, 0, chunks=False)
    try:
        cvat.begin_run("r", "run-1", 7)
        cvat.request_records.create({"request_id": "r", "run": "run-1", "kind": "detector", "function_id": "yolo",
                                     "task_id": 7, "job_id": None, "parameters": {}, "owner": None,
                                     "units": [0, 1, 2], "plan": {}, "enqueued": 0.0})
        with cvat._engine.begin() as connection:
            connection.execute(insert(cvat_frames), [
                {"run": "run-1", "frame": 0, "written": True, "content": {"tags": [], "shapes": []}},
                {"run": "run-1", "frame": 1, "written": False, "content": {"tags": [], "shapes": []}}])
        cvat.request_records.unit_failed("run-1", 2, "function yolo answered 400: bad frame")
        stored = cvat.request_records.get("r")
        assert cvat.request_records.outcomes(stored) == ({0}, {2: "function yolo answered 400: bad frame"}, {})
        cvat.begin_run("r", "run-2", 7)  # a new run of the id: the old run's frames are not its own
        assert cvat.written_frames("r", "run-1") == set()
    finally:
        cvat.close()


# The fault matrix's Redis cases, end to end

def generation(root) -> int:
    """How often the case's one request was queued again (the store's copy, SQLite)."""
    with sqlite3.connect(root / "data" / "dispatcher.sqlite3") as connection:
        return connection.execute("SELECT generation FROM request_records").fetchone()[0]


def test_a_redis_restart_without_persistence_mid_task_loses_no_frame(tmp_path):
    outcome = matrix["run_case"]("redis-no-persistence", tmp_path, frames=300, sleep=0.01, RECOVERY_INTERVAL="1")
    assert outcome.problems == [] and (outcome.status, outcome.done, outcome.failed) == ("finished", 300, 0)
    assert generation(tmp_path) == 1  # resumed once, from the store's copy


def test_a_redis_restart_without_persistence_on_postgresql(tmp_path):
    with postgres_database("recovery") as url:
        outcome = matrix["run_case"]("redis-no-persistence", tmp_path, frames=300, sleep=0.01, database_url=url,
                                     RECOVERY_INTERVAL="1")
    assert outcome.problems == [] and (outcome.status, outcome.done) == ("finished", 300)


def test_with_persistence_a_redis_restart_just_continues(tmp_path):
    outcome = matrix["run_case"]("redis-persistence", tmp_path, frames=300, sleep=0.01, RECOVERY_INTERVAL="1")
    assert outcome.problems == [] and (outcome.status, outcome.done) == ("finished", 300)
    assert generation(tmp_path) == 0  # nothing was lost, nothing queued again


def test_a_lost_request_is_listed_over_http_holds_its_task_and_an_api_start_resumes_it(tmp_path):
    """No sweep but the API's first: the request is read from the store until an API starts."""
    deployment = matrix["Deployment"](tmp_path, persistence=False, sleep=0.01, RECOVERY_INTERVAL="3600")
    try:
        task = deployment.new_task(200)
        body = {"function": matrix["FUNCTION"], "task": task}
        rid = deployment.http.post("/api/lambda/requests", json=body).json()["id"]
        matrix["wait_until"](lambda: (deployment.request(rid) or {}).get("frames", {}).get("done", 0) >= 50, 60,
                             "a quarter of the frames")
        deployment.kill_redis()
        deployment.start_redis()
        listed = matrix["wait_until"](lambda: deployment.request(rid), 30, "the request to be read again")
        assert listed["status"] == "started" and 50 <= listed["frames"]["done"] < 200
        assert [request["id"] for request in deployment.http.get("/api/lambda/requests").json()] == [rid]
        refused = deployment.http.post("/api/lambda/requests", json=body)
        assert refused.status_code == 409 and "being resumed" in refused.json()["detail"]
        deployment.kill_api()
        deployment.start_api()
        ended = matrix["wait_until"](lambda: (lambda r: r if r and r["status"] in FINAL else None)(
            deployment.request(rid)), 120, "the request to end")
        assert matrix["problems"](deployment, task, ended, 200) == []
    finally:
        deployment.close()


@pytest.mark.parametrize("case", ["api", "worker", "function-worker"])
def test_fault_matrix_cases_end_with_every_frame_once(case, tmp_path):
    outcome = matrix["run_case"](case, tmp_path, frames=200, sleep=0.01, RECOVERY_INTERVAL="1")
    assert outcome.problems == [] and outcome.status == "finished"
