"""Job metrics: what chunk workers did, kept in Redis so that every worker process on every host
adds to the same numbers, and the API's ``/metrics`` reads them when Prometheus scrapes it
(prometheus_client's multiprocess mode needs a directory shared by the processes, which workers on
other hosts do not have).

Redis keys (the deployment's prefix first): ``:metrics:frames``, a hash ``<function>\\t<done|failed>``
-> frames; ``:metrics:calls:<function>``, a hash of call counts per latency bucket (each call
counted in the first bucket it fits, ``+Inf`` last) and ``sum``, the seconds of all calls.
"""

from __future__ import annotations

import threading

import redis
import rq
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dispatcher.request_book import RequestBook

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class JobMetrics:
    """A worker process's side: calls are noted as they end, and written with the frames they
    finished when a chunk stores them (one Redis pipeline every ``STORE_SECONDS`` or so)."""

    def __init__(self, client: redis.Redis, prefix: str):
        self.redis, self.prefix = client, prefix
        self._lock = threading.Lock()
        self._calls: list[tuple[str, float]] = []

    def call_ended(self, function_id: str, seconds: float) -> None:
        with self._lock:
            self._calls.append((function_id, seconds))

    def frames_stored(self, function_id: str, done: int, failed: int) -> None:
        """Write the frames and the calls noted since the last write."""
        with self._lock:
            calls, self._calls = self._calls, []
        with self.redis.pipeline(transaction=False) as pipe:
            for outcome, count in (("done", done), ("failed", failed)):
                if count:
                    pipe.hincrby(f"{self.prefix}:metrics:frames", f"{function_id}\t{outcome}", count)
            for called, seconds in calls:
                key = f"{self.prefix}:metrics:calls:{called}"
                bucket = next((str(bound) for bound in LATENCY_BUCKETS if seconds <= bound), "+Inf")
                pipe.hincrby(key, bucket, 1)
                pipe.hincrbyfloat(key, "sum", seconds)
            pipe.execute()


class JobMetricsCollector(Collector):
    """The API's side: read at each scrape. Every API replica reports the same job metrics (they are
    the deployment's), so dashboards take ``max`` across replicas, not ``sum``."""

    def __init__(self, book: RequestBook, queue: rq.Queue):
        self.book, self.queue = book, queue
        self.redis, self.prefix = book.redis, book.prefix

    def collect(self):
        frames = CounterMetricFamily("autoannotate_frames", "Frames that chunk workers annotated (done) or gave up "
                                     "on (failed), by function", labels=["function", "outcome"])
        for field, count in self.redis.hgetall(f"{self.prefix}:metrics:frames").items():
            function_id, outcome = field.decode().split("\t")
            frames.add_metric([function_id, outcome], int(count))
        yield frames

        calls = HistogramMetricFamily("autoannotate_call_seconds", "Calls from chunk workers to functions, "
                                      "by function: how long each took (a batch is one call)", labels=["function"])
        for key in sorted(self.redis.scan_iter(f"{self.prefix}:metrics:calls:*")):
            counts = {field.decode(): value for field, value in self.redis.hgetall(key).items()}
            cumulative, buckets = 0, []
            for bound in [*map(str, LATENCY_BUCKETS), "+Inf"]:
                cumulative += int(counts.get(bound, 0))
                buckets.append((bound, cumulative))
            calls.add_metric([key.decode().rsplit(":", 1)[1]], buckets, float(counts.get("sum", 0)))
        yield calls

        yield GaugeMetricFamily("autoannotate_queued_chunks", "Chunks waiting in the RQ queue for a worker",
                                value=self.queue.count)
        requests = GaugeMetricFamily("autoannotate_requests", "Annotation requests listed, by status",
                                     labels=["status"])
        by_status: dict[str, int] = {}
        for request in self.book.list():
            by_status[request["status"]] = by_status.get(request["status"], 0) + 1
        for status in ("queued", "started", "finished", "failed"):
            requests.add_metric([status], by_status.get(status, 0))
        yield requests
