"""The whole exception hierarchy.

Every error builds its own message from structured fields, so callers raise
``StepTimeoutError(step="fetch", timeout=1.0, attempt=2)`` rather than
formatting strings, and handlers can read the fields back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._results import FlowResult

__all__ = [
    "AbandonedThreadsError",
    "CallNotPicklableError",
    "DaskUnavailableError",
    "ExecutorRefusedError",
    "FlowDefinitionError",
    "FlowFailedError",
    "FlowInterrupted",
    "FlowTimeoutError",
    "FlowpoolError",
    "JournalError",
    "MapItemsError",
    "NotStartedError",
    "StaleStoreError",
    "RemoteError",
    "RemoteTraceback",
    "RetryRejectedError",
    "StepCancelledError",
    "StepTimeoutError",
    "UnpicklableResultError",
    "WorkerCrashedError",
]


class FlowpoolError(Exception):
    """Base class of every error flowpool raises or records."""


class FlowDefinitionError(FlowpoolError, ValueError):
    """A flow definition (or a run's arguments) is invalid.

    Attributes:
        flow: the flow's name, when known.
        step: the step or group involved, when there is one.
        argument: the argument that is wrong, when there is one.
        problem: what is wrong with it.
    """

    def __init__(
        self,
        problem: str,
        *,
        flow: str | None = None,
        step: str | None = None,
        argument: str | None = None,
    ) -> None:
        self.problem = problem
        self.flow = flow
        self.step = step
        self.argument = argument
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.flow is not None:
            where.append(f"flow {self.flow!r}")
        if self.step is not None:
            where.append(f"step {self.step!r}")
        if self.argument is not None:
            where.append(f"argument {self.argument!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.problem}" if prefix else self.problem

    def with_flow(self, flow: str) -> FlowDefinitionError:
        """Return the same error, naming ``flow`` as well."""
        if self.flow == flow:
            return self
        return FlowDefinitionError(self.problem, flow=flow, step=self.step, argument=self.argument)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_definition_error, (self.problem, self.flow, self.step, self.argument))


def _rebuild_definition_error(
    problem: str, flow: str | None, step: str | None, argument: str | None
) -> FlowDefinitionError:
    return FlowDefinitionError(problem, flow=flow, step=step, argument=argument)


class StepTimeoutError(FlowpoolError, TimeoutError):
    """One attempt of a step ran longer than its ``timeout``."""

    def __init__(self, step: str, timeout: float, attempt: int) -> None:
        self.step = step
        self.timeout = timeout
        self.attempt = attempt
        super().__init__(f"step {step!r} attempt {attempt} timed out after {timeout:g} s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.timeout, self.attempt))


class FlowTimeoutError(FlowpoolError, TimeoutError):
    """The whole run passed the ``timeout`` given to ``Flow.run``."""

    def __init__(self, flow: str, timeout: float) -> None:
        self.flow = flow
        self.timeout = timeout
        super().__init__(f"flow {flow!r} did not finish within its timeout of {timeout:g} s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.flow, self.timeout))


class StepCancelledError(FlowpoolError):
    """An attempt was stopped, or a step never started, because it was cancelled.

    Attributes:
        step: the step's name (empty when raised by ``ctx.raise_if_cancelled``
            outside of flowpool's bookkeeping).
        reason: who cancelled it and why, e.g. ``"group 'fetch' failed fast"``.
    """

    def __init__(self, step: str = "", reason: str = "cancelled") -> None:
        self.step = step
        self.reason = reason
        what = f"step {step!r} " if step else ""
        super().__init__(f"{what}cancelled: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.reason))


class WorkerCrashedError(FlowpoolError):
    """The worker process running a step died (crash, kill, out of memory)."""

    def __init__(self, step: str, attempt: int, detail: str = "") -> None:
        self.step = step
        self.attempt = attempt
        self.detail = detail
        extra = f": {detail}" if detail else ""
        super().__init__(f"the worker process running step {step!r} attempt {attempt} died{extra}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.attempt, self.detail))


class RemoteError(FlowpoolError):
    """An exception raised in a worker process that could not be sent back intact.

    Attributes:
        type_name: the qualified name of the original exception type.
        message: ``str()`` of the original exception.
        remote_traceback: the traceback text formatted in the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class UnpicklableResultError(FlowpoolError):
    """A step's value could not be sent back from its worker process."""

    def __init__(self, step: str, detail: str) -> None:
        self.step = step
        self.detail = detail
        super().__init__(
            f"the value returned by step {step!r} cannot be sent back from its worker "
            f"process (it cannot be pickled): {detail}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.detail))


class JournalError(FlowpoolError):
    """A journal file is missing, not a journal, corrupt, or lacks a run."""


class MapItemsError(FlowpoolError):
    """A map's items could not be produced: ``items(ctx)`` or its iteration raised, or
    an item's key was a duplicate or not a ``str``/``int``. The original is ``__cause__``.

    Attributes:
        flow: the flow's name.
        map: the map's name.
        taken: how many items had been taken before the problem.
        detail: what went wrong.
    """

    def __init__(self, flow: str, map: str, taken: int, detail: str) -> None:
        self.flow = flow
        self.map = map
        self.taken = taken
        self.detail = detail
        super().__init__(f"flow {flow!r}, map {map!r}: its items could not be produced after {taken} item(s): {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.flow, self.map, self.taken, self.detail))


class FlowFailedError(FlowpoolError):
    """Raised by ``FlowResult.raise_for_status()`` when a run did not complete."""

    def __init__(self, result: FlowResult) -> None:
        self.result = result
        where = f" at stage {result.failed_stage!r}" if result.failed_stage else ""
        cause = f": {result.error}" if result.error is not None else ""
        super().__init__(f"flow {result.name!r} {result.status.value}{where}{cause}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.result,))


class FlowInterrupted(KeyboardInterrupt):
    """A run was interrupted (Ctrl-C or SIGTERM); ``result`` holds what happened.

    A ``KeyboardInterrupt`` on purpose: ``except Exception`` must not swallow it.
    """

    def __init__(self, flow: str, result: FlowResult | None = None) -> None:
        self.flow = flow
        self.result = result
        super().__init__(f"flow {flow!r} was interrupted")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.flow, self.result))


class RetryRejectedError(FlowpoolError):
    """A custom retry policy kept rejecting the step's value until it stopped."""

    def __init__(self, step: str, attempts: int) -> None:
        self.step = step
        self.attempts = attempts
        super().__init__(f"step {step!r}: the retry policy rejected the value of every attempt ({attempts} attempts)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.attempts))


class AbandonedThreadsError(FlowpoolError):
    """Too many timed-out thread-mode attempts are still running in this process."""

    def __init__(self, step: str, count: int) -> None:
        self.step = step
        self.count = count
        super().__init__(
            f"step {step!r} was not started: {count} timed-out thread-mode attempts are still "
            f"running in this process (Python cannot stop a thread). Run steps that hang with "
            f"executor='process', where a timeout kills the worker."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.count))


class CallNotPicklableError(FlowpoolError):
    """A process-mode step (function, input or context) cannot be sent to a worker."""

    def __init__(self, step: str, detail: str) -> None:
        self.step = step
        self.detail = detail
        super().__init__(
            f"step {step!r} cannot be sent to a worker process (its function, the run's input or "
            f"the results it can read cannot be pickled): {detail}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.detail))


class ExecutorRefusedError(FlowpoolError):
    """The user's executor did not run an attempt (it was shut down or cancelled it)."""

    def __init__(self, step: str, detail: str) -> None:
        self.step = step
        self.detail = detail
        super().__init__(f"the executor did not run step {step!r}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.detail))


class DaskUnavailableError(FlowpoolError):
    """Dask's ``distributed`` package is not installed, or the scheduler cannot be reached.

    Attributes:
        address: the scheduler's ``HOST:PORT``, or None when ``distributed`` is missing.
        detail: why the scheduler could not be reached.
    """

    def __init__(self, address: str | None = None, detail: str = "") -> None:
        self.address = address
        self.detail = detail
        if address is None:
            message = "executor 'dask://...' needs Dask: pip install 'flowpool[dask]'"
        else:
            message = f"cannot reach the Dask scheduler at {address}: {detail}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.address, self.detail))


class NotStartedError(StepCancelledError):
    """An attempt cancelled while it was queued on a worker: it never ran."""


class StaleStoreError(RuntimeError):
    """A process-mode payload assumed values its worker does not hold (it is not the
    lane's first worker); the parent handles it as a crash and retries on a new lane."""


class RemoteTraceback(Exception):
    """Carries a worker's traceback text as ``__cause__``, as ``concurrent.futures`` does."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.text,))
