"""The RQ worker for chunks: ``python -m dispatcher worker``.

A plain ``rq worker annotation`` runs chunks too; this one finds the chunks of a worker that died
(SIGKILL, a lost host) in seconds instead of RQ's 10+ minutes. RQ marks a running job abandoned when
its heartbeat lapses (by default 60 s after the last one) and requeues it (chunks are enqueued with
retries) the next time any worker cleans the registries (by default every 10 minutes, and only
between jobs or dequeue waits of ~7 minutes). Here heartbeats lapse after HEARTBEAT_GRACE seconds
and every worker wakes and cleans every MAINTENANCE_INTERVAL seconds.
"""

from __future__ import annotations

import redis
import rq

import dispatcher.chunks  # noqa: F401  imported before RQ forks a child per chunk, so no chunk pays for it
from dispatcher.settings import Settings
from dispatcher.submission import QUEUE

JOB_MONITORING_INTERVAL = 5  # seconds between the heartbeats of a running chunk
HEARTBEAT_GRACE = 15  # seconds without a heartbeat after which a chunk counts as abandoned
MAINTENANCE_INTERVAL = 10  # seconds between registry cleanings (abandoned chunks requeued)
WORKER_TTL = MAINTENANCE_INTERVAL + 15  # RQ waits on the queue for worker_ttl - 15 s between cleanings


class ChunkWorker(rq.Worker):
    def get_heartbeat_ttl(self, job: rq.job.Job, working_time: float = 0.0) -> int:
        return self.job_monitoring_interval + HEARTBEAT_GRACE


def run(settings: Settings, burst: bool = False, name: str | None = None) -> bool:
    connection = redis.Redis.from_url(settings.redis_url)
    worker = ChunkWorker([QUEUE], name=name, connection=connection, maintenance_interval=MAINTENANCE_INTERVAL,
                         job_monitoring_interval=JOB_MONITORING_INTERVAL, worker_ttl=WORKER_TTL)
    return worker.work(burst=burst, logging_level="INFO")
