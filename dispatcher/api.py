"""The dispatcher's HTTP API: an app factory that includes one router per resource (``routers/``):
CVAT's ``/api/lambda`` functions and requests (docs/wire-format.md §3), the task store's tasks,
labels, jobs, annotations and exports and server files in CVAT's REST shapes with CVAT's login
(§3.9), and the service routes.

Every error is JSON, ``{"detail": "<readable message>"}``, with CVAT's statuses (docs/wire-format.md §3.8): bad input
400, no credentials 401, a session's unsafe call without its CSRF token 403, unknown ids 404, an overlapping running
request 409, a function that cannot be reached 503, a timeout 504, and an upstream error keeps its status. Every
``GET`` route answers ``HEAD`` too (§9.1).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from dispatcher import roi, tracker_states
from dispatcher.converter import MappingError
from dispatcher.cvat.client import CvatRefused, CvatUnavailable
from dispatcher.dependencies import ApiServices
from dispatcher.errors import BadRequest, Forbidden, Unauthorized
from dispatcher.gateway import GatewayError
from dispatcher.request_book import Conflict
from dispatcher.routers import (
    about,
    annotations,
    auth,
    functions,
    jobs,
    labels,
    requests,
    server_files,
    service,
    tasks,
    users,
)
from dispatcher.settings import Settings
from dispatcher.store import InvalidInput, NotFound

UI_DIR = Path(__file__).with_name("ui")
ERROR_STATUSES = {BadRequest: 400, InvalidInput: 400, MappingError: 400, tracker_states.InvalidState: 400,
                  roi.RoiError: 400, Forbidden: 403, NotFound: 404, Conflict: 409}
UNAUTHORIZED = ("authentication required: send Authorization: Bearer <API_TOKEN> (or Token <API_TOKEN>, or Basic "
                "with API_TOKEN as the password), or log in with POST /api/auth/login")


def create_app(settings: Settings) -> FastAPI:
    services = ApiServices(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        services.close()

    app = FastAPI(title="CVAT-compatible auto-annotation dispatcher", lifespan=lifespan,
                  description="CVAT's /api/lambda API, a task store in CVAT's REST shapes, and task-wide "
                              "annotation requests on Redis/RQ.")
    app.state.services = services
    app.add_middleware(HeadAsGet)
    _install_error_handlers(app)
    for router in (service.router, functions.router, requests.router):
        app.include_router(router)
    if settings.cvat_url is None:  # fronting CVAT, tasks and annotations are CVAT's to serve
        # cvat-sdk and cvat-cli work against these as against CVAT (docs/wire-format.md §3.9).
        for router in (about.router, auth.router, users.router, tasks.router, labels.router, jobs.router,
                       annotations.router, server_files.router):
            app.include_router(router)
        # The web UI: static files that call this API like any other client, so they need no token
        # themselves; the pages ask for it when the API answers 401.
        app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
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


def _install_error_handlers(app: FastAPI) -> None:
    def reply(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    for error_type, status in ERROR_STATUSES.items():
        app.add_exception_handler(error_type, lambda request, error, status=status: reply(status, str(error)))
    app.add_exception_handler(GatewayError, lambda request, error: reply(error.status, error.message))
    app.add_exception_handler(CvatRefused, lambda request, error: reply(error.status, error.message))
    app.add_exception_handler(CvatUnavailable, lambda request, error: reply(503, str(error)))
    app.add_exception_handler(Unauthorized, lambda request, error: reply(
        401, str(error) or UNAUTHORIZED, {"WWW-Authenticate": "Bearer"}))
    app.add_exception_handler(HTTPException, lambda request, error: reply(error.status_code, str(error.detail)))

    def validation_error(request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in error.errors():
            # The field's own name: where it came from (body, query, path) is plain from the call.
            where = ".".join(str(part) for part in problem["loc"][1:]) or str(problem["loc"][0])
            problems.append(f"{where}: {problem['msg']}")
        return reply(400, "; ".join(problems))

    app.add_exception_handler(RequestValidationError, validation_error)

    def internal_error(request, error: Exception) -> JSONResponse:
        return reply(500, f"internal error: {type(error).__name__}: {error}")

    app.add_exception_handler(Exception, internal_error)
