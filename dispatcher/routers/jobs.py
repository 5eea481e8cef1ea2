"""``/api/jobs``: the tasks' jobs (segments of ``segment_size`` frames) in CVAT's JobRead shape,
paginated (docs/wire-format.md §3.9.4). Their annotations are in ``annotations.py``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from dispatcher import rest_shapes
from dispatcher.dependencies import TaskStore, authenticate
from dispatcher.schemas import GUARDED, MAX_ID, Id, error_responses

router = APIRouter(tags=["jobs"], dependencies=[Depends(authenticate)], responses=error_responses(*GUARDED, 404))


@router.get("/api/jobs")
def list_jobs(store: TaskStore, request: Request,
              task_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="the task's jobs")] = None,
              page: Annotated[int, Query(ge=1)] = 1,
              page_size: Annotated[int, Query(ge=1, le=rest_shapes.MAX_PAGE_SIZE)] = rest_shapes.PAGE_SIZE) -> dict:
    """Every job, or the task's, in id order."""
    tasks: dict[int, dict] = {}
    base = rest_shapes.base_url(request)
    jobs = []
    for job in store.list_jobs(task_id):
        if job["task_id"] not in tasks:
            tasks[job["task_id"]] = store.get_task(job["task_id"])
        jobs.append(rest_shapes.job_read(job, tasks[job["task_id"]], base))
    return rest_shapes.page(jobs, request.url, page, page_size)


@router.get("/api/jobs/{job_id}")
def get_job(job_id: Id, store: TaskStore, request: Request) -> dict:
    job = store.get_job(job_id)
    return rest_shapes.job_read(job, store.get_task(job["task_id"]), rest_shapes.base_url(request))
