"""Circuit breakers: one per function, shared by every chunk on every worker through Redis.

A function that cannot be reached (nuclio or the function answers 502, 503 or 504: down, not
ready, restarting, timing out) would otherwise cost every frame all its retries: a function in
state ``error`` held both workers for minutes on a 128-frame task. After ``failures`` such answers
in a row, counted across workers (any success resets the count), the function's circuit opens:

- calls wait instead of trying, and one call every ``PROBE_SECONDS`` probes it (half-open); a
  probe that succeeds closes the circuit and the waiting calls go on, one that fails keeps it open;
- a call fails at once, with the reason, once the circuit has been open ``wait`` seconds, or at
  once if the function reported state ``error`` (nuclio's state for a function that needs a
  redeploy, not a restart).

Redis key ``<prefix>:circuit:<function id>``, a hash: ``failures`` (in a row), ``reason`` (the
last), ``lasting`` (1 when the function said state ``error``), and while open ``since`` and
``probe_at`` (milliseconds since the epoch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

PROBE_SECONDS = 2.0  # between probes of an open circuit
KEY_TTL = 86400  # seconds a circuit nobody touches is kept
# KEYS: the circuit. ARGV: now (ms), milliseconds between probes. Closed: {0, 1 if failures are
# counted}; this caller probes: {1}; open: {2, since, reason, lasting, failures}.
_ADMIT = """
local since, probe_at = unpack(redis.call('HMGET', KEYS[1], 'since', 'probe_at'))
if not since then return {0, redis.call('EXISTS', KEYS[1])} end
if tonumber(ARGV[1]) >= tonumber(probe_at) then
  redis.call('HSET', KEYS[1], 'probe_at', tonumber(ARGV[1]) + tonumber(ARGV[2]))
  return {1}
end
local reason, lasting, failures = unpack(redis.call('HMGET', KEYS[1], 'reason', 'lasting', 'failures'))
return {2, since, reason, lasting, failures}
"""
# KEYS: the circuit. ARGV: now (ms), reason, failures that open it, ms between probes, lasting (0/1).
_FAILED = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'reason', ARGV[2], 'lasting', ARGV[5])
if failures >= tonumber(ARGV[3]) and redis.call('HEXISTS', KEYS[1], 'since') == 0 then
  redis.call('HSET', KEYS[1], 'since', ARGV[1], 'probe_at', tonumber(ARGV[1]) + tonumber(ARGV[4]))
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
"""


class CircuitOpen(Exception):
    """The function's circuit is open and the call does not wait (any longer)."""


@dataclass(frozen=True)
class Open:
    """An open circuit as a caller finds it."""

    seconds: float  # since it opened
    reason: str  # the last failure
    lasting: bool  # the function reported state error
    failures: int  # in a row

    def error(self, function_id: str) -> CircuitOpen:
        return CircuitOpen(f"function {function_id} is unavailable after {self.failures} failures in a row "
                           f"(circuit open for {self.seconds:.0f}s, probed every {PROBE_SECONDS:g}s); "
                           f"last: {self.reason}")


class CircuitBreaker:
    def __init__(self, client: redis.Redis, prefix: str, failures: int, wait: float):
        self.redis = client
        self.prefix = prefix
        self.failures = failures
        self.wait = wait
        self._admit = client.register_script(_ADMIT)
        self._failed = client.register_script(_FAILED)

    def _key(self, function_id: str) -> str:
        return f"{self.prefix}:circuit:{function_id}"

    def admit(self, function_id: str) -> Open | bool:
        """The open circuit, or whether a success must reset the circuit when the caller may call
        now (it is closed with failures counted, or this caller probes it)."""
        reply = self._admit(keys=[self._key(function_id)], args=[_now_ms(), int(PROBE_SECONDS * 1000)])
        if reply[0] != 2:
            return reply[0] == 1 or reply[1] == 1
        _, since, reason, lasting, failures = reply
        return Open(max(0.0, (_now_ms() - int(since)) / 1000), (reason or b"").decode(), lasting == b"1",
                    int(failures))

    def failed(self, function_id: str, reason: str, lasting: bool) -> None:
        self._failed(keys=[self._key(function_id)],
                     args=[_now_ms(), reason, self.failures, int(PROBE_SECONDS * 1000), int(lasting), KEY_TTL])

    def succeeded(self, function_id: str) -> None:
        self.redis.delete(self._key(function_id))

    def wait_until_closed(self, function_id: str, should_stop=lambda: None) -> bool:
        """Return when the caller may call, with whether its success must be reported
        (``succeeded``: it resets a count, or closes the circuit; a closed circuit without failures
        costs no second round trip). Raises CircuitOpen when the circuit has been open too long (or
        the function is in state error). ``should_stop`` is asked while waiting."""
        while isinstance(circuit := self.admit(function_id), Open):
            if circuit.lasting or circuit.seconds >= self.wait:
                raise circuit.error(function_id)
            should_stop()
            time.sleep(0.2)
        return circuit


def _now_ms() -> int:
    return int(time.time() * 1000)
