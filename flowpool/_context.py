"""The ``Context`` handed to step functions and compensations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ._errors import StepCancelledError

__all__ = ["CancelScope", "Context", "EndedScope", "ItemCall", "OutcomeCall"]


class CancelScope(Protocol):
    """Anything that can say whether, and why, an attempt should stop."""

    @property
    def cancel_reason(self) -> str | None: ...


class EndedScope:
    """The scope of an attempt that has returned: why it was cancelled, if it was."""

    __slots__ = ("cancel_reason",)

    def __init__(self, cancel_reason: str | None) -> None:
        self.cancel_reason = cancel_reason


class Context:
    """What a step function knows about its run.

    Attributes:
        input: the run's input.
        flow: the flow's name.
        run_id: the run's unique id.
        step: this step's name.
        attempt: 1 for the first attempt, 2 for the first retry, …
        results: read-only mapping of step name → value for every step that
            completed in an earlier stage (for a compensation: in the whole run).
        item: the item, in a map's step or compensation; else None.
        index: the item's 0-based index in its map; else None.
        key: the item's key (its index unless the map has a ``key``); else None.
        outcome: in an always-stage, the flow's status so far (a ``FlowStatus``);
            None elsewhere.
    """

    __slots__ = (
        "input",
        "flow",
        "run_id",
        "step",
        "attempt",
        "results",
        "item",
        "index",
        "key",
        "outcome",
        "_scope",
        "_path",
    )

    input: Any
    flow: str
    run_id: str
    step: str
    attempt: int
    results: Mapping[str, Any]
    item: Any
    index: int | None
    key: str | int | None
    outcome: Any

    def __init__(
        self,
        *,
        input: Any,
        flow: str,
        run_id: str,
        step: str,
        attempt: int,
        results: Mapping[str, Any],
        scope: CancelScope | None = None,
        outcome: Any = None,
    ) -> None:
        self.input = input
        self.flow = flow
        self.run_id = run_id
        self.step = step
        self.attempt = attempt
        self.results = results
        self.item: Any = None
        self.index: int | None = None
        self.key: str | int | None = None
        self.outcome = outcome
        self._scope = scope
        #: Inside a subflow: the stage names from the top (what log records name as ``flowpool_path``).
        self._path: tuple[str, ...] | None = None

    @property
    def cancelled(self) -> bool:
        """True once this attempt should stop: its timeout passed, its group failed
        fast, or the run is being interrupted."""
        scope = self._scope
        return scope is not None and scope.cancel_reason is not None

    @property
    def cancel_reason(self) -> str | None:
        """Why this attempt should stop, or None."""
        scope = self._scope
        return None if scope is None else scope.cancel_reason

    def raise_if_cancelled(self) -> None:
        """Raise ``StepCancelledError`` if this attempt should stop; the attempt then
        ends ``CANCELLED``."""
        reason = self.cancel_reason
        if reason is not None:
            raise StepCancelledError(self.step, reason)

    def __repr__(self) -> str:
        item = "" if self.index is None else f", key={self.key!r}, index={self.index}"
        return f"Context(flow={self.flow!r}, step={self.step!r}{item}, attempt={self.attempt}, run_id={self.run_id!r})"


class ItemCall:
    """A map's step (or compensation) for a backend that runs it elsewhere (a worker
    process, Dask): the item, its index and key travel as its last arguments and are
    put back on the context there."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, ctx: Context, *args: Any) -> Any:
        *rest, ctx.item, ctx.index, ctx.key = args
        return self.fn(ctx, *rest)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ItemCall, (self.fn,))


class OutcomeCall:
    """An always-stage's step for a backend that runs it elsewhere: the flow's outcome
    travels as its last argument and is put back on the context there."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, ctx: Context, *args: Any) -> Any:
        *rest, ctx.outcome = args
        return self.fn(ctx, *rest)

    def __reduce__(self) -> tuple[Any, ...]:
        return (OutcomeCall, (self.fn,))
