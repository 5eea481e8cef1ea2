"""Online calls (docs/wire-format.md §3.4 - §3.6): one call of a function on one frame of a task, with
CVAT's bodies and replies, for every kind of function.

CVAT drops keys whose value is null, then reads what the kind needs; every mistake is a 400 naming
the field. Detectors answer CVAT annotations with the task's label ids (conversion and mapping in
``dispatcher.converter``); interactors, ReID and trackers answer what the function answers, except
that regions (``roi``, §9.2) are put back into the frame and tracker states are signed for the
client. Unlike CVAT: threshold 0 is forwarded (§D1), a ``task``/``job`` mismatch is refused
(§D14), and non-ready functions answer 503 (§D20).
"""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image, UnidentifiedImageError

from dispatcher import roi as regions
from dispatcher import tracker_states
from dispatcher.converter import BadFunctionOutput, build_mapping, convert, is_int, is_number
from dispatcher.cvat.callers import Caller
from dispatcher.dependencies import ApiServices
from dispatcher.errors import BadRequest
from dispatcher.gateway import GatewayError
from dispatcher.registry import LambdaFunction
from dispatcher.schemas import MAX_ID
from dispatcher.store import NotFound, Store
from serverless.common.handler import BadRequest as ServerlessBadRequest


def call(services: ApiServices, function: LambdaFunction, raw: dict, caller: Caller | None = None) -> Any:
    """One online call of ``function`` with CVAT's body ``raw``; the reply as the API answers it.
    Fronting CVAT, the caller must be able to see the task (or job): CVAT says (§9.6)."""
    body = {key: value for key, value in raw.items() if value is not None}  # CVAT drops null keys first
    task, job = task_and_job(services.store, body)
    if caller is not None:
        services.callers.check_target(caller, task, job)
    kind = function.meta.kind
    extra = {}
    if "threshold" in body:  # 0 included (§D1)
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
        if body.get("text_prompts"):  # CVAT forwards it when truthy (§9.3)
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


def _track(services: ApiServices, function: LambdaFunction, body: dict, task: int, frame: int) -> dict:
    """CVAT's tracker call (§3.5): start on ``shapes`` (no ``states``) or continue ``states``; the
    function's states reach the client signed, and come back checked."""
    key, function_id = services.settings.tracker_state_key, function.id
    legacy = not function.meta.supported_shape_types
    if "states" in body:
        states = [tracker_states.unsign(key, function_id, state, f"states[{index}]")
                  for index, state in enumerate(_list(body, "states"))]
        shapes = [None] * len(states)
    else:
        states = []
        # Older clients (and CVAT's own tests) send a bare [x1, y1, x2, y2]: a rectangle.
        shapes = [{"type": "rectangle", "points": shape} if isinstance(shape, list) else shape
                  for shape in _list(body, "shapes")]
        for index, shape in enumerate(shapes):
            if not (isinstance(shape, dict) and isinstance(shape.get("points"), list)
                    and all(is_number(value) for value in shape["points"])):
                raise BadRequest(f"shapes[{index}]: must be a shape with type and points (or [x1, y1, x2, y2]), "
                                 f"got {shape!r}")
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


def task_and_job(store: Store, body: dict) -> tuple[int, int | None]:
    """The task the body means, from ``job`` when given (a ``task`` that disagrees is refused)."""
    for key in ("task", "job"):
        if key in body and not (is_int(body[key]) and 1 <= body[key] <= MAX_ID):
            raise BadRequest(f"{key}: must be an integer id from 1 to {MAX_ID}, got {body[key]!r}")
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
    frames = store.target_frames(task, job)
    if frame not in frames:
        if job is not None:
            raise BadRequest(f"{key}: The frame is outside the job range ({frames[0]}..{frames[-1]} of job {job})")
        raise BadRequest(f"{key}: {frame} is outside task {task} (frames 0..{len(frames) - 1})")
    return frame


def _image(store: Store, task: int, frame: int, region: regions.Region | None = None) -> str:
    """The stored file, never re-encoded; with a region, its crop (§9.2). A file that is no longer
    an image (replaced on disk since it was added) is refused here, naming the frame, rather than by
    the function, which could not say which frame it was."""
    data = store.frame_bytes(task, frame)
    try:
        if region is not None:
            data = regions.crop(data, region)
        else:
            with Image.open(io.BytesIO(data)):  # the header only: the frame is not decoded
                pass
    except ServerlessBadRequest as error:
        raise BadRequest(f"frame {frame} of task {task}: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadRequest(f"frame {frame} of task {task}: the stored file is no longer an image Pillow can read "
                         f"({type(error).__name__})") from None
    return base64.b64encode(data).decode()


def _region(store: Store, body: dict, task: int, frame: int) -> regions.Region | None:
    """The body's ``roi``, checked against the frame's stored size (§9.2), or None."""
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
    """``[[x, y], ...]``; the key is mandatory, an empty list is fine (§3.4)."""
    points = _list(body, key)
    for index, point in enumerate(points):
        if not (isinstance(point, list) and len(point) == 2 and all(is_number(c) for c in point)):
            raise BadRequest(f"{key}[{index}]: must be [x, y], got {point!r}")
    return points
