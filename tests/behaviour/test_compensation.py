"""SPEC §5: compensation."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from _behaviour_helpers import WAIT, Log, Record, fail, same_error, value, wait_for

from flowpool import CompensationResult, Context, Flow, FlowStatus, Step, StepStatus
from flowpool.testing import AutoJumpClock

pytestmark = pytest.mark.timeout(60)


@pytest.mark.timeout(30)
def test_compensation_runs_in_reverse_declaration_order(run_kw, executors, gates, tmp_path):
    b_done = gates.new()
    undone = Log(tmp_path)
    threads = Log(tmp_path)

    def undo(ctx: Context, v: Any) -> None:
        threads.add((os.getpid(), threading.get_ident()))
        undone.add((ctx.step, v))

    def late_a(ctx: Context) -> str:
        wait_for(b_done)  # g2a completes after g2b: completion order is not what counts
        return "g2a"

    def early_b(ctx: Context) -> str:
        b_done.set()
        return "g2b"

    flow = (
        Flow("f")
        .step("s1", value("s1"), compensate=undo)
        .parallel("g1", [Step("g1a", value("g1a"), compensate=undo), Step("g1b", value("g1b"), compensate=undo)])
        .step("s2", value("s2"))  # no compensation
        .parallel(
            "g2",
            [
                Step("g2a", late_a, compensate=undo),
                Step("g2b", early_b, compensate=undo),
                Step("g2c", fail(ValueError("g2c")), compensate=undo),
            ],
            min_successes=3,
        )
        .step("s3", value("s3"), compensate=undo)
    )
    result = flow.run(**run_kw)
    expected = ["g2b", "g2a", "g1b", "g1a", "s1"]
    assert result.status is FlowStatus.FAILED
    assert result.failed_stage == "g2"
    assert list(undone) == [(name, name) for name in expected]
    assert result.compensated == tuple(expected)
    assert result.not_compensated == ()
    if executors.in_process:
        assert set(threads) == {(os.getpid(), threading.get_ident())}, "compensations run in the caller's thread"
    else:  # SPEC §4: they run the same way as their step, in a worker process
        assert os.getpid() not in {pid for pid, _ in threads}, "compensations run where their steps run"
    for name in expected:
        compensation = result.steps[name].compensation
        assert compensation is not None
        assert compensation.status == "compensated"
        assert compensation.ok
        assert compensation.error is None
        assert compensation.attempts == 1
    for name in ("s2", "g2c", "s3"):
        assert result.steps[name].compensation is None


@pytest.mark.timeout(20)
def test_compensation_context_holds_every_completed_value(run_kw, tmp_path):
    seen = Record(tmp_path)

    def undo(ctx: Context, v: Any) -> None:
        seen[ctx.step] = (dict(ctx.results), ctx.input, ctx.flow, ctx.run_id, v)

    flow = (
        Flow("comp")
        .step("a", value(1), compensate=undo)
        .parallel("g", [Step("b", value(2), compensate=undo), Step("c", value(3))])
        .parallel("h", [Step("d", value(4), compensate=undo), Step("e", fail(ValueError("e")))], fail_fast=True)
    )
    result = flow.run("in", **run_kw)
    everything = {"a": 1, "b": 2, "c": 3, "d": 4}
    assert set(seen) == {"a", "b", "d"}
    for name, (results, input_, flow_name, run_id, v) in seen.items():
        assert results == everything, name
        assert (input_, flow_name, run_id) == ("in", "comp", result.run_id)
        assert v == everything[name]


@pytest.mark.timeout(20)
def test_nothing_is_compensated_when_the_flow_completes(run_kw, tmp_path):
    undone = Log(tmp_path)
    flow = Flow("f").step("a", value(1), compensate=lambda ctx, v: undone.add(v))
    flow.parallel("g", [Step("b", value(2), compensate=lambda ctx, v: undone.add(v)), Step("c", fail(ValueError()))])
    result = flow.run(**run_kw)
    assert result.ok
    assert list(undone) == []
    assert result.compensated == ()
    assert result.not_compensated == ()
    assert all(step.compensation is None for step in result.steps.values())


@pytest.mark.timeout(20)
def test_steps_that_did_not_complete_are_never_compensated(run_kw, gates, tmp_path):
    release = gates.new()
    undone = Log(tmp_path)

    def undo(ctx: Context, v: Any) -> None:
        undone.add(ctx.step)

    flow = Flow("f").parallel(
        "g",
        [
            Step("failed", fail(ValueError("x")), compensate=undo),
            Step("timed-out", lambda ctx: wait_for(release), timeout=0.2, compensate=undo),
            Step("cancelled", value(1), compensate=undo),
        ],
        fail_fast=True,
        max_concurrency=2,
    )
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert result.steps["cancelled"].status is StepStatus.CANCELLED
    assert list(undone) == []
    assert result.compensated == ()
    assert result.not_compensated == ()


@pytest.mark.timeout(20)
def test_a_failing_compensation_is_recorded_and_the_rest_still_run(run_kw, executors, tmp_path):
    undone = Log(tmp_path)
    broken = OSError("cannot undo b")

    def undo(ctx: Context, v: Any) -> None:
        undone.add(ctx.step)
        if ctx.step == "b":
            raise broken

    flow = (
        Flow("f")
        .step("a", value(1), compensate=undo)
        .step("b", value(2), compensate=undo)
        .step("c", value(3), compensate=undo)
        .step("boom", fail(ValueError("boom")))
    )
    result = flow.run(clock=AutoJumpClock(), **run_kw)
    assert list(undone) == ["c", "b", "a"]
    assert result.compensated == ("c", "a")
    assert result.not_compensated == ("b",)
    compensation = result.steps["b"].compensation
    assert compensation is not None
    assert compensation.status == "failed"
    assert not compensation.ok
    assert same_error(compensation.error, broken, executors.in_process)
    assert compensation.attempts == 1
    assert result.status is FlowStatus.FAILED
    assert isinstance(result.error, ValueError), "a failing compensation does not replace the flow's error"


@pytest.mark.timeout(20)
def test_compensate_retries(run_kw, tmp_path):
    calls = Log(tmp_path)

    def undo_third_time(ctx: Context, v: Any) -> None:
        calls.add((ctx.step, ctx.attempt))
        if ctx.step == "always" or ctx.attempt < 3:
            raise OSError(f"{ctx.step} attempt {ctx.attempt}")

    flow = (
        Flow("f")
        .step("eventually", value(1), compensate=undo_third_time, compensate_retries=2)
        .step("always", value(2), compensate=undo_third_time, compensate_retries=1)
        .step("boom", fail(ValueError("boom")))
    )
    result = flow.run(clock=AutoJumpClock(), **run_kw)
    assert list(calls) == [("always", 1), ("always", 2), ("eventually", 1), ("eventually", 2), ("eventually", 3)]
    assert result.steps["eventually"].compensation == CompensationResult("compensated", None, 3)
    always = result.steps["always"].compensation
    assert always is not None
    assert always.status == "failed"
    assert always.attempts == 2
    assert str(always.error) == "always attempt 2"
    assert result.compensated == ("eventually",)
    assert result.not_compensated == ("always",)


@pytest.mark.timeout(30)
def test_compensate_timeout(run_kw, gates, tmp_path, started_timeout):
    release = gates.new()
    undone = Log(tmp_path)

    def stuck_undo(ctx: Context, v: Any) -> None:
        undone.add(f"{ctx.step} started")
        wait_for(release)

    flow = (
        Flow("f")
        .step("a", value(1), compensate=lambda ctx, v: undone.add("a"))
        .step("stuck", value(2), compensate=stuck_undo, compensate_timeout=started_timeout(0.2), compensate_retries=1)
        .step("boom", fail(ValueError("boom")))
    )
    started = time.monotonic()
    result = flow.run(**run_kw)
    assert time.monotonic() - started < WAIT
    assert list(undone) == ["stuck started", "stuck started", "a"]
    compensation = result.steps["stuck"].compensation
    assert compensation is not None
    assert compensation.status == "failed"
    assert compensation.attempts == 2
    assert isinstance(compensation.error, TimeoutError)
    assert result.not_compensated == ("stuck",)
    assert result.compensated == ("a",)


@pytest.mark.timeout(20)
def test_a_step_completed_after_retries_is_compensated_once(run_kw, tmp_path):
    undone = Log(tmp_path)

    def flaky(ctx: Context) -> int:
        if ctx.attempt == 1:
            raise ConnectionError("flaky")
        return ctx.attempt

    flow = (
        Flow("f")
        .step("flaky", flaky, retries=2, compensate=lambda ctx, v: undone.add(v))
        .step("boom", fail(ValueError()))
    )
    result = flow.run(clock=AutoJumpClock(), **run_kw)
    assert list(undone) == [2]
    assert result.compensated == ("flaky",)


@pytest.mark.modes("thread", reason="counts the loop's wake-ups, the same for every backend")
def test_a_due_compensation_retry_with_no_free_slot_does_not_spin_the_loop(run_kw, tmp_path):
    """With every slot busy, a retry whose backoff has passed waits for a slot to free up:
    the compensations' loop sleeps until a message comes instead of waking again and again."""
    import threading

    from flowpool import _timers

    release = threading.Event()
    tries: list[int] = []
    waits = {"n": 0}
    real_wait = _timers.Timers.wait

    def counting_wait(self: Any, *args: Any) -> Any:
        waits["n"] += 1
        return real_wait(self, *args)

    def flaky_undo(ctx: Context, v: Any) -> None:
        tries.append(1)
        if len(tries) == 1:
            raise ValueError("first try fails")

    def slow_undo(ctx: Context, v: Any) -> None:
        release.wait(10)

    # Undone latest first: flaky and slow-b start; flaky fails, slow-a takes its slot, and its
    # retry falls due while both slow undos hold the two slots.
    members = [
        Step("slow-a", value(1), compensate=slow_undo),
        Step("slow-b", value(1), compensate=slow_undo),
        Step("flaky", value(2), compensate=flaky_undo, compensate_retries=1),
    ]
    flow = Flow("f").parallel("g", members, compensate_concurrency=2).step("boom", fail(RuntimeError("x")))
    timer = threading.Timer(1.0, release.set)  # the slow undos hold both slots for a second
    timer.start()
    _timers.Timers.wait = counting_wait  # type: ignore[method-assign]
    try:
        result = flow.run(**run_kw)
    finally:
        _timers.Timers.wait = real_wait  # type: ignore[method-assign]
        release.set()
        timer.cancel()
    assert set(result.compensated) == {"flaky", "slow-a", "slow-b"} and len(tries) == 2
    assert waits["n"] < 200, f"the loop woke {waits['n']} times while two compensations held both slots"
