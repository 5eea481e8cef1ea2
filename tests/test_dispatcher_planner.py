"""Request ids, conflicts, chunks and progress of annotation requests, on the real Redis."""

import threading
import time
import uuid

import pytest
import redis

from dispatcher.planner import CallSlots, Conflict, RequestBook, Target, plan_chunks, request_id


@pytest.fixture
def book():
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"dispatcher-test-{uuid.uuid4().hex}"  # a namespace of its own on the shared Redis
    yield RequestBook(client, finished_ttl=1800, failed_ttl=10800, prefix=prefix)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)


def test_request_ids_follow_cvats_format_keyed_by_target():
    assert request_id("task", 12) == "action=autoannotate&target=task&target_id=12"
    assert request_id("job", 34) == "action=autoannotate&target=job&target_id=34"


def test_chunks_are_consecutive_runs_in_order():
    assert plan_chunks([3, 8, 13, 18, 23], 2) == [[3, 8], [13, 18], [23]]
    assert plan_chunks([], 64) == []
    with pytest.raises(ValueError):
        plan_chunks([1], 0)


def test_a_second_request_on_the_same_task_is_a_conflict_until_the_first_ends(book):
    rid = book.create(Target(7), "yolo", {"threshold": 0.5}, list(range(10)))
    with pytest.raises(Conflict, match=r"Only one running request is allowed for the same task #7"):
        book.create(Target(7), "yolo", {}, list(range(10)))
    book.finish(rid, "finished")
    assert book.create(Target(7), "yolo", {}, list(range(10))) == rid  # the finished one is replaced
    assert book.get(rid)["status"] == "queued"


def test_only_overlapping_targets_conflict(book):
    book.create(Target(1, job=11), "yolo", {}, [0, 1])
    book.create(Target(1, job=12), "yolo", {}, [2, 3])  # another job of the same task: fine (defect 12)
    with pytest.raises(Conflict, match="job #11"):
        book.create(Target(1, job=11), "yolo", {}, [0, 1])
    with pytest.raises(Conflict):  # the task overlaps its running jobs
        book.create(Target(1), "yolo", {}, [0, 1, 2, 3])
    book.create(Target(2), "yolo", {}, [0])
    with pytest.raises(Conflict, match=r"job #21 \(running: action=autoannotate&target=task&target_id=2\)"):
        book.create(Target(2, job=21), "yolo", {}, [0])  # a job of a running task


def test_the_task_is_free_again_when_its_jobs_end(book):
    first = book.create(Target(3, job=31), "yolo", {}, [0])
    second = book.create(Target(3, job=32), "yolo", {}, [1])
    book.finish(first, "finished")
    with pytest.raises(Conflict):
        book.create(Target(3), "yolo", {}, [0, 1])
    book.finish(second, "canceled")
    book.create(Target(3), "yolo", {}, [0, 1])


def test_a_holder_whose_record_vanished_does_not_block_forever(book):
    rid = book.create(Target(4), "yolo", {}, [0])
    book.redis.delete(f"{book.prefix}:request:{rid}")  # its process died; the record expired
    assert book.create(Target(4), "yolo", {}, [0]) == rid


def test_concurrent_creates_let_exactly_one_win(book):
    outcomes = []

    def create():
        try:
            outcomes.append(book.create(Target(5), "yolo", {}, [0]))
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes).count("conflict") == 7


