"""SPEC §16: retry only what is transient, optional steps, late completions of abandoned attempts."""

from __future__ import annotations

import time
from typing import Any

import pytest
from _behaviour_helpers import WAIT, Log, fail, value, wait_for

from flowpool import (
    Context,
    Event,
    Flow,
    FlowDefinitionError,
    FlowStatus,
    GroupStatus,
    Step,
    StepStatus,
    StepTimeoutError,
)

pytestmark = pytest.mark.timeout(60)


def _counting(log: Log, error: BaseException) -> Any:
    def fn(ctx: Context) -> Any:
        log.add(ctx.attempt)
        raise error

    return fn


# ── retry_on ────────────────────────────────────────────────────────────────────


def test_retry_on_a_class_retries_only_failures_of_that_class(run_kw, tmp_path):
    transient, bug = Log(tmp_path, "transient"), Log(tmp_path, "bug")
    flow = Flow("f").parallel(
        "g",
        [
            Step("transient", _counting(transient, ConnectionError("reset")), retries=2, retry_on=OSError),
            Step("bug", _counting(bug, ValueError("malformed URL")), retries=2, retry_on=OSError),
        ],
    )
    result = flow.run(**run_kw)
    assert result.steps["transient"].attempts == 3
    assert list(transient) == [1, 2, 3]
    assert result.steps["bug"].attempts == 1
    assert result.steps["bug"].status is StepStatus.FAILED
    assert list(bug) == [1]


def test_retry_on_a_tuple_and_a_predicate(run_kw, tmp_path):
    by_tuple, by_predicate = Log(tmp_path, "t"), Log(tmp_path, "p")
    flow = Flow("f").parallel(
        "g",
        [
            Step("tuple", _counting(by_tuple, KeyError("k")), retries=1, retry_on=(ValueError, LookupError)),
            Step(
                "predicate",
                _counting(by_predicate, RuntimeError("HTTP 503")),
                retries=3,
                retry_on=lambda error: "503" in str(error),
            ),
        ],
    )
    result = flow.run(**run_kw)
    assert result.steps["tuple"].attempts == 2
    assert result.steps["predicate"].attempts == 4


def test_a_predicate_that_raises_fails_the_step_without_a_retry(run_kw, tmp_path):
    tries = Log(tmp_path)

    def broken(error: BaseException) -> bool:
        raise ZeroDivisionError("oops in my predicate")

    result = Flow("f").step("s", _counting(tries, OSError("io")), retries=3, retry_on=broken).run(**run_kw)
    step = result.steps["s"]
    assert step.status is StepStatus.FAILED
    assert step.attempts == 1
    assert isinstance(step.error, OSError)
    assert any("ZeroDivisionError" in note for note in getattr(step.error, "__notes__", []))


def test_a_timeout_is_matched_as_a_step_timeout_error(run_kw, tmp_path, started_timeout, gates):
    release = gates.new()

    def hang(ctx: Context) -> None:
        if ctx.attempt == 1:
            wait_for(release)

    flow = Flow("f").step("s", hang, timeout=started_timeout(0.2), retries=1, retry_on=StepTimeoutError)
    result = flow.run(**run_kw)
    assert result.steps["s"].status is StepStatus.COMPLETED
    assert result.steps["s"].attempts == 2


def test_retry_on_does_not_apply_to_compensations(tmp_path):
    tries = Log(tmp_path)

    def undo(ctx: Context, v: Any) -> None:
        tries.add(ctx.attempt)
        raise ValueError("still broken")

    flow = (
        Flow("f")
        .step("a", value(1), compensate=undo, compensate_retries=2, retry_on=OSError)
        .step("b", fail(RuntimeError("x")))
    )
    result = flow.run()
    assert list(tries) == [1, 2, 3]
    assert result.steps["a"].compensation is not None
    assert result.steps["a"].compensation.attempts == 3


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"retry_on": 3}, "retry_on"),
        ({"retry_on": (ValueError, "x")}, "retry_on"),
        ({"retry_on": ()}, "retry_on"),
        ({"retry_on": ValueError, "retry": None}, "retry"),
    ],
)
def test_bad_retry_on_is_a_definition_error(options, match):
    with pytest.raises(FlowDefinitionError, match=match):
        Flow("f").step("s", value(1), **options)


def test_retry_on_with_retry_is_a_definition_error():
    import tenacity

    with pytest.raises(FlowDefinitionError, match="not both"):
        Step("s", value(1), retry=tenacity.Retrying(), retry_on=ValueError)


# ── optional ────────────────────────────────────────────────────────────────────


def test_an_optional_step_that_fails_does_not_fail_the_flow(run_kw):
    flow = Flow("f").step("a", value(1)).step("email", fail(OSError("smtp down")), optional=True).step("c", value(3))
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.steps["email"].status is StepStatus.FAILED
    assert isinstance(result.steps["email"].error, OSError)
    assert result.steps["c"].status is StepStatus.COMPLETED


