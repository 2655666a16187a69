"""Statuses and the immutable records a run returns."""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._errors import FlowFailedError
from ._record import field, record

if TYPE_CHECKING:
    from ._maps import MapResult

__all__ = [
    "CompensationResult",
    "FlowResult",
    "FlowStatus",
    "GroupResult",
    "GroupStatus",
    "StepResult",
    "StepStatus",
    "count_statuses",
    "new_run_id",
]


class StepStatus(enum.StrEnum):
    """The final status of one step."""

    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class GroupStatus(enum.StrEnum):
    """The verdict on a parallel group."""

    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    SKIPPED = "skipped"


class FlowStatus(enum.StrEnum):
    """How a whole run ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@record
class CompensationResult:
    """What happened when a completed step was compensated.

    ``status`` is ``"compensated"``, ``"failed"``, or ``"abandoned"`` when a second
    Ctrl-C stopped the compensations before it ran; ``error`` is the last
    attempt's exception when it failed.
    """

    status: str
    error: BaseException | None = None
    attempts: int = 0

    def __init__(self, status: str, error: BaseException | None = None, attempts: int = 0) -> None:
        _set = object.__setattr__
        _set(self, "status", status)
        _set(self, "error", error)
        _set(self, "attempts", attempts)

    @property
    def ok(self) -> bool:
        """True when the compensation ran to its end without raising."""
        return self.status == "compensated"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view."""
        return {"status": self.status, "error": describe_error(self.error), "attempts": self.attempts}


