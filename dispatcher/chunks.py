"""One chunk of an annotation request: the RQ job that works through a run of units.

A unit is a frame for a detector, and a frame pair (f, f + 1) for ReID. For each unit, with as
many calls in flight as the function has workers: check the cancel flag, send the stored file
bytes (never re-encoded, unless the request names a region: then its crop) to the function, retry a
call that failed for a reason worth retrying with backoff, and check the reply.

Detectors: results go to the store as frames finish, in transactions at most STORE_SECONDS apart,
each keyed by (request, frame), so a chunk that runs again after its worker died replaces its own
results instead of duplicating them, and ``cleanup`` runs exactly once per request, before its
first write. ReID: each pair's matches go
to Redis; the chunk that accounts for the last pair links them into tracks (``dispatcher.reid``).
Progress is reported only for units whose results are kept. Writes are fenced by run: a chunk of a
run that has been replaced writes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import queue
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import redis
import rq
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from dispatcher import reid
from dispatcher import roi as regions
from dispatcher import settings as dispatcher_settings
from dispatcher.backends import open_store
from dispatcher.batches import FrameBatches
from dispatcher.call_slots import CallSlots
from dispatcher.circuit_breaker import PROBE_SECONDS, CircuitBreaker, CircuitOpen
from dispatcher.converter import BadFunctionOutput, MappingError, build_mapping, convert
from dispatcher.cvat.store import CvatStore
from dispatcher.gateway import Gateway, GatewayError
from dispatcher.job_metrics import JobMetrics
from dispatcher.registry import InvalidFunction, Registry
from dispatcher.request_book import FINAL_STATES, RequestBook, key_prefix
from dispatcher.store import InvalidInput, NotFound, StaleRun, Store
from serverless.common.handler import BadRequest

log = logging.getLogger("dispatcher")
# A crash, a restart, a timeout or a saturated function may pass; a 4xx is the frame's own fault.
RETRYABLE_STATUSES = {500, 502, 503, 504}
# nuclio or the function cannot be reached, is not ready or does not answer: what the function's
# circuit counts (a 500 is a handler that raised, on that frame).
UNREACHABLE_STATUSES = {502, 503, 504}
STORE_SECONDS = 0.5  # a chunk stores its finished frames, and reports them, at least this often


@dataclass(frozen=True)
class WorkerServices:
    """What a chunk needs; one per worker process."""

    book: RequestBook
    slots: CallSlots
    registry: Registry
    store: Store | CvatStore
    retries: int  # further attempts after a retryable failure
    backoff: float  # seconds before the first retry, doubling after each
    breaker: CircuitBreaker  # per function, shared with every worker
    metrics: JobMetrics  # frames and call latencies, in Redis for the API's /metrics


@dataclass(frozen=True)
class UnitFailure:
    reason: str
    status: int | None = None  # the function's (or nuclio's) HTTP status, when it answered one


class Cancelled(Exception):
    pass


@functools.cache
def worker_services() -> WorkerServices:
    """The services of this worker process, from the settings; built once, reused by every chunk."""
    settings = dispatcher_settings.current()
    # A chunk rides out a short Redis outage (a restart, a failover) instead of crashing.
    client = redis.Redis.from_url(settings.redis_url, retry=Retry(ExponentialBackoff(cap=4, base=0.25), 8),
                                  retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    prefix = key_prefix(settings.deployment_namespace)
    store = open_store(settings, worker=True)
    return WorkerServices(
        book=RequestBook(client, settings.finished_request_ttl, settings.failed_request_ttl, prefix,
                         records=store.request_records),
        slots=CallSlots(client, prefix=prefix),
        registry=Registry(Gateway(settings)),
        store=store,
        retries=settings.frame_retries,
        backoff=settings.retry_backoff,
        breaker=CircuitBreaker(client, prefix, settings.circuit_breaker_failures, settings.circuit_breaker_wait),
        metrics=JobMetrics(client, prefix),
    )


def annotate_chunk(run: str, units: list[int]) -> dict:
    """The RQ job function, on queue ``annotation``."""
    return run_chunk(run, units, worker_services(), rq.get_current_job().id)


def chunk_failed(job: rq.job.Job, connection, error_type, error, traceback) -> None:
    """RQ's failure callback: a chunk that crashed for the last time fails its units, so that the
    request still ends instead of staying 'started' for ever."""
    if job.retries_left:
        return  # RQ runs it again
    run, units = job.args
    services = worker_services()
    done = services.book.frames_done(run)
    for unit in units:
        if unit not in done:
            services.book.frame_failed(run, unit, f"the chunk failed: {error_type.__name__}: {error}")
    _chunk_stopped(services, run, job.id)


def run_chunk(run: str, units: list[int], services: WorkerServices, chunk_id: str) -> dict:
    """Work through ``units`` of the run; returns a summary (RQ keeps it as the job's result)."""
    request = services.book.get_run(run)
    if request is None or request["status"] in FINAL_STATES:
        return {"skipped": True}
    # Our store refuses to delete a task a run holds, so a task it lacks is another deployment's
    # (a task deleted in CVAT meanwhile is not: its frames fail below).
    if isinstance(services.store, Store) and not _has_task(services.store, request["task"]):
        log.warning("chunk %s of request %s left alone: task %s is not in this worker's task store "
                    "(is DEPLOYMENT_NAMESPACE shared by deployments with different stores?)",
                    chunk_id, request["id"], request["task"])
        return {"skipped": True, "foreign": True}
    attempt = services.book.chunk_started(run, chunk_id)
    try:
        if services.book.cancel_requested(run):
            return {"skipped": True}
        services.book.mark_started(run)
        reading = sorted({*units, *(unit + 1 for unit in units)}) if request["kind"] == "reid" else units
        services.store.prepare(request["task"], reading)  # CVAT: its chunks start arriving now
        if request["kind"] == "reid":
            return _match_pairs(request, units, services)
        return _annotate_frames(request, units, services, (chunk_id, attempt))
    finally:
        _chunk_stopped(services, run, chunk_id, attempt)


def _has_task(store: Store, task: int) -> bool:
    try:
        store.get_task(task)
    except NotFound:
        return False
    return True


def _chunk_stopped(services: WorkerServices, run: str, chunk_id: str, attempt: int = 0) -> None:
    running = services.book.chunk_ended(run, chunk_id, attempt)
    if not services.book.cancel_requested(run):
        finish_if_complete(services, run)
    elif running == 0:  # the last chunk of a canceled run: what it stored is counted now
        services.book.finish(run, "canceled")


class SharedFunction:
    """The request's function as a chunk's calls share it: looked up again by a call while it is
    not ready, so that calls go on as soon as it recovers."""

    def __init__(self, function):
        self.current = function


def _call_with_retries(services: WorkerServices, run: str, shared: SharedFunction, payload: dict):
    """The function's reply; retryable failures are retried ``retries`` times with backoff, and
    while the function's circuit is open the call waits for it (those waits are no attempts).
    Raises GatewayError, CircuitOpen or Cancelled."""
    def stop_if_canceled():
        if services.book.cancel_requested(run):
            raise Cancelled()

    function_id, attempt = shared.current.id, 0
    while True:
        stop_if_canceled()
        report = services.breaker.wait_until_closed(function_id, stop_if_canceled)
        function, replica = shared.current, None
        try:
            if function.state != "ready":  # as it was when looked up: it may have recovered since
                function = shared.current = services.registry.function(function_id)
            replicas = {replica.name: replica for replica in function.ready_replicas or function.replicas}
            limits = {name: max(1, replica.workers) for name, replica in replicas.items()}
            with services.slots.hold(function_id, limits, stop_if_canceled) as name:
                replica, started = replicas[name], time.monotonic()
                try:
                    reply = services.registry.call(function, payload, replica)
                finally:
                    services.metrics.call_ended(function_id, time.monotonic() - started)
        except GatewayError as error:
            if error.status in UNREACHABLE_STATUSES:
                # A replica that cannot be reached gets no calls for a while; the function's circuit
                # counts only when no replica is left to try.
                if replica is not None:
                    services.slots.mark_down(function_id, replica.name)
                if replica is None or services.slots.all_down(function_id, list(replicas)):
                    services.breaker.failed(function_id, f"{error.status}: {error.message}",
                                            function.state == "error")
            if error.status not in RETRYABLE_STATUSES or attempt == services.retries:
                raise
            time.sleep(services.backoff * 2 ** attempt)
            attempt += 1
            continue
        if report:
            services.breaker.succeeded(function_id)
        return reply


def _called(services: WorkerServices, run: str, shared: SharedFunction, payload: dict):
    """The function's reply, or a UnitFailure saying why there is none (Cancelled propagates)."""
    try:
        return _call_with_retries(services, run, shared, payload)
    except GatewayError as error:
        return UnitFailure(f"function {shared.current.id} answered {error.status}: {error.message}", error.status)
    except CircuitOpen as error:
        return UnitFailure(str(error))


def _run_units(function, units: list[int], work) -> dict[int, object]:
    """``work(unit)`` for each unit, as many at once as the function has workers; a cancel stops
    the rest, and what finished is returned."""
    outcomes: dict[int, object] = {}
    with ThreadPoolExecutor(max(1, function.workers)) as pool:
        futures = {unit: pool.submit(work, unit) for unit in units}
        for unit, future in futures.items():
            with contextlib.suppress(Cancelled):
                outcomes[unit] = future.result()
    return outcomes


def _function_or_fail(request: dict, units: list[int], services: WorkerServices) -> SharedFunction | None:
    """The request's function, or None after failing every unit (none when canceled). While
    nuclio cannot be reached (502/503/504: a restart) the lookup is retried with backoff for up to
    CIRCUIT_BREAKER_WAIT seconds, and waits while the function's circuit is open; a function that
    was removed or broke since the request was made fails the units at once."""
    function_id, run = request["function_id"], request["run"]
    deadline, delay = time.monotonic() + services.breaker.wait, services.backoff

    def stop_if_canceled():
        if services.book.cancel_requested(run):
            raise Cancelled()

    try:
        while True:
            try:
                report = services.breaker.wait_until_closed(function_id, stop_if_canceled)
                function = services.registry.function(function_id)
            except GatewayError as error:
                if (error.status not in UNREACHABLE_STATUSES or isinstance(error, InvalidFunction)
                        or time.monotonic() >= deadline):
                    raise
                services.breaker.failed(function_id, f"{error.status}: {error.message}", False)
                stop_if_canceled()
                time.sleep(min(delay, PROBE_SECONDS, max(0.0, deadline - time.monotonic())))
                delay *= 2
                continue
            if report and function.state == "ready":
                services.breaker.succeeded(function_id)
            return SharedFunction(function)
    except Cancelled:
        return None
    except (GatewayError, CircuitOpen) as error:
        for unit in units:
            services.book.frame_failed(run, unit, f"cannot annotate: {error}")
        return None


def _annotate_frames(request: dict, frames: list[int], services: WorkerServices, attempt: tuple[str, int]) -> dict:
    parameters, task = request["parameters"], request["task"]
    try:  # this attempt's claim on the chunk: from now on an older attempt's writes are refused
        services.store.write_results(request["id"], request["run"], task, {}, None, attempt)
    except StaleRun as error:
        log.warning("%s", error)
        return {"frames": len(frames), "written": 0, "failed": 0, "canceled": len(frames), "stale": True}
    shared = _function_or_fail(request, frames, services)
    if shared is None:
        return {"frames": len(frames), "written": 0, "failed": len(frames), "canceled": 0}
    function = shared.current
    # The task's labels are needed only to convert the first answer: calls start without them
    # (from CVAT they can take as long as the first frames to arrive).
    with ThreadPoolExecutor(1) as background:
        mapping = background.submit(lambda: build_mapping(function.meta.labels, services.store.task_labels(task),
                                                          parameters.get("mapping")))
        return _annotate_with(request, frames, services, shared, mapping, attempt)


def _annotate_with(request: dict, frames: list[int], services: WorkerServices, shared: SharedFunction,
                   mapping: Future, attempt: tuple[str, int]) -> dict:
    function = shared.current
    run, parameters, task = request["run"], request["parameters"], request["task"]
    extra = {"threshold": parameters["threshold"]} if parameters.get("threshold") is not None else {}
    if parameters.get("conv_mask_to_poly"):  # for functions that make their own polygons (cvat-sdk ones)
        extra["conv_mask_to_poly"] = True
    region = tuple(parameters["roi"]) if parameters.get("roi") else None
    batches = FrameBatches(frames, function.meta.max_batch)

    def image(frame: int, data: bytes) -> str | UnitFailure:
        """The frame's stored file (or the region's crop) as base64, or why it cannot be sent."""
        if mapping.done() and isinstance(mapping.exception(), (MappingError, NotFound)):  # nothing could be kept
            return UnitFailure(f"cannot annotate: {mapping.exception()}")
        if region is not None:
            try:
                data = regions.crop(data, region)
            except BadRequest as error:
                return UnitFailure(f"frame {frame}: {error}")
        return base64.b64encode(data).decode()

    def converted(frame: int, items) -> tuple | UnitFailure:
        try:
            tags, shapes, _ = convert(items, mapping.result(), frame, bool(parameters.get("conv_mask_to_poly")))
        except (MappingError, NotFound) as error:  # the task changed since the request was made
            return UnitFailure(f"cannot annotate: {error}")
        except BadFunctionOutput as error:
            return UnitFailure(f"function {function.id} returned unusable results: {error}")
        if region is not None:
            shapes = [regions.shift_shape(shape, region[0], region[1]) for shape in shapes]
        return tags, shapes

    def annotate(batch: list[int]) -> dict[int, object]:
        outcomes, images = {}, {}
        for frame, data in services.store.frames_bytes(task, batch).items():
            prepared = image(frame, data)
            (outcomes if isinstance(prepared, UnitFailure) else images)[frame] = prepared
        started = time.monotonic()
        replies = None
        if len(images) > 1:
            replies = _called(services, run, shared, {"images": list(images.values()), **extra})
            if isinstance(replies, UnitFailure) and replies.status == 413:
                replies = None  # over the function's MAX_BATCH_PIXELS: one frame per call instead
            elif not isinstance(replies, UnitFailure) and not (isinstance(replies, list)
                                                               and len(replies) == len(images)):
                replies = UnitFailure(f"function {function.id} returned unusable results: not one list per "
                                      f"image of the {len(images)} in the batch")
        if replies is None:
            replies = [_called(services, run, shared, {"image": data, **extra}) for data in images.values()]
        for index, frame in enumerate(images):
            reply = replies if isinstance(replies, UnitFailure) else replies[index]
            outcomes[frame] = reply if isinstance(reply, UnitFailure) else converted(frame, reply)
        batches.timed(len(images), time.monotonic() - started)
        return outcomes

    cleanup_frames = services.store.target_frames(task, request["job"]) if parameters.get("cleanup") else None
    written, failed = 0, 0

    def store(outcomes: dict[int, object]) -> None:
        """Write the finished frames' results in one transaction, then report them."""
        nonlocal written, failed
        results = {frame: outcome for frame, outcome in outcomes.items() if isinstance(outcome, tuple)}
        services.store.write_results(request["id"], run, task, results, cleanup_frames, attempt)
        for frame, outcome in outcomes.items():
            if isinstance(outcome, UnitFailure):
                services.book.frame_failed(run, frame, outcome.reason)
        services.book.frame_done(run, *results)
        services.metrics.frames_stored(function.id, len(results), len(outcomes) - len(results))
        written, failed = written + len(results), failed + len(outcomes) - len(results)

    # As many threads as the function serves calls at once, each taking the next batch; frames are
    # stored as they finish, at most STORE_SECONDS apart, so that progress moves and a worker that
    # dies loses little. Each write is keyed by (request, frame): a chunk that runs again replaces
    # what it wrote.
    finished_batches: queue.Queue = queue.Queue()

    def call_batches() -> None:
        try:
            while batch := batches.take():
                finished_batches.put(annotate(batch))
        except Cancelled:
            batches.stop()
        except BaseException as error:  # noqa: BLE001 - handed to the chunk's thread, which raises it
            batches.stop()
            finished_batches.put(error)
        finally:
            finished_batches.put(None)

    callers = max(1, function.workers)
    pool = ThreadPoolExecutor(callers)
    for _ in range(callers):
        pool.submit(call_batches)
    finished, stored_at = {}, time.monotonic()
    try:
        while callers:
            due = max(0.0, stored_at + STORE_SECONDS - time.monotonic()) if finished else None
            with contextlib.suppress(queue.Empty):
                item = finished_batches.get(timeout=due)
                if item is None:
                    callers -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    finished.update(item)
            if finished and (not callers or time.monotonic() - stored_at >= STORE_SECONDS):
                store(finished)
                finished, stored_at = {}, time.monotonic()
        if not written and not failed:
            store({})  # the request's cleanup happens even when every frame was canceled
    except StaleRun as error:
        log.warning("%s", error)
        return {"frames": len(frames), "written": written, "failed": failed,
                "canceled": len(frames) - written - failed, "stale": True}
    finally:
        batches.stop()
        pool.shutdown(wait=True)
    return {"frames": len(frames), "written": written, "failed": failed, "canceled": len(frames) - written - failed}


def _match_pairs(request: dict, frames: list[int], services: WorkerServices) -> dict:
    """ReID: the function's matching for each frame pair (f, f + 1), kept in Redis for the linking."""
    run, parameters, task = request["run"], request["parameters"], request["task"]
    shared = _function_or_fail(request, frames, services)
    if shared is None:
        return {"pairs": len(frames), "matched": 0, "failed": len(frames), "canceled": 0}
    function = shared.current
    extra = {key: parameters[key] for key in ("threshold", "max_distance") if parameters.get(key) is not None}

    def match(frame: int):
        boxes = services.store.rectangles(task, [frame, frame + 1])
        boxes0, boxes1 = boxes.get(frame, []), boxes.get(frame + 1, [])
        pair = services.store.frames_bytes(task, [frame, frame + 1])
        payload = {"image0": base64.b64encode(pair[frame]).decode(),
                   "image1": base64.b64encode(pair[frame + 1]).decode(), "boxes0": boxes0, "boxes1": boxes1, **extra}
        reply = _called(services, run, shared, payload)
        if isinstance(reply, UnitFailure):
            return reply
        try:
            return reid.checked_matching(reply, boxes0, boxes1)
        except reid.BadMatching as error:
            return UnitFailure(f"function {function.id} returned an unusable matching: {error}")

    outcomes = _run_units(function, frames, match)
    for frame, outcome in outcomes.items():
        if isinstance(outcome, UnitFailure):
            services.book.frame_failed(run, frame, outcome.reason)
        else:
            services.book.set_links(run, frame, outcome)
            services.book.frame_done(run, frame)
    failed = sum(isinstance(outcome, UnitFailure) for outcome in outcomes.values())
    return {"pairs": len(frames), "matched": len(outcomes) - failed, "failed": failed,
            "canceled": len(frames) - len(outcomes)}


def finish_if_complete(services: WorkerServices, run: str) -> None:
    """End the run once every unit is done or failed; for ReID, link the pairs into tracks first."""
    book = services.book
    request = book.get_run(run)
    if request is None:
        return
    units = request["frames"]
    if request["status"] not in ("queued", "started") or units["done"] + units["failed"] < units["total"]:
        return
    what = "frame pair" if request["kind"] == "reid" else "frame"
    if units["done"] == 0 and units["total"] > 0:
        first = request["failures"][0]
        book.finish(run, "failed", f"every {what} failed; first: {what} {first['frame']}: {first['reason']}")
        return
    if request["kind"] == "reid":
        task = request["task"]
        frames = services.store.target_frames(task, request["job"])
        # The target's last frame, as CVAT's: a path reaching a job's end is not closed in the next job.
        last_frame = (services.store.get_job(request["job"])["stop_frame"] if request["job"] is not None
                      else services.store.get_task(task)["size"] - 1)
        try:
            services.store.replace_with_tracks(request["id"], run, task, frames,
                                               lambda rectangles: reid.link(rectangles, book.links(run), last_frame),
                                               job_id=request["job"])
        except StaleRun as error:
            log.warning("%s", error)
            return
        except (InvalidInput, NotFound) as error:  # the task changed under the request
            book.finish(run, "failed", f"the tracks could not be written: {error}")
            return
    book.finish(run, "finished")
