"""Every setting of the dispatcher, read from the environment once; no other dispatcher module
reads ``os.environ``. The README's settings table lists them."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

INVOKE_METHODS = ("dashboard", "direct")
# The repository root: data_dir's default lives beside the code.
REPOSITORY = Path(__file__).resolve().parents[1]
# URL schemes the task store can use; the bare PostgreSQL spellings mean psycopg 3, the one driver installed.
DATABASE_SCHEMES = {"sqlite": "sqlite", "postgresql+psycopg": "postgresql+psycopg",
                    "postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # it ends up in Redis keys and the RQ queue's name


@dataclass(frozen=True)
class Settings:
    # The nuclio dashboard APIs, real nuclio or our local platform: one per host whose functions we
    # call. A function that several report is one function with replicas (docs/architecture.md §13).
    nuclio_urls: tuple[str, ...]
    nuclio_configured: bool  # NUCLIO_URL was set; if not, annotate-folder starts the local platform itself
    nuclio_invoke_method: str  # "dashboard": through /api/function_invocations; "direct": the function's port
    nuclio_function_host: str | None  # where "direct" finds the functions' ports; None: their dashboard's host
    nuclio_timeout: float  # seconds, per call (CVAT's default: 120)
    function_token: str | None  # sent to nuclio and the functions as "Authorization: Bearer <token>"
    database_url: str | None  # the task store's SQLAlchemy URL; None: SQLite at <data_dir>/dispatcher.sqlite3
    data_dir: Path  # the task store's files: the SQLite database, uploaded frames
    server_files_root: Path | None  # the directory tasks may take frames from by path; None: server files disabled
    max_image_pixels: int  # uploads and server files with more pixels are refused before decoding
    max_body_bytes: int  # request bodies over this are refused (413) before they are read whole
    redis_url: str  # requests' state and the RQ queue "annotation-<namespace>"
    # Prefixes every Redis key and names the RQ queue, so deployments sharing a Redis never take
    # each other's chunks; by default a hash of the task store's identity.
    deployment_namespace: str
    chunk_size: int  # frames per RQ job: tens to hundreds, never one job per frame
    frame_retries: int  # further calls after a retryable failure (5xx, timeout, function down)
    retry_backoff: float  # seconds before the first retry, doubling after each
    circuit_breaker_failures: int  # consecutive unreachable answers (502/503/504) of a function that open its circuit
    circuit_breaker_wait: float  # seconds calls wait for an open circuit (or a lookup for nuclio) before failing
    finished_request_ttl: int  # seconds a finished request stays listed (CVAT: 30 min)
    failed_request_ttl: int  # seconds a failed or canceled request stays listed (CVAT: 3 h)
    recovery_interval: float  # seconds between the API's sweeps for requests Redis lost (docs/architecture.md §12)
    api_token: str | None  # when set, every API call needs "Authorization: Bearer <token>"
    tracker_state_key: bytes  # signs tracker states handed to clients; random per process unless set
    # With a CVAT URL, tasks live in that CVAT and callers are CVAT's users (docs/architecture.md §11).
    cvat_url: str | None  # None: the local task store
    cvat_token: str | None  # the service account's API token (or key), for reading frames and writing results
    cvat_username: str | None  # or its username and password, exchanged for a key at start
    cvat_password: str | None
    cvat_timeout: float  # seconds per call to CVAT
    auth_cache_seconds: float  # how long a caller's credentials and task access, checked with CVAT, are trusted


def load(environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    nuclio_urls = tuple(url.strip().rstrip("/") for url in (environ.get("NUCLIO_URL") or "http://127.0.0.1:8070").split(",")
                        if url.strip())
    for url in nuclio_urls:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError(f"NUCLIO_URL: {url!r} is not an http:// or https:// URL")
    if len(set(nuclio_urls)) != len(nuclio_urls):
        raise ValueError("NUCLIO_URL names a dashboard twice")
    method = environ.get("NUCLIO_INVOKE_METHOD", "dashboard").lower()
    if method not in INVOKE_METHODS:
        raise ValueError(f"NUCLIO_INVOKE_METHOD={method!r} is not one of {', '.join(INVOKE_METHODS)}")
    timeout = _number(environ, "NUCLIO_TIMEOUT", "120", float, positive=True)
    data_dir = Path(environ.get("DATA_DIR") or REPOSITORY / "data")
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"DATA_DIR={str(data_dir)!r} is not a directory")
    server_files_root = Path(environ["SERVER_FILES_ROOT"]) if environ.get("SERVER_FILES_ROOT") else None
    if server_files_root is not None and not server_files_root.is_dir():
        raise ValueError(f"SERVER_FILES_ROOT={str(server_files_root)!r} is not a directory")
    cvat_url = (environ.get("CVAT_URL") or "").rstrip("/") or None
    if cvat_url is not None:
        if environ.get("API_TOKEN"):
            raise ValueError("API_TOKEN must not be set with CVAT_URL: callers then authenticate with CVAT")
        if not environ.get("CVAT_TOKEN") and not (environ.get("CVAT_USERNAME") and environ.get("CVAT_PASSWORD")):
            raise ValueError("CVAT_URL needs the service account's CVAT_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD")
        if urlsplit(cvat_url).scheme not in ("http", "https"):
            raise ValueError(f"CVAT_URL={cvat_url!r} must start with http:// or https://")
    database_url = _database_url(environ.get("DATABASE_URL") or None)
    return Settings(
        nuclio_urls=nuclio_urls,
        nuclio_configured=bool(environ.get("NUCLIO_URL")),
        nuclio_invoke_method=method,
        nuclio_function_host=environ.get("NUCLIO_FUNCTION_HOST") or None,
        nuclio_timeout=timeout,
        function_token=environ.get("FUNCTION_TOKEN") or None,
        database_url=database_url,
        data_dir=data_dir,
        server_files_root=server_files_root,
        max_image_pixels=_number(environ, "MAX_IMAGE_PIXELS", "100000000", int, positive=True),
        # cvat-sdk packs uploads into requests of at most 100 MiB of files (larger files go through
        # TUS): 128 MiB leaves room for the multipart framing. JSON bodies (annotations) are parsed
        # whole in memory, which is why the limit is not much higher.
        max_body_bytes=_number(environ, "MAX_BODY_BYTES", str(128 * 2**20), int, positive=True),
        redis_url=environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        deployment_namespace=_namespace(environ.get("DEPLOYMENT_NAMESPACE") or None, cvat_url, database_url, data_dir),
        chunk_size=_number(environ, "CHUNK_SIZE", "64", int, positive=True),
        frame_retries=_number(environ, "FRAME_RETRIES", "2", int, positive=False),
        retry_backoff=_number(environ, "RETRY_BACKOFF", "0.5", float, positive=False),
        circuit_breaker_failures=_number(environ, "CIRCUIT_BREAKER_FAILURES", "5", int, positive=True),
        circuit_breaker_wait=_number(environ, "CIRCUIT_BREAKER_WAIT", "30", float, positive=False),
        finished_request_ttl=_number(environ, "FINISHED_REQUEST_TTL", "1800", int, positive=True),
        failed_request_ttl=_number(environ, "FAILED_REQUEST_TTL", "10800", int, positive=True),
        recovery_interval=_number(environ, "RECOVERY_INTERVAL", "10", float, positive=True),
        api_token=environ.get("API_TOKEN") or None,
        tracker_state_key=(environ.get("TRACKER_STATE_KEY") or "").encode() or secrets.token_bytes(32),
        cvat_url=cvat_url,
        cvat_token=environ.get("CVAT_TOKEN") or None,
        cvat_username=environ.get("CVAT_USERNAME") or None,
        cvat_password=environ.get("CVAT_PASSWORD") or None,
        cvat_timeout=_number(environ, "CVAT_TIMEOUT", "60", float, positive=True),
        auth_cache_seconds=_number(environ, "AUTH_CACHE_SECONDS", "30", float, positive=False),
    )


def _number(environ: dict[str, str], name: str, default: str, kind: type, *, positive: bool):
    raw = environ.get(name) or default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name}={raw!r} must be {'positive' if positive else 'zero or more'}")
    return value


def _database_url(url: str | None) -> str | None:
    if url is None:
        return None
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in DATABASE_SCHEMES:
        # Only the scheme is echoed: the rest of the URL may hold a password.
        got = repr(scheme) if separator else "no scheme"
        raise ValueError(f"DATABASE_URL must start with sqlite:// or postgresql+psycopg://, got {got}")
    return f"{DATABASE_SCHEMES[scheme]}://{rest}"


def _namespace(explicit: str | None, cvat_url: str | None, database_url: str | None, data_dir: Path) -> str:
    """DEPLOYMENT_NAMESPACE, or a short hash of where the tasks live: processes that share a task
    store share a namespace (hashed: a database URL may hold a password)."""
    if explicit is not None:
        if not NAMESPACE.fullmatch(explicit):
            raise ValueError(f"DEPLOYMENT_NAMESPACE={explicit!r} must be 1-64 letters, digits, '_', '.' or '-'")
        return explicit
    database = database_url or f"sqlite:///{(data_dir / 'dispatcher.sqlite3').resolve()}"
    return hashlib.sha256(f"{cvat_url or ''} {database}".encode()).hexdigest()[:10]


@functools.cache
def current() -> Settings:
    return load()
