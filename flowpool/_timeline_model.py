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

from ._reasons import SkipReasons, definition_at, subflow_at

__all__ = ["EventModel", "RowPath", "flatten", "read_events"]

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


#: Where a row is: the names from the top of the run down to it (an event's ``path``).
RowPath = tuple[str, ...]


@dataclass
class _Row:
    step: str
    group: str | None
    path: RowPath = ()
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
    steps: list[RowPath] = field(default_factory=list)


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
    #: Under each path (() for the top, a subflow's path for its child), what comes in
    #: order: ("step" | "group" | "map", the path of its row).
    order: dict[RowPath, list[tuple[str, RowPath]]] = field(default_factory=dict)
    rows: dict[RowPath, _Row] = field(default_factory=dict)
    groups: dict[RowPath, _GroupInfo] = field(default_factory=dict)
    maps: dict[RowPath, _MapRow] = field(default_factory=dict)
    first: float | None = None
    last: float | None = None
    definition: Flow | None = None  # the run's flow, when known: always-stages, why skipped
    #: Why-skipped per flow being run: () for the top, a subflow's path for its child.
    skips: dict[RowPath, SkipReasons] = field(default_factory=dict)

    def skip_reasons(self, path: RowPath) -> SkipReasons | None:
        """Why-skipped for the flow the step (or group, or map) at ``path`` is in."""
        if self.definition is None:
            return None
        prefix = path[:-1]
        found = self.skips.get(prefix)
        if found is None:
            child = subflow_at(self.definition, prefix)
            if child is None:
                return None
            found = self.skips[prefix] = SkipReasons(child)
        return found


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
                run.definition = flow
        run.first = time if run.first is None else min(run.first, time)
        run.last = time if run.last is None else max(run.last, time)
        run.flow = str(event.get("flow") or run.flow)
        _take(run, event, time)


def _path(event: Mapping[str, Any], name: str | None) -> RowPath | None:
    """The event's path from the top of the run; a name alone in a log without paths."""
    path = event.get("path")
    if isinstance(path, list | tuple) and path and all(isinstance(part, str) for part in path):
        return tuple(path)
    return (name,) if name is not None else None


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
    path = _path(event, group if kind == "group_finished" else step if isinstance(step, str) else None)
    if path is None:
        return
    item = event.get("index") if event.get("index") is not None else event.get("item")
    if item is not None and any(path[:depth] in run.maps for depth in range(1, len(path))):
        return  # inside one item of a map of subflows: the map's band counts its items
    if kind == "group_finished":
        _take_verdict(run, path, status, time)
        return
    if not isinstance(step, str):
        return
    if item is not None:
        _take_item(run, path, item, kind, attempt, status, time, started_at)
        return
    row = _row(run, path, group)
    if kind == "step_started":
        run.skips.pop(path, None)  # a subflow starting (again): its child's stops start afresh
        bar = row.attempts.setdefault(attempt, _Bar("attempt", attempt))
        bar.start = time
    elif kind in ("step_retrying", "step_finished"):
        if kind == "step_finished":
            row.status = status
            skips = run.skip_reasons(path)
            if skips is not None and status is not None:
                if status == "skipped":
                    row.reason = skips.reason(path[-1])
                skips.saw(path[-1], status, stage=group is None)
            run.skips.pop(path, None)  # a subflow's child has ended
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


def _take_verdict(run: _RunModel, path: RowPath, status: str | None, time: float) -> None:
    """A group's or a map's ``group_finished``."""
    if path in run.groups:
        run.groups[path].status = status
    else:
        # A group's members end before it does: a path not seen yet is a map that
        # ran no item (skipped, empty, or its items could not be produced).
        mapped = _map_row(run, path)
        mapped.status = status
        if status == "skipped" and not mapped.starts and not mapped.running:
            mapped.skipped_at = time
            skips = run.skip_reasons(path)
            mapped.reason = skips.reason(path[-1]) if skips is not None else None
    skips = run.skip_reasons(path)
    if skips is not None and status is not None:
        skips.saw(path[-1], status)


def _take_item(
    run: _RunModel,
    path: RowPath,
    item: Any,
    kind: Any,
    attempt: int,
    status: str | None,
    time: float,
    started_at: float | None,
) -> None:
    """An event about one item of the map at ``path``: it only moves the map's numbers."""
    row = _map_row(run, path)
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


def _map_row(run: _RunModel, path: RowPath) -> _MapRow:
    row = run.maps.get(path)
    if row is None:
        row = run.maps[path] = _MapRow(path[-1])
        run.order.setdefault(path[:-1], []).append(("map", path))
    return row


def _group(run: _RunModel, path: RowPath) -> _GroupInfo:
    info = run.groups.get(path)
    if info is None:
        info = run.groups[path] = _GroupInfo(path[-1])
        run.order.setdefault(path[:-1], []).append(("group", path))
    return info


def _row(run: _RunModel, path: RowPath, group: str | None) -> _Row:
    row = run.rows.get(path)
    if row is None:
        always = run.definition is not None and isinstance(definition_at(run.definition, path), Always)
        row = run.rows[path] = _Row(path[-1], group, path, always=always)
        if group is None:
            run.order.setdefault(path[:-1], []).append(("step", path))
        else:
            _group(run, (*path[:-1], group)).steps.append(path)
    return row


def flatten(run: _RunModel, parent: RowPath = (), depth: int = 0) -> list[tuple[str, Any, int]]:
    """The run's rows top to bottom, each with its depth: a group's members under it,
    a subflow's child rows under the subflow's own row."""
    rows: list[tuple[str, Any, int]] = []
    for kind, path in run.order.get(parent, ()):
        if kind == "group":
            info = run.groups[path]
            rows.append(("group", info, depth))
            for member in info.steps:
                rows.append(("step", run.rows[member], depth + 1))
                rows.extend(flatten(run, member, depth + 2))
        elif kind == "map":
            rows.append(("map", run.maps[path], depth))
        else:
            rows.append(("step", run.rows[path], depth))
            rows.extend(flatten(run, path, depth + 1))
    return rows
