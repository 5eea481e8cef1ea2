"""nuclio handler plumbing: a JSON object in, a JSON reply out, and 400 for the caller's mistakes.

nuclio hands a handler ``event.body`` already parsed when the request says ``application/json``
and raw bytes otherwise; both are accepted here, so clients that add a charset still work.

Detectors answer CVAT's body ``{"image", "threshold"?}`` with a list of items, and our batch
extension ``{"images": [...], "threshold"?}`` with one list per image, in order.
"""

from __future__ import annotations

import functools
import hmac
import json
import math
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from serverless.common import settings

if TYPE_CHECKING:
    from PIL import Image


class BadRequest(ValueError):
    """The caller's input is wrong; the reply is ``status`` (400) with this one-line message."""

    status = 400


class TooLarge(BadRequest):
    """The request asks for more work than a setting allows."""

    status = 413


def token_problem(authorization: str, token: str | None) -> str | None:
    """Why an ``Authorization`` header value does not carry ``token`` (None: it does, or there is
    no token). Shared by the handlers, our processor and our platform."""
    if token is None:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return "'Authorization: Bearer <FUNCTION_TOKEN>' is required"
    if not hmac.compare_digest(credentials.strip().encode(), token.encode()):
        return "the bearer token does not match FUNCTION_TOKEN"
    return None


def read_json_object(body: Any) -> dict:
    if isinstance(body, dict):
        return body
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadRequest(f"request body is not JSON: {error}") from None
        except RecursionError:
            raise BadRequest("request body is JSON nested deeper than this function parses "
                             f"(about {sys.getrecursionlimit()} levels)") from None
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
        # Checked here too, not only by our processor: under real nuclio the processor is nuclio's
        # own, and its dashboard passes Authorization on to the function unchanged.
        authorization = next((v for k, v in (event.headers or {}).items() if k.lower() == "authorization"), "")
        refused = token_problem(authorization, settings.current().function_token)
        if refused:
            return context.Response(body=refused, status_code=401, content_type="text/plain",
                                    headers={"WWW-Authenticate": "Bearer"})
        try:
            result = process(context, read_json_object(event.body))
        except BadRequest as error:
            return context.Response(body=str(error), status_code=error.status, content_type="text/plain")
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
    # Pillow is only needed by image functions
    from serverless.common.images import decode_image, finish_image, open_frame

    @json_handler
    def process(context, body):
        threshold = read_probability(body, "threshold", default_threshold)
        if "images" not in body:
            return detect(context, decode_image(body.get("image")), threshold, body)
        images = body["images"]
        if not isinstance(images, list) or not images:
            raise BadRequest("'images' must be a non-empty list of base64 strings")
        # Every header is read and the batch's size checked before any pixel is decoded; then the
        # next frame is decoded while the model runs on this one (Pillow's decoder and the
        # inference engines release the GIL), so a worker holds at most two decoded frames.
        headers = [open_frame(data, field=f"images[{index}]") for index, data in enumerate(images)]
        budget = settings.current().max_batch_pixels
        total = sum(header.width * header.height for header in headers)
        if total > budget:
            raise TooLarge(f"'images' hold {total} pixels in all, over MAX_BATCH_PIXELS ({budget}); "
                           "send fewer or smaller frames per request")
        results = []
        with ThreadPoolExecutor(1) as decoder:
            upcoming = decoder.submit(finish_image, headers[0], field="images[0]")
            for index in range(len(headers)):
                frame = upcoming.result()
                if index + 1 < len(headers):
                    upcoming = decoder.submit(finish_image, headers[index + 1], field=f"images[{index + 1}]")
                results.append(detect(context, frame, threshold, body))
        return results

    process.detect = detect  # the model without the wire, for in-process callers (serverless.common.sdk)
    return process