def test_progress_counts_the_frames_of_the_target(book):
    # A job of 4 frames, starting at task frame 100: CVAT would report (frame + 1) / task size.
    rid = book.create(Target(6, job=61), "yolo", {"threshold": 0}, [100, 101, 102, 103])
    assert book.get(rid)["progress"] == 0 and book.get(rid)["status"] == "queued"
    book.mark_started(rid)
    started = book.get(rid)["started"]
    book.mark_started(rid)  # a second chunk starting does not move the start
    assert book.get(rid)["started"] == started and book.get(rid)["status"] == "started"
    book.frame_done(rid, 100)
    book.frame_failed(rid, 102, "function answered 500: boom")
    book.frame_done(rid, 100)  # a retried chunk reports frame 100 again: still one frame
    request = book.get(rid)
    assert request["progress"] == 50
    assert request["frames"] == {"total": 4, "done": 1, "failed": 1}
    assert request["failures"] == [{"frame": 102, "reason": "function answered 500: boom"}]
    assert request["parameters"] == {"threshold": 0} and request["job"] == 61
    time.sleep(0.05)
    book.frame_done(rid, 101)
    book.frame_done(rid, 102)  # the retry of frame 102 succeeded: no longer a failure
    assert book.get(rid)["failures"] == [] and book.get(rid)["progress"] == 75
    book.frame_done(rid, 103)
    book.finish(rid, "finished")
    request = book.get(rid)
    assert (request["status"], request["progress"]) == ("finished", 100)
    assert request["fps"] > 0 and request["eta_seconds"] is None


def test_cancel_flag_and_failed_requests_stay_listed_with_their_reason(book):
    rid = book.create(Target(8), "yolo", {}, [0, 1])
    assert not book.cancel_requested(rid)
    assert book.request_cancel(rid) and book.cancel_requested(rid)
    assert not book.request_cancel("action=autoannotate&target=task&target_id=999")
    book.finish(rid, "failed", "function yolo is not ready (state error)")
    (listed,) = book.list()
    assert (listed["status"], listed["exc_info"]) == ("failed", "function yolo is not ready (state error)")
    assert 0 < book.redis.ttl(f"{book.prefix}:request:{rid}") <= 10800
    with pytest.raises(ValueError):
        book.finish(rid, "started")


def test_expired_requests_leave_the_list(book):
    rid = book.create(Target(9), "yolo", {}, [0])
    book.redis.delete(f"{book.prefix}:request:{rid}")
    assert book.get(rid) is None and book.list() == []


def test_call_slots_bound_calls_in_flight_across_holders(book):
    slots = CallSlots(book.redis, lease_seconds=60, prefix=book.prefix)
    in_flight, peak, lock = [0], [0], threading.Lock()

    def call():
        with slots.hold("yolo", 2):
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            time.sleep(0.02)
            with lock:
                in_flight[0] -= 1

    threads = [threading.Thread(target=call) for _ in range(8)]  # as if from several chunks and workers
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 2 and book.redis.zcard(f"{book.prefix}:slots:yolo") == 0


def test_a_dead_holders_slot_comes_back_after_its_lease(book):
    slots = CallSlots(book.redis, lease_seconds=0.3, prefix=book.prefix)
    book.redis.zadd(f"{book.prefix}:slots:yolo", {"dead-holder": time.time() + 0.3})  # what a dead worker leaves
    started = time.monotonic()
    with slots.hold("yolo", 1):
        assert 0.2 < time.monotonic() - started < 2


def test_a_long_call_keeps_its_slot(book):
    slots = CallSlots(book.redis, lease_seconds=0.3, prefix=book.prefix)
    with slots.hold("yolo", 1):
        time.sleep(1)  # three leases long: renewed meanwhile
        assert book.redis.zcard(f"{book.prefix}:slots:yolo") == 1
        waiting = time.monotonic()

        def give_up_after_a_lease_and_more():
            if time.monotonic() - waiting > 0.6:
                raise InterruptedError

        other = CallSlots(book.redis, lease_seconds=0.3, prefix=book.prefix)
        with pytest.raises(InterruptedError):  # the slot stayed taken for two more leases
            with other.hold("yolo", 1, give_up_after_a_lease_and_more):
                pass


def test_waiting_for_a_slot_stops_when_asked(book):
    slots = CallSlots(book.redis, lease_seconds=60, prefix=book.prefix)

    def canceled():
        raise InterruptedError("canceled")

    with slots.hold("yolo", 1):
        with pytest.raises(InterruptedError):
            with slots.hold("yolo", 1, canceled):
                pass
