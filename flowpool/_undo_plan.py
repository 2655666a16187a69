"""What a run's compensations are, in the order they run: stages latest first, and
within a stage its steps (or a map's items) latest first. A completed subflow
contributes its own steps' compensations as a unit, in its own reverse order, at
its place; once they ran, ``refresh_units`` gives it (and the parents holding it)
a result that shows them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._context import Context
from ._definition import Step
from ._executors import Backend
from ._record import replace
from ._state import StepRun

if TYPE_CHECKING:
    from ._compensator import Compensator
    from ._maps import MapLedger
    from ._runner import _Run

__all__ = ["Job", "MapCompensation", "Plan", "plan", "refresh_units"]

#: What a stage's compensations are: (its position, how many may run at once, its jobs).
Plan = list[tuple[int, int, Iterator["Job"]]]


class MapCompensation:
    """A map whose completed items have a compensation: what undoing them needs."""

    __slots__ = ("name", "position", "step", "ledger", "items", "backend", "concurrency", "context", "units")

    def __init__(
        self,
        name: str,
        position: int,
        step: Step,
        ledger: MapLedger,
        items: list[Any],
        backend: Backend,
        concurrency: int,
    ) -> None:
        self.name = name
        self.position = position
        self.step = step
        self.ledger = ledger
        self.items = items  # the items, by index (those that did not complete are None)
        self.backend = backend
        self.concurrency = concurrency
        #: The context of the map's run (or subflow frame).
        self.context: Callable[[str, int], Context] | None = None
        #: A map of subflows: index → the frame of each completed item with something to undo.
        self.units: dict[int, Any] = {}


class Job:
    """One compensation to run: a completed step's, or a map item's.

    A job of a step inside a completed subflow (compensated as a unit) belongs to
    that subflow's ``frame``; ``chain`` lists each enclosing subflow frame below the
    compensating run with the job's label as that frame names it."""

    __slots__ = (
        "label",
        "step",
        "group",
        "backend",
        "value",
        "sr",
        "ledger",
        "item",
        "index",
        "key",
        "context",
        "chain",
    )

    def __init__(self, label: str, step: Step, group: str | None, backend: Backend, value: Any) -> None:
        self.label = label
        self.step = step
        self.group = group
        self.backend = backend
        self.value = value
        self.sr: StepRun | None = None
        self.ledger: MapLedger | None = None
        self.item: Any = None
        self.index: int | None = None
        self.key: str | int | None = None
        self.context: Callable[[str, int], Context] | None = None
        self.chain: list[tuple[_Run, str]] = []

    def fields(self) -> dict[str, Any]:
        """The event fields naming what is compensated (inside a subflow undone as a unit:
        its path from the top, and the map item it was)."""
        if self.index is None:
            fields: dict[str, Any] = {"step": self.step.name, "group": self.group}
        else:
            fields = {"step": self.step.name, "group": None, "item": self.key, "index": self.index}
        if self.chain:
            events = self.chain[0][0].events  # the subflow the step belongs to
            fields["path"] = (*events.prefix, self.step.name)
            if self.index is None and events.tags:
                fields.update(events.tags)
        return fields


def plan(comp: Compensator, journaled: bool) -> Plan:
    """The pending compensations as stages, latest first: ``(position, concurrency, jobs)``."""
    pending = sorted(comp.pending, key=lambda sr: sr.index, reverse=True)
    done = comp.done
    if journaled:
        pending = [sr for sr in pending if sr.step.name not in comp.done]
    # A stage's steps are consecutive in ``pending``.
    stages: Plan = []
    for _, members in itertools.groupby(pending, key=lambda sr: sr.group or sr.step.name):
        runs = list(members)
        first = runs[0]
        k = comp.concurrency.get(first.group, 1) if first.group is not None else 1
        stages.append((first.index, k, itertools.chain.from_iterable(step_jobs(comp, sr) for sr in runs)))
    for m in comp.maps:
        stages.append((m.position, m.concurrency, item_jobs(comp, m, done)))
    stages.sort(key=lambda stage: stage[0], reverse=True)
    return stages


def step_jobs(comp: Compensator, sr: StepRun) -> Iterator[Job]:
    """A completed step's compensation; for a completed subflow, its steps' as a unit."""
    child = sr.child
    if child is not None:

        def put_back(result: Any) -> None:
            record = sr.record
            assert record is not None
            sr.record = sr.run.records[sr.step.name] = replace(record, subflow=result)

        yield from unit_jobs(comp, child, sr.step.name, put_back)
        return
    record = sr.record
    assert record is not None
    # A timed-out step whose abandoned attempt returned later is undone on that late value.
    job = Job(sr.step.name, sr.step, sr.group, sr.backend, record.value if record.ok else record.late_value)
    job.sr = sr
    job.context = sr.run.context
    yield job


def unit_jobs(comp: Compensator, child: _Run, label: str, put_back: Callable[[Any], None]) -> Iterator[Job]:
    """The jobs of a completed subflow, in its own reverse order, named under ``label``."""
    comp.units.append((child, put_back))
    for _, _, jobs in plan(child.compensator, False):
        for job in jobs:
            job.chain.append((child, job.label))
            job.label = f"{label}/{job.label}"
            yield job


def refresh_units(comp: Compensator) -> None:
    """Give the subflows compensated as units their results with those compensations,
    the innermost first (each result is held by its parent's)."""
    units, comp.units = comp.units, []
    for child, put_back in reversed(units):
        refresh_units(child.compensator)  # the subflows it holds, first
        result = child.result
        assert result is not None
        compensator = child.compensator
        child.result = replace(
            result,
            steps={name: child.records.get(name, record) for name, record in result.steps.items()},
            compensated=tuple(compensator.compensated),
            not_compensated=tuple(compensator.not_compensated),
        )
        put_back(child.result)


def item_jobs(comp: Compensator, m: MapCompensation, done: set[str]) -> Iterator[Job]:
    from ._maps import COMPLETED_CODE, item_label

    ledger = m.ledger
    codes = ledger.codes
    units = m.units
    for index in range(len(codes) - 1, -1, -1):
        if codes[index] != COMPLETED_CODE:
            continue
        key = ledger.key_of(index)
        label = item_label(m.name, key)
        if label in done:
            continue  # a resumed run: this item's compensation finished before the process died
        if units:
            child = units.get(index)
            if child is not None:
                yield from unit_jobs(comp, child, label, functools.partial(ledger.subflows.__setitem__, index))
            continue
        job = Job(label, m.step, None, m.backend, ledger.values[index])
        job.context = m.context
        job.ledger = ledger
        job.item = m.items[index] if index < len(m.items) else None
        job.index = index
        job.key = key
        yield job
