"""SPEC §5: parallel groups and their failure policies."""

from __future__ import annotations

import time

import pytest
import tenacity
from _behaviour_helpers import (
    BEST_EFFORT,
    FileBarrier,
    Gauge,
    Log,
    Record,
    fail,
    same_error,
    statuses,
    until_cancelled,
    value,
    wait_for,
)

from flowpool import Context, Event, Flow, FlowStatus, GroupStatus, Step, StepCancelledError, StepStatus
from flowpool.testing import AutoJumpClock

pytestmark = pytest.mark.timeout(60)


@pytest.mark.timeout(20)
def test_group_with_all_members_completed(run_kw, tmp_path):
    barrier = FileBarrier(tmp_path, 4)  # all four run at once

    def meet(ctx: Context) -> str:
        barrier.wait()
        return ctx.step

    flow = Flow("f").parallel("g", [Step(f"m{i}", meet) for i in range(4)])
    result = flow.run(**run_kw)
    assert result.ok
    assert result.groups["g"].status is GroupStatus.COMPLETED
    assert result.values == {f"m{i}": f"m{i}" for i in range(4)}


@pytest.mark.timeout(20)
def test_default_policy_partial_success(run_kw, gates, tmp_path):
    failed = gates.new()
    seen = Record(tmp_path)

    def bad(ctx: Context) -> None:
        failed.set()
        raise ValueError("bad")

    def survivor(ctx: Context) -> str:
        wait_for(failed)  # runs on after its sibling failed: no fail fast by default
        seen["cancelled"] = ctx.cancelled
        return "alive"

    flow = Flow("f").parallel("g", [Step("bad", bad), Step("survivor", survivor)]).step("next", value(1))
    result = flow.run(**run_kw)
    assert result.ok
    assert result.groups["g"].status is GroupStatus.PARTIAL
    assert result.steps["survivor"].status is StepStatus.COMPLETED
    assert seen["cancelled"] is False
    assert result.steps["bad"].status is StepStatus.FAILED
    assert result.values == {"survivor": "alive", "next": 1}
    assert result.error is None
    assert result.failed_stage is None


@pytest.mark.timeout(20)
def test_default_policy_fails_when_no_member_completed(run_kw, executors, tmp_path):
    e1, e2 = ValueError("one"), KeyError("two")
    calls = Log(tmp_path)
    flow = (
        Flow("f").parallel("g", [Step("a", fail(e1)), Step("b", fail(e2))]).step("next", lambda ctx: calls.add("next"))
    )
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert result.groups["g"].status is GroupStatus.FAILED
    assert result.failed_stage == "g"
    assert isinstance(result.error, ExceptionGroup)
    if executors.in_process:
        assert set(map(id, result.error.exceptions)) == {id(e1), id(e2)}
    else:  # copies sent back by the workers
        assert sorted(map(repr, result.error.exceptions)) == sorted(map(repr, (e1, e2)))
    assert result.steps["next"].status is StepStatus.SKIPPED
    assert list(calls) == []


@pytest.mark.timeout(20)
def test_fail_fast_cancels_members_that_have_not_started(run_kw, tmp_path):
    calls = Log(tmp_path)

    def record(ctx: Context) -> str:
        calls.add(ctx.step)
        return ctx.step

    def bad(ctx: Context) -> None:
        calls.add(ctx.step)
        raise ValueError("bad")

    flow = Flow("f").parallel(
        "g",
        [Step("first", record), Step("bad", bad), Step("third", record), Step("fourth", record)],
        fail_fast=True,
        max_concurrency=1,
    )
    result = flow.run(**run_kw)
    assert list(calls) == ["first", "bad"]
    assert statuses(result) == {
        "first": StepStatus.COMPLETED,
        "bad": StepStatus.FAILED,
        "third": StepStatus.CANCELLED,
        "fourth": StepStatus.CANCELLED,
    }
    for name in ("third", "fourth"):
        step = result.steps[name]
        assert step.attempts == 0
        assert step.value is None
        assert step.started_at is None
        assert isinstance(step.error, StepCancelledError)
    assert result.groups["g"].status is GroupStatus.FAILED
    assert result.status is FlowStatus.FAILED
    assert result.failed_stage == "g"
    assert isinstance(result.error, ExceptionGroup)
    assert any(isinstance(e, ValueError) for e in result.error.exceptions)


