"""The task store of the dispatcher's standalone mode: tasks, labels, jobs and annotations here,
and two parts of its own module each: the frames (``frame_files.FrameFiles``) and what annotation
requests write (``request_writes.RequestWrites``), all over one database engine.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, func, insert, or_, select, text, update

from dispatcher import tracks
from dispatcher.converter import TaskAttribute, TaskLabel
from dispatcher.store import exports
from dispatcher.store.errors import InvalidInput, NotFound
from dispatcher.store.frame_files import FrameFiles
from dispatcher.store.request_records import RequestRecords
from dispatcher.store.request_writes import RequestWrites
from dispatcher.store.rows import (
    batches,
    insert_items,
    insert_labels,
    iso,
    labeled_data,
    task_row,
    task_size,
    touch,
)
from dispatcher.store.server_files import ServerFiles
from dispatcher.store.tables import (
    annotations,
    attributes,
    jobs,
    labels,
    metadata,
    migrate,
    open_engine,
    tasks,
)
from dispatcher.store.validation import (
    TaskContext,
    checked_data,
    checked_labels,
    item_ids,
)

PATCH_ACTIONS = ("create", "update", "delete")


class Store(FrameFiles, RequestWrites):
    """Tasks, labels, jobs, frames and annotations, and what the RQ workers write into them. The
    API, the workers and ``python -m dispatcher export`` each hold one."""

    def __init__(self, database_url: str | None, data_dir: Path, server_files_root: Path | None,
                 max_image_pixels: int):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server_files = ServerFiles(server_files_root)
        self.max_image_pixels = max_image_pixels  # frames with more are refused before decoding
        self._engine = open_engine(database_url or f"sqlite:///{self.data_dir / 'dispatcher.sqlite3'}")
        with self._engine.begin() as connection:
            # Workers starting together would race to create the same tables.
            if self._engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('dispatcher.store'))"))
            metadata.create_all(connection)
            migrate(connection)
        self.request_records = RequestRecords(self._engine, self.written_frames)

    def close(self) -> None:
        self._engine.dispose()

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
            touch(connection, task_id)
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
            touch(connection, task_id)
        return labeled_data(affected)

    def delete_annotations(self, task_id: int, job_id: int | None = None) -> None:
        """Delete the task's (or the job's) annotations."""
        with self._engine.begin() as connection:
            self._delete_in(connection, task_id, job_id)
            touch(connection, task_id)

    def _delete_in(self, connection, task_id: int, job_id: int | None) -> None:
        if job_id is None:
            task_row(connection, task_id)
            connection.execute(delete(annotations).where(annotations.c.task_id == task_id))
            return
        # A track is deleted whole: this store keeps tracks whole, not cut at job boundaries as CVAT does.
        for batch in batches([row.id for row in self._rows_in(connection, task_id, job_id)]):
            connection.execute(delete(annotations).where(annotations.c.id.in_(batch)))

    # Exports

    def export_coco(self, task_id: int, coco_ids: bool = False) -> dict:
        """COCO detection JSON (``exports.coco``)."""
        return exports.coco(self.get_task(task_id), self.frames_meta(task_id)["frames"], self.get_annotations(task_id),
                            coco_ids)

    def export_cvat_xml(self, task_id: int) -> str:
        """CVAT for images 1.1 XML, tracks included (``exports.cvat_xml``)."""
        return exports.cvat_xml(self.get_task(task_id), self.frames_meta(task_id)["frames"],
                                self.get_annotations(task_id))
