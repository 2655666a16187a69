"""OpenTelemetry spans (SPEC §14, tracing): the span tree, attributes, errors, and
the trace context carried to other threads and processes.

The spans go to the SDK's in-memory exporter. A test that needs a tracer provider
sets one for itself and the fixture takes it away afterwards, so that the rest of
the suite runs without tracing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

otel_trace = pytest.importorskip("opentelemetry.trace")
pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry import baggage, context  # noqa: E402 - only once the skip above has passed
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402
from opentelemetry.util._once import Once  # noqa: E402

from flowpool import GroupStatus, StepStatus  # noqa: E402
from flowpool._clock import Clock  # noqa: E402
from flowpool._errors import StepCancelledError, StepTimeoutError  # noqa: E402
from flowpool._tracing import RunTracer, Span, attached, call_attached, run_tracer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

#: Seconds a helper thread or subprocess may take before the test fails.
WAIT = 60.0


class ManualClock(Clock):
    """Monotonic time that moves only when the test says so."""

    def __init__(self, now: float) -> None:
        self.time = now

    def now(self) -> float:
        return self.time


@pytest.fixture
def no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenTelemetry imported, no tracer provider set (restored after the test).

    The API allows one ``set_tracer_provider`` per process; resetting its globals
    is how OpenTelemetry's own test utilities give each test a fresh start.
    """
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)


