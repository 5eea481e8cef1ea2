"""Call slots: how many calls each function has in flight, across every chunk on every worker.

A function has slots on each of its replicas (docs/architecture.md §13): as many as the replica
serves calls at once. A call takes a slot on the least busy replica with one free, passing over
replicas marked down (one whose call could not connect) while another is up.

Redis keys (the prefix is ``dispatcher:<namespace>`` in a deployment):
``<prefix>:slots:<function id>@<replica>``, a sorted set of leases scored by their expiry;
``<prefix>:slots:<function id>:freed``, a list a slot's holder pushes to when it gives the slot up,
which waiters block on; ``<prefix>:down:<function id>@<replica>``, set for ``DOWN_SECONDS``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import redis

from dispatcher.request_book import PREFIX

# Take a call slot on the replica with the smallest share of its slots held, among those with one
# free and not marked down (all of them, when every replica is marked down: one must be tried);
# expired leases (their holder died) are dropped first. KEYS: n slot sets, then their n down marks.
# ARGV: now, lease expiry, lease id, then the n limits. Returns the replica's 1-based index, or 0.
_TAKE_SLOT = """
local n = #KEYS / 2
local any_up = redis.call('EXISTS', unpack(KEYS, n + 1, 2 * n)) < n
local best, best_share = 0, 2
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1])
  if not any_up or redis.call('EXISTS', KEYS[n + i]) == 0 then
    local share = redis.call('ZCARD', KEYS[i]) / tonumber(ARGV[3 + i])
    if share < best_share and share < 1 then best, best_share = i, share end
  end
end
if best > 0 then redis.call('ZADD', KEYS[best], ARGV[2], ARGV[3]) end
return best
"""


WAKE_SECONDS = 0.05  # the longest a waiter sleeps without a wake-up
DOWN_SECONDS = 5.0  # a replica whose call could not connect gets no calls this long while another is up


class CallSlots:
    """How many calls each function has in flight, across every chunk of every request on every
    worker: at most its worker count, so that chunks running side by side do not overrun it (a
    nuclio function answers 503 when no worker frees up in time).

    A slot is a lease in a Redis sorted set, scored by its expiry. A thread renews this process's
    leases every ``lease_seconds / 3``, however long a call takes; when a worker dies its leases
    lapse within ``lease_seconds`` and other chunks take the slots."""

    def __init__(self, client: redis.Redis, lease_seconds: float = 10, prefix: str = PREFIX):
        self.redis = client
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self._take = client.register_script(_TAKE_SLOT)
        self._held: dict[str, str] = {}  # lease -> its function's key
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    @contextlib.contextmanager
    def hold(self, function_id: str, limits: dict[str, int], should_stop=lambda: False):
        """Wait for a slot on one of the function's replicas, ``limits``: replica name -> its
        slots; yields the replica's name. ``should_stop`` is asked while waiting and its exception,
        if it raises, propagates. A waiter wakes as soon as a slot is given up (a function's worker idles while
        nobody calls it: at 40 ms a call, waking by polling every 20 ms cost a fifth of its
        throughput), and at least every ``WAKE_SECONDS`` for leases that lapsed."""
        names, lease = list(limits), uuid.uuid4().hex
        keys = [f"{self.prefix}:slots:{function_id}@{name}" for name in names]
        marks = [self._down_key(function_id, name) for name in names]
        freed = f"{self.prefix}:slots:{function_id}:freed"
        while True:
            now = time.time()
            taken = self._take(keys=keys + marks, args=[now, now + self.lease_seconds, lease, *limits.values()])
            if taken:
                key = keys[taken - 1]
                break
            should_stop()
            self.redis.blpop([freed], timeout=WAKE_SECONDS)
        with self._lock:
            self._held[lease] = key
            if self._renewer is None:  # started here, not in __init__: RQ forks after services exist
                self._renewer = threading.Thread(target=self._renew, name="call-slot-renewer", daemon=True)
                self._renewer.start()
        try:
            yield names[taken - 1]
        finally:
            with self._lock:
                del self._held[lease]
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(key, lease)
                pipe.lpush(freed, 1)  # one waiter wakes; at most as many wake-ups as slots are kept
                pipe.ltrim(freed, 0, sum(limits.values()) - 1)
                pipe.expire(freed, 60)
                pipe.execute()

    def mark_down(self, function_id: str, name: str) -> None:
        """The replica gets no calls for DOWN_SECONDS while another replica is up."""
        self.redis.set(self._down_key(function_id, name), 1, px=int(DOWN_SECONDS * 1000))

    def all_down(self, function_id: str, names: list[str]) -> bool:
        return self.redis.exists(*(self._down_key(function_id, name) for name in names)) == len(names)

    def _down_key(self, function_id: str, name: str) -> str:
        return f"{self.prefix}:down:{function_id}@{name}"

    def _renew(self) -> None:
        while True:
            time.sleep(self.lease_seconds / 3)
            with self._lock:
                held = list(self._held.items())
            if held:
                expiry = time.time() + self.lease_seconds
                with self.redis.pipeline(transaction=False) as pipe:
                    for lease, key in held:
                        pipe.zadd(key, {lease: expiry}, xx=True)  # a lease already given up stays gone
                    pipe.execute()
