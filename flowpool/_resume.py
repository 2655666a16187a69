"""Resuming a journaled run whose process died.

``Flow.resume`` lands here: the recorded run is read back, checked against the
definition, and run on by the settle loop from where it was. Completed steps
are restored, not run again (``preload_completed``, stage by stage); a run that
had failed and was compensating only runs its pending compensations
(``restore_compensation_phase``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._definition import Flow
from ._errors import FlowDefinitionError, JournalError, StepCancelledError
from ._events import EventSink
from ._journal import Journal, RecordedRun, build_result, fingerprint
from ._recorder import layout
from ._results import CompensationResult, FlowResult, StepResult, StepStatus
from ._state import StageRun, StepRun, with_compensation

if TYPE_CHECKING:
    from ._events import Event
    from ._runner import _Run

__all__ = [
    "check_resumable",
    "completed_items",
    "open_journal",
    "preload_completed",
    "restore_compensation_phase",
    "resume_flow",
    "resume_from",
]


def resume_flow(
    flow: Flow,
    run_id: str,
    *,
    journal: Any,
    force: bool,
    executor: Any,
    max_workers: int | None,
    timeout: float | None,
    on_event: Callable[[Event], Any] | None,
) -> FlowResult:
    """``Flow.resume``: continue run ``run_id`` of ``flow`` from ``journal``."""
    from ._runner import run_flow  # not at import time: _runner imports this module

    owned, book = open_journal(journal, flow.name)
    assert book is not None
    try:
        recorded = book.recorder.recorded(run_id)
        if recorded.fingerprint != fingerprint(flow) and not force:
            raise FlowDefinitionError(
                f"the definition changed since run {run_id!r} was recorded (its fingerprint differs); "
                f"pass force=True to resume it anyway",
                flow=flow.name,
                argument="run_id",
            )
        if recorded.status != "running":
            return book.result(run_id)
        if recorded.phase != "compensating":
            check_resumable(flow)
        return run_flow(
            flow,
            recorded.input,
            executor=executor,
            max_workers=max_workers,
            timeout=timeout,
            on_event=on_event,
            clock=None,
            journal=book,
            resume=recorded,
        )
    finally:
        if owned and isinstance(book, Journal):
            book.close()


def open_journal(journal: Any, flow: str) -> tuple[bool, Journal | None]:
    """``(owned, journal)`` for a ``journal=`` argument: a path is opened (and owned)."""
    if journal is None:
        return False, None
    if isinstance(journal, Journal):
        return False, journal
    if isinstance(journal, str | os.PathLike):
        return True, Journal(journal)
    raise FlowDefinitionError(
        f"must be a path, a flowpool.Journal or None, not {type(journal).__name__}", flow=flow, argument="journal"
    )


def resume_from(run: _Run, recorded: RecordedRun) -> None:
    """Make ``run`` continue ``recorded``: same run id and input; completed steps are not run again."""
    run.resumed = recorded
    run.run_id = recorded.run_id
    run.input = recorded.input
    run.events = EventSink(run.events._listener, run.name, run.run_id, run.wall_offset)
    run.recorder.run_id = run.run_id


def completed_items(recorded: RecordedRun, map_name: str) -> dict[Any, tuple[Any, int, float | None, float | None]]:
    """Key → (value, attempts, started_at, finished_at) of the map's items recorded as completed."""
    return {
        key: (value, attempts, started, finished)
        for _, key, status, value, kept, _, attempts, started, finished in recorded.items.get(map_name, [])
        if status is StepStatus.COMPLETED and kept
    }


def check_resumable(flow: Flow) -> None:
    """A map whose ``items`` is a one-shot iterator cannot be taken again on resume."""
    from ._definition import Map
    from ._errors import FlowpoolError

    for stage in flow.stages:
        if isinstance(stage, Map) and not callable(stage.items) and iter(stage.items) is stage.items:
            raise FlowpoolError(
                f"flow {flow.name!r}, map {stage.name!r}: its items are a one-shot iterator, which cannot be "
                f"read again to resume the run; give items as a callable items(ctx) or a re-iterable (a list)"
            )