@pytest.fixture
def exporter(no_provider: None) -> Iterator[InMemorySpanExporter]:
    """A global SDK tracer provider whose finished spans land in the returned exporter."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    otel_trace.set_tracer_provider(provider)
    try:
        yield spans
    finally:
        provider.shutdown()


def tracer_for(clock: Clock | None = None) -> RunTracer:
    tracer = run_tracer() if clock is None else run_tracer(clock)
    assert tracer is not None
    return tracer


def finished(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    assert len(by_name) == len(spans), [span.name for span in spans]
    return by_name


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def tree(tracer: RunTracer) -> tuple[Span, Span, Span]:
    run = tracer.start_run("profile", "run-1")
    stage = tracer.start_stage("fetch-data", run)
    attempt = tracer.start_attempt(stage, "fetch-user", 1)
    return run, stage, attempt


# ── when tracing is on ───────────────────────────────────────────────────────────


def test_there_is_no_tracer_while_no_provider_is_set(no_provider: None) -> None:
    assert run_tracer() is None


def test_there_is_no_tracer_with_the_no_op_provider(no_provider: None) -> None:
    otel_trace.set_tracer_provider(otel_trace.NoOpTracerProvider())
    assert run_tracer() is None


def test_there_is_a_tracer_from_the_first_run_after_a_provider_is_set(no_provider: None) -> None:
    assert run_tracer() is None
    provider = TracerProvider()
    otel_trace.set_tracer_provider(provider)
    try:
        assert isinstance(run_tracer(), RunTracer)
    finally:
        provider.shutdown()


def test_importing_flowpool_and_asking_for_a_tracer_imports_no_opentelemetry() -> None:
    script = (
        "import sys, flowpool\n"
        "from flowpool._tracing import run_tracer\n"
        "assert run_tracer() is None\n"
        "print(sorted(name for name in sys.modules if name.startswith('opentelemetry')))\n"
    )
    assert run_python(script).stdout.strip() == "[]"


# ── the span tree ────────────────────────────────────────────────────────────────


def test_a_run_is_a_tree_of_run_stage_and_attempt_spans(exporter: InMemorySpanExporter) -> None:
    run, stage, attempt = tree(tracer_for())
    attempt.finish(StepStatus.COMPLETED)
    stage.finish(GroupStatus.COMPLETED)
    run.finish("completed")

    spans = finished(exporter)
    assert set(spans) == {"flowpool.run profile", "flowpool.stage fetch-data", "flowpool.attempt fetch-user"}
    run_span = spans["flowpool.run profile"]
    stage_span = spans["flowpool.stage fetch-data"]
    attempt_span = spans["flowpool.attempt fetch-user"]
    assert run_span.parent is None
    assert parent_id(stage_span) == ids(run_span)[1]
    assert parent_id(attempt_span) == ids(stage_span)[1]
    assert {ids(span)[0] for span in spans.values()} == {ids(run_span)[0]}


def test_the_run_span_is_a_child_of_the_span_current_where_the_run_starts(exporter: InMemorySpanExporter) -> None:
    outer = otel_trace.get_tracer("user").start_span("batch job")
    with otel_trace.use_span(outer, end_on_exit=True):
        run = tracer_for().start_run("profile", "run-1")
    run.finish("completed")

    spans = finished(exporter)
    assert parent_id(spans["flowpool.run profile"]) == ids(spans["batch job"])[1]


def test_a_stage_can_hang_under_an_attempt_for_a_subflow(exporter: InMemorySpanExporter) -> None:
    tracer = tracer_for()
    run, stage, attempt = tree(tracer)
    child_stage = tracer.start_stage("charge", attempt)
    for span in (child_stage, attempt, stage, run):
        span.finish("completed")

    spans = finished(exporter)
    assert parent_id(spans["flowpool.stage charge"]) == ids(spans["flowpool.attempt fetch-user"])[1]
    assert spans["flowpool.stage charge"].attributes == {
        "flowpool.run_id": "run-1",
        "flowpool.step": "charge",
        "flowpool.status": "completed",
    }


def test_compensations_are_spans_under_their_stage(exporter: InMemorySpanExporter) -> None:
    tracer = tracer_for()
    run = tracer.start_run("thumbnails", "run-2")
    stage = tracer.start_stage("resize", run)
    stage.finish(GroupStatus.COMPLETED)
    first = tracer.start_compensation(stage, "resize", 1, item="a.png")
    first.finish("failed", OSError("disk full"))
    second = tracer.start_compensation(stage, "resize", 2, item="a.png")
    second.finish("compensated")
    run.finish("failed")

    spans = exporter.get_finished_spans()
    compensations = [span for span in spans if span.name == "flowpool.compensation resize"]
    stage_span = next(span for span in spans if span.name == "flowpool.stage resize")
    assert [parent_id(span) for span in compensations] == [ids(stage_span)[1]] * 2
    assert [dict(span.attributes or {}) for span in compensations] == [
        {
            "flowpool.run_id": "run-2",
            "flowpool.step": "resize",
            "flowpool.attempt": attempt,
            "flowpool.item": "a.png",
            "flowpool.status": status,
        }
        for attempt, status in ((1, "failed"), (2, "compensated"))
    ]
    assert [span.status.status_code for span in compensations] == [StatusCode.ERROR, StatusCode.UNSET]
    assert [event.name for event in compensations[0].events] == ["exception"]


# ── attributes ───────────────────────────────────────────────────────────────────


def test_attempt_attributes_have_the_documented_names_and_types(exporter: InMemorySpanExporter) -> None:
    tracer = tracer_for()
    run = tracer.start_run("profile", "run-1")
    stage = tracer.start_stage("fetch-data", run)
    tracer.start_attempt(stage, "fetch-user", 3).finish(StepStatus.COMPLETED)

    attributes = dict(finished(exporter)["flowpool.attempt fetch-user"].attributes or {})
    assert attributes == {
        "flowpool.run_id": "run-1",
        "flowpool.step": "fetch-user",
        "flowpool.attempt": 3,
        "flowpool.status": "completed",
    }
    assert [type(attributes[name]) for name in sorted(attributes)] == [int, str, str, str]


def test_a_map_item_carries_its_key_as_it_is(exporter: InMemorySpanExporter) -> None:
    tracer = tracer_for()
    stage = tracer.start_stage("resize", tracer.start_run("thumbnails", "run-2"))
    tracer.start_attempt(stage, "resize", 1, item="a.png").finish(StepStatus.COMPLETED)
    tracer.start_attempt(stage, "resize", 1, item=3).finish(StepStatus.COMPLETED)

    items = [span.attributes["flowpool.item"] for span in exporter.get_finished_spans() if span.attributes]
    assert items == ["a.png", 3]


def test_the_run_span_names_its_flow_and_run(exporter: InMemorySpanExporter) -> None:
    tracer_for().start_run("profile", "run-1").finish("completed")

    assert dict(finished(exporter)["flowpool.run profile"].attributes or {}) == {
        "flowpool.run_id": "run-1",
        "flowpool.flow": "profile",
        "flowpool.status": "completed",
    }


# ── outcomes ─────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("status", "error"),
    [(StepStatus.FAILED, ValueError("boom")), (StepStatus.TIMED_OUT, StepTimeoutError("fetch-user", 1.0, 1))],
)
def test_a_failed_or_timed_out_attempt_is_an_error_with_its_exception_recorded(
    exporter: InMemorySpanExporter, status: StepStatus, error: BaseException
) -> None:
    _, _, attempt = tree(tracer_for())
    attempt.finish(status, error)

    span = finished(exporter)["flowpool.attempt fetch-user"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == f"{type(error).__name__}: {error}"
    assert span.attributes is not None
    assert span.attributes["flowpool.status"] == str(status)
    [event] = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert str(event.attributes["exception.type"]).endswith(type(error).__name__)
    assert event.attributes["exception.message"] == str(error)
    assert span.end_time is not None
    assert event.timestamp <= span.end_time


def test_a_completed_attempt_has_no_error_and_no_event(exporter: InMemorySpanExporter) -> None:
    _, _, attempt = tree(tracer_for())
    attempt.finish(StepStatus.COMPLETED)

    span = finished(exporter)["flowpool.attempt fetch-user"]
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()


def test_a_cancelled_attempt_keeps_its_exception_but_is_no_error(exporter: InMemorySpanExporter) -> None:
    _, _, attempt = tree(tracer_for())
    attempt.finish(StepStatus.CANCELLED, StepCancelledError("fetch-user", "the group failed fast"))

    span = finished(exporter)["flowpool.attempt fetch-user"]
    assert span.status.status_code is StatusCode.UNSET
    assert [event.name for event in span.events] == ["exception"]


def test_a_failed_run_and_stage_are_errors(exporter: InMemorySpanExporter) -> None:
    run, stage, attempt = tree(tracer_for())
    attempt.finish(StepStatus.FAILED, ValueError("boom"))
    stage.finish(GroupStatus.FAILED)
    run.finish("failed")

    spans = finished(exporter)
    assert spans["flowpool.stage fetch-data"].status.status_code is StatusCode.ERROR
    assert spans["flowpool.run profile"].status.status_code is StatusCode.ERROR


def test_finishing_twice_keeps_the_first_outcome_quietly(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, attempt = tree(tracer_for())
    attempt.finish(StepStatus.TIMED_OUT, StepTimeoutError("fetch-user", 1.0, 1))
    with caplog.at_level("DEBUG", logger="opentelemetry"):
        attempt.finish(StepStatus.COMPLETED)  # the late value of an abandoned thread

    assert caplog.records == []  # the SDK warns about every change to an ended span

    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["flowpool.status"] == "timed_out"
    assert len(span.events) == 1


# ── times ────────────────────────────────────────────────────────────────────────


def test_span_times_follow_the_runs_clock(exporter: InMemorySpanExporter) -> None:
    clock = ManualClock(1000.0)
    tracer = tracer_for(clock)
    run = tracer.start_run("profile", "run-1")
    clock.time = 1001.25
    run.finish("completed")

    span = finished(exporter)["flowpool.run profile"]
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.end_time - span.start_time == 1_250_000_000


def test_explicit_times_place_the_span_and_its_real_start(exporter: InMemorySpanExporter) -> None:
    clock = ManualClock(50.0)
    _, stage, _ = tree(tracer_for(clock))
    attempt = tracer_for(clock).start_attempt(stage, "fetch-posts", 1, start_time=40.0)
    attempt.finish(StepStatus.COMPLETED, started_at=40.5, end_time=42.0)

    span = finished(exporter)["flowpool.attempt fetch-posts"]
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.end_time - span.start_time == 2_000_000_000
    [started] = span.events
    assert started.name == "flowpool.started"
    assert started.timestamp - span.start_time == 500_000_000


# ── the trace context where the step runs ────────────────────────────────────────


def in_thread(fn: Any) -> Any:
    """``fn()`` in a fresh thread (with a fresh context), its value or exception brought back."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_span_the_step_starts_inside_activate_is_a_child_of_the_attempt(exporter: InMemorySpanExporter) -> None:
    _, _, attempt = tree(tracer_for())

    def step() -> bool:
        with attempt.activate(), otel_trace.get_tracer("user").start_as_current_span("query"):
            pass
        return otel_trace.get_current_span() is otel_trace.INVALID_SPAN

    assert in_thread(step), "the attempt's span was left current in the worker thread"
    attempt.finish(StepStatus.COMPLETED)

    spans = finished(exporter)
    assert parent_id(spans["query"]) == ids(spans["flowpool.attempt fetch-user"])[1]
    assert ids(spans["query"])[0] == ids(spans["flowpool.attempt fetch-user"])[0]


