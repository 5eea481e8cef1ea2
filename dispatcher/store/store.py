"""The task store of the dispatcher's standalone mode: tasks, labels, jobs, frames and annotations,
and the writes of annotation requests.

Frames are kept as the bytes uploaded, or read from under the server files root, so the dispatcher
never re-encodes them. ``write_results`` is what the RQ workers call: idempotent per (request,
frame), with a request's cleanup done once, and fenced by run (``begin_run``): a run its request id
no longer names writes nothing. ``replace_with_tracks`` is ReID's one write.
"""

from __future__ import annotations

import posixpath
import shutil
from datetime import UTC, datetime
from pathlib import Path, PurePath

from sqlalchemy import Table, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from dispatcher import tracks
from dispatcher.converter import TaskAttribute, TaskLabel
from dispatcher.store import exports
from dispatcher.store.errors import InvalidInput, NotFound, StaleRun
from dispatcher.store.request_records import RequestRecords
from dispatcher.store.rows import (
    batches,
    hold_run,
    insert_items,
    insert_labels,
    iso,
    labeled_data,
    rectangles_on,
    task_row,
    task_size,
    update_jobs,
)
from dispatcher.store.server_files import ServerFiles
from dispatcher.store.tables import (
    annotations,
    attributes,
    chunk_attempts,
    frames,
    jobs,
    labels,
    metadata,
    migrate,
    open_engine,
    request_frames,
    request_runs,
    requests_cleanup,
    tasks,
)
from dispatcher.store.validation import (
    CHECKS,
    TaskContext,
    checked_data,
    checked_labels,
    checked_track,
    image_size,
    item_ids,
)

PATCH_ACTIONS = ("create", "update", "delete")


