"""The timeline's model: events, one at a time, into runs of rows, bars and map bands.

``EventModel`` keeps a few numbers per map attempt, not the events, so a live run
of a large map does not hold its event log in memory; ``_timeline`` draws it.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowpool import Flow
from flowpool._definition import Always

from ._reasons import SkipReasons

__all__ = ["EventModel", "read_events"]

_FARTHEST = 1e12  # seconds; monotonic and epoch times are far below


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``--events`` file: one JSON object a line (blank lines ignored).

    Raises:
        OSError: the file cannot be read.
        ValueError: a line is not a JSON object with a ``kind`` and a ``time``; the
            message names the line.
    """
    events: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
                raise ValueError(f"{path}:{number}: not a flowpool event (a JSON object with a 'kind')")
            if not isinstance(event.get("time"), int | float):
                raise ValueError(f"{path}:{number}: the event has no numeric 'time'")
            events.append(event)
    return events


# ── the model ────────────────────────────────────────────────────────────────────


@dataclass
class _Bar:
    kind: str  # "attempt" or "compensation"
    attempt: int
    start: float | None = None
    end: float | None = None
    status: str = "running"
    error: str | None = None
    delay: float | None = None  # backoff planned after this attempt


@dataclass
class _Row:
    step: str
    group: str | None
    status: str | None = None
    attempts: dict[int, _Bar] = field(default_factory=dict)
    compensations: dict[int, _Bar] = field(default_factory=dict)
    skipped_at: float | None = None  # when it was skipped without running
    reason: str | None = None  # why it was skipped, when the flow is known
    always: bool = False


@dataclass
class _GroupInfo:
    name: str
    status: str | None = None
    steps: list[str] = field(default_factory=list)


@dataclass
class _MapRow:
    """A map's attempts as two columns of times, and when its items failed."""

    name: str
    status: str | None = None
    starts: array[float] = field(default_factory=lambda: array("d"))
    ends: array[float] = field(default_factory=lambda: array("d"))
    failures: array[float] = field(default_factory=lambda: array("d"))
    running: dict[tuple[Any, int], float] = field(default_factory=dict)  # attempts not ended yet
    counts: dict[str, int] = field(default_factory=dict)
    reason: str | None = None  # why it was skipped, when the flow is known
    skipped_at: float | None = None


@dataclass
class _RunModel:
    run_id: str
    flow: str = "?"
    status: str | None = None
    error: str | None = None
    start: float | None = None
    end: float | None = None
    order: list[tuple[str, str]] = field(default_factory=list)  # ("step"|"group", name)
    rows: dict[str, _Row] = field(default_factory=dict)
    groups: dict[str, _GroupInfo] = field(default_factory=dict)
    maps: dict[str, _MapRow] = field(default_factory=dict)
    first: float | None = None
    last: float | None = None
    skips: SkipReasons | None = None  # with the run's definition: why steps were skipped
    always: frozenset[str] = frozenset()  # the always-stages' names, when the flow is known


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    if isinstance(error, Mapping):
        kind = error.get("type") or "error"
        message = error.get("message") or ""
        text = f"{kind}: {message}" if message else str(kind)
        nested = error.get("exceptions")
        if isinstance(nested, list) and nested:
            text += " [" + "; ".join(filter(None, (_error_text(e) for e in nested))) + "]"
        return text
    return str(error)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    # Further than any clock reads: not a time to draw (and the axis would overflow).
    return number if math.isfinite(number) and abs(number) <= _FARTHEST else None


class EventModel:
    """Takes a run's events one at a time (``Event.to_dict()`` dictionaries) into rows.

    Given the ``flow`` the events come from, it marks always-stages and says why a
    step was skipped; runs of another flow in the same events are drawn without.
    """

    def __init__(self, flow: Flow | None = None) -> None:
        self._runs: dict[str, _RunModel] = {}
        self._flow = flow

    def add(self, event: Mapping[str, Any]) -> None:
        """Take one event into the model."""
        time = _number(event.get("time"))
        if time is None:
            return
        run_id = str(event.get("run_id") or "")
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _RunModel(run_id)
            flow = self._flow
            if flow is not None and event.get("flow") == flow.name:
                run.skips = SkipReasons(flow)
                run.always = frozenset(stage.name for stage in flow.stages if isinstance(stage, Always))
        run.first = time if run.first is None else min(run.first, time)
        run.last = time if run.last is None else max(run.last, time)
        run.flow = str(event.get("flow") or run.flow)
        _take(run, event, time)


