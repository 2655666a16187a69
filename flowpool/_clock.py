"""The one place that reads the time or waits for it.

Everything else takes a ``Clock``, so tests can swap in
``flowpool.testing.AutoJumpClock`` and skip real waiting.
"""

from __future__ import annotations

import queue
import time
from typing import TypeVar

__all__ = ["SYSTEM_CLOCK", "Clock", "is_real_time"]

T = TypeVar("T")


class Clock:
    """Monotonic time, and waiting on a queue until a deadline."""

    def now(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    def get(self, inbox: queue.SimpleQueue[T], timeout: float | None) -> T:
        """The next item of ``inbox``, waiting at most ``timeout`` seconds.

        Raises:
            queue.Empty: nothing arrived in time.
        """
        if timeout is None:
            return inbox.get()
        return inbox.get(timeout=max(timeout, 0.0))

    def wall(self) -> float:
        """Epoch seconds (to tell users when things happened, never to measure)."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        if seconds > 0:
            time.sleep(seconds)


SYSTEM_CLOCK = Clock()


def is_real_time(clock: Clock) -> bool:
    """Whether ``clock`` reads ``time.monotonic`` (a test clock's time is its own)."""
    kind = type(clock)
    return kind.now is Clock.now and kind.get is Clock.get  # a subclass may only add to it
