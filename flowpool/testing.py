"""Helpers for testing code that uses flowpool.

``AutoJumpClock`` replaces the run's clock so that backoff waits and timeouts
pass in virtual time: whenever the settle loop would wait and nothing has
arrived for ``threshold`` real seconds, the clock jumps straight to the next
deadline (the idea of trio's autojump clock). Steps that block on a gate never
see real time pass, so tests stay fast and deterministic.
"""

from __future__ import annotations

import queue
import threading
from typing import TypeVar

from ._clock import Clock

__all__ = ["AutoJumpClock"]

T = TypeVar("T")


class AutoJumpClock(Clock):
    """A virtual clock for ``Flow.run(clock=...)``.

    Args:
        start: the virtual time to start at.
        threshold: real seconds of quiet before the clock jumps to the next deadline.
    """

    def __init__(self, start: float = 0.0, threshold: float = 0.02) -> None:
        self._now = start
        self._threshold = threshold
        self._lock = threading.Lock()
        self.jumps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        with self._lock:
            self._now += seconds

    def get(self, inbox: queue.SimpleQueue[T], timeout: float | None) -> T:
        if timeout is None:
            return inbox.get()
        try:
            return inbox.get(timeout=min(self._threshold, max(timeout, 0.0)))
        except queue.Empty:
            if timeout > 0:
                self.jumps.append(timeout)
                self.advance(timeout)
            raise

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.jumps.append(seconds)
            self.advance(seconds)
