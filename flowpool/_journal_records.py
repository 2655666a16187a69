"""What a journal holds about one run, as read back, and the ``FlowResult`` built from it."""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._errors import StepCancelledError
from ._maps import MapResult
from ._results import (
    CompensationResult,
    FlowResult,
    FlowStatus,
    GroupResult,
    GroupStatus,
    StepResult,
    StepStatus,
    count_statuses,
)

if TYPE_CHECKING:
    from ._definition import Flow

__all__ = ["RecordedRun", "RecordedStep", "build_result", "fingerprint"]


@dataclass(frozen=True, slots=True)
class RecordedStep:
    """A step's final record as stored (``value_kept`` False: its value could not be pickled)."""

    name: str
    status: StepStatus
    value: Any
    value_kept: bool
    error: BaseException | None
    attempts: int
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """What ``Flow.resume`` needs to know about a run."""

    run_id: str
    flow: str
    fingerprint: str
    input: Any
    status: str
    phase: str
    outcome: str | None
    failed_stage: str | None
    error: BaseException | None
    steps: Mapping[str, RecordedStep]
    groups: Mapping[str, str]
    compensations: Mapping[str, tuple[str, BaseException | None, int]]
    compensation_order: tuple[str, ...] = ()
    #: map name → rows ``(index, key, status, value, value_kept, error, attempts, started_at, finished_at)``.
    items: Mapping[str, list[tuple[Any, ...]]] = field(default_factory=dict)


def fingerprint(flow: Flow) -> str:
    """A hash of the definition's structure (``describe_structure``): names, stage kinds
    and order, options and policies — not the module its functions come from."""
    stages = flow.stages
    known = _FINGERPRINTS.get(flow)
    if known is not None and known[0] is stages:
        return known[1]
    from ._structure import describe_structure

    text = json.dumps(describe_structure(flow), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    _FINGERPRINTS[flow] = (stages, digest)
    return digest


# A batch runs one flow many times: its fingerprint is computed once. Stages are
# immutable and adding one replaces the tuple, so the same tuple means the same structure.
_FINGERPRINTS: weakref.WeakKeyDictionary[Flow, tuple[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()


def build_result(
    recorded: RecordedRun,
    layout: list[list[Any]],
    compensation_order: list[str],
    started_at: float | None,
    finished_at: float | None,
    wall_offset: float | None = None,
) -> FlowResult:
    """A ``FlowResult`` from journal records. ``layout`` lists ``[step, group]`` pairs in
    declaration order; ``started_at`` and ``finished_at`` are the run's epoch seconds.

    With the run's ``wall_offset`` (epoch seconds minus its clock), the result's run
    times are on the run's clock, like its steps' and like those of the result the run
    returned, and ``to_dict()`` gives wall-clock times. Without it (a run recorded by
    an earlier flowpool) they stay epoch seconds and the wall-clock times are null.
    """
    if wall_offset is not None:
        started_at = None if started_at is None else started_at - wall_offset
        finished_at = None if finished_at is None else finished_at - wall_offset
    steps: dict[str, StepResult] = {}
    groups: dict[str, GroupResult] = {}
    members: dict[str, list[str]] = {}
    compensated: list[str] = []
    not_compensated: list[str] = []
    maps: dict[str, MapResult] = {}
    for entry in layout:
        name, group = entry[0], entry[1]
        if entry[2:] == ["map"]:
            mapped = maps[name] = _recorded_map(name, recorded)
            groups[name] = GroupResult(name, mapped.status, (), mapped.counts)
            continue
        if group is not None:
            members.setdefault(group, []).append(name)
        record = recorded.steps.get(name)
        compensation = None
        comp = recorded.compensations.get(name)
        if comp is not None and comp[0] in ("compensated", "failed"):
            compensation = CompensationResult(comp[0], comp[1], comp[2])
        if record is None:
            steps[name] = StepResult(name, StepStatus.SKIPPED, group=group)
            continue
        steps[name] = StepResult(
            name,
            record.status,
            record.value if record.status is StepStatus.COMPLETED else None,
            record.error,
            record.attempts,
            record.started_at,
            record.finished_at,
            group,
            compensation,
        )
    for name in compensation_order:
        state = recorded.compensations.get(name, ("", None, 0))[0]
        (compensated if state == "compensated" else not_compensated).append(name)
    for name, (state, _, _) in recorded.compensations.items():
        if state not in ("compensated",) and name not in not_compensated:
            not_compensated.append(name)
    for group, names in members.items():
        status = recorded.groups.get(group)
        counts = count_statuses(steps[name].status for name in names)
        groups[group] = GroupResult(group, GroupStatus(status) if status else GroupStatus.SKIPPED, tuple(names), counts)
    error = recorded.error
    status = FlowStatus(recorded.status) if recorded.status != "running" else FlowStatus.FAILED
    if status is FlowStatus.CANCELLED and error is None:
        from ._errors import FlowInterrupted

        error = FlowInterrupted(recorded.flow)
    if status is not FlowStatus.COMPLETED and error is None:
        error = StepCancelledError("", "the run did not complete")
    result = FlowResult(
        name=recorded.flow,
        run_id=recorded.run_id,
        status=status,
        steps=steps,
        groups=groups,
        maps=maps,
        error=error if status is not FlowStatus.COMPLETED else None,
        failed_stage=recorded.failed_stage,
        compensated=tuple(compensated),
        not_compensated=tuple(not_compensated),
        started_at=started_at,
        finished_at=finished_at,
        wall_offset=wall_offset,
    )
    if isinstance(result.error, KeyboardInterrupt):
        result.error.result = result  # type: ignore[attr-defined]
    return result


def _recorded_map(name: str, recorded: RecordedRun) -> MapResult:
    """A map's ``MapResult`` from its recorded items and verdict (an unrecorded one is SKIPPED)."""
    from ._maps import MapLedger

    status = recorded.groups.get(name)
    rows = recorded.items.get(name, [])
    keyed = any(not isinstance(row[1], int) or row[1] != row[0] for row in rows)
    ledger = MapLedger(name, keyed=keyed)
    for index, key, item_status, value, _, item_error, attempts, started, finished in rows:
        while len(ledger) < index:  # an item that never settled before the process died
            ledger.take(f"\x00unsettled-{len(ledger)}" if keyed else None)
        ledger.take(key if keyed else None)
        ledger.settle(index, item_status, value, item_error, attempts, started, finished)
    return MapResult(name, GroupStatus(status) if status else GroupStatus.SKIPPED, ledger)
