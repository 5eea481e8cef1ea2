"""What needs no token: the liveness check and the web UI's entry (its files are mounted by the app)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

router = APIRouter()


@router.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/health", tags=["service"])
def health() -> dict:
    """Liveness, without authentication: the API answers."""
    return {"status": "ok"}
