"""One chunk of an annotation request: the RQ job that annotates a run of frames.

For each frame, with as many calls in flight as the function has workers: check the cancel flag,
send the stored file bytes (never re-encoded) to the function, retry a call that failed for a
reason worth retrying with backoff, and convert the reply to CVAT annotations. Then the chunk's
results go to the store in ONE transaction keyed by (request, frame), so a chunk that runs again
after its worker died replaces its own results instead of duplicating them, and ``cleanup`` runs
exactly once per request, before its first write. Progress is reported only for frames whose
results are stored. The chunk that accounts for the last frame ends the request.
"""

from __future__ import annotations

import base64
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
import rq

from dispatcher import settings as dispatcher_settings
from dispatcher.converter import BadFunctionOutput, MappingError, build_mapping, convert
from dispatcher.gateway import Gateway, GatewayError
from dispatcher.planner import FINAL_STATES, CallSlots, RequestBook
from dispatcher.registry import Registry
from dispatcher.store import NotFound, Store

log = logging.getLogger("dispatcher")
# A crash, a restart, a timeout or a saturated function may pass; a 4xx is the frame's own fault.
RETRYABLE_STATUSES = {500, 502, 503, 504}


@dataclass(frozen=True)
class Services:
    """What a chunk needs; one per worker process."""

    book: RequestBook
    slots: CallSlots
    registry: Registry
    store: Store
    retries: int  # further attempts after a retryable failure
    backoff: float  # seconds before the first retry, doubling after each


@dataclass(frozen=True)
class FrameFailure:
    reason: str


class Cancelled(Exception):
    pass


@functools.cache
def worker_services() -> Services:
    """The services of this worker process, from the settings; built once, reused by every chunk."""
    settings = dispatcher_settings.current()
    client = redis.Redis.from_url(settings.redis_url)
    return Services(
        book=RequestBook(client, settings.finished_request_ttl, settings.failed_request_ttl),
        slots=CallSlots(client),
        registry=Registry(Gateway(settings)),
        store=Store(settings.database_url, settings.data_dir, settings.server_files_root),
        retries=settings.frame_retries,
        backoff=settings.retry_backoff,
    )


def annotate_chunk(request_id: str, frames: list[int]) -> dict:
    """The RQ job function, on queue ``annotation``."""
    return run_chunk(request_id, frames, worker_services(), rq.get_current_job().id)


def chunk_failed(job: rq.job.Job, connection, error_type, error, traceback) -> None:
    """RQ's failure callback: a chunk that crashed for the last time fails its frames, so that the
    request still ends instead of staying 'started' for ever."""
    if job.retries_left:
        return  # RQ runs it again
    request_id, frames = job.args
    services = worker_services()
    done = services.book.frames_done(request_id)
    for frame in frames:
        if frame not in done:
            services.book.frame_failed(request_id, frame, f"the chunk failed: {error_type.__name__}: {error}")
    services.book.chunk_ended(request_id, job.id)
    _finish_if_complete(services.book, request_id)


def _call_with_retries(services: Services, request_id: str, function, payload: dict):
    def stop_if_canceled():
        if services.book.cancel_requested(request_id):
            raise Cancelled()

    for attempt in range(services.retries + 1):
        stop_if_canceled()
        try:
            with services.slots.hold(function.id, max(1, function.workers), stop_if_canceled):
                return services.registry.call(function, payload)
        except GatewayError as error:
            if error.status not in RETRYABLE_STATUSES or attempt == services.retries:
                raise
            time.sleep(services.backoff * 2 ** attempt)
    raise AssertionError("unreachable")


def target_frames(store, task: int, job: int | None) -> list[int]:
    """The task frames a request covers: the whole task, or one job's frames."""
    return store.job_frames(job) if job is not None else list(range(store.get_task(task)["size"]))


def run_chunk(request_id: str, frames: list[int], services: Services, chunk_id: str) -> dict:
    """Annotate ``frames`` for the request; returns a summary (RQ keeps it as the job's result)."""
    request = services.book.get(request_id)
    if request is None or request["status"] in FINAL_STATES:
        return {"skipped": True}
    services.book.chunk_started(request_id, chunk_id)
    try:
        if services.book.cancel_requested(request_id):
            return {"skipped": True}
        services.book.mark_started(request_id)
        return _annotate(request, frames, services)
    finally:
        running = services.book.chunk_ended(request_id, chunk_id)
        if services.book.cancel_requested(request_id):
            if running == 0:
                services.book.finish_canceled(request_id)
        else:
            _finish_if_complete(services.book, request_id)


def _annotate(request: dict, frames: list[int], services: Services) -> dict:
    request_id, parameters, task = request["id"], request["parameters"], request["task"]
    try:
        function = services.registry.function(request["function_id"])
        mapping = build_mapping(function.meta.labels, services.store.task_labels(task), parameters.get("mapping"))
    except (GatewayError, MappingError, NotFound) as error:
        # The function was removed or broke, or the task changed, since the request was made: the
        # frames fail with the reason; running again would not help.
        for frame in frames:
            services.book.frame_failed(request_id, frame, f"cannot annotate: {error}")
        return {"frames": len(frames), "written": 0, "failed": len(frames), "canceled": 0}
    extra = {"threshold": parameters["threshold"]} if parameters.get("threshold") is not None else {}
    if parameters.get("conv_mask_to_poly"):  # for functions that make their own polygons (cvat-sdk ones)
        extra["conv_mask_to_poly"] = True

    def annotate(frame: int):
        image = base64.b64encode(services.store.frame_bytes(task, frame)).decode()
        try:
            items = _call_with_retries(services, request_id, function, {"image": image, **extra})
        except GatewayError as error:
            return FrameFailure(f"function {function.id} answered {error.status}: {error.message}")
        try:
            tags, shapes, _ = convert(items, mapping, frame, bool(parameters.get("conv_mask_to_poly")))
        except BadFunctionOutput as error:
            return FrameFailure(f"function {function.id} returned unusable results: {error}")
        return tags, shapes

    outcomes: dict[int, object] = {}
    with ThreadPoolExecutor(max(1, function.workers)) as pool:
        futures = {frame: pool.submit(annotate, frame) for frame in frames}
        for frame, future in futures.items():
            try:
                outcomes[frame] = future.result()
            except Cancelled:
                pass  # frames not annotated stay out; what was done is written below
    results = {frame: outcome for frame, outcome in outcomes.items() if isinstance(outcome, tuple)}
    cleanup_frames = target_frames(services.store, task, request["job"]) if parameters.get("cleanup") else None
    services.store.write_results(request_id, task, results, cleanup_frames)

    for frame, outcome in outcomes.items():
        if isinstance(outcome, FrameFailure):
            services.book.frame_failed(request_id, frame, outcome.reason)
        else:
            services.book.frame_done(request_id, frame)
    return {"frames": len(frames), "written": len(results), "failed": len(outcomes) - len(results),
            "canceled": len(frames) - len(outcomes)}


def _finish_if_complete(book: RequestBook, request_id: str) -> None:
    request = book.get(request_id)
    if request is None:
        return
    frames = request["frames"]
    if request["status"] not in ("queued", "started") or frames["done"] + frames["failed"] < frames["total"]:
        return
    if frames["done"] == 0 and frames["total"] > 0:
        book.finish(request_id, "failed", f"every frame failed; first: frame {request['failures'][0]['frame']}: "
                                          f"{request['failures'][0]['reason']}")
    else:
        book.finish(request_id, "finished")