def test_spans_of_a_step_called_through_the_attempt_span_are_its_children(exporter: InMemorySpanExporter) -> None:
    _, _, attempt = tree(tracer_for())

    def step(name: str, *, kind: str) -> str:
        with otel_trace.get_tracer("user").start_as_current_span(name):
            return kind

    assert in_thread(lambda: attempt.call(step, "query", kind="sql")) == "sql"
    attempt.finish(StepStatus.COMPLETED)

    spans = finished(exporter)
    assert parent_id(spans["query"]) == ids(spans["flowpool.attempt fetch-user"])[1]


def test_the_carrier_is_a_w3c_traceparent_of_the_attempt(exporter: InMemorySpanExporter) -> None:
    _, _, attempt = tree(tracer_for())
    carrier = attempt.carrier()
    attempt.finish(StepStatus.COMPLETED)

    span = finished(exporter)["flowpool.attempt fetch-user"]
    assert span.context is not None
    trace_id, span_id = ids(span)
    assert span.context.trace_flags.sampled
    assert carrier == {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{span.context.trace_flags:02x}"}


def test_a_span_started_under_the_carrier_in_another_thread_is_a_child_of_the_attempt(
    exporter: InMemorySpanExporter,
) -> None:
    _, _, attempt = tree(tracer_for())
    carrier = attempt.carrier()

    def step() -> None:
        with attached(carrier), otel_trace.get_tracer("user").start_as_current_span("query"):
            pass

    in_thread(step)
    attempt.finish(StepStatus.COMPLETED)

    spans = finished(exporter)
    assert ids(spans["query"])[0] == ids(spans["flowpool.attempt fetch-user"])[0]
    assert parent_id(spans["query"]) == ids(spans["flowpool.attempt fetch-user"])[1]


def test_baggage_current_where_the_run_starts_travels_with_the_carrier(exporter: InMemorySpanExporter) -> None:
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        run = tracer_for().start_run("profile", "run-1")
    finally:
        context.detach(token)
    attempt = tracer_for().start_attempt(tracer_for().start_stage("load", run), "load", 1)

    carrier = attempt.carrier()
    assert carrier["baggage"] == "tenant=acme"
    assert in_thread(lambda: call_attached(carrier, baggage.get_baggage, "tenant")) == "acme"


def test_without_a_provider_the_carrier_still_makes_the_attempt_current_for_outgoing_calls(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, attempt = tree(tracer_for())
    carrier = attempt.carrier()
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", None)  # the worker has no provider

    def step() -> Any:
        with attached(carrier):
            return otel_trace.get_current_span().get_span_context()

    seen = in_thread(step)
    attempt.finish(StepStatus.COMPLETED)
    assert (seen.trace_id, seen.span_id) == ids(finished(exporter)["flowpool.attempt fetch-user"])


def test_no_carrier_attaches_nothing() -> None:
    before = context.get_current()
    with attached(None):
        assert context.get_current() is before
    with attached({}):
        assert context.get_current() is before


# ── the trace context in a worker process ────────────────────────────────────────

WORKER_WITH_A_PROVIDER = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from flowpool._tracing import attached

spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(provider)
with attached(json.loads(sys.argv[1])), trace.get_tracer("user").start_as_current_span("in worker"):
    pass
[span] = spans.get_finished_spans()
print(json.dumps({"trace_id": span.context.trace_id, "parent_id": span.parent.span_id}))
"""

WORKER_WITHOUT_OPENTELEMETRY = """
import functools, json, pickle, sys

class NotInstalled:  # as if OpenTelemetry were not installed in this interpreter
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(name)

sys.meta_path.insert(0, NotInstalled())
from flowpool._tracing import attached, call_attached
with attached(json.loads(sys.argv[1])):
    pass
call = pickle.loads(pickle.dumps(functools.partial(call_attached, json.loads(sys.argv[1]), len)))
assert call("abc") == 3
print(json.dumps(sorted(name for name in sys.modules if name.startswith("opentelemetry"))))
"""

WORKER_CONFIGURED_BY_ENVIRONMENT = """
import json, sys
from flowpool._tracing import attached
with attached(json.loads(sys.argv[1])):
    from opentelemetry import trace
    with trace.get_tracer("user").start_as_current_span("in worker") as span:
        parent = span.parent
print(json.dumps({"trace_id": parent.trace_id, "parent_id": parent.span_id}))
"""


def run_python(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter that imports flowpool from this worktree, without OTEL_* settings."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    clean["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env={**clean, **env},
    )
    assert done.returncode == 0, done.stderr
    return done


def test_a_span_started_under_the_carrier_in_a_worker_process_joins_the_trace(
    exporter: InMemorySpanExporter,
) -> None:
    _, _, attempt = tree(tracer_for())
    carrier = attempt.carrier()
    attempt.finish(StepStatus.COMPLETED)

    seen = json.loads(run_python(WORKER_WITH_A_PROVIDER, json.dumps(carrier)).stdout)
    trace_id, span_id = ids(finished(exporter)["flowpool.attempt fetch-user"])
    assert seen == {"trace_id": trace_id, "parent_id": span_id}


def test_a_worker_process_without_opentelemetry_installed_imports_none_of_it(exporter: InMemorySpanExporter) -> None:
    _, _, attempt = tree(tracer_for())
    carrier = attempt.carrier()
    attempt.finish(StepStatus.COMPLETED)

    assert json.loads(run_python(WORKER_WITHOUT_OPENTELEMETRY, json.dumps(carrier)).stdout) == []


def test_a_worker_process_whose_environment_names_a_provider_joins_the_trace(
    exporter: InMemorySpanExporter,
) -> None:
    _, _, attempt = tree(tracer_for())
    carrier = attempt.carrier()
    attempt.finish(StepStatus.COMPLETED)

    done = run_python(
        WORKER_CONFIGURED_BY_ENVIRONMENT, json.dumps(carrier), OTEL_PYTHON_TRACER_PROVIDER="sdk_tracer_provider"
    )
    trace_id, span_id = ids(finished(exporter)["flowpool.attempt fetch-user"])
    assert json.loads(done.stdout) == {"trace_id": trace_id, "parent_id": span_id}


# ── spans of real runs ──────────────────────────────────────────────────────────


def test_a_run_traces_its_stages_attempts_and_compensations(exporter: InMemorySpanExporter) -> None:
    from flowpool import Flow, Step
    from flowpool import FlowStatus as Status

    user_tracer = otel_trace.get_tracer("user")
    tries = {"n": 0}

    def flaky(ctx: Any) -> str:
        tries["n"] += 1
        if tries["n"] == 1:
            raise OSError("once")
        with user_tracer.start_as_current_span("user work"):
            return "ok"

    def boom(ctx: Any) -> None:
        raise ValueError("boom")

    flow = (
        Flow("traced")
        .step("load", lambda ctx: 1, compensate=lambda ctx, v: None)
        .parallel("g", [Step("flaky", flaky, retries=1), Step("quick", lambda ctx: 2)])
        .step("boom", boom)
    )
    result = flow.run()
    assert result.status is Status.FAILED
    spans = exporter.get_finished_spans()
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (run,) = by_name["flowpool.run traced"]
    assert run.attributes is not None and run.attributes["flowpool.run_id"] == result.run_id
    assert run.status.status_code is StatusCode.ERROR
    stages = {span.name: span for span in spans if span.name.startswith("flowpool.stage ")}
    assert set(stages) == {"flowpool.stage load", "flowpool.stage g", "flowpool.stage boom"}
    assert all(parent_id(stage) == ids(run)[1] for stage in stages.values())
    flaky_attempts = sorted(by_name["flowpool.attempt flaky"], key=lambda s: s.attributes["flowpool.attempt"])  # type: ignore[index]
    assert [s.attributes["flowpool.attempt"] for s in flaky_attempts] == [1, 2]  # type: ignore[index]
    assert [s.attributes["flowpool.status"] for s in flaky_attempts] == ["failed", "completed"]  # type: ignore[index]
    assert flaky_attempts[0].status.status_code is StatusCode.ERROR
    assert all(parent_id(s) == ids(stages["flowpool.stage g"])[1] for s in flaky_attempts)
    (user,) = by_name["user work"]
    assert parent_id(user) == ids(flaky_attempts[1])[1]  # a user span nests under its attempt
    (undo,) = by_name["flowpool.compensation load"]
    assert parent_id(undo) == ids(stages["flowpool.stage load"])[1]
    assert undo.attributes is not None and undo.attributes["flowpool.status"] == "compensated"


def test_a_run_without_a_provider_makes_no_span(no_provider: None) -> None:
    from flowpool import Flow

    assert Flow("plain").step("a", lambda ctx: 1).run().ok


# ── the trace context in a process-mode run ─────────────────────────────────────

PROCESS_RUN = """
import json, sys
from flowpool import Flow, shutdown_workers

TRACED = sys.argv[1] == "traced"


def step(ctx):
    # Pickled by value (it lives in __main__): the worker imports nothing of this script.
    import sys

    before = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
    if not TRACED:
        return {"before": before}
    from opentelemetry import trace  # imported by the step itself: no module-level import
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())  # the worker's own provider
    with trace.get_tracer("user").start_as_current_span("in worker") as span:
        context = span.get_span_context()
        return {"trace_id": context.trace_id, "parent_id": span.parent.span_id if span.parent else None}


def item(ctx):
    return step(ctx)


flow = Flow("traced").step("one", step).map("each", item, items=lambda ctx: ["a", "b"], key=str)
if TRACED:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
result = flow.run(executor="process", max_workers=2)
assert result.ok, result.error
seen = {"one": result.values["one"], **{f"each/{key}": value for key, value in result.values["each"].items()}}
attempts = {}
if TRACED:
    for span in spans.get_finished_spans():
        if span.name.startswith("flowpool.attempt "):
            key = span.attributes.get("flowpool.item")
            name = span.attributes["flowpool.step"] + ("" if key is None else f"/{key}")
            attempts[name] = {"trace_id": span.context.trace_id, "parent_id": span.context.span_id}
shutdown_workers()
here = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
print(json.dumps({"seen": seen, "attempts": attempts, "parent_imports": here}))
"""


def test_spans_a_process_mode_step_starts_in_its_worker_are_children_of_its_attempt() -> None:
    done = json.loads(run_python(PROCESS_RUN, "traced").stdout)
    assert set(done["attempts"]) == {"one", "each/a", "each/b"}
    assert done["seen"] == done["attempts"]  # same trace, and the attempt's span is the parent
    assert len({seen["trace_id"] for seen in done["seen"].values()}) == 1


def test_a_process_mode_run_without_a_provider_sends_no_trace_and_imports_no_opentelemetry() -> None:
    done = json.loads(run_python(PROCESS_RUN, "plain").stdout)
    assert done["seen"] == {"one": {"before": []}, "each/a": {"before": []}, "each/b": {"before": []}}
    assert done["parent_imports"] == []


def test_process_mode_sends_the_carrier_apart_from_the_function(exporter: InMemorySpanExporter) -> None:
    """A lane is sent each function once: the carrier travels in the call, not in a wrapper."""
    from types import MappingProxyType

    from flowpool._context import Context
    from flowpool._executors import _lanestore

    _, _, attempt = tree(tracer_for())
    packer = _lanestore.CallPacker(split_trace=True)
    ctx = Context(input=None, flow="f", run_id="r", step="s", attempt=1, results=MappingProxyType({}))
    calls = [packer.prepare(attempt.around(len, in_process=False), ctx, ()) for _ in range(2)]
    attempt.finish(StepStatus.COMPLETED)
    assert calls[0].trace == attempt.carrier() and "traceparent" in calls[0].trace
    assert calls[0].function == calls[1].function  # the same key and bytes: sent to a lane once
    assert _lanestore.CallPacker(split_trace=True).prepare(len, ctx, ()).trace is None


def compensation_spans(exporter: InMemorySpanExporter, step: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == f"flowpool.compensation {step}"]


def test_compensations_that_run_together_each_have_a_span_under_their_stage(
    exporter: InMemorySpanExporter,
) -> None:
    from flowpool import Flow

    def undo(ctx: Any, value: Any) -> None:
        if ctx.key == "b" and ctx.attempt == 1:
            raise OSError("not yet")

    def boom(ctx: Any) -> None:
        raise ValueError("boom")

    flow = (
        Flow("together")
        .map(
            "items",
            lambda ctx: ctx.item,
            items=["a", "b", "c", "d"],
            key=lambda item: item,
            compensate=undo,
            compensate_retries=1,
            compensate_concurrency=3,
        )
        .step("boom", boom)
    )
    result = flow.run()
    assert sorted(result.compensated) == ["items['a']", "items['b']", "items['c']", "items['d']"]
    spans = compensation_spans(exporter, "items")
    (stage,) = [span for span in exporter.get_finished_spans() if span.name == "flowpool.stage items"]
    assert all(parent_id(span) == ids(stage)[1] for span in spans)
    seen = sorted((span.attributes["flowpool.item"], span.attributes["flowpool.attempt"]) for span in spans)  # type: ignore[index]
    assert seen == [("a", 1), ("b", 1), ("b", 2), ("c", 1), ("d", 1)]
    for span in spans:
        attributes = dict(span.attributes or {})
        assert set(attributes) == {
            "flowpool.run_id",
            "flowpool.step",
            "flowpool.attempt",
            "flowpool.item",
            "flowpool.status",
        }
        assert attributes["flowpool.run_id"] == result.run_id
        assert attributes["flowpool.step"] == "items"
        failed = (attributes["flowpool.item"], attributes["flowpool.attempt"]) == ("b", 1)
        assert attributes["flowpool.status"] == ("failed" if failed else "compensated")
        assert span.status.status_code is (StatusCode.ERROR if failed else StatusCode.UNSET)
        assert [event.name for event in span.events if event.name == "exception"] == (["exception"] if failed else [])


def test_a_concurrent_compensation_that_times_out_ends_its_span_as_an_error(exporter: InMemorySpanExporter) -> None:
    from flowpool import Flow, Step

    release = threading.Event()

    def stuck(ctx: Any, value: Any) -> None:
        release.wait(WAIT)

    def boom(ctx: Any) -> None:
        raise ValueError("boom")

    try:
        flow = (
            Flow("stuck-undo")
            .parallel(
                "g",
                [
                    Step("slow", lambda ctx: 1, compensate=stuck, compensate_timeout=0.2),
                    Step("fine", lambda ctx: 2, compensate=lambda ctx, v: None),
                ],
                compensate_concurrency=2,
            )
            .step("boom", boom)
        )
        result = flow.run()
    finally:
        release.set()
    assert result.not_compensated == ("slow",)
    (stage,) = [span for span in exporter.get_finished_spans() if span.name == "flowpool.stage g"]
    (slow,) = compensation_spans(exporter, "slow")
    (fine,) = compensation_spans(exporter, "fine")
    assert parent_id(slow) == parent_id(fine) == ids(stage)[1]
    assert slow.attributes is not None and slow.attributes["flowpool.status"] == "failed"
    assert slow.status.status_code is StatusCode.ERROR
    assert any(
        event.name == "exception" and "StepTimeoutError" in str((event.attributes or {}).get("exception.type"))
        for event in slow.events
    )
    assert fine.attributes is not None and fine.attributes["flowpool.status"] == "compensated"
    assert "flowpool.item" not in fine.attributes
