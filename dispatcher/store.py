"""The task store of the dispatcher's standalone mode (architecture.md "Task store"): tasks, labels,
jobs, frames, annotations and their exports, on SQLite by default and PostgreSQL through a URL.

SQLAlchemy Core (tables and explicit statements) gives one code path for both databases. Frames
are kept as the bytes uploaded, or read from under the server files root, so the dispatcher never
re-encodes them. Annotations are CVAT's LabeledData (cvat-compat.md 3.6, 4.6, 4.7): one row per
tag, shape or track, its frame and label in columns and the rest as JSON. ``write_results`` is
what the RQ workers call: idempotent per (request, frame), with a request's cleanup done once.
"""

from __future__ import annotations

import json
import math
import posixpath
import shutil
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path, PurePath

import numpy as np
from sqlalchemy import (JSON, Boolean, Column, DateTime, ForeignKey, Index, Integer, MetaData, String, Table, Text,
                        create_engine, delete, event, func, insert, or_, select, text, update)
from sqlalchemy.dialects import postgresql, sqlite

from dispatcher import tracks
from dispatcher.converter import BadFunctionOutput, TaskAttribute, TaskLabel
from dispatcher.converter import checked_points, is_int, is_number
from serverless.common import masks
from serverless.common import settings as function_settings
from serverless.common.handler import BadRequest
from serverless.common.images import open_image
from serverless.common.metadata import SHAPE_TYPES, MetadataError, parse_label_spec


class NotFound(LookupError):
    """No such task, job or frame (the API answers 404)."""


class InvalidInput(ValueError):
    """A request the store refuses (the API answers 400); the message starts with the field."""


class StaleRun(Exception):
    """A write from a run its request id no longer names: nothing was written."""


metadata = MetaData()

