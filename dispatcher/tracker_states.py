"""Tracker states on their way through the client (docs/wire-format.md §3.5): the function's state as
compact JSON, a timestamp and an HMAC-SHA256 over both and the function id, so a client can only
hand a function back a state that function made, within 8 hours. Clients treat the string as
opaque; the format is ours, not Django's."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time

MAX_AGE_SECONDS = 8 * 3600


class InvalidState(ValueError):
    pass


def _signature(key: bytes, function_id: str, payload: str, timestamp: str) -> str:
    message = f"cvat-tracker-state:{function_id}:{payload}:{timestamp}".encode()
    return base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode().rstrip("=")


def sign(key: bytes, function_id: str, state, now: float | None = None) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")
    timestamp = str(int(time.time() if now is None else now))
    return f"{payload}.{timestamp}.{_signature(key, function_id, payload, timestamp)}"


def unsign(key: bytes, function_id: str, token, where: str, now: float | None = None):
    """The state inside ``token``; ``InvalidState`` (a 400) when it is forged, altered, another
    function's, or older than 8 hours."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3 or not hmac.compare_digest(parts[2], _signature(key, function_id, parts[0], parts[1])):
        raise InvalidState(f"{where}: Invalid or expired tracker state")
    payload, timestamp, _ = parts
    if (time.time() if now is None else now) - int(timestamp) > MAX_AGE_SECONDS:
        raise InvalidState(f"{where}: Invalid or expired tracker state")
    try:
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        raise InvalidState(f"{where}: Invalid or expired tracker state") from None
