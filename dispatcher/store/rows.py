"""Statements the task store shares between its parts: a task's row and size, its jobs, labels
and annotation rows, in batches small enough for any database."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from dispatcher.store.errors import NotFound, StaleRun
from dispatcher.store.tables import annotations, attributes, frames, jobs, labels, tasks

BATCH = 5000  # frames per IN (...) list, well below SQLite's and PostgreSQL's parameter limits


def upsert(connection, table: Table):
    """INSERT that can take an ON CONFLICT clause: SQLite and PostgreSQL spell it alike, each in
    its own dialect's construct."""
    return (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(table)


def touch(connection, task_id: int, frames: bool = False) -> None:
    """The task changed now (its frames too, with ``frames``): CVAT's ``updated_date``, which
    cvat-sdk's cache of the task is keyed on. Each write calls it last, in its transaction, so
    the row lock it takes is held only while that transaction commits."""
    now = datetime.now(UTC)
    values = {"updated_date": now, "data_updated_date": now} if frames else {"updated_date": now}
    connection.execute(update(tasks).where(tasks.c.id == task_id).values(**values))


def task_row(connection, task_id: int, for_update: bool = False):
    query = select(tasks).where(tasks.c.id == task_id)
    row = connection.execute(query.with_for_update() if for_update else query).first()
    if row is None:
        raise NotFound(f"task {task_id} does not exist")
    return row


def hold_run(connection, runs, request_id: str, run: str):
    """Lock the request's row in ``runs`` (the local store's request_runs, the CVAT store's
    cvat_runs) for this transaction; StaleRun unless ``run`` is its run."""
    row = connection.execute(select(runs).where(runs.c.request_id == request_id).with_for_update()).first()
    if row is None or row.run != run:
        raise StaleRun(f"run {run} of request {request_id} has been replaced; nothing was written")
    return row


def task_size(connection, task_id: int) -> int:
    return connection.execute(select(func.count()).select_from(frames).where(frames.c.task_id == task_id)).scalar_one()


def update_jobs(connection, task_id: int, size: int, segment_size: int | None) -> None:
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


def insert_labels(connection, task_id: int, checked: list[dict], parent_id: int | None) -> None:
    for position, label in enumerate(checked):
        label_id = connection.execute(insert(labels).values(
            task_id=task_id, parent_id=parent_id, position=position, name=label["name"], type=label["type"],
            svg=label["svg"])).inserted_primary_key[0]
        for attribute_position, attribute in enumerate(label["attributes"]):
            connection.execute(insert(attributes).values(label_id=label_id, position=attribute_position, **attribute))
        insert_labels(connection, task_id, label["sublabels"], parent_id=label_id)


def rectangles_on(connection, task_id: int, frame_list: list[int]) -> dict[int, list[dict]]:
    by_frame: dict[int, list[dict]] = {}
    for batch in batches(sorted(set(frame_list))):
        rows = connection.execute(select(annotations.c.id, annotations.c.content).where(
            annotations.c.task_id == task_id, annotations.c.kind == "shapes", annotations.c.frame.in_(batch))
            .order_by(annotations.c.id)).all()
        for item_id, content in rows:
            if content["type"] == "rectangle":
                by_frame.setdefault(content["frame"], []).append({"id": item_id, **content})
    return by_frame

def insert_items(connection, task_id: int, items: list[tuple[str, dict]], request_id: str | None):
    """Insert checked items; returns (id, kind, content) rows in the order given."""
    if not items:
        return []
    ids = connection.execute(
        insert(annotations).returning(annotations.c.id, sort_by_parameter_order=True),
        [{"task_id": task_id, "kind": kind, "frame": item["frame"], "label_id": item["label_id"],
          "request_id": request_id, "content": item} for kind, item in items]).scalars().all()
    return [(item_id, kind, item) for item_id, (kind, item) in zip(ids, items)]

def labeled_data(rows) -> dict:
    """(id, kind, content) rows -> CVAT's LabeledData, each item with its id."""
    data = {"version": 0, "tags": [], "shapes": [], "tracks": []}
    for item_id, kind, content in rows:
        data[kind].append({"id": item_id, **content})
    return data

def batches(values: list) -> list[list]:
    return [values[start:start + BATCH] for start in range(0, len(values), BATCH)]

def iso(moment: datetime) -> str:
    if moment.tzinfo is None:  # SQLite keeps no time zone; every moment stored is UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
