"""OpenTelemetry spans for a run, made only when the program itself uses OpenTelemetry.

flowpool never imports OpenTelemetry on its own. ``run_tracer()``, called at the
start of each run, is one dict lookup and returns None unless the program has
imported ``opentelemetry`` and set a real tracer provider. Then the settle loop
builds this tree, starting and finishing every span from the caller's thread::

    flowpool.run <flow>                     start_run(flow, run_id)
    └── flowpool.stage <stage>              start_stage(stage, parent=run span or a subflow's attempt)
        ├── flowpool.attempt <step>         start_attempt(stage span, step, n, item)
        │   └── the step's own spans        ``span.around(fn, in_process=...)``: thread mode runs fn with the
        │                                   span current; another process gets ``partial(call_attached,
        │                                   span.carrier(), fn)`` (process mode sends the carrier apart:
        │                                   ``split_attached``) and attaches it around the call
        └── flowpool.compensation <step>    start_compensation(stage span, step, n, item)

An attempt's span is started when the loop hands the attempt over (its id must
exist before the worker needs it); ``finish(started_at=...)`` marks the moment
it really started with a ``flowpool.started`` event. Times are the loop's
monotonic seconds, mapped to wall-clock nanoseconds once per run, so durations
are exact and a test's fake clock gives a consistent trace.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ._clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace

    from ._attempt import Attempt
    from ._results import StepStatus
    from ._runner import _Run
    from ._state import StepRun

__all__ = [
    "RunTracer",
    "Span",
    "attached",
    "call_attached",
    "end_attempt_span",
    "run_tracer",
    "split_attached",
    "trace_attempt",
]

T = TypeVar("T")

#: Outcomes that set a span's status to ERROR (step, group, flow and compensation statuses).
ERROR_STATUSES = frozenset({"failed", "timed_out"})


def run_tracer(clock: Clock = SYSTEM_CLOCK) -> RunTracer | None:
    """A tracer for one run, or None when the program does not trace.

    Tracing is on when the program has imported ``opentelemetry`` and its global
    tracer provider is a real one (not the API's proxy or no-op provider). When the
    program has not imported it, this is one dict lookup and imports nothing.
    """
    if "opentelemetry" not in sys.modules:
        return None
    from opentelemetry import trace  # the program imported OpenTelemetry: so may we

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    from . import __version__

    return RunTracer(provider.get_tracer("flowpool", __version__), clock)


class RunTracer:
    """Starts the spans of one run; times are monotonic seconds of ``clock``."""

    __slots__ = ("_clock", "_offset_ns", "_tracer")

    def __init__(self, tracer: otel_trace.Tracer, clock: Clock = SYSTEM_CLOCK) -> None:
        self._tracer = tracer
        self._clock = clock
        # Spans want wall-clock nanoseconds; the loop measures monotonic seconds. One
        # offset per run keeps every duration exact (a wall clock may step mid-run);
        # the wall clock is read here, not in _clock, as the journal reads it for its rows.
        self._offset_ns = time.time_ns() - round(clock.now() * 1e9)

    def start_run(self, flow: str, run_id: str, *, start_time: float | None = None) -> Span:
        """The run's span, a child of whatever span is current in the caller's thread."""
        return self._start(
            f"flowpool.run {flow}",
            None,
            run_id,
            {"flowpool.run_id": run_id, "flowpool.flow": flow},
            start_time,
        )

    def start_stage(self, name: str, parent: Span, *, start_time: float | None = None) -> Span:
        """A stage's span under ``parent``: the run's span, or a subflow's attempt span."""
        attributes = {"flowpool.run_id": parent.run_id, "flowpool.step": name}
        return self._start(f"flowpool.stage {name}", parent, parent.run_id, attributes, start_time)

    def start_attempt(
        self,
        stage: Span,
        step: str,
        attempt: int,
        item: str | int | None = None,
        *,
        start_time: float | None = None,
    ) -> Span:
        """One attempt of ``step`` (or of a map's ``item``, by key) under its stage's span."""
        return self._start(
            f"flowpool.attempt {step}", stage, stage.run_id, _attempt_attributes(stage, step, attempt, item), start_time
        )

    def start_compensation(
        self,
        stage: Span,
        step: str,
        attempt: int,
        item: str | int | None = None,
        *,
        start_time: float | None = None,
    ) -> Span:
        """One attempt of ``step``'s compensation under its stage's span."""
        return self._start(
            f"flowpool.compensation {step}",
            stage,
            stage.run_id,
            _attempt_attributes(stage, step, attempt, item),
            start_time,
        )

    def _start(
        self,
        name: str,
        parent: Span | None,
        run_id: str,
        attributes: Mapping[str, str | int],
        start_time: float | None,
    ) -> Span:
        from opentelemetry import context, trace

        parent_context = context.get_current() if parent is None else parent.context
        span = self._tracer.start_span(
            name, context=parent_context, attributes=attributes, start_time=self.wall_ns(start_time)
        )
        return Span(self, span, trace.set_span_in_context(span, parent_context), run_id)

    def wall_ns(self, when: float | None) -> int:
        """Wall-clock nanoseconds of the monotonic ``when`` (now if None)."""
        return self._offset_ns + round((self._clock.now() if when is None else when) * 1e9)


def _attempt_attributes(stage: Span, step: str, attempt: int, item: str | int | None) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "flowpool.run_id": stage.run_id,
        "flowpool.step": step,
        "flowpool.attempt": attempt,
    }
    if item is not None:
        attributes["flowpool.item"] = item
    return attributes


