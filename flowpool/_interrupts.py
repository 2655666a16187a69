"""Ctrl-C routing: while a run owns SIGINT, an interrupt becomes a message to its loop.

The handler only counts the interrupt in the run's ``StopScope`` and posts
``(INTERRUPT, None)`` to the inbox; the loop decides what it means (stop the
run; a second one ends the stop grace). While the run compensates, a second
Ctrl-C abandons the compensations: it interrupts one running in the caller's
thread, and the compensation loop notices it anywhere else. The CLI routes
SIGTERM here by calling the SIGINT handler it finds installed.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable
from types import FrameType

from ._attempt import INTERRUPT, Message
from ._clock import Clock, is_real_time
from ._stop import StopScope
from ._timers import Timers

__all__ = ["SIGNAL_POLL", "route_interrupts"]

#: Longest single wait of the loop while it owns Ctrl-C (see route_interrupts).
SIGNAL_POLL = 0.1


def route_interrupts(
    scope: StopScope, inbox: queue.SimpleQueue[Message], timers: Timers, clock: Clock
) -> Callable[[], None]:
    """Route Ctrl-C into the loop while the run is in the main thread; returns the
    function that puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    try:
        previous = signal.getsignal(signal.SIGINT)
    except ValueError:  # pragma: no cover - not the main interpreter
        return lambda: None
    if previous is not signal.default_int_handler:
        return lambda: None  # someone else owns Ctrl-C (or it is ignored): leave it

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        scope.interrupts += 1
        if scope.compensating:
            # A second Ctrl-C abandons the compensations: it interrupts a compensation
            # running in this thread; anywhere else the loop notices it at once.
            if scope.interrupts >= 2 and scope.interruptible:
                raise KeyboardInterrupt
            return
        inbox.put((INTERRUPT, None))  # SimpleQueue.put is safe in a signal handler

    signal.signal(signal.SIGINT, on_sigint)
    # A signal delivered to another thread (loky's, ours) does not interrupt the main
    # thread's blocking wait, so Python would run the handler only when the wait ends:
    # never block longer than this. (A virtual test clock would count these wake-ups
    # as time passing, so it is left alone.)
    if is_real_time(clock):
        timers.signal_poll = SIGNAL_POLL

    def restore() -> None:
        signal.signal(signal.SIGINT, previous)

    return restore
