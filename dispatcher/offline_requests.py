"""Task-wide requests (docs/wire-format.md §3.7, §5): checking one and submitting its run, and the
request object the API shows.

Detectors annotate every frame of the target (or the region of it that ``roi`` names); ReID links
the target's rectangles into tracks (§9.4). Unlike CVAT: interactors and trackers cannot run
offline, and ReID refuses ``cleanup``, which would delete the very boxes it links (§D13);
failed and canceled requests stay listed until their TTL (§D11).
"""

from __future__ import annotations

from datetime import UTC, datetime

from dispatcher import reid, submission
from dispatcher import roi as regions
from dispatcher.converter import build_mapping
from dispatcher.cvat.callers import Caller
from dispatcher.dependencies import ApiServices
from dispatcher.errors import BadRequest
from dispatcher.online_calls import task_and_job
from dispatcher.request_book import Target
from dispatcher.schemas import AnnotateRequest, OfflineRequest
from dispatcher.store import Store

OFFLINE_KINDS = ("detector", "reid")  # what a task-wide request can run (§D13, §9.4)


def start(services: ApiServices, function_id: str, body: OfflineRequest | AnnotateRequest,
          caller: Caller | None = None, function_field: str = "function") -> dict:
    """Check a task-wide request and submit its run; the request object (409 while an overlapping
    target runs). Fronting CVAT, the caller must be able to see the target, and is its owner."""
    # A malformed id is 400; an unknown one nuclio's 404; an invalid function 500.
    function = services.registry.function(function_id, function_field)
    kind = function.meta.kind
    if kind not in OFFLINE_KINDS:
        raise BadRequest(f"function: function kind {kind} cannot be run offline")
    services.registry.check_ready(function)
    fields = {"task": body.task} if body.job is None else {"task": body.task, "job": body.job}
    task, job = task_and_job(services.store, fields)
    if caller is not None:
        services.callers.check_target(caller, task, job)
    frames = services.store.target_frames(task, job)  # threshold and max_distance: checked by the schemas
    if kind == "detector":
        if body.max_distance is not None:
            raise BadRequest("max_distance: only ReID functions take it")
        task_labels = services.store.task_labels(task)
        if not build_mapping(function.meta.labels, task_labels, body.mapping):  # 400 now, not per frame
            # Nothing the function finds could be kept: "finished" would write nothing.
            raise BadRequest(f"mapping: no label of function {function.id} ({_names(function.meta.labels)}) matches a "
                             f"label of task {task} ({_names(task_labels)}) by name and type; map them in 'mapping'")
        parameters = {"threshold": body.threshold, "cleanup": body.cleanup,
                      "conv_mask_to_poly": body.conv_mask_to_poly, "mapping": body.mapping}
        if body.roi is not None:
            parameters["roi"] = list(_region_of_frames(services.store, body.roi, task, frames))
        units = frames
    else:  # ReID: the target's rectangles linked into tracks (§9.4)
        for name, refused in (("cleanup", body.cleanup), ("roi", body.roi is not None),
                              ("mapping", bool(body.mapping)), ("conv_mask_to_poly", body.conv_mask_to_poly)):
            if refused:  # cleanup would delete the very boxes ReID links (§D13)
                raise BadRequest(f"{name}: not for ReID functions, which link the target's rectangles into tracks")
        parameters = {"threshold": body.threshold, "max_distance": body.max_distance}
        units = reid.pairs(services.store.rectangles(task, frames), frames)
    settings = services.settings
    # A chunk's worst case: every unit waits the full timeout on every attempt.
    unit_timeout = settings.nuclio_timeout * (settings.frame_retries + 1)
    run = submission.submit(services.book, services.queue, Target(task, job), function.id, parameters, units,
                            settings.chunk_size, unit_timeout, kind,
                            begin=lambda run: services.store.begin_run(run.request_id, run.id, task, job,
                                                                      cleanup=parameters.get("cleanup", False)),
                            owner=caller.owner if caller is not None else None,
                            block=services.store.frames_per_read(task))
    return request_object(services.book.get_run(run.id))


def _region_of_frames(store: Store, value, task: int, frames: list[int]) -> regions.Region:
    """An offline ``roi``, checked against every target frame's stored size (§9.2), none decoded."""
    region = regions.parse(value)
    sizes = store.frames_meta(task)["frames"]
    for frame in frames:
        regions.check_inside(region, sizes[frame]["width"], sizes[frame]["height"], frame)
    return region


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def request_object(record: dict) -> dict:
    """CVAT's request object (§3.7) plus ours: frames, fps, eta_seconds, failures, cancel_requested,
    and once the run has ended ``outcome`` and ``message`` (§D51).

    A canceled run reads ``failed``, its reason in ``exc_info``: CVAT's UI shows any final status
    other than finished and failed as "accomplished" (§9.5), and a canceled run is not that. Our
    clients tell it apart by ``cancel_requested``."""
    function = {"id": record["function_id"], "threshold": record["parameters"].get("threshold"),
                "task": record["task"]}
    if record["job"] is not None:
        function["job"] = record["job"]
    for key in ("roi", "max_distance"):  # ours: the request's region and ReID's distance, when given
        if record["parameters"].get(key) is not None:
            function[key] = record["parameters"][key]
    status, exc_info = record["status"], record["exc_info"]
    outcome, message = _outcome(record)
    if status == "canceled":
        status, exc_info = "failed", message
    return {"id": record["id"], "function": function, "status": status, "progress": record["progress"],
            "enqueued": _iso(record["enqueued"]), "started": _iso(record["started"]), "ended": _iso(record["ended"]),
            "exc_info": exc_info, "frames": record["frames"], "fps": record["fps"],
            "eta_seconds": record["eta_seconds"], "failures": record["failures"],
            "cancel_requested": record["cancel_requested"], "owner": record["owner"],
            "outcome": outcome, "message": message}


def _outcome(record: dict) -> tuple[str | None, str | None]:
    """How an ended run went, in a word and a sentence: ``finished`` alone would hide that most
    frames failed (a run finishes when any unit succeeded, §D39). None while it runs."""
    status, units = record["status"], record["frames"]
    if status == "canceled":
        return "canceled", _canceled(record)
    if status == "failed":
        return "failed", record["exc_info"]
    if status != "finished":
        return None, None
    what = "frame pairs" if record["kind"] == "reid" else "frames"
    if not units["failed"]:
        return "annotated", f"All {units['total']} {what} done"
    first = record["failures"][0] if record["failures"] else None
    reason = f"; first: {what[:-1]} {first['frame']}: {first['reason']}" if first else ""
    return "partly_failed", (f"{units['failed']} of {units['total']} {what} failed, {units['done']} done"
                             f"{reason}")


def _canceled(record: dict) -> str:
    """Counted when asked: chunks running at the cancel still store the frames they finish."""
    units = record["frames"]
    failed = f"; {units['failed']} failed" if units["failed"] else ""
    if record["kind"] == "reid":
        return (f"Canceled on request after {units['done']} of {units['total']} frame pairs{failed}; "
                "the task's annotations were not changed")
    return (f"Canceled on request after {units['done']} of {units['total']} frames{failed}; "
            f"the annotations of those {units['done']} frames were kept")


def _names(labels, shown: int = 12) -> str:
    names = [label.name for label in labels]
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more if names else "none"
