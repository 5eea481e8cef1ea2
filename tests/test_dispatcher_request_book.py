"""Request ids, runs, conflicts, chunks, progress, cancel and call slots of annotation requests, on the real Redis."""

import contextlib
import threading
import time
import uuid

import pytest
import redis
import rq

from dispatcher.call_slots import CallSlots
from dispatcher.request_book import Conflict, RequestBook, Target, request_id
from dispatcher.submission import cancel, plan_chunks


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
    first = book.create(Target(7), "yolo", {"threshold": 0.5}, list(range(10)))
    with pytest.raises(Conflict, match=r"Only one running request is allowed for the same task #7"):
        book.create(Target(7), "yolo", {}, list(range(10)))
    book.finish(first.id, "finished")
    second = book.create(Target(7), "yolo", {}, list(range(10)))
    # CVAT's id again, for a new run that replaces the finished one; the old run's record stays apart.
    assert second.request_id == first.request_id == request_id("task", 7) and second.id != first.id
    assert book.get(second.request_id)["status"] == "queued" and book.get(second.request_id)["run"] == second.id
    assert book.get_run(first.id)["status"] == "finished"


def test_only_overlapping_targets_conflict(book):
    book.create(Target(1, job=11), "yolo", {}, [0, 1])
    book.create(Target(1, job=12), "yolo", {}, [2, 3])  # another job of the same task: fine (§D12)
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
    book.finish(first.id, "finished")
    with pytest.raises(Conflict):
        book.create(Target(3), "yolo", {}, [0, 1])
    book.finish(second.id, "canceled")
    book.create(Target(3), "yolo", {}, [0, 1])


def test_a_holder_whose_record_vanished_does_not_block_forever(book):
    run = book.create(Target(4), "yolo", {}, [0])
    book.redis.delete(f"{book.prefix}:run:{run.id}")  # its process died; the record expired
    assert book.create(Target(4), "yolo", {}, [0]).request_id == run.request_id


def test_concurrent_creates_let_exactly_one_win(book):
    outcomes = []

    def create():
        try:
            outcomes.append(book.create(Target(5), "yolo", {}, [0]).id)
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
    run = book.create(Target(6, job=61), "yolo", {"threshold": 0}, [100, 101, 102, 103])
    rid = run.request_id
    assert book.get(rid)["progress"] == 0 and book.get(rid)["status"] == "queued"
    book.mark_started(run.id)
    started = book.get(rid)["started"]
    book.mark_started(run.id)  # a second chunk starting does not move the start
    assert book.get(rid)["started"] == started and book.get(rid)["status"] == "started"
    book.frame_done(run.id, 100)
    book.frame_failed(run.id, 102, "function answered 500: boom")
    book.frame_done(run.id, 100)  # a retried chunk reports frame 100 again: still one frame
    request = book.get(rid)
    assert request["progress"] == 50
    assert request["frames"] == {"total": 4, "done": 1, "failed": 1}
    assert request["failures"] == [{"frame": 102, "reason": "function answered 500: boom"}]
    assert request["parameters"] == {"threshold": 0} and request["job"] == 61
    time.sleep(0.05)
    book.frame_done(run.id, 101)
    book.frame_done(run.id, 102)  # the retry of frame 102 succeeded: no longer a failure
    assert book.get(rid)["failures"] == [] and book.get(rid)["progress"] == 75
    book.frame_done(run.id, 103)
    assert book.finish(run.id, "finished") and not book.finish(run.id, "failed")  # only the first end counts
    request = book.get(rid)
    assert (request["status"], request["progress"]) == ("finished", 100)
    assert request["fps"] > 0 and request["eta_seconds"] is None


def test_cancel_flag_and_failed_requests_stay_listed_with_their_reason(book):
    run = book.create(Target(8), "yolo", {}, [0, 1])
    assert not book.cancel_requested(run.id)
    assert book.request_cancel(run.id) and book.cancel_requested(run.id)
    assert not book.request_cancel("no-such-run")
    book.finish(run.id, "failed", "function yolo is not ready (state error)")
    (listed,) = book.list()
    assert (listed["status"], listed["exc_info"]) == ("failed", "function yolo is not ready (state error)")
    assert 0 < book.redis.ttl(f"{book.prefix}:run:{run.id}") <= 10800
    assert 0 < book.redis.ttl(f"{book.prefix}:current:{run.request_id}") <= 10800
    with pytest.raises(ValueError):
        book.finish(run.id, "started")


def test_expired_requests_leave_the_list(book):
    run = book.create(Target(9), "yolo", {}, [0])
    book.redis.delete(f"{book.prefix}:run:{run.id}")
    assert book.get(run.request_id) is None and book.list() == []


