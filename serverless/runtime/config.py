"""Read and validate a function.yaml the way the local runtime needs it; errors name the field."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from serverless.common.metadata import FunctionMeta, MetadataError, annotation_strings
from serverless.common.settings import CODE_ROOT

# nuclio's defaults for an HTTP trigger (docs.nuclio.io, reference/triggers/http).
DEFAULT_NUM_WORKERS = 1
DEFAULT_WORKER_AVAILABILITY_TIMEOUT_MS = 10_000
DEFAULT_MAX_REQUEST_BODY_SIZE = 4 * 1024 * 1024

HANDLER = re.compile(r"^([\w-]+(?:\.[\w-]+)*):(\w+)$")  # nuclio's own pattern for module:function
# A function name the dashboard API addresses: a DNS-1123 label, as Kubernetes names the resources
# nuclio makes for a function (nuclio's dashboard itself checks only IsQualifiedName at deploy).
FUNCTION_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
FUNCTION_NAME_MAX_LENGTH = 63
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """A function.yaml the runtime refuses; the message names the file and the field."""


@dataclass(frozen=True)
class HttpTrigger:
    name: str
    num_workers: int
    worker_availability_timeout: float  # seconds
    max_request_body_size: int
    port: int | None


@dataclass(frozen=True)
class FunctionConfig:
    path: Path
    raw: dict
    meta: FunctionMeta
    handler: str
    env: dict[str, str]
    event_timeout: float | None  # seconds; None waits forever, as nuclio does without eventTimeout
    trigger: HttpTrigger

    @property
    def name(self) -> str:
        return self.meta.id

    @property
    def directory(self) -> Path:
        return self.path.parent


def dashboard_entry(raw: dict, state: str, http_port: int, message: str = "", address: str = "") -> dict:
    """A function.yaml as the nuclio dashboard lists it (annotations as strings, project label,
    status, with nuclio's internalInvocationUrls when ``address`` says where the function answers),
    valid or not: a dashboard shows what was deployed."""
    entry = copy.deepcopy(raw)
    metadata = entry.setdefault("metadata", {})
    metadata["annotations"] = annotation_strings(metadata.get("annotations") or {})
    metadata.setdefault("labels", {})["nuclio.io/project-name"] = "cvat"
    entry["status"] = {"state": state, "httpPort": http_port, "message": message}
    if address:
        entry["status"]["internalInvocationUrls"] = [address]
    return entry


def name_problem(name: str) -> str | None:
    """What makes ``name`` no function name (None: it is one), in Kubernetes' words."""
    if not name:
        return "a function name must not be empty"
    if len(name) > FUNCTION_NAME_MAX_LENGTH:
        return f"a function name must be at most {FUNCTION_NAME_MAX_LENGTH} characters, got {len(name)}"
    if not FUNCTION_NAME.fullmatch(name):  # fullmatch: "$" would let a trailing newline through
        return (f"a function name must consist of lower case letters, digits or '-' and start and end with a "
                f"letter or digit (a DNS-1123 label, e.g. 'my-function'), got {name!r}")
    return None


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as ``30s``, ``1m30s`` or ``500ms`` (what nuclio accepts)."""
    if not text or "".join(m.group(0) for m in _DURATION_PART.finditer(text)) != text:
        raise ValueError(f"{text!r} is not a duration like 30s, 500ms or 1m30s")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text))


def load(path: Path) -> FunctionConfig:
    """Load ``path`` (a function.yaml, or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "function.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    try:
        return _validate(path, raw)
    except (MetadataError, ConfigError) as error:
        raise ConfigError(f"{path}: {error}") from None


def _validate(path: Path, raw) -> FunctionConfig:
    if not isinstance(raw, dict):
        raise ConfigError("the file must hold a mapping with metadata and spec")
    meta = FunctionMeta.from_nuclio(raw)
    if problem := name_problem(meta.id):
        raise ConfigError(f"metadata.name: {problem}")
    spec = raw.get("spec") or {}

    runtime = str(spec.get("runtime", "python"))
    if not runtime.startswith("python"):
        raise ConfigError(f"spec.runtime: the local runtime runs Python functions only, got {runtime!r}")

    handler = spec.get("handler")
    match = HANDLER.match(handler) if isinstance(handler, str) else None
    if not match:
        raise ConfigError(f"spec.handler: must be 'module:function', got {handler!r}")
    # The module lives in the function folder, or is one of ours (serverless.common.sdk serves
    # cvat-sdk functions), importable from the code root as in the function images.
    parts = match.group(1).split(".")
    if not any(root.joinpath(*parts).with_suffix(".py").is_file() or root.joinpath(*parts, "__init__.py").is_file()
               for root in (path.parent, CODE_ROOT)):
        raise ConfigError(f"spec.handler: module {match.group(1)!r} not found in {path.parent} or {CODE_ROOT}")

    event_timeout = None
    if spec.get("eventTimeout") not in (None, ""):
        try:
            event_timeout = parse_duration(str(spec["eventTimeout"]))
        except ValueError as error:
            raise ConfigError(f"spec.eventTimeout: {error}") from None
        if event_timeout <= 0:
            raise ConfigError("spec.eventTimeout: must be positive")

    return FunctionConfig(path=path, raw=raw, meta=meta, handler=handler, env=_env(spec.get("env")),
                          event_timeout=event_timeout, trigger=_http_trigger(spec.get("triggers")))


def _env(entries) -> dict[str, str]:
    if entries in (None, []):
        return {}
    if not isinstance(entries, list):
        raise ConfigError("spec.env: must be a list of {name, value}")
    env = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "value" not in entry:
            raise ConfigError(f"spec.env[{index}]: must be {{name, value}} (valueFrom is not supported locally)")
        env[entry["name"]] = "" if entry["value"] is None else str(entry["value"])
    return env


def _http_trigger(triggers) -> HttpTrigger:
    if triggers is None:
        triggers = {}
    if not isinstance(triggers, dict):
        raise ConfigError("spec.triggers: must be a mapping of trigger name to trigger")
    http = [(name, t) for name, t in triggers.items() if isinstance(t, dict) and t.get("kind") == "http"]
    if len(http) > 1:
        raise ConfigError(f"spec.triggers: one http trigger expected, found {len(http)}")
    if not http:  # nuclio adds a default HTTP trigger with one worker
        return HttpTrigger("default-http", DEFAULT_NUM_WORKERS, DEFAULT_WORKER_AVAILABILITY_TIMEOUT_MS / 1000,
                           DEFAULT_MAX_REQUEST_BODY_SIZE, None)
    name, trigger = http[0]
    where = f"spec.triggers.{name}"
    # maxWorkers is the name before nuclio 1.13; numWorkers wins when both are given.
    workers_key = "numWorkers" if "numWorkers" in trigger else "maxWorkers"
    attributes = trigger.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ConfigError(f"{where}.attributes: must be a mapping")
    port = attributes.get("port")
    return HttpTrigger(
        name=name,
        num_workers=_int(trigger.get(workers_key, DEFAULT_NUM_WORKERS), f"{where}.{workers_key}", minimum=1),
        worker_availability_timeout=_int(
            trigger.get("workerAvailabilityTimeoutMilliseconds", DEFAULT_WORKER_AVAILABILITY_TIMEOUT_MS),
            f"{where}.workerAvailabilityTimeoutMilliseconds", minimum=0) / 1000,
        max_request_body_size=_int(attributes.get("maxRequestBodySize", DEFAULT_MAX_REQUEST_BODY_SIZE),
                                   f"{where}.attributes.maxRequestBodySize", minimum=1),
        port=None if port is None else _int(port, f"{where}.attributes.port", minimum=1),
    )


def _int(value, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{where}: must be at least {minimum}, got {value}")
    return value
