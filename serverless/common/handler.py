"""nuclio handler plumbing: a JSON object in, a JSON reply out, and 400 for the caller's mistakes.

nuclio hands a handler ``event.body`` already parsed when the request says ``application/json``
and raw bytes otherwise; both are accepted here, so clients that add a charset still work.

Detectors answer CVAT's body ``{"image", "threshold"?}`` with a list of items, and our batch
extension ``{"images": [...], "threshold"?}`` with one list per image, in order.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL import Image


class BadRequest(ValueError):
    """The caller's input is wrong; the reply is 400 with this one-line message."""


def read_json_object(body: Any) -> dict:
    if isinstance(body, dict):
        return body
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadRequest(f"request body is not JSON: {error}") from None
        if isinstance(body, dict):
            return body
    raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")


def read_probability(body: dict, key: str, default: float | None) -> float | None:
    """An optional number in [0, 1]; 0 is a real value (CVAT's threshold-0 defect stays out).
    Absent: ``default`` (None for a cvat-sdk function, whose own default then applies)."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'{key}' must be a number between 0 and 1, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise BadRequest(f"'{key}' must be between 0 and 1, got {value}")
    return float(value)


def json_handler(process: Callable[[Any, dict], Any]) -> Callable:
    """Wrap ``process(context, body_dict) -> JSON-able`` into a nuclio ``handler(context, event)``."""

    @functools.wraps(process)
    def handler(context, event):
        try:
            result = process(context, read_json_object(event.body))
        except BadRequest as error:
            return context.Response(body=str(error), status_code=400, content_type="text/plain")
        return context.Response(body=json.dumps(result), status_code=200, content_type="application/json")

    return handler


class Detector(Protocol):
    """A detector's model, the class in its folder's ``model_handler.py``: ``init_context`` in
    ``main.py`` puts one in ``context.user_data.model``, and ``detector_handler`` serves it."""

    def detect(self, image: Image.Image, threshold: float) -> list[dict]:
        """The result items (``serverless.common.detections``) in an RGB image, at the request's threshold."""


def detector_handler(detect: Callable[[Any, Image.Image, float | None, dict], list[dict]],
                     default_threshold: float | None = 0.5) -> Callable:
    """A nuclio handler for a detector: ``detect(context, rgb_image, threshold, body) -> items``, in
    ``main.py`` a call to the ``Detector`` in ``context.user_data.model``.

    ``body`` is passed on for model-specific options (text detection's ``pixel_threshold``, say).
    """
    from serverless.common.images import decode_image  # Pillow is only needed by image functions

    @json_handler
    def process(context, body):
        threshold = read_probability(body, "threshold", default_threshold)
        if "images" not in body:
            return detect(context, decode_image(body.get("image")), threshold, body)
        images = body["images"]
        if not isinstance(images, list) or not images:
            raise BadRequest("'images' must be a non-empty list of base64 strings")
        decoded = [decode_image(data, field=f"images[{index}]") for index, data in enumerate(images)]
        return [detect(context, image, threshold, body) for image in decoded]

    process.detect = detect  # the model without the wire, for in-process callers (serverless.common.sdk)
    return process
