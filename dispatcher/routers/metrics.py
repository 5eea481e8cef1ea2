"""Prometheus metrics: the API's HTTP requests (prometheus-fastapi-instrumentator) and the
deployment's jobs (``dispatcher.job_metrics``), behind the API's credentials like any other call."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dispatcher.dependencies import Services, authenticate
from dispatcher.schemas import GUARDED, error_responses

router = APIRouter(tags=["service"], dependencies=[Depends(authenticate)], responses=error_responses(*GUARDED))


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(services: Services) -> Response:
    """Prometheus's text format: ``http_request*`` for this API process, ``autoannotate_*`` for the
    deployment's jobs (the same from every API replica)."""
    return Response(generate_latest(services.metrics_registry), media_type=CONTENT_TYPE_LATEST)
