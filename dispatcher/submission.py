"""Submitting a run's chunks to RQ, and canceling a request.

A run is split into chunks of consecutive units (frames, or ReID's frame pairs), one RQ job each on
CVAT's queue ``annotation``, never one job per unit; any worker on any host takes them.
"""

from __future__ import annotations

import rq

from dispatcher.request_book import FINAL_STATES, RequestBook, Run, Target

QUEUE = "annotation"  # CVAT's queue name for auto-annotation, then the deployment's namespace
CHUNK_FUNCTION = "dispatcher.chunks.annotate_chunk"
CHUNK_FAILED = "dispatcher.chunks.chunk_failed"  # RQ's failure callback of a chunk job
# A chunk whose worker died (RQ's abandoned job) or crashed runs again, this many times.
CHUNK_RETRIES = 3


def queue_name(namespace: str) -> str:
    """A deployment's RQ queue (Redis list ``rq:queue:annotation-<namespace>``): deployments sharing
    a Redis never take each other's chunks."""
    return f"{QUEUE}-{namespace}"


def plan_chunks(units: list[int], chunk_size: int, block: int = 1) -> list[list[int]]:
    """Consecutive runs of about ``chunk_size`` units, in order: one RQ job each, never one per unit.
    With ``block`` > 1 (frames the task store reads together: CVAT's chunks), a chunk holds whole
    blocks, as many as come closest to ``chunk_size`` frames, so no block is read by two chunks."""
    if chunk_size < 1 or block < 1:
        raise ValueError("chunk_size and block must be at least 1")
    if block == 1:
        return [units[start:start + chunk_size] for start in range(0, len(units), chunk_size)]
    span = block * max(1, round(chunk_size / block))
    chunks: dict[int, list[int]] = {}
    for unit in units:
        chunks.setdefault(unit // span, []).append(unit)
    return list(chunks.values())


def submit(book: RequestBook, queue: rq.Queue, target: Target, function_id: str, parameters: dict,
           units: list[int], chunk_size: int, unit_timeout: float, kind: str = "detector",
           begin=lambda run: None, owner: dict | None = None, block: int = 1) -> Run:
    """Record a run and enqueue one RQ job per chunk of its units; raises Conflict (409).
    ``begin(run)`` runs before any chunk is queued (the task store fences its writes by run). A
    chunk may run for ``unit_timeout`` per unit, and a minute more."""
    plan = {"chunk_size": chunk_size, "block": block, "unit_timeout": unit_timeout}
    run = book.create(target, function_id, parameters, units, kind, owner, plan)
    try:
        begin(run)
    except Exception as error:  # e.g. CVAT refused the cleanup: the run ends here, its target freed
        book.finish(run.id, "failed", f"the run could not begin: {error}")
        raise
    enqueue_chunks(book, queue, target, run.id, units, plan, generation=0)
    return run


def enqueue_chunks(book: RequestBook, queue: rq.Queue, target: Target, run: str, units: list[int], plan: dict,
                   generation: int) -> None:
    """Queue ``units`` of a run as chunks; ``generation`` counts how often its units were queued
    (0 when it was created, then once per recovery after Redis lost them)."""
    # No units (ReID on a target without pairs, or nothing left after a recovery) is still one
    # chunk: its worker ends the run, and a ReID run's end is where rectangles become tracks.
    chunks = plan_chunks(units, plan["chunk_size"], plan["block"]) or [[]]
    # RQ job ids allow letters, digits, '-' and '_' only, so chunks get ids of their own; a
    # recovery's differ from those a lost Redis held.
    again = f"-g{generation}" if generation else ""
    job_ids = [f"autoannotate-{target.kind}-{target.id}-{run[:12]}{again}-{index}" for index in range(len(chunks))]
    book.add_chunk_jobs(run, job_ids)
    for job_id, chunk in zip(job_ids, chunks):
        queue.enqueue(CHUNK_FUNCTION, run, chunk, job_id=job_id,
                      job_timeout=int(len(chunk) * plan["unit_timeout"]) + 60,
                      result_ttl=book.finished_ttl, failure_ttl=book.failed_ttl,
                      retry=rq.Retry(max=CHUNK_RETRIES), on_failure=rq.Callback(CHUNK_FAILED))
    if book.records is not None:
        book.records.submitted(run, generation)


def cancel(book: RequestBook, queue: rq.Queue, rid: str) -> bool:
    """Stop a request: queued chunks are removed, running ones see the flag before their next call
    and store what they finished; the last of them ends the run as canceled (now, if none runs).
    The target is free at once, so a new request on it is accepted right away (§9.5); the task
    store keeps this run's late writes from mixing with the new run's. False when the request is
    unknown."""
    record = book.get(rid)
    if record is None:
        return False
    if record["status"] in FINAL_STATES:
        return True
    run = record["run"]
    if book.get_run(run) is None:  # Redis lost it and recovery has not put it back: nothing of it is queued
        book.finish_stored(book.records.of_run(run), "canceled", "")
        return True
    book.request_cancel(run)
    for job_id in book.chunk_jobs(run):
        job = queue.fetch_job(job_id)
        if job is not None and job.get_status() in (rq.job.JobStatus.QUEUED, rq.job.JobStatus.SCHEDULED,
                                                    rq.job.JobStatus.DEFERRED):
            job.cancel()
    book.release(record)
    if book.running_chunks(run) == 0:
        book.finish(run, "canceled")
    return True
