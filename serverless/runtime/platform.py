"""A local nuclio platform: every function under a tree as its own processor, behind the subset of
the nuclio dashboard API that CVAT uses (docs/wire-format.md §2.3).

- ``GET /api/functions``: an object keyed by function name; each value is the function.yaml as the
  dashboard returns it (annotations as strings) plus ``status``: ``state`` (building | ready |
  error), ``httpPort`` and ``message``.
- ``GET /api/functions/<name>``: one of those, or 404.
- ``POST /api/function_invocations`` (any method): the body goes to the function named by
  ``x-nuclio-function-name`` at ``x-nuclio-path``; its reply comes back unchanged. Unknown function:
  404; a function that is not ready: 503 with its state and message; unreachable: 503;
  past ``x-nuclio-invoke-timeout``: 504.

A function whose function.yaml is invalid, whose model files are missing or whose init_context
fails is listed with state ``error`` and the reason; the platform and the other functions go on.

A function name, in the path or the header, is a DNS-1123 label: any other is 400 naming the rule,
never a lookup. ``GET /__runtime/ready`` is the platform's health check (counts of functions by
state). With ``FUNCTION_TOKEN`` set, every other call needs ``Authorization: Bearer <token>``.
Processors end with the platform, however it ends (``lifetime.py``).

Remote functions (``--remote NAME=URL``, docker compose): served by ``serve`` in containers of
their own; the platform lists them from their function.yaml, follows their readiness at ``URL`` and
forwards invocations there, so the dispatcher needs no nuclio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serverless.common import settings
from serverless.common.handler import token_problem
from serverless.runtime import config as function_config
from serverless.runtime.ports import free_port
from serverless.runtime.processor import READY_PATH

log = logging.getLogger("serverless.runtime")
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll is noise
DEFAULT_INVOKE_TIMEOUT = 120.0  # seconds, CVAT's default X-Nuclio-Invoke-Timeout
HOP_BY_HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade", "te",
              "proxy-authorization", "proxy-authenticate", "trailer"}


@dataclass
class ManagedFunction:
    name: str
    path: Path
    raw: dict  # the function.yaml as parsed
    config: function_config.FunctionConfig | None  # None when the file is invalid
    state: str = "building"
    message: str = ""
    port: int = 0
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    restarts: int = 0
    url: str = ""  # where it answers: set at start, or the remote URL it was given


    def entry(self) -> dict:
        # Where callers reach the function itself (nuclio's internalInvocationUrls), unless it
        # listens on every interface: then only NUCLIO_FUNCTION_HOST knows which name reaches it.
        where = urlsplit(self.url)
        address = where.netloc if where.hostname not in (None, "0.0.0.0", "::") else ""
        return function_config.dashboard_entry(self.raw, self.state, self.port, self.message, address)


def discover(tree: Path, gpu: bool = False) -> list[Path]:
    """Every function.yaml under ``tree``; with ``gpu``, a folder's function-gpu.yaml replaces it."""
    found = []
    for directory, subdirectories, files in os.walk(tree):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith((".", "__")))
        if gpu and "function-gpu.yaml" in files:
            found.append(Path(directory) / "function-gpu.yaml")
        elif "function.yaml" in files:
            found.append(Path(directory) / "function.yaml")
    return found


def function_names(tree: Path) -> list[str]:
    """The names of the functions under ``tree`` that a platform on it would list."""
    return sorted(declared[0] for path in discover(tree) if (declared := _declared(path)) is not None)


def _declared(path: Path) -> tuple[str, dict] | None:
    """The name and parsed content of a function.yaml the runtime refused, if it has a name."""
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError, KeyError):
        raw = yaml.safe_load(path.read_text())
        name = raw["metadata"]["name"]
        # A name the dashboard API could not address is not listed at all.
        return (name, raw) if isinstance(name, str) and function_config.name_problem(name) is None else None
    return None


class UnknownFunctions(ValueError):
    pass


def load_functions(tree: Path, gpu: bool = False, only: set[str] | None = None,
                   remote: dict[str, str] | None = None) -> dict[str, ManagedFunction]:
    """The functions under ``tree``, or only those named in ``only`` or ``remote`` (UnknownFunctions
    if one is missing); ``remote`` maps names to the URLs of functions served elsewhere."""
    remote = remote or {}
    if remote:
        only = (only or set()) | set(remote)
    functions: dict[str, ManagedFunction] = {}
    for path in discover(tree, gpu):
        try:
            config = function_config.load(path)
            name, raw = config.name, config.raw
        except function_config.ConfigError as error:
            declared = _declared(path)
            if declared is None:
                log.error("skipping %s: %s", path, error)
                continue
            (name, raw), config, state, message = declared, None, "error", str(error)
        else:
            state, message = "building", ""
        if name in functions:
            log.error("skipping %s: function %s is already defined in %s", path, name, functions[name].path)
            continue
        functions[name] = ManagedFunction(name, path, raw, config, state, message)
    if only is not None:
        missing = sorted(only - functions.keys())
        if missing:
            raise UnknownFunctions(f"no function named {', '.join(missing)} under {tree}; "
                                   f"there are: {', '.join(sorted(functions))}")
        functions = {name: function for name, function in functions.items() if name in only}
    for name, url in remote.items():
        functions[name].url = url.rstrip("/")
    return functions


