"""nuclio handler plumbing: a JSON object in, a JSON reply out, and 400 for the caller's mistakes.

nuclio hands a handler ``event.body`` already parsed when the request says ``application/json``
and raw bytes otherwise; both are accepted here, so clients that add a charset still work.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Callable


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


def read_probability(body: dict, key: str, default: float) -> float:
    """An optional number in [0, 1]; 0 is a real value (CVAT's threshold-0 defect stays out)."""
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