class Span:
    """A flowpool span: finished once, from the loop's thread; activated where its work runs."""

    __slots__ = ("_finished", "_span", "_tracer", "context", "run_id")

    def __init__(self, tracer: RunTracer, span: otel_trace.Span, context: otel_context.Context, run_id: str) -> None:
        self._tracer = tracer
        self._span = span
        self.context = context  # the OpenTelemetry context with this span current
        self.run_id = run_id
        self._finished = False

    def finish(
        self,
        status: str,
        error: BaseException | None = None,
        *,
        started_at: float | None = None,
        end_time: float | None = None,
    ) -> None:
        """End the span with ``status`` (``flowpool.status``); later calls do nothing.

        ``failed`` and ``timed_out`` set the span's status to ERROR; ``error``, when
        given, is recorded as an exception event. ``started_at`` (monotonic) is when
        the work really began on its worker, marked by a ``flowpool.started`` event.
        """
        if self._finished:
            return
        self._finished = True
        from opentelemetry.trace import Status, StatusCode

        span = self._span
        end_ns = self._tracer.wall_ns(end_time)
        status = str(status)  # a str enum's value, not its repr
        span.set_attribute("flowpool.status", status)
        if started_at is not None:
            span.add_event("flowpool.started", timestamp=self._tracer.wall_ns(started_at))
        if error is not None:
            span.record_exception(error, timestamp=end_ns)
        if status in ERROR_STATUSES:
            description = None if error is None else f"{type(error).__name__}: {error}"
            span.set_status(Status(StatusCode.ERROR, description))
        span.end(end_time=end_ns)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make this span current in this thread (the step's own spans nest under it).

        Enter and leave it in the thread where the step runs.
        """
        from opentelemetry import context

        token = context.attach(self.context)
        try:
            yield
        finally:
            context.detach(token)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with this span current, in the calling thread.

        For thread-mode attempts: ``functools.partial(span.call, fn)`` in place of ``fn``.
        """
        with self.activate():
            return fn(*args, **kwargs)

    def around(self, fn: Callable[..., T], *, in_process: bool) -> Callable[..., T]:
        """``fn`` made to run with this span current: here (``call``), or in another
        process (``call_attached`` with this span's ``carrier``)."""
        if in_process:
            return functools.partial(self.call, fn)
        return functools.partial(call_attached, self.carrier(), fn)

    def carrier(self) -> dict[str, str]:
        """This span's context as W3C headers (``traceparent``, maybe ``tracestate``,
        ``baggage``), for a worker process: see ``attached``."""
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        headers: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(headers, context=self.context)
        W3CBaggagePropagator().inject(headers, context=self.context)
        return headers

    def __repr__(self) -> str:
        return f"<flowpool span {getattr(self._span, 'name', '?')!r}>"


def attached(carrier: Mapping[str, str] | None) -> contextlib.AbstractContextManager[None]:
    """Worker side of ``Span.carrier``: make the carried span current while inside.

    A carrier is only ever sent by a program that traces; where it arrives, it is
    attached if OpenTelemetry is installed there (imported then, once), so the
    spans a step starts join the trace when the worker has a tracer provider (set
    by the step, its modules or OpenTelemetry's environment), and outgoing calls
    carry the trace even when it has none. Where OpenTelemetry is not installed it
    does nothing and imports nothing; no carrier: nothing either.
    """
    if not carrier or not _importable():
        return contextlib.nullcontext()
    return _attach(carrier)


def call_attached(carrier: Mapping[str, str] | None, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` inside ``attached(carrier)``; picklable with ``functools.partial``."""
    with attached(carrier):
        return fn(*args, **kwargs)


def split_attached(fn: Any) -> tuple[dict[str, str] | None, Any]:
    """``(carrier, fn)`` of a call that ``Span.around`` made for another process;
    ``(None, fn)`` for any other. Process mode sends the carrier apart from the
    function, so that a lane is sent each function once, not once per attempt."""
    if isinstance(fn, functools.partial) and fn.func is call_attached and len(fn.args) == 2 and not fn.keywords:
        return fn.args[0], fn.args[1]
    return None, fn


_found: list[bool] = []  # whether OpenTelemetry is installed here, once asked


def _importable() -> bool:
    if "opentelemetry" in sys.modules:
        return True
    if not _found:
        import importlib.util

        try:
            _found.append(importlib.util.find_spec("opentelemetry") is not None)
        except (ImportError, ValueError):  # a broken or blocked installation: as if absent
            _found.append(False)
    return _found[0]


@contextlib.contextmanager
def _attach(carrier: Mapping[str, str]) -> Iterator[None]:
    from opentelemetry import context
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    extracted = TraceContextTextMapPropagator().extract(carrier)
    extracted = W3CBaggagePropagator().extract(carrier, context=extracted)
    token = context.attach(extracted)
    try:
        yield
    finally:
        context.detach(token)


def trace_attempt(run: _Run, sr: StepRun, attempt: Attempt) -> None:
    """Start the attempt's span under its stage's; the step runs with it current (a worker: its carrier)."""
    stage = run.stage
    parent = run.stage_spans.get(stage.name) if stage is not None else None
    if run.tracer is None or parent is None:
        return
    span = run.tracer.start_attempt(parent, sr.step.name, attempt.number, sr.key)
    run.spans[attempt] = span
    attempt.fn = span.around(attempt.fn, in_process=sr.backend.in_process)


def end_attempt_span(run: _Run, attempt: Attempt, status: StepStatus, error: BaseException | None) -> None:
    span = run.spans.pop(attempt, None)
    if span is not None:
        span.finish(status.value, error, started_at=attempt.started_at, end_time=attempt.finished_at)
