"""Annotation requests: their ids, who may run at the same time, their chunks and their progress.

State lives in Redis so that the API and any number of workers on any host share it (``dispatcher``
is the default key prefix):

- ``dispatcher:request:<id>``: a hash with the request's parameters and status;
- ``dispatcher:request:<id>:done`` / ``:failures``: the frames done, and frame -> reason for frames
  that failed for good. Sets, not counters: a chunk retried after its worker died must not count
  its frames twice;
- ``dispatcher:request:<id>:chunks`` / ``:active``: the RQ job ids of its chunks, and those running
  now (the last one to stop after a cancel ends the request);
- ``dispatcher:running:task:<task>`` / ``dispatcher:running:job:<job>``: the request holding a target;
- ``dispatcher:requests``: every request id, for listing.

Unlike CVAT (cvat-compat.md section 8): requests are keyed by their target, so two jobs of one task
can run together (defect 12) and only overlapping targets conflict; progress counts the frames of
the target, so job runs go from 0 to 100 (defect 7); failed and canceled requests stay listed with
their reason until their TTL (defect 11).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass

import redis
import rq

from dispatcher.store import Store

PREFIX = "dispatcher"
QUEUE = "annotation"  # CVAT's queue name for auto-annotation
CHUNK_FUNCTION = "dispatcher.chunks.annotate_chunk"
CHUNK_FAILED = "dispatcher.chunks.chunk_failed"  # RQ's failure callback of a chunk job
# A chunk whose worker died (RQ's abandoned job) or crashed runs again, this many times.
CHUNK_RETRIES = 3
SUFFIXES = ("", ":done", ":failures", ":chunks", ":active")
FINAL_STATES = ("finished", "failed", "canceled")  # RQ's spellings, which CVAT's UI reads
# Take a target only if no live request holds an overlapping one: a task run conflicts with any run
# of the task or of one of its jobs; a job run with a run of that job or of its task. A holder whose
# record is gone or final (its process died before releasing) does not count. One script, so two
# clients asking at once cannot both win; it also starts the new record as queued.
# KEYS: own target key, then (task run) the task's job-runs set, or (job run) the task key and that set.
# ARGV: request id, "task" or "job", the request key prefix.
_CLAIM = """
local function live(rid)
  if not rid then return false end
  local status = redis.call('HGET', ARGV[3] .. rid, 'status')
  return status == 'queued' or status == 'started'
end
local holder = redis.call('GET', KEYS[1])
if live(holder) then return holder end
if ARGV[2] == 'job' then
  holder = redis.call('GET', KEYS[2])
  if live(holder) then return holder end
else
  for _, rid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if live(rid) then return rid end
    redis.call('SREM', KEYS[2], rid)
  end
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] == 'job' then redis.call('SADD', KEYS[3], ARGV[1]) end
redis.call('DEL', ARGV[3] .. ARGV[1], ARGV[3] .. ARGV[1] .. ':done', ARGV[3] .. ARGV[1] .. ':failures',
           ARGV[3] .. ARGV[1] .. ':chunks', ARGV[3] .. ARGV[1] .. ':active')
redis.call('HSET', ARGV[3] .. ARGV[1], 'status', 'queued')
return false
"""
# Release a target only if this request still holds it. KEYS: own target key[, the task's job-runs set].
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if KEYS[2] then redis.call('SREM', KEYS[2], ARGV[1]) end
"""


# Take a call slot of a function if fewer than its limit are held; expired leases (their holder
# died) are dropped first. KEYS: the function's slot set. ARGV: now, lease expiry, limit, lease id.
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  return 1
end
return 0
"""


def request_id(target: str, target_id: int) -> str:
    """CVAT's request id format, keyed by target (``target=job&target_id=<job>`` for job runs)."""
    def escape(value: str) -> str:  # CVAT's escaping of values: '.' -> '~', ' ' -> '_'
        return value.replace(".", "~").replace(" ", "_")

    return "&".join(f"{k}={escape(str(v))}" for k, v in
                    (("action", "autoannotate"), ("target", target), ("target_id", target_id)))