def preload_completed(run: _Run, st: StageRun) -> None:
    """Restore what the journal says about this stage's steps: completed steps (and,
    in a group whose verdict was recorded, every member) are not run again."""
    assert run.resumed is not None
    settled = st.group is not None and st.group.name in run.resumed.groups
    if settled:
        st.cancel_reason = "restored from the journal"  # restoring must not trigger fail fast
    for sr in st.members:
        recorded = run.resumed.steps.get(sr.step.name)
        if recorded is None:
            continue
        completed = recorded.status is StepStatus.COMPLETED and recorded.value_kept
        if completed and sr.step.subflow is not None:
            continue  # runs again: its child restores its own completed steps (and can be undone)
        if not completed and not (settled and recorded.status is not StepStatus.COMPLETED):
            continue  # it runs (again): at least once
        sr.attempts = recorded.attempts
        sr.first_started = recorded.started_at
        value = recorded.value if completed else None
        run.finalize(st, sr, recorded.status, value, recorded.error)
        record = sr.record
        assert record is not None
        sr.record = run.records[sr.step.name] = StepResult(
            record.name,
            record.status,
            value,
            recorded.error,
            recorded.attempts,
            recorded.started_at,
            recorded.finished_at,
            record.group,
        )
        run.recorder.step_finished(sr.record)  # keep the recorded times
    if settled:
        # Restoring is over: a member that runs again (its value could not be journaled)
        # must start, not be cancelled by the marker that kept restoring from failing fast.
        st.cancel_reason = None


def restore_compensation_phase(run: _Run, recorded: RecordedRun) -> None:
    """The run had failed and was compensating when its process died: rebuild its
    records (as ``Journal.result`` does) and run only the compensations that had not finished."""
    run.recorder.failure_recorded = True  # the journal says so already
    rebuilt = build_result(recorded, layout(run.flow), [], None, None)
    run.records.update(rebuilt.steps)
    run.groups.update(rebuilt.groups)
    positions = _step_positions(run.flow)
    for step in run.flow.steps():
        index = positions[step.name]
        comp = recorded.compensations.get(step.name)
        if comp is not None and comp[0] in ("compensated", "failed"):
            run.compensator.done.add(step.name)
        rec = recorded.steps.get(step.name)
        if rec is None or rec.status is not StepStatus.COMPLETED:
            continue
        run.values[step.name] = rec.value
        if step.compensate is not None and step.name not in run.compensator.done and not rec.value_kept:
            # Its value could not be journaled: undoing it with None would be a lie.
            error = JournalError(
                f"step {step.name!r} was not compensated on resume: its value could not be recorded in the journal"
            )
            record = with_compensation(rebuilt.steps[step.name], CompensationResult("failed", error, 0))
            run.records[step.name] = record
            run.compensator.not_compensated.append(step.name)
            run.compensator.done.add(step.name)
            continue
        if step.compensate is not None:
            record = rebuilt.steps[step.name]
            sr = StepRun(step, index, record.group, run.backend_for(step), run)
            sr.record = record
            run.compensator.pending.append(sr)
        elif step.subflow is not None:  # a completed subflow is undone as a unit
            record = rebuilt.steps[step.name]
            child_input = run.input if step.input is None else _reproduce_input(run, step, step.name, None)
            child = _restored_unit(run, step, recorded, step.name, None, child_input)
            if child is not None:
                sr = StepRun(step, index, record.group, run.subflows, run)
                sr.record, sr.child = record, child
                run.compensator.pending.append(sr)
    _restore_maps(run, recorded, rebuilt.maps, positions)
    for name in recorded.compensation_order:  # in the order they ran before the death
        state = recorded.compensations[name][0]
        (run.compensator.compensated if state == "compensated" else run.compensator.not_compensated).append(name)
    run.values_view = MappingProxyType(dict(run.values))
    for m in run.compensator.maps:
        if not m.units:  # a map of subflows: its items' frames are restored already
            m.items = _reproduce_items(run, m.name, run.compensator.done)
    run.error = recorded.error or StepCancelledError("", "the run failed before its process died")
    run.failed_stage = recorded.failed_stage


