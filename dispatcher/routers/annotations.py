"""A task's and a job's annotations (CVAT's LabeledData) and the task's exports.

cvat-sdk spells the annotations paths with a trailing slash (``/api/tasks/<id>/annotations/``):
both spellings are served, so its PUT and PATCH bodies are never redirected."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Response

from dispatcher.dependencies import TaskStore, authenticate
from dispatcher.errors import BadRequest
from dispatcher.schemas import GUARDED, MAX_ID, Id, error_responses

router = APIRouter(tags=["annotations"], dependencies=[Depends(authenticate)],
                   responses=error_responses(*GUARDED, 404))
LabeledData = Annotated[dict[str, Any], Body()]
# CVAT's: add the items, change them (by id), or delete them (by id).
Action = Annotated[Literal["create", "update", "delete"], Query()]
OneFrame = Annotated[int | None, Query(ge=0, le=MAX_ID, description="ours: the tags and shapes on this frame and the "
                                                                    "tracks visible on it")]
TASK, JOB = "/api/tasks/{task_id}/annotations", "/api/jobs/{job_id}/annotations"


@router.get(TASK)
@router.get(TASK + "/", include_in_schema=False)
def get_annotations(task_id: Id, store: TaskStore, frame: OneFrame = None) -> dict:
    return store.get_annotations(task_id, frame=frame)


@router.put(TASK)
@router.put(TASK + "/", include_in_schema=False)
def put_annotations(task_id: Id, body: LabeledData, store: TaskStore) -> dict:
    return store.put_annotations(task_id, body)


@router.patch(TASK)
@router.patch(TASK + "/", include_in_schema=False)
def patch_annotations(task_id: Id, action: Action, body: LabeledData, store: TaskStore) -> dict:
    return store.patch_annotations(task_id, body, action)


@router.delete(TASK, status_code=204)
@router.delete(TASK + "/", status_code=204, include_in_schema=False)
def delete_annotations(task_id: Id, store: TaskStore) -> Response:
    store.delete_annotations(task_id)
    return Response(status_code=204)


# A job's annotations: the tags and shapes on its frames and the tracks visible on at least one of
# them. Writes keep to them: new items on the job's frames (a track's every keyframe), updated and
# deleted ones among them (docs/wire-format.md §3.9.5).

@router.get(JOB)
@router.get(JOB + "/", include_in_schema=False)
def get_job_annotations(job_id: Id, store: TaskStore) -> dict:
    return store.get_annotations(store.get_job(job_id)["task_id"], job_id)


@router.put(JOB)
@router.put(JOB + "/", include_in_schema=False)
def put_job_annotations(job_id: Id, body: LabeledData, store: TaskStore) -> dict:
    return store.put_annotations(store.get_job(job_id)["task_id"], body, job_id)


@router.patch(JOB)
@router.patch(JOB + "/", include_in_schema=False)
def patch_job_annotations(job_id: Id, action: Action, body: LabeledData, store: TaskStore) -> dict:
    return store.patch_annotations(store.get_job(job_id)["task_id"], body, action, job_id)


@router.delete(JOB, status_code=204)
@router.delete(JOB + "/", status_code=204, include_in_schema=False)
def delete_job_annotations(job_id: Id, store: TaskStore) -> Response:
    store.delete_annotations(store.get_job(job_id)["task_id"], job_id)
    return Response(status_code=204)


ExportFormat = Literal["coco", "cvat"]  # COCO JSON; CVAT for images 1.1 XML
CategoryIds = Literal["task", "coco"]  # COCO's category ids: 1, 2, ... in label order, or COCO's own


@router.get("/api/tasks/{task_id}/export",
            responses={200: {"content": {"application/json": {}, "application/xml": {}}}})
def export(task_id: Id, format: Annotated[ExportFormat, Query()], store: TaskStore,
           category_ids: Annotated[CategoryIds, Query()] = "task") -> Response:
    """The task's annotations as COCO JSON or CVAT for images 1.1 XML, as a download. COCO with
    ``category_ids=coco``: COCO's own category and image ids, for a task whose labels are all COCO
    categories (400 naming those that are not), so pycocotools scores it against COCO's ground truth."""
    if format != "coco" and category_ids != "task":
        raise BadRequest("category_ids: only the COCO export has categories to number")
    if format == "coco":
        exported = store.export_coco(task_id, category_ids == "coco")
        content, media_type, suffix = json.dumps(exported), "application/json", "json"
    else:
        content, media_type, suffix = store.export_cvat_xml(task_id), "application/xml", "xml"
    return Response(content, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="task_{task_id}_{format}.{suffix}"'})