def plan_chunks(frames: list[int], chunk_size: int) -> list[list[int]]:
    """Consecutive runs of at most ``chunk_size`` frames, in order: one RQ job each, never one per frame."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    return [frames[start:start + chunk_size] for start in range(0, len(frames), chunk_size)]


class Conflict(Exception):
    """Another running request holds an overlapping target (409)."""


@dataclass(frozen=True)
class Target:
    task: int
    job: int | None = None

    @property
    def kind(self) -> str:
        return "task" if self.job is None else "job"

    @property
    def id(self) -> int:
        return self.task if self.job is None else self.job


class RequestBook:
    """Every request's record in Redis."""

    def __init__(self, client: redis.Redis, finished_ttl: int, failed_ttl: int, prefix: str = PREFIX):
        self.redis = client
        self.prefix = prefix
        self.finished_ttl = finished_ttl
        self.failed_ttl = failed_ttl
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    def _key(self, rid: str, suffix: str = "") -> str:
        return f"{self.prefix}:request:{rid}{suffix}"

    def _holder_keys(self, target: Target) -> list[str]:
        task_key = f"{self.prefix}:running:task:{target.task}"
        task_jobs_key = f"{self.prefix}:running:task-jobs:{target.task}"
        if target.job is None:
            return [task_key, task_jobs_key]
        return [f"{self.prefix}:running:job:{target.job}", task_key, task_jobs_key]

    def create(self, target: Target, function_id: str, parameters: dict, frames: list[int]) -> str:
        """Record a new queued request for ``frames`` of ``target``; raises Conflict with CVAT's message."""
        rid = request_id(target.kind, target.id)
        holder = self._claim(keys=self._holder_keys(target), args=[rid, target.kind, self._key("")])
        if holder is not None:
            raise Conflict(f"Only one running request is allowed for the same {target.kind} #{target.id} "
                           f"(running: {holder.decode() if isinstance(holder, bytes) else holder})")
        now = time.time()
        record = {"function": function_id, "task": target.task, "job": "" if target.job is None else target.job,
                  "parameters": json.dumps(parameters), "status": "queued", "total": len(frames),
                  "enqueued": now, "started": "", "ended": "", "exc_info": "", "cancel": 0}
        with self.redis.pipeline() as pipe:  # the claim replaced any finished record of the same id
            pipe.hset(self._key(rid), mapping=record)
            pipe.sadd(f"{self.prefix}:requests", rid)
            pipe.execute()
        return rid

    def add_chunk_jobs(self, rid: str, job_ids: list[str]) -> None:
        self.redis.sadd(self._key(rid, ":chunks"), *job_ids)

    def chunk_jobs(self, rid: str) -> list[str]:
        """The RQ job ids of a request's chunks (a cancel removes the ones still queued)."""
        return sorted(m.decode() for m in self.redis.smembers(self._key(rid, ":chunks")))

    def get(self, rid: str) -> dict | None:
        """The request as the API shows it, or None when unknown or expired."""
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(self._key(rid)).items()}
        if not raw:
            self.redis.srem(f"{self.prefix}:requests", rid)  # expired: stop listing it
            return None
        failures = {int(f): r.decode() for f, r in self.redis.hgetall(self._key(rid, ":failures")).items()}
        total, done, failed = int(raw["total"]), self.redis.scard(self._key(rid, ":done")), len(failures)
        started = float(raw["started"]) if raw["started"] else None
        ended = float(raw["ended"]) if raw["ended"] else None
        elapsed = ((ended or time.time()) - started) if started else 0.0
        fps = done / elapsed if elapsed > 0 else 0.0
        remaining = total - done - failed
        return {
            "id": rid, "function_id": raw["function"], "task": int(raw["task"]),
            "job": int(raw["job"]) if raw["job"] else None, "parameters": json.loads(raw["parameters"]),
            "status": raw["status"], "enqueued": float(raw["enqueued"]), "started": started, "ended": ended,
            "exc_info": raw["exc_info"] or None,
            # Frames of the target, not of the task: a job run goes from 0 to 100 too (defect 7).
            "progress": 100 if raw["status"] == "finished" else (100 * (done + failed) // total if total else 0),
            "frames": {"total": total, "done": done, "failed": failed},
            "fps": round(fps, 2), "eta_seconds": round(remaining / fps, 1) if fps > 0 and remaining else None,
            "failures": [{"frame": frame, "reason": failures[frame]} for frame in sorted(failures)],
            "cancel_requested": raw["cancel"] == "1",
        }

    def list(self) -> list[dict]:
        ids = sorted(m.decode() for m in self.redis.smembers(f"{self.prefix}:requests"))
        return [request for request in (self.get(rid) for rid in ids) if request is not None]

    def mark_started(self, rid: str) -> None:
        """The first chunk to start moves the request from queued to started (once)."""
        if self.redis.hsetnx(self._key(rid), "started_marker", 1):
            self.redis.hset(self._key(rid), mapping={"status": "started", "started": time.time()})

    def frame_done(self, rid: str, frame: int) -> None:
        with self.redis.pipeline() as pipe:  # a frame that failed before and now succeeded is done
            pipe.sadd(self._key(rid, ":done"), frame)
            pipe.hdel(self._key(rid, ":failures"), frame)
            pipe.execute()

    def frames_done(self, rid: str) -> set[int]:
        return {int(frame) for frame in self.redis.smembers(self._key(rid, ":done"))}

    def frame_failed(self, rid: str, frame: int, reason: str) -> None:
        """A frame whose results a previous run of its chunk stored stays done."""
        if not self.redis.sismember(self._key(rid, ":done"), frame):
            self.redis.hset(self._key(rid, ":failures"), frame, reason)

    def request_cancel(self, rid: str) -> bool:
        """Set the flag every chunk checks before each call; False when the request is unknown."""
        if not self.redis.exists(self._key(rid)):
            return False
        self.redis.hset(self._key(rid), "cancel", 1)
        return True

    def cancel_requested(self, rid: str) -> bool:
        return self.redis.hget(self._key(rid), "cancel") == b"1"

    def chunk_started(self, rid: str, chunk_id: str) -> None:
        self.redis.sadd(self._key(rid, ":active"), chunk_id)

    def chunk_ended(self, rid: str, chunk_id: str) -> int:
        """Returns how many of the request's chunks are still running. A chunk run again after its
        worker died re-adds its own id, so a dead worker's entry does not stay behind."""
        with self.redis.pipeline() as pipe:  # MULTI: exactly one ender sees the set empty
            pipe.srem(self._key(rid, ":active"), chunk_id)
            pipe.scard(self._key(rid, ":active"))
            return pipe.execute()[1]

    def running_chunks(self, rid: str) -> int:
        return self.redis.scard(self._key(rid, ":active"))

    def finish_canceled(self, rid: str) -> None:
        record = self.get(rid)
        if record is None:
            return
        frames = record["frames"]
        self.finish(rid, "canceled", f"canceled on request after {frames['done']} of {frames['total']} frames; "
                                     f"the annotations of those {frames['done']} frames were kept"
                                     + (f"; {frames['failed']} frames failed" if frames["failed"] else ""))

    def finish(self, rid: str, status: str, exc_info: str = "") -> None:
        """Final state: release the target, keep the record (and its failures) until its TTL."""
        if status not in FINAL_STATES:
            raise ValueError(f"{status!r} is not a final state ({', '.join(FINAL_STATES)})")
        record = self.get(rid)
        if record is None or record["status"] in FINAL_STATES:  # e.g. a cancel and the last chunk at once
            return
        target = Target(record["task"], record["job"])
        ttl = self.finished_ttl if status == "finished" else self.failed_ttl
        holder_keys = self._holder_keys(target)
        with self.redis.pipeline() as pipe:
            pipe.hset(self._key(rid), mapping={"status": status, "ended": time.time(), "exc_info": exc_info})
            for suffix in SUFFIXES:
                pipe.expire(self._key(rid, suffix), ttl)
            pipe.execute()
        self._release(keys=[holder_keys[0]] + ([holder_keys[2]] if target.job is not None else []), args=[rid])


class CallSlots:
    """How many calls each function has in flight, across every chunk of every request on every
    worker: at most its worker count, so that chunks running side by side do not overrun it (a
    nuclio function answers 503 when no worker frees up in time).

    A slot is a lease in a Redis sorted set, scored by its expiry. A thread renews this process's
    leases every ``lease_seconds / 3``, however long a call takes; when a worker dies its leases
    lapse within ``lease_seconds`` and other chunks take the slots."""

    def __init__(self, client: redis.Redis, lease_seconds: float = 10, prefix: str = PREFIX):
        self.redis = client
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self._take = client.register_script(_TAKE_SLOT)
        self._held: dict[str, str] = {}  # lease -> its function's key
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    @contextlib.contextmanager
    def hold(self, function_id: str, limit: int, should_stop=lambda: False):
        """Wait for a slot (polling, backing off to 20 ms); ``should_stop`` is asked while waiting
        and its exception, if it raises, propagates."""
        key, lease, pause = f"{self.prefix}:slots:{function_id}", uuid.uuid4().hex, 0.001
        while True:
            now = time.time()
            if self._take(keys=[key], args=[now, now + self.lease_seconds, limit, lease]):
                break
            should_stop()
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        with self._lock:
            self._held[lease] = key
            if self._renewer is None:  # started here, not in __init__: RQ forks after services exist
                self._renewer = threading.Thread(target=self._renew, name="call-slot-renewer", daemon=True)
                self._renewer.start()
        try:
            yield
        finally:
            with self._lock:
                del self._held[lease]
            self.redis.zrem(key, lease)

    def _renew(self) -> None:
        while True:
            time.sleep(self.lease_seconds / 3)
            with self._lock:
                held = list(self._held.items())
            if held:
                expiry = time.time() + self.lease_seconds
                with self.redis.pipeline(transaction=False) as pipe:
                    for lease, key in held:
                        pipe.zadd(key, {lease: expiry}, xx=True)  # a lease already given up stays gone
                    pipe.execute()


def submit(book: RequestBook, queue: rq.Queue, store: Store, target: Target, function_id: str, parameters: dict,
           frames: list[int], chunk_size: int, job_timeout: int) -> str:
    """Record a request and enqueue one RQ job per chunk of its frames; raises Conflict (409)."""
    rid = book.create(target, function_id, parameters, frames)
    # CVAT's ids repeat per target: the previous run's shapes become the task's own (not replaced
    # by this run's writes) and its cleanup claim goes, before any chunk of this run writes.
    store.forget_request(rid)
    chunks = plan_chunks(frames, chunk_size)
    # RQ job ids allow letters, digits, '-' and '_' only, so chunks get ids of their own.
    job_ids = [f"autoannotate-{target.kind}-{target.id}-{uuid.uuid4().hex[:12]}-{index}" for index in range(len(chunks))]
    if job_ids:
        book.add_chunk_jobs(rid, job_ids)
    for job_id, chunk in zip(job_ids, chunks):
        queue.enqueue(CHUNK_FUNCTION, rid, chunk, job_id=job_id, job_timeout=job_timeout,
                      result_ttl=book.finished_ttl, failure_ttl=book.failed_ttl,
                      retry=rq.Retry(max=CHUNK_RETRIES), on_failure=rq.Callback(CHUNK_FAILED))
    if not frames:
        book.finish(rid, "finished")  # nothing to annotate
    return rid


def cancel(book: RequestBook, queue: rq.Queue, rid: str) -> bool:
    """Stop a request: running chunks see the flag before their next call and write what they have;
    queued chunks are removed. The request ends as canceled when its last running chunk stops, or
    now if none runs. False when the request is unknown."""
    record = book.get(rid)
    if record is None:
        return False
    if record["status"] in FINAL_STATES:
        return True
    book.request_cancel(rid)
    for job_id in book.chunk_jobs(rid):
        job = queue.fetch_job(job_id)
        if job is not None and job.get_status() in (rq.job.JobStatus.QUEUED, rq.job.JobStatus.SCHEDULED,
                                                    rq.job.JobStatus.DEFERRED):
            job.cancel()
    if book.running_chunks(rid) == 0:
        book.finish_canceled(rid)
    return True
