"""``/api/lambda/requests`` and ``/detectors/<id>/annotate``: task-wide requests (docs/wire-format.md §3.7).

Fronting CVAT, a caller sees the requests on targets CVAT lets them see, and cancels their own (or,
as an admin, anyone's) (§9.6); standalone there are no users, and every caller sees everything.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from dispatcher import offline_requests, submission
from dispatcher.cvat.client import CvatRefused
from dispatcher.dependencies import ApiServices, CurrentCaller, Requests, Services, authenticate
from dispatcher.schemas import FUNCTION_CALLS, GUARDED, AnnotateRequest, FunctionId, OfflineRequest, error_responses
from dispatcher.store import NotFound

router = APIRouter(tags=["lambda"], dependencies=[Depends(authenticate)], responses=error_responses(*GUARDED))
# Submitting looks the function up in nuclio and the target in the task store.
SUBMIT = error_responses(*FUNCTION_CALLS, 409)


@router.get("/api/lambda/requests")
def list_requests(book: Requests, services: Services, caller: CurrentCaller) -> list[dict]:
    records = book.list()
    if caller is not None:
        records = [r for r in records if services.callers.may_see(caller, r["task"], r["job"])]
    return [offline_requests.request_object(record) for record in records]


@router.post("/api/lambda/requests", responses=SUBMIT)
def create_request(body: OfflineRequest, services: Services, caller: CurrentCaller) -> dict:
    """200 and the request object, as CVAT answers; 409 while a run on an overlapping target is live."""
    return offline_requests.start(services, body.function, body, caller)


@router.get("/api/lambda/requests/{request_id}", responses=error_responses(404))
def get_request(request_id: str, services: Services, caller: CurrentCaller) -> dict:
    return offline_requests.request_object(_visible(services, request_id, caller))


@router.delete("/api/lambda/requests/{request_id}", status_code=204, responses=error_responses(404))
def cancel_request(request_id: str, services: Services, caller: CurrentCaller) -> Response:
    record = _visible(services, request_id, caller)
    if caller is not None and not caller.is_admin and (record["owner"] or {}).get("id") != caller.id:
        raise CvatRefused(403, f"request {request_id!r} may be canceled by the user who made it or an admin")
    submission.cancel(services.book, services.queue, request_id)
    return Response(status_code=204)


@router.post("/detectors/{function_id}/annotate", status_code=202, responses=SUBMIT)
def annotate(function_id: FunctionId, body: AnnotateRequest, services: Services, caller: CurrentCaller) -> dict:
    """Start a task-wide (or job-wide) request; poll ``GET /api/lambda/requests/<id>``."""
    return offline_requests.start(services, function_id, body, caller, "function_id")


def _visible(services: ApiServices, request_id: str, caller) -> dict:
    """The request's current run, if the caller may see its target (else CVAT's refusal)."""
    record = services.book.get(request_id)
    if record is None:
        raise NotFound(f"request {request_id!r} does not exist (or has expired)")
    if caller is not None:
        services.callers.check_target(caller, record["task"], record["job"])
    return record
