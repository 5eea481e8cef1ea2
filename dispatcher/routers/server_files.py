"""``/api/server/share``: folders under ``SERVER_FILES_ROOT``, as CVAT lists them."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dispatcher.dependencies import TaskStore, authenticate
from dispatcher.schemas import GUARDED, error_responses

router = APIRouter(tags=["tasks"], dependencies=[Depends(authenticate)], responses=error_responses(*GUARDED, 404))


@router.get("/api/server/share")
def list_server_files(store: TaskStore, directory: str = "/") -> list[dict]:
    """``[{name, type: DIR or REG, mime_type}]``, folders first."""
    return store.server_files.listing(directory)