class Outcome:
    """What a step's and a map item's final records share: their status, value, error,
    attempts, times and compensation, and how those look in ``to_dict()``."""

    __slots__ = ()

    status: StepStatus
    value: Any
    error: BaseException | None
    attempts: int
    started_at: float | None
    finished_at: float | None
    compensation: CompensationResult | None

    @property
    def ok(self) -> bool:
        """True when it completed."""
        return self.status is StepStatus.COMPLETED

    @property
    def duration(self) -> float | None:
        """Seconds from the first attempt's start to the last attempt's end."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def outcome_dict(self, wall_offset: float | None) -> dict[str, Any]:
        """The JSON-serialisable fields every outcome has (``wall_offset``: see ``iso_time``)."""
        return {
            "status": self.status.value,
            "value": jsonable(self.value),
            "error": describe_error(self.error),
            "attempts": self.attempts,
            "started": iso_time(self.started_at, wall_offset),
            "finished": iso_time(self.finished_at, wall_offset),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": self.duration,
            "compensation": None if self.compensation is None else self.compensation.to_dict(),
        }


@record
class StepResult(Outcome):
    """The final record of one step. ``started_at``/``finished_at`` are monotonic seconds
    of its first attempt's start and last attempt's end (None when it never ran)."""

    name: str
    status: StepStatus
    value: Any = None
    error: BaseException | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    group: str | None = None
    compensation: CompensationResult | None = None
    late_value: Any = None
    #: The child's ``FlowResult`` when the step is a subflow (its last attempt's); else None.
    subflow: FlowResult | None = None

    def __init__(  # written out: one is built per step, and a generated one costs import time
        self,
        name: str,
        status: StepStatus,
        value: Any = None,
        error: BaseException | None = None,
        attempts: int = 0,
        started_at: float | None = None,
        finished_at: float | None = None,
        group: str | None = None,
        compensation: CompensationResult | None = None,
        late_value: Any = None,
        subflow: FlowResult | None = None,
    ) -> None:
        _set = object.__setattr__
        _set(self, "name", name)
        _set(self, "status", status)
        _set(self, "value", value)
        _set(self, "error", error)
        _set(self, "attempts", attempts)
        _set(self, "started_at", started_at)
        _set(self, "finished_at", finished_at)
        _set(self, "group", group)
        _set(self, "compensation", compensation)
        _set(self, "late_value", late_value)
        _set(self, "subflow", subflow)

    def to_dict(self, wall_offset: float | None = None) -> dict[str, Any]:
        """A JSON-serialisable view (values that JSON cannot hold become their ``repr``).

        ``wall_offset`` (epoch seconds minus the run's monotonic clock, as kept by
        ``FlowResult``) turns ``started_at``/``finished_at`` into ISO 8601 times.
        """
        outcome = self.outcome_dict(wall_offset)
        return {
            "name": self.name,
            "status": outcome.pop("status"),
            "group": self.group,
            **outcome,
            "late_value": jsonable(self.late_value),
            "subflow": None if self.subflow is None else self.subflow.to_dict(),
        }


@record
class GroupResult:
    """The verdict on one parallel group; ``members`` in declaration order.

    ``counts`` maps every ``StepStatus`` to how many members ended with it (0
    where none).
    """

    name: str
    status: GroupStatus
    members: tuple[str, ...]
    counts: Mapping[StepStatus, int] = field(default_factory=dict)

    def __init__(
        self, name: str, status: GroupStatus, members: tuple[str, ...], counts: Mapping[StepStatus, int] | None = None
    ) -> None:
        _set = object.__setattr__
        _set(self, "name", name)
        _set(self, "status", status)
        _set(self, "members", members)
        given = {} if counts is None else counts
        _set(self, "counts", MappingProxyType({s: given.get(s, 0) for s in StepStatus}))

    @property
    def ok(self) -> bool:
        """True when the group passed (completed or partial)."""
        return self.status in (GroupStatus.COMPLETED, GroupStatus.PARTIAL)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view."""
        return {
            "name": self.name,
            "status": self.status.value,
            "members": list(self.members),
            "counts": {status.value: count for status, count in self.counts.items()},
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return (GroupResult, (self.name, self.status, self.members, dict(self.counts)))


def count_statuses(statuses: Iterable[StepStatus]) -> dict[StepStatus, int]:
    """Every ``StepStatus`` → how many of ``statuses`` are it (0 where none)."""
    counts = dict.fromkeys(StepStatus, 0)
    for status in statuses:
        counts[status] += 1
    return counts


@record
class FlowResult:
    """Everything a run did. Every step of the definition appears in ``steps``."""

    name: str
    run_id: str
    status: FlowStatus
    steps: Mapping[str, StepResult]
    groups: Mapping[str, GroupResult]
    error: BaseException | None = None
    failed_stage: str | None = None
    compensated: tuple[str, ...] = ()
    not_compensated: tuple[str, ...] = ()
    started_at: float | None = None
    finished_at: float | None = None
    still_running: tuple[str, ...] = ()
    wall_offset: float | None = field(default=None, repr=False, compare=False)
    maps: Mapping[str, MapResult] = field(default_factory=dict)
    _values: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __init__(
        self,
        name: str,
        run_id: str,
        status: FlowStatus,
        steps: Mapping[str, StepResult],
        groups: Mapping[str, GroupResult],
        error: BaseException | None = None,
        failed_stage: str | None = None,
        compensated: tuple[str, ...] = (),
        not_compensated: tuple[str, ...] = (),
        started_at: float | None = None,
        finished_at: float | None = None,
        still_running: tuple[str, ...] = (),
        wall_offset: float | None = None,
        maps: Mapping[str, MapResult] | None = None,
        _values: Mapping[str, Any] | None = None,  # always derived: a field only to stay out of repr and ==
    ) -> None:
        _set = object.__setattr__
        _set(self, "name", name)
        _set(self, "run_id", run_id)
        _set(self, "status", status)
        # Read-only views, so a result handed around cannot be changed by accident.
        _set(self, "steps", MappingProxyType(dict(steps)))
        _set(self, "groups", MappingProxyType(dict(groups)))
        _set(self, "error", error)
        _set(self, "failed_stage", failed_stage)
        _set(self, "compensated", compensated)
        _set(self, "not_compensated", not_compensated)
        _set(self, "started_at", started_at)
        _set(self, "finished_at", finished_at)
        _set(self, "still_running", still_running)
        _set(self, "wall_offset", wall_offset)
        _set(self, "maps", MappingProxyType({} if maps is None else dict(maps)))
        values = {name: step.value for name, step in self.steps.items() if step.ok}
        # A skipped map has no value, as later stages' ctx.results show (SPEC §13).
        values.update((name, m.values) for name, m in self.maps.items() if m.status is not GroupStatus.SKIPPED)
        _set(self, "_values", MappingProxyType(values))

    @property
    def ok(self) -> bool:
        """True when the flow completed."""
        return self.status is FlowStatus.COMPLETED

    @property
    def values(self) -> Mapping[str, Any]:
        """Step name → value, for every completed step; map name → the map's ``values`` (not for a skipped map)."""
        return self._values

    @property
    def duration(self) -> float | None:
        """Seconds the run took, compensations included."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def raise_for_status(self) -> FlowResult:
        """Raise ``FlowFailedError`` unless the flow completed; return ``self`` otherwise."""
        if not self.ok:
            raise FlowFailedError(self) from self.error
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view of the whole result."""
        return {
            "name": self.name,
            "run_id": self.run_id,
            "status": self.status.value,
            "ok": self.ok,
            "error": describe_error(self.error),
            "failed_stage": self.failed_stage,
            "duration": self.duration,
            "started": iso_time(self.started_at, self.wall_offset),
            "finished": iso_time(self.finished_at, self.wall_offset),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "compensated": list(self.compensated),
            "not_compensated": list(self.not_compensated),
            "still_running": list(self.still_running),
            "steps": {name: step.to_dict(self.wall_offset) for name, step in self.steps.items()},
            "groups": {name: group.to_dict() for name, group in self.groups.items()},
            "maps": {name: result.to_dict(self.wall_offset) for name, result in self.maps.items()},
        }

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType cannot be pickled; rebuild from plain dicts.
        return (
            _rebuild_flow_result,
            (
                self.name,
                self.run_id,
                self.status,
                dict(self.steps),
                dict(self.groups),
                self.error,
                self.failed_stage,
                self.compensated,
                self.not_compensated,
                self.started_at,
                self.finished_at,
                self.still_running,
                self.wall_offset,
                dict(self.maps),
            ),
        )


def new_run_id() -> str:
    """A new ``FlowResult.run_id``: a random (version 4) UUID's 32 hex digits, what
    ``uuid.uuid4().hex`` gives; ``uuid`` itself is not imported (it imports ``platform``)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return raw.hex()


def _rebuild_flow_result(*fields: Any) -> FlowResult:
    return FlowResult(*fields)


def iso_time(monotonic: float | None, wall_offset: float | None) -> str | None:
    """The ISO 8601 UTC time of a monotonic instant of a run whose clock is
    ``wall_offset`` seconds behind the epoch; None when either is unknown."""
    if monotonic is None or wall_offset is None:
        return None
    import datetime  # only when a result is turned into a dict

    moment = datetime.datetime.fromtimestamp(monotonic + wall_offset, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds")


def describe_error(error: BaseException | None) -> dict[str, Any] | None:
    """A JSON-serialisable description of an exception (type, message, nested errors)."""
    if error is None:
        return None
    described: dict[str, Any] = {
        "type": type(error).__qualname__,
        "message": str(error),
    }
    if isinstance(error, BaseExceptionGroup):
        described["exceptions"] = [describe_error(e) for e in error.exceptions]
    remote = getattr(error, "remote_traceback", None)
    if isinstance(remote, str):
        described["remote_traceback"] = remote
    elif error.__traceback__ is not None:
        import traceback

        described["traceback"] = "".join(traceback.format_exception(error)).rstrip()
    return described


def jsonable(value: Any) -> Any:
    """``value`` if JSON can hold it as is, else a JSON-friendly stand-in."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: jsonable(v) for k, v in value.items()}
    return repr(value)