@pytest.mark.timeout(30)
@pytest.mark.modes("thread", "user-threadpool", "process", reason=BEST_EFFORT)
@pytest.mark.parametrize("how", ["raise", "raise_if_cancelled"])
def test_fail_fast_running_members_see_cancelled_and_get_no_more_retries(run_kw, gates, how, tmp_path):
    running = gates.new()
    seen = Record(tmp_path)
    attempts = Log(tmp_path)

    def bad(ctx: Context) -> None:
        wait_for(running)
        raise ValueError("bad")

    def busy(ctx: Context) -> None:
        attempts.add(ctx.attempt)
        running.set()
        seen["cancelled"] = until_cancelled(ctx)
        if how == "raise_if_cancelled":
            ctx.raise_if_cancelled()
        raise ConnectionError("would be retried")

    flow = Flow("f").parallel("g", [Step("bad", bad), Step("busy", busy, retries=5)], fail_fast=True)
    result = flow.run(clock=AutoJumpClock(), **run_kw)
    assert seen["cancelled"] is True
    assert list(attempts) == [1]
    busy_result = result.steps["busy"]
    assert busy_result.attempts == 1
    expected = StepStatus.CANCELLED if how == "raise_if_cancelled" else StepStatus.FAILED
    assert busy_result.status is expected
    assert result.groups["g"].status is GroupStatus.FAILED


@pytest.mark.timeout(30)
def test_fail_fast_member_in_backoff_gets_no_more_retries(run_kw, gates, tmp_path):
    first_failed = gates.new()
    attempts = Log(tmp_path)

    def flaky(ctx: Context) -> None:
        attempts.add(ctx.attempt)
        first_failed.set()
        raise ConnectionError("flaky")

    def bad(ctx: Context) -> None:
        wait_for(first_failed)
        raise ValueError("bad")

    retry = tenacity.Retrying(stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_fixed(20))
    flow = Flow("f").parallel("g", [Step("flaky", flaky, retry=retry), Step("bad", bad)], fail_fast=True)
    started = time.monotonic()
    result = flow.run(**run_kw)  # real clock: a retry after 20 s would show in the elapsed time
    assert time.monotonic() - started < 15
    assert list(attempts) == [1]
    flaky_result = result.steps["flaky"]
    assert flaky_result.attempts == 1
    assert flaky_result.status is StepStatus.FAILED
    assert isinstance(flaky_result.error, ConnectionError)


@pytest.mark.timeout(30)
def test_fail_fast_waits_for_running_members_which_may_complete_and_are_compensated(
    run_kw, executor_mode, gates, tmp_path
):
    running = gates.new()
    bad_settled = gates.new()
    order = Log(tmp_path)
    # On Dask ctx.cancelled stays False: the finisher returns once the loop has seen "bad" fail.
    fallback = bad_settled if executor_mode == "dask" else None

    def bad(ctx: Context) -> None:
        wait_for(running)
        raise ValueError("bad")

    def finisher(ctx: Context) -> str:
        running.set()
        until_cancelled(ctx, release=fallback)
        order.add("finisher returned")
        return "finished anyway"

    def listen(event: Event) -> None:
        if event.kind == "step_finished" and event.step == "bad":
            bad_settled.set()

    flow = (
        Flow("f")
        .step("before", value(0), compensate=lambda ctx, v: order.add("undo before"))
        .parallel(
            "g",
            [Step("bad", bad), Step("finisher", finisher, compensate=lambda ctx, v: order.add(f"undo {v}"))],
            fail_fast=True,
        )
        .step("after", lambda ctx: order.add("after ran"))
    )
    result = flow.run(on_event=listen, **run_kw)
    assert result.status is FlowStatus.FAILED
    finisher_result = result.steps["finisher"]
    assert finisher_result.status is StepStatus.COMPLETED
    assert finisher_result.value == "finished anyway"
    assert result.values["finisher"] == "finished anyway"
    assert result.groups["g"].status is GroupStatus.FAILED
    assert result.steps["after"].status is StepStatus.SKIPPED
    assert list(order) == ["finisher returned", "undo finished anyway", "undo before"]
    assert result.compensated == ("finisher", "before")


