"""How a chunk hands its frames to its calling threads: in batches sized by time.

A function whose function.yaml declares ``max_batch`` > 1 takes several frames per call
(``{"images": [...]}``, docs/wire-format.md §D29): fewer calls, so fewer HTTP exchanges, Redis
round trips and worker hand-offs per frame. A batch is sized to take about BATCH_SECONDS, from the
seconds per frame that the chunk's calls have taken so far (the first call carries one frame), so
that progress still moves about that often and a cancel is seen between batches, whether the
model takes 20 ms or 2 s a frame. Functions without ``max_batch`` get one frame per call, as CVAT
sends them.
"""

from __future__ import annotations

import threading
from collections import deque

BATCH_SECONDS = 0.5


class FrameBatches:
    """The frames still to call, taken a batch at a time by any number of threads."""

    def __init__(self, frames: list[int], max_batch: int):
        self._frames = deque(frames)
        self._max_batch = max(1, max_batch)
        self._seconds_per_frame: float | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def take(self) -> list[int]:
        """The next batch; empty once every frame is taken or after ``stop``."""
        with self._lock:
            if self._stopped:
                return []
            size = 1
            if self._max_batch > 1 and self._seconds_per_frame:
                size = max(1, min(self._max_batch, int(BATCH_SECONDS / self._seconds_per_frame)))
            return [self._frames.popleft() for _ in range(min(size, len(self._frames)))]

    def timed(self, frames: int, seconds: float) -> None:
        """A call of ``frames`` frames took ``seconds``: the next batches are sized by it."""
        if frames <= 0:
            return
        with self._lock:
            latest = seconds / frames
            previous = self._seconds_per_frame
            self._seconds_per_frame = latest if previous is None else (previous + latest) / 2

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
