"""``/api/lambda/requests`` and ``/detectors/<id>/annotate``: task-wide requests (docs/wire-format.md §3.7)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from dispatcher import offline_requests, submission
from dispatcher.dependencies import Requests, Services, require_token
from dispatcher.schemas import AnnotateRequest, OfflineRequest
from dispatcher.store import NotFound

router = APIRouter(tags=["lambda"], dependencies=[Depends(require_token)])


@router.get("/api/lambda/requests")
def list_requests(book: Requests) -> list[dict]:
    return [offline_requests.request_object(record) for record in book.list()]


@router.post("/api/lambda/requests")
def create_request(body: OfflineRequest, services: Services) -> dict:
    """200 and the request object, as CVAT answers; 409 while a run on an overlapping target is live."""
    return offline_requests.start(services, body.function, body)


@router.get("/api/lambda/requests/{request_id}")
def get_request(request_id: str, book: Requests) -> dict:
    record = book.get(request_id)
    if record is None:
        raise NotFound(f"request {request_id!r} does not exist (or has expired)")
    return offline_requests.request_object(record)


@router.delete("/api/lambda/requests/{request_id}", status_code=204)
def cancel_request(request_id: str, services: Services) -> Response:
    if not submission.cancel(services.book, services.queue, request_id):
        raise NotFound(f"request {request_id!r} does not exist (or has expired)")
    return Response(status_code=204)


@router.post("/detectors/{function_id}/annotate", status_code=202)
def annotate(function_id: str, body: AnnotateRequest, services: Services) -> dict:
    """Start a task-wide (or job-wide) request; poll ``GET /api/lambda/requests/<id>``."""
    return offline_requests.start(services, function_id, body)
