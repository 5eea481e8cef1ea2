"""Annotation requests and their runs, in Redis: ids, who may run at the same time, progress, the end.

A request id is CVAT's, keyed by target, so it repeats: every time a target is annotated again the
id names a new **run**. Runs have ids of their own, and everything that happens to one is recorded
under its run id, so that a chunk still finishing an old run (canceled, or on a host that lost its
link) can never touch the next run's numbers; the task store fences its writes the same way.

State lives in Redis so that the API and any number of workers on any host share it (``dispatcher``
is the default key prefix; a deployment's is ``dispatcher:<namespace>``, ``key_prefix``):

- ``dispatcher:current:<request id>``: the run the request id names now;
- ``dispatcher:run:<run>``: a hash with the run's request id, kind, parameters and status;
- ``dispatcher:run:<run>:done`` / ``:failures``: the units done, and unit -> reason for units that
  failed for good. A unit is a frame, or for ReID the frame pair (frame, frame + 1). Sets, not
  counters: a chunk retried after its worker died must not count its units twice;
- ``dispatcher:run:<run>:links``: ReID's matches per frame pair, linked into tracks at the end;
- ``dispatcher:run:<run>:chunks`` / ``:active``: the RQ job ids of its chunks, and those running now;
- ``dispatcher:run:<run>:attempts``: chunk id -> how often it has started: a chunk run again after
  its worker was lost is a newer attempt, and the older one, should its worker come back, is
  fenced off (its writes by the task store, its end here);
- ``dispatcher:running:task:<task>`` / ``dispatcher:running:job:<job>``: the run holding a target;
- ``dispatcher:requests``: every request id, for listing.

Given the task store's ``RequestRecords``, each request's current run is also recorded there (created,
started, units failed or matched, canceled, ended), so that it outlives a Redis that restarts empty:
it is listed from there, and ``dispatcher.recovery`` puts it back here and queues what is left
(docs/architecture.md §12).

Unlike CVAT (docs/wire-format.md §8): requests are keyed by their target, so two jobs of one task
can run together (§D12) and only overlapping targets conflict; progress counts the units of
the target, so job runs go from 0 to 100 (§D7); failed and canceled requests stay listed with
their reason until their TTL (§D11). A cancel frees the target at once, so a new request on it
is accepted right away (§9.5); the canceled run ends when its last running chunk has stopped.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import redis

from dispatcher.store.request_records import RequestRecords

PREFIX = "dispatcher"  # of every Redis key


def key_prefix(namespace: str) -> str:
    """The prefix of a deployment's Redis keys: deployments sharing a Redis keep apart."""
    return f"{PREFIX}:{namespace}"

RUN_SUFFIXES = ("", ":done", ":failures", ":links", ":chunks", ":active", ":attempts")
# A chunk's end, unless a newer attempt of it has started. KEYS: the run's :active, :attempts.
# ARGV: chunk id, attempt (0: whichever). Returns how many of the run's chunks are still running.
_CHUNK_ENDED = """
if ARGV[2] == '0' or redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('SREM', KEYS[1], ARGV[1])
end
return redis.call('SCARD', KEYS[1])
"""
FINAL_STATES = ("finished", "failed", "canceled")
KINDS = ("detector", "reid")  # what a run does: annotate frames, or link rectangles into tracks
# Take a target only if no live run holds an overlapping one: a task run conflicts with any run
# of the task or of one of its jobs; a job run with a run of that job or of its task. A holder whose
# record is gone or final (its process died before releasing) does not count. One script, so two
# clients asking at once cannot both win; it also starts the new run's record as queued.
# KEYS: own target key, then (task run) the task's job-runs set, or (job run) the task key and that set.
# ARGV: run id, "task" or "job", the run key prefix.
_CLAIM = """
local function live(run)
  if not run then return false end
  local status = redis.call('HGET', ARGV[3] .. run, 'status')
  return status == 'queued' or status == 'started'
end
local holder = redis.call('GET', KEYS[1])
if live(holder) then return holder end
if ARGV[2] == 'job' then
  holder = redis.call('GET', KEYS[2])
  if live(holder) then return holder end
else
  for _, run in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if live(run) then return run end
    redis.call('SREM', KEYS[2], run)
  end
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] == 'job' then redis.call('SADD', KEYS[3], ARGV[1]) end
redis.call('HSET', ARGV[3] .. ARGV[1], 'status', 'queued')
return false
"""
# KEYS: the run's record. ARGV: now. Returns 1 when this call started it.
_START = """
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'started', 'started', ARGV[1])
  return 1
end
return 0
"""
# Release a target only if this run still holds it. KEYS: own target key[, the task's job-runs set].
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if KEYS[2] then redis.call('SREM', KEYS[2], ARGV[1]) end
"""


def request_id(target: str, target_id: int) -> str:
    """CVAT's request id format, keyed by target (``target=job&target_id=<job>`` for job runs)."""
    def escape(value: str) -> str:  # CVAT's escaping of values: '.' -> '~', ' ' -> '_'
        return value.replace(".", "~").replace(" ", "_")

    return "&".join(f"{k}={escape(str(v))}" for k, v in
                    (("action", "autoannotate"), ("target", target), ("target_id", target_id)))


