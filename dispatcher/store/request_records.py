"""Request records in the dispatcher's database: each request id's current run and its units'
outcomes, so that requests outlive Redis (docs/architecture.md §12).

Redis stays where progress is counted and chunks are queued; these rows follow it at the moments
that matter (created, started, a unit failed or matched, canceled, ended), and a detector's done
frames are what its run wrote, read from the store's own fenced bookkeeping. Both task stores (the
local one and CVAT's) keep them, in the same database as their runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import delete, or_, select, update

from dispatcher.store.rows import upsert
from dispatcher.store.tables import request_records, request_units


class RequestRecords:
    def __init__(self, engine, written_frames: Callable[[str, str], set[int]]):
        """``written_frames(request_id, run)``: the frames the store holds that run's results of."""
        self._engine = engine
        self._written_frames = written_frames

    def create(self, record: dict) -> None:
        """The request id's new current run (``record``: the table's columns less the bookkeeping);
        the previous run's record and outcomes are replaced."""
        row = {**record, "status": "queued", "started": None, "ended": None, "expires": None, "exc_info": None,
               "cancel_requested": False, "generation": 0, "submitted": False, "updated": time.time()}
        with self._engine.begin() as connection:
            previous = connection.execute(select(request_records.c.run).where(
                request_records.c.request_id == record["request_id"])).scalar()
            if previous is not None:
                connection.execute(delete(request_units).where(request_units.c.run == previous))
            statement = upsert(connection, request_records).values(row)
            connection.execute(statement.on_conflict_do_update(index_elements=[request_records.c.request_id],
                                                               set_={key: statement.excluded[key] for key in row}))

    def _update(self, run: str, *conditions, **values) -> bool:
        with self._engine.begin() as connection:
            return connection.execute(update(request_records).where(request_records.c.run == run, *conditions)
                                      .values(**values, updated=time.time())).rowcount > 0

    def submitted(self, run: str, generation: int) -> None:
        """Every chunk of ``generation`` is queued (a later generation's queueing wins)."""
        self._update(run, request_records.c.generation == generation, submitted=True)

    def started(self, run: str, when: float) -> None:
        self._update(run, request_records.c.started.is_(None), started=when, status="started")

    def cancel_requested(self, run: str) -> None:
        self._update(run, cancel_requested=True)

    def finish(self, run: str, status: str, ended: float, exc_info: str, expires: float) -> bool:
        """The run's end, once: False when it had ended already."""
        return self._update(run, request_records.c.ended.is_(None), status=status, ended=ended,
                            exc_info=exc_info or None, expires=expires)

    def requeue(self, run: str, generation: int) -> bool:
        """Compare-and-set: take the right to queue the run's remaining units again, as generation
        ``generation + 1``. Only one caller that read ``generation`` wins."""
        return self._update(run, request_records.c.generation == generation, request_records.c.ended.is_(None),
                            generation=generation + 1, submitted=False)

    def unit_failed(self, run: str, unit: int, reason: str) -> None:
        """A unit done already (ReID's matched pair) stays done."""
        with self._engine.begin() as connection:
            connection.execute(upsert(connection, request_units)
                               .values(run=run, unit=unit, reason=reason, links=None).on_conflict_do_nothing())

    def unit_matched(self, run: str, unit: int, links: list[list[int]]) -> None:
        """ReID: a frame pair done, with its matched annotation id pairs."""
        with self._engine.begin() as connection:
            connection.execute(upsert(connection, request_units).values(run=run, unit=unit, reason=None, links=links)
                               .on_conflict_do_update(index_elements=[request_units.c.run, request_units.c.unit],
                                                      set_={"reason": None, "links": links}))

    def get(self, request_id: str) -> dict | None:
        with self._engine.begin() as connection:
            row = connection.execute(select(request_records).where(
                request_records.c.request_id == request_id)).mappings().first()
        return dict(row) if row else None

    def of_run(self, run: str) -> dict | None:
        with self._engine.begin() as connection:
            row = connection.execute(select(request_records).where(request_records.c.run == run)).mappings().first()
        return dict(row) if row else None

    def listed(self, now: float) -> list[dict]:
        """Records not past their TTL, by request id."""
        with self._engine.begin() as connection:
            return [dict(row) for row in connection.execute(
                select(request_records).where(or_(request_records.c.expires.is_(None), request_records.c.expires > now))
                .order_by(request_records.c.request_id)).mappings()]

    def unfinished(self, task_id: int | None = None) -> list[dict]:
        query = select(request_records).where(request_records.c.ended.is_(None))
        if task_id is not None:
            query = query.where(request_records.c.task_id == task_id)
        with self._engine.begin() as connection:
            return [dict(row) for row in connection.execute(query.order_by(request_records.c.enqueued)).mappings()]

    def outcomes(self, record: dict) -> tuple[set[int], dict[int, str], dict[int, list[list[int]]]]:
        """The run's done units, failed ones with their reasons, and ReID's links by pair."""
        with self._engine.begin() as connection:
            rows = connection.execute(select(request_units).where(request_units.c.run == record["run"])).all()
        links = {row.unit: row.links for row in rows if row.reason is None}
        done = set(links) if record["kind"] == "reid" else self._written_frames(record["request_id"], record["run"])
        failures = {row.unit: row.reason for row in rows if row.reason is not None and row.unit not in done}
        return done, failures, links
