"""A task's and a job's annotations (CVAT's LabeledData) and the task's exports."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Response

from dispatcher.dependencies import TaskStore, require_token

router = APIRouter(tags=["annotations"], dependencies=[Depends(require_token)])


@router.get("/api/tasks/{task_id}/annotations")
def get_annotations(task_id: int, store: TaskStore, frame: Annotated[int | None, Query(
        ge=0, description="ours: the tags and shapes on this frame and the tracks visible on it")] = None) -> dict:
    return store.get_annotations(task_id, frame=frame)


@router.put("/api/tasks/{task_id}/annotations")
def put_annotations(task_id: int, body: Annotated[dict[str, Any], Body()], store: TaskStore) -> dict:
    return store.put_annotations(task_id, body)


@router.patch("/api/tasks/{task_id}/annotations")
def patch_annotations(task_id: int, action: str, body: Annotated[dict[str, Any], Body()], store: TaskStore) -> dict:
    return store.patch_annotations(task_id, body, action)


@router.delete("/api/tasks/{task_id}/annotations", status_code=204)
def delete_annotations(task_id: int, store: TaskStore) -> Response:
    store.delete_annotations(task_id)
    return Response(status_code=204)


@router.get("/api/jobs/{job_id}/annotations")
def get_job_annotations(job_id: int, store: TaskStore) -> dict:
    return store.get_annotations(store.get_job(job_id)["task_id"], job_id)


ExportFormat = Literal["coco", "cvat"]  # COCO JSON; CVAT for images 1.1 XML


@router.get("/api/tasks/{task_id}/export",
            responses={200: {"content": {"application/json": {}, "application/xml": {}}}})
def export(task_id: int, format: Annotated[ExportFormat, Query()], store: TaskStore) -> Response:
    """The task's annotations as COCO JSON or CVAT for images 1.1 XML, as a download."""
    if format == "coco":
        content, media_type, suffix = json.dumps(store.export_coco(task_id)), "application/json", "json"
    else:
        content, media_type, suffix = store.export_cvat_xml(task_id), "application/xml", "xml"
    return Response(content, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="task_{task_id}_{format}.{suffix}"'})
