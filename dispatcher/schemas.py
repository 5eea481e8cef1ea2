"""The JSON bodies the API reads through pydantic: task-wide requests and new tasks. Online calls and
annotations keep CVAT's free-form bodies, checked field by field where they are used, so that each
mistake gets CVAT's message and status."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class OfflineRequest(BaseModel):
    """``POST /api/lambda/requests``: CVAT's fields (docs/wire-format.md §3.7); unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    function: str = Field(description="the function id")
    task: int = Field(description="the task; required even with job, as in CVAT")
    job: int | None = Field(None, description="run over this job's frames only")
    threshold: float | None = Field(None, description="forwarded to the function, 0 included")
    cleanup: StrictBool = Field(False, description="delete the target's annotations (once) before the first write")
    conv_mask_to_poly: StrictBool = Field(False, alias="convMaskToPoly",
                                          description="polygons instead of masks (alias convMaskToPoly)")
    mapping: dict[str, Any] | None = Field(None, description="model label -> task label (docs/wire-format.md §4.1)")
    roi: Any = Field(None, description="detectors: [xtl, ytl, xbr, ybr], annotate only this region of every frame")
    max_distance: float | None = Field(None, description="ReID: the largest distance in pixels between the "
                                                         "centres of boxes that may be linked (the function's "
                                                         "default: 50)")


class AnnotateRequest(BaseModel):
    """``POST /detectors/<id>/annotate``: the same request, the function named in the path."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    task: int
    job: int | None = None
    threshold: float | None = None
    cleanup: StrictBool = False
    conv_mask_to_poly: StrictBool = Field(False, alias="convMaskToPoly")
    mapping: dict[str, Any] | None = None
    roi: Any = None
    max_distance: float | None = None


class NewTask(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    labels: list[dict[str, Any]]
    segment_size: int | None = Field(None, description="frames per job; none: one job for the whole task")