def test_an_optional_member_is_left_out_of_its_groups_verdict_and_status(run_kw):
    flow = Flow("f").parallel(
        "g",
        [Step("a", value(1)), Step("b", value(2)), Step("extra", fail(OSError("x")), optional=True)],
        fail_fast=True,
    )
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.groups["g"].status is GroupStatus.COMPLETED
    assert result.steps["extra"].status is StepStatus.FAILED
    assert result.groups["g"].counts[StepStatus.FAILED] == 1


def test_a_group_of_optional_members_that_all_failed_is_partial(run_kw):
    flow = Flow("f").parallel(
        "g", [Step("a", fail(OSError("a")), optional=True), Step("b", fail(OSError("b")), optional=True)]
    )
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.groups["g"].status is GroupStatus.PARTIAL


def test_a_completed_optional_step_is_compensated_as_usual(tmp_path):
    undone = Log(tmp_path)
    flow = (
        Flow("f")
        .step("charge", value("c-1"), compensate=lambda ctx, v: undone.add(("charge", v)))
        .step("email", value("sent"), optional=True, compensate=lambda ctx, v: undone.add(("email", v)))
        .step("ship", fail(RuntimeError("no stock")))
    )
    result = flow.run()
    assert result.status is FlowStatus.FAILED
    assert list(undone) == [("email", "sent"), ("charge", "c-1")]


def test_optional_with_required_is_a_definition_error():
    with pytest.raises(FlowDefinitionError, match="optional"):
        Flow("f").parallel("g", [Step("a", value(1), optional=True, required=True)])


# ── late completions of abandoned attempts ──────────────────────────────────────

SOFT = ("thread", "user-threadpool", "dask")


@pytest.mark.modes(*SOFT, reason="a process-mode timeout kills the worker: nothing returns late")
@pytest.mark.timeout(60)
def test_a_late_completion_is_recorded_and_compensated(run_kw, gates, tmp_path, started_timeout):
    release = gates.new()
    undone = Log(tmp_path)

    def send_email(ctx: Context) -> str:
        wait_for(release)  # the timeout passes first; then it sends anyway
        return "sent late"

    def on_event(event: Event) -> None:
        if event.kind == "step_finished" and event.step == "email":
            release.set()  # the abandoned attempt returns within the wait

    flow = (
        Flow("saga")
        .step("charge", value("c-1"), compensate=lambda ctx, v: undone.add(("charge", v)))
        .step("email", send_email, timeout=started_timeout(0.2), compensate=lambda ctx, v: undone.add(("email", v)))
    )
    result = flow.run(on_event=on_event, **run_kw)
    email = result.steps["email"]
    assert result.status is FlowStatus.FAILED
    assert email.status is StepStatus.TIMED_OUT
    assert email.value is None
    assert email.late_value == "sent late"
    assert list(undone) == [("email", "sent late"), ("charge", "c-1")]
    assert result.compensated == ("email", "charge")
    assert result.still_running == ()
    assert result.to_dict()["steps"]["email"]["late_value"] == "sent late"


@pytest.mark.modes("thread", "user-threadpool", reason="the late value must come back to this process in time")
@pytest.mark.timeout(60)
def test_a_late_none_is_a_late_completion_too(run_kw, gates, tmp_path):
    release = gates.new()
    undone = Log(tmp_path)

    def slow(ctx: Context) -> None:
        wait_for(release)

    def on_event(event: Event) -> None:
        if event.kind == "step_finished" and event.step == "slow":
            release.set()

    flow = Flow("f").step("slow", slow, timeout=0.2, compensate=lambda ctx, v: undone.add(("slow", v)))
    result = flow.run(on_event=on_event, **run_kw)
    assert result.steps["slow"].status is StepStatus.TIMED_OUT
    assert list(undone) == [("slow", None)]


@pytest.mark.modes("thread", "user-threadpool", reason="needs an attempt that outlives the run in this process")
@pytest.mark.timeout(60)
def test_an_attempt_still_running_after_the_wait_is_named_not_compensated(run_kw, gates, tmp_path, caplog):
    release = gates.new()
    undone = Log(tmp_path)

    def stuck(ctx: Context) -> str:
        wait_for(release)  # ignores ctx.cancelled
        return "too late"

    flow = Flow("f").step("stuck", stuck, timeout=0.2, compensate=lambda ctx, v: undone.add(v))
    try:
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="flowpool"):
            result = flow.run(**run_kw)
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert result.status is FlowStatus.FAILED
    assert result.still_running == ("stuck",)
    assert result.not_compensated == ()
    assert result.steps["stuck"].late_value is None
    assert list(undone) == []
    assert elapsed < 0.2 + 0.5 + WAIT / 2
    assert "still running" in caplog.text
    assert result.to_dict()["still_running"] == ["stuck"]


@pytest.mark.modes("thread", reason="in-process timing of the wait")
@pytest.mark.timeout(60)
def test_a_completed_run_does_not_wait_for_attempts_that_ended(run_kw):
    started = time.monotonic()
    result = Flow("f").step("a", value(1)).run(**run_kw)
    assert result.ok
    assert result.still_running == ()
    assert time.monotonic() - started < WAIT
