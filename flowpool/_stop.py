"""The run's stop scope: why it is stopping, and what status it ends with.

Like a trio cancel scope, one object knows who stopped the run and why (its
own timeout, or Ctrl-C), how many interrupts came, whether the stop grace is
armed and whether the run is compensating. ``final_status`` is the one rule
for the status a run ends with, and ``stop_error`` the error a stopped run
fails with.
"""

from __future__ import annotations

from ._errors import FlowInterrupted, FlowTimeoutError
from ._results import FlowStatus

__all__ = ["STOP_GRACE", "StopScope"]

#: How long thread-mode work may take to notice ``ctx.cancelled`` when a run stops.
STOP_GRACE = 0.5


class StopScope:
    """The stopping state of one run. Written by the loop and by its Ctrl-C handler."""

    __slots__ = (
        "flow",
        "timeout",
        "reason",
        "timed_out",
        "interrupts",
        "grace_armed",
        "grace_started",
        "compensating",
        "interruptible",
        "cancelled",
    )

    def __init__(self, flow: str, timeout: float | None) -> None:
        self.flow = flow
        self.timeout = timeout
        #: Why the run is stopping (its timeout passed, or it was interrupted); None while it is not.
        self.reason: str | None = None
        #: The run's own timeout stopped it.
        self.timed_out = False
        #: How many Ctrl-Cs arrived (counted by the signal handler).
        self.interrupts = 0
        #: The stop grace timer is set: running thread-mode work gets that long to notice.
        self.grace_armed = False
        #: When the stop grace started (the clock's time), or None.
        self.grace_started: float | None = None
        #: The run's stages are over and its compensations run.
        self.compensating = False
        #: A compensation runs in the caller's thread, where a second Ctrl-C may interrupt it.
        self.interruptible = False
        #: A subflow stopped by its parent (fail fast, a stop, Ctrl-C): it ends cancelled.
        self.cancelled = False

    def stop_error(self) -> BaseException | None:
        """The error a stopped run fails with at the stage it was in; None if not stopping."""
        if self.reason is None:
            return None
        if self.timed_out:
            assert self.timeout is not None
            return FlowTimeoutError(self.flow, self.timeout)
        return FlowInterrupted(self.flow)

    def final_status(self, error: BaseException | None, resumed_outcome: str | None) -> FlowStatus:
        """The status the run ends with, given its first error and, for a resumed run,
        the outcome the journal recorded before its process died."""
        if (
            (self.interrupts and not self.timed_out)
            or (resumed_outcome == "cancelled" and not self.interrupts)
            or (self.cancelled and not self.timed_out)
        ):
            return FlowStatus.CANCELLED
        if error is not None:
            return FlowStatus.FAILED
        return FlowStatus.COMPLETED

    def final_error(self, status: FlowStatus, error: BaseException | None) -> BaseException | None:
        """The error the run ends with: a cancelled run ends with a ``FlowInterrupted``
        (the error that failed it first, if another, is kept as its context)."""
        if status is not FlowStatus.CANCELLED:
            return error
        interrupted = FlowInterrupted(self.flow)
        if error is not None and not isinstance(error, FlowInterrupted):
            interrupted.__context__ = error
        return interrupted

    def failure_outcome(self) -> str:
        """How the journal records a run that failed: ``"failed"`` or ``"cancelled"``."""
        return "failed" if self.timed_out or not self.interrupts else "cancelled"
