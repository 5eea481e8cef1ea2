"""``/api/server/about``: what this server is, as CVAT's About (docs/wire-format.md §3.9.7). Open,
as CVAT's: clients ask before they log in."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["server"])

# The cvat-sdk release this server's CVAT REST API is tested with (tests/test_cvat_rest.py runs
# that SDK and its cvat-cli against it). cvat-sdk compares it with its own version and warns, or
# with allow_unsupported_server=False refuses, unless they share the major and minor numbers.
CVAT_API_VERSION = "2.80.0"


@router.get("/api/server/about")
def about() -> dict:
    return {
        "name": "cvat-autoannotate dispatcher",
        "description": "A self-hosted auto-annotation back end, not CVAT: CVAT's /api/lambda API, and a task store "
                       "that serves the part of CVAT's REST API cvat-sdk and cvat-cli use for tasks, labels, jobs, "
                       "frames and annotations. version is the cvat-sdk release that part is tested with.",
        "version": CVAT_API_VERSION,
        "logo_url": "",
        "subtitle": "CVAT-compatible auto-annotation (standalone task store)",
    }
