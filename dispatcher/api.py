"""The dispatcher's HTTP API: an app factory that includes one router per resource (``routers/``):
CVAT's ``/api/lambda`` functions and requests (docs/wire-format.md §3), the task store's tasks,
labels, jobs, annotations and exports and server files in CVAT's REST shapes with CVAT's login
(§3.9), and the service routes.

Every error is JSON, ``{"detail": "<readable message>"}``, with CVAT's statuses (docs/wire-format.md §3.8): bad input
400, no credentials 401, a session's unsafe call without its CSRF token 403, unknown ids 404, an overlapping running
request 409, a body over ``MAX_BODY_BYTES`` 413, a function that cannot be reached 503, a timeout 504, and an upstream
error keeps its status. Every ``GET`` route answers ``HEAD`` too (§9.1); a method a path does not take answers 405 with
``Allow``. Anything else is a 500 that names only the error's type (the log has the rest: no SQL, no paths) and closes
the connection.
"""

from __future__ import annotations

import inspect
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_fastapi_instrumentator import Instrumentator
from sqlalchemy.exc import DataError, InterfaceError, OperationalError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Mount, Route

from dispatcher import roi, tracker_states
from dispatcher.converter import MappingError
from dispatcher.cvat.client import CvatRefused, CvatUnavailable
from dispatcher.dependencies import ApiServices, authenticate
from dispatcher.errors import BadRequest, Forbidden, Unauthorized
from dispatcher.gateway import GatewayError
from dispatcher.recovery import RecoverySweeps
from dispatcher.request_book import Conflict
from dispatcher.routers import (
    about,
    annotations,
    auth,
    functions,
    jobs,
    labels,
    metrics,
    requests,
    server_files,
    service,
    tasks,
    users,
)
from dispatcher.settings import Settings
from dispatcher.store import InvalidInput, NotFound

log = logging.getLogger("dispatcher")
UI_DIR = Path(__file__).with_name("ui")
ERROR_STATUSES = {BadRequest: 400, InvalidInput: 400, MappingError: 400, tracker_states.InvalidState: 400,
                  roi.RoiError: 400, Forbidden: 403, NotFound: 404, Conflict: 409}
UNAUTHORIZED = ("authentication required: send Authorization: Bearer <API_TOKEN> (or Token <API_TOKEN>, or Basic "
                "with API_TOKEN as the password), or log in with POST /api/auth/login")


def create_app(settings: Settings) -> FastAPI:
    services = ApiServices(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        # Requests Redis lost are looked for now and then (docs/architecture.md §12).
        sweeps = RecoverySweeps(services.book, services.queue, settings.recovery_interval)
        sweeps.start()
        yield
        sweeps.stop()
        services.close()

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the package, not a CDN
    # (Swagger UI's validator badge, from another host, is turned off).
    app = FastAPIOffline(title="CVAT-compatible auto-annotation dispatcher", lifespan=lifespan,
                         swagger_ui_parameters={"validatorUrl": None},
                  description="CVAT's /api/lambda API, a task store in CVAT's REST shapes, and task-wide "
                              "annotation requests on Redis/RQ.")
    app.state.services = services
    app.add_middleware(Gate, services=services)
    app.add_middleware(OwnHostOnly)
    app.add_middleware(HeadAsGet)  # outermost: the gate and the routes see a GET
    _install_error_handlers(app)
    # HTTP metrics of every route, into the registry /metrics serves.
    Instrumentator(registry=services.metrics_registry, excluded_handlers=["/metrics"]).instrument(app)
    included = [service.router, metrics.router, functions.router, requests.router]
    if settings.cvat_url is None:  # fronting CVAT, tasks and annotations are CVAT's to serve
        # cvat-sdk and cvat-cli work against these as against CVAT (docs/wire-format.md §3.9).
        included += [about.router, auth.router, users.router, tasks.router, labels.router, jobs.router,
                     annotations.router, server_files.router]
        # The web UI: static files that call this API like any other client, so they need no token
        # themselves; the pages ask for it when the API answers 401.
        app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
    for router in included:
        app.include_router(router)
    app.state.endpoints = Endpoints(app, included)
    _document_errors_only(app)
    return app


class HeadAsGet:
    """HEAD on any path answers what GET would, headers only. CVAT's UI (2.60+) probes
    ``/api/lambda/functions`` with HEAD and shows no functions at all unless it gets 200 or 404
    (docs/wire-format.md §9.1); this covers every GET route, present and future, in one place."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def without_body(message):
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


class OwnHostOnly:
    """The pages people open (the web UI, /docs, /redoc) may load nothing from another host: a
    Content-Security-Policy the browser enforces. Sites without internet get whole pages, and
    ReDoc's footer logo (from its CDN) is never fetched."""

    PAGES = ("/ui", "/docs", "/redoc")
    POLICY = (b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
              b"script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; font-src 'self' data:")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.PAGES):
            return await self.app(scope, receive, send)

        async def with_policy(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"content-security-policy", self.POLICY)]}
            await send(message)

        await self.app(scope, receive, with_policy)


class BodyTooLarge(HTTPException):
    """413. The connection stays open: the server drops the rest of the body as it comes, so a client
    that sends it all before reading (most do) reads this answer, where a close would reset it."""

    def __init__(self, limit: int):
        super().__init__(413, f"body: larger than the limit of {limit} bytes (MAX_BODY_BYTES)")