# sqlite_autoincrement: ids are never reused after a delete, as in CVAT.
tasks = Table(
    "tasks", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String, nullable=False),
    Column("segment_size", Integer),  # None: one job with every frame
    Column("created_date", DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,
)
labels = Table(
    "labels", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("parent_id", ForeignKey("labels.id", ondelete="CASCADE")),  # a skeleton's sublabels
    Column("position", Integer, nullable=False),
    Column("name", String, nullable=False),
    Column("type", String, nullable=False),
    Column("svg", Text),
    sqlite_autoincrement=True,
)
attributes = Table(
    "attributes", metadata,
    Column("id", Integer, primary_key=True),
    Column("label_id", ForeignKey("labels.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("name", String, nullable=False),
    Column("input_type", String, nullable=False),
    Column("mutable", Boolean, nullable=False),
    Column("default_value", String, nullable=False),
    Column("values", JSON, nullable=False),
    sqlite_autoincrement=True,
)
jobs = Table(
    "jobs", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("start_frame", Integer, nullable=False),
    Column("stop_frame", Integer, nullable=False),  # inclusive, as CVAT's
    sqlite_autoincrement=True,
)
frames = Table(
    "frames", metadata,
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("frame", Integer, primary_key=True),
    Column("name", String, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    # An upload: relative to data_dir. A server file: relative to the server files root.
    Column("path", String, nullable=False),
    Column("server_file", Boolean, nullable=False),
)
annotations = Table(
    "annotations", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String, nullable=False),  # "tags", "shapes" or "tracks", as LabeledData names them
    Column("frame", Integer, nullable=False),  # a track's first frame
    Column("label_id", ForeignKey("labels.id", ondelete="CASCADE"), nullable=False),
    Column("request_id", String),  # the request whose results these are, until it is forgotten
    Column("content", JSON, nullable=False),  # the item as get_annotations returns it, less its id
    Index("annotations_task_frame", "task_id", "frame"),
    Index("annotations_request_frame", "request_id", "frame"),
    sqlite_autoincrement=True,
)
# One row per request whose cleanup has run: inserting it is what claims the cleanup.
requests_cleanup = Table(
    "requests_cleanup", metadata,
    Column("request_id", String, primary_key=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
)
# The run each request id names now: a chunk of any other run of that id (canceled, or on a host
# that lost its link) writes nothing. The row lock serialises a new run's start and the old run's
# last writes, so each write lands either before the new run took over or not at all.
request_runs = Table(
    "request_runs", metadata,
    Column("request_id", String, primary_key=True),
    Column("run", String, nullable=False),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("tracks_written", Boolean, nullable=False),  # ReID: its tracks replaced the rectangles
)
# The frames a request has written results for, with no shapes too; the row lock serialises two
# writers of one (request, frame).
request_frames = Table(
    "request_frames", metadata,
    Column("request_id", String, primary_key=True),
    Column("frame", Integer, primary_key=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
)

KINDS = ("tags", "shapes", "tracks")
PATCH_ACTIONS = ("create", "update", "delete")
# What server-file listings call an image (Pillow opens more; these are what people keep photos in).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
SHAPE_AND_SKELETON_TYPES = (*SHAPE_TYPES, "skeleton")
_SPEC_FIELD = "metadata.annotations.spec"  # how parse_label_spec names the label list in its messages
_BATCH = 5000  # frames per IN (...) list, well below SQLite's and PostgreSQL's parameter limits


def _engine(database_url: str):
    if not database_url.startswith("sqlite"):
        return create_engine(database_url, pool_pre_ping=True)
    engine = create_engine(database_url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # SQLAlchemy, not pysqlite, decides where transactions begin (pysqlite would begin only at
        # the first write, leaving earlier reads outside the transaction).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")  # readers do not wait for a writer
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # Take the write lock up front: two deferred transactions that both read and then write
        # would fail with "database is locked" instead of waiting for each other.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    def __init__(self, database_url: str | None, data_dir: Path, server_files_root: Path | None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server_files_root = None if server_files_root is None else Path(server_files_root).resolve()
        self._engine = _engine(database_url or f"sqlite:///{self.data_dir / 'dispatcher.sqlite3'}")
        self._postgres = self._engine.dialect.name == "postgresql"
        with self._engine.begin() as connection:
            if self._postgres:  # workers starting together would race to create the same tables
                connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('dispatcher.store'))"))
            metadata.create_all(connection)

    def close(self) -> None:
        self._engine.dispose()

    def _upsert(self, table: Table):
        """INSERT that can take an ON CONFLICT clause: both dialects spell it alike."""
        return (postgresql.insert if self._postgres else sqlite.insert)(table)

    # Tasks

    def create_task(self, name: str, labels: list[dict], segment_size: int | None = None) -> dict:
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput("name: required, a non-empty string")
        if segment_size is not None and (isinstance(segment_size, bool) or not isinstance(segment_size, int)
                                         or segment_size < 1):
            raise InvalidInput(f"segment_size: must be a positive integer or null, got {segment_size!r}")
        checked = _checked_labels(labels)
        with self._engine.begin() as connection:
            task_id = connection.execute(insert(tasks).values(
                name=name, segment_size=segment_size, created_date=datetime.now(timezone.utc))).inserted_primary_key[0]
            _insert_labels(connection, task_id, checked, parent_id=None)
        return self.get_task(task_id)

    def get_task(self, task_id: int) -> dict:
        with self._engine.begin() as connection:
            task = _task_row(connection, task_id)
            size = _task_size(connection, task_id)
            annotation_count = connection.execute(select(func.count()).select_from(annotations).where(
                annotations.c.task_id == task_id)).scalar_one()
            label_rows = connection.execute(
                select(labels).where(labels.c.task_id == task_id).order_by(labels.c.position)).all()
            attribute_rows = connection.execute(
                select(attributes).join(labels).where(labels.c.task_id == task_id)
                .order_by(attributes.c.position)).all()
            job_rows = connection.execute(
                select(jobs.c.id, jobs.c.start_frame, jobs.c.stop_frame).where(jobs.c.task_id == task_id)
                .order_by(jobs.c.start_frame)).all()

        attributes_of: dict[int, list[dict]] = {}
        for row in attribute_rows:
            attributes_of.setdefault(row.label_id, []).append(
                {"id": row.id, "name": row.name, "input_type": row.input_type, "mutable": row.mutable,
                 "default_value": row.default_value, "values": list(row.values)})

        def label_dict(row) -> dict:
            return {"id": row.id, "name": row.name, "type": row.type, "parent_id": row.parent_id,
                    "attributes": attributes_of.get(row.id, []),
                    "sublabels": [label_dict(child) for child in label_rows if child.parent_id == row.id],
                    "svg": row.svg or ""}

        return {
            "id": task.id, "name": task.name, "size": size, "segment_size": task.segment_size,
            "annotations_count": annotation_count,  # ours: tags, shapes and tracks stored
            "created_date": _iso(task.created_date),
            "labels": [label_dict(row) for row in label_rows if row.parent_id is None],
            "jobs": [{"id": job.id, "start_frame": job.start_frame, "stop_frame": job.stop_frame} for job in job_rows],
        }

    def list_tasks(self) -> list[dict]:
        with self._engine.begin() as connection:
            task_ids = connection.execute(select(tasks.c.id).order_by(tasks.c.id)).scalars().all()
        return [self.get_task(task_id) for task_id in task_ids]

    def delete_task(self, task_id: int) -> None:
        with self._engine.begin() as connection:
            _task_row(connection, task_id)
            connection.execute(delete(tasks).where(tasks.c.id == task_id))  # the rest cascades
        shutil.rmtree(self._task_dir(task_id), ignore_errors=True)

    def task_labels(self, task_id: int) -> tuple[TaskLabel, ...]:
        """The task's labels as the converter takes them."""

        def task_label(label: dict) -> TaskLabel:
            return TaskLabel(label["id"], label["name"], label["type"],
                             tuple(TaskAttribute(a["id"], a["name"], a["input_type"], tuple(a["values"]))
                                   for a in label["attributes"]),
                             tuple(task_label(sublabel) for sublabel in label["sublabels"]))

        return tuple(task_label(label) for label in self.get_task(task_id)["labels"])

    # Jobs

    def get_job(self, job_id: int) -> dict:
        with self._engine.begin() as connection:
            job = connection.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        return {"id": job.id, "task_id": job.task_id, "start_frame": job.start_frame, "stop_frame": job.stop_frame}

    def job_frames(self, job_id: int) -> list[int]:
        job = self.get_job(job_id)
        return list(range(job["start_frame"], job["stop_frame"] + 1))

    # Frames

    def add_frames(self, task_id: int, files: list[tuple[str, bytes]]) -> None:
        """Append uploaded images, in the order given."""
        if not isinstance(files, list) or not files:
            raise InvalidInput("files: at least one image is required")
        limit = function_settings.current().max_image_pixels
        new_frames = []
        for index, (name, data) in enumerate(files):
            if not isinstance(name, str) or not name:
                raise InvalidInput(f"files[{index}]: the file name must be a non-empty string")
            width, height, image_format = _image_size(data, f"files[{index}] ({name!r})", limit)
            suffix = PurePath(name).suffix.lower()
            if not suffix[1:].isalnum():  # no or odd extension: name the file after its format
                suffix = "." + image_format.lower()
            new_frames.append({"name": name, "width": width, "height": height, "server_file": False,
                               "data": data, "suffix": suffix})
        self._append_frames(task_id, new_frames, "files")

    def add_server_files(self, task_id: int, paths: list[str]) -> None:
        """Append images under the server files root, named by their paths relative to it ('..'
        folded). They are read where they are, never copied."""
        if not isinstance(paths, list) or not paths:
            raise InvalidInput("paths: at least one path is required")
        limit = function_settings.current().max_image_pixels
        new_frames = []
        for index, path in enumerate(paths):
            where = f"paths[{index}] ({path!r})"
            resolved, relative = self._server_file(path, where)
            width, height, _ = _image_size(resolved.read_bytes(), where, limit)
            new_frames.append({"name": posixpath.normpath(path), "width": width, "height": height,
                               "server_file": True, "path": relative})
        self._append_frames(task_id, new_frames, "paths")

    def _server_file(self, path: str, where: str) -> tuple[Path, str]:
        """The file ``path`` names under the server files root, and its path relative to the root
        with links and '..' resolved; refuses anything that resolves outside the root."""
        if self.server_files_root is None:
            raise InvalidInput(f"{where}: server files are disabled (SERVER_FILES_ROOT is not set)")
        if not isinstance(path, str) or not path:
            raise InvalidInput(f"{where}: must be a non-empty path")
        if PurePath(path).is_absolute():
            raise InvalidInput(f"{where}: must be relative to the server files root")
        resolved = (self.server_files_root / path).resolve()
        if not resolved.is_relative_to(self.server_files_root):
            raise InvalidInput(f"{where}: resolves outside the server files root")
        if not resolved.is_file():
            raise InvalidInput(f"{where}: no such file under the server files root")
        return resolved, resolved.relative_to(self.server_files_root).as_posix()

    def list_server_files(self, directory: str) -> list[dict]:
        """One folder under the server files root in the shape of CVAT's ``/api/server/share``:
        ``{name, type: DIR|REG, mime_type}``, folders first; entries whose links lead outside the
        root are left out."""
        if self.server_files_root is None:
            raise InvalidInput("directory: server files are disabled (SERVER_FILES_ROOT is not set)")
        relative = directory.strip("/")
        if PurePath(relative).is_absolute() or ".." in PurePath(relative).parts:
            raise InvalidInput(f"directory: must be a folder under the server files root, got {directory!r}")
        folder = (self.server_files_root / relative).resolve()
        if not folder.is_relative_to(self.server_files_root) or not folder.is_dir():
            raise NotFound(f"directory: no folder {directory!r} under the server files root")
        entries = []
        for entry in folder.iterdir():
            resolved = entry.resolve()
            if not resolved.is_relative_to(self.server_files_root) or not (resolved.is_dir() or resolved.is_file()):
                continue
            if resolved.is_dir():
                entries.append({"name": entry.name, "type": "DIR", "mime_type": "DIR"})
            else:
                kind = "image" if entry.suffix.lower() in IMAGE_SUFFIXES else "unknown"
                entries.append({"name": entry.name, "type": "REG", "mime_type": kind})
        return sorted(entries, key=lambda entry: (entry["type"] != "DIR", entry["name"]))

    def _task_dir(self, task_id: int) -> Path:
        return self.data_dir / "tasks" / str(task_id)

    def _append_frames(self, task_id: int, new_frames: list[dict], field: str) -> None:
        written: list[Path] = []
        try:
            with self._engine.begin() as connection:
                # The row lock serialises appends to one task (SQLite's BEGIN IMMEDIATE already does).
                task = _task_row(connection, task_id, for_update=True)
                annotated = select(annotations.c.id).where(annotations.c.task_id == task_id).limit(1)
                if connection.execute(annotated).first():
                    raise InvalidInput(f"{field}: task {task_id} already has annotations; "
                                       "frames can only be added before annotating")
                first = _task_size(connection, task_id)
                rows = []
                for frame, new in enumerate(new_frames, first):
                    path = new.get("path")
                    if not new["server_file"]:
                        file = self._task_dir(task_id) / "frames" / f"{frame}{new['suffix']}"
                        file.parent.mkdir(parents=True, exist_ok=True)
                        file.write_bytes(new["data"])
                        written.append(file)
                        path = file.relative_to(self.data_dir).as_posix()
                    rows.append({"task_id": task_id, "frame": frame, "name": new["name"], "width": new["width"],
                                 "height": new["height"], "path": path, "server_file": new["server_file"]})
                connection.execute(insert(frames), rows)
                _update_jobs(connection, task_id, first + len(rows), task.segment_size)
        except BaseException:
            for file in written:
                file.unlink(missing_ok=True)
            raise

    def frame_bytes(self, task_id: int, frame: int) -> bytes:
        """The frame's file as it was uploaded (or as it is on the server)."""
        with self._engine.begin() as connection:
            _task_row(connection, task_id)
            row = connection.execute(
                select(frames.c.path, frames.c.server_file)
                .where(frames.c.task_id == task_id, frames.c.frame == frame)).first()
        if row is None:
            raise NotFound(f"task {task_id} has no frame {frame}")
        if not row.server_file:
            return (self.data_dir / row.path).read_bytes()
        try:  # checked again: the root or a link may have changed since the file was added
            return self._server_file(row.path, f"frame {frame}")[0].read_bytes()
        except InvalidInput as error:
            raise NotFound(f"task {task_id}: {error}") from None

    def frame_size(self, task_id: int, frame: int) -> tuple[int, int]:
        """A frame's width and height as stored (EXIF orientation applied), without decoding it."""
        with self._engine.begin() as connection:
            _task_row(connection, task_id)
            row = connection.execute(select(frames.c.width, frames.c.height)
                                     .where(frames.c.task_id == task_id, frames.c.frame == frame)).first()
        if row is None:
            raise NotFound(f"task {task_id} has no frame {frame}")
        return row.width, row.height

    def frames_meta(self, task_id: int) -> dict:
        """The frame list in the shape of CVAT's ``/api/tasks/<id>/data/meta``."""
        with self._engine.begin() as connection:
            _task_row(connection, task_id)
            rows = connection.execute(select(frames.c.name, frames.c.width, frames.c.height)
                                      .where(frames.c.task_id == task_id).order_by(frames.c.frame)).all()
        return {"size": len(rows), "start_frame": 0, "stop_frame": len(rows) - 1, "frame_filter": "",
                "deleted_frames": [],
                "frames": [{"name": row.name, "width": row.width, "height": row.height} for row in rows]}

    # Annotations

    def get_annotations(self, task_id: int, job_id: int | None = None, frame: int | None = None) -> dict:
        """The task's (or a job's, or one frame's) annotations: tags and shapes on those frames, and
        the tracks visible on at least one of them."""
        with self._engine.begin() as connection:
            _task_row(connection, task_id)
            task_last = _task_size(connection, task_id) - 1
            first, last = 0, task_last
            if job_id is not None:
                job = connection.execute(select(jobs).where(jobs.c.id == job_id, jobs.c.task_id == task_id)).first()
                if job is None:
                    raise NotFound(f"task {task_id} has no job {job_id}")
                first, last = job.start_frame, job.stop_frame
            if frame is not None:
                first, last = max(first, frame), min(last, frame)
            whole = (first, last) == (0, task_last)
            query = select(annotations.c.id, annotations.c.kind, annotations.c.content).where(
                annotations.c.task_id == task_id)
            if not whole:
                # A track is filed under its first frame but may reach into the range from before it.
                query = query.where(annotations.c.frame <= last,
                                    or_(annotations.c.frame >= first, annotations.c.kind == "tracks"))
            rows = connection.execute(query.order_by(annotations.c.id)).all()
        if not whole:
            rows = [row for row in rows if row.kind != "tracks" or any(
                not shape["outside"] and first <= shape["frame"] <= last
                for shape in tracks.frames_of(row.content, task_last))]
        return _labeled_data(rows)

    def put_annotations(self, task_id: int, data: dict) -> dict:
        """Replace all of the task's annotations."""
        with self._engine.begin() as connection:
            items = _checked_data(data, _TaskContext.load(connection, task_id))
            connection.execute(delete(annotations).where(annotations.c.task_id == task_id))
            return _labeled_data(_insert_items(connection, task_id, items, request_id=None))

    def patch_annotations(self, task_id: int, data: dict, action: str) -> dict:
        """Create items (new ids), or update or delete items by id; returns the items affected."""
        if action not in PATCH_ACTIONS:
            raise InvalidInput(f"action: must be one of {', '.join(PATCH_ACTIONS)}, got {action!r}")
        with self._engine.begin() as connection:
            context = _TaskContext.load(connection, task_id)
            if action == "create":
                return _labeled_data(_insert_items(connection, task_id, _checked_data(data, context), request_id=None))
            if action == "delete":
                rows = []
                for batch in _batches([item_id for _, item_id in _item_ids(connection, task_id, data)]):
                    rows += connection.execute(select(annotations.c.id, annotations.c.kind, annotations.c.content)
                                               .where(annotations.c.id.in_(batch))).all()
                    connection.execute(delete(annotations).where(annotations.c.id.in_(batch)))
                return _labeled_data(sorted(rows))
            ids = _item_ids(connection, task_id, data)
            updated = []
            for (kind, item), (_, item_id) in zip(_checked_data(data, context), ids):
                # An edited item is the user's now: a rerun of its request must not replace it.
                connection.execute(update(annotations).where(annotations.c.id == item_id).values(
                    frame=item["frame"], label_id=item["label_id"], content=item, request_id=None))
                updated.append((item_id, kind, item))
            return _labeled_data(updated)

    def delete_annotations(self, task_id: int) -> None:
        with self._engine.begin() as connection:
            _task_row(connection, task_id)
            connection.execute(delete(annotations).where(annotations.c.task_id == task_id))

    # Results of annotation requests (the RQ workers)

    def write_results(self, request_id: str, run: str, task_id: int,
                      results: dict[int, tuple[list[dict], list[dict]]], cleanup_frames: list[int] | None) -> bool:
        """Write one chunk of a request's results, ``frame -> (tags, shapes)``, in one transaction.

        With ``cleanup_frames`` (the request's target frames), the first chunk of the request to
        get here deletes the annotations on those frames that the request did not write; later and
        concurrent chunks do not. A frame written again (a retried chunk) replaces what the request
        wrote there before. Returns whether this call did the cleanup. Raises StaleRun when ``run``
        is no longer the request's run.
        """
        with self._engine.begin() as connection:
            self._hold_run(connection, request_id, run)
            context = _TaskContext.load(connection, task_id)
            items = []
            for frame in sorted(results):
                context.check_frame(frame, f"results[{frame!r}]")
                tags, shapes = results[frame]
                for kind, kind_items in (("tags", tags), ("shapes", shapes)):
                    for index, item in enumerate(kind_items):
                        where = f"results[{frame}].{kind}[{index}]"
                        checked = _CHECKS[kind](item, where, context)
                        if checked["frame"] != frame:
                            raise InvalidInput(f"{where}.frame: {checked['frame']} is not the frame it is filed under")
                        items.append((kind, checked))

            cleaned = False
            if cleanup_frames is not None:
                # The primary key decides which chunk cleans: a concurrent insert of the same id
                # waits for this transaction and then finds the row (PostgreSQL), or waits for the
                # write lock (SQLite), so exactly one chunk ever gets the row back.
                claimed = connection.execute(
                    self._upsert(requests_cleanup).values(request_id=request_id, task_id=task_id)
                    .on_conflict_do_nothing().returning(requests_cleanup.c.request_id)).first()
                if claimed is not None:
                    cleaned = True
                    for batch in _batches(sorted(set(cleanup_frames))):
                        connection.execute(delete(annotations).where(
                            annotations.c.task_id == task_id, annotations.c.frame.in_(batch),
                            annotations.c.request_id.is_distinct_from(request_id)))
            if results:
                # Upserting (not skipping) locks each (request, frame) row, in frame order, so two
                # writers of the same frame take turns and the second replaces the first.
                upsert = self._upsert(request_frames)
                connection.execute(
                    upsert.on_conflict_do_update(index_elements=[request_frames.c.request_id, request_frames.c.frame],
                                                 set_={"task_id": upsert.excluded.task_id}),
                    [{"request_id": request_id, "frame": frame, "task_id": task_id} for frame in sorted(results)])
                for batch in _batches(sorted(results)):
                    connection.execute(delete(annotations).where(
                        annotations.c.request_id == request_id, annotations.c.frame.in_(batch)))
                _insert_items(connection, task_id, items, request_id=request_id)
            return cleaned

    def rectangles(self, task_id: int, frames: list[int]) -> dict[int, list[dict]]:
        """The rectangle shapes on ``frames``, by frame, each with its id, in id order."""
        with self._engine.begin() as connection:
            _task_row(connection, task_id)
            return _rectangles(connection, task_id, frames)

    def replace_with_tracks(self, request_id: str, run: str, task_id: int, frames: list[int], link) -> bool:
        """ReID's result: the rectangles on ``frames`` replaced, in one transaction, by the tracks
        ``link(rectangles_by_frame)`` makes of them. Once per run: False when they were already
        written; StaleRun when ``run`` is no longer the request's run."""
        with self._engine.begin() as connection:
            if self._hold_run(connection, request_id, run).tracks_written:
                return False
            by_frame = _rectangles(connection, task_id, frames)
            context = _TaskContext.load(connection, task_id)
            new_tracks = [("tracks", _checked_track(track, f"tracks[{index}]", context))
                          for index, track in enumerate(link(by_frame))]
            for batch in _batches([box["id"] for boxes in by_frame.values() for box in boxes]):
                connection.execute(delete(annotations).where(annotations.c.id.in_(batch)))
            _insert_items(connection, task_id, new_tracks, request_id=request_id)
            connection.execute(update(request_runs).where(request_runs.c.request_id == request_id)
                               .values(tracks_written=True))
        return True

    def request_frames(self, request_id: str) -> set[int]:
        """The frames the request has written results for, those without any shape included."""
        with self._engine.begin() as connection:
            return set(connection.execute(
                select(request_frames.c.frame).where(request_frames.c.request_id == request_id)).scalars())

    def begin_run(self, request_id: str, run: str, task_id: int) -> None:
        """Make ``run`` the request's run: earlier runs of the id write nothing from now on, their
        annotations stay as the task's own, and the bookkeeping starts afresh. CVAT's request ids
        repeat (one per target), so every run on a target comes through here."""
        with self._engine.begin() as connection:
            upsert = self._upsert(request_runs)
            connection.execute(upsert.values(request_id=request_id, run=run, task_id=task_id, tracks_written=False)
                               .on_conflict_do_update(index_elements=[request_runs.c.request_id],
                                                      set_={"run": run, "task_id": task_id, "tracks_written": False}))
            connection.execute(delete(requests_cleanup).where(requests_cleanup.c.request_id == request_id))
            connection.execute(delete(request_frames).where(request_frames.c.request_id == request_id))
            connection.execute(update(annotations).where(annotations.c.request_id == request_id)
                               .values(request_id=None))

    @staticmethod
    def _hold_run(connection, request_id: str, run: str):
        """Lock the request's run row for this transaction; StaleRun unless ``run`` is its run."""
        row = connection.execute(select(request_runs).where(request_runs.c.request_id == request_id)
                                 .with_for_update()).first()
        if row is None or row.run != run:
            raise StaleRun(f"run {run} of request {request_id} has been replaced; nothing was written")
        return row

    # Exports

    def export_coco(self, task_id: int) -> dict:
        """COCO detection JSON: rectangles, polygons and masks (an uncompressed COCO RLE, column-major
        over the whole image, as pycocotools' frPyObjects reads it), the shapes of tracks on every
        frame they are visible with ``track_id`` (0, 1, ... in track order) and ``keyframe`` among
        the attributes. Other shapes and tags have no place in it and are left out."""
        task = self.get_task(task_id)
        meta = self.frames_meta(task_id)["frames"]
        category_of = {label["id"]: index for index, label in enumerate(task["labels"], 1)}
        attribute_names = _attribute_names(task["labels"])
        data = self.get_annotations(task_id)
        coco_annotations = []

        def add(shape: dict, label_id: int, extra: dict) -> None:
            frame = meta[shape["frame"]]
            geometry = _coco_geometry(shape, frame["width"], frame["height"])
            if geometry is None:
                return
            segmentation, bbox, area = geometry
            coco_annotations.append({
                "id": len(coco_annotations) + 1, "image_id": shape["frame"] + 1,
                "category_id": category_of[label_id], "segmentation": segmentation, "area": area,
                "bbox": bbox, "iscrowd": 0,
                "attributes": {"occluded": shape["occluded"], "rotation": shape["rotation"], **extra,
                               **{attribute_names[a["spec_id"]]: a["value"] for a in shape["attributes"]}},
            })

        for shape in data["shapes"]:
            add(shape, shape["label_id"], {})
        for track_id, track in enumerate(data["tracks"]):
            track_attributes = {attribute_names[a["spec_id"]]: a["value"] for a in track["attributes"]}
            for shape in tracks.frames_of(track, len(meta) - 1):
                if not shape["outside"]:
                    add(shape, track["label_id"], {"track_id": track_id, "keyframe": shape["keyframe"],
                                                   **track_attributes})
        return {
            "info": {"description": task["name"], "date_created": task["created_date"]},
            "licenses": [],
            "images": [{"id": frame + 1, "file_name": image["name"], "width": image["width"],
                        "height": image["height"]} for frame, image in enumerate(meta)],
            "categories": [{"id": category_of[label["id"]], "name": label["name"], "supercategory": ""}
                           for label in task["labels"]],
            "annotations": coco_annotations,
        }

    def export_cvat_xml(self, task_id: int) -> str:
        """CVAT for images 1.1, and tracks as CVAT's video layout writes them (``<track>`` elements
        after the images, a shape per frame with ``keyframe`` and ``outside``), which CVAT's and
        datumaro's readers of this format both take."""
        task = self.get_task(task_id)
        meta = self.frames_meta(task_id)["frames"]
        data = self.get_annotations(task_id)
        names = {label["id"]: label["name"] for top in task["labels"] for label in (top, *top["sublabels"])}
        attribute_names = _attribute_names(task["labels"])

        root = ET.Element("annotations")
        ET.SubElement(root, "version").text = "1.1"
        xml_meta = ET.SubElement(root, "meta")
        xml_task = ET.SubElement(xml_meta, "task")
        for key, value in (("id", task["id"]), ("name", task["name"]), ("size", task["size"]), ("mode", "annotation"),
                           ("overlap", 0), ("bugtracker", ""), ("created", task["created_date"]),
                           ("updated", task["created_date"]), ("subset", "default"), ("start_frame", 0),
                           ("stop_frame", max(task["size"] - 1, 0)), ("frame_filter", "")):
            ET.SubElement(xml_task, key).text = str(value)
        segments = ET.SubElement(xml_task, "segments")
        for job in task["jobs"]:
            segment = ET.SubElement(segments, "segment")
            for key, value in (("id", job["id"]), ("start", job["start_frame"]), ("stop", job["stop_frame"])):
                ET.SubElement(segment, key).text = str(value)
        xml_labels = ET.SubElement(xml_task, "labels")
        for top in task["labels"]:
            # Sublabels follow their skeleton as labels of their own, naming it as <parent>.
            for label in (top, *top["sublabels"]):
                xml_label = ET.SubElement(xml_labels, "label")
                ET.SubElement(xml_label, "name").text = label["name"]
                ET.SubElement(xml_label, "type").text = label["type"]
                xml_attributes = ET.SubElement(xml_label, "attributes")
                for attribute in label["attributes"]:
                    xml_attribute = ET.SubElement(xml_attributes, "attribute")
                    for key in ("name", "mutable", "input_type", "default_value", "values"):
                        value = attribute[key]
                        ET.SubElement(xml_attribute, key).text = (
                            "\n".join(value) if key == "values" else str(value))  # mutable: True/False, as CVAT
                if label is not top:
                    ET.SubElement(xml_label, "parent").text = top["name"]
                if label["type"] == "skeleton":
                    ET.SubElement(xml_label, "svg").text = label["svg"]
        if data["tracks"]:  # readers size track shapes by it, as in CVAT's video layout: the first frame's
            original_size = ET.SubElement(xml_task, "original_size")
            ET.SubElement(original_size, "width").text = str(meta[0]["width"])
            ET.SubElement(original_size, "height").text = str(meta[0]["height"])
        ET.SubElement(xml_meta, "dumped").text = _iso(datetime.now(timezone.utc))

        # Per image as CVAT writes it: shapes from the lowest z_order up, then tags.
        by_frame: dict[int, list[tuple[str, dict]]] = {}
        for kind, item in [*(("shapes", shape) for shape in sorted(data["shapes"], key=lambda s: s["z_order"])),
                           *(("tags", tag) for tag in data["tags"])]:
            by_frame.setdefault(item["frame"], []).append((kind, item))
        for frame, image in enumerate(meta):
            xml_image = ET.SubElement(root, "image", id=str(frame), name=image["name"], width=str(image["width"]),
                                      height=str(image["height"]))
            for kind, item in by_frame.get(frame, []):
                if kind == "tags":
                    element = ET.SubElement(xml_image, "tag", label=names[item["label_id"]], source=item["source"])
                    if item["group"]:
                        element.set("group_id", str(item["group"]))
                else:
                    element = _xml_shape(xml_image, item, names, attribute_names)
                _xml_attributes(element, item, attribute_names)
        for track_id, track in enumerate(data["tracks"]):
            xml_track = ET.SubElement(root, "track", id=str(track_id), label=names[track["label_id"]],
                                      source=track["source"])
            if track["group"]:
                xml_track.set("group_id", str(track["group"]))
            for shape in tracks.frames_of(track, len(meta) - 1):
                element = _xml_shape(xml_track, {**shape, "label_id": track["label_id"], "source": track["source"],
                                                 "group": None}, names, attribute_names)
                for key in ("label", "source"):  # the track's, not each shape's
                    del element.attrib[key]
                element.attrib.update(frame=str(shape["frame"]), keyframe=str(int(shape["keyframe"])),
                                      outside=str(int(shape["outside"])))
                _xml_attributes(element, {"attributes": [*track["attributes"], *shape["attributes"]]},
                                attribute_names)
        ET.indent(root)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# Labels

def _checked_labels(raw_labels) -> list[dict]:
    """Validate labels in CVAT's REST shape with the function spec's own parser (same rules, same
    messages, naming ``labels``), plus the task-only attribute fields; returns them normalised."""
    if not isinstance(raw_labels, list) or not raw_labels:
        raise InvalidInput("labels: a task needs a list of at least one label")
    try:
        specs = parse_label_spec(json.dumps(raw_labels))
    except MetadataError as error:
        raise InvalidInput(str(error).replace(_SPEC_FIELD, "labels", 1)) from None
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"labels: must be JSON data: {error}") from None

    def normalised(raw_list: list[dict], spec_list, where: str) -> list[dict]:
        result = []
        for index, (raw, spec) in enumerate(zip(raw_list, spec_list)):
            label_where = f"{where}[{index}] ({spec.name!r})"
            label_attributes = []
            for attribute_index, (raw_attribute, attribute) in enumerate(
                    zip(raw.get("attributes") or [], spec.attributes)):
                attribute_where = f"{label_where}.attributes[{attribute_index}] ({attribute.name!r})"
                mutable = raw_attribute.get("mutable", False)
                if not isinstance(mutable, bool):
                    raise InvalidInput(f"{attribute_where}.mutable: must be true or false, got {mutable!r}")
                default = raw_attribute.get("default_value")
                if default is None:  # CVAT's default: the first value
                    default = attribute.values[0] if attribute.values else (
                        "false" if attribute.input_type == "checkbox" else "")
                if not isinstance(default, str):
                    raise InvalidInput(f"{attribute_where}.default_value: must be a string, got {default!r}")
                allowed = (attribute.values if attribute.input_type in ("select", "radio")
                           else ("true", "false") if attribute.input_type == "checkbox" else None)
                if allowed is not None and default not in allowed:
                    raise InvalidInput(f"{attribute_where}.default_value: {default!r} is not one of "
                                       f"{', '.join(allowed)}")
                label_attributes.append({"name": attribute.name, "input_type": attribute.input_type,
                                         "mutable": mutable, "default_value": default,
                                         "values": list(attribute.values)})
            result.append({"name": spec.name, "type": spec.type, "svg": spec.svg, "attributes": label_attributes,
                           "sublabels": normalised(raw.get("sublabels") or [], spec.sublabels,
                                                   f"{label_where}.sublabels")})
        return result

    return normalised(raw_labels, specs, "labels")


def _insert_labels(connection, task_id: int, checked: list[dict], parent_id: int | None) -> None:
    for position, label in enumerate(checked):
        label_id = connection.execute(insert(labels).values(
            task_id=task_id, parent_id=parent_id, position=position, name=label["name"], type=label["type"],
            svg=label["svg"])).inserted_primary_key[0]
        for attribute_position, attribute in enumerate(label["attributes"]):
            connection.execute(insert(attributes).values(label_id=label_id, position=attribute_position, **attribute))
        _insert_labels(connection, task_id, label["sublabels"], parent_id=label_id)


def _attribute_names(task_labels: list[dict]) -> dict[int, str]:
    return {attribute["id"]: attribute["name"] for top in task_labels for label in (top, *top["sublabels"])
            for attribute in label["attributes"]}


# Tasks, jobs, frames

def _task_row(connection, task_id: int, for_update: bool = False):
    query = select(tasks).where(tasks.c.id == task_id)
    row = connection.execute(query.with_for_update() if for_update else query).first()
    if row is None:
        raise NotFound(f"task {task_id} does not exist")
    return row


def _task_size(connection, task_id: int) -> int:
    return connection.execute(select(func.count()).select_from(frames).where(frames.c.task_id == task_id)).scalar_one()


def _update_jobs(connection, task_id: int, size: int, segment_size: int | None) -> None:
    """Segments of ``segment_size`` frames (all frames when None). Frames are only ever appended,
    so existing jobs keep their ids: the last one may grow, and new ones follow."""
    step = segment_size or size
    wanted = [(start, min(start + step, size) - 1) for start in range(0, size, step)]
    existing = connection.execute(select(jobs.c.id, jobs.c.stop_frame).where(jobs.c.task_id == task_id)
                                  .order_by(jobs.c.start_frame)).all()
    for (job_id, stop_frame), (_, wanted_stop) in zip(existing, wanted):
        if stop_frame != wanted_stop:
            connection.execute(update(jobs).where(jobs.c.id == job_id).values(stop_frame=wanted_stop))
    if len(wanted) > len(existing):
        connection.execute(insert(jobs), [{"task_id": task_id, "start_frame": start, "stop_frame": stop}
                                          for start, stop in wanted[len(existing):]])


def _image_size(data: bytes, where: str, limit: int) -> tuple[int, int, str]:
    """Width and height as decode_image will see them (EXIF orientation applied), and the format.
    Decoded once here, with decode_image's own checks, so a bad file is refused now rather than
    at every run."""
    if not isinstance(data, bytes):
        raise InvalidInput(f"{where}: the file content must be bytes")
    try:
        image, image_format = open_image(data, limit)
    except BadRequest as problem:
        raise InvalidInput(f"{where}: {problem}") from None
    return image.width, image.height, image_format


# Annotations

class _TaskContext:
    """What validating a task's annotations needs: its size and its labels."""

    def __init__(self, task_id: int, size: int, label_rows, attribute_rows):
        self.task_id = task_id
        self.size = size
        self.labels = {row.id: row for row in label_rows}
        self.attribute_ids: dict[int, set[int]] = {row.id: set() for row in label_rows}
        for row in attribute_rows:
            self.attribute_ids[row.label_id].add(row.id)

    @classmethod
    def load(cls, connection, task_id: int) -> "_TaskContext":
        _task_row(connection, task_id)
        label_rows = connection.execute(select(labels.c.id, labels.c.type, labels.c.parent_id)
                                        .where(labels.c.task_id == task_id)).all()
        attribute_rows = connection.execute(select(attributes.c.id, attributes.c.label_id).join(labels)
                                            .where(labels.c.task_id == task_id)).all()
        return cls(task_id, _task_size(connection, task_id), label_rows, attribute_rows)

    def check_frame(self, frame, where: str) -> int:
        if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < self.size:
            raise InvalidInput(f"{where}: {frame!r} is not a frame of task {self.task_id} "
                               f"(it has {self.size} frames)")
        return frame

    def label(self, label_id, where: str, skeleton: int | None = None):
        """The label ``label_id`` names: a top-level label of the task, or a sublabel of ``skeleton``."""
        label = self.labels.get(label_id) if isinstance(label_id, int) and not isinstance(label_id, bool) else None
        if label is None or label.parent_id != skeleton:
            what = "a label of task" if skeleton is None else f"a sublabel of skeleton {skeleton} in task"
            raise InvalidInput(f"{where}.label_id: {label_id!r} is not {what} {self.task_id}")
        return label


def _object(item, where: str) -> dict:
    if not isinstance(item, dict):
        raise InvalidInput(f"{where}: must be an object")
    return item


def _field(item: dict, key: str, default, valid, what: str, where: str):
    value = item.get(key, default)
    if not valid(value):
        raise InvalidInput(f"{where}.{key}: must be {what}, got {value!r}")
    return value


def _is_bool(value) -> bool:
    return isinstance(value, bool)


def _common_fields(item: dict, where: str, context: _TaskContext, skeleton: int | None = None) -> dict:
    frame = context.check_frame(item.get("frame"), f"{where}.frame")
    label = context.label(item.get("label_id"), where, skeleton)
    return {"frame": frame, "label_id": label.id,
            "group": _field(item, "group", None, lambda v: v is None or (is_int(v) and v >= 0),
                            "a non-negative integer or null", where),
            "source": _field(item, "source", "manual", lambda v: isinstance(v, str) and v, "a non-empty string", where),
            "attributes": _checked_attributes(item, where, context, label.id)}


def _checked_attributes(item: dict, where: str, context: _TaskContext, label_id: int) -> list[dict]:
    raw = item.get("attributes") or []
    if not isinstance(raw, list):
        raise InvalidInput(f"{where}.attributes: must be a list of {{spec_id, value}}")
    checked, seen = [], set()
    for index, attribute in enumerate(raw):
        attribute_where = f"{where}.attributes[{index}]"
        if not isinstance(attribute, dict) or not isinstance(attribute.get("value"), str):
            raise InvalidInput(f"{attribute_where}: must be {{\"spec_id\": integer, \"value\": string}}")
        spec_id = attribute.get("spec_id")
        if not is_int(spec_id) or spec_id not in context.attribute_ids[label_id]:
            raise InvalidInput(f"{attribute_where}.spec_id: {spec_id!r} is not an attribute of label {label_id}")
        if spec_id in seen:
            raise InvalidInput(f"{attribute_where}.spec_id: attribute {spec_id} appears twice")
        seen.add(spec_id)
        checked.append({"spec_id": spec_id, "value": attribute["value"]})
    return checked


def _checked_tag(item, where: str, context: _TaskContext) -> dict:
    item = _object(item, where)
    tag = _common_fields(item, where, context)
    if context.labels[tag["label_id"]].type == "skeleton":
        raise InvalidInput(f"{where}.label_id: {tag['label_id']} is a skeleton label, not one for tags")
    return tag


def _checked_shape(item, where: str, context: _TaskContext, skeleton: int | None = None,
                   frame: int | None = None) -> dict:
    """A shape with CVAT's defaults filled in; ``skeleton``: an element of that skeleton label on ``frame``."""
    item = _object(item, where)
    if skeleton is not None:
        item = {"type": "points", **item, "frame": frame}
    common = _common_fields(item, where, context, skeleton)
    shape_type = item.get("type")
    allowed = ("points",) if skeleton is not None else SHAPE_AND_SKELETON_TYPES
    if shape_type not in allowed:
        raise InvalidInput(f"{where}.type: must be one of {', '.join(allowed)}, got {shape_type!r}")
    if (shape_type == "skeleton") != (context.labels[common["label_id"]].type == "skeleton"):
        raise InvalidInput(f"{where}.type: skeleton shapes and skeleton labels go together, got a {shape_type} "
                           f"of a {context.labels[common['label_id']].type} label")
    if shape_type == "mask":
        points = _checked_mask(item.get("points"), where)
    else:
        try:
            points = checked_points(item.get("points"), shape_type, where)
        except BadFunctionOutput as error:
            raise InvalidInput(str(error)) from None
    shape = {"type": shape_type, **common, "points": points,
             "rotation": _field(item, "rotation", 0, is_number, "a number of degrees", where),
             "occluded": _field(item, "occluded", False, _is_bool, "true or false", where),
             "outside": _field(item, "outside", False, _is_bool, "true or false", where),
             "z_order": _field(item, "z_order", 0, is_int, "an integer", where)}
    if item.get("score") is not None:  # our extension: the detector's confidence
        shape["score"] = _field(item, "score", None, is_number, "a number or null", where)
    if shape_type == "skeleton":
        elements = item.get("elements") or []
        if not isinstance(elements, list) or not elements:
            raise InvalidInput(f"{where}.elements: a skeleton needs a list of elements")
        shape["elements"] = [_checked_shape(element, f"{where}.elements[{index}]", context, common["label_id"],
                                            common["frame"]) for index, element in enumerate(elements)]
        sublabel_ids = [element["label_id"] for element in shape["elements"]]
        if len(set(sublabel_ids)) != len(sublabel_ids):
            raise InvalidInput(f"{where}.elements: each sublabel may have one element only")
    return shape


def _checked_mask(points, where: str) -> list[int]:
    """CVAT's mask RLE (4.7): run lengths from a background run, then the inclusive box. Whole
    floats are taken as the integers they are: CVAT keeps points as floats, and cvat-sdk sends 72.0."""
    whole = (lambda v: is_int(v) or (isinstance(v, float) and v.is_integer()))
    if not isinstance(points, list) or len(points) < 5 or not all(whole(v) and v >= 0 for v in points):
        raise InvalidInput(f"{where}.points: a mask is run lengths followed by xtl, ytl, xbr, ybr, "
                           "all non-negative integers")
    points = [int(v) for v in points]
    *runs, xtl, ytl, xbr, ybr = points
    if xbr < xtl or ybr < ytl or sum(runs) != (xbr - xtl + 1) * (ybr - ytl + 1):
        raise InvalidInput(f"{where}.points: the runs cover {sum(runs)} pixels but the box "
                           f"({xtl}, {ytl}, {xbr}, {ybr}) has {max(xbr - xtl + 1, 0) * max(ybr - ytl + 1, 0)}")
    return points


def _checked_track(item, where: str, context: _TaskContext) -> dict:
    """A track: its label, attributes and keyframe shapes (one per frame, in frame order, of one
    type), each checked as a shape of the track's label; ``frame`` is its first keyframe's."""
    item = _object(item, where)
    shapes = item.get("shapes")
    if not isinstance(shapes, list) or not shapes:
        raise InvalidInput(f"{where}.shapes: a track needs a list of at least one shape")
    first = shapes[0].get("frame") if isinstance(shapes[0], dict) else None
    common = _common_fields({**item, "frame": item.get("frame", first)}, where, context)
    if context.labels[common["label_id"]].type == "skeleton":
        raise InvalidInput(f"{where}.label_id: tracks of skeleton labels are not supported by this store")
    checked = []
    for index, shape in enumerate(shapes):
        shape_where = f"{where}.shapes[{index}]"
        shape = _checked_shape({**_object(shape, shape_where), "label_id": common["label_id"]}, shape_where, context)
        if checked and shape["frame"] <= checked[-1]["frame"]:
            raise InvalidInput(f"{shape_where}.frame: shapes of a track go in frame order, one per frame")
        if checked and shape["type"] != checked[0]["type"]:
            raise InvalidInput(f"{shape_where}.type: a track keeps one shape type, {checked[0]['type']}")
        checked.append({key: shape[key] for key in ("type", "frame", "points", "rotation", "occluded", "outside",
                                                    "z_order", "attributes")})
    if common["frame"] != checked[0]["frame"]:
        raise InvalidInput(f"{where}.frame: {common['frame']} is not the frame of its first shape, "
                           f"{checked[0]['frame']}")
    return {**common, "shapes": checked}


_CHECKS = {"tags": _checked_tag, "shapes": _checked_shape, "tracks": _checked_track}


def _labeled_items(data):
    """(kind, where, item) for each item of a LabeledData body, its structure checked."""
    if not isinstance(data, dict):
        raise InvalidInput("annotations: must be an object with tags, shapes and tracks")
    for kind in KINDS:
        kind_items = data.get(kind) or []
        if not isinstance(kind_items, list):
            raise InvalidInput(f"{kind}: must be a list")
        for index, item in enumerate(kind_items):
            yield kind, f"{kind}[{index}]", item


def _checked_data(data, context: _TaskContext) -> list[tuple[str, dict]]:
    """LabeledData's items, checked and normalised, with no ids."""
    items = []
    for kind, where, item in _labeled_items(data):
        checked = _CHECKS[kind](item, where, context)
        checked.pop("id", None)  # a track's own, as given
        items.append((kind, checked))
    return items


def _item_ids(connection, task_id: int, data) -> list[tuple[str, int]]:
    """The (kind, id) of each item of ``data``, every one an existing item of the task."""
    wanted = []
    for kind, where, item in _labeled_items(data):
        item_id = item.get("id") if isinstance(item, dict) else None
        if not is_int(item_id):
            raise InvalidInput(f"{where}.id: required, an integer")
        wanted.append((kind, item_id, where))
    existing = {}
    for batch in _batches(sorted({item_id for _, item_id, _ in wanted})):
        existing.update(connection.execute(select(annotations.c.id, annotations.c.kind).where(
            annotations.c.task_id == task_id, annotations.c.id.in_(batch))).all())
    for kind, item_id, where in wanted:
        if existing.get(item_id) != kind:
            raise InvalidInput(f"{where}.id: task {task_id} has no {kind[:-1]} {item_id}")
    return [(kind, item_id) for kind, item_id, _ in wanted]


def _rectangles(connection, task_id: int, frame_list: list[int]) -> dict[int, list[dict]]:
    by_frame: dict[int, list[dict]] = {}
    for batch in _batches(sorted(set(frame_list))):
        rows = connection.execute(select(annotations.c.id, annotations.c.content).where(
            annotations.c.task_id == task_id, annotations.c.kind == "shapes", annotations.c.frame.in_(batch))
            .order_by(annotations.c.id)).all()
        for item_id, content in rows:
            if content["type"] == "rectangle":
                by_frame.setdefault(content["frame"], []).append({"id": item_id, **content})
    return by_frame


def _insert_items(connection, task_id: int, items: list[tuple[str, dict]], request_id: str | None):
    """Insert checked items; returns (id, kind, content) rows in the order given."""
    if not items:
        return []
    ids = connection.execute(
        insert(annotations).returning(annotations.c.id, sort_by_parameter_order=True),
        [{"task_id": task_id, "kind": kind, "frame": item["frame"], "label_id": item["label_id"],
          "request_id": request_id, "content": item} for kind, item in items]).scalars().all()
    return [(item_id, kind, item) for item_id, (kind, item) in zip(ids, items)]


def _labeled_data(rows) -> dict:
    """(id, kind, content) rows -> CVAT's LabeledData, each item with its id."""
    data = {"version": 0, "tags": [], "shapes": [], "tracks": []}
    for item_id, kind, content in rows:
        data[kind].append({"id": item_id, **content})
    return data


def _batches(values: list) -> list[list]:
    return [values[start:start + _BATCH] for start in range(0, len(values), _BATCH)]


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:  # SQLite keeps no time zone; every moment stored is UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# Exports

def _mask_crop(points: list[int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """CVAT's mask RLE -> (boolean crop, inclusive box)."""
    *runs, xtl, ytl, xbr, ybr = points
    pixels = np.repeat(np.arange(len(runs)) % 2 == 1, runs)  # runs alternate background, object
    return pixels.reshape(ybr - ytl + 1, xbr - xtl + 1), (xtl, ytl, xbr, ybr)


def _rectangle_corners(points: list[float], rotation: float) -> list[float]:
    """A rectangle's corners clockwise from the top left, turned ``rotation`` degrees clockwise
    about its centre (y points down)."""
    xtl, ytl, xbr, ybr = points
    cx, cy = (xtl + xbr) / 2, (ytl + ybr) / 2
    cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    corners = []
    for x, y in ((xtl, ytl), (xbr, ytl), (xbr, ybr), (xtl, ybr)):
        corners += [cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos]
    return corners


def _polygon_area(points: list[float]) -> float:
    xs, ys = np.asarray(points[0::2], float), np.asarray(points[1::2], float)
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def _bbox(points: list[float]) -> list[float]:
    xs, ys = points[0::2], points[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _coco_geometry(shape: dict, width: int, height: int) -> tuple[list | dict, list[float], float] | None:
    """(segmentation, bbox xywh, area) of a shape COCO detection can hold, else None."""
    if shape["type"] == "rectangle":
        xtl, ytl, xbr, ybr = shape["points"]
        if not shape["rotation"]:
            return [], [xtl, ytl, xbr - xtl, ybr - ytl], float((xbr - xtl) * (ybr - ytl))
        corners = _rectangle_corners(shape["points"], shape["rotation"])
        return [corners], _bbox(corners), float((xbr - xtl) * (ybr - ytl))
    if shape["type"] == "polygon":
        return [shape["points"]], _bbox(shape["points"]), _polygon_area(shape["points"])
    if shape["type"] == "mask":
        crop, (xtl, ytl, xbr, ybr) = _mask_crop(shape["points"])
        image = np.zeros((height, width), bool)
        visible = crop[:max(height - ytl, 0), :max(width - xtl, 0)]  # a box past the image edge is cut
        image[ytl:ytl + visible.shape[0], xtl:xtl + visible.shape[1]] = visible
        box = masks.mask_box(image)
        if box is None:
            return None
        x0, y0, x1, y1 = box
        # COCO RLE runs go down the columns (Fortran order) and, as CVAT's, start with background.
        segmentation = {"counts": masks.rle_encode(image.ravel(order="F")), "size": [height, width]}
        return segmentation, [x0, y0, x1 - x0 + 1, y1 - y0 + 1], float(image.sum())
    return None


def _number(value) -> str:
    return f"{value:.2f}"


def _xml_shape(xml_image: ET.Element, shape: dict, names: dict[int, str], attribute_names: dict[int, str]):
    """One shape as CVAT for images 1.1 writes it."""
    shape_type, points = shape["type"], shape["points"]
    fields = {"label": names[shape["label_id"]], "source": shape["source"],
              "occluded": str(int(shape["occluded"]))}
    if shape_type == "rectangle":
        tag = "box"
        fields.update(zip(("xtl", "ytl", "xbr", "ybr"), map(_number, points)))
    elif shape_type == "ellipse":  # CVAT keeps the centre and one corner of the bounding box
        tag = "ellipse"
        cx, cy, right, top = points
        fields.update(cx=_number(cx), cy=_number(cy), rx=_number(right - cx), ry=_number(cy - top))
    elif shape_type == "mask":  # the run lengths alone; the box as left, top, width, height
        tag = "mask"
        *runs, xtl, ytl, xbr, ybr = points
        fields.update(rle=", ".join(map(str, runs)), left=str(xtl), top=str(ytl), width=str(xbr - xtl + 1),
                      height=str(ybr - ytl + 1))
    elif shape_type == "cuboid":
        tag = "cuboid"
        keys = ("xtl1", "ytl1", "xbl1", "ybl1", "xtr1", "ytr1", "xbr1", "ybr1",
                "xtl2", "ytl2", "xbl2", "ybl2", "xtr2", "ytr2", "xbr2", "ybr2")
        fields.update(zip(keys, map(_number, points)))
    elif shape_type == "skeleton":
        tag = "skeleton"
        del fields["occluded"]
    else:  # polygon, polyline, points
        tag = shape_type
        fields["points"] = ";".join(f"{_number(x)},{_number(y)}" for x, y in zip(points[0::2], points[1::2]))
    fields["z_order"] = str(shape["z_order"])
    if shape["rotation"] and shape_type in ("rectangle", "ellipse"):
        fields["rotation"] = _number(shape["rotation"])
    if shape["group"]:
        fields["group_id"] = str(shape["group"])
    element = ET.SubElement(xml_image, tag, fields)
    for part in shape.get("elements", []):
        point = ET.SubElement(element, "points", label=names[part["label_id"]], source=part["source"],
                              outside=str(int(part["outside"])), occluded=str(int(part["occluded"])),
                              points=f"{_number(part['points'][0])},{_number(part['points'][1])}")
        _xml_attributes(point, part, attribute_names)
    return element


def _xml_attributes(element: ET.Element, item: dict, attribute_names: dict[int, str]) -> None:
    for attribute in item["attributes"]:
        ET.SubElement(element, "attribute", name=attribute_names[attribute["spec_id"]]).text = attribute["value"]
