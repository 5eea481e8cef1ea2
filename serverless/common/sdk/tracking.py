"""Serving a cvat-sdk tracking function as a CVAT tracker: ``shapes`` start tracking, ``states``
continue it. The states stay in the worker's memory under random ids for 8 hours, checked against
the image size, as cvat-cli's agent keeps them; so a tracker gets one worker.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from cvat_sdk.auto_annotation import (
    BadFunctionError,
    TrackableShape,
    TrackingFunctionContext,
    TrackingFunctionShapeContext,
)
from PIL import Image

from serverless.common.handler import BadRequest, json_handler

TRACKER_STATE_SECONDS = 8 * 3600  # as cvat-cli's agent keeps tracking states


def serve_tracking(function):
    """The nuclio handler of a tracking function."""
    from serverless.common.images import decode_image

    supported = set(function.spec.supported_shape_types)
    states: dict[str, tuple[float, tuple[int, int], str, Any]] = {}  # id -> (created, image size, type, state)
    lock = threading.Lock()

    def preprocess(image: Image.Image):
        if hasattr(function, "preprocess_image"):
            return function.preprocess_image(_TrackingContext(), image)
        return image

    def process(body: dict) -> dict:
        image = decode_image(body.get("image"))
        shapes, given_states = body.get("shapes"), body.get("states") or []
        if not isinstance(shapes, list) or not isinstance(given_states, list):
            raise BadRequest("'shapes' and 'states' must be lists (CVAT's tracker protocol)")
        if given_states and len(given_states) != len(shapes):
            raise BadRequest(f"'shapes' has {len(shapes)} entries and 'states' {len(given_states)}; they go in pairs")
        pp_image = preprocess(image)
        now = time.monotonic()
        with lock:
            for key in [key for key, entry in states.items() if now - entry[0] > TRACKER_STATE_SECONDS]:
                del states[key]
        reply_shapes, reply_states = [], []
        for index, shape in enumerate(shapes):
            state_id = given_states[index] if given_states else None
            if state_id is None:
                trackable = _trackable(shape, index, supported)
                state = function.init_tracking_state(_ShapeContext(trackable.type), pp_image, trackable)
                state_id = secrets.token_urlsafe(18)
                with lock:
                    states[state_id] = (now, image.size, trackable.type, state)
                reply_shapes.append({"type": trackable.type, "points": list(trackable.points)})
            else:
                with lock:
                    entry = states.get(state_id) if isinstance(state_id, str) else None
                if entry is None:
                    raise BadRequest(f"'states[{index}]': unknown or expired tracker state")
                _, size, original_type, state = entry
                if size != image.size:
                    raise BadRequest(f"'image' is {image.size[0]}x{image.size[1]}, but states[{index}] was made "
                                     f"on a {size[0]}x{size[1]} image")
                tracked = function.track(_ShapeContext(original_type), pp_image, state)
                if tracked is not None and tracked.type != original_type:
                    raise BadFunctionError(f"function tracked a {original_type!r} shape as a {tracked.type!r}")
                reply_shapes.append(None if tracked is None else {"type": tracked.type, "points": list(tracked.points)})
            reply_states.append(state_id)
        return {"shapes": reply_shapes, "states": reply_states}

    return json_handler(lambda context, body: process(body))


def _trackable(shape, index: int, supported: set[str]) -> TrackableShape:
    """A shape to start tracking: CVAT's shape object, or a legacy bare ``[x1, y1, x2, y2]``."""
    if isinstance(shape, list):
        shape = {"type": "rectangle", "points": shape}
    if not isinstance(shape, dict) or not isinstance(shape.get("points"), list):
        raise BadRequest(f"'shapes[{index}]' must be a shape {{\"type\", \"points\"}} to start tracking")
    if shape.get("type") not in supported:
        raise BadRequest(f"'shapes[{index}].type' must be one of {', '.join(sorted(supported))}, "
                         f"got {shape.get('type')!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in shape["points"]):
        raise BadRequest(f"'shapes[{index}].points' must be numbers")
    return TrackableShape(type=shape["type"], points=[float(v) for v in shape["points"]])


class _TrackingContext(TrackingFunctionContext):
    pass


class _ShapeContext(TrackingFunctionShapeContext):
    def __init__(self, original_shape_type: str):
        self._type = original_shape_type

    original_shape_type = property(lambda self: self._type)
