"""The JSON bodies the API reads through pydantic: task-wide requests and new tasks. Online calls and
annotations keep CVAT's free-form bodies, checked field by field where they are used, so that each
mistake gets CVAT's message and status. Also the error body every route answers, and which errors
each route documents."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from dispatcher.registry import FUNCTION_ID_PATTERN, FUNCTION_ID_RULE
from dispatcher.store.validation import MAX_ID


class ErrorDetail(BaseModel):
    detail: str = Field(description="what is wrong, starting with the field it is about")


ERRORS = {
    400: "bad input: a parameter or the body, named in detail",
    401: "no valid credentials (API_TOKEN is set, or CVAT refused them)",
    403: "a session's POST, PUT, PATCH or DELETE without its CSRF token, or CVAT's refusal",
    404: "no such id",
    409: "a running request on an overlapping target",
    413: "the body is larger than MAX_BODY_BYTES",
    502: "the function answered something unusable",
    503: "the function (or nuclio, or the task store) cannot take calls now",
    504: "the function did not answer in time",
}
# Every call with credentials may be refused before its route runs; every call may send a body.
GUARDED = (400, 401, 403, 413)
FUNCTION_CALLS = (404, 502, 503, 504)


def error_responses(*statuses: int) -> dict:
    """OpenAPI ``responses`` for these statuses, each the JSON ``{"detail": ...}`` the API answers."""
    return {status: {"model": ErrorDetail, "description": ERRORS[status]} for status in sorted(set(statuses))}


Id = Annotated[int, Path(ge=1, le=MAX_ID)]
FunctionId = Annotated[str, Path(description=FUNCTION_ID_RULE,
                                 json_schema_extra={"pattern": FUNCTION_ID_PATTERN, "maxLength": 63})]
# A confidence the function compares with: 0 included, never negative, NaN or infinite (as online).
Threshold = Annotated[float | None, Field(None, ge=0, allow_inf_nan=False,
                                          description="forwarded to the function, 0 included")]


class OfflineRequest(BaseModel):
    """``POST /api/lambda/requests``: CVAT's fields (docs/wire-format.md §3.7); unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    function: str = Field(description=f"the function id, {FUNCTION_ID_RULE}",
                          json_schema_extra={"pattern": FUNCTION_ID_PATTERN, "maxLength": 63})
    task: int = Field(ge=1, le=MAX_ID, description="the task; required even with job, as in CVAT")
    job: int | None = Field(None, ge=1, le=MAX_ID, description="run over this job's frames only")
    threshold: Threshold
    cleanup: StrictBool = Field(False, description="delete the target's annotations (once) before the first write")
    conv_mask_to_poly: StrictBool = Field(False, alias="convMaskToPoly",
                                          description="polygons instead of masks (alias convMaskToPoly)")
    mapping: dict[str, Any] | None = Field(None, description="model label -> task label (docs/wire-format.md §4.1)")
    roi: Any = Field(None, description="detectors: [xtl, ytl, xbr, ybr], annotate only this region of every frame")
    max_distance: float | None = Field(None, ge=0, allow_inf_nan=False,
                                       description="ReID: the largest distance in pixels between the centres of "
                                                   "boxes that may be linked (the function's default: 50)")


class AnnotateRequest(BaseModel):
    """``POST /detectors/<id>/annotate``: the same request, the function named in the path."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    task: int = Field(ge=1, le=MAX_ID)
    job: int | None = Field(None, ge=1, le=MAX_ID)
    threshold: Threshold
    cleanup: StrictBool = False
    conv_mask_to_poly: StrictBool = Field(False, alias="convMaskToPoly")
    mapping: dict[str, Any] | None = None
    roi: Any = None
    max_distance: float | None = Field(None, ge=0, allow_inf_nan=False)


class NewTask(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    labels: list[dict[str, Any]]
    segment_size: int | None = Field(None, description="frames per job; none: one job for the whole task")
