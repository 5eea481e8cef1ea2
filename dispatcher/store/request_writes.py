"""What the RQ workers write into the local store: a request's results, chunk by chunk, idempotent
per (request, frame) and fenced by run, and ReID's tracks (docs/architecture.md §7).

``begin_run`` makes a run the request's current one; ``write_results`` writes a chunk's frames in
one transaction, refusing a run or a chunk attempt that has been replaced (``StaleRun``), with the
request's cleanup done once by whichever chunk gets there first; ``replace_with_tracks`` is ReID's
one write. ``RequestWrites`` is one of the parts ``Store`` is made of, over the store's engine.
"""

from __future__ import annotations

from sqlalchemy import Engine, delete, select, update

from dispatcher.store.errors import InvalidInput, StaleRun
from dispatcher.store.rows import batches, hold_run, insert_items, rectangles_on, task_row, touch, upsert
from dispatcher.store.tables import annotations, chunk_attempts, request_frames, request_runs, requests_cleanup
from dispatcher.store.validation import CHECKS, TaskContext, checked_track


class RequestWrites:
    _engine: Engine

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
                    upsert(connection, requests_cleanup).values(request_id=request_id, task_id=task_id)
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
                statement = upsert(connection, request_frames)
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=[request_frames.c.request_id, request_frames.c.frame],
                        set_={"task_id": statement.excluded.task_id}),
                    [{"request_id": request_id, "frame": frame, "task_id": task_id} for frame in sorted(results)])
                for batch in batches(sorted(results)):
                    connection.execute(delete(annotations).where(
                        annotations.c.request_id == request_id, annotations.c.frame.in_(batch)))
                insert_items(connection, task_id, items, request_id=request_id)
            if results or cleaned:
                touch(connection, task_id)
            return cleaned

    def _hold_attempt(self, connection, request_id: str, task_id: int, chunk_id: str, attempt: int) -> None:
        """Record ``attempt`` as the chunk's latest, row locked for the transaction; StaleRun if a
        newer one is recorded."""
        connection.execute(upsert(connection, chunk_attempts).values(request_id=request_id, chunk_id=chunk_id,
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
            touch(connection, task_id)
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
            connection.execute(upsert(connection, request_runs)
                               .values(request_id=request_id, run=run, task_id=task_id, tracks_written=False)
                               .on_conflict_do_update(index_elements=[request_runs.c.request_id],
                                                      set_={"run": run, "task_id": task_id, "tracks_written": False}))
            connection.execute(delete(requests_cleanup).where(requests_cleanup.c.request_id == request_id))
            connection.execute(delete(request_frames).where(request_frames.c.request_id == request_id))
            connection.execute(delete(chunk_attempts).where(chunk_attempts.c.request_id == request_id))
            connection.execute(update(annotations).where(annotations.c.request_id == request_id)
                               .values(request_id=None))
