"""Call slots: how many calls each function has in flight, across every chunk on every worker.

Redis key ``dispatcher:slots:<function id>``: a sorted set of leases scored by their expiry.
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
        """Wait for a slot (polling, backing off to 20 ms); ``should_stop`` is asked while waiting
        and its exception, if it raises, propagates."""
        key, lease, pause = f"{self.prefix}:slots:{function_id}", uuid.uuid4().hex, 0.001
        while True:
            now = time.time()
            if self._take(keys=[key], args=[now, now + self.lease_seconds, limit, lease]):
                break
            should_stop()
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
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
            self.redis.zrem(key, lease)

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