def _take(run: _RunModel, event: Mapping[str, Any], time: float) -> None:
    kind = event.get("kind")
    step = event.get("step")
    group = event.get("group")
    group = str(group) if group is not None else None
    status = event.get("status")
    status = str(status) if status is not None else None
    attempt_value = event.get("attempt")
    attempt = attempt_value if isinstance(attempt_value, int) and not isinstance(attempt_value, bool) else 1
    started_at = _number(event.get("started_at"))
    if kind == "flow_started":
        run.start = time
        return
    if kind == "flow_finished":
        run.end = time
        run.status = status
        run.error = _error_text(event.get("error"))
        return
    if kind == "group_finished":
        if group is None:
            return
        if group in run.groups:
            run.groups[group].status = status
        else:
            # A group's members end before it does: a name not seen yet is a map
            # that ran no item (skipped, empty, or its items could not be produced).
            mapped = _map_row(run, group)
            mapped.status = status
            if status == "skipped":
                mapped.skipped_at = time
                mapped.reason = run.skips.reason(group) if run.skips is not None else None
        if run.skips is not None and status is not None:
            run.skips.saw(group, status)
        return
    if not isinstance(step, str):
        return
    item = event.get("index") if event.get("index") is not None else event.get("item")
    if item is not None:
        _take_item(run, step, item, kind, attempt, status, time, started_at)
        return
    row = _row(run, step, group)
    if kind == "step_started":
        bar = row.attempts.setdefault(attempt, _Bar("attempt", attempt))
        bar.start = time
    elif kind in ("step_retrying", "step_finished"):
        if kind == "step_finished":
            row.status = status
            if run.skips is not None and status is not None:
                if status == "skipped":
                    row.reason = run.skips.reason(step)
                run.skips.saw(step, status, stage=group is None)
        if started_at is None and attempt not in row.attempts:
            if status == "skipped":
                row.skipped_at = time
            return  # ended without running (skipped, or cancelled before it started)
        bar = row.attempts.setdefault(attempt, _Bar("attempt", attempt))
        bar.start = started_at if started_at is not None else bar.start
        bar.end = time
        bar.status = status or "completed"
        bar.error = _error_text(event.get("error"))
        bar.delay = _number(event.get("delay"))
    elif kind == "compensation_started":
        bar = row.compensations.setdefault(attempt, _Bar("compensation", attempt))
        bar.start = time
    elif kind == "compensation_finished":
        bar = row.compensations.setdefault(attempt, _Bar("compensation", attempt))
        bar.start = started_at if started_at is not None else bar.start
        bar.end = time
        bar.status = "compensated" if status == "compensated" else "compensation_failed"
        if status not in ("compensated", "failed"):
            bar.error = f"compensation {status}"
        else:
            bar.error = _error_text(event.get("error"))


def _take_item(
    run: _RunModel,
    name: str,
    item: Any,
    kind: Any,
    attempt: int,
    status: str | None,
    time: float,
    started_at: float | None,
) -> None:
    """An event about one item of the map ``name``: it only moves the map's numbers."""
    row = _map_row(run, name)
    key = (item if isinstance(item, str | int) else repr(item), attempt)
    if kind == "step_started":
        row.running[key] = time
        return
    if kind not in ("step_retrying", "step_finished"):
        return  # compensations of items are not drawn one by one
    began = row.running.pop(key, None)
    began = started_at if started_at is not None else began
    if began is not None:
        row.starts.append(began)
        row.ends.append(max(time, began))
    if kind == "step_finished":
        shown = status or "completed"
        row.counts[shown] = row.counts.get(shown, 0) + 1
        if shown not in ("completed", "skipped"):
            row.failures.append(time)


def _map_row(run: _RunModel, name: str) -> _MapRow:
    row = run.maps.get(name)
    if row is None:
        row = run.maps[name] = _MapRow(name)
        run.order.append(("map", name))
    return row


def _group(run: _RunModel, name: str) -> _GroupInfo:
    info = run.groups.get(name)
    if info is None:
        info = run.groups[name] = _GroupInfo(name)
        run.order.append(("group", name))
    return info


def _row(run: _RunModel, step: str, group: str | None) -> _Row:
    row = run.rows.get(step)
    if row is None:
        row = run.rows[step] = _Row(step, group, always=step in run.always)
        if group is None:
            run.order.append(("step", step))
        else:
            _group(run, group).steps.append(step)
    return row
