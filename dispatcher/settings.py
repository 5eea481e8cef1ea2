"""Every setting of the dispatcher, read from the environment once; no other dispatcher module
reads ``os.environ``. The README's settings table lists them."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

INVOKE_METHODS = ("dashboard", "direct")


@dataclass(frozen=True)
class Settings:
    nuclio_url: str  # the nuclio dashboard API: real nuclio, or our local platform
    nuclio_invoke_method: str  # "dashboard": through /api/function_invocations; "direct": the function's port
    nuclio_function_host: str  # where "direct" finds the functions' ports
    nuclio_timeout: float  # seconds, per call (CVAT's default: 120)


def load(environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    nuclio_url = environ.get("NUCLIO_URL", "http://127.0.0.1:8070").rstrip("/")
    method = environ.get("NUCLIO_INVOKE_METHOD", "dashboard").lower()
    if method not in INVOKE_METHODS:
        raise ValueError(f"NUCLIO_INVOKE_METHOD={method!r} is not one of {', '.join(INVOKE_METHODS)}")
    raw_timeout = environ.get("NUCLIO_TIMEOUT", "120")
    try:
        timeout = float(raw_timeout)
    except ValueError:
        raise ValueError(f"NUCLIO_TIMEOUT={raw_timeout!r} is not a number of seconds") from None
    if timeout <= 0:
        raise ValueError(f"NUCLIO_TIMEOUT={raw_timeout!r} must be positive")
    return Settings(
        nuclio_url=nuclio_url,
        nuclio_invoke_method=method,
        nuclio_function_host=environ.get("NUCLIO_FUNCTION_HOST") or urlsplit(nuclio_url).hostname or "127.0.0.1",
        nuclio_timeout=timeout,
    )


@functools.cache
def current() -> Settings:
    return load()