class Gate:
    """What is checked before a route reads a byte of the body: the credentials, where the route
    takes them (a 200 MB upload without a token is refused at once, not after the upload), and the
    size, ``MAX_BODY_BYTES``: by ``Content-Length`` at once, else as the bytes arrive. Refusals go
    through the app's own error handlers, so they are the JSON the routes would answer."""

    def __init__(self, app, services: ApiServices):
        self.app = app
        self.services = services

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        limit = self.services.settings.max_body_bytes
        try:
            if request.app.state.endpoints.needs_credentials(scope["method"], scope["path"]):
                # Fronting CVAT this asks CVAT (its answer cached): not on the event loop.
                await run_in_threadpool(authenticate, request, self.services)
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                raise BodyTooLarge(limit)
        except Exception as error:
            return await (await _error_response(request, error))(scope, receive, send)
        received, too_large, started = 0, None, False

        async def limited() -> dict:
            nonlocal received, too_large
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                too_large = BodyTooLarge(limit)
                raise too_large
            return message

        async def guarded(message: dict) -> None:
            nonlocal started
            if too_large is not None:  # whatever the route made of the error, the answer is the 413
                if not started:
                    started = True
                    await (await _error_response(request, too_large))(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except BodyTooLarge:
            if started:
                raise
            await guarded({})


class Endpoints:
    """Every path the app serves, with its methods and whether its router checks credentials (its
    routers say it once, for their routes, with ``authenticate``). FastAPI keeps included routers
    nested, so the app's own route list cannot tell."""

    def __init__(self, app: FastAPI, routers: list):
        self.routes: list[tuple[re.Pattern, set[str], bool]] = []
        for router in routers:
            guarded = any(dependency.dependency is authenticate for dependency in router.dependencies)
            self.routes += [(route.path_regex, route.methods, guarded) for route in router.routes
                            if isinstance(route, APIRoute)]
        for route in app.router.routes:  # the OpenAPI pages; the web UI's static files
            if isinstance(route, Route):
                self.routes.append((route.path_regex, route.methods or set(), False))
            elif isinstance(route, Mount):
                self.routes.append((re.compile(f"^{re.escape(route.path)}(/.*)?$"), {"GET"}, False))

    def needs_credentials(self, method: str, path: str) -> bool:
        return any(guarded and method in methods and regex.match(path) for regex, methods, guarded in self.routes)

    def allowed(self, path: str) -> str:
        """Every method some route takes on the path (HEAD wherever GET is), for ``Allow``: Starlette
        would name only the first matching route's."""
        methods = set().union(*(methods for regex, methods, _ in self.routes if regex.match(path)))
        if "GET" in methods:
            methods.add("HEAD")
        return ", ".join(sorted(methods))


async def _error_response(request: Request, error: Exception):
    """The response the app's handler for ``error``'s type makes."""
    handlers = request.app.exception_handlers
    response = next(handlers[kind] for kind in type(error).__mro__ if kind in handlers)(request, error)
    return await response if inspect.isawaitable(response) else response


def _document_errors_only(app: FastAPI) -> None:
    """The OpenAPI document without FastAPI's 422: bad input is 400 here, and each router lists the
    errors its routes answer (``schemas.error_responses``)."""
    generate = app.openapi

    def openapi() -> dict:
        fresh = app.openapi_schema is None
        schema = generate()
        if fresh:
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi


def _install_error_handlers(app: FastAPI) -> None:
    def reply(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        if status == 500:  # nothing is known of the connection after an unexpected error: the client starts afresh
            headers = {**(headers or {}), "Connection": "close"}
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    for error_type, status in ERROR_STATUSES.items():
        app.add_exception_handler(error_type, lambda request, error, status=status: reply(status, str(error)))
    app.add_exception_handler(GatewayError, lambda request, error: reply(error.status, error.message))
    app.add_exception_handler(CvatRefused, lambda request, error: reply(error.status, error.message))
    app.add_exception_handler(CvatUnavailable, lambda request, error: reply(503, str(error)))
    app.add_exception_handler(Unauthorized, lambda request, error: reply(
        401, str(error) or UNAUTHORIZED, {"WWW-Authenticate": "Bearer"}))

    def http_error(request, error: HTTPException) -> JSONResponse:
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = request.app.state.endpoints.allowed(request.url.path)
        return reply(error.status_code, str(error.detail), headers)

    app.add_exception_handler(HTTPException, http_error)

    def validation_error(request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in error.errors():
            # The field's own name: where it came from (body, query, path) is plain from the call.
            where = ".".join(str(part) for part in problem["loc"][1:]) or str(problem["loc"][0])
            problems.append(f"{where}: {problem['msg']}")
        return reply(400, "; ".join(problems))

    app.add_exception_handler(RequestValidationError, validation_error)

    def value_out_of_range(request, error: OverflowError) -> JSONResponse:
        # SQLite's driver, say, refuses an integer beyond 64 bits (before any SQL runs).
        return reply(400, f"a number in the request is too large: {error}")

    app.add_exception_handler(OverflowError, value_out_of_range)

    def database_error(request, error: SQLAlchemyError) -> JSONResponse:
        """Never the statement or its parameters, which SQLAlchemy's message holds: they stay in the log."""
        log.error("task store error on %s %s", request.method, request.url.path, exc_info=error)
        if isinstance(error, DataError):  # a value the database cannot hold: an out-of-range number, a NUL
            reason = str(getattr(error, "orig", None) or type(error).__name__).splitlines()[0]
            return reply(400, f"the task store refused a value in the request: {reason}")
        if isinstance(error, OperationalError | InterfaceError):
            return reply(503, "the task store is unavailable; try again later")
        return reply(500, f"internal error: {type(error).__name__} in the task store")

    app.add_exception_handler(SQLAlchemyError, database_error)

    def internal_error(request, error: Exception) -> JSONResponse:
        # The type only: messages can carry paths and values (uvicorn logs the whole traceback).
        return reply(500, f"internal error: {type(error).__name__}")

    app.add_exception_handler(Exception, internal_error)
