"""The loop's timers, and its one way of waiting for the next message.

Attempt timeouts, backoff wake-ups, the run's deadline and the stop grace are
entries of one heap; the loop handles the due ones, or else waits on its inbox
until the earliest one. While the run owns Ctrl-C, no single wait is longer
than ``signal_poll`` (see ``_interrupts``).
"""

from __future__ import annotations

import heapq
import itertools
import queue
from collections.abc import Iterator
from enum import IntEnum
from typing import Any

from ._attempt import Message
from ._clock import Clock

__all__ = ["TimerKind", "Timers"]


class TimerKind(IntEnum):
    """What a timer of the loop is for."""

    TIMEOUT = 0  # an attempt's timeout (target: the attempt)
    WAKE = 1  # a retry's backoff ended (target: the step run)
    DEADLINE = 2  # the run's own timeout (target: the run or subflow frame)
    GRACE = 3  # the stop grace ended (target: the run or subflow frame)


class Timers:
    """A heap of ``(when, sequence, kind, target)``; the sequence keeps equal times in order."""

    __slots__ = ("_heap", "_sequence", "_dropped", "clock", "signal_poll")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[list[Any]] = []
        self._sequence = itertools.count()
        self._dropped = 0
        #: Longest single wait, or None; set while the run owns Ctrl-C.
        self.signal_poll: float | None = None

    def push(self, when: float, kind: TimerKind, target: Any) -> list[Any]:
        """Arm a timer; the returned entry can be passed to ``drop``."""
        entry = [when, next(self._sequence), kind, target]
        heapq.heappush(self._heap, entry)
        return entry

    def drop(self, entry: list[Any]) -> None:
        """Forget a timer that is no longer needed (it releases its target now). The heap
        is rebuilt once dropped entries outnumber live ones, so it holds at most twice
        the live timers however many items per second times timeout there are."""
        if entry[3] is None:
            return
        entry[3] = None
        self._dropped += 1
        heap = self._heap
        if self._dropped > 64 and self._dropped * 2 > len(heap):
            heap[:] = [e for e in heap if e[3] is not None]
            heapq.heapify(heap)
            self._dropped = 0

    def next_at(self) -> float | None:
        """When the earliest timer is due, or None if there is none."""
        heap = self._heap
        return heap[0][0] if heap else None

    def due(self, now: float) -> Iterator[tuple[TimerKind, Any]]:
        """Pop the timers due at ``now``, one at a time (a handler may push a due one)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, target = heapq.heappop(heap)
            if target is None:
                self._dropped -= 1
                continue  # dropped
            yield kind, target

    def wait(self, inbox: queue.SimpleQueue[Message], deadline: float | None, now: float) -> Message | None:
        """The next message of ``inbox``, or None once ``deadline`` (or the signal poll) passed."""
        wait = None if deadline is None else deadline - now
        poll = self.signal_poll
        if poll is not None and (wait is None or wait > poll):
            wait = poll
        try:
            return self.clock.get(inbox, wait)
        except queue.Empty:
            return None
