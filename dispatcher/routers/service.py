"""What needs no token: the liveness check and the web UI's entry (its files are mounted by the app)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

router = APIRouter()


@router.get("/", include_in_schema=False)
def home(request: Request) -> RedirectResponse:
    # In front of CVAT there is no web UI here (CVAT's is the UI): the API's own pages instead.
    return RedirectResponse("/docs" if request.app.state.services.settings.cvat_url else "/ui/")


@router.get("/health", tags=["service"])
def health() -> dict:
    """Liveness, without authentication: the API answers."""
    return {"status": "ok"}
