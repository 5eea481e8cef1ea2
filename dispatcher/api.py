"""The dispatcher's HTTP API: CVAT's ``/api/lambda`` (cvat-compat.md section 3), the task store in
CVAT's REST shapes, and ``POST /detectors/<id>/annotate``.

Every error is JSON, ``{"detail": "<readable message>"}``, with CVAT's statuses (3.8): bad input
400, unknown ids 404, an overlapping running request 409, a function that cannot be reached 503, a
timeout 504, and an upstream error keeps its status. Unlike CVAT: threshold 0 is forwarded (defect
1), non-ready functions answer 503 (20), ``task``/``job`` mismatches are refused (14), interactors
and trackers cannot be run offline (13), and failed or canceled requests stay listed (11).
"""

from __future__ import annotations

import base64
import io
import json
import math
import secrets
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import redis
import rq
from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from dispatcher import planner, reid, tracker_states
from dispatcher import roi as regions
from dispatcher.chunks import target_frames
from dispatcher.converter import BadFunctionOutput, MappingError, build_mapping, convert, is_int, is_number
from dispatcher.gateway import Gateway, GatewayError
from dispatcher.planner import FINAL_STATES, Conflict, RequestBook, Target
from dispatcher.registry import LambdaFunction, Registry
from dispatcher.settings import Settings
from dispatcher.store import InvalidInput, NotFound, Store
from serverless.common.handler import BadRequest as ServerlessBadRequest

OFFLINE_KINDS = ("detector", "reid")  # what a task-wide request can run (defect 13, 9.4)
AUTH_SCHEMES = ("bearer", "token")  # Token: cvat-sdk's and cvat-cli's scheme (9.6)
UI_DIR = Path(__file__).with_name("ui")


class BadRequest(Exception):
    """400 with a message naming the field."""


class Unauthorized(Exception):
    pass


class OfflineRequest(BaseModel):
    """``POST /api/lambda/requests``: CVAT's fields (3.7); unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    function: str = Field(description="the function id")
    task: int = Field(description="the task; required even with job, as in CVAT")
    job: int | None = Field(None, description="run over this job's frames only")
    threshold: float | None = Field(None, description="forwarded to the function, 0 included")
    cleanup: StrictBool = Field(False, description="delete the target's annotations (once) before the first write")
    conv_mask_to_poly: StrictBool = Field(False, alias="convMaskToPoly",
                                          description="polygons instead of masks (alias convMaskToPoly)")
    mapping: dict[str, Any] | None = Field(None, description="model label -> task label (cvat-compat.md 4.1)")
    roi: Any = Field(None, description="detectors: [xtl, ytl, xbr, ybr], annotate only this region of every frame")
    max_distance: float | None = Field(None, description="ReID: the largest distance in pixels between the "
                                                         "centres of boxes that may be linked (the function's "
                                                         "default: 50)")


class AnnotateRequest(BaseModel):
    """``POST /detectors/<id>/annotate``: the same request, the function named in the path."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    task: int
    job: int | None = None
    threshold: float | None = None
    cleanup: StrictBool = False
    conv_mask_to_poly: StrictBool = Field(False, alias="convMaskToPoly")
    mapping: dict[str, Any] | None = None
    roi: Any = None
    max_distance: float | None = None