class Store:
    """Tasks, labels, jobs, frames and annotations, and what the RQ workers write into them."""

    def __init__(self, database_url: str | None, data_dir: Path, server_files_root: Path | None,
                 max_image_pixels: int):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server_files = ServerFiles(server_files_root)
        self.max_image_pixels = max_image_pixels  # frames with more are refused before decoding
        self._engine = open_engine(database_url or f"sqlite:///{self.data_dir / 'dispatcher.sqlite3'}")
        self._postgres = self._engine.dialect.name == "postgresql"
        with self._engine.begin() as connection:
            if self._postgres:  # workers starting together would race to create the same tables
                connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('dispatcher.store'))"))
            metadata.create_all(connection)
            migrate(connection)
        self.request_records = RequestRecords(self._engine, self.written_frames)

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
        checked = checked_labels(labels)
        now = datetime.now(UTC)
        with self._engine.begin() as connection:
            task_id = connection.execute(insert(tasks).values(
                name=name, segment_size=segment_size, created_date=now, updated_date=now,
                data_updated_date=now)).inserted_primary_key[0]
            insert_labels(connection, task_id, checked, parent_id=None)
        return self.get_task(task_id)

    def get_task(self, task_id: int) -> dict:
        """The task as the store keeps it: labels (sublabels inside their skeleton) and jobs in
        full; the API serves it in CVAT's shapes (``dispatcher/rest_shapes.py``)."""
        with self._engine.begin() as connection:
            task = task_row(connection, task_id)
            size = task_size(connection, task_id)
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
            "created_date": iso(task.created_date),
            # Databases from before these columns have them filled by migrate; None never reaches here.
            "updated_date": iso(task.updated_date or task.created_date),
            "data_updated_date": iso(task.data_updated_date or task.created_date),
            "labels": [label_dict(row) for row in label_rows if row.parent_id is None],
            "jobs": [{"id": job.id, "start_frame": job.start_frame, "stop_frame": job.stop_frame} for job in job_rows],
        }

    def task_ids(self) -> list[int]:
        with self._engine.begin() as connection:
            return list(connection.execute(select(tasks.c.id).order_by(tasks.c.id)).scalars())

    def list_tasks(self) -> list[dict]:
        return [self.get_task(task_id) for task_id in self.task_ids()]

    def delete_task(self, task_id: int) -> None:
        with self._engine.begin() as connection:
            task_row(connection, task_id)
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

    def label_task(self, label_id: int) -> int:
        """The task a label (or sublabel) belongs to."""
        with self._engine.begin() as connection:
            task_id = connection.execute(select(labels.c.task_id).where(labels.c.id == label_id)).scalar()
        if task_id is None:
            raise NotFound(f"label {label_id} does not exist")
        return task_id

    @staticmethod
    def _touch(connection, task_id: int, frames: bool = False) -> None:
        """The task changed now (its frames too, with ``frames``): CVAT's ``updated_date``, which
        cvat-sdk's cache of the task is keyed on. Each write calls it last, in its transaction, so
        the row lock it takes is held only while that transaction commits."""
        now = datetime.now(UTC)
        values = {"updated_date": now, "data_updated_date": now} if frames else {"updated_date": now}
        connection.execute(update(tasks).where(tasks.c.id == task_id).values(**values))

    # Jobs

    def list_jobs(self, task_id: int | None = None) -> list[dict]:
        """Every job (or the task's), in id order: ``{id, task_id, start_frame, stop_frame}``."""
        query = select(jobs.c.id, jobs.c.task_id, jobs.c.start_frame, jobs.c.stop_frame).order_by(jobs.c.id)
        with self._engine.begin() as connection:
            if task_id is not None:
                task_row(connection, task_id)
                query = query.where(jobs.c.task_id == task_id)
            return [dict(row._mapping) for row in connection.execute(query)]

    def get_job(self, job_id: int) -> dict:
        with self._engine.begin() as connection:
            job = connection.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        return {"id": job.id, "task_id": job.task_id, "start_frame": job.start_frame, "stop_frame": job.stop_frame}

    def target_frames(self, task_id: int, job_id: int | None) -> list[int]:
        """The task frames a request covers: the whole task, or one job's frames."""
        return self.job_frames(job_id) if job_id is not None else list(range(self.get_task(task_id)["size"]))

    def job_frames(self, job_id: int) -> list[int]:
        job = self.get_job(job_id)
        return list(range(job["start_frame"], job["stop_frame"] + 1))

    # Frames

    def add_frames(self, task_id: int, files: list[tuple[str, bytes]]) -> None:
        """Append uploaded images, in the order given."""
        if not isinstance(files, list) or not files:
            raise InvalidInput("files: at least one image is required")
        new_frames = []
        for index, (name, data) in enumerate(files):
            if not isinstance(name, str) or not name:
                raise InvalidInput(f"files[{index}]: the file name must be a non-empty string")
            width, height, image_format = image_size(data, f"files[{index}] ({name!r})", self.max_image_pixels)
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
        new_frames = []
        for index, path in enumerate(paths):
            where = f"paths[{index}] ({path!r})"
            resolved, relative = self.server_files.resolve(path, where)
            width, height, _ = image_size(self.server_files.read(resolved, where), where, self.max_image_pixels)
            new_frames.append({"name": posixpath.normpath(path), "width": width, "height": height,
                               "server_file": True, "path": relative})
        self._append_frames(task_id, new_frames, "paths")

    def _task_dir(self, task_id: int) -> Path:
        return self.data_dir / "tasks" / str(task_id)

    def _append_frames(self, task_id: int, new_frames: list[dict], field: str) -> None:
        written: list[Path] = []
        try:
            with self._engine.begin() as connection:
                # The row lock serialises appends to one task (SQLite's BEGIN IMMEDIATE already does).
                task = task_row(connection, task_id, for_update=True)
                annotated = select(annotations.c.id).where(annotations.c.task_id == task_id).limit(1)
                if connection.execute(annotated).first():
                    raise InvalidInput(f"{field}: task {task_id} already has annotations; "
                                       "frames can only be added before annotating")
                first = task_size(connection, task_id)
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
                update_jobs(connection, task_id, first + len(rows), task.segment_size)
                self._touch(connection, task_id, frames=True)
        except BaseException:
            for file in written:
                file.unlink(missing_ok=True)
            raise

    def prepare(self, task_id: int, frames: list[int]) -> None:
        """Nothing to fetch ahead: every frame is a file of its own here."""

    def frames_per_read(self, task_id: int) -> int:
        """One: frames are read one file at a time, so chunks are planned by CHUNK_SIZE alone."""
        return 1

    def frame_bytes(self, task_id: int, frame: int) -> bytes:
        """The frame's file as it was uploaded (or as it is on the server)."""
        return self.frames_bytes(task_id, [frame])[frame]

    def frames_bytes(self, task_id: int, wanted: list[int]) -> dict[int, bytes]:
        """``frame_bytes`` of several frames (a batch's), their rows read in one query. A server
        file is checked as it is opened (``ServerFiles.read_under_root``): a few system calls,
        where resolving its path anew took a third of a millisecond per frame."""
        with self._engine.begin() as connection:
            task_row(connection, task_id)
            rows = {row.frame: row for row in connection.execute(
                select(frames.c.frame, frames.c.path, frames.c.server_file)
                .where(frames.c.task_id == task_id, frames.c.frame.in_(wanted)))}
        missing = [frame for frame in wanted if frame not in rows]
        if missing:
            raise NotFound(f"task {task_id} has no frame {missing[0]}")
        content = {}
        for frame in wanted:
            row = rows[frame]
            if not row.server_file:
                content[frame] = (self.data_dir / row.path).read_bytes()
                continue
            try:
                content[frame] = self.server_files.read_under_root(row.path, f"frame {frame}")
            except InvalidInput as error:
                raise NotFound(f"task {task_id}: {error}") from None
        return content

    def frame_files(self, task_id: int, first: int, last: int) -> list[tuple[int, str, Path]]:
        """``(frame, name, file)`` of the task's frames ``first..last`` that exist, in frame order:
        the upload as it was stored, or the server file where it is (its path checked again: the
        root or a link may have changed since the file was added)."""
        with self._engine.begin() as connection:
            task_row(connection, task_id)
            rows = connection.execute(
                select(frames.c.frame, frames.c.name, frames.c.path, frames.c.server_file)
                .where(frames.c.task_id == task_id, frames.c.frame >= first, frames.c.frame <= last)
                .order_by(frames.c.frame)).all()
        files = []
        for row in rows:
            if not row.server_file:
                files.append((row.frame, row.name, self.data_dir / row.path))
                continue
            try:
                files.append((row.frame, row.name, self.server_files.resolve(row.path, f"frame {row.frame}")[0]))
            except InvalidInput as error:
                raise NotFound(f"task {task_id}: {error}") from None
        return files

    def frame_size(self, task_id: int, frame: int) -> tuple[int, int]:
        """A frame's width and height as stored (EXIF orientation applied), without decoding it."""
        with self._engine.begin() as connection:
            task_row(connection, task_id)
            row = connection.execute(select(frames.c.width, frames.c.height)
                                     .where(frames.c.task_id == task_id, frames.c.frame == frame)).first()
        if row is None:
            raise NotFound(f"task {task_id} has no frame {frame}")
        return row.width, row.height

    def frames_meta(self, task_id: int) -> dict:
        """The frame list in the shape of CVAT's ``/api/tasks/<id>/data/meta``."""
        with self._engine.begin() as connection:
            task_row(connection, task_id)
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
            return labeled_data(self._rows_in(connection, task_id, job_id, frame))

    @staticmethod
    def _job_range(connection, task_id: int, job_id: int) -> tuple[int, int]:
        job = connection.execute(select(jobs).where(jobs.c.id == job_id, jobs.c.task_id == task_id)).first()
        if job is None:
            raise NotFound(f"task {task_id} has no job {job_id}")
        return job.start_frame, job.stop_frame

    def _rows_in(self, connection, task_id: int, job_id: int | None = None, frame: int | None = None) -> list:
        """(id, kind, content) rows of the task's annotations on a job's frames (or one frame's, or
        all): tags and shapes there, and the tracks visible on at least one of those frames."""
        task_row(connection, task_id)
        task_last = task_size(connection, task_id) - 1
        first, last = 0, task_last
        if job_id is not None:
            first, last = self._job_range(connection, task_id, job_id)
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
        return rows

    def _checked_items(self, connection, task_id: int, data, job_id: int | None) -> list[tuple[str, dict]]:
        """The body's items checked against the task; for a job, each must lie on the job's frames
        (a track: every keyframe)."""
        items = checked_data(data, TaskContext.load(connection, task_id))
        if job_id is not None:
            first, last = self._job_range(connection, task_id, job_id)
            counts = dict.fromkeys(("tags", "shapes", "tracks"), 0)
            for kind, item in items:
                where = f"{kind}[{counts[kind]}]"
                counts[kind] += 1
                for index, shape in enumerate(item["shapes"] if kind == "tracks" else [item]):
                    if not first <= shape["frame"] <= last:
                        field = f"{where}.shapes[{index}].frame" if kind == "tracks" else f"{where}.frame"
                        raise InvalidInput(f"{field}: {shape['frame']} is outside job {job_id} "
                                           f"(frames {first}..{last})")
        return items

    def _job_ids(self, connection, task_id: int, job_id: int | None, data) -> list[tuple[str, int]]:
        """``item_ids`` of the body; for a job, each must be one of the job's annotations."""
        wanted = item_ids(connection, task_id, data)
        if job_id is not None:
            own = {row.id for row in self._rows_in(connection, task_id, job_id)}
            for kind, item_id in wanted:
                if item_id not in own:
                    raise InvalidInput(f"{kind}: {kind[:-1]} {item_id} is not one of job {job_id}'s annotations")
        return wanted

    def put_annotations(self, task_id: int, data: dict, job_id: int | None = None) -> dict:
        """Replace all of the task's (or the job's) annotations."""
        with self._engine.begin() as connection:
            items = self._checked_items(connection, task_id, data, job_id)
            self._delete_in(connection, task_id, job_id)
            stored = insert_items(connection, task_id, items, request_id=None)
            self._touch(connection, task_id)
        return labeled_data(stored)

    def patch_annotations(self, task_id: int, data: dict, action: str, job_id: int | None = None) -> dict:
        """Create items (new ids), or update or delete items by id; returns the items affected. For
        a job, new and updated items must lie on its frames, and updated or deleted ones must be
        its annotations (what ``get_annotations`` gives for it)."""
        if action not in PATCH_ACTIONS:
            raise InvalidInput(f"action: must be one of {', '.join(PATCH_ACTIONS)}, got {action!r}")
        with self._engine.begin() as connection:
            if action == "create":
                affected = insert_items(connection, task_id, self._checked_items(connection, task_id, data, job_id),
                                        request_id=None)
            elif action == "delete":
                affected = []
                for batch in batches([item_id for _, item_id in self._job_ids(connection, task_id, job_id, data)]):
                    affected += connection.execute(select(annotations.c.id, annotations.c.kind, annotations.c.content)
                                                   .where(annotations.c.id.in_(batch))).all()
                    connection.execute(delete(annotations).where(annotations.c.id.in_(batch)))
                affected.sort()
            else:
                ids = self._job_ids(connection, task_id, job_id, data)
                affected = []
                for (kind, item), (_, item_id) in zip(self._checked_items(connection, task_id, data, job_id), ids):
                    # An edited item is the user's now: a rerun of its request must not replace it.
                    connection.execute(update(annotations).where(annotations.c.id == item_id).values(
                        frame=item["frame"], label_id=item["label_id"], content=item, request_id=None))
                    affected.append((item_id, kind, item))
            self._touch(connection, task_id)
        return labeled_data(affected)

    def delete_annotations(self, task_id: int, job_id: int | None = None) -> None:
        """Delete the task's (or the job's) annotations."""
        with self._engine.begin() as connection:
            self._delete_in(connection, task_id, job_id)
            self._touch(connection, task_id)

    def _delete_in(self, connection, task_id: int, job_id: int | None) -> None:
        if job_id is None:
            task_row(connection, task_id)
            connection.execute(delete(annotations).where(annotations.c.task_id == task_id))
            return
        # A track is deleted whole: this store keeps tracks whole, not cut at job boundaries as CVAT does.
        for batch in batches([row.id for row in self._rows_in(connection, task_id, job_id)]):
            connection.execute(delete(annotations).where(annotations.c.id.in_(batch)))

    # Results of annotation requests (the RQ workers)

    def write_results(self, request_id: str, run: str, task_id: int,
                      results: dict[int, tuple[list[dict], list[dict]]], cleanup_frames: list[int] | None,
                      attempt: tuple[str, int] | None = None) -> bool:
        """Write one chunk of a request's results, ``frame -> (tags, shapes)``, in one transaction.

        With ``cleanup_frames`` (the request's target frames), the first chunk of the request to
        get here deletes the annotations on those frames that the request did not write; later and
        concurrent chunks do not. A frame written again (a retried chunk) replaces what the request
        wrote there before. Returns whether this call did the cleanup. Raises StaleRun when ``run``
        is no longer the request's run, or when ``attempt``, (chunk id, attempt number), is older
        than an attempt of that chunk that has written (results or none) before.
        """
        with self._engine.begin() as connection:
            hold_run(connection, request_runs, request_id, run)
            if attempt is not None:
                self._hold_attempt(connection, request_id, task_id, *attempt)
            context = TaskContext.load(connection, task_id)
            items = []
            for frame in sorted(results):
                context.check_frame(frame, f"results[{frame!r}]")
                tags, shapes = results[frame]
                for kind, kind_items in (("tags", tags), ("shapes", shapes)):
                    for index, item in enumerate(kind_items):
                        where = f"results[{frame}].{kind}[{index}]"
                        checked = CHECKS[kind](item, where, context)
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
                    for batch in batches(sorted(set(cleanup_frames))):
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
                for batch in batches(sorted(results)):
                    connection.execute(delete(annotations).where(
                        annotations.c.request_id == request_id, annotations.c.frame.in_(batch)))
                insert_items(connection, task_id, items, request_id=request_id)
            if results or cleaned:
                self._touch(connection, task_id)
            return cleaned

    def _hold_attempt(self, connection, request_id: str, task_id: int, chunk_id: str, attempt: int) -> None:
        """Record ``attempt`` as the chunk's latest, row locked for the transaction; StaleRun if a
        newer one is recorded."""
        connection.execute(self._upsert(chunk_attempts).values(request_id=request_id, chunk_id=chunk_id,
                                                                attempt=attempt, task_id=task_id)
                           .on_conflict_do_nothing())
        this_chunk = (chunk_attempts.c.request_id == request_id, chunk_attempts.c.chunk_id == chunk_id)
        latest = connection.execute(select(chunk_attempts.c.attempt).where(*this_chunk).with_for_update()).scalar_one()
        if latest > attempt:
            raise StaleRun(f"attempt {attempt} of chunk {chunk_id} of request {request_id} has been replaced by "
                           f"attempt {latest}; nothing was written")
        if latest < attempt:
            connection.execute(update(chunk_attempts).where(*this_chunk).values(attempt=attempt))

    def rectangles(self, task_id: int, frames: list[int]) -> dict[int, list[dict]]:
        """The rectangle shapes on ``frames``, by frame, each with its id, in id order."""
        with self._engine.begin() as connection:
            task_row(connection, task_id)
            return rectangles_on(connection, task_id, frames)

    def replace_with_tracks(self, request_id: str, run: str, task_id: int, frames: list[int], link,
                            job_id: int | None = None) -> bool:
        """ReID's result: the rectangles on ``frames`` replaced, in one transaction, by the tracks
        ``link(rectangles_by_frame)`` makes of them. Once per run: False when they were already
        written; StaleRun when ``run`` is no longer the request's run."""
        with self._engine.begin() as connection:
            if hold_run(connection, request_runs, request_id, run).tracks_written:
                return False
            by_frame = rectangles_on(connection, task_id, frames)
            context = TaskContext.load(connection, task_id)
            new_tracks = [("tracks", checked_track(track, f"tracks[{index}]", context))
                          for index, track in enumerate(link(by_frame))]
            for batch in batches([box["id"] for boxes in by_frame.values() for box in boxes]):
                connection.execute(delete(annotations).where(annotations.c.id.in_(batch)))
            insert_items(connection, task_id, new_tracks, request_id=request_id)
            connection.execute(update(request_runs).where(request_runs.c.request_id == request_id)
                               .values(tracks_written=True))
            self._touch(connection, task_id)
        return True

    def request_frames(self, request_id: str) -> set[int]:
        """The frames the request has written results for, those without any shape included."""
        with self._engine.begin() as connection:
            return set(connection.execute(
                select(request_frames.c.frame).where(request_frames.c.request_id == request_id)).scalars())

    def written_frames(self, request_id: str, run: str) -> set[int]:
        """The frames ``run`` has written results for; none once it is no longer the request's run."""
        with self._engine.begin() as connection:
            return set(connection.execute(
                select(request_frames.c.frame)
                .join(request_runs, request_runs.c.request_id == request_frames.c.request_id)
                .where(request_frames.c.request_id == request_id, request_runs.c.run == run)).scalars())

    def begin_run(self, request_id: str, run: str, task_id: int, job_id: int | None = None,
                  cleanup: bool = False) -> None:
        """Make ``run`` the request's run: earlier runs of the id write nothing from now on, their
        annotations stay as the task's own, and the bookkeeping starts afresh. CVAT's request ids
        repeat (one per target), so every run on a target comes through here. Here ``cleanup``
        happens at the run's first write (``write_results``), so a run that writes nothing cleans
        nothing."""
        with self._engine.begin() as connection:
            upsert = self._upsert(request_runs)
            connection.execute(upsert.values(request_id=request_id, run=run, task_id=task_id, tracks_written=False)
                               .on_conflict_do_update(index_elements=[request_runs.c.request_id],
                                                      set_={"run": run, "task_id": task_id, "tracks_written": False}))
            connection.execute(delete(requests_cleanup).where(requests_cleanup.c.request_id == request_id))
            connection.execute(delete(request_frames).where(request_frames.c.request_id == request_id))
            connection.execute(delete(chunk_attempts).where(chunk_attempts.c.request_id == request_id))
            connection.execute(update(annotations).where(annotations.c.request_id == request_id)
                               .values(request_id=None))

    # Exports

    def export_coco(self, task_id: int, coco_ids: bool = False) -> dict:
        """COCO detection JSON (``exports.coco``)."""
        return exports.coco(self.get_task(task_id), self.frames_meta(task_id)["frames"], self.get_annotations(task_id),
                            coco_ids)

    def export_cvat_xml(self, task_id: int) -> str:
        """CVAT for images 1.1 XML, tracks included (``exports.cvat_xml``)."""
        return exports.cvat_xml(self.get_task(task_id), self.frames_meta(task_id)["frames"],
                                self.get_annotations(task_id))
