"""The small protocol every backend implements.

The settle loop never touches a pool directly: it hands ``Attempt`` records
to a backend and reads outcomes from the run's inbox. A backend may hold an
attempt back until it has a free slot; the attempt's ``started_at`` says when
it really started.
"""

from __future__ import annotations

from typing import Protocol

from .._attempt import Attempt

__all__ = ["Backend"]


class Backend(Protocol):
    """Runs attempts somewhere and posts their outcomes to ``attempt.inbox``."""

    #: Human-readable kind: ``"thread"``, ``"process"``, ``"dask"``, ``"executor"``.
    kind: str
    #: True when ``stop`` really ends a running attempt (by killing its process).
    kills: bool
    #: True when attempts run in this process (so compensations may run in the caller's thread).
    in_process: bool

    def submit(self, attempt: Attempt) -> None:
        """Start ``attempt`` as soon as there is room; never blocks."""

    def withdraw(self, attempt: Attempt) -> bool:
        """Take back an attempt that has not started; False if it already started."""

    def cancel(self, attempt: Attempt) -> None:
        """``attempt.cancel_reason`` was just set: make the worker's ``ctx.cancelled`` see it."""

    def stop(self, attempt: Attempt) -> None:
        """The loop gave up on a running attempt (timeout, cancel): end it if possible.

        Its outcome, if one still arrives, is ignored.
        """

    def where_it_hung(self, attempt: Attempt) -> str:
        """Its timeout passed: a note with the stack of the running ``attempt`` (the user's
        frames only), or saying why it is unknown. Called just before ``stop``."""

    def check_capacity(self, step: str) -> None:
        """Raise if the backend cannot take another attempt of ``step`` now (the step
        then fails with that error); called before every attempt is submitted."""

    def close(self) -> None:
        """Release what the backend holds for this run; never waits for abandoned work."""
