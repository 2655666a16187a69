"""SPEC §13: subflows — a Flow wherever a step function goes, run by the same settle loop."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from _behaviour_helpers import Gate, Log, fail, until_cancelled, value, wait_for

from flowpool import (
    Context,
    Flow,
    FlowDefinitionError,
    FlowStatus,
    GroupStatus,
    Step,
    StepStatus,
    StepTimeoutError,
)

pytestmark = pytest.mark.timeout(120)


def _logged(log: Log, name: str, result: Any = None) -> Any:
    def fn(ctx: Context) -> Any:
        log.add(("run", ctx.flow, name, ctx.key))
        return result if result is not None else f"{name}:{ctx.input}"

    return fn


def _undo(log: Log, name: str) -> Any:
    def undo(ctx: Context, v: Any) -> None:
        log.add(("undo", ctx.flow, name, ctx.key))

    return undo


def _saga(log: Log, name: str = "child", fail_at: str | None = None) -> Flow:
    """A child of three compensated steps; ``fail_at`` raises instead of running."""
    flow = Flow(name)
    for step in ("x", "y", "z"):
        fn = fail(ValueError(f"{step} failed")) if step == fail_at else _logged(log, step)
        flow.step(step, fn, compensate=_undo(log, step))
    return flow


def undone(log: Log) -> list[str]:
    return [entry[2] for entry in log if entry[0] == "undo"]


# ── value, input, results ───────────────────────────────────────────────────────


def test_a_subflow_s_value_is_its_values_and_its_input_the_parent_s(run_kw, tmp_path):
    log = Log(tmp_path)
    child = Flow("child").step("x", _logged(log, "x")).step("y", lambda ctx: (ctx.input, ctx.results["x"]))
    flow = Flow("parent").step("sub", child).step("after", lambda ctx: ctx.results["sub"]["y"])
    result = flow.run("in", **run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.values["sub"] == {"x": "x:in", "y": ("in", "x:in")}
    assert result.values["after"] == ("in", "x:in")
    sub = result.steps["sub"]
    assert sub.status is StepStatus.COMPLETED and sub.attempts == 1
    assert sub.subflow is not None and sub.subflow.status is FlowStatus.COMPLETED
    assert sub.subflow.name == "child" and set(sub.subflow.steps) == {"x", "y"}
    assert list(log) == [("run", "child", "x", None)]  # ctx.flow is the child's name
    assert result.to_dict()["steps"]["sub"]["subflow"]["steps"]["x"]["status"] == "completed"
    assert result.steps["after"].subflow is None


def test_input_option_gives_the_child_its_input(run_kw):
    child = Flow("child").step("echo", lambda ctx: ctx.input)
    flow = Flow("parent").step("a", value(20)).step("sub", child, input=lambda ctx: ctx.results["a"] + 1)
    result = flow.run("ignored", **run_kw)
    assert result.values["sub"] == {"echo": 21}


def test_an_input_callable_that_raises_fails_the_step(run_kw):
    child = Flow("child").step("echo", lambda ctx: ctx.input)

    def broken(ctx: Context) -> Any:
        raise KeyError("nope")

    result = Flow("parent").step("sub", child, input=broken).run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert result.steps["sub"].status is StepStatus.FAILED
    assert isinstance(result.steps["sub"].error, KeyError)
    assert result.steps["sub"].subflow is None


def test_a_map_of_subflows_gives_each_child_its_item(run_kw):
    child = Flow("child").step("double", lambda ctx: ctx.input * 2)
    flow = Flow("parent").map("each", child, items=[1, 2, 3])
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert dict(result.values["each"]) == {0: {"double": 2}, 1: {"double": 4}, 2: {"double": 6}}
    items = result.maps["each"].items
    assert [item.subflow.values["double"] for item in items] == [2, 4, 6]


def test_a_group_member_may_be_a_subflow(run_kw):
    child = Flow("child").step("c", value("inner"))
    flow = Flow("parent").parallel("g", [Step("sub", child), {"name": "plain", "fn": value(1)}])
    result = flow.run(**run_kw)
    assert result.groups["g"].status is GroupStatus.COMPLETED
    assert result.values["sub"] == {"c": "inner"}


def test_a_false_condition_skips_a_subflow(run_kw, tmp_path):
    log = Log(tmp_path)
    flow = Flow("parent").step("sub", _saga(log), when=lambda ctx: False).step("after", value(1))
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.steps["sub"].status is StepStatus.SKIPPED
    assert list(log) == []


# ── failure and compensation ────────────────────────────────────────────────────


def test_a_failed_child_compensates_itself_and_the_parent_sees_its_error(run_kw, tmp_path):
    log = Log(tmp_path)
    flow = Flow("parent").step("sub", _saga(log, fail_at="z")).step("never", _logged(log, "never"))
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.FAILED
    sub = result.steps["sub"]
    assert sub.status is StepStatus.FAILED
    assert isinstance(sub.error, ValueError) and "z failed" in str(sub.error)
    assert result.failed_stage == "sub"
    assert sub.subflow is not None and sub.subflow.status is FlowStatus.FAILED
    assert sub.subflow.compensated == ("y", "x")
    assert undone(log) == ["y", "x"]
    assert result.steps["never"].status is StepStatus.SKIPPED


def test_a_completed_child_is_undone_as_a_unit_at_its_place(run_kw, tmp_path):
    log = Log(tmp_path)
    flow = (
        Flow("parent")
        .step("a", _logged(log, "a"), compensate=_undo(log, "a"))
        .step("sub", _saga(log))
        .step("b", _logged(log, "b"), compensate=_undo(log, "b"))
        .step("boom", fail(RuntimeError("late")))
    )
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert undone(log) == ["b", "z", "y", "x", "a"]
    assert result.compensated == ("b", "sub/z", "sub/y", "sub/x", "a")
    child = result.steps["sub"].subflow
    assert child is not None and child.status is FlowStatus.COMPLETED
    assert child.compensated == ("z", "y", "x")
    assert child.steps["y"].compensation is not None and child.steps["y"].compensation.ok


def test_nested_compensation_runs_in_reverse_order_three_levels_deep(run_kw, tmp_path):
    log = Log(tmp_path)
    inner = Flow("inner").step("i1", _logged(log, "i1"), compensate=_undo(log, "i1"))
    inner.step("i2", _logged(log, "i2"), compensate=_undo(log, "i2"))
    middle = Flow("middle").step("m1", _logged(log, "m1"), compensate=_undo(log, "m1"))
    middle.step("deep", inner).step("m2", _logged(log, "m2"), compensate=_undo(log, "m2"))
    outer = Flow("outer").step("o1", _logged(log, "o1"), compensate=_undo(log, "o1"))
    outer.step("mid", middle).step("boom", fail(RuntimeError("late")))
    result = outer.run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert undone(log) == ["m2", "i2", "i1", "m1", "o1"]
    assert result.compensated == ("mid/m2", "mid/deep/i2", "mid/deep/i1", "mid/m1", "o1")
    middle_result = result.steps["mid"].subflow
    assert middle_result is not None and middle_result.compensated == ("m2", "deep/i2", "deep/i1", "m1")
    inner_result = middle_result.steps["deep"].subflow
    assert inner_result is not None and inner_result.compensated == ("i2", "i1")


def test_a_failing_middle_child_undoes_its_completed_grandchild_first(run_kw, tmp_path):
    log = Log(tmp_path)
    inner = Flow("inner").step("i1", _logged(log, "i1"), compensate=_undo(log, "i1"))
    middle = Flow("middle").step("m1", _logged(log, "m1"), compensate=_undo(log, "m1"))
    middle.step("deep", inner).step("m2", fail(ValueError("m2 failed")))
    result = Flow("outer").step("mid", middle).run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert undone(log) == ["i1", "m1"]
    mid = result.steps["mid"]
    assert mid.status is StepStatus.FAILED and "m2 failed" in str(mid.error)


def test_retries_rerun_the_whole_child_after_it_compensated_itself(run_kw, tmp_path):
    log = Log(tmp_path)
    tries = Log(tmp_path, "tries")

    def flaky(ctx: Context) -> str:
        tries.add(1)
        if len(tries) < 2:
            raise ValueError("first time")
        return "ok"

    child = Flow("child").step("x", _logged(log, "x"), compensate=_undo(log, "x")).step("flaky", flaky)
    result = Flow("parent").step("sub", child, retries=1).run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.steps["sub"].attempts == 2
    assert [entry[:3] for entry in log] == [("run", "child", "x"), ("undo", "child", "x"), ("run", "child", "x")]
    assert result.values["sub"] == {"x": "x:None", "flaky": "ok"}


def test_timeout_is_the_child_s_run_timeout(run_kw, tmp_path, executor_mode):
    log = Log(tmp_path)
    release = Gate(tmp_path)

    def hang(ctx: Context) -> None:
        until_cancelled(ctx, release=release)

    child = Flow("child").step("x", _logged(log, "x"), compensate=_undo(log, "x")).step("hang", hang)
    try:
        result = Flow("parent").step("sub", child, timeout=1.0 if executor_mode == "dask" else 0.3).run(**run_kw)
    finally:
        release.set()
    sub = result.steps["sub"]
    assert result.status is FlowStatus.FAILED
    assert sub.status is StepStatus.TIMED_OUT
    assert isinstance(sub.error, StepTimeoutError)
    assert undone(log) == ["x"]  # the child stopped and compensated itself
    assert sub.subflow is not None and sub.subflow.status is FlowStatus.FAILED


def test_fail_fast_cancels_a_running_subflow_which_compensates_itself(run_kw, tmp_path):
    log = Log(tmp_path)
    started = Gate(tmp_path, "started")
    release = Gate(tmp_path, "release")

    def wait_then_see(ctx: Context) -> None:
        started.set()
        until_cancelled(ctx, release=release)

    def fail_when_started(ctx: Context) -> None:
        wait_for(started, "the subflow's second step")
        raise ValueError("sibling failed")

    child = Flow("child").step("x", _logged(log, "x"), compensate=_undo(log, "x")).step("wait", wait_then_see)
    flow = Flow("parent").parallel("g", [Step("sub", child), Step("bad", fail_when_started)], fail_fast=True)
    try:
        result = flow.run(**run_kw)
    finally:
        release.set()
    assert result.status is FlowStatus.FAILED
    assert result.steps["sub"].status is StepStatus.CANCELLED
    assert undone(log) == ["x"]
    assert result.steps["sub"].subflow is not None
    assert result.steps["sub"].subflow.status is FlowStatus.CANCELLED


def test_a_map_of_sagas_undoes_only_the_failed_order(run_kw, tmp_path):
    log = Log(tmp_path)

    def charge(ctx: Context) -> str:
        if ctx.input == "declined":
            raise ValueError("card declined")
        return f"charged {ctx.input}"

    order = (
        Flow("order")
        .step("reserve", _logged(log, "reserve"), compensate=_undo(log, "reserve"))
        .step("charge", charge, compensate=_undo(log, "charge"))
        .step("ship", _logged(log, "ship"), compensate=_undo(log, "ship"))
    )
    flow = Flow("batch").map("orders", order, items=["a", "declined", "c"], key=str, tolerated_failures=1)
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    orders = result.maps["orders"]
    assert orders.counts[StepStatus.COMPLETED] == 2 and orders.counts[StepStatus.FAILED] == 1
    assert undone(log) == ["reserve"]
    failed = orders.items[1]
    assert failed.key == "declined" and failed.subflow is not None
    assert failed.subflow.compensated == ("reserve",)
    assert "card declined" in str(failed.error)
    assert set(result.values["orders"]) == {"a", "c"}


def test_a_failed_parent_undoes_each_completed_child_of_a_map(run_kw, tmp_path):
    log = Log(tmp_path)
    child = Flow("child").step("x", _logged(log, "x"), compensate=_undo(log, "x"))
    flow = Flow("parent").map("each", child, items=[1, 2, 3]).step("boom", fail(RuntimeError("late")))
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert [entry for entry in log if entry[0] == "undo"] == [("undo", "child", "x", None)] * 3
    assert result.compensated == ("each[2]/x", "each[1]/x", "each[0]/x")
    assert all(item.subflow.compensated == ("x",) for item in result.maps["each"].items)


# ── the one loop ────────────────────────────────────────────────────────────────


def test_a_map_of_200_subflows_on_two_workers_does_not_deadlock(executors):
    child = Flow("child").step("a", lambda ctx: ctx.input + 1).step("b", lambda ctx: ctx.results["a"] * 2)
    flow = Flow("parent").map("each", child, items=range(200))
    result = flow.run(**executors.make(max_workers=2))
    assert result.status is FlowStatus.COMPLETED
    assert result.maps["each"].counts[StepStatus.COMPLETED] == 200
    assert result.values["each"][199] == {"a": 200, "b": 400}


@pytest.mark.modes("thread", reason="conditions run in the caller's thread; checked where steps run beside it")
def test_a_child_s_conditions_run_in_the_caller_s_thread(run_kw):
    caller = threading.get_ident()
    seen: list[int] = []

    def when(ctx: Context) -> bool:
        seen.append(threading.get_ident())
        return True

    child = Flow("child").step("c", value(1), when=when)
    Flow("parent").map("each", child, items=range(5)).run(**run_kw)
    assert seen == [caller] * 5


def test_events_from_inside_a_child_carry_its_path(run_kw):
    events: list[Any] = []
    child = Flow("child").step("charge", value(1))
    flow = Flow("parent").step("sub", child).map("orders", child, items=["k"], key=str)
    flow.run(on_event=events.append, **run_kw)
    finished = [(e.path, e.step, e.item) for e in events if e.kind == "step_finished"]
    assert (("sub",), "sub", None) in finished
    assert (("sub", "charge"), "charge", None) in finished
    assert (("orders", "charge"), "charge", "k") in finished
    assert (("orders",), "orders", "k") in finished
    assert [e.kind for e in events].count("flow_finished") == 1


# ── definition errors ───────────────────────────────────────────────────────────


def test_a_flow_cannot_contain_itself_at_any_depth():
    outer = Flow("outer")
    middle = Flow("middle").step("in", outer)
    with pytest.raises(FlowDefinitionError, match="contains flow 'outer'"):
        outer.step("mid", middle)
    with pytest.raises(FlowDefinitionError, match="cannot run itself"):
        outer.step("me", outer)
    with pytest.raises(FlowDefinitionError):
        outer.map("each", middle, items=[1])
    with pytest.raises(FlowDefinitionError):
        outer.parallel("g", [Step("mid", middle)])
    assert outer.stages == ()


def test_compensate_on_a_subflow_and_input_on_a_plain_step_are_definition_errors():
    child = Flow("child").step("c", value(1))
    with pytest.raises(FlowDefinitionError, match="compensate"):
        Flow("p").step("sub", child, compensate=lambda ctx, v: None)
    with pytest.raises(FlowDefinitionError, match="input"):
        Flow("p").step("plain", value(1), input=lambda ctx: 1)
    with pytest.raises(FlowDefinitionError, match="always-stage"):
        Flow("p").always("sub", child)


@pytest.mark.modes("thread", "user-threadpool", reason="records logged in this process's threads")
def test_log_records_inside_a_child_name_its_step_and_path(run_kw):
    import logging

    from flowpool import LogContextFilter

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(LogContextFilter())
    logger = logging.getLogger("test_subflows.child")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def charge(ctx: Context) -> None:
        logger.info("charging %s", ctx.input)

    try:
        child = Flow("order").step("charge", charge)
        Flow("shop").map("orders", child, items=["k"], key=str).run(**run_kw)
    finally:
        logger.removeHandler(handler)
    (record,) = records
    assert record.getMessage() == "charging k"
    attributes = record.__dict__
    assert (attributes["flowpool_flow"], attributes["flowpool_step"]) == ("order", "charge")
    assert attributes["flowpool_path"] == ("orders", "charge")


def test_compensation_events_of_a_child_undone_as_a_unit_carry_its_path(run_kw):
    events: list[Any] = []
    child = Flow("child").step("x", value(1), compensate=lambda ctx, v: None)
    flow = Flow("parent").map("each", child, items=["k"], key=str).step("boom", fail(RuntimeError("late")))
    flow.run(on_event=events.append, **run_kw)
    undone = [(e.path, e.step, e.item, e.index) for e in events if e.kind == "compensation_finished"]
    assert undone == [(("each", "x"), "x", "k", 0)]


def test_a_child_s_compensation_retries_end_before_the_next_compensation_starts(run_kw, tmp_path):
    # One at a time, as at the top level: a compensation's retry comes before the next one
    # (the frame's compensator started the next while the first waited out its backoff).
    log = Log(tmp_path)
    flaky = Log(tmp_path, "flaky")

    def undo_twice(ctx: Context, v: Any) -> None:
        log.add(("undo", ctx.flow, "m2", ctx.attempt))
        flaky.add(1)
        if len(flaky) < 2:
            raise ValueError("first undo fails")

    child = Flow("child").parallel(
        "g",
        [
            Step("m1", value(1), compensate=lambda ctx, v: log.add(("undo", ctx.flow, "m1", ctx.attempt))),
            Step("m2", value(2), compensate=undo_twice, compensate_retries=1),
        ],
    )
    child.step("boom", fail(RuntimeError("late")))
    result = Flow("parent").step("sub", child).run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert [entry[2:] for entry in log] == [("m2", 1), ("m2", 2), ("m1", 1)]
    sub = result.steps["sub"].subflow
    assert sub is not None and sub.compensated == ("m2", "m1")
