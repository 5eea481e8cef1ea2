"""Where tasks live: the local task store (SQLite or PostgreSQL), or a CVAT server (``CVAT_URL``)."""

from __future__ import annotations

from dispatcher.cvat.client import CvatClient
from dispatcher.cvat.store import CvatStore
from dispatcher.settings import Settings
from dispatcher.store import Store


def open_store(settings: Settings, *, worker: bool) -> Store | CvatStore:
    """The task store this deployment uses. ``worker``: a chunk worker, which reads every frame of a
    target (from CVAT: by chunks, read ahead) rather than one frame per online call."""
    if settings.cvat_url is None:
        return Store(settings.database_url, settings.data_dir, settings.server_files_root, settings.max_image_pixels)
    client = CvatClient(settings.cvat_url, settings.cvat_timeout, token=settings.cvat_token,
                        username=settings.cvat_username, password=settings.cvat_password)
    return CvatStore(client, settings.database_url, settings.data_dir, settings.auth_cache_seconds, chunks=worker)