def test_an_older_attempt_of_a_chunk_ending_leaves_the_newer_one_running(book):
    run = book.create(Target(11), "yolo", {}, [0, 1])
    assert book.chunk_started(run.id, "chunk-0") == 1
    assert book.chunk_started(run.id, "chunk-0") == 2  # run again: its first worker was lost
    assert book.chunk_ended(run.id, "chunk-0", 1) == 1  # the first worker came back and ended it
    assert book.chunk_ended(run.id, "chunk-0", 2) == 0
    book.finish(run.id, "finished")


def test_a_cancel_frees_the_target_at_once(book):
    queue = rq.Queue(f"{book.prefix}-queue", connection=book.redis)
    first = book.create(Target(10), "yolo", {}, [0, 1, 2])
    book.mark_started(first.id)
    book.chunk_started(first.id, "chunk-0")  # a chunk is still in its call
    assert cancel(book, queue, first.request_id)
    assert book.get(first.request_id)["cancel_requested"] and book.get(first.request_id)["status"] == "started"
    second = book.create(Target(10), "yolo", {}, [0, 1, 2])  # no 409 window (§9.5)
    # The old run's chunk finishes its frame afterwards: it counts for the old run, never the new one.
    book.frame_done(first.id, 0)
    book.finish(first.id, "canceled")  # what its chunk does when it stops
    assert book.get(second.request_id)["frames"]["done"] == 0 and book.get_run(first.id)["frames"]["done"] == 1
    assert book.get(second.request_id)["status"] == "queued"  # the old run's end did not touch the new one
    book.mark_started(first.id)  # nor does a late start move an ended run
    assert book.get_run(first.id)["status"] == "canceled"
    assert cancel(book, queue, second.request_id) and book.get(second.request_id)["status"] == "canceled"
    assert not cancel(book, queue, "no-such-request")


def test_call_slots_bound_calls_in_flight_across_holders(book):
    slots = CallSlots(book.redis, lease_seconds=60, prefix=book.prefix)
    in_flight, peak, lock = [0], [0], threading.Lock()

    def call():
        with slots.hold("yolo", {"r": 2}):
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
    assert peak[0] == 2 and book.redis.zcard(f"{book.prefix}:slots:yolo@r") == 0


def test_a_dead_holders_slot_comes_back_after_its_lease(book):
    slots = CallSlots(book.redis, lease_seconds=0.3, prefix=book.prefix)
    book.redis.zadd(f"{book.prefix}:slots:yolo@r", {"dead-holder": time.time() + 0.3})  # what a dead worker leaves
    started = time.monotonic()
    with slots.hold("yolo", {"r": 1}):
        assert 0.2 < time.monotonic() - started < 2


def test_a_long_call_keeps_its_slot(book):
    slots = CallSlots(book.redis, lease_seconds=0.3, prefix=book.prefix)
    with slots.hold("yolo", {"r": 1}):
        time.sleep(1)  # three leases long: renewed meanwhile
        assert book.redis.zcard(f"{book.prefix}:slots:yolo@r") == 1
        waiting = time.monotonic()

        def give_up_after_a_lease_and_more():
            if time.monotonic() - waiting > 0.6:
                raise InterruptedError

        other = CallSlots(book.redis, lease_seconds=0.3, prefix=book.prefix)
        # The slot stayed taken for two more leases.
        with pytest.raises(InterruptedError), other.hold("yolo", {"r": 1}, give_up_after_a_lease_and_more):
            pass


def test_waiting_for_a_slot_stops_when_asked(book):
    slots = CallSlots(book.redis, lease_seconds=60, prefix=book.prefix)

    def canceled():
        raise InterruptedError("canceled")

    with slots.hold("yolo", {"r": 1}), pytest.raises(InterruptedError), slots.hold("yolo", {"r": 1}, canceled):
        pass


def test_call_slots_spread_over_replicas_and_pass_over_one_marked_down(book):
    slots = CallSlots(book.redis, lease_seconds=60, prefix=book.prefix)
    limits = {"a": 2, "b": 4}  # one function on two hosts: 6 calls at once in all

    def full():
        raise InterruptedError

    with contextlib.ExitStack() as held:
        taken = [held.enter_context(slots.hold("yolo", limits)) for _ in range(6)]
        assert sorted(taken) == ["a"] * 2 + ["b"] * 4  # the least busy share first: never a third on a
        with pytest.raises(InterruptedError):  # every slot of every replica is taken
            held.enter_context(slots.hold("yolo", limits, full))
    slots.mark_down("yolo", "b")
    with contextlib.ExitStack() as held:
        assert [held.enter_context(slots.hold("yolo", limits)) for _ in range(2)] == ["a", "a"]
        with pytest.raises(InterruptedError):  # b has free slots, but a is up: b gets nothing
            held.enter_context(slots.hold("yolo", limits, full))
    assert not slots.all_down("yolo", ["a", "b"])
    slots.mark_down("yolo", "a")
    assert slots.all_down("yolo", ["a", "b"])
    with slots.hold("yolo", limits) as replica:  # every replica down: one is tried all the same
        assert replica == "a"