def _restored_unit(run: _Run, step: Any, recorded: RecordedRun, label: str, tags: Any, child_input: Any) -> _Run | None:
    """The frame of a subflow that completed before a run compensating died, restored
    from the journal to be undone as a unit (None when it has nothing left to undo).
    ``child_input`` is its input as the child had it (its compensations' ``ctx.input``)."""
    from ._finish import run_result
    from ._subflows import ScopedRecorder

    prefix = f"{label}/"
    size = len(prefix)
    view = dataclasses.replace(
        recorded,
        steps={name[size:]: rec for name, rec in recorded.steps.items() if name.startswith(prefix)},
        groups={name[size:]: status for name, status in recorded.groups.items() if name.startswith(prefix)},
        items={name[size:]: rows for name, rows in recorded.items.items() if name.startswith(prefix)},
        compensations={name[size:]: comp for name, comp in recorded.compensations.items() if name.startswith(prefix)},
        compensation_order=tuple(name[size:] for name in recorded.compensation_order if name.startswith(prefix)),
    )
    child = type(run)(step.subflow, child_input, None, None, None, None, run.clock, parent=run)
    child.started_at = run.clock.now()
    child.events = run.events.nested((*run.events.prefix, step.name), tags or run.events.tags)
    journal = run.recorder.journal
    if journal is not None:
        child.recorder = ScopedRecorder(journal, run.run_id, f"{getattr(run.recorder, 'prefix', '')}{prefix}")
    restore_compensation_phase(child, view)
    compensator = child.compensator
    compensator.pending = [sr for sr in compensator.pending if sr.step.name not in compensator.done]
    child.error, child.failed_stage = None, None  # it completed: the parent failed
    child.result = run_result(child)
    return child if compensator.undoable() else None


def _step_positions(flow: Flow) -> dict[str, int]:
    """Each step's and map's place in the compensation order, as ``_Run.execute`` counts them."""
    from ._definition import Group, Map

    positions: dict[str, int] = {}
    index = 0
    for stage in flow.stages:
        if isinstance(stage, Map):
            positions[stage.name] = index
            index += 1
            continue
        members = stage.members if isinstance(stage, Group) else (stage,)
        for offset, step in enumerate(members):
            positions[step.name] = index + offset
        index += len(members)
    return positions


def _restore_maps(run: _Run, recorded: RecordedRun, maps: Mapping[str, Any], positions: dict[str, int]) -> None:
    """The maps of a run that was compensating: their results, values and pending item compensations.

    The items themselves are not journaled: ``_reproduce_items`` finds them again once the
    run's values are restored.
    """
    from ._definition import Map
    from ._maps import MapValues
    from ._undo_plan import MapCompensation

    for stage in run.flow.stages:
        if not isinstance(stage, Map) or stage.name not in maps:
            continue
        result = maps[stage.name]
        ledger = result._ledger
        run.maps[stage.name] = result
        run.values[stage.name] = MapValues(ledger)
        if stage.subflow is not None:  # each completed item is undone as a unit
            units = _restored_items(run, stage, recorded, ledger)
            if units:
                undo = MapCompensation(
                    stage.name,
                    positions[stage.name],
                    stage.step,
                    ledger,
                    [],
                    run.subflows,
                    stage.compensate_concurrency,
                )
                undo.context, undo.units = run.context, units
                run.compensator.maps.append(undo)
            continue
        if stage.step.compensate is not None and ledger.completed:
            prefix = f"{stage.name}["
            run.compensator.done.update(
                name
                for name, (state, _, _) in recorded.compensations.items()
                if name.startswith(prefix) and state in ("compensated", "failed")
            )
            backend = run.backends.for_step(stage.step.executor)
            run.compensator.maps.append(
                MapCompensation(
                    stage.name, positions[stage.name], stage.step, ledger, [], backend, stage.compensate_concurrency
                )
            )


