"""Requests that outlive Redis: the runs the task store knows unfinished but Redis has lost (it
restarted without persistence) or left without work (no chunk queued or running: the API died
while queueing them), put back and their remaining units queued again (docs/architecture.md §12).

The API sweeps at start and every ``RECOVERY_INTERVAL`` seconds; any number of API processes may,
since the store's compare-and-set on the run's generation lets one of them queue a run again. Units
are queued again only if not done: a detector's frames its run wrote (the store's fenced
bookkeeping, so no frame is written twice), ReID's matched pairs, and not those that failed for
good. A run that cannot be resumed ends failed, with the reason.
"""

from __future__ import annotations

import logging
import threading
import time

import rq
from rq.job import Job, JobStatus

from dispatcher.request_book import FINAL_STATES, RequestBook, Target
from dispatcher.submission import enqueue_chunks

log = logging.getLogger("dispatcher")
# A run's units are queued at most this many times after the first: a chunk that takes its worker
# down every time must not be queued for ever.
MAX_REQUEUES = 5
# A run Redis knows but whose chunks are not all queued yet is left alone this long: its submitter
# may still be queueing them.
SUBMIT_GRACE = 60.0
PENDING = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)


def recover(book: RequestBook, queue: rq.Queue) -> list[str]:
    """One sweep over the store's unfinished runs; returns the runs queued again."""
    requeued = []
    for stored in book.records.unfinished():
        try:
            if _recover_one(book, queue, stored):
                requeued.append(stored["run"])
        except Exception:  # one run's trouble must not keep the others waiting
            log.exception("recovering run %s of %s", stored["run"], stored["request_id"])
    return requeued


def _recover_one(book: RequestBook, queue: rq.Queue, stored: dict) -> bool:
    run = stored["run"]
    live = book.get_run(run)
    if live is not None and live["status"] in FINAL_STATES:
        # Ended in Redis; the process that ended it died before the store heard.
        ended = live["ended"] or time.time()
        ttl = book.finished_ttl if live["status"] == "finished" else book.failed_ttl
        book.records.finish(run, live["status"], ended, live["exc_info"] or "", ended + ttl)
        return False
    if not stored["submitted"] and time.time() - stored["updated"] < SUBMIT_GRACE:
        return False  # its creator, or the process that just won the compare-and-set, is queueing it
    if live is not None:
        if _has_pending_chunks(book, queue, run):
            return False
        if live["cancel_requested"]:  # canceled, and no chunk is left to end it
            book.finish(run, "canceled")
            return False
    if not book.records.requeue(run, stored["generation"]):
        return False  # another process is at it
    generation = stored["generation"] + 1
    if generation > MAX_REQUEUES:
        _fail(book, stored, live, f"the request was resumed {MAX_REQUEUES} times and still did not end; giving up")
        return False
    done, failures, links = book.records.outcomes(stored)
    if live is not None:
        done |= book.frames_done(run)
    else:
        holder = book.restore(stored, done, failures, links)
        if holder is not None:
            book.finish_stored(stored, "failed", f"Redis lost this request, and before it could be resumed "
                                                 f"{holder} took an overlapping target; {len(done)} of "
                                                 f"{len(stored['units'])} units had been done and were kept")
            return False
        if stored["cancel_requested"]:
            book.finish(run, "canceled")
            return False
    remaining = [unit for unit in stored["units"] if unit not in done and unit not in failures]
    log.warning("resuming run %s of %s: %d of %d units left (%s)", run, stored["request_id"], len(remaining),
                len(stored["units"]), "Redis had lost it" if live is None else "no chunk of it was pending")
    enqueue_chunks(book, queue, Target(stored["task_id"], stored["job_id"]), run, remaining, stored["plan"],
                   generation)
    return True


def _has_pending_chunks(book: RequestBook, queue: rq.Queue, run: str) -> bool:
    job_ids = book.chunk_jobs(run)
    return any(job is not None and job.get_status(refresh=False) in PENDING
               for job in Job.fetch_many(job_ids, connection=queue.connection))


def _fail(book: RequestBook, stored: dict, live: dict | None, reason: str) -> None:
    if live is None:
        book.finish_stored(stored, "failed", reason)
    else:
        book.finish(stored["run"], "failed", reason)


class RecoverySweeps:
    """``recover`` at start and every ``interval`` seconds, in a daemon thread, until ``stop``."""

    def __init__(self, book: RequestBook, queue: rq.Queue, interval: float):
        self._book, self._queue, self._interval = book, queue, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sweep, name="recovery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _sweep(self) -> None:
        while True:
            try:
                recover(self._book, self._queue)
            except Exception:  # Redis or the database away: the next sweep tries again
                log.exception("recovery sweep")
            if self._stopped.wait(self._interval):
                return