@pytest.mark.timeout(20)
def test_without_fail_fast_every_member_runs_to_its_own_end(run_kw, tmp_path):
    calls = Log(tmp_path)

    def record(ctx: Context) -> str:
        calls.add(ctx.step)
        return ctx.step

    members = [Step("bad", fail(ValueError("x"))), Step("a", record), Step("b", record), Step("c", record)]
    result = Flow("f").parallel("g", members, max_concurrency=1).run(**run_kw)
    assert list(calls) == ["a", "b", "c"]
    assert result.groups["g"].status is GroupStatus.PARTIAL


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("outcomes", "k", "expected"),
    [
        ("ccf", 2, GroupStatus.PARTIAL),
        ("ccf", 3, GroupStatus.FAILED),
        ("cff", 2, GroupStatus.FAILED),
        ("ccc", 3, GroupStatus.COMPLETED),
        ("cff", 1, GroupStatus.PARTIAL),
    ],
)
def test_min_successes(run_kw, outcomes, k, expected):
    members = [
        Step(f"m{i}", value(i) if outcome == "c" else fail(ValueError(f"m{i}"))) for i, outcome in enumerate(outcomes)
    ]
    result = Flow("f").parallel("g", members, min_successes=k).step("next", value("n")).run(**run_kw)
    assert result.groups["g"].status is expected
    assert result.ok is (expected is not GroupStatus.FAILED)
    assert result.steps["next"].status is (
        StepStatus.SKIPPED if expected is GroupStatus.FAILED else StepStatus.COMPLETED
    )


@pytest.mark.timeout(20)
@pytest.mark.parametrize("policy", [{}, {"min_successes": 1}, {"fail_fast": True}])
def test_a_required_member_that_does_not_complete_fails_the_group(run_kw, policy):
    members = [
        Step("a", value(1)),
        Step("b", value(2)),
        Step("needed", fail(ValueError("needed failed")), required=True),
    ]
    result = Flow("f").parallel("g", members, **policy).run(**run_kw)
    assert result.groups["g"].status is GroupStatus.FAILED
    assert result.status is FlowStatus.FAILED
    assert result.failed_stage == "g"
    assert isinstance(result.error, ExceptionGroup)


@pytest.mark.timeout(20)
def test_a_required_member_that_completes_is_fine(run_kw):
    members = [Step("needed", value(1), required=True), Step("optional", fail(ValueError("x")))]
    result = Flow("f").parallel("g", members).run(**run_kw)
    assert result.groups["g"].status is GroupStatus.PARTIAL
    assert result.ok


@pytest.mark.timeout(30)
def test_max_concurrency_is_honoured(run_kw, tmp_path):
    cap = 3
    running = Gauge(tmp_path)
    barrier = FileBarrier(tmp_path, cap)  # proves `cap` members do run together

    def member(ctx: Context) -> None:
        running.enter()
        try:
            barrier.wait()
        finally:
            running.leave()

    flow = Flow("f").parallel("g", [Step(f"m{i}", member) for i in range(cap * 3)], max_concurrency=cap)
    result = flow.run(**run_kw)
    assert result.ok, result.error
    assert running.peak == cap


@pytest.mark.timeout(20)
def test_max_concurrency_starts_members_in_declaration_order(run_kw, tmp_path):
    order = Log(tmp_path)
    names = [f"m{i}" for i in range(8)]
    flow = Flow("f").parallel("g", [Step(n, lambda ctx: order.add(ctx.step)) for n in names], max_concurrency=1)
    assert flow.run(**run_kw).ok
    assert list(order) == names


@pytest.mark.timeout(20)
def test_next_stage_starts_only_when_the_whole_group_settled(run_kw, gates, tmp_path):
    fast_done = gates.new()
    order = Log(tmp_path)

    def fast(ctx: Context) -> None:
        order.add("fast")
        fast_done.set()

    def slow(ctx: Context) -> None:
        wait_for(fast_done)
        order.add("slow")

    flow = Flow("f").parallel("g", [Step("fast", fast), Step("slow", slow)]).step("next", lambda ctx: order.add("next"))
    assert flow.run(**run_kw).ok
    assert list(order) == ["fast", "slow", "next"]


@pytest.mark.timeout(20)
def test_flow_failure_skips_later_stages_which_are_never_called(run_kw, executors, tmp_path):
    calls = Log(tmp_path)

    def record(ctx: Context) -> str:
        calls.add(ctx.step)
        return ctx.step

    error = RuntimeError("b broke")
    flow = (
        Flow("f")
        .step("a", record)
        .step("b", fail(error))
        .parallel("g", [Step("c", record), Step("d", record)])
        .step("e", record)
    )
    result = flow.run(**run_kw)
    assert list(calls) == ["a"]
    assert result.status is FlowStatus.FAILED
    assert same_error(result.error, error, executors.in_process)
    assert result.failed_stage == "b"
    assert statuses(result) == {
        "a": StepStatus.COMPLETED,
        "b": StepStatus.FAILED,
        "c": StepStatus.SKIPPED,
        "d": StepStatus.SKIPPED,
        "e": StepStatus.SKIPPED,
    }
    assert result.groups["g"].status is GroupStatus.SKIPPED
    for name in "cde":
        step = result.steps[name]
        assert (step.value, step.error, step.attempts, step.started_at) == (None, None, 0, None)
