"""The RQ worker for chunks: ``python -m dispatcher worker``.

A plain ``rq worker annotation`` runs chunks too; this one finds the chunks of a worker that died
(SIGKILL, a lost host) in seconds instead of RQ's 10+ minutes. RQ marks a running job abandoned when
its heartbeat lapses (by default 60 s after the last one) and requeues it (chunks are enqueued with
retries) the next time any worker cleans the registries (by default every 10 minutes, and only
between jobs or dequeue waits of ~7 minutes). Here heartbeats lapse after HEARTBEAT_GRACE seconds
and every worker wakes and cleans every MAINTENANCE_INTERVAL seconds.

Chunks run in the worker's own process, not in a child forked per chunk as RQ's default worker
does: a fork costs ~100 ms of a chunk on a 2-core machine (the copied pages of a large Python
process), and the services a chunk needs (clients, the function registry) are built once. A thread
keeps the heartbeats while a chunk runs, which RQ's forking worker does from its parent process;
SIGKILL takes the chunk down with its worker, and the heartbeat lapses as for a lost host.

Redis outages: RQ's worker retries a lost connection only while it waits for a chunk, and quits on
a Redis error anywhere else (at start, between chunks, around a running chunk). ``run`` then waits
for Redis with backoff and starts a new RQ worker, so the process never exits on its own; SIGTERM
or SIGINT still ends it within seconds, Redis up or down (a running chunk is finished first, RQ's
warm shutdown; a second signal kills it).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

import httpcore  # noqa: F401  httpx imports it with its first client: here, not in every chunk
import redis
import rq
from rq.worker import WorkerStatus

import dispatcher.chunks  # noqa: F401  imported at start, so that the first chunk does not pay for it
from dispatcher.settings import Settings
from dispatcher.submission import queue_name

log = logging.getLogger("dispatcher")
JOB_MONITORING_INTERVAL = 5  # seconds between the heartbeats of a running chunk
HEARTBEAT_GRACE = 15  # seconds without a heartbeat after which a chunk counts as abandoned
MAINTENANCE_INTERVAL = 10  # seconds between registry cleanings (abandoned chunks requeued)
WORKER_TTL = MAINTENANCE_INTERVAL + 15  # RQ waits on the queue for worker_ttl - 15 s between cleanings
RECONNECT_SECONDS = (0.5, 5.0)  # the first and the longest wait between attempts to reach Redis
# Above the queue wait (WORKER_TTL - 15 s), so that only a Redis that stopped answering times out.
SOCKET_TIMEOUT = WORKER_TTL + 5
CONNECT_TIMEOUT = 5


class ChunkWorker(rq.SimpleWorker):
    max_connection_wait_time = RECONNECT_SECONDS[1]  # RQ's own retries while waiting for a chunk: 60 s

    def __init__(self, *args, stop: threading.Event, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop = stop  # set by SIGTERM or SIGINT, whichever worker of the process got it

    def get_heartbeat_ttl(self, job: rq.job.Job, working_time: float = 0.0) -> int:
        return self.job_monitoring_interval + HEARTBEAT_GRACE

    def execute_job(self, job: rq.job.Job, queue: rq.Queue) -> None:
        execution = self.prepare_execution(job)
        ended = threading.Event()
        beats = threading.Thread(target=self._keep_heartbeats, args=(job, execution, ended), name="heartbeats",
                                 daemon=True)
        beats.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            ended.set()
            beats.join()
        self.set_state(WorkerStatus.IDLE)

    def _keep_heartbeats(self, job: rq.job.Job, execution, ended: threading.Event) -> None:
        while not ended.wait(self.job_monitoring_interval):
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as error:  # the chunk rides out the outage; so do its heartbeats
                log.warning("heartbeat of chunk %s not sent: %s", job.id, error)

    def request_stop(self, signum, frame):
        self.stop.set()
        super().request_stop(signum, frame)

    def _install_signal_handlers(self):
        super()._install_signal_handlers()
        if self.stop.is_set():  # the signal came while this worker was starting
            self._stop_requested = True

    def unsubscribe(self):
        """RQ's, with the one-second wait RQ means. redis-py 8's ``PubSubWorkerThread.stop()`` waits for
        the thread without a bound, and a thread that has read the unsubscribe's reply first waits up
        to RQ's 60 s for a new subscription: a SIGTERM'd idle worker then took 20-60 s to exit (one
        stop in four on a loaded machine). Told to stop first, the thread ends on that reply."""
        if self.pubsub_thread:
            self.pubsub_thread.stop(timeout=0)
            try:
                self.pubsub.unsubscribe()
            finally:
                self.pubsub_thread.stop(timeout=1)
                self.pubsub.close()

    def teardown(self):
        try:
            super().teardown()
        finally:  # with Redis down RQ never gets to stop its command listener, which would retry for ever
            if self.pubsub_thread is not None and self.pubsub_thread.is_alive():
                self.pubsub_thread.stop(timeout=1)


def run(settings: Settings, burst: bool = False, name: str | None = None) -> bool:
    """Work on the deployment's queue until SIGTERM or SIGINT (or, with ``burst``, an empty queue);
    returns whether any chunk ran."""
    stop, worked, worker = threading.Event(), False, None
    while True:
        _on_stop_signals(stop)
        connection = redis.Redis.from_url(settings.redis_url, socket_timeout=SOCKET_TIMEOUT,
                                          socket_connect_timeout=CONNECT_TIMEOUT)
        if not _wait_for_redis(connection, stop):
            return worked
        if worker is not None:
            with contextlib.suppress(redis.RedisError):  # its name is free for the next one
                worker.register_death()
        try:
            worker = ChunkWorker([queue_name(settings.deployment_namespace)], name=name, connection=connection,
                                 maintenance_interval=MAINTENANCE_INTERVAL,
                                 job_monitoring_interval=JOB_MONITORING_INTERVAL, worker_ttl=WORKER_TTL, stop=stop)
            worked = worker.work(burst=burst, logging_level="INFO") or worked
        except redis.RedisError as error:  # from RQ's start or its teardown
            log.warning("the RQ worker lost Redis: %s", error)
        finally:
            _on_stop_signals(stop)
        if burst or stop.is_set():
            return worked
        stop.wait(RECONNECT_SECONDS[0])  # an RQ worker that keeps failing at once must not spin


def _on_stop_signals(stop: threading.Event) -> None:
    """Between RQ workers (RQ installs its own handlers while one works)."""
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())


def _wait_for_redis(connection: redis.Redis, stop: threading.Event) -> bool:
    """True once Redis answers, False when stopped first; waits back off up to RECONNECT_SECONDS[1]."""
    delay = RECONNECT_SECONDS[0]
    while not stop.is_set():
        try:
            return connection.ping()
        except redis.RedisError as error:
            log.warning("Redis unreachable (%s); next attempt in %gs", error, delay)
        stop.wait(delay)
        delay = min(2 * delay, RECONNECT_SECONDS[1])
    return False


def busy_worker_pids(settings: Settings) -> list[int]:
    """The process ids of the deployment's workers that are running a chunk, as RQ records them."""
    with redis.Redis.from_url(settings.redis_url) as connection:
        queue = rq.Queue(queue_name(settings.deployment_namespace), connection=connection)
        return [worker.pid for worker in rq.Worker.all(queue=queue) if worker.get_state() == WorkerStatus.BUSY]
