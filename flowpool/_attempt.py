"""The record of one attempt, as it travels from the settle loop to a worker and back.

An ``Attempt`` is created by the settle loop, handed to a backend, and comes
back through the run's inbox (a ``queue.SimpleQueue``) as ``(DONE, attempt)``;
when the loop needs to know the moment it started (a timeout to arm, or a
listener to tell), the worker first posts ``(STARTED, attempt)``. Only the
loop decides what an outcome means; workers just fill in the fields.
"""

from __future__ import annotations

import gc
import queue
import sys
import threading
from collections.abc import Callable
from enum import IntEnum
from types import CodeType, FrameType
from typing import Any

from . import _logcontext
from ._clock import Clock
from ._context import Context, EndedScope

__all__ = ["DONE", "INTERRUPT", "STARTED", "Attempt", "Message", "MessageKind"]


class MessageKind(IntEnum):
    """What a message in a run's inbox says."""

    STARTED = 1  # (STARTED, attempt): the attempt started on its worker
    DONE = 2  # (DONE, attempt): the attempt's outcome is in its fields
    INTERRUPT = 3  # (INTERRUPT, None): Ctrl-C arrived


# Module-level names: the loop and the workers compare against these on every attempt.
STARTED, DONE, INTERRUPT = MessageKind

Message = tuple[MessageKind, Any]


class Attempt:
    """One submission of a step (or of a compensation) to a worker.

    ``claim`` is a one-element list popped by whoever gets there first: the
    worker (to start it) or the loop (to withdraw it before it starts). ``pop``
    on a list is atomic, so no lock is needed per attempt.
    """

    __slots__ = (
        "step",
        "number",
        "fn",
        "args",
        "ctx",
        "inbox",
        "clock",
        "notify_start",
        "claim",
        "cancel_reason",
        "settled",
        "started_at",
        "finished_at",
        "ok",
        "value",
        "error",
        "owner",
        "handle",
        "never_started",
        "quiet_start",
        "may_queue",
        "thread_ident",
    )

    def __init__(
        self,
        step: str,
        number: int,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        ctx: Context,
        inbox: queue.SimpleQueue[Message],
        clock: Clock,
        notify_start: bool,
        owner: Any = None,
    ) -> None:
        self.step = step
        self.number = number
        self.fn = fn
        self.args = args
        self.ctx = ctx
        self.inbox = inbox
        self.clock = clock
        self.notify_start = notify_start
        self.claim: list[bool] = [True]
        self.cancel_reason: str | None = None
        self.settled = False  # set by the loop once it has taken an outcome (or gave up)
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.ok = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.owner = owner  # the loop's record of the step
        # What the backend keeps on the attempt, its own record type (``ThreadTicket``,
        # ``LaneTicket``, ``DaskCall``, a future); each backend narrows it with isinstance.
        self.handle: object = None
        self.never_started = False  # set by a backend that took it back unstarted
        # Set by a backend that cannot tell yet whether the attempt really started (it
        # was cancelled while queued on a worker): announce it only once it is known.
        self.quiet_start = False
        # Whether a backend may queue it on a worker behind another attempt (not when
        # it may be cancelled before it starts, e.g. in a fail-fast group).
        self.may_queue = True
        self.thread_ident: int | None = None  # the thread running it in this process, while it runs

    def try_claim(self) -> bool:
        """Take the right to run (worker) or to withdraw (loop); True for the first caller."""
        try:
            self.claim.pop()
        except IndexError:
            return False
        return True

    def execute(self) -> None:
        """Run the attempt here, in this thread, and post its outcome to the inbox."""
        if not self.try_claim():
            return  # withdrawn before it started
        clock = self.clock
        self.started_at = clock.now()
        if self.notify_start:
            self.inbox.put((STARTED, self))
        ctx = self.ctx
        named = _logcontext.enter(ctx.run_id, ctx.flow, ctx.step, ctx.attempt, getattr(ctx, "key", None), ctx._path)
        self.thread_ident = threading.get_ident()
        try:
            self.value = self.fn(ctx, *self.args)
            self.ok = True
        except BaseException as error:  # noqa: BLE001 - every outcome travels back to the loop
            self.error = error
        finally:
            self.thread_ident = None
            _logcontext.leave(named)
        self.finished_at = clock.now()
        self.inbox.put((DONE, self))

    def release(self) -> None:
        """It has returned (the loop got its outcome): its context keeps saying whether and
        why it was cancelled, but no longer holds it, so the two make no cycle that only
        the garbage collector could free."""
        ctx = self.ctx
        if ctx._scope is self:
            ctx._scope = EndedScope(self.cancel_reason)

    def where_it_hung(self) -> str:
        """A note with the stack of the thread running this attempt in this process now."""
        ident = self.thread_ident
        frame = _current_frames().get(ident) if ident is not None else None
        if frame is None:
            return "Where it hung: unknown (the attempt was no longer running)"
        return hung_note(user_stack(frame, _EXECUTE))

    def fail_unstarted(self, error: BaseException) -> None:
        """Report that the attempt could not be run at all (e.g. its executor refused it)."""
        if self.finished_at is not None:
            return
        now = self.clock.now()
        if self.started_at is None:
            self.started_at = now
        self.error = error
        self.finished_at = now
        self.inbox.put((DONE, self))

    def __repr__(self) -> str:
        return f"Attempt({self.step!r}, {self.number})"


_EXECUTE = Attempt.execute.__code__


def _current_frames() -> dict[int, FrameType]:
    """``sys._current_frames()`` with the garbage collector off meanwhile. On Python 3.11 it
    makes frame objects while holding the runtime's thread-list lock; a collection they
    trigger that frees a ``threading.local`` takes that lock again and the caller deadlocks
    for good (CPython gh-106883, not fixed in 3.11; 3.12 collects only between bytecodes)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if enabled:
            gc.enable()


def hung_note(stack: str) -> str:
    """The note a ``StepTimeoutError`` carries: where its attempt was when time ran out."""
    return "Where it hung (the attempt's stack when its timeout passed, most recent call last):\n" + stack.rstrip()


def user_stack(frame: FrameType | None, stop_at: CodeType | None) -> str:
    """The frames of ``frame``'s stack below the frame running ``stop_at`` (the step
    function and what it called), formatted as in a traceback, most recent call last."""
    frames: list[tuple[FrameType, int]] = []
    while frame is not None and frame.f_code is not stop_at:
        frames.append((frame, frame.f_lineno))
        frame = frame.f_back
    frames.reverse()
    import traceback  # only to show where an attempt hung: it costs start-up time

    return "".join(traceback.StackSummary.extract(iter(frames)).format())


def take_back(lock: Any, waiting: Any, attempt: Attempt) -> bool:
    """Remove ``attempt`` from a backend's ``waiting`` deque (under ``lock``) and claim
    it, so it never starts; False if it had already left the deque."""
    with lock:
        try:
            waiting.remove(attempt)
        except ValueError:
            return False
    attempt.try_claim()
    return True
