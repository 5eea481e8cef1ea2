"""``/api/tasks``: tasks and their frames in CVAT's REST shapes (TaskRead, DataMetaRead, chunks),
as cvat-sdk reads them (docs/wire-format.md §3.9)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from stream_zip import NO_COMPRESSION_32, stream_zip

from dispatcher import rest_shapes
from dispatcher.dependencies import Requests, TaskStore, authenticate
from dispatcher.errors import BadRequest
from dispatcher.request_book import FINAL_STATES, Conflict
from dispatcher.schemas import GUARDED, MAX_ID, Id, NewTask, error_responses
from dispatcher.store import NotFound

router = APIRouter(tags=["tasks"], dependencies=[Depends(authenticate)], responses=error_responses(*GUARDED))
Page = Annotated[int, Query(ge=1)]
PageSize = Annotated[int, Query(ge=1, le=rest_shapes.MAX_PAGE_SIZE)]
BY_ID = error_responses(404)


@router.post("/api/tasks", status_code=201)
def create_task(body: NewTask, store: TaskStore, request: Request) -> dict:
    task = store.create_task(body.name, body.labels, body.segment_size)
    return rest_shapes.task_read(task, rest_shapes.base_url(request))


@router.get("/api/tasks")
def list_tasks(store: TaskStore, request: Request, page: Page = 1, page_size: PageSize = rest_shapes.PAGE_SIZE) -> dict:
    """CVAT's paginated list of TaskRead."""
    base = rest_shapes.base_url(request)
    tasks = [rest_shapes.task_read(task, base) for task in store.list_tasks()]
    return rest_shapes.page(tasks, request.url, page, page_size)


@router.get("/api/tasks/{task_id}", responses=BY_ID)
def get_task(task_id: Id, store: TaskStore, request: Request) -> dict:
    return rest_shapes.task_read(store.get_task(task_id), rest_shapes.base_url(request))


@router.delete("/api/tasks/{task_id}", status_code=204, responses=error_responses(404, 409))
def delete_task(task_id: Id, store: TaskStore, book: Requests) -> Response:
    running = [r["id"] for r in book.list() if r["task"] == task_id and r["status"] not in FINAL_STATES]
    if running:
        raise Conflict(f"task {task_id} has a running request ({running[0]}); cancel it first")
    store.delete_task(task_id)
    return Response(status_code=204)


@router.post("/api/tasks/{task_id}/data", responses=BY_ID)
@router.post("/api/tasks/{task_id}/data/", include_in_schema=False)  # cvat-sdk's spelling
async def add_data(task_id: Id, request: Request, store: TaskStore) -> dict:
    """Frames, appended in order: multipart ``client_files[<n>]`` uploads, or ``server_files[<n>]``
    paths under SERVER_FILES_ROOT (as a form or a JSON body ``{"server_files": [...]}``). Answers
    the task (CVAT answers a background request's id: here the frames are in when it answers)."""
    uploads, paths = await _data_fields(request)
    if uploads and paths:
        raise BadRequest("client_files and server_files: give one or the other, not both")
    if uploads:
        store.add_frames(task_id, uploads)
    elif paths:
        store.add_server_files(task_id, paths)
    else:
        raise BadRequest("client_files or server_files: at least one file is required")
    return rest_shapes.task_read(store.get_task(task_id), rest_shapes.base_url(request))


@router.get("/api/tasks/{task_id}/data",
            responses={200: {"content": {"image/*": {}, "application/zip": {}},
                             "description": "a frame's file as uploaded, or a chunk: a ZIP of its frames' files"},
                       **BY_ID})
@router.get("/api/tasks/{task_id}/data/", include_in_schema=False)  # cvat-sdk's spelling
def get_data(task_id: Id, number: Annotated[int, Query(ge=0, le=MAX_ID)], store: TaskStore,
             type: Literal["frame", "chunk"] = "frame",
             quality: Literal["original", "compressed"] = "original") -> Response:
    """``type=frame``: frame ``number``'s file as stored. ``type=chunk``: frames ``number * 32`` to
    ``number * 32 + 31`` (fewer in the last chunk) as a ZIP of their files as stored, in frame order,
    uncompressed (ZIP_STORED: images are compressed already). Both qualities are the same files."""
    if type == "chunk":
        return _chunk(store, task_id, number)
    files = store.frame_files(task_id, number, number)  # frames are kept as uploaded: one quality
    if not files:
        raise NotFound(f"task {task_id} has no frame {number}")
    path = files[0][2]
    # Only the header is read, for the type; the file is sent from disk, never held whole.
    try:
        with Image.open(path) as image:
            media_type = Image.MIME.get(image.format or "", "application/octet-stream")
    except FileNotFoundError:
        raise NotFound(f"number: frame {number} of task {task_id}: its file is gone from the disk") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadRequest(f"number: frame {number} of task {task_id}: its stored file is no longer an image "
                         f"({type_name(error)})") from None
    return FileResponse(path, media_type=media_type)


def type_name(error: Exception) -> str:
    """What went wrong reading a stored file, without its path."""
    return getattr(error, "strerror", None) or type(error).__name__


def _chunk(store, task_id: int, number: int) -> Response:
    size = store.get_task(task_id)["size"]
    chunks = rest_shapes.chunk_count(size)
    if not 0 <= number < chunks:
        have = f"chunks 0..{chunks - 1}" if chunks else "no chunks (no frames)"
        raise BadRequest(f"number: task {task_id} has {have} of {rest_shapes.DATA_CHUNK_SIZE} frames, "
                         f"not chunk {number}")
    first = number * rest_shapes.DATA_CHUNK_SIZE
    opened = []
    # Opened before the answer starts, so a missing file is a 404 and not a ZIP cut short.
    for frame, _name, path in store.frame_files(task_id, first, min(first + rest_shapes.DATA_CHUNK_SIZE, size) - 1):
        try:
            opened.append((frame, path.suffix.lower(), path.open("rb")))
        except OSError as error:
            for *_, file in opened:
                file.close()
            raise NotFound(f"number: frame {frame} of task {task_id}: its file cannot be read "
                           f"({type_name(error)})") from None
    disposition = f'attachment; filename="task_{task_id}_chunk_{number}.zip"'
    return StreamingResponse(_zip_stream(opened), media_type="application/zip",
                             headers={"Content-Disposition": disposition})


def _zip_stream(opened) -> Iterator[bytes]:
    """A ZIP of the open files, one stored member per frame (``<frame>.<ext>``), written as it goes:
    only one frame is in memory at a time. Each member's size and CRC are in its local header, as in
    CVAT's chunks, so a reader can take the members while the rest is still arriving."""
    now = datetime.now()
    try:
        yield from stream_zip(((f"{frame:06d}{suffix}", now, stat.S_IFREG | 0o644, NO_COMPRESSION_32, (file.read(),))
                               for frame, suffix, file in opened))
    finally:
        for *_, file in opened:
            file.close()


@router.get("/api/tasks/{task_id}/data/meta", responses=BY_ID)
def get_frames_meta(task_id: Id, store: TaskStore) -> dict:
    """CVAT's DataMetaRead: the frames' names and sizes (EXIF orientation applied)."""
    return rest_shapes.data_meta(store.get_task(task_id), store.frames_meta(task_id))


async def _data_fields(request: Request) -> tuple[list[tuple[str, bytes]], list[str]]:
    """``client_files[<n>]`` (or ``client_files``) uploads and ``server_files[<n>]`` paths, in n order."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except ValueError as error:
            raise BadRequest(f"body: not JSON ({error})") from None
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
