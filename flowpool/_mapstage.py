"""Map stages in the settle loop: taking items lazily, settling each into the ledger.

A map stage runs through the same loop as steps and groups (``_Run``): items are
taken from their iterable only while fewer than the stage's limit are in flight,
each in-flight item is a ``StepRun`` that the loop dispatches, retries and times
out like any step, and a settled item leaves only its columns in the map's
``MapLedger`` (its ``StepRun``, timers and context are released). When every
item taken has settled, ``settle_map`` applies the map's policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _logcontext as logcontext
from . import _stages, _stopping
from ._definition import Map
from ._errors import FlowpoolError, MapItemsError, StepCancelledError
from ._maps import ItemFeeder, MapLedger, MapResult, MapValues
from ._policy import cannot_pass, tally_verdict
from ._results import GroupResult, GroupStatus, StepStatus
from ._state import MapRun, StepRun
from ._undo_plan import MapCompensation

if TYPE_CHECKING:
    from ._runner import _Run

__all__ = ["finalize_item", "run_map", "skip_map"]


def skip_map(run: _Run, stage: Map) -> None:
    name = stage.name
    run.maps[name] = MapResult(name, GroupStatus.SKIPPED)
    run.groups[name] = GroupResult(name, GroupStatus.SKIPPED, ())
    run.events.emit("group_finished", run.clock.now(), group=name, status=GroupStatus.SKIPPED)


def condition_holds(run: _Run, stage: Map) -> bool:
    """Evaluate a map's ``when`` as the stage starts. False: the map is SKIPPED. An
    exception fails the map (and the flow, unless the map is optional)."""
    when = stage.step.when
    assert when is not None
    name = stage.name
    token = logcontext.enter(run.run_id, run.name, name, 1, None, (*run.events.prefix, name))
    try:
        go = bool(when(run.context(name, 1)))
    except Exception as error:  # noqa: BLE001 - fails the map like an exception in its items' source
        error.add_note(f"raised by the 'when' condition of map {name!r}")
        run.maps[name] = MapResult(name, GroupStatus.FAILED, error=error)
        run.groups[name] = GroupResult(name, GroupStatus.FAILED, ())
        run.events.emit("group_finished", run.clock.now(), group=name, status=GroupStatus.FAILED, error=error)
        run.recorder.group_finished(name, GroupStatus.FAILED.value)
        if not stage.step.optional:
            run.fail(name, error)
        return False
    finally:
        logcontext.leave(token)
    if not go:
        skip_map(run, stage)
    return go


def run_map(run: _Run, stage: Map, position: int) -> Iterator[None]:
    """Run a map stage: items are taken lazily, at most ``cap`` in flight at once,
    and each settled item leaves only its columns in the ledger. Yields whenever the
    loop must wait."""
    step = stage.step
    if step.when is not None and not condition_holds(run, stage):
        return
    backend = run.backend_for(step)
    limit = stage.max_concurrency or run.backends.worker_count(step.executor)
    st = MapRun(stage, position, MapLedger(stage.name, keyed=stage.key is not None), limit, backend)
    run.stage = st
    _stages.start_stage_span(run, stage.name)
    if run.resumed is not None and stage.subflow is None:  # a subflow's item restores inside it
        from ._resume import completed_items

        st.restored = completed_items(run.resumed, stage.name)
    try:
        items = stage.items
        if callable(items):
            items = items(run.context(stage.name, 1))
        st.feeder = ItemFeeder(items, stage.key, st.ledger)
        st.size = st.feeder.size
    except Exception as problem:  # noqa: BLE001 - fails the stage as a MapItemsError
        st.problem = problem
    while True:
        if st.feeder is not None and st.cancel_reason is None and st.active < st.cap:
            feed(run, st)
        if not st.unsettled:
            break
        yield
    if st.feeder is not None:
        st.feeder.close()
        if st.problem is None:
            st.problem = st.feeder.problem
        st.feeder = None
    run.stage = None
    settle_map(run, st)
    _stages.end_stage_span(run, stage.name, run.groups[stage.name].status)
    if run.error is not None:
        run.recorder.run_failed(run.scope.failure_outcome(), run.failed_stage, run.error)
    run.recorder.flush()


def feed(run: _Run, st: MapRun) -> None:
    """Take items while there is a free slot, and hand each to the executor at once."""
    feeder = st.feeder
    assert feeder is not None
    ledger = st.ledger
    step = st.stage.step
    kept = st.items
    while st.active < st.cap and st.cancel_reason is None:
        taken = feeder.take()
        if taken is None:
            st.feeder = None
            if feeder.problem is not None:
                st.problem = feeder.problem
                # Items already handed over settle first (told to stop, no retries).
                _stopping.cancel_stage(run, st, f"the items of map {st.name!r} could not be produced", withdraw=False)
            return
        index, item = taken
        if st.restored is not None and restore_item(run, st, index, item):
            continue
        sr = StepRun(step, st.position, None, st.backend, run)
        sr.item = item
        sr.item_index = index
        sr.key = ledger.key_of(index)
        sr.call = st.call
        if kept is not None:
            kept.append(item)
        st.members[sr] = None
        st.unsettled += 1
        st.active += 1
        run.dispatch(sr)


def restore_item(run: _Run, st: MapRun, index: int, item: Any) -> bool:
    """A resumed run: settle an item the journal recorded as completed, without running it."""
    restored = st.restored
    assert restored is not None
    recorded = restored.get(st.ledger.key_of(index))
    if recorded is None:
        return False
    value, attempts, started, finished = recorded
    offset = run.wall_offset
    st.ledger.settle(
        index,
        StepStatus.COMPLETED,
        value,
        None,
        attempts,
        None if started is None else started - offset,
        None if finished is None else finished - offset,
    )
    if st.items is not None:
        st.items.append(item)
    run.recorder.item_finished(
        st.name, index, st.ledger.key_of(index), StepStatus.COMPLETED, value, None, attempts, started, finished
    )
    return True


def finalize_item(
    run: _Run, st: MapRun, sr: StepRun, status: StepStatus, value: Any, error: BaseException | None
) -> None:
    """Record a settled item in the ledger and release everything it held."""
    st.settle(sr)
    del st.members[sr]
    if sr.timer is not None:
        run.timers.drop(sr.timer)
        sr.timer = None
    attempt = sr.attempt
    finished = attempt.finished_at if attempt is not None else None
    index = sr.item_index
    assert index is not None
    ran = bool(sr.attempts)
    if finished is None and ran:
        finished = run.clock.now()
    started = sr.first_started if ran else None
    ended = finished if ran else None
    st.ledger.settle(index, status, value, error, sr.attempts, started, ended)
    child = sr.child
    if child is not None:  # a subflow's item: its child's result, and its frame if it may be undone
        st.ledger.subflows[index] = child.result
        if status is StepStatus.COMPLETED and child.compensator.undoable():
            st.units[index] = child
    recorder = run.recorder
    if recorder.journal is not None:
        # Monotonic times become epoch seconds in the journal, as for steps' records.
        offset = run.wall_offset
        recorder.item_finished(
            st.name,
            index,
            st.ledger.key_of(index),
            status,
            value,
            error,
            sr.attempts,
            None if started is None else started + offset,
            None if ended is None else ended + offset,
        )
    if run.events.enabled:
        run.events.emit(
            "step_finished",
            finished if finished is not None else run.clock.now(),
            step=st.name,
            attempt=sr.attempts or None,
            status=status,
            error=error,
            started_at=attempt.started_at if attempt is not None and ran else None,
            item=sr.key,
            index=index,
        )
    sr.attempt = None
    sr.driver = None
    if status is StepStatus.COMPLETED:
        return
    if st.items is not None:
        st.items[index] = None  # only completed items are compensated
    st.failed += 1
    stage = st.stage
    if st.cancel_reason is None and cannot_pass(
        st.failed, fail_fast=stage.fail_fast, tolerated_failures=stage.tolerated_failures, size=st.size
    ):
        st.stopped_early = True
        if st.feeder is not None:
            st.feeder.close()
            st.feeder = None
        _stopping.cancel_stage(
            run, st, f"map {st.name!r} stopped early: {st.failed} item(s) did not complete ({stage.policy})"
        )


def settle_map(run: _Run, st: MapRun) -> None:
    stage = st.stage
    name = st.name
    ledger = st.ledger
    map_error: BaseException | None = None
    if st.problem is not None:
        verdict = GroupStatus.FAILED
        problem = st.problem
        map_error = MapItemsError(run.name, name, len(ledger), f"{type(problem).__name__}: {problem}")
        map_error.__cause__ = problem
    else:
        verdict = tally_verdict(
            ledger.completed,
            len(ledger),
            fail_fast=stage.fail_fast,
            min_successes=stage.min_successes,
            tolerated_failures=stage.tolerated_failures,
        )
        if verdict is GroupStatus.FAILED:
            map_error = policy_error(run, st)
    counts = ledger.counts()
    run.maps[name] = MapResult(name, verdict, ledger, stopped_early=st.stopped_early, error=map_error)
    run.groups[name] = GroupResult(name, verdict, (), counts)
    run.values[name] = MapValues(ledger)
    run.values_view = MappingProxyType(dict(run.values))
    run.events.emit("group_finished", run.clock.now(), group=name, status=verdict)
    run.recorder.group_finished(name, verdict.value)
    if (stage.step.compensate is not None and ledger.completed) or st.units:
        items = st.items if st.items is not None else []
        undo = MapCompensation(name, st.position, stage.step, ledger, items, st.backend, stage.compensate_concurrency)
        undo.context, undo.units = run.context, st.units
        run.compensator.maps.append(undo)
    stop_error = run.scope.stop_error()
    # An optional map records its failure but never fails the flow (SPEC §16).
    error = stop_error or (map_error if verdict is GroupStatus.FAILED and not stage.step.optional else None)
    if error is not None:
        run.fail(name, error)


def policy_error(run: _Run, st: MapRun) -> BaseException:
    """The ``ExceptionGroup`` of a map that its policy failed: its items' errors, in item order."""
    ledger = st.ledger
    errors: list[Exception] = []
    for index in sorted(ledger.errors):
        error = ledger.errors[index]
        errors.append(error if isinstance(error, Exception) else StepCancelledError(st.name, repr(error)))
    why = f"{ledger.completed} of {len(ledger)} items completed; policy: {st.stage.policy}"
    if not errors:
        errors.append(FlowpoolError(f"map {st.name!r}: {why}"))
    return ExceptionGroup(f"map {st.name!r} failed ({why})", errors)