def _should_restart(function: ManagedFunction, code: int) -> bool:
    """As nuclio's local platform asks Docker to: spec.platform.attributes.restartPolicy ``always``
    or ``on-failure`` (non-zero exit), at most ``maximumRetryCount`` times (0: no limit)."""
    platform = (function.raw.get("spec") or {}).get("platform") or {}
    policy = (platform.get("attributes") or {}).get("restartPolicy") or {}
    name, limit = policy.get("name"), int(policy.get("maximumRetryCount") or 0)
    wanted = name == "always" or (name == "on-failure" and code != 0)
    return wanted and (limit == 0 or function.restarts < limit)


def _files_under(root: Path) -> frozenset[tuple[str, int, float]]:
    """Every file under ``root`` (symlinks followed) with its size and modification time."""
    found = set()
    for directory, _, names in os.walk(root, followlinks=True):
        for name in names:
            with contextlib.suppress(OSError):
                stat = os.stat(os.path.join(directory, name))
                found.add((os.path.join(directory, name), stat.st_size, stat.st_mtime))
    return frozenset(found)


async def _ended(process: asyncio.subprocess.Process, grace: float = 10) -> None:
    """A processor stopped: SIGTERM, and SIGKILL if it has not exited ``grace`` seconds later."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        process.kill()
        await process.wait()


class Platform:
    def __init__(self, tree: Path, host: str, gpu: bool = False, only: set[str] | None = None,
                 remote: dict[str, str] | None = None):
        self.host = host
        self.functions = load_functions(tree, gpu, only, remote)
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=64))
        self._monitor: asyncio.Task | None = None
        self.models_dir = settings.current().models_dir
        self._models_seen = _files_under(self.models_dir)

    async def start(self) -> None:
        for function in self.functions.values():
            if function.config is None:
                continue
            if function.url:  # remote: its port is the one in its URL
                function.port = urlsplit(function.url).port or 80
                continue
            function.port = function.config.trigger.port or free_port(self.host)
            function.url = f"http://{self.host}:{function.port}"
            await self._spawn(function)
        log.info("platform: %d function(s): %s", len(self.functions), ", ".join(sorted(self.functions)))
        self._monitor = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._monitor:
            self._monitor.cancel()
        await asyncio.gather(*(_ended(f.process) for f in self.functions.values() if f.process))
        await self.client.aclose()

    async def _watch(self) -> None:
        """Follow each processor's readiness: often while any is starting, then every few seconds;
        and while a function is in error, whether model files came into MODELS_DIR."""
        while True:
            await asyncio.gather(*(self._refresh(f) for f in self.functions.values() if f.process or f.url))
            await self._reload_on_new_model_files()
            starting = any(f.state == "building" for f in self.functions.values())
            await asyncio.sleep(0.2 if starting else 2.0)

    async def _reload_on_new_model_files(self) -> None:
        """Functions in error start again when MODELS_DIR's files change (model files added after
        the platform started: ``model_files mirror``, a copy, a mount), so they load them."""
        failed = [f for f in self.functions.values() if f.state == "error" and f.process is not None]
        if not failed:
            return
        seen = await asyncio.to_thread(_files_under, self.models_dir)
        if seen == self._models_seen:
            return
        self._models_seen = seen
        log.info("platform: model files changed under %s; starting again: %s", self.models_dir,
                 ", ".join(f.name for f in failed))
        for function in failed:
            await _ended(function.process)
            await self._spawn(function)

    async def _spawn(self, function: ManagedFunction) -> None:
        function.state, function.message = "building", ""
        function.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serverless.runtime", "serve", str(function.path),
            "--host", self.host, "--port", str(function.port), "--parent-pid", str(os.getpid()),
        )

    async def _refresh(self, function: ManagedFunction) -> None:
        if function.process is None:  # remote: up, starting or gone, as its readiness says
            try:
                status = (await self.client.get(f"{function.url}{READY_PATH}", timeout=2.0)).json()
            except (httpx.HTTPError, ValueError) as error:
                function.state, function.message = "error", f"cannot reach {function.url}: {error}"
                return
            function.state, function.message = status["state"], status.get("message", "")
            return
        code = function.process.returncode
        if code is not None:
            if function.state != "error" and _should_restart(function, code):
                function.restarts += 1
                log.warning("platform: %s exited with code %s; restart %d", function.name, code, function.restarts)
                await self._spawn(function)
                return
            function.state = "error"
            function.message = function.message or f"processor exited with code {code}"
            return
        try:
            reply = await self.client.get(f"{function.url}{READY_PATH}", timeout=2.0)
            status = reply.json()
        except (httpx.HTTPError, ValueError):
            return  # still starting up, or busy: keep the last known state
        function.state, function.message = status["state"], status.get("message", "")

    # --- dashboard API ---------------------------------------------------------------------------

    def _named(self, name: str, where: str) -> ManagedFunction | Response:
        """The function called ``name``, or the 400 (not a function name) or 404 (none such) reply."""
        problem = function_config.name_problem(name)
        if problem:
            return JSONResponse({"error": f"{where}: {problem}"}, status_code=400)
        function = self.functions.get(name)
        if function is None:
            return JSONResponse({"error": f"function {name} not found"}, status_code=404)
        return function

    async def list_functions(self, request: Request) -> Response:
        return JSONResponse({name: f.entry() for name, f in sorted(self.functions.items())})

    async def get_function(self, request: Request) -> Response:
        # The decoded path itself: Starlette's route pattern ends at a newline and its "$" matches
        # before one (and request.url drops newlines), so "name%0A" would come out as "name".
        function = self._named(request.scope["path"].removeprefix("/api/functions/"), "the path's function name")
        return function if isinstance(function, Response) else JSONResponse(function.entry())

    async def health(self, request: Request) -> Response:
        """Whether the platform answers, for health checks, which need no token; how many
        functions are in each state."""
        states: dict[str, int] = {}
        for function in self.functions.values():
            states[function.state] = states.get(function.state, 0) + 1
        return JSONResponse({"functions": states})

    async def invoke(self, request: Request) -> Response:
        name = request.headers.get("x-nuclio-function-name")
        if not name:
            return JSONResponse({"error": "the x-nuclio-function-name header is required"}, status_code=400)
        function = self._named(name, "x-nuclio-function-name")
        if isinstance(function, Response):
            return function
        if function.state != "ready":
            detail = f": {function.message}" if function.message else ""
            return JSONResponse({"error": f"function {name} is not ready (state {function.state}){detail}"},
                                status_code=503)
        try:
            timeout = function_config.parse_duration(request.headers.get("x-nuclio-invoke-timeout", ""))
        except ValueError:
            timeout = DEFAULT_INVOKE_TIMEOUT
        path = "/" + request.headers.get("x-nuclio-path", "/").lstrip("/")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and not k.lower().startswith("x-nuclio-")}
        try:
            reply = await self.client.request(request.method, f"{function.url}{path}",
                                              params=request.query_params, headers=headers,
                                              content=await request.body(), timeout=timeout)
        except httpx.TimeoutException:
            return JSONResponse({"error": f"function {name} did not answer within {timeout:g}s"}, status_code=504)
        except httpx.TransportError as error:
            return JSONResponse({"error": f"cannot reach function {name}: {error}"}, status_code=503)
        return Response(reply.content, status_code=reply.status_code,
                        media_type=reply.headers.get("content-type"))

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app):
            await self.start()
            yield
            await self.stop()

        return Starlette(routes=[
            Route(READY_PATH, self.health, methods=["GET"]),
            Route("/api/functions", self.list_functions, methods=["GET"]),
            # {name:path}: whatever follows, slashes included, is a name to check (a bad one is 400).
            Route("/api/functions/{name:path}", self.get_function, methods=["GET"]),
            Route("/api/function_invocations", self.invoke,
                  methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ], middleware=[Middleware(TokenCheck, token=settings.function_token())], lifespan=lifespan)


class TokenCheck:
    """With ``FUNCTION_TOKEN`` set, every call but the health check needs it as a bearer token; it is
    passed on to the processors, which check it too."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != READY_PATH:
            problem = token_problem(Headers(scope=scope).get("authorization", ""), self.token)
            if problem:
                reply = JSONResponse({"error": problem}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await reply(scope, receive, send)
                return
        await self.app(scope, receive, send)


def serve(tree: Path, host: str, port: int, gpu: bool, only: set[str] | None = None,
          remote: dict[str, str] | None = None) -> None:
    import uvicorn

    platform = Platform(tree, host, gpu, only, remote)
    log.info("platform: nuclio dashboard API on http://%s:%d", host, port)
    uvicorn.run(platform.app(), host=host, port=port, access_log=False, log_level="warning")
