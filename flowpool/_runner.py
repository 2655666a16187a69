"""The settle loop: one loop in the caller's thread drives a whole run.

How an attempt flows::

    _Run (caller's thread)                              backend (threads, lanes, Dask)
    ──────────────────────                              ──────────────────────────────
    execute ─▶ run_stage ─▶ start_waiting ─▶ dispatch:
        StepRun.new_attempt(ctx) ───────── submit ────▶ worker runs fn(ctx)
         ▲                                                  │ (STARTED, attempt)  only if a
         │                                                  │                     timeout or a
    inbox ◀─────────────────────────────────────────────────┘ (DONE, attempt)     listener needs it
         │
    wait_once (Timers.wait) ─▶ on_started: arm the attempt's timeout
                            └▶ on_done ─▶ on_outcome ─▶ completed ─▶ finalize ─▶ step_finished, fail fast?
                                                     └▶ failed ─▶ StepRun.decide (tenacity)
                                                           ├▶ retry: a WAKE timer ─▶ on_timer ─▶ dispatch
                                                           └▶ stop: finalize
    on_timer: TIMEOUT (an attempt), WAKE (a backoff), DEADLINE (the run's timeout), GRACE (the stop grace)
    run_stage ends ─▶ settle_verdict (_policy.stage_verdict) ─▶ next stage, or compensate_all ─▶ finish

A map stage (``run_map``) goes through the same dispatch, wait and outcome
path, item by item: ``feed`` takes an item from its iterable only when a slot
is free and dispatches it at once as a ``StepRun`` carrying the item;
``finalize_item`` writes the settled item into the map's columnar ledger and
drops its ``StepRun``, context and timeout timer, so the loop holds only the
items in flight; ``settle_map`` gives the verdict (``_policy.tally_verdict``).

Completions arrive through the inbox (workers or done-callbacks put them
there), so the loop never polls and never scans pending work: each step costs
the same whether its group has ten members or a hundred thousand. The loop
alone decides what an outcome means; a late outcome of an attempt the loop has
given up on (``attempt.settled``) is dropped.

The concerns around the loop live in their own modules: ``_timers`` (the heap
and the one wait), ``_stop`` (why the run stops, the status it ends with),
``_interrupts`` (Ctrl-C), ``_compensator``, ``_recorder`` (journal writes),
``_resume`` (imported only for journaled runs), ``_policy`` (pure verdicts),
``_state`` (the step and stage records) and ``_executors`` (the backends).
"""

from __future__ import annotations

import queue
import uuid
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _logcontext as logcontext
from ._abandoned import AbandonedAttempts
from ._attempt import DONE, INTERRUPT, STARTED, Attempt, Message
from ._clock import SYSTEM_CLOCK, Clock, is_real_time
from ._compensator import Compensator, MapCompensation
from ._context import Context
from ._definition import Always, Flow, Group, Map, Step, _check_seconds
from ._errors import (
    FlowDefinitionError,
    FlowInterrupted,
    FlowpoolError,
    MapItemsError,
    StepCancelledError,
    StepTimeoutError,
)
from ._events import EventSink
from ._executors import Backends, describe_executor
from ._interrupts import route_interrupts
from ._maps import ItemFeeder, MapLedger, MapResult, MapValues
from ._policy import (
    cannot_pass,
    may_retry,
    retry_matches,
    stage_verdict,
    status_of,
    stops_group_early,
    tally_verdict,
)
from ._recorder import RunRecorder
from ._results import (
    FlowResult,
    FlowStatus,
    GroupResult,
    GroupStatus,
    StepResult,
    StepStatus,
    count_statuses,
)
from ._state import MapRun, StageRun, StepRun, StepState, tell_cancel, with_late_value
from ._stop import STOP_GRACE, StopScope
from ._timers import TimerKind, Timers

if TYPE_CHECKING:
    from ._events import Event
    from ._journal import RecordedRun

__all__ = ["STOP_GRACE", "run_flow"]


#: Seconds within which a map item's journal record is committed (SPEC: 100 ms).
FLUSH_WITHIN = 0.05


#: The name scripts/soak.py counts live step records by.
_StepRun = StepRun

# Module-level names, compared on every attempt.
_PENDING, _RUNNING, _BACKOFF = StepState.PENDING, StepState.RUNNING, StepState.BACKOFF
_TIMEOUT, _WAKE, _DEADLINE, _GRACE = TimerKind