def _restored_items(run: _Run, stage: Any, recorded: RecordedRun, ledger: Any) -> dict[int, _Run]:
    """A map of subflows: index → the restored frame of each completed item with something to undo."""
    from ._maps import COMPLETED_CODE, item_label

    units: dict[int, _Run] = {}
    # Each child's input is its item, or what the step's ``input`` made of it.
    items = _reproduce_items(run, stage.name, set())
    for index, code in enumerate(ledger.codes):
        if code != COMPLETED_CODE:
            continue
        key = ledger.key_of(index)
        tags = {"item": key, "index": index}
        child_input = items[index]
        if stage.step.input is not None:
            child_input = _reproduce_input(run, stage.step, stage.name, (child_input, index, key))
        child = _restored_unit(run, stage.step, recorded, item_label(stage.name, key), tags, child_input)
        if child is not None:
            units[index] = child
    return units


def _reproduce_items(run: _Run, map_name: str, done: set[str]) -> list[Any]:
    """The items of a restored map whose compensation is still to run, by index (None elsewhere).

    The journal keeps keys and values, not items, so ``items`` is called again (with the
    values of the stages before the map as ``ctx.results``, as when it first ran) and read
    until every pending item is found, matched by key; only those items are kept. Items that
    cannot be produced again (``items`` raises, or no longer yields the key) leave ``ctx.item``
    None in their compensation, as for an item that was never seen.
    """
    from . import _logcontext as logcontext
    from ._definition import Map
    from ._maps import COMPLETED_CODE, check_key, item_label

    earlier: set[str] = set()
    stage: Map | None = None
    for candidate in run.flow.stages:
        if candidate.name == map_name and isinstance(candidate, Map):
            stage = candidate
            break
        earlier.update(step.name for step in _stage_steps(candidate))
    assert stage is not None
    ledger = run.maps[map_name]._ledger
    wanted: dict[Any, int] = {}
    for index, code in enumerate(ledger.codes):
        key = ledger.key_of(index)
        if code == COMPLETED_CODE and item_label(map_name, key) not in done:
            wanted[key] = index
    items: list[Any] = [None] * len(ledger)
    if not wanted:
        return items
    ctx = run.context(map_name, 1)
    ctx.results = MappingProxyType({name: value for name, value in run.values.items() if name in earlier})
    token = logcontext.enter(run.run_id, run.name, map_name, 1)
    source: Any = None
    try:
        source = iter(stage.items(ctx) if callable(stage.items) else stage.items)
        for position, item in enumerate(source):
            key = check_key(stage.key(item)) if stage.key is not None else position
            index = wanted.pop(key, -1)
            if index >= 0:
                items[index] = item
                if not wanted:
                    break
    except Exception:  # noqa: BLE001 - the items cannot be produced again: ctx.item stays None
        pass
    finally:
        close = getattr(source, "close", None)
        if close is not None:  # a generator's ``finally`` runs now, not when collected
            with contextlib.suppress(Exception):
                close()
        logcontext.leave(token)
    return items


def _reproduce_input(run: _Run, step: Any, name: str, item: tuple[Any, int, Any] | None) -> Any:
    """A completed subflow's input, made again by its step's ``input`` (the journal keeps
    the child's records, not its input) with the values of the stages before it as
    ``ctx.results`` and, in a map, the ``(item, index, key)`` it was made for. None when
    ``input`` raises, as for an item that cannot be produced again."""
    from . import _logcontext as logcontext

    earlier: set[str] = set()
    for stage in run.flow.stages:
        steps = _stage_steps(stage)
        if stage.name == name or any(candidate.name == name for candidate in steps):
            break
        earlier.update(candidate.name for candidate in steps)
    ctx = run.context(name, 1)
    ctx.results = MappingProxyType({key: value for key, value in run.values.items() if key in earlier})
    if item is not None:
        ctx.item, ctx.index, ctx.key = item
    token = logcontext.enter(run.run_id, run.name, name, 1, ctx.key)
    try:
        return step.input(ctx)
    except Exception:  # noqa: BLE001 - it cannot be made again: the compensations see None
        return None
    finally:
        logcontext.leave(token)


def _stage_steps(stage: Any) -> tuple[Any, ...]:
    """The steps of a stage whose values later stages see (a map: the map itself)."""
    from ._definition import Group

    return stage.members if isinstance(stage, Group) else (stage,)
