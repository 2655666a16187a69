"""Event records and their dispatch to a listener."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._record import record
from ._results import describe_error

__all__ = ["EVENT_KINDS", "Event", "EventSink"]


EVENT_KINDS = (
    "flow_started",
    "step_started",
    "step_retrying",
    "step_finished",
    "group_finished",
    "compensation_started",
    "compensation_finished",
    "flow_finished",
)


@record
class Event:
    """Something that happened in a run.

    ``kind`` is one of ``EVENT_KINDS``; ``step``, ``group``, ``attempt``,
    ``status`` and ``error`` are None where they do not apply; ``time`` is
    monotonic seconds and ``wall_time`` the same instant in epoch seconds.
    ``path`` is the tuple of stage names from the top of the run to the step or
    group the event is about (``(step,)`` for a top-level step; ``()`` for the
    flow's own events). ``item`` (the key) and ``index`` name a map's item on
    events about one; they are None on every other event. ``started_at`` is set on events that end an attempt
    (``step_retrying``, ``step_finished``, ``compensation_finished``) to when it
    started; ``delay`` on ``step_retrying`` is the backoff before the next attempt.
    """

    kind: str
    flow: str
    run_id: str
    time: float
    step: str | None = None
    group: str | None = None
    attempt: int | None = None
    status: str | None = None
    error: BaseException | None = None
    started_at: float | None = None
    delay: float | None = None
    wall_time: float | None = None
    path: tuple[str, ...] = ()
    item: str | int | None = None
    index: int | None = None

    def __init__(  # written out: one is built per event, and a generated one costs import time
        self,
        kind: str,
        flow: str,
        run_id: str,
        time: float,
        step: str | None = None,
        group: str | None = None,
        attempt: int | None = None,
        status: str | None = None,
        error: BaseException | None = None,
        started_at: float | None = None,
        delay: float | None = None,
        wall_time: float | None = None,
        path: tuple[str, ...] = (),
        item: str | int | None = None,
        index: int | None = None,
    ) -> None:
        _set = object.__setattr__
        _set(self, "kind", kind)
        _set(self, "flow", flow)
        _set(self, "run_id", run_id)
        _set(self, "time", time)
        _set(self, "step", step)
        _set(self, "group", group)
        _set(self, "attempt", attempt)
        _set(self, "status", status)
        _set(self, "error", error)
        _set(self, "started_at", started_at)
        _set(self, "delay", delay)
        _set(self, "wall_time", wall_time)
        _set(self, "path", path)
        _set(self, "item", item)
        _set(self, "index", index)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (one line of ``--events``)."""
        return {
            "kind": self.kind,
            "flow": self.flow,
            "run_id": self.run_id,
            "time": self.time,
            "wall_time": self.wall_time,
            "path": list(self.path),
            "item": self.item,
            "index": self.index,
            "step": self.step,
            "group": self.group,
            "attempt": self.attempt,
            "status": None if self.status is None else str(self.status),
            "error": describe_error(self.error),
            "started_at": self.started_at,
            "delay": self.delay,
        }


class EventSink:
    """Calls the run's listener; a listener that raises is logged and ignored."""

    __slots__ = ("_listener", "_flow", "_run_id", "enabled", "wall_offset", "prefix", "tags")

    def __init__(
        self,
        listener: Callable[[Event], Any] | None,
        flow: str,
        run_id: str,
        wall_offset: float = 0.0,
        prefix: tuple[str, ...] = (),
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        self._listener = listener
        self._flow = flow
        self._run_id = run_id
        self.enabled = listener is not None
        #: Epoch seconds minus the run's clock: turns an event's ``time`` into ``wall_time``.
        self.wall_offset = wall_offset
        #: Inside a subflow: the stage names from the top down to the subflow's step.
        self.prefix = prefix
        #: Inside a map item's subflow: the item's ``item`` and ``index``.
        self.tags = tags

    def nested(self, prefix: tuple[str, ...], tags: Mapping[str, Any] | None) -> EventSink:
        """The sink of a subflow whose step's path is ``prefix`` (and item ``tags``)."""
        return EventSink(self._listener, self._flow, self._run_id, self.wall_offset, prefix, tags)

    def emit(self, kind: str, time: float, **fields: Any) -> None:
        """Send one event to the listener, if there is one."""
        listener = self._listener
        if listener is None:
            return
        if "path" not in fields:
            # A top-level step's (or group's) path is its own name; the flow's is empty.
            name = fields.get("step") or fields.get("group")
            fields["path"] = (*self.prefix, name) if name is not None else self.prefix
        tags = self.tags
        if tags is not None:
            for tag, value in tags.items():
                if fields.get(tag) is None:
                    fields[tag] = value
        try:
            listener(Event(kind, self._flow, self._run_id, time, wall_time=time + self.wall_offset, **fields))
        except Exception:
            import logging  # only when a listener fails: logging costs start-up time

            logging.getLogger("flowpool").exception(
                "flowpool: the on_event listener raised on a %s event; ignored", kind
            )