def run_flow(
    flow: Flow,
    input: Any,
    *,
    executor: Any,
    max_workers: int | None,
    timeout: float | None,
    on_event: Callable[[Event], Any] | None,
    clock: Clock | None,
    journal: Any = None,
    resume: RecordedRun | None = None,
) -> FlowResult:
    """Check the run's arguments, then run ``flow`` to its end (or on from ``resume``)."""
    stages = flow.stages
    if not stages:
        raise FlowDefinitionError("the flow has no stages; add one with .step() or .parallel()", flow=flow.name)
    try:
        describe_executor(executor)
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise FlowDefinitionError(f"must be an int >= 1 or None, not {max_workers!r}", argument="max_workers")
        timeout = _check_seconds(timeout, "timeout", None, None)
        if on_event is not None and not callable(on_event):
            raise FlowDefinitionError(f"must be callable or None, not {type(on_event).__name__}", argument="on_event")
    except FlowDefinitionError as error:
        raise error.with_flow(flow.name) from None
    owned, book = False, None
    if journal is not None:
        from ._resume import open_journal  # the journal (sqlite3, pickle) only when asked for

        owned, book = open_journal(journal, flow.name)
    try:
        run = _Run(flow, input, executor, max_workers, timeout, on_event, clock or SYSTEM_CLOCK)
        run.recorder.journal = book.recorder if book is not None else None
        if resume is not None:
            from ._resume import resume_from

            resume_from(run, resume)
        return run.execute()
    finally:
        if owned and book is not None:
            book.close()


