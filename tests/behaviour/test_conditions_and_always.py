"""SPEC §13: conditions (``when``) and always-stages."""

from __future__ import annotations

from typing import Any

import pytest
from _behaviour_helpers import Log, fail, value

from flowpool import (
    Context,
    Flow,
    FlowDefinitionError,
    FlowStatus,
    FlowTimeoutError,
    GroupStatus,
    Step,
    StepStatus,
)

pytestmark = pytest.mark.timeout(60)


def _never(log: Log) -> Any:
    def fn(ctx: Context) -> None:
        log.add(ctx.step)

    return fn


# ── when ────────────────────────────────────────────────────────────────────────


def test_a_false_condition_skips_the_step_and_never_calls_it(run_kw, tmp_path):
    called = Log(tmp_path)
    seen: dict[str, Any] = {}

    def after(ctx: Context) -> str:
        seen.update(ctx.results)
        return "after"

    flow = (
        Flow("f")
        .step("a", value(1))
        .step("maybe", _never(called), when=lambda ctx: ctx.results["a"] > 5)
        .step("after", after)
    )
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.steps["maybe"].status is StepStatus.SKIPPED
    assert result.steps["maybe"].attempts == 0
    assert list(called) == []
    assert "maybe" not in result.values
    if run_kw["executor"] == "thread":
        assert seen == {"a": 1}  # later stages see no value for it


def test_a_condition_sees_the_input_and_earlier_results(run_kw):
    flow = (
        Flow("f")
        .step("a", value(3))
        .step("b", value("ran"), when=lambda ctx: ctx.input == "go" and ctx.results["a"] == 3)
    )
    assert flow.run("go", **run_kw).steps["b"].status is StepStatus.COMPLETED
    assert flow.run("stop", **run_kw).steps["b"].status is StepStatus.SKIPPED


def test_a_skipped_member_is_left_out_of_the_verdict_and_the_status(run_kw, tmp_path):
    called = Log(tmp_path)
    flow = Flow("f").parallel(
        "g",
        [Step("a", value(1)), Step("b", _never(called), when=lambda ctx: False), Step("c", value(3))],
        fail_fast=True,
    )
    result = flow.run(**run_kw)
    assert result.groups["g"].status is GroupStatus.COMPLETED
    assert result.groups["g"].counts[StepStatus.SKIPPED] == 1
    assert list(called) == []


def test_a_group_whose_members_were_all_skipped_is_skipped(run_kw):
    flow = Flow("f").parallel(
        "g", [Step("a", value(1), when=lambda ctx: False), Step("b", value(2), when=lambda ctx: not ctx)]
    )
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.groups["g"].status is GroupStatus.SKIPPED


def test_an_exception_in_when_fails_that_step(run_kw, tmp_path):
    called = Log(tmp_path)

    def broken(ctx: Context) -> bool:
        raise KeyError("no such flag")

    flow = Flow("f").step("a", _never(called), when=broken).step("b", value(2))
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert result.steps["a"].status is StepStatus.FAILED
    assert isinstance(result.steps["a"].error, KeyError)
    assert result.steps["b"].status is StepStatus.SKIPPED
    assert list(called) == []


def test_a_skipped_step_is_not_compensated(tmp_path):
    undone = Log(tmp_path)
    flow = (
        Flow("f")
        .step("a", value(1), compensate=lambda ctx, v: undone.add("a"))
        .step("b", value(2), when=lambda ctx: False, compensate=lambda ctx, v: undone.add("b"))
        .step("boom", fail(RuntimeError("x")))
    )
    result = flow.run()
    assert list(undone) == ["a"]
    assert result.compensated == ("a",)


def test_when_must_be_callable():
    with pytest.raises(FlowDefinitionError, match="when"):
        Flow("f").step("a", value(1), when=True)


# ── always-stages ───────────────────────────────────────────────────────────────


def test_an_always_stage_runs_last_with_the_outcome_of_a_completed_flow(run_kw, tmp_path):
    order = Log(tmp_path)

    def report(ctx: Context) -> str:
        order.add(("report", str(ctx.outcome), sorted(ctx.results)))
        return "reported"

    flow = Flow("f").step("a", value(1)).always("report", report).step("b", lambda ctx: order.add("b") or 2)
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.steps["report"].status is StepStatus.COMPLETED
    assert list(result.steps) == ["a", "report", "b"]  # declaration order in the result
    if run_kw["executor"] in ("thread",):
        assert list(order) == ["b", ("report", "completed", ["a", "b"])]


def test_always_stages_run_after_the_compensations_of_a_failed_flow(tmp_path):
    order = Log(tmp_path)
    flow = (
        Flow("f")
        .always("unlock", lambda ctx: order.add(("unlock", ctx.outcome)))
        .step("a", value(1), compensate=lambda ctx, v: order.add("undo a"))
        .step("boom", fail(RuntimeError("x")))
        .always("report", lambda ctx: order.add(("report", ctx.outcome)))
    )
    result = flow.run()
    assert result.status is FlowStatus.FAILED
    assert list(order) == ["undo a", ("unlock", FlowStatus.FAILED), ("report", FlowStatus.FAILED)]


def test_an_always_stage_sees_the_outcome_on_every_executor(run_kw):
    flow = Flow("f").step("boom", fail(RuntimeError("x"))).always("report", lambda ctx: str(ctx.outcome))
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert result.steps["report"].value == "failed"


def test_a_failing_always_stage_is_recorded_but_does_not_change_the_status(run_kw, caplog):
    flow = Flow("f").step("a", value(1)).always("report", fail(OSError("smtp down")))
    with caplog.at_level("WARNING", logger="flowpool"):
        result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.steps["report"].status is StepStatus.FAILED
    assert "report" in caplog.text


def test_an_always_stage_runs_after_a_run_timeout(tmp_path, gates):
    order = Log(tmp_path)
    release = gates.new()

    def slow(ctx: Context) -> None:
        while not ctx.cancelled and not release.is_set():
            release.wait(0.01)

    flow = Flow("f").step("slow", slow).always("cleanup", lambda ctx: order.add(ctx.outcome))
    result = flow.run(timeout=0.2)
    assert result.status is FlowStatus.FAILED
    assert isinstance(result.error, FlowTimeoutError)
    assert result.steps["cleanup"].status is StepStatus.COMPLETED
    assert list(order) == [FlowStatus.FAILED]


@pytest.mark.parametrize("option", ["required", "compensate", "when"])
def test_always_refuses_options_that_make_no_sense_there(option):
    with pytest.raises(FlowDefinitionError, match=option):
        Flow("f").always("x", value(1), **{option: (lambda *a: True) if option != "required" else True})
