"""``/api/users/self``: the one user this server has, in CVAT's User shape: whoever holds
``API_TOKEN`` (or a session made with it) is this admin (docs/wire-format.md §3.9.7)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from dispatcher import rest_shapes
from dispatcher.dependencies import authenticate
from dispatcher.schemas import GUARDED, error_responses

router = APIRouter(tags=["users"], dependencies=[Depends(authenticate)], responses=error_responses(*GUARDED))
USER_ID = 1
USERNAME = "admin"


@router.get("/api/users/self")
def current_user(request: Request) -> dict:
    return {"url": f"{rest_shapes.base_url(request)}/api/users/{USER_ID}", "id": USER_ID, "username": USERNAME,
            "first_name": "", "last_name": "", "email": "", "groups": ["admin"],
            "is_staff": True, "is_superuser": True, "is_active": True}
