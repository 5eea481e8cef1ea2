"""``/api/labels``: a task's (or a job's) labels in CVAT's Label shape, paginated as CVAT lists
them: top-level labels, each with its sublabels (docs/wire-format.md §3.9.3). cvat-sdk reads a
task's labels here, never from the task."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from dispatcher import rest_shapes
from dispatcher.dependencies import TaskStore, authenticate
from dispatcher.errors import BadRequest
from dispatcher.schemas import GUARDED, MAX_ID, Id, error_responses
from dispatcher.store import NotFound

router = APIRouter(tags=["labels"], dependencies=[Depends(authenticate)], responses=error_responses(*GUARDED, 404))


@router.get("/api/labels")
def list_labels(store: TaskStore, request: Request,
                task_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="the task's labels")] = None,
                job_id: Annotated[int | None, Query(ge=1, le=MAX_ID,
                                                    description="the labels of the job's task")] = None,
                project_id: Annotated[int | None, Query(description="CVAT's; there are no projects here")] = None,
                page: Annotated[int, Query(ge=1)] = 1,
                page_size: Annotated[int, Query(ge=1, le=rest_shapes.MAX_PAGE_SIZE)] = rest_shapes.PAGE_SIZE) -> dict:
    """Every task's labels, or one task's (``task_id``) or one job's (``job_id``)."""
    if sum(value is not None for value in (task_id, job_id, project_id)) > 1:
        raise BadRequest("job_id, task_id and project_id parameters cannot be used together")  # CVAT's words
    if project_id is not None:
        raise NotFound(f"project {project_id} does not exist: this server has no projects")
    if job_id is not None:
        task_ids = [store.get_job(job_id)["task_id"]]
    elif task_id is not None:
        task_ids = [task_id]
    else:
        task_ids = store.task_ids()
    labels = [rest_shapes.label(label, task["id"]) for task in map(store.get_task, task_ids)
              for label in task["labels"]]
    return rest_shapes.page(labels, request.url, page, page_size)


@router.get("/api/labels/{label_id}")
def get_label(label_id: Id, store: TaskStore) -> dict:
    """A label, or a sublabel (``has_parent``, ``parent_id`` its skeleton)."""
    task = store.get_task(store.label_task(label_id))
    for top in task["labels"]:
        for label in (top, *top["sublabels"]):
            if label["id"] == label_id:
                return rest_shapes.label(label, task["id"])
    raise NotFound(f"label {label_id} does not exist")