class Conflict(Exception):
    """Another running request holds an overlapping target (409)."""


def overlaps(a: Target, b: Target) -> bool:
    """Whether two targets share frames: a task and anything of it, or the same job."""
    return a.task == b.task and (a.job is None or b.job is None or a.job == b.job)


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


@dataclass(frozen=True)
class Run:
    request_id: str  # CVAT's, repeated by every run on the same target
    id: str  # this run's own


class RequestBook:
    """Every request's runs, in Redis."""

    def __init__(self, client: redis.Redis, finished_ttl: int, failed_ttl: int, prefix: str = PREFIX,
                 records: RequestRecords | None = None):
        self.redis = client
        self.records = records  # the task store's copy; None: Redis only
        self.prefix = prefix
        self.finished_ttl = finished_ttl
        self.failed_ttl = failed_ttl
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._start = client.register_script(_START)
        self._chunk_ended = client.register_script(_CHUNK_ENDED)

    def _key(self, run: str, suffix: str = "") -> str:
        return f"{self.prefix}:run:{run}{suffix}"

    def _current_key(self, rid: str) -> str:
        return f"{self.prefix}:current:{rid}"

    def _holder_keys(self, target: Target) -> list[str]:
        task_key = f"{self.prefix}:running:task:{target.task}"
        task_jobs_key = f"{self.prefix}:running:task-jobs:{target.task}"
        if target.job is None:
            return [task_key, task_jobs_key]
        return [f"{self.prefix}:running:job:{target.job}", task_key, task_jobs_key]

    def create(self, target: Target, function_id: str, parameters: dict, units: list[int],
               kind: str = "detector", owner: dict | None = None, plan: dict | None = None) -> Run:
        """Record a new queued run for ``units`` of ``target``; raises Conflict with CVAT's message.
        ``plan`` (chunk_size, block, unit_timeout) is kept with the store's copy, to queue the units
        again the same way after Redis lost them."""
        if kind not in KINDS:
            raise ValueError(f"{kind!r} is not one of {', '.join(KINDS)}")
        self._refuse_overlapping_lost_runs(target)
        run = Run(request_id(target.kind, target.id), uuid.uuid4().hex)
        holder = self._claim(keys=self._holder_keys(target), args=[run.id, target.kind, self._key("")])
        if holder is not None:
            holder_run = self.get_run(holder.decode() if isinstance(holder, bytes) else holder)
            holder_id = holder_run["id"] if holder_run else "a request that just ended"
            raise Conflict(f"Only one running request is allowed for the same {target.kind} #{target.id} "
                           f"(running: {holder_id})")
        enqueued = time.time()
        record = {"request": run.request_id, "kind": kind, "function": function_id, "task": target.task,
                  "job": "" if target.job is None else target.job, "parameters": json.dumps(parameters),
                  "status": "queued", "total": len(units), "enqueued": enqueued, "started": "", "ended": "",
                  "exc_info": "", "cancel": 0, "owner": json.dumps(owner)}
        with self.redis.pipeline() as pipe:
            pipe.hset(self._key(run.id), mapping=record)
            pipe.set(self._current_key(run.request_id), run.id)  # the previous run of this id is history
            pipe.sadd(f"{self.prefix}:requests", run.request_id)
            pipe.execute()
        if self.records is not None:
            try:
                self.records.create({"request_id": run.request_id, "run": run.id, "kind": kind,
                                     "function_id": function_id, "task_id": target.task, "job_id": target.job,
                                     "parameters": parameters, "owner": owner, "units": list(units),
                                     "plan": plan or {}, "enqueued": enqueued})
            except Exception as error:  # not durable: it must not run, nor hold its target
                self.finish(run.id, "failed", f"the request could not be recorded: {error}")
                raise
        return run

    def _refuse_overlapping_lost_runs(self, target: Target) -> None:
        """A run Redis lost (restarted empty) still holds its target until recovery has put it back
        or failed it: without this, a new request on the target would be accepted meanwhile."""
        if self.records is None:
            return
        for stored in self.records.unfinished(target.task):
            if overlaps(target, Target(stored["task_id"], stored["job_id"])) and not self.redis.hexists(
                    self._key(stored["run"]), "request"):
                raise Conflict(f"Only one running request is allowed for the same {target.kind} #{target.id} "
                               f"(running: {stored['request_id']}, being resumed)")

    def add_chunk_jobs(self, run: str, job_ids: list[str]) -> None:
        self.redis.sadd(self._key(run, ":chunks"), *job_ids)

    def chunk_jobs(self, run: str) -> list[str]:
        """The RQ job ids of a run's chunks (a cancel removes the ones still queued)."""
        return sorted(m.decode() for m in self.redis.smembers(self._key(run, ":chunks")))

    def current_run(self, rid: str) -> str | None:
        run = self.redis.get(self._current_key(rid))
        return run.decode() if run else None

    def get(self, rid: str) -> dict | None:
        """The request's current run as the API shows it, or None when unknown or expired. A run
        Redis does not know (it restarted empty) is read from the task store's copy."""
        run = self.current_run(rid)
        record = self.get_run(run) if run else None
        if record is None:
            self.redis.srem(f"{self.prefix}:requests", rid)  # expired: stop listing it
            if self.records is not None:
                stored = self.records.get(rid)
                if stored is not None and (stored["expires"] is None or stored["expires"] > time.time()):
                    record = self.stored_record(stored)
        return record

    def stored_record(self, stored: dict) -> dict:
        """A row of the store's copy in ``get_run``'s shape, its counters from the units' outcomes."""
        done, failures, _ = self.records.outcomes(stored)
        total = len(stored["units"])
        return {
            "id": stored["request_id"], "run": stored["run"], "kind": stored["kind"],
            "function_id": stored["function_id"], "task": stored["task_id"], "job": stored["job_id"],
            "parameters": stored["parameters"], "status": stored["status"], "enqueued": stored["enqueued"],
            "started": stored["started"], "ended": stored["ended"], "exc_info": stored["exc_info"],
            "progress": 100 if stored["status"] == "finished" else (
                min(100 * (len(done) + len(failures)) // total, 100) if total else 0),
            "frames": {"total": total, "done": len(done), "failed": len(failures)}, "fps": 0.0, "eta_seconds": None,
            "failures": [{"frame": unit, "reason": failures[unit]} for unit in sorted(failures)],
            "cancel_requested": stored["cancel_requested"], "owner": stored["owner"],
        }

    def get_run(self, run: str) -> dict | None:
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(self._key(run)).items()}
        if "request" not in raw:  # unknown, expired, or only the claim's marker of a run being created
            return None
        failures = {int(u): r.decode() for u, r in self.redis.hgetall(self._key(run, ":failures")).items()}
        total, done, failed = int(raw["total"]), self.redis.scard(self._key(run, ":done")), len(failures)
        started = float(raw["started"]) if raw["started"] else None
        ended = float(raw["ended"]) if raw["ended"] else None
        elapsed = ((ended or time.time()) - started) if started else 0.0
        fps = done / elapsed if elapsed > 0 else 0.0
        remaining = max(total - done - failed, 0)
        return {
            "id": raw["request"], "run": run, "kind": raw["kind"], "function_id": raw["function"],
            "task": int(raw["task"]), "job": int(raw["job"]) if raw["job"] else None,
            "parameters": json.loads(raw["parameters"]), "status": raw["status"], "enqueued": float(raw["enqueued"]),
            "started": started, "ended": ended, "exc_info": raw["exc_info"] or None,
            # Units of the target, not of the task: a job run goes from 0 to 100 too (§D7).
            "progress": 100 if raw["status"] == "finished" else (min(100 * (done + failed) // total, 100)
                                                                 if total else 0),
            "frames": {"total": total, "done": done, "failed": failed},
            "fps": round(fps, 2), "eta_seconds": round(remaining / fps, 1) if fps > 0 and remaining else None,
            "failures": [{"frame": unit, "reason": failures[unit]} for unit in sorted(failures)],
            "cancel_requested": raw["cancel"] == "1",
            "owner": json.loads(raw.get("owner") or "null"),  # who asked, when callers are CVAT's users
        }

    def list(self) -> list[dict]:
        ids = {m.decode() for m in self.redis.smembers(f"{self.prefix}:requests")}
        if self.records is not None:
            ids |= {stored["request_id"] for stored in self.records.listed(time.time())}
        return [request for request in (self.get(rid) for rid in sorted(ids)) if request is not None]

    def mark_started(self, run: str) -> None:
        """The first chunk to start moves the run from queued to started; a run that has ended stays so."""
        now = time.time()
        if self._start(keys=[self._key(run)], args=[now]) and self.records is not None:
            self.records.started(run, now)

    def frame_done(self, run: str, *frames: int) -> None:
        if not frames:
            return
        with self.redis.pipeline() as pipe:  # a unit that failed before and now succeeded is done
            pipe.sadd(self._key(run, ":done"), *frames)
            pipe.hdel(self._key(run, ":failures"), *frames)
            pipe.execute()

    def frames_done(self, run: str) -> set[int]:
        return {int(frame) for frame in self.redis.smembers(self._key(run, ":done"))}

    def frame_failed(self, run: str, frame: int, reason: str) -> None:
        """A unit whose results a previous run of its chunk stored stays done."""
        if not self.redis.sismember(self._key(run, ":done"), frame):
            self.redis.hset(self._key(run, ":failures"), frame, reason)
            if self.records is not None:
                self.records.unit_failed(run, frame, reason)

    def set_links(self, run: str, frame: int, links: list[list[int]]) -> None:
        """ReID: the annotation id pairs (on ``frame``, on ``frame + 1``) the function matched."""
        self.redis.hset(self._key(run, ":links"), frame, json.dumps(links))
        if self.records is not None:
            self.records.unit_matched(run, frame, links)

    def links(self, run: str) -> dict[int, list[list[int]]]:
        return {int(frame): json.loads(links) for frame, links in self.redis.hgetall(self._key(run, ":links")).items()}

    def request_cancel(self, run: str) -> bool:
        """Set the flag every chunk checks before each call; False when the run is unknown."""
        if not self.redis.exists(self._key(run)):
            return False
        self.redis.hset(self._key(run), "cancel", 1)
        if self.records is not None:
            self.records.cancel_requested(run)
        return True

    def cancel_requested(self, run: str) -> bool:
        return self.redis.hget(self._key(run), "cancel") == b"1"

    def chunk_started(self, run: str, chunk_id: str) -> int:
        """Returns this attempt's number: 1 the first time the chunk starts, then one more each time."""
        with self.redis.pipeline() as pipe:
            pipe.sadd(self._key(run, ":active"), chunk_id)
            pipe.hincrby(self._key(run, ":attempts"), chunk_id, 1)
            return pipe.execute()[1]

    def chunk_ended(self, run: str, chunk_id: str, attempt: int = 0) -> int:
        """Returns how many of the run's chunks are still running. A chunk run again after its
        worker died re-adds its own id, so a dead worker's entry does not stay behind; an older
        ``attempt`` ending (its worker came back) leaves the newer one's entry alone. Atomic:
        exactly one ender sees no chunk left."""
        return self._chunk_ended(keys=[self._key(run, ":active"), self._key(run, ":attempts")],
                                 args=[chunk_id, attempt])

    def running_chunks(self, run: str) -> int:
        return self.redis.scard(self._key(run, ":active"))

    def finish(self, run: str, status: str, exc_info: str = "") -> bool:
        """Final state: release the target, keep the record (and its failures) until its TTL. Only
        the first call for a run does anything, and says so by returning True."""
        if status not in FINAL_STATES:
            raise ValueError(f"{status!r} is not a final state ({', '.join(FINAL_STATES)})")
        if not self.redis.hsetnx(self._key(run), "ended_marker", 1):
            return False  # e.g. a cancel and the last chunk at once
        record = self.get_run(run)
        if record is None:
            return False
        ttl = self.finished_ttl if status == "finished" else self.failed_ttl
        ended = time.time()
        with self.redis.pipeline() as pipe:
            pipe.hset(self._key(run), mapping={"status": status, "ended": ended, "exc_info": exc_info})
            for suffix in RUN_SUFFIXES:
                pipe.expire(self._key(run, suffix), ttl)
            pipe.execute()
        if self.records is not None:
            self.records.finish(run, status, ended, exc_info, ended + ttl)
        # The request id's pointer expires with its current run; a newer run has replaced it already.
        if self.current_run(record["id"]) == run:
            self.redis.expire(self._current_key(record["id"]), ttl)
        self.release(record)
        return True

    def finish_stored(self, stored: dict, status: str, exc_info: str) -> bool:
        """End a run Redis does not know, in the store's copy only (once)."""
        ended = time.time()
        return self.records.finish(stored["run"], status, ended, exc_info,
                                   ended + (self.finished_ttl if status == "finished" else self.failed_ttl))

    def restore(self, stored: dict, done: set[int], failures: dict[int, str],
                links: dict[int, list[list[int]]]) -> str | None:
        """Put a run Redis lost back from the store's copy, its target claimed again and its units'
        outcomes counted. Returns the request id of a live run that took an overlapping target
        meanwhile (then nothing is put back), else None."""
        run, target = stored["run"], Target(stored["task_id"], stored["job_id"])
        holder = self._claim(keys=self._holder_keys(target), args=[run, target.kind, self._key("")])
        holder = holder.decode() if isinstance(holder, bytes) else holder
        if holder is not None and holder != run:
            holder_run = self.get_run(holder)
            return holder_run["id"] if holder_run else "a request that just ended"
        record = {"request": stored["request_id"], "kind": stored["kind"], "function": stored["function_id"],
                  "task": target.task, "job": "" if target.job is None else target.job,
                  "parameters": json.dumps(stored["parameters"]),
                  "status": "started" if stored["started"] else "queued", "total": len(stored["units"]),
                  "enqueued": stored["enqueued"], "started": stored["started"] or "",
                  "ended": "", "exc_info": "", "cancel": int(stored["cancel_requested"]),
                  "owner": json.dumps(stored["owner"])}
        with self.redis.pipeline() as pipe:
            pipe.hset(self._key(run), mapping=record)
            pipe.set(self._current_key(stored["request_id"]), run)
            pipe.sadd(f"{self.prefix}:requests", stored["request_id"])
            if done:  # added to what chunks still running from before may have counted already
                pipe.sadd(self._key(run, ":done"), *done)
            if failures:
                pipe.hset(self._key(run, ":failures"), mapping=failures)
            if links:
                pipe.hset(self._key(run, ":links"), mapping={unit: json.dumps(pairs) for unit, pairs in links.items()})
            pipe.execute()
        return None

    def release(self, record: dict) -> None:
        """Free the run's target for the next request (idempotent)."""
        target = Target(record["task"], record["job"])
        holder_keys = self._holder_keys(target)
        self._release(keys=[holder_keys[0]] + ([holder_keys[2]] if target.job is not None else []),
                      args=[record["run"]])