class _Run:
    """Everything one run owns. Nothing here is shared with other runs."""

    def __init__(
        self,
        flow: Flow,
        input: Any,
        executor: Any,
        max_workers: int | None,
        timeout: float | None,
        on_event: Callable[[Event], Any] | None,
        clock: Clock,
    ) -> None:
        self.flow = flow
        self.name = flow.name
        self.input = input
        self.timeout = timeout
        self.clock = clock
        self.run_id = uuid.uuid4().hex
        #: Epoch seconds minus the run's clock: turns its monotonic times into wall-clock ones.
        self.wall_offset = clock.wall() - clock.now()
        self.events = EventSink(on_event, self.name, self.run_id, self.wall_offset)
        self.inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.timers = Timers(self.clock)
        self.scope = StopScope(self.name, timeout)
        self.backends = Backends(executor, max_workers)
        self.values: dict[str, Any] = {}
        self.values_view: Mapping[str, Any] = MappingProxyType({})
        self.records: dict[str, StepResult] = {}
        self.groups: dict[str, GroupResult] = {}
        self.maps: dict[str, MapResult] = {}
        self.compensator = Compensator(self.clock, self.inbox, self.timers, self.scope)
        self.compensator.concurrency = {
            stage.name: stage.compensate_concurrency for stage in flow.stages if isinstance(stage, Group)
        }
        self.stage: StageRun | None = None
        self.failed_stage: str | None = None
        self.error: BaseException | None = None
        self.recorder = RunRecorder(None, self.run_id)
        self.resumed: RecordedRun | None = None
        #: When journal writes waiting for a flush must be committed (map items).
        self.flush_due = 0.0
        #: Soft-stopped attempts (threads, Dask, a user's executor) that were still
        #: running when the loop gave up on them, and those of them that ended since.
        self.abandoned = AbandonedAttempts()
        #: The flow's status so far, once its always-stages run (their ``ctx.outcome``).
        self.outcome: FlowStatus | None = None
        #: Ctrl-Cs counted when the always-stages began: an older stop grace no longer applies.
        self.always_from: int | None = None
        self.still_running: tuple[str, ...] = ()

    # ── the run ─────────────────────────────────────────────────────────────────

    def execute(self) -> FlowResult:
        self.started_at = self.clock.now()
        self.backends.open_run_backend()
        restore = route_interrupts(self.scope, self.inbox, self.timers, self.clock)
        try:
            self.recorder.begin(self.flow, self.input, resumed=self.resumed is not None)
            self.events.emit("flow_started", self.started_at)
            if self.timeout is not None:
                self.timers.push(self.started_at + self.timeout, _DEADLINE, None)
            if self.resumed is not None and self.resumed.phase == "compensating":
                from ._resume import restore_compensation_phase

                restore_compensation_phase(self, self.resumed)
            else:
                index = 0
                for stage in self.flow.stages:
                    if isinstance(stage, Always):
                        index += 1  # runs last (run_always)
                        continue
                    if self.scope.interrupts and self.scope.reason is None:
                        self.stop("the run was interrupted")  # Ctrl-C arrived between stages
                    stopped = self.error is not None or self.scope.reason is not None
                    if isinstance(stage, Map):
                        if stopped:
                            self.skip_map(stage)
                        else:
                            self.run_map(stage, index)
                        index += 1  # a map takes one place in the compensation order
                        continue
                    members = stage.members if isinstance(stage, Group) else (stage,)
                    if stopped:
                        self.skip_stage(stage, members)
                    else:
                        self.run_stage(stage, members, index)  # the one place a step or group runs
                    index += len(members)
            self.await_abandoned()
            self.compensate_all()
            self.run_always()
        finally:
            restore()
            self.backends.close()
        return self.finish()

    def finish(self) -> FlowResult:
        finished_at = self.clock.now()
        resumed_outcome = self.resumed.outcome if self.resumed is not None else None
        status = self.scope.final_status(self.error, resumed_outcome)
        steps = {step.name: self.records[step.name] for step in self.flow.steps()}
        error = self.scope.final_error(status, self.error)
        result = FlowResult(
            name=self.name,
            run_id=self.run_id,
            status=status,
            steps=steps,
            groups=self.groups,
            maps=self.maps,
            error=error,
            failed_stage=self.failed_stage,
            compensated=tuple(self.compensator.compensated),
            not_compensated=tuple(self.compensator.not_compensated),
            started_at=self.started_at,
            finished_at=finished_at,
            wall_offset=self.wall_offset,
            still_running=self.still_running,
        )
        self.recorder.end(result)
        self.events.emit("flow_finished", finished_at, status=status, error=error)
        if status is FlowStatus.CANCELLED and self.scope.interrupts:
            assert isinstance(error, FlowInterrupted)
            error.result = result
            raise error
        return result

    def context(self, step: str, attempt: int) -> Context:
        """The context of one attempt (or compensation attempt) of ``step``."""
        return Context(
            input=self.input,
            flow=self.name,
            run_id=self.run_id,
            step=step,
            attempt=attempt,
            results=self.values_view,
            outcome=self.outcome,
        )

    def fail(self, stage: str | None, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self.failed_stage = stage

    # ── stages ──────────────────────────────────────────────────────────────────

    def skip_stage(self, stage: Step | Group, members: tuple[Step, ...]) -> None:
        group = stage.name if isinstance(stage, Group) else None
        now = self.clock.now()
        for step in members:
            self.records[step.name] = StepResult(step.name, StepStatus.SKIPPED, group=group)
            self.events.emit("step_finished", now, step=step.name, group=group, status=StepStatus.SKIPPED)
        if isinstance(stage, Group):
            names = tuple(m.name for m in members)
            counts = {StepStatus.SKIPPED: len(members)}
            self.groups[stage.name] = GroupResult(stage.name, GroupStatus.SKIPPED, names, counts)
            self.events.emit("group_finished", now, group=stage.name, status=GroupStatus.SKIPPED)

    def run_stage(self, stage: Step | Group, members: tuple[Step, ...], index: int) -> None:
        group = stage if isinstance(stage, Group) else None
        group_name = group.name if group is not None else None
        runs = [
            StepRun(step, index + offset, group_name, self.backends.for_step(step.executor))
            for offset, step in enumerate(members)
        ]
        st = StageRun(stage.name, group, runs)
        self.stage = st
        if self.resumed is not None:
            from ._resume import preload_completed

            preload_completed(self, st)
        for sr in runs:
            if sr.step.when is not None and sr.state == _PENDING:
                self.check_condition(st, sr)
        while st.unsettled:
            if st.waiting:
                self.start_waiting(st)
                if not st.unsettled:
                    break
            self.wait_once()
        self.stage = None
        self.settle_verdict(st)
        if self.error is not None:  # journaled in the same transaction as the stage's verdict
            self.recorder.run_failed(self.scope.failure_outcome(), self.failed_stage, self.error)
        self.recorder.flush()  # before any later stage starts

    # ── maps ────────────────────────────────────────────────────────────────────

    def skip_map(self, stage: Map) -> None:
        name = stage.name
        self.maps[name] = MapResult(name, GroupStatus.SKIPPED)
        self.groups[name] = GroupResult(name, GroupStatus.SKIPPED, ())
        self.events.emit("group_finished", self.clock.now(), group=name, status=GroupStatus.SKIPPED)

    def run_map(self, stage: Map, position: int) -> None:
        """Run a map stage: items are taken lazily, at most ``cap`` in flight at once,
        and each settled item leaves only its columns in the ledger."""
        step = stage.step
        backend = self.backends.for_step(step.executor)
        limit = stage.max_concurrency or self.backends.worker_count(step.executor)
        st = MapRun(stage, position, MapLedger(stage.name, keyed=stage.key is not None), limit, backend)
        self.stage = st
        if self.resumed is not None:
            from ._resume import completed_items

            st.restored = completed_items(self.resumed, stage.name)
        try:
            items = stage.items
            if callable(items):
                items = items(self.context(stage.name, 1))
            st.feeder = ItemFeeder(items, stage.key, st.ledger)
            st.size = st.feeder.size
        except Exception as problem:  # noqa: BLE001 - fails the stage as a MapItemsError
            st.problem = problem
        while True:
            if st.feeder is not None and st.cancel_reason is None and st.active < st.cap:
                self.feed(st)
            if not st.unsettled:
                break
            self.wait_once()
        if st.feeder is not None:
            st.feeder.close()
            if st.problem is None:
                st.problem = st.feeder.problem
            st.feeder = None
        self.stage = None
        self.settle_map(st)
        if self.error is not None:
            self.recorder.run_failed(self.scope.failure_outcome(), self.failed_stage, self.error)
        self.recorder.flush()

    def feed(self, st: MapRun) -> None:
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
                    self.cancel_stage(st, f"the items of map {st.name!r} could not be produced", withdraw=False)
                return
            index, item = taken
            if st.restored is not None and self.restore_item(st, index, item):
                continue
            sr = StepRun(step, st.position, None, st.backend)
            sr.item = item
            sr.item_index = index
            sr.key = ledger.key_of(index)
            sr.call = st.call
            if kept is not None:
                kept.append(item)
            st.members[sr] = None
            st.unsettled += 1
            st.active += 1
            self.dispatch(sr)

    def restore_item(self, st: MapRun, index: int, item: Any) -> bool:
        """A resumed run: settle an item the journal recorded as completed, without running it."""
        restored = st.restored
        assert restored is not None
        recorded = restored.get(st.ledger.key_of(index))
        if recorded is None:
            return False
        value, attempts, started, finished = recorded
        offset = self.wall_offset
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
        self.recorder.item_finished(
            st.name, index, st.ledger.key_of(index), StepStatus.COMPLETED, value, None, attempts, started, finished
        )
        return True

    def finalize_item(
        self, st: MapRun, sr: StepRun, status: StepStatus, value: Any, error: BaseException | None
    ) -> None:
        """Record a settled item in the ledger and release everything it held."""
        st.settle(sr)
        del st.members[sr]
        if sr.timer is not None:
            self.timers.drop(sr.timer)
            sr.timer = None
        attempt = sr.attempt
        finished = attempt.finished_at if attempt is not None else None
        index = sr.item_index
        assert index is not None
        ran = bool(sr.attempts)
        if finished is None and ran:
            finished = self.clock.now()
        started = sr.first_started if ran else None
        ended = finished if ran else None
        st.ledger.settle(index, status, value, error, sr.attempts, started, ended)
        recorder = self.recorder
        if recorder.journal is not None:
            if not recorder.dirty:
                self.flush_due = self.clock.now() + FLUSH_WITHIN
            # Monotonic times become epoch seconds in the journal, as for steps' records.
            offset = self.wall_offset
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
        if self.events.enabled:
            self.events.emit(
                "step_finished",
                finished if finished is not None else self.clock.now(),
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
            self.cancel_stage(
                st, f"map {st.name!r} stopped early: {st.failed} item(s) did not complete ({stage.policy})"
            )

    def settle_map(self, st: MapRun) -> None:
        stage = st.stage
        name = st.name
        ledger = st.ledger
        map_error: BaseException | None = None
        if st.problem is not None:
            verdict = GroupStatus.FAILED
            problem = st.problem
            map_error = MapItemsError(self.name, name, len(ledger), f"{type(problem).__name__}: {problem}")
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
                map_error = self.map_error(st)
        counts = ledger.counts()
        self.maps[name] = MapResult(name, verdict, ledger, stopped_early=st.stopped_early, error=map_error)
        self.groups[name] = GroupResult(name, verdict, (), counts)
        self.values[name] = MapValues(ledger)
        self.values_view = MappingProxyType(dict(self.values))
        self.events.emit("group_finished", self.clock.now(), group=name, status=verdict)
        self.recorder.group_finished(name, verdict.value)
        if stage.step.compensate is not None and ledger.completed:
            items = st.items if st.items is not None else []
            self.compensator.maps.append(
                MapCompensation(name, st.position, stage.step, ledger, items, st.backend, stage.compensate_concurrency)
            )
        stop_error = self.scope.stop_error()
        error = stop_error or (map_error if verdict is GroupStatus.FAILED else None)
        if error is not None:
            self.fail(name, error)

    def map_error(self, st: MapRun) -> BaseException:
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

    def check_condition(self, st: StageRun, sr: StepRun) -> None:
        """Evaluate a step's ``when`` as its stage starts: false skips it; raising fails it."""
        step = sr.step
        when = step.when
        assert when is not None
        ctx = self.context(step.name, 1)
        token = logcontext.enter(ctx.run_id, ctx.flow, step.name, 1)
        try:
            go = bool(when(ctx))
        except Exception as error:  # noqa: BLE001 - fails this step like an exception in the step
            error.add_note(f"raised by the 'when' condition of step {step.name!r}")
            self.finalize(st, sr, StepStatus.FAILED, None, error)
            return
        finally:
            logcontext.leave(token)
        if not go:
            self.finalize(st, sr, StepStatus.SKIPPED, None, None)

    def settle_verdict(self, st: StageRun) -> None:
        records = [sr.record for sr in st.members if sr.record is not None]
        if any(record.status is StepStatus.COMPLETED for record in records):
            for record in records:
                if record.status is StepStatus.COMPLETED:
                    self.values[record.name] = record.value
            # A fresh snapshot per stage: an abandoned attempt that still holds an older
            # view never sees the values of its siblings or of later stages.
            self.values_view = MappingProxyType(dict(self.values))
        only = next(iter(st.members)).step if st.group is None else None  # a stage of one step
        if isinstance(only, Always):
            self.note_always_failure(records[0])  # never the flow's failure
            return
        optional = only is not None and only.optional
        verdict, error = stage_verdict(st.name, st.group, records, self.scope.stop_error(), optional=optional)
        if st.group is not None and verdict is not None:
            name = st.group.name
            counts = count_statuses(record.status for record in records)
            self.groups[name] = GroupResult(name, verdict, tuple(m.name for m in st.group.members), counts)
            self.events.emit("group_finished", self.clock.now(), group=name, status=verdict)
            self.recorder.group_finished(name, verdict.value)
        if error is not None:
            self.fail(st.name, error)

    def start_waiting(self, st: StageRun) -> None:
        cap = st.cap
        waiting = st.waiting
        while waiting and (cap is None or st.active < cap):
            sr = waiting.popleft()
            if sr.state != _PENDING:
                continue
            if st.cancel_reason is not None:
                self.finalize(st, sr, StepStatus.CANCELLED, None, StepCancelledError(sr.step.name, st.cancel_reason))
                continue
            st.active += 1
            self.dispatch(sr)

    def dispatch(self, sr: StepRun) -> None:
        step = sr.step
        number = sr.attempts + 1
        sr.attempts = number
        sr.state = _RUNNING
        backend = sr.backend
        try:
            if sr.driver is not None:
                sr.driver.next_attempt()  # runs the user's tenacity ``before`` hook
            backend.check_capacity(step.name)
        except Exception as error:  # noqa: BLE001 - reported as this step's failure
            sr.attempts -= 1
            st = self.stage
            assert st is not None
            self.finalize(st, sr, StepStatus.FAILED, None, error)
            return
        st = self.stage
        # Queued behind another attempt on a worker, an attempt's start is known only
        # late; keep that to stages where nothing cancels or kills attempts early.
        may_queue = st is None or st.may_queue
        notify_start = self.events.enabled or step.timeout is not None
        backend.submit(sr.new_attempt(self.context(step.name, number), self.inbox, self.clock, notify_start, may_queue))

    # ── the loop ────────────────────────────────────────────────────────────────

    def wait_once(self) -> None:
        """Handle due timers, or else the next message (waiting until the next timer)."""
        timers = self.timers
        now = self.clock.now()
        next_at = timers.next_at()
        if next_at is not None and next_at <= now:
            for kind, target in timers.due(now):
                self.on_timer(kind, target)
            return
        if self.recorder.dirty and (self.inbox.empty() or now >= self.flush_due):
            # What arrived together is committed together, before we wait; a busy map's
            # items are committed at least every FLUSH_WITHIN seconds.
            self.recorder.flush()
        received = timers.wait(self.inbox, next_at, now)
        if received is None:
            return
        message, item = received
        if message == DONE:
            self.on_done(item)
        elif message == STARTED:
            if not item.settled:
                self.on_started(item)
        elif message == INTERRUPT:
            self.on_interrupt()

    def on_started(self, attempt: Attempt) -> None:
        sr: StepRun = attempt.owner
        started = attempt.started_at
        assert started is not None
        if not attempt.quiet_start:
            self.announce_start(sr, attempt)
        timeout = sr.step.timeout
        if timeout is not None:
            sr.timer = self.timers.push(started + timeout, _TIMEOUT, attempt)

    def announce_start(self, sr: StepRun, attempt: Attempt) -> None:
        started = attempt.started_at
        assert started is not None
        if sr.first_started is None:
            sr.first_started = started
        if sr.item_index is not None:
            if self.events.enabled:
                self.events.emit(
                    "step_started", started, step=sr.step.name, attempt=attempt.number, item=sr.key, index=sr.item_index
                )
            return
        self.events.emit("step_started", started, step=sr.step.name, group=sr.group, attempt=attempt.number)
        self.recorder.attempt_started(sr.step.name, attempt.number)

    def on_done(self, attempt: Attempt) -> None:
        if attempt.settled:
            # A late outcome of an attempt the loop gave up on: it changes no status.
            self.abandoned.ended_late(attempt)
            return
        sr: StepRun = attempt.owner
        if attempt.never_started and attempt.quiet_start:  # cancelled while queued on a worker
            st = self.stage
            assert st is not None
            self.withdrawn(st, sr, attempt, attempt.cancel_reason or "cancelled")
            return
        attempt.settled = True
        if attempt.quiet_start and attempt.started_at is not None:
            self.announce_start(sr, attempt)  # it did run: announce it now
        if sr.first_started is None:
            sr.first_started = attempt.started_at
        if attempt.ok:
            self.on_outcome(sr, attempt, StepStatus.COMPLETED, attempt.value, None)
        else:
            self.on_outcome(sr, attempt, status_of(attempt.error), None, attempt.error)

    def on_timer(self, kind: TimerKind, target: Any) -> None:
        if kind == _TIMEOUT:
            attempt: Attempt = target
            if attempt.settled or attempt.finished_at is not None:
                return  # settled, or its outcome is already waiting in the inbox
            sr: StepRun = attempt.owner
            timeout = sr.step.timeout
            assert timeout is not None
            attempt.settled = True
            attempt.finished_at = self.clock.now()
            sr.timer = None  # popped: nothing to drop
            tell_cancel(sr.backend, attempt, f"its timeout of {timeout:g} s passed")
            hung = sr.backend.where_it_hung(attempt)  # before stop(), which kills a worker process
            sr.backend.stop(attempt)
            self.abandoned.left_running(sr, attempt)
            error = StepTimeoutError(sr.step.name, timeout, attempt.number)
            error.add_note(hung)
            self.on_outcome(sr, attempt, StepStatus.TIMED_OUT, None, error)
        elif kind == _WAKE:
            sr = target
            if sr.state == _BACKOFF:
                self.dispatch(sr)
        elif kind == _DEADLINE:
            if self.scope.reason is None and not self.scope.compensating and self.always_from is None:
                self.scope.timed_out = True
                self.stop(f"the run's timeout of {self.timeout:g} s passed")
        elif kind == _GRACE:
            if self.always_from is not None and self.scope.interrupts <= self.always_from:
                return  # the grace of a stop before the always-stages: they run on
            self.abandon_running()

    def on_outcome(
        self, sr: StepRun, attempt: Attempt, status: StepStatus, value: Any, error: BaseException | None
    ) -> None:
        st = self.stage
        assert st is not None
        step = sr.step
        sr.last_status = status
        sr.last_error = error
        if sr.timer is not None:  # the attempt ended: its timeout no longer holds it
            self.timers.drop(sr.timer)
            sr.timer = None
        if sr.item_index is None:
            self.recorder.attempt_finished(attempt, status)
        custom = step.retry is not None
        if status is StepStatus.COMPLETED and not custom:
            self.finalize(st, sr, status, value, None)
            return
        if not may_retry(
            status,
            retries=step.retries,
            custom=custom,
            attempt_told_to_stop=attempt.cancel_reason is not None,
            stage_stopping=st.cancel_reason is not None or self.scope.reason is not None,
        ):
            self.finalize(st, sr, status, value, error)
            return
        if step.retry_on is not None and status is not StepStatus.COMPLETED:
            try:
                matched = retry_matches(step.retry_on, error)
            except Exception as problem:  # noqa: BLE001 - a broken predicate fails the step, unretried
                if error is not None:
                    error.add_note(f"not retried: its retry_on predicate raised {type(problem).__name__}: {problem}")
                self.finalize(st, sr, status, value, error)
                return
            if not matched:
                self.finalize(st, sr, status, value, error)
                return
        decision = sr.decide(status, value, error, is_real_time(self.clock))
        if decision.retry:
            now = self.clock.now()
            if self.events.enabled:
                self.events.emit(
                    "step_retrying",
                    attempt.finished_at if attempt.finished_at is not None else now,
                    step=step.name,
                    group=sr.group,
                    attempt=attempt.number,
                    status=status,
                    error=error,
                    started_at=attempt.started_at,
                    delay=decision.delay,
                    **({} if sr.item_index is None else {"item": sr.key, "index": sr.item_index}),
                )
            sr.state = _BACKOFF
            # From the attempt's end, so time spent deciding (tenacity's first import) is
            # not added to the backoff.
            finished = attempt.finished_at if attempt.finished_at is not None else now
            self.timers.push(finished + decision.delay, _WAKE, sr)
        elif decision.ok:
            self.finalize(st, sr, StepStatus.COMPLETED, decision.value, None)
        else:
            final_error = decision.error
            final_status = status if final_error is error else status_of(final_error)
            self.finalize(st, sr, final_status, None, final_error)

    def finalize(self, st: StageRun, sr: StepRun, status: StepStatus, value: Any, error: BaseException | None) -> None:
        if sr.item_index is not None:
            assert isinstance(st, MapRun)
            self.finalize_item(st, sr, status, value, error)
            return
        st.settle(sr)
        attempt = sr.attempt
        finished = attempt.finished_at if attempt is not None else None
        if finished is None and sr.attempts:
            finished = self.clock.now()
        step = sr.step
        sr.record = record = sr.result(status, value, error, finished)
        self.records[step.name] = record
        self.recorder.step_finished(record)
        if status is StepStatus.COMPLETED and step.compensate is not None:
            self.compensator.pending.append(sr)
        if self.events.enabled:
            self.events.emit(
                "step_finished",
                finished if finished is not None else self.clock.now(),
                step=step.name,
                group=sr.group,
                attempt=sr.attempts or None,
                status=status,
                error=error,
                started_at=attempt.started_at if attempt is not None and sr.attempts else None,
            )
        if st.cancel_reason is None and stops_group_early(status, fail_fast=st.fail_fast, optional=step.optional):
            self.cancel_stage(st, f"group {st.name!r} failed fast: step {step.name!r} ended {status.value}")

    # ── cancellation, stopping, interrupts ──────────────────────────────────────

    def cancel_stage(self, st: StageRun, reason: str, withdraw: bool = True) -> None:
        """No new work in this stage; running attempts see ``ctx.cancelled``. Attempts a
        backend still holds unstarted are taken back, unless ``withdraw`` is False (a
        map's items that were handed over count as started)."""
        st.cancel_reason = reason
        for sr in tuple(st.members):
            if sr.state == _PENDING:
                self.finalize(st, sr, StepStatus.CANCELLED, None, StepCancelledError(sr.step.name, reason))
            elif sr.state == _BACKOFF:
                self.finalize(st, sr, sr.last_status, None, sr.last_error)
            elif sr.state == _RUNNING:
                attempt = sr.attempt
                assert attempt is not None
                tell_cancel(sr.backend, attempt, reason)
                if withdraw and sr.backend.withdraw(attempt):
                    self.withdrawn(st, sr, attempt, reason)

    def withdrawn(self, st: StageRun, sr: StepRun, attempt: Attempt, reason: str) -> None:
        """``attempt`` never started and never will: it does not count as an attempt."""
        attempt.settled = True
        sr.attempts -= 1
        if sr.attempts:
            self.finalize(st, sr, sr.last_status, None, sr.last_error)
        else:
            self.finalize(st, sr, StepStatus.CANCELLED, None, StepCancelledError(sr.step.name, reason))

    def stop(self, reason: str) -> None:
        """Stop the run: nothing new starts, running work is killed or told to stop."""
        self.scope.reason = reason
        st = self.stage
        if st is None:
            return
        if st.cancel_reason is None:
            self.cancel_stage(st, reason)
        else:
            for sr in st.members:
                if sr.state == _RUNNING and sr.attempt is not None:
                    tell_cancel(sr.backend, sr.attempt, reason)
        soft = False
        for sr in tuple(st.members):
            if sr.state != _RUNNING:
                continue
            if sr.backend.kills:
                self.abandon(st, sr, reason)
            else:
                soft = True
        if soft and not self.scope.grace_armed:
            self.scope.grace_armed = True
            self.scope.grace_started = now = self.clock.now()
            self.timers.push(now + STOP_GRACE, _GRACE, None)

    def abandon(self, st: StageRun, sr: StepRun, reason: str) -> None:
        attempt = sr.attempt
        assert attempt is not None
        tell_cancel(sr.backend, attempt, reason)
        if sr.backend.withdraw(attempt):
            self.withdrawn(st, sr, attempt, reason)
            return
        attempt.settled = True
        sr.backend.stop(attempt)
        self.abandoned.left_running(sr, attempt)
        if attempt.finished_at is None:
            attempt.finished_at = self.clock.now()
        self.finalize(st, sr, StepStatus.CANCELLED, None, StepCancelledError(sr.step.name, reason))

    def abandon_running(self) -> None:
        st = self.stage
        if st is None or self.scope.reason is None:
            return
        for sr in tuple(st.members):
            if sr.state == _RUNNING:
                self.abandon(st, sr, self.scope.reason)

    def on_interrupt(self) -> None:
        if self.scope.reason is None:
            self.stop("the run was interrupted")
        else:
            self.abandon_running()  # a second Ctrl-C: no more grace

    # ── always-stages ───────────────────────────────────────────────────────────

    def run_always(self) -> None:
        """Run the always-stages, in declaration order, after everything else and after
        the compensations, whatever the outcome; a second Ctrl-C abandons them."""
        positions = [(index, stage) for index, stage in enumerate(self.flow.steps()) if isinstance(stage, Always)]
        if not positions:
            return
        resumed_outcome = self.resumed.outcome if self.resumed is not None else None
        self.outcome = self.scope.final_status(self.error, resumed_outcome)
        self.always_from = self.scope.interrupts
        self.scope.compensating = False  # a Ctrl-C is the loop's to handle again
        for index, step in positions:
            if self.scope.interrupts >= 2:
                error = StepCancelledError(step.name, "the always-stages were abandoned (second Ctrl-C)")
                self.records[step.name] = StepResult(step.name, StepStatus.CANCELLED, error=error)
                self.events.emit("step_finished", self.clock.now(), step=step.name, status=StepStatus.CANCELLED)
                continue
            self.run_stage(step, (step,), index)

    def note_always_failure(self, record: StepResult) -> None:
        if record.ok:
            return
        import logging  # only when an always-stage did not complete

        logging.getLogger("flowpool").warning(
            "flowpool: always-stage %r of flow %r ended %s: %s",
            record.name,
            self.name,
            record.status.value,
            record.error,
        )

    # ── abandoned attempts: late completions ────────────────────────────────────

    def await_abandoned(self) -> None:
        """Once the last stage settled, and before any compensation, give abandoned
        attempts up to the stop grace to end (SPEC §16). A late completion becomes its
        step's ``late_value`` (and is compensated if the run failed)."""
        abandoned = self.abandoned
        abandoned.await_end(self.inbox, self.timers, self.clock, self.scope)
        failed = self.error is not None or bool(self.scope.interrupts)
        for sr, value in abandoned.late_completions():
            record = sr.record
            assert record is not None
            sr.record = self.records[record.name] = with_late_value(record, value)
            if failed and sr.step.compensate is not None:
                self.compensator.pending.append(sr)
        abandoned.ended.clear()
        self.still_running = abandoned.still_running()
        if self.still_running:
            import logging  # only when something is left running

            logging.getLogger("flowpool").warning(
                "flowpool: run %s of %r: abandoned attempt(s) of %s still running after the stop grace; "
                "their side effects may still happen (use executor='process' to stop them for real)",
                self.run_id,
                self.name,
                ", ".join(map(repr, self.still_running)),
            )

    # ── compensation ────────────────────────────────────────────────────────────

    def compensate_all(self) -> None:
        if self.scope.interrupts and self.error is None:
            self.fail(None, FlowInterrupted(self.name))  # Ctrl-C between stages
        if self.error is None:
            return
        self.scope.compensating = True
        self.recorder.run_failed(self.scope.failure_outcome(), self.failed_stage, self.error)
        self.compensator.run_all(self.records, self.recorder, self.events, self.context)
