"""What the API's routes work with, as FastAPI dependencies: the services, built once per app, and
the caller, checked by every router for all of its routes (``authenticate``)."""

from __future__ import annotations

from typing import Annotated

import redis
import rq
from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from dispatcher import authentication
from dispatcher.backends import open_store
from dispatcher.cvat.callers import Caller, CvatCallers
from dispatcher.gateway import Gateway
from dispatcher.job_metrics import JobMetricsCollector
from dispatcher.registry import Registry
from dispatcher.request_book import RequestBook, key_prefix
from dispatcher.settings import Settings
from dispatcher.store import Store
from dispatcher.submission import queue_name


class ApiServices:
    """The API process's connections: nuclio, the task store (local, or a CVAT server and the
    callers it knows), Redis and the RQ queue."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.gateway = Gateway(settings)
        self.registry = Registry(self.gateway)
        self.store = open_store(settings, worker=False)
        self.callers = None if settings.cvat_url is None else CvatCallers(
            settings.cvat_url, settings.cvat_timeout, settings.auth_cache_seconds)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.book = RequestBook(self.redis, settings.finished_request_ttl, settings.failed_request_ttl,
                                key_prefix(settings.deployment_namespace), records=self.store.request_records)
        self.queue = rq.Queue(queue_name(settings.deployment_namespace), connection=self.redis)
        # Per app, not prometheus_client's global registry: a process may make several apps (tests).
        self.metrics_registry = CollectorRegistry()
        self.metrics_registry.register(JobMetricsCollector(self.book, self.queue))

    def close(self) -> None:
        self.gateway.close()
        self.store.close()
        if self.callers is not None:
            self.callers.close()
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


def authenticate(request: Request, services: Services) -> Caller | None:
    """Fronting CVAT: the CVAT user the credentials name (CVAT's refusal otherwise). Standalone:
    the credentials ``authentication.check`` accepts when ``API_TOKEN`` is set (401/403
    otherwise); there are no users (None)."""
    if services.callers is not None:
        return services.callers.identify(request)
    authentication.check(request, services.settings.api_token)
    return None


CurrentCaller = Annotated[Caller | None, Depends(authenticate)]
