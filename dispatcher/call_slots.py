"""Call slots: how many calls each function has in flight, across every chunk on every worker.

Redis keys ``<prefix>:slots:<function id>`` (the prefix is ``dispatcher:<namespace>`` in a
deployment): a sorted set of leases scored by their expiry, and ``...:freed``: a list a slot's
holder pushes to when it gives the slot up, which waiters block on.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import redis

from dispatcher.request_book import PREFIX

# Take a call slot of a function if fewer than its limit are held; expired leases (their holder
# died) are dropped first. KEYS: the function's slot set. ARGV: now, lease expiry, limit, lease id.
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  return 1
end
return 0
"""


WAKE_SECONDS = 0.05  # the longest a waiter sleeps without a wake-up


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
    def hold(self, function_id: str, limit: int, should_stop=lambda: False):
        """Wait for a slot; ``should_stop`` is asked while waiting and its exception, if it raises,
        propagates. A waiter wakes as soon as a slot is given up (a function's worker idles while
        nobody calls it: at 40 ms a call, waking by polling every 20 ms cost a fifth of its
        throughput), and at least every ``WAKE_SECONDS`` for leases that lapsed."""
        key, lease = f"{self.prefix}:slots:{function_id}", uuid.uuid4().hex
        while True:
            now = time.time()
            if self._take(keys=[key], args=[now, now + self.lease_seconds, limit, lease]):
                break
            should_stop()
            self.redis.blpop([f"{key}:freed"], timeout=WAKE_SECONDS)
        with self._lock:
            self._held[lease] = key
            if self._renewer is None:  # started here, not in __init__: RQ forks after services exist
                self._renewer = threading.Thread(target=self._renew, name="call-slot-renewer", daemon=True)
                self._renewer.start()
        try:
            yield
        finally:
            with self._lock:
                del self._held[lease]
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(key, lease)
                pipe.lpush(f"{key}:freed", 1)  # one waiter wakes; at most `limit` wake-ups are kept
                pipe.ltrim(f"{key}:freed", 0, limit - 1)
                pipe.expire(f"{key}:freed", 60)
                pipe.execute()

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
