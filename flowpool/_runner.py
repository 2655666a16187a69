"""The settle loop: one loop in the caller's thread drives a whole run.

How an attempt flows::

    _Run (caller's thread)                              backend (threads, lanes, Dask)
    ──────────────────────                              ──────────────────────────────
    execute ─▶ _stages.run_stage ─▶ start_waiting ─▶ dispatch:
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
    run_stage ends ─▶ settle_verdict (_policy.stage_verdict) ─▶ next stage
    the last stage ─▶ await_abandoned ─▶ compensate_all ─▶ _always.run_always ─▶ finish

A map stage (``_mapstage.run_map``) goes through the same dispatch, wait and outcome
path, item by item: ``feed`` takes an item from its iterable only when a slot
is free and dispatches it at once as a ``StepRun`` carrying the item;
``finalize_item`` writes the settled item into the map's columnar ledger and
drops its ``StepRun``, context and timeout timer, so the loop holds only the
items in flight; ``settle_map`` gives the verdict (``_policy.tally_verdict``).

A subflow (``_subflows``) is a frame of the same loop: a child ``_Run`` that
shares the inbox, timers and backends, whose life (``frame_body``) is a
generator. ``wait_once`` hands each message and timer to the frame it concerns
(an attempt's owner names its frame) and then resumes the frames concerned, so
children progress side by side, in the caller's thread, without holding a
worker. The top run's own stages are driven the same way (``run_stages``).

Completions arrive through the inbox (workers or done-callbacks put them
there), so the loop never polls and never scans pending work: each step costs
the same whether its group has ten members or a hundred thousand. The loop
alone decides what an outcome means; a late outcome of an attempt the loop has
given up on (``attempt.settled``) changes no status: it is only noted, so
that once the last stage settled ``_abandoned.await_abandoned`` can wait a
little for it (a late completion of a timed-out step is compensated).

The concerns around the loop live in their own modules: ``_stages`` (steps and
groups: running, conditions, verdicts), ``_mapstage`` (maps), ``_always``
(always-stages), ``_stopping`` (cancelling a stage, stopping the run, the stop
grace), ``_abandoned`` (late completions), ``_timers`` (the heap and the one
wait), ``_stop`` (why the run stops, the status it ends with), ``_interrupts``
(Ctrl-C), ``_subflows`` (child frames), ``_compensator``, ``_recorder`` (journal writes), ``_resume``
(imported only for journaled runs), ``_policy`` (pure verdicts), ``_state`` (the
step and stage records) and ``_executors`` (the backends).
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Generator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _always, _mapstage, _stopping
from ._abandoned import AbandonedAttempts, await_abandoned, overran
from ._attempt import DONE, INTERRUPT, STARTED, Attempt, Message
from ._clock import SYSTEM_CLOCK, Clock, is_real_time
from ._compensator import Compensator
from ._context import Context
from ._definition import Flow, Group, Step
from ._errors import (
    FlowDefinitionError,
    FlowInterrupted,
    StepTimeoutError,
)
from ._events import EventSink
from ._executors import Backend, Backends, describe_executor
from ._finish import finish
from ._interrupts import route_interrupts
from ._maps import MapResult
from ._options import _check_seconds
from ._policy import (
    may_retry,
    retry_matches,
    status_of,
    stops_group_early,
)
from ._recorder import RunRecorder
from ._results import (
    FlowResult,
    FlowStatus,
    GroupResult,
    StepResult,
    StepStatus,
    new_run_id,
)
from ._sequence import run_stages
from ._state import MapRun, StageRun, StepRun, StepState, tell_cancel
from ._stop import STOP_GRACE, StopScope
from ._subflows import SubflowBackend, advance
from ._timers import TimerKind, Timers
from ._tracing import Span, end_attempt_span, run_tracer, trace_attempt

if TYPE_CHECKING:
    from ._events import Event
    from ._journal import RecordedRun

__all__ = ["STOP_GRACE", "run_flow"]


#: The name scripts/soak.py counts live step records by.
_StepRun = StepRun

# Module-level names, compared on every attempt.
_PENDING, _RUNNING, _BACKOFF = StepState.PENDING, StepState.RUNNING, StepState.BACKOFF
_TIMEOUT, _WAKE, _DEADLINE, _GRACE = TimerKind
_COMPLETED, _FAILED = StepStatus.COMPLETED, StepStatus.FAILED


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
        parent: _Run | None = None,
    ) -> None:
        self.flow = flow
        self.name = flow.name
        self.input = input
        self.timeout = timeout
        self.clock = clock
        if parent is None:
            self.run_id = new_run_id()
            #: Epoch seconds minus the run's clock: turns its monotonic times into wall-clock ones.
            self.wall_offset = clock.wall() - clock.now()
            self.events = EventSink(on_event, self.name, self.run_id, self.wall_offset)
            self.inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
            self.timers = Timers(self.clock)
            self.backends = Backends(executor, max_workers)
            self.subflows = SubflowBackend()
            #: Soft-stopped attempts (threads, Dask, a user's executor) that were still
            #: running when the loop gave up on them, and those of them that ended since.
            self.abandoned = AbandonedAttempts()
            #: OpenTelemetry spans, only when the program traces (``_tracing.run_tracer``).
            self.tracer = run_tracer(clock)
            #: Subflow frames that a message, a timer or a stop concerned: to resume.
            self.woken: deque[_Run] = deque()
            self.top: _Run = self
        else:  # a subflow's frame: the run's loop, inbox, timers, clock and backends
            for shared in ("run_id", "wall_offset", "events", "inbox", "timers", "backends", "subflows"):
                setattr(self, shared, getattr(parent, shared))
            for shared in ("abandoned", "tracer", "woken", "top"):
                setattr(self, shared, getattr(parent, shared))
        self.scope = StopScope(self.name, timeout)
        self.values: dict[str, Any] = {}
        self.values_view: Mapping[str, Any] = MappingProxyType({})
        self.records: dict[str, StepResult] = {}
        self.groups: dict[str, GroupResult] = {}
        self.maps: dict[str, MapResult] = {}
        self.compensator = Compensator(self.clock, self.inbox, self.timers, self.scope, self)
        self.compensator.concurrency = {
            stage.name: stage.compensate_concurrency for stage in flow.stages if isinstance(stage, Group)
        }
        self.stage: StageRun | None = None
        self.failed_stage: str | None = None
        self.error: BaseException | None = None
        self.recorder = RunRecorder(None, self.run_id)
        self.resumed: RecordedRun | None = None
        self.run_span: Span | None = None
        self.stage_spans: dict[str, Span] = {}
        self.spans: dict[Attempt, Span] = {}
        #: The flow's status so far, once its always-stages run (their ``ctx.outcome``).
        self.outcome: FlowStatus | None = None
        #: Ctrl-Cs counted when the always-stages began: an older stop grace no longer applies.
        self.always_from: int | None = None
        self.still_running: tuple[str, ...] = ()
        # A subflow's frame: its body (None once it ended), the parent's step run and
        # attempt it is, its result, and the status the parent's step takes from it.
        self.body: Generator[None, None, None] | None = None
        self.unit: StepRun | None = None
        self.attempt: Attempt | None = None
        self.result: FlowResult | None = None
        self.verdict = StepStatus.COMPLETED
        self.deadline: list[Any] | None = None  # its run timeout's timer, dropped when it ends
        #: A resumed run: the subflows whose first attempt restored what they had recorded.
        self.restoring: set[str] = set()

    # ── the run ─────────────────────────────────────────────────────────────────

    def execute(self) -> FlowResult:
        self.started_at = self.clock.now()
        if self.tracer is not None:
            self.run_span = self.tracer.start_run(self.name, self.run_id, start_time=self.started_at)
            self.compensator.spans = (self.tracer, self.stage_spans)
        self.backends.open_run_backend()
        restore = route_interrupts(self.scope, self.inbox, self.timers, self.clock)
        try:
            self.recorder.begin(self.flow, self.input, resumed=self.resumed is not None)
            self.events.emit("flow_started", self.started_at)
            if self.timeout is not None:
                self.timers.push(self.started_at + self.timeout, _DEADLINE, self)
            if self.resumed is not None and self.resumed.phase == "compensating":
                from ._resume import restore_compensation_phase

                restore_compensation_phase(self, self.resumed)
            else:
                for _ in run_stages(self):
                    self.wait_once()
            await_abandoned(self)
            self.compensate_all()
            for _ in _always.run_always(self):
                self.wait_once()
        except BaseException:
            # Leaving abnormally (a KeyboardInterrupt from a SIGINT handler of the
            # program's own, a listener that raised one, a journal that cannot be
            # written): what this run started must not keep running behind the caller.
            self.scope.reason = self.scope.reason or "the run ended abnormally"
            _stopping.abandon_running(self)
            raise
        finally:
            restore()
            self.backends.close()
        return finish(self)

    # ── subflow frames ──────────────────────────────────────────────────────────

    def context(self, step: str, attempt: int) -> Context:
        """The context of one attempt (or compensation attempt) of ``step``."""
        ctx = Context(
            input=self.input,
            flow=self.name,
            run_id=self.run_id,
            step=step,
            attempt=attempt,
            results=self.values_view,
            outcome=self.outcome,
        )
        prefix = self.events.prefix
        if prefix:
            ctx._path = (*prefix, step)
        return ctx

    def fail(self, stage: str | None, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self.failed_stage = stage

    # ── stages ──────────────────────────────────────────────────────────────────

    # ── maps ────────────────────────────────────────────────────────────────────

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
        attempt = sr.new_attempt(self.context(step.name, number), self.inbox, self.clock, notify_start, may_queue)
        if self.tracer is not None:
            trace_attempt(self, sr, attempt)
        backend.submit(attempt)

    # ── the loop ────────────────────────────────────────────────────────────────

    def backend_for(self, step: Step) -> Backend:
        """Where ``step``'s attempts go: its executor's backend, or child frames for a subflow."""
        if step.subflow is not None:
            return self.subflows
        return self.backends.for_step(step.executor)

    def wait_once(self) -> None:
        """Handle due timers, or else the next message (waiting until the next timer), each
        in the frame it concerns; then resume the subflow frames that were concerned."""
        woken = self.woken
        if woken:
            self.resume_frames()
            return
        timers = self.timers
        now = self.clock.now()
        next_at = timers.next_at()
        if next_at is not None and next_at <= now:
            for kind, target in timers.due(now):
                if kind == _TIMEOUT:
                    frame = target.owner.run
                elif kind == _WAKE:
                    frame = target if isinstance(target, _Run) else target.run
                    if frame is target:
                        woken.append(frame)  # a frame's own wake-up (its compensations)
                        continue
                else:
                    frame = target  # DEADLINE and GRACE name their run
                frame.on_timer(kind, target)
                if frame is not self:
                    woken.append(frame)
            if woken:
                self.resume_frames()
            return
        commit_at = self.recorder.commit_due()
        if commit_at is not None:
            # Journal writes are committed together, at most every COMMIT_EVERY seconds.
            if commit_at <= now:
                self.recorder.commit(now)
            elif next_at is None or commit_at < next_at:
                next_at = commit_at
        received = timers.wait(self.inbox, next_at, now)
        if received is None:
            return
        message, item = received
        if message == INTERRUPT:
            _stopping.on_interrupt(self)
        else:
            if message == DONE:
                item.release()
            owner = item.owner
            frame = self if owner is None else owner.run
            if frame is self:
                self.receive(message, item)
            else:
                frame.receive(message, item)
                woken.append(frame)
        if woken:
            self.resume_frames()

    def receive(self, message: int, attempt: Attempt) -> None:
        """A message about one of this frame's attempts."""
        if message == DONE:
            if attempt.owner is self.compensator:
                self.compensator.mailbox.append((message, attempt))
            else:
                self.on_done(attempt)
        elif message == STARTED:
            if attempt.owner is self.compensator:
                self.compensator.mailbox.append((message, attempt))
            elif not attempt.settled:
                self.on_started(attempt)

    def resume_frames(self) -> None:
        """Resume each subflow frame something happened to, until none is left to resume."""
        woken = self.woken
        while woken:
            advance(woken.popleft())

    def on_started(self, attempt: Attempt) -> None:
        sr: StepRun = attempt.owner
        started = attempt.started_at
        assert started is not None
        if not attempt.quiet_start:
            self.announce_start(sr, attempt)
        timeout = sr.step.timeout
        if timeout is not None and sr.child is None:  # a subflow's timeout is its run's
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
            _stopping.withdrawn(self, st, sr, attempt, attempt.cancel_reason or "cancelled")
            return
        attempt.settled = True
        if attempt.quiet_start and attempt.started_at is not None:
            self.announce_start(sr, attempt)  # it did run: announce it now
        if sr.first_started is None:
            sr.first_started = attempt.started_at
        if overran(self, sr, attempt):
            return  # it ran past its timeout: TIMED_OUT, whatever it returned
        if attempt.ok:
            self.on_outcome(sr, attempt, StepStatus.COMPLETED, attempt.value, None)
        else:
            status = status_of(attempt.error) if sr.child is None else sr.child.verdict
            self.on_outcome(sr, attempt, status, None, attempt.error)

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
                _stopping.stop(self, f"the run's timeout of {self.timeout:g} s passed")
        elif kind == _GRACE:
            if self.always_from is not None and self.scope.interrupts <= self.always_from:
                return  # the grace of a stop before the always-stages: they run on
            _stopping.abandon_running(self, subflows=False)

    def on_outcome(
        self, sr: StepRun, attempt: Attempt, status: StepStatus, value: Any, error: BaseException | None
    ) -> None:
        st = self.stage
        assert st is not None
        step = sr.step
        sr.last_status = status
        sr.last_error = error
        if self.spans:
            end_attempt_span(self, attempt, status, error)
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
            _mapstage.finalize_item(self, st, sr, status, value, error)
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
        if status is StepStatus.COMPLETED and (
            step.compensate is not None or (sr.child is not None and sr.child.compensator.undoable())
        ):
            self.compensator.pending.append(sr)  # a completed subflow is undone as a unit
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
        if attempt is not None and attempt.finished_at is not None and (status is _COMPLETED or status is _FAILED):
            # Its attempt returned (it was not abandoned) and nothing asks for it again: dropped
            # now (with its context, ticket and retry state) it is freed at once, not left in a
            # cycle for the garbage collector, whose full collections grow with what is alive.
            sr.attempt = sr.driver = None
        if st.cancel_reason is None and stops_group_early(status, fail_fast=st.fail_fast, optional=step.optional):
            _stopping.cancel_stage(self, st, f"group {st.name!r} failed fast: step {step.name!r} ended {status.value}")

    # ── cancellation, stopping, interrupts (_stopping), always-stages (_always), late completions (_abandoned) ──

    # ── compensation ────────────────────────────────────────────────────────────

    def compensate_all(self) -> None:
        if self.scope.interrupts and self.error is None:
            self.fail(None, FlowInterrupted(self.name))  # Ctrl-C between stages
        if self.error is None:
            return
        self.scope.compensating = True
        self.recorder.run_failed(self.scope.failure_outcome(), self.failed_stage, self.error)
        self.compensator.run_all(self.records, self.recorder, self.events, self.context)