class NewTask(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    labels: list[dict[str, Any]]
    segment_size: int | None = Field(None, description="frames per job; none: one job for the whole task")


class HeadAsGet:
    """HEAD on any path answers what GET would, headers only. CVAT's UI (2.60+) probes
    ``/api/lambda/functions`` with HEAD and shows no functions at all unless it gets 200 or 404
    (9.1); this covers every GET route, present and future, in one place."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def without_body(message):
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


class Services:
    """What the API works with; built once per app."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.gateway = Gateway(settings)
        self.registry = Registry(self.gateway)
        self.store = Store(settings.database_url, settings.data_dir, settings.server_files_root)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.book = RequestBook(self.redis, settings.finished_request_ttl, settings.failed_request_ttl)
        self.queue = rq.Queue(planner.QUEUE, connection=self.redis)

    def close(self) -> None:
        self.gateway.close()
        self.store.close()
        self.redis.close()


def create_app(settings: Settings) -> FastAPI:
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        services.close()

    def authorised(request: Request) -> None:
        if settings.api_token is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in AUTH_SCHEMES or not secrets.compare_digest(token.strip().encode(),
                                                                           settings.api_token.encode()):
            raise Unauthorized()

    app = FastAPI(title="CVAT-compatible auto-annotation dispatcher", lifespan=lifespan,
                  description="CVAT's /api/lambda API, a task store in CVAT's REST shapes, and task-wide "
                              "annotation requests on Redis/RQ.")
    app.state.services = services
    app.add_middleware(HeadAsGet)
    _install_error_handlers(app)
    secured = [Depends(authorised)]

    # The web UI: static files that call this API like any other client, so they need no token
    # themselves; the pages ask for it when the API answers 401.
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/health", tags=["service"])
    def health() -> dict:
        """Liveness, without authentication: the API answers."""
        return {"status": "ok"}

    # /api/lambda: functions

    @app.get("/api/lambda/functions", tags=["lambda"], dependencies=secured)
    def list_functions() -> list[dict]:
        return [function.to_api() for function in services.registry.functions()]

    @app.get("/api/lambda/functions/{function_id}", tags=["lambda"], dependencies=secured)
    def get_function(function_id: str) -> dict:
        return services.registry.function(function_id).to_api()

    @app.post("/api/lambda/functions/{function_id}", tags=["lambda"], dependencies=secured)
    def call_function(function_id: str, body: Annotated[dict[str, Any], Body()]) -> Any:
        """One online call (3.4): detectors answer CVAT annotations, interactors and ReID the
        function's own reply."""
        return _online_call(services, services.registry.function(function_id), body)

    # /api/lambda: requests

    @app.get("/api/lambda/requests", tags=["lambda"], dependencies=secured)
    def list_requests() -> list[dict]:
        return [_request_object(record) for record in services.book.list()]

    @app.post("/api/lambda/requests", tags=["lambda"], dependencies=secured)
    def create_request(body: OfflineRequest) -> dict:
        return _start_request(services, body.function, body)

    @app.get("/api/lambda/requests/{request_id}", tags=["lambda"], dependencies=secured)
    def get_request(request_id: str) -> dict:
        record = services.book.get(request_id)
        if record is None:
            raise NotFound(f"request {request_id!r} does not exist (or has expired)")
        return _request_object(record)

    @app.delete("/api/lambda/requests/{request_id}", status_code=204, tags=["lambda"], dependencies=secured)
    def cancel_request(request_id: str) -> Response:
        if not planner.cancel(services.book, services.queue, request_id):
            raise NotFound(f"request {request_id!r} does not exist (or has expired)")
        return Response(status_code=204)

    @app.post("/detectors/{function_id}/annotate", status_code=202, tags=["lambda"], dependencies=secured)
    def annotate(function_id: str, body: AnnotateRequest) -> dict:
        """Start a task-wide (or job-wide) request; poll ``GET /api/lambda/requests/<id>``."""
        return _start_request(services, function_id, body)

    # Tasks

    @app.post("/api/tasks", status_code=201, tags=["tasks"], dependencies=secured)
    def create_task(body: NewTask) -> dict:
        return services.store.create_task(body.name, body.labels, body.segment_size)

    @app.get("/api/tasks", tags=["tasks"], dependencies=secured)
    def list_tasks(page: Annotated[int, Query(ge=1)] = 1,
                   page_size: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        """CVAT's paginated list shape."""
        tasks = services.store.list_tasks()
        start = (page - 1) * page_size
        return {"count": len(tasks), "next": None if start + page_size >= len(tasks) else page + 1,
                "previous": page - 1 if page > 1 else None, "results": tasks[start:start + page_size]}

    @app.get("/api/tasks/{task_id}", tags=["tasks"], dependencies=secured)
    def get_task(task_id: int) -> dict:
        return services.store.get_task(task_id)

    @app.delete("/api/tasks/{task_id}", status_code=204, tags=["tasks"], dependencies=secured)
    def delete_task(task_id: int) -> Response:
        running = [r["id"] for r in services.book.list() if r["task"] == task_id and r["status"] not in FINAL_STATES]
        if running:
            raise Conflict(f"task {task_id} has a running request ({running[0]}); cancel it first")
        services.store.delete_task(task_id)
        return Response(status_code=204)

    @app.post("/api/tasks/{task_id}/data", tags=["tasks"], dependencies=secured)
    async def add_data(task_id: int, request: Request) -> dict:
        """Frames, appended in order: multipart ``client_files[<n>]`` uploads, or ``server_files[<n>]``
        paths under SERVER_FILES_ROOT (as a form or a JSON body ``{"server_files": [...]}``)."""
        uploads, paths = await _data_fields(request)
        if uploads and paths:
            raise BadRequest("client_files and server_files: give one or the other, not both")
        if uploads:
            services.store.add_frames(task_id, uploads)
        elif paths:
            services.store.add_server_files(task_id, paths)
        else:
            raise BadRequest("client_files or server_files: at least one file is required")
        return services.store.get_task(task_id)

    @app.get("/api/tasks/{task_id}/data", tags=["tasks"], dependencies=secured,
             responses={200: {"content": {"image/*": {}}, "description": "the frame's file as uploaded"}})
    def get_frame(task_id: int, number: int, type: str = "frame", quality: str = "original") -> Response:
        if type != "frame":
            raise BadRequest(f"type: only 'frame' is served, got {type!r}")
        if quality not in ("original", "compressed"):
            raise BadRequest(f"quality: must be original or compressed, got {quality!r}")
        data = services.store.frame_bytes(task_id, number)  # frames are kept as uploaded: one quality
        with Image.open(io.BytesIO(data)) as image:
            media_type = Image.MIME.get(image.format or "", "application/octet-stream")
        return Response(data, media_type=media_type)

    @app.get("/api/server/share", tags=["tasks"], dependencies=secured)
    def list_server_files(directory: str = "/") -> list[dict]:
        """A folder under SERVER_FILES_ROOT, as CVAT's ``/api/server/share`` lists it."""
        return services.store.list_server_files(directory)

    @app.get("/api/tasks/{task_id}/data/meta", tags=["tasks"], dependencies=secured)
    def get_frames_meta(task_id: int) -> dict:
        return services.store.frames_meta(task_id)

    @app.get("/api/tasks/{task_id}/annotations", tags=["annotations"], dependencies=secured)
    def get_annotations(task_id: int, frame: Annotated[int | None, Query(
            ge=0, description="ours: only this frame's annotations (CVAT has no such filter)")] = None) -> dict:
        return services.store.get_annotations(task_id, frame=frame)

    @app.put("/api/tasks/{task_id}/annotations", tags=["annotations"], dependencies=secured)
    def put_annotations(task_id: int, body: Annotated[dict[str, Any], Body()]) -> dict:
        return services.store.put_annotations(task_id, body)

    @app.patch("/api/tasks/{task_id}/annotations", tags=["annotations"], dependencies=secured)
    def patch_annotations(task_id: int, action: str, body: Annotated[dict[str, Any], Body()]) -> dict:
        return services.store.patch_annotations(task_id, body, action)

    @app.delete("/api/tasks/{task_id}/annotations", status_code=204, tags=["annotations"], dependencies=secured)
    def delete_annotations(task_id: int) -> Response:
        services.store.delete_annotations(task_id)
        return Response(status_code=204)

    @app.get("/api/tasks/{task_id}/export", tags=["annotations"], dependencies=secured,
             responses={200: {"content": {"application/json": {}, "application/xml": {}}}})
    def export(task_id: int, format: Annotated[str, Query(description="coco or cvat")]) -> Response:
        """The task's annotations as COCO JSON or CVAT for images 1.1 XML, as a download."""
        if format == "coco":
            content, media_type, suffix = json.dumps(services.store.export_coco(task_id)), "application/json", "json"
        elif format == "cvat":
            content, media_type, suffix = services.store.export_cvat_xml(task_id), "application/xml", "xml"
        else:
            raise BadRequest(f"format: must be coco or cvat, got {format!r}")
        return Response(content, media_type=media_type,
                        headers={"Content-Disposition": f'attachment; filename="task_{task_id}_{format}.{suffix}"'})

    # Jobs

    @app.get("/api/jobs/{job_id}", tags=["tasks"], dependencies=secured)
    def get_job(job_id: int) -> dict:
        return services.store.get_job(job_id)

    @app.get("/api/jobs/{job_id}/annotations", tags=["annotations"], dependencies=secured)
    def get_job_annotations(job_id: int) -> dict:
        return services.store.get_annotations(services.store.get_job(job_id)["task_id"], job_id)

    return app


# Online calls (3.4 - 3.6)

def _online_call(services: Services, function: LambdaFunction, raw: dict) -> Any:
    body = {key: value for key, value in raw.items() if value is not None}  # CVAT drops null keys first
    task, job = _task_and_job(services.store, body)
    kind = function.meta.kind
    extra = {}
    if "threshold" in body:  # 0 included (defect 1)
        extra["threshold"] = _number(body, "threshold")
    if "roi" in body and kind not in ("detector", "interactor"):
        raise BadRequest(f"roi: {kind} functions cannot run on a region (only detectors and interactors)")
    if kind == "detector":
        frame = _frame(services.store, body, "frame", task, job)
        mapping = build_mapping(function.meta.labels, services.store.task_labels(task), _mapping(body))
        conv_mask_to_poly = _bool(body, "conv_mask_to_poly")
        if conv_mask_to_poly:  # for functions that make their own polygons (cvat-sdk ones); others ignore it
            extra["conv_mask_to_poly"] = True
        region = _region(services.store, body, task, frame)
        items = services.registry.call(function, {"image": _image(services.store, task, frame, region), **extra})
        try:
            tags, shapes, _ = convert(items, mapping, frame, conv_mask_to_poly)
        except BadFunctionOutput as error:
            raise GatewayError(502, f"function {function.id} returned unusable results: {error}") from None
        if region is not None:
            shapes = [regions.shift_shape(shape, region[0], region[1]) for shape in shapes]
        return {"version": 0, "tags": tags, "shapes": shapes, "tracks": []}
    if kind == "interactor":
        frame = _frame(services.store, body, "frame", task, job)
        region = _region(services.store, body, task, frame)
        pos_points, neg_points = _points(body, "pos_points"), _points(body, "neg_points")
        obj_bbox = body.get("obj_bbox")
        if region is not None:
            pos_points = regions.into_region(pos_points, region, "pos_points")
            neg_points = regions.into_region(neg_points, region, "neg_points")
            obj_bbox = regions.box_into_region(obj_bbox, region)
        payload = {"image": _image(services.store, task, frame, region), "pos_points": pos_points,
                   "neg_points": neg_points, "obj_bbox": obj_bbox, **extra}
        if body.get("text_prompts"):  # CVAT forwards it when truthy (9.3)
            payload["text_prompts"] = body["text_prompts"]
        if "mask_format" in body:  # ours: how the interactor answers (README, "Interactors")
            payload["mask_format"] = body["mask_format"]
        reply = services.registry.call(function, payload)
        if region is None:
            return reply
        try:
            return regions.reply_into_frame(reply, region, services.store.frame_size(task, frame), function.id)
        except regions.BadFunctionReply as error:
            raise GatewayError(502, str(error)) from None
    if kind == "reid":
        frames = [_frame(services.store, body, key, task, job) for key in ("frame0", "frame1")]
        payload = {"image0": _image(services.store, task, frames[0]), "image1": _image(services.store, task, frames[1]),
                   "boxes0": _list(body, "boxes0"), "boxes1": _list(body, "boxes1"), **extra}
        if "max_distance" in body:
            payload["max_distance"] = _number(body, "max_distance")
        return services.registry.call(function, payload)
    if kind == "tracker":
        return _track(services, function, body, task, _frame(services.store, body, "frame", task, job))
    raise BadRequest(f"function {function.id}: online calls to {kind} functions are not supported by this server")


def _track(services: Services, function: LambdaFunction, body: dict, task: int, frame: int) -> dict:
    """CVAT's tracker call (3.5): start on ``shapes`` (no ``states``) or continue ``states``; the
    function's states reach the client signed, and come back checked."""
    key, function_id = services.settings.tracker_state_key, function.id
    legacy = not function.meta.supported_shape_types
    if "states" in body:
        states = [tracker_states.unsign(key, function_id, state, f"states[{index}]")
                  for index, state in enumerate(_list(body, "states"))]
        shapes = [None] * len(states)
    else:
        shapes = _list(body, "shapes")
        states = []
        for index, shape in enumerate(shapes):
            if not (isinstance(shape, dict) and isinstance(shape.get("points"), list)):
                raise BadRequest(f"shapes[{index}]: must be a shape with type and points, got {shape!r}")
            if not legacy and shape.get("type") not in function.meta.supported_shape_types:
                raise BadRequest(f"shapes[{index}].type: function {function_id} tracks "
                                 f"{', '.join(function.meta.supported_shape_types)}, not {shape.get('type')!r}")
        if legacy:  # legacy trackers take bare [x1, y1, x2, y2]
            shapes = [shape["points"] for shape in shapes]
    reply = services.registry.call(function, {"image": _image(services.store, task, frame), "shapes": shapes,
                                              "states": states})
    if not (isinstance(reply, dict) and isinstance(reply.get("shapes"), list) and isinstance(reply.get("states"), list)
            and len(reply["shapes"]) == len(reply["states"]) == len(shapes)):
        raise GatewayError(502, f"function {function_id} returned unusable results: expected "
                                f"{{shapes, states}} with {len(shapes)} entries each")
    if legacy:
        reply["shapes"] = [{"type": "rectangle", "points": s} if isinstance(s, list) else s for s in reply["shapes"]]
    return {"shapes": reply["shapes"],
            "states": [tracker_states.sign(key, function_id, state) for state in reply["states"]]}


def _task_and_job(store: Store, body: dict) -> tuple[int, int | None]:
    """The task the body means, from ``job`` when given (a ``task`` that disagrees is refused)."""
    for key in ("task", "job"):
        if key in body and not is_int(body[key]):
            raise BadRequest(f"{key}: must be an integer id, got {body[key]!r}")
    if "job" in body:
        try:
            job = store.get_job(body["job"])
        except NotFound as error:
            raise BadRequest(str(error)) from None
        if "task" in body and body["task"] != job["task_id"]:
            raise BadRequest(f"job: job {job['id']} belongs to task {job['task_id']}, not to task {body['task']}")
        return job["task_id"], job["id"]
    if "task" not in body:
        raise BadRequest("task or job: one of them is required")
    try:
        store.get_task(body["task"])
    except NotFound as error:
        raise BadRequest(str(error)) from None
    return body["task"], None


def _frame(store: Store, body: dict, key: str, task: int, job: int | None) -> int:
    if key not in body:
        raise BadRequest(f"{key}: required")
    frame = body[key]
    if not is_int(frame):
        raise BadRequest(f"{key}: must be an integer, got {frame!r}")
    frames = target_frames(store, task, job)
    if frame not in frames:
        if job is not None:
            raise BadRequest(f"{key}: The frame is outside the job range ({frames[0]}..{frames[-1]} of job {job})")
        raise BadRequest(f"{key}: {frame} is outside task {task} (frames 0..{len(frames) - 1})")
    return frame


def _image(store: Store, task: int, frame: int, region: regions.Region | None = None) -> str:
    """The stored file, never re-encoded; with a region, its crop (9.2)."""
    data = store.frame_bytes(task, frame)
    if region is not None:
        try:
            data = regions.crop(data, region)
        except ServerlessBadRequest as error:
            raise BadRequest(f"frame {frame} of task {task}: {error}") from None
    return base64.b64encode(data).decode()


def _region(store: Store, body: dict, task: int, frame: int) -> regions.Region | None:
    """The body's ``roi``, checked against the frame's stored size (9.2), or None."""
    if "roi" not in body:
        return None
    region = regions.parse(body["roi"])
    regions.check_inside(region, *store.frame_size(task, frame))
    return region


def _number(body: dict, key: str) -> float:
    if not is_number(body[key]):
        raise BadRequest(f"{key}: must be a number, got {body[key]!r}")
    return body[key]


def _bool(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{key}: must be true or false, got {value!r}")
    return value


def _mapping(body: dict) -> dict | None:
    mapping = body.get("mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise BadRequest(f"mapping: must be an object of model label -> task label, got {mapping!r}")
    return mapping


def _list(body: dict, key: str) -> list:
    if key not in body:
        raise BadRequest(f"{key}: required")
    if not isinstance(body[key], list):
        raise BadRequest(f"{key}: must be a list, got {body[key]!r}")
    return body[key]


def _points(body: dict, key: str) -> list:
    """``[[x, y], ...]``; the key is mandatory, an empty list is fine (3.4)."""
    points = _list(body, key)
    for index, point in enumerate(points):
        if not (isinstance(point, list) and len(point) == 2 and all(is_number(c) for c in point)):
            raise BadRequest(f"{key}[{index}]: must be [x, y], got {point!r}")
    return points


# Offline requests (3.7, section 5)

def _start_request(services: Services, function_id: str, body: OfflineRequest | AnnotateRequest) -> dict:
    function = services.registry.function(function_id)  # unknown: nuclio's 404; invalid: 500
    kind = function.meta.kind
    if kind not in OFFLINE_KINDS:
        raise BadRequest(f"function: function kind {kind} cannot be run offline")
    services.registry.check_ready(function)
    fields = {"task": body.task} if body.job is None else {"task": body.task, "job": body.job}
    task, job = _task_and_job(services.store, fields)
    frames = target_frames(services.store, task, job)
    for name, value in (("threshold", body.threshold), ("max_distance", body.max_distance)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise BadRequest(f"{name}: must be a finite number of 0 or more, got {value}")
    if kind == "detector":
        if body.max_distance is not None:
            raise BadRequest("max_distance: only ReID functions take it")
        build_mapping(function.meta.labels, services.store.task_labels(task), body.mapping)  # 400 now, not per frame
        parameters = {"threshold": body.threshold, "cleanup": body.cleanup,
                      "conv_mask_to_poly": body.conv_mask_to_poly, "mapping": body.mapping}
        if body.roi is not None:
            parameters["roi"] = list(_region_of_frames(services.store, body.roi, task, frames))
        units = frames
    else:  # ReID: the target's rectangles linked into tracks (9.4)
        for name, refused in (("cleanup", body.cleanup), ("roi", body.roi is not None),
                              ("mapping", bool(body.mapping)), ("conv_mask_to_poly", body.conv_mask_to_poly)):
            if refused:  # cleanup would delete the very boxes ReID links (defect 13)
                raise BadRequest(f"{name}: not for ReID functions, which link the target's rectangles into tracks")
        parameters = {"threshold": body.threshold, "max_distance": body.max_distance}
        units = reid.pairs(services.store.rectangles(task, frames), frames)
    settings = services.settings
    # A chunk's worst case: every unit waits the full timeout on every attempt.
    job_timeout = int(settings.chunk_size * settings.nuclio_timeout * (settings.frame_retries + 1)) + 60
    run = planner.submit(services.book, services.queue, Target(task, job), function.id, parameters, units,
                         settings.chunk_size, job_timeout, kind,
                         begin=lambda run: services.store.begin_run(run.request_id, run.id, task))
    return _request_object(services.book.get_run(run.id))


def _region_of_frames(store: Store, value, task: int, frames: list[int]) -> regions.Region:
    """An offline ``roi``, checked against every target frame's stored size (9.2), none decoded."""
    region = regions.parse(value)
    sizes = store.frames_meta(task)["frames"]
    for frame in frames:
        regions.check_inside(region, sizes[frame]["width"], sizes[frame]["height"], frame)
    return region


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _request_object(record: dict) -> dict:
    """CVAT's request object (3.7) plus ours: frames, fps, eta_seconds, failures, cancel_requested.

    A canceled run reads ``failed``, its reason in ``exc_info``: CVAT's UI shows any final status
    other than finished and failed as "accomplished" (9.5), and a canceled run is not that. Our
    clients tell it apart by ``cancel_requested``."""
    function = {"id": record["function_id"], "threshold": record["parameters"].get("threshold"),
                "task": record["task"]}
    if record["job"] is not None:
        function["job"] = record["job"]
    for key in ("roi", "max_distance"):  # ours: the request's region and ReID's distance, when given
        if record["parameters"].get(key) is not None:
            function[key] = record["parameters"][key]
    status, exc_info = record["status"], record["exc_info"]
    if status == "canceled":
        status, exc_info = "failed", _canceled(record)
    return {"id": record["id"], "function": function, "status": status, "progress": record["progress"],
            "enqueued": _iso(record["enqueued"]), "started": _iso(record["started"]), "ended": _iso(record["ended"]),
            "exc_info": exc_info, "frames": record["frames"], "fps": record["fps"],
            "eta_seconds": record["eta_seconds"], "failures": record["failures"],
            "cancel_requested": record["cancel_requested"]}


def _canceled(record: dict) -> str:
    """Counted when asked: chunks running at the cancel still store the frames they finish."""
    units = record["frames"]
    failed = f"; {units['failed']} failed" if units["failed"] else ""
    if record["kind"] == "reid":
        return (f"Canceled on request after {units['done']} of {units['total']} frame pairs{failed}; "
                "the task's annotations were not changed")
    return (f"Canceled on request after {units['done']} of {units['total']} frames{failed}; "
            f"the annotations of those {units['done']} frames were kept")


# Multipart and JSON frame uploads

async def _data_fields(request: Request) -> tuple[list[tuple[str, bytes]], list[str]]:
    """``client_files[<n>]`` (or ``client_files``) uploads and ``server_files[<n>]`` paths, in n order."""
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await request.json()
        paths = body.get("server_files") if isinstance(body, dict) else None
        if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
            raise BadRequest("server_files: must be a list of paths")
        return [], paths
    try:
        form = await request.form(max_files=100_000, max_fields=100_000, max_part_size=64 * 1024 * 1024)
    except (AssertionError, HTTPException) as error:  # not multipart or urlencoded, or malformed
        raise BadRequest(f"body: expected multipart/form-data with client_files or server_files ({error})") from None
    uploads, paths = [], []
    for key, value in sorted(form.multi_items(), key=lambda item: _field_order(item[0])):
        field = key.split("[", 1)[0]
        if field == "client_files":
            if not isinstance(value, UploadFile):
                raise BadRequest(f"{key}: must be a file")
            uploads.append((value.filename or key, await value.read()))
        elif field == "server_files":
            if not isinstance(value, str):
                raise BadRequest(f"{key}: must be a path, not a file")
            paths.append(value)
    return uploads, paths


def _field_order(key: str) -> tuple[str, int]:
    name, _, index = key.partition("[")
    index = index.rstrip("]")
    return name, int(index) if index.isdigit() else -1


# Errors: JSON, CVAT's statuses

def _install_error_handlers(app: FastAPI) -> None:
    def reply(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    statuses = {BadRequest: 400, InvalidInput: 400, MappingError: 400, tracker_states.InvalidState: 400,
                regions.RoiError: 400, NotFound: 404, Conflict: 409}
    for error_type, status in statuses.items():
        app.add_exception_handler(error_type, lambda request, error, status=status: reply(status, str(error)))
    app.add_exception_handler(GatewayError, lambda request, error: reply(error.status, error.message))
    app.add_exception_handler(Unauthorized, lambda request, error: reply(
        401, "authentication required: send Authorization: Bearer <API_TOKEN> (or Token <API_TOKEN>)",
        {"WWW-Authenticate": "Bearer"}))
    app.add_exception_handler(HTTPException, lambda request, error: reply(error.status_code, str(error.detail)))

    def validation_error(request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"] if part != "body") or "body"
            problems.append(f"{where}: {problem['msg']}")
        return reply(400, "; ".join(problems))

    app.add_exception_handler(RequestValidationError, validation_error)

    def internal_error(request, error: Exception) -> JSONResponse:
        return reply(500, f"internal error: {type(error).__name__}: {error}")

    app.add_exception_handler(Exception, internal_error)
