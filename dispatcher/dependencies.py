"""What the API's routes work with, as FastAPI dependencies: the services, built once per app, and
the token check every router sets for all of its routes."""

from __future__ import annotations

import secrets
from typing import Annotated

import redis
import rq
from fastapi import Depends, Request

from dispatcher.errors import Unauthorized
from dispatcher.gateway import Gateway
from dispatcher.registry import Registry
from dispatcher.request_book import RequestBook
from dispatcher.settings import Settings
from dispatcher.store import Store
from dispatcher.submission import QUEUE

AUTH_SCHEMES = ("bearer", "token")  # Token: cvat-sdk's and cvat-cli's scheme (docs/wire-format.md §9.6)


class ApiServices:
    """The API process's connections: nuclio, the task store, Redis and the RQ queue."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.gateway = Gateway(settings)
        self.registry = Registry(self.gateway)
        self.store = Store(settings.database_url, settings.data_dir, settings.server_files_root,
                           settings.max_image_pixels)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.book = RequestBook(self.redis, settings.finished_request_ttl, settings.failed_request_ttl)
        self.queue = rq.Queue(QUEUE, connection=self.redis)

    def close(self) -> None:
        self.gateway.close()
        self.store.close()
        self.redis.close()


def _services(request: Request) -> ApiServices:
    return request.app.state.services


Services = Annotated[ApiServices, Depends(_services)]


def _store(services: Services) -> Store:
    return services.store


def _book(services: Services) -> RequestBook:
    return services.book


def _registry(services: Services) -> Registry:
    return services.registry


TaskStore = Annotated[Store, Depends(_store)]
Requests = Annotated[RequestBook, Depends(_book)]
Functions = Annotated[Registry, Depends(_registry)]


def require_token(request: Request, services: Services) -> None:
    """With ``API_TOKEN`` set, ``Authorization: Bearer <token>`` or ``Token <token>``; else 401."""
    expected = services.settings.api_token
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() not in AUTH_SCHEMES or not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized()
