"""``/api/tasks`` and ``/api/jobs``: tasks, their frames and jobs, in CVAT's REST shapes."""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from dispatcher.dependencies import Requests, TaskStore, require_token
from dispatcher.errors import BadRequest
from dispatcher.request_book import FINAL_STATES, Conflict
from dispatcher.schemas import NewTask

router = APIRouter(tags=["tasks"], dependencies=[Depends(require_token)])


@router.post("/api/tasks", status_code=201)
def create_task(body: NewTask, store: TaskStore) -> dict:
    return store.create_task(body.name, body.labels, body.segment_size)


@router.get("/api/tasks")
def list_tasks(store: TaskStore, page: Annotated[int, Query(ge=1)] = 1,
               page_size: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
    """CVAT's paginated list shape."""
    tasks = store.list_tasks()
    start = (page - 1) * page_size
    return {"count": len(tasks), "next": None if start + page_size >= len(tasks) else page + 1,
            "previous": page - 1 if page > 1 else None, "results": tasks[start:start + page_size]}


@router.get("/api/tasks/{task_id}")
def get_task(task_id: int, store: TaskStore) -> dict:
    return store.get_task(task_id)


@router.delete("/api/tasks/{task_id}", status_code=204)
def delete_task(task_id: int, store: TaskStore, book: Requests) -> Response:
    running = [r["id"] for r in book.list() if r["task"] == task_id and r["status"] not in FINAL_STATES]
    if running:
        raise Conflict(f"task {task_id} has a running request ({running[0]}); cancel it first")
    store.delete_task(task_id)
    return Response(status_code=204)


@router.post("/api/tasks/{task_id}/data")
async def add_data(task_id: int, request: Request, store: TaskStore) -> dict:
    """Frames, appended in order: multipart ``client_files[<n>]`` uploads, or ``server_files[<n>]``
    paths under SERVER_FILES_ROOT (as a form or a JSON body ``{"server_files": [...]}``)."""
    uploads, paths = await _data_fields(request)
    if uploads and paths:
        raise BadRequest("client_files and server_files: give one or the other, not both")
    if uploads:
        store.add_frames(task_id, uploads)
    elif paths:
        store.add_server_files(task_id, paths)
    else:
        raise BadRequest("client_files or server_files: at least one file is required")
    return store.get_task(task_id)


@router.get("/api/tasks/{task_id}/data",
            responses={200: {"content": {"image/*": {}}, "description": "the frame's file as uploaded"}})
def get_frame(task_id: int, number: int, store: TaskStore, type: str = "frame", quality: str = "original") -> Response:
    if type != "frame":
        raise BadRequest(f"type: only 'frame' is served, got {type!r}")
    if quality not in ("original", "compressed"):
        raise BadRequest(f"quality: must be original or compressed, got {quality!r}")
    data = store.frame_bytes(task_id, number)  # frames are kept as uploaded: one quality
    with Image.open(io.BytesIO(data)) as image:
        media_type = Image.MIME.get(image.format or "", "application/octet-stream")
    return Response(data, media_type=media_type)


@router.get("/api/tasks/{task_id}/data/meta")
def get_frames_meta(task_id: int, store: TaskStore) -> dict:
    return store.frames_meta(task_id)


@router.get("/api/jobs/{job_id}")
def get_job(job_id: int, store: TaskStore) -> dict:
    return store.get_job(job_id)


async def _data_fields(request: Request) -> tuple[list[tuple[str, bytes]], list[str]]:
    """``client_files[<n>]`` (or ``client_files``) uploads and ``server_files[<n>]`` paths, in n order."""
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await request.json()
        paths = body.get("server_files") if isinstance(body, dict) else None
        if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
            raise BadRequest("server_files: must be a list of paths")
        return [], paths
    try:
        form = await request.form(max_files=100_000, max_fields=100_000, max_part_size=64 * 1024 * 1024)
    except (AssertionError, HTTPException) as error:  # not multipart or urlencoded, or malformed
        raise BadRequest(f"body: expected multipart/form-data with client_files or server_files ({error})") from None
    uploads, paths = [], []
    for key, value in sorted(form.multi_items(), key=lambda item: _field_order(item[0])):
        field = key.split("[", 1)[0]
        if field == "client_files":
            if not isinstance(value, UploadFile):
                raise BadRequest(f"{key}: must be a file")
            uploads.append((value.filename or key, await value.read()))
        elif field == "server_files":
            if not isinstance(value, str):
                raise BadRequest(f"{key}: must be a path, not a file")
            paths.append(value)
    return uploads, paths


def _field_order(key: str) -> tuple[str, int]:
    name, _, index = key.partition("[")
    index = index.rstrip("]")
    return name, int(index) if index.isdigit() else -1
