"""The task store's records in CVAT's REST shapes, as cvat-sdk's generated models read them
(docs/wire-format.md §3.9): TaskRead, Label, JobRead, DataMetaRead and CVAT's paginated lists.

cvat-sdk checks the type of every field it knows: a null where its model wants an object or a
string fails the whole answer, so a field we cannot fill truthfully is left out rather than sent
empty (owner, assignee, storages). Unknown fields are kept by its models (``additional_properties``),
so ours ride along: a task's ``annotations_count``, a sublabel's ``parent_id``.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.datastructures import URL
from starlette.requests import Request

# Frames per chunk of ``GET /api/tasks/<id>/data?type=chunk``. cvat-sdk's TaskDataset downloads
# every chunk it needs, four at a time, and finds frame f as member f % 32 of chunk f // 32. 32
# photos of a few MB are a download worth a request, yet small enough that a chunk of 100-megapixel
# frames stays a few hundred MB, and that the SDK's chunk-by-chunk iteration starts soon. Fixed
# for good: the SDK's cache keeps chunk files until the task's updated_date changes.
DATA_CHUNK_SIZE = 32
CHUNK_TYPE = "imageset"  # a ZIP of the frames' own files, both qualities (frames are kept as uploaded)
IMAGE_QUALITY = 100  # the "compressed" chunks are the original files
PAGE_SIZE = 100  # a list's page_size when none is given (CVAT's is 10; ours has been 100 since /api/tasks)
MAX_PAGE_SIZE = 1000


def base_url(request: Request) -> str:
    """The server's URL as the caller reached it (no trailing slash), for CVAT's ``url`` fields."""
    return str(request.base_url).rstrip("/")


def chunk_count(size: int) -> int:
    return -(-size // DATA_CHUNK_SIZE)


def task_read(task: dict, base: str) -> dict:
    """CVAT's TaskRead. ``base`` is the server's URL as the caller reached it (no trailing slash)."""
    task_id = task["id"]
    return {
        "url": f"{base}/api/tasks/{task_id}",
        "id": task_id,
        "name": task["name"],
        "project_id": None,
        "organization": None,  # cvat-sdk reads it to list the task's labels and jobs
        "guide_id": None,
        "mode": "annotation",
        "dimension": "2d",
        "media_type": "image",
        "status": "annotation",
        "subset": "",
        "bug_tracker": "",
        "overlap": 0,
        # CVAT stores the segment size it used: a task made without one has one job of every frame.
        "segment_size": task["segment_size"] or task["size"],
        "size": task["size"],
        "image_quality": IMAGE_QUALITY,
        "data_chunk_size": DATA_CHUNK_SIZE,
        "data_original_chunk_type": CHUNK_TYPE,
        "data_compressed_chunk_type": CHUNK_TYPE,
        "created_date": task["created_date"],
        "updated_date": task["updated_date"],
        "labels": {"url": f"{base}/api/labels?{urlencode({'task_id': task_id})}"},
        "jobs": {"count": len(task["jobs"]), "completed": 0, "validation": 0,
                 "url": f"{base}/api/jobs?{urlencode({'task_id': task_id})}"},
        "annotations_count": task["annotations_count"],  # ours: tags, shapes and tracks stored
    }


def label(record: dict, task_id: int) -> dict:
    """CVAT's Label: a top-level label with its sublabels (CVAT's Sublabel, plus our ``parent_id``),
    or a sublabel on its own (``has_parent``, ``parent_id`` its skeleton)."""
    return {
        "id": record["id"], "name": record["name"], "type": record["type"],
        "attributes": [attribute(a) for a in record["attributes"]],
        "sublabels": [{"id": sub["id"], "name": sub["name"], "type": sub["type"],
                       "attributes": [attribute(a) for a in sub["attributes"]],
                       "has_parent": True, "parent_id": record["id"]} for sub in record["sublabels"]],
        "svg": record["svg"], "has_parent": record["parent_id"] is not None,
        "parent_id": record["parent_id"], "task_id": task_id,
    }


def attribute(record: dict) -> dict:
    return {key: record[key] for key in ("id", "name", "mutable", "input_type", "default_value", "values")}


def job_read(job: dict, task: dict, base: str) -> dict:
    """CVAT's JobRead. Jobs keep no dates of their own: they change with their task."""
    job_id = job["id"]
    return {
        "url": f"{base}/api/jobs/{job_id}",
        "id": job_id,
        "task_id": task["id"],
        "project_id": None,
        "guide_id": None,
        "organization": None,
        "type": "annotation",
        "status": "annotation",
        "stage": "annotation",
        "state": "new",
        "mode": "annotation",
        "dimension": "2d",
        "media_type": "image",
        "start_frame": job["start_frame"],
        "stop_frame": job["stop_frame"],
        "frame_count": job["stop_frame"] - job["start_frame"] + 1,
        "data_chunk_size": DATA_CHUNK_SIZE,
        "data_original_chunk_type": CHUNK_TYPE,
        "data_compressed_chunk_type": CHUNK_TYPE,
        "created_date": task["created_date"],
        "updated_date": task["updated_date"],
        "labels": {"url": f"{base}/api/labels?{urlencode({'job_id': job_id})}"},
        "issues": {"count": 0},  # no issues here, and no /api/issues to point at
        "parent_job_id": None,
        "consensus_replicas": 0,
    }


def data_meta(task: dict, frames_meta: dict) -> dict:
    """CVAT's DataMetaRead of the task's frames (``Store.frames_meta``)."""
    return {
        **frames_meta,
        "frames": [{"name": frame["name"], "width": frame["width"], "height": frame["height"],
                    "related_files": 0, "has_related_context": False} for frame in frames_meta["frames"]],
        "chunk_size": DATA_CHUNK_SIZE,
        "image_quality": IMAGE_QUALITY,
        "chunks_updated_date": task["data_updated_date"],
    }


def page(items: list, url: URL, page_number: int, page_size: int) -> dict:
    """CVAT's paginated list: ``{count, next, previous, results}``, next and previous as URLs of
    the same query (null at the ends)."""
    start = (page_number - 1) * page_size

    def link(number: int) -> str:
        return str(url.include_query_params(page=number))

    return {"count": len(items),
            "next": link(page_number + 1) if start + page_size < len(items) else None,
            "previous": link(page_number - 1) if page_number > 1 else None,
            "results": items[start:start + page_size]}
