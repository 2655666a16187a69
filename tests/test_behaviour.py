"""SPEC §§3-8, end to end: one behaviour suite run in every executor mode.

Every test takes the ``executor`` fixture (through ``run_kw``/``executors``), so it
runs once per mode listed in ``conftest.MODES``: flowpool's threads, a user's thread
pool, flowpool's worker processes and a Dask cluster. Tests that only make sense in
some modes carry ``@pytest.mark.modes(...)`` with the reason.

Step functions may run in another process, so everything they share with the test
lives in files under ``tmp_path`` (``_behaviour_helpers``): ``Log`` and ``Record``
stand in for lists and dicts, ``Gate`` (from the ``gates`` fixture, released even
when a test fails) and ``FileBarrier`` for ``threading.Event``/``Barrier``. Step
functions are defined inside the tests, so cloudpickle sends them by value; the
helpers they call travel by reference. Nothing sleeps to coordinate, and every
blocking wait has a timeout. Backoffs run on ``AutoJumpClock``; timeout semantics
use the real clock with generous bounds.

Where a mode's documented semantics differ (SPEC §§4-5, §9), a test asserts each
mode's own: values and exceptions come back from a worker as copies (so identity is
checked only where steps run in this process); a timed-out or stopped process-mode
attempt is killed, so it never returns late; compensations of process and Dask steps
run in a worker, not in the caller's thread; on Dask ``ctx.cancelled`` stays False.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import Any

import pytest
import tenacity
from _behaviour_helpers import (
    WAIT,
    FileBarrier,
    Gauge,
    Log,
    Record,
    fail,
    press_ctrl_c,
    until_cancelled,
    value,
    wait_for,
)

from flowpool import (
    EVENT_KINDS,
    CompensationResult,
    Context,
    Event,
    Flow,
    FlowFailedError,
    FlowInterrupted,
    FlowpoolError,
    FlowResult,
    FlowStatus,
    FlowTimeoutError,
    GroupResult,
    GroupStatus,
    Step,
    StepCancelledError,
    StepResult,
    StepStatus,
    StepTimeoutError,
)
from flowpool.testing import AutoJumpClock

pytestmark = pytest.mark.timeout(60)

#: Why a test that needs an attempt to outlive its timeout does not run in process mode.
KILLED = "in process mode a timed-out attempt's worker is killed, so it never runs on or returns late"
#: Why a test that waits for ``ctx.cancelled`` does not run on Dask.
BEST_EFFORT = "on Dask ctx.cancelled is best effort: it stays False"


# ── helpers ─────────────────────────────────────────────────────────────────────


@pytest.fixture
def started_timeout(executor_mode: str) -> Callable[[float], float]:
    """A step timeout for tests that need the attempt to have really started when it passes.

    On Dask a timeout counts from the submission (SPEC §9: soft; the backend cannot see a
    task start), so there it allows a second for the cluster to pick the task up.
    """
    return (lambda seconds: max(seconds, 1.0)) if executor_mode == "dask" else (lambda seconds: seconds)


def same_error(got: BaseException | None, expected: BaseException, in_process: bool) -> bool:
    """``got`` is ``expected``; from a worker process, a copy of it (same type and message)."""
    if in_process:
        return got is expected
    return type(got) is type(expected) and str(got) == str(expected)


def statuses(result: FlowResult) -> dict[str, StepStatus]:
    return {name: step.status for name, step in result.steps.items()}


# ── §3 running ──────────────────────────────────────────────────────────────────


@pytest.mark.timeout(20)
def test_run_returns_a_result_instead_of_raising_when_a_step_fails(run_kw):
    result = Flow("f").step("boom", fail(ValueError("nope"))).run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert not result.ok
    assert isinstance(result.error, ValueError)


@pytest.mark.timeout(20)
def test_a_flow_is_reusable_and_runs_are_independent(run_kw):
    flow = Flow("f").step("echo", lambda ctx: ctx.input).step("twice", lambda ctx: ctx.results["echo"] * 2)
    first = flow.run(2, **run_kw)
    second = flow.run(5, **run_kw)
    assert first.values == {"echo": 2, "twice": 4}
    assert second.values == {"echo": 5, "twice": 10}
    assert first.run_id != second.run_id


@pytest.mark.timeout(30)
def test_concurrent_runs_from_several_threads_share_nothing(run_kw, tmp_path):
    runs = 4
    meet = FileBarrier(tmp_path, runs)  # every run is inside a step at once
    seen = Log(tmp_path)

    def load(ctx: Context) -> Any:
        meet.wait()
        seen.add((ctx.run_id, ctx.input))
        return ctx.input

    def check(ctx: Context) -> Any:
        return dict(ctx.results)

    flow = (
        Flow("shared")
        .step("load", load)
        .parallel("g", [Step("x", lambda ctx: ctx.input * 10), Step("y", lambda ctx: ctx.results["load"] + 1)])
        .step("check", check)
    )
    results: dict[int, FlowResult] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = flow.run(i, **run_kw)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not errors
    assert sorted(results) == list(range(runs))
    for i, result in results.items():
        assert result.ok, result.error
        assert result.values == {
            "load": i,
            "x": i * 10,
            "y": i + 1,
            "check": {"load": i, "x": i * 10, "y": i + 1},
        }
    run_ids = {result.run_id for result in results.values()}
    assert len(run_ids) == runs
    assert {(result.run_id, i) for i, result in results.items()} == set(seen)


@pytest.mark.timeout(20)
@pytest.mark.modes("user-threadpool", reason="checks a user-supplied executor")
def test_a_user_executor_is_used_as_is_and_never_shut_down(executor, tmp_path):
    names = Log(tmp_path)
    flow = (
        Flow("f")
        .step("a", lambda ctx: names.add(threading.current_thread().name))
        .parallel("g", [Step("b", lambda ctx: names.add(threading.current_thread().name))])
        .step("c", fail(RuntimeError("fails the flow")), timeout=5)
    )
    result = flow.run(executor=executor)
    assert result.status is FlowStatus.FAILED
    assert len(names) == 2
    assert all(name.startswith("user-pool") for name in names), list(names)
    # Still usable after a run that completed, too.
    assert Flow("again").step("a", value(1)).run(executor=executor).ok
    assert executor.submit(lambda: 42).result(timeout=WAIT) == 42


@pytest.mark.timeout(20)
@pytest.mark.modes("thread", reason="about flowpool's own thread pool")
def test_thread_mode_steps_run_on_flowpool_daemon_threads(run_kw, tmp_path):
    seen = Log(tmp_path)

    def where(ctx: Context) -> None:
        thread = threading.current_thread()
        seen.add((thread.ident, thread.daemon))

    flow = Flow("f").step("a", where).parallel("g", [Step("b", where), Step("c", where)])
    assert flow.run(**run_kw).ok
    assert len(seen) == 3
    for ident, daemon in seen:
        assert ident != threading.get_ident()
        assert daemon


# ── §4 the context ──────────────────────────────────────────────────────────────


@pytest.mark.timeout(20)
def test_context_attributes(run_kw, executors, tmp_path):
    seen = Record(tmp_path)

    def record(ctx: Context) -> str:
        seen[ctx.step] = (ctx.input, id(ctx.input), ctx.flow, ctx.run_id, ctx.step, ctx.attempt, ctx.cancelled)
        return ctx.step

    flow = Flow("ctx-flow").step("a", record).parallel("g", [Step("b", record), {"name": "c", "fn": record}])
    payload = {"user_id": 7}
    result = flow.run(payload, **run_kw)
    assert result.ok
    assert set(seen) == {"a", "b", "c"}
    for name, (input_, input_id, flow_name, run_id, step, attempt, cancelled) in seen.items():
        if executors.in_process:
            assert input_id == id(payload), "ctx.input is the run's input itself"
        else:
            assert input_ == payload, "a worker process gets a copy of the run's input"
        assert flow_name == "ctx-flow"
        assert run_id == result.run_id
        assert step == name
        assert attempt == 1
        assert cancelled is False


@pytest.mark.timeout(20)
def test_run_id_is_unique_per_run(run_kw, tmp_path):
    seen = Log(tmp_path)
    flow = Flow("f").step("a", lambda ctx: seen.add(ctx.run_id))
    results = [flow.run(**run_kw) for _ in range(5)]
    assert len(set(seen)) == 5
    assert [r.run_id for r in results] == list(seen)
    assert all(isinstance(r.run_id, str) and r.run_id for r in results)


@pytest.mark.timeout(20)
def test_attempt_numbers_count_from_one(run_kw, tmp_path):
    attempts = Log(tmp_path)

    def flaky(ctx: Context) -> int:
        attempts.add(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return ctx.attempt

    result = Flow("f").step("flaky", flaky, retries=5).run(clock=AutoJumpClock(), **run_kw)
    assert result.ok
    assert list(attempts) == [1, 2, 3]
    assert result.steps["flaky"].attempts == 3
    assert result.values["flaky"] == 3


@pytest.mark.timeout(20)
def test_results_hold_only_earlier_stages_and_are_read_only(run_kw, tmp_path):
    seen = Record(tmp_path)
    writes = Record(tmp_path)

    def look(ctx: Context) -> str:
        seen[ctx.step] = dict(ctx.results)
        try:
            ctx.results["intruder"] = 1  # type: ignore[index]
        except Exception as error:
            writes[ctx.step] = error
        else:
            writes[ctx.step] = None
        return f"{ctx.step}-value"

    flow = (
        Flow("f")
        .step("a", look)
        .parallel("g", [Step("b", look), Step("c", look)], max_concurrency=1)
        .step("d", look)
        .step("never-completes", fail(ValueError("x")))
        .step("e", look)
    )
    result = flow.run(**run_kw)
    assert seen["a"] == {}
    # With max_concurrency=1, "b" completed before "c" started: "c" still must not see it.
    assert seen["b"] == {"a": "a-value"}
    assert seen["c"] == {"a": "a-value"}
    assert seen["d"] == {"a": "a-value", "b": "b-value", "c": "c-value"}
    assert "e" not in seen
    assert result.steps["e"].status is StepStatus.SKIPPED
    for name, error in writes.items():
        assert isinstance(error, TypeError), name
    assert "intruder" not in result.values


@pytest.mark.timeout(20)
def test_results_do_not_include_failed_or_partial_members(run_kw, tmp_path):
    seen = Record(tmp_path)
    flow = (
        Flow("f")
        .parallel("g", [Step("ok", value(1)), Step("bad", fail(ValueError("x")))])
        .step("after", lambda ctx: seen.update(ctx.results))
    )
    result = flow.run(**run_kw)
    assert result.ok
    assert seen == {"ok": 1}


@pytest.mark.timeout(30)
@pytest.mark.modes("thread", "user-threadpool", "dask", reason=KILLED)
def test_an_abandoned_member_never_sees_its_siblings_values(run_kw, gates, tmp_path, started_timeout):
    release = gates.new()
    looked = gates.new()
    seen = Record(tmp_path)

    def hung(ctx: Context) -> None:
        wait_for(release)
        seen.update(ctx.results)  # looked at long after its group settled
        looked.set()

    flow = (
        Flow("f")
        .step("first", value(0))
        .parallel("g", [Step("hung", hung, timeout=started_timeout(0.2)), Step("sibling", value(1))])
        .step("later", value(2))
    )
    result = flow.run(**run_kw)
    assert result.ok
    assert result.steps["hung"].status is StepStatus.TIMED_OUT
    release.set()
    assert looked.wait(WAIT)
    assert seen == {"first": 0}, "a group member saw values of its own stage or of later stages"


@pytest.mark.timeout(20)
def test_raise_if_cancelled_is_quiet_when_not_cancelled_and_cancelled_ends_as_cancelled(run_kw, tmp_path):
    calls = Log(tmp_path)

    def fn(ctx: Context) -> str:
        ctx.raise_if_cancelled()
        calls.add(ctx.step)
        return "fine"

    def stops(ctx: Context) -> str:
        raise StepCancelledError(ctx.step, "gave up")

    flow = Flow("f").parallel("g", [Step("fine", fn), Step("stops", stops, retries=3)])
    result = flow.run(clock=AutoJumpClock(), **run_kw)
    assert list(calls) == ["fine"]
    assert result.steps["fine"].status is StepStatus.COMPLETED
    stopped = result.steps["stops"]
    assert stopped.status is StepStatus.CANCELLED
    assert isinstance(stopped.error, StepCancelledError)
    assert stopped.attempts == 1, "a cancelled attempt is not retried"
    assert result.groups["g"].status is GroupStatus.PARTIAL


# ── §2 retries ──────────────────────────────────────────────────────────────────


@pytest.mark.timeout(20)
def test_retries_give_extra_attempts_and_keep_the_last_error(run_kw, tmp_path):
    calls = Log(tmp_path)

    def always(ctx: Context) -> None:
        calls.add(ctx.attempt)
        raise ValueError(f"attempt {ctx.attempt}")

    result = Flow("f").step("always", always, retries=2).run(clock=AutoJumpClock(), **run_kw)
    step = result.steps["always"]
    assert list(calls) == [1, 2, 3]
    assert step.status is StepStatus.FAILED
    assert step.attempts == 3
    assert isinstance(step.error, ValueError)
    assert str(step.error) == "attempt 3"
    assert result.error is step.error
    assert result.failed_stage == "always"


@pytest.mark.timeout(20)
def test_no_retries_by_default(run_kw, tmp_path):
    calls = Log(tmp_path)
    result = Flow("f").step("once", lambda ctx: calls.add(1) or 1 / 0).run(clock=AutoJumpClock(), **run_kw)
    assert len(calls) == 1
    assert result.steps["once"].attempts == 1
    assert isinstance(result.steps["once"].error, ZeroDivisionError)


@pytest.mark.timeout(20)
def test_retries_stop_at_the_first_success(run_kw, tmp_path):
    calls = Log(tmp_path)

    def second_time(ctx: Context) -> str:
        calls.add(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("flaky")
        return "done"

    result = Flow("f").step("s", second_time, retries=4).run(clock=AutoJumpClock(), **run_kw)
    assert result.ok
    assert list(calls) == [1, 2]
    step = result.steps["s"]
    assert (step.status, step.value, step.error, step.attempts) == (StepStatus.COMPLETED, "done", None, 2)


@pytest.mark.timeout(20)
def test_default_backoff_is_short(run_kw):
    started = time.monotonic()
    result = Flow("f").step("s", fail(ValueError("x")), retries=3).run(**run_kw)
    assert result.steps["s"].attempts == 4
    assert time.monotonic() - started < 5.0, "the default backoff should be short"


@pytest.mark.timeout(20)
def test_custom_retry_stop_and_wait(run_kw, tmp_path):
    calls = Log(tmp_path)
    clock = AutoJumpClock()

    def always(ctx: Context) -> None:
        calls.add(ctx.attempt)
        raise ValueError(f"attempt {ctx.attempt}")

    retry = tenacity.Retrying(stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_fixed(30))
    real_start = time.monotonic()
    result = Flow("f").step("s", always, retry=retry).run(clock=clock, **run_kw)
    assert list(calls) == [1, 2, 3, 4]
    step = result.steps["s"]
    assert step.attempts == 4
    assert step.status is StepStatus.FAILED
    assert isinstance(step.error, ValueError)
    assert not isinstance(step.error, tenacity.RetryError)
    assert str(step.error) == "attempt 4"
    # Three waits of 30 s passed in virtual time, not in real time.
    assert clock.now() >= 90
    assert time.monotonic() - real_start < 20


@pytest.mark.timeout(20)
def test_custom_retry_predicate_decides_what_is_retried(run_kw, tmp_path):
    calls = Log(tmp_path)

    def fn(ctx: Context) -> str:
        calls.add((ctx.step, ctx.attempt))
        if ctx.step == "transient" and ctx.attempt < 3:
            raise ConnectionError("again")
        if ctx.step == "permanent":
            raise ValueError("do not retry me")
        return "ok"

    def policy() -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(5),
            retry=tenacity.retry_if_exception_type(ConnectionError),
        )

    flow = Flow("f").parallel("g", [Step("transient", fn, retry=policy()), Step("permanent", fn, retry=policy())])
    result = flow.run(clock=AutoJumpClock(), **run_kw)
    assert result.steps["transient"].status is StepStatus.COMPLETED
    assert result.steps["transient"].attempts == 3
    permanent = result.steps["permanent"]
    assert permanent.status is StepStatus.FAILED
    assert permanent.attempts == 1
    assert isinstance(permanent.error, ValueError)
    assert sorted(c for c in calls if c[0] == "permanent") == [("permanent", 1)]


@pytest.mark.timeout(20)
def test_custom_retry_hooks_are_called(run_kw, tmp_path):
    before = Log(tmp_path)
    after = Log(tmp_path)
    before_sleep = Log(tmp_path)

    def fn(ctx: Context) -> str:
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return "ok"

    retry = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(5),
        wait=tenacity.wait_fixed(1),
        before=lambda state: before.add(state.attempt_number),
        after=lambda state: after.add(state.attempt_number),
        before_sleep=lambda state: before_sleep.add((state.attempt_number, type(state.outcome.exception()))),
    )
    result = Flow("f").step("s", fn, retry=retry).run(clock=AutoJumpClock(), **run_kw)
    assert result.ok
    assert result.steps["s"].attempts == 3
    assert list(before) == [1, 2, 3]
    assert list(after) == [1, 2]
    assert list(before_sleep) == [(1, ConnectionError), (2, ConnectionError)]


@pytest.mark.timeout(20)
def test_retry_on_result(run_kw):
    def not_yet(ctx: Context) -> str | None:
        return None if ctx.attempt < 3 else "ready"

    retry = tenacity.Retrying(stop=tenacity.stop_after_attempt(5), retry=tenacity.retry_if_result(lambda v: v is None))
    result = Flow("f").step("poll", not_yet, retry=retry).run(clock=AutoJumpClock(), **run_kw)
    assert result.ok
    assert result.values["poll"] == "ready"
    assert result.steps["poll"].attempts == 3


@pytest.mark.timeout(20)
def test_retry_error_never_reaches_the_user(run_kw):
    rejected = tenacity.Retrying(stop=tenacity.stop_after_attempt(3), retry=tenacity.retry_if_result(lambda v: True))
    raising = tenacity.Retrying(stop=tenacity.stop_after_attempt(2))  # no reraise: tenacity would raise RetryError
    events: list[Event] = []
    flow = Flow("f").parallel(
        "g",
        [Step("rejected", value("meh"), retry=rejected), Step("raising", fail(KeyError("k")), retry=raising)],
    )
    result = flow.run(clock=AutoJumpClock(), on_event=events.append, **run_kw)
    assert result.status is FlowStatus.FAILED
    rejected_step = result.steps["rejected"]
    assert rejected_step.status is StepStatus.FAILED
    assert rejected_step.attempts == 3
    assert rejected_step.value is None
    assert rejected_step.error is not None
    raising_step = result.steps["raising"]
    assert raising_step.attempts == 2
    assert isinstance(raising_step.error, KeyError)

    def chain(error: BaseException | None) -> list[BaseException]:
        out = []
        while error is not None and error not in out:
            out.append(error)
            if isinstance(error, BaseExceptionGroup):
                for inner in error.exceptions:
                    out.extend(chain(inner))
            error = error.__cause__ or error.__context__
        return out

    everything = [*chain(result.error), *chain(rejected_step.error), *chain(raising_step.error)]
    everything += [e for event in events for e in chain(event.error)]
    assert not [e for e in everything if isinstance(e, tenacity.RetryError)]


@pytest.mark.timeout(20)
def test_backoff_waits_do_not_hold_a_worker(executors, tmp_path):
    order = Log(tmp_path)

    def flaky(ctx: Context) -> str:
        order.add(f"flaky-{ctx.attempt}")
        if ctx.attempt == 1:
            raise ConnectionError("first attempt fails")
        return "ok"

    def other(ctx: Context) -> str:
        order.add("other")
        return "ok"

    retry = tenacity.Retrying(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(5))
    flow = Flow("f").parallel("g", [Step("flaky", flaky, retry=retry), Step("other", other)])
    # One worker: if the backoff slept on it, "flaky-2" would run before "other".
    result = flow.run(clock=AutoJumpClock(), **executors.make(max_workers=1))
    assert result.ok
    assert list(order) == ["flaky-1", "other", "flaky-2"]


@pytest.mark.timeout(30)
def test_each_attempt_has_its_own_timeout(run_kw, gates):
    release = gates.new()

    def first_hangs(ctx: Context) -> int:
        if ctx.attempt == 1:
            wait_for(release)
            return -1
        return ctx.attempt

    result = Flow("f").step("s", first_hangs, retries=1, timeout=0.3).run(**run_kw)
    step = result.steps["s"]
    assert step.status is StepStatus.COMPLETED
    assert step.value == 2
    assert step.attempts == 2


@pytest.mark.timeout(30)
def test_a_step_that_always_times_out_is_retried_then_timed_out(
    run_kw, executor_mode, gates, tmp_path, started_timeout
):
    release = gates.new()
    calls = Log(tmp_path)

    def hangs(ctx: Context) -> None:
        calls.add(ctx.attempt)
        wait_for(release)

    result = Flow("f").step("s", hangs, retries=2, timeout=started_timeout(0.2)).run(**run_kw)
    step = result.steps["s"]
    assert step.status is StepStatus.TIMED_OUT
    assert step.attempts == 3
    assert isinstance(step.error, StepTimeoutError)
    if executor_mode == "dask":
        # On Dask a timeout counts from submission (SPEC §9: soft): abandoned attempts
        # still hold the cluster's threads, so a later one may time out before it runs.
        assert list(calls) == sorted(set(calls)) and set(calls) <= {1, 2, 3}
    else:
        assert list(calls) == [1, 2, 3]


# ── §5 timeouts ─────────────────────────────────────────────────────────────────


@pytest.mark.timeout(30)
def test_timed_out_step_is_reported_and_its_late_value_ignored(run_kw, executor_mode, gates, tmp_path, started_timeout):
    release = gates.new()
    returned = gates.new()
    after_saw = Record(tmp_path)
    killed = executor_mode == "process"  # a killed attempt never returns: nothing late to wait for

    def slow(ctx: Context) -> str:
        try:
            wait_for(release)
            return "late"
        finally:
            returned.set()

    def after(ctx: Context) -> None:
        release.set()  # let the abandoned attempt return its value now…
        assert killed or returned.wait(WAIT)
        after_saw.update(ctx.results)  # …and check nobody took it

    flow = (
        Flow("f")
        .parallel("g", [Step("slow", slow, timeout=started_timeout(0.2)), Step("quick", value("q"))])
        .step("after", after)
    )
    started = time.monotonic()
    result = flow.run(**run_kw)
    assert time.monotonic() - started < WAIT
    slow_result = result.steps["slow"]
    assert slow_result.status is StepStatus.TIMED_OUT
    assert slow_result.value is None
    assert slow_result.attempts == 1
    assert isinstance(slow_result.error, StepTimeoutError)
    assert isinstance(slow_result.error, TimeoutError)
    assert isinstance(slow_result.error, FlowpoolError)
    assert result.groups["g"].status is GroupStatus.PARTIAL
    assert result.ok
    assert after_saw == {"quick": "q"}
    assert "slow" not in result.values


@pytest.mark.timeout(30)
def test_timed_out_step_outside_a_group_fails_the_flow(run_kw, gates):
    release = gates.new()
    result = Flow("f").step("slow", lambda ctx: wait_for(release), timeout=0.2).step("next", value(1)).run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert result.failed_stage == "slow"
    assert isinstance(result.error, StepTimeoutError)
    assert statuses(result) == {"slow": StepStatus.TIMED_OUT, "next": StepStatus.SKIPPED}


@pytest.mark.timeout(30)
@pytest.mark.modes(
    "thread",
    "user-threadpool",
    reason="in process mode a timed-out attempt's worker is killed instead; " + BEST_EFFORT,
)
def test_timed_out_attempt_sees_ctx_cancelled(run_kw, gates, tmp_path):
    noticed = gates.new()
    seen = Record(tmp_path)

    def watch(ctx: Context) -> None:
        seen["before"] = ctx.cancelled
        seen["after"] = until_cancelled(ctx)
        try:
            ctx.raise_if_cancelled()
        except StepCancelledError as error:
            seen["raised"] = error
        noticed.set()

    result = Flow("f").step("watch", watch, timeout=0.2).run(**run_kw)
    assert result.steps["watch"].status is StepStatus.TIMED_OUT
    assert noticed.wait(WAIT)
    assert seen["before"] is False
    assert seen["after"] is True
    assert isinstance(seen["raised"], StepCancelledError)


@pytest.mark.timeout(30)
def test_timeout_counts_from_the_start_not_from_queueing(executors, gates, started_timeout):
    blocker_busy = gates.new()  # never set: the blocker holds the only worker for 1 s

    def blocker(ctx: Context) -> str:
        blocker_busy.wait(1.0)
        return "blocked"

    flow = Flow("f").parallel(
        "g", [Step("blocker", blocker), Step("timed", value("quick"), timeout=started_timeout(0.3))]
    )
    result = flow.run(**executors.make(max_workers=1))
    assert result.steps["blocker"].status is StepStatus.COMPLETED
    timed = result.steps["timed"]
    assert timed.status is StepStatus.COMPLETED, f"waiting for a worker counted against the timeout: {timed.error}"
    assert timed.value == "quick"


@pytest.mark.timeout(30)
def test_timeout_counts_from_the_start_with_max_concurrency(run_kw, gates, started_timeout):
    blocker_busy = gates.new()

    def blocker(ctx: Context) -> str:
        blocker_busy.wait(1.0)
        return "blocked"

    flow = Flow("f").parallel(
        "g", [Step("blocker", blocker), Step("timed", value("quick"), timeout=started_timeout(0.3))], max_concurrency=1
    )
    result = flow.run(**run_kw)
    assert result.steps["timed"].status is StepStatus.COMPLETED


@pytest.mark.timeout(30)
@pytest.mark.modes(
    "thread", "process", "dask", reason="a user's executor is the user's to size; a hung call keeps its thread"
)
def test_an_abandoned_attempt_does_not_take_the_runs_only_worker(executors, gates):
    release = gates.new()
    flow = (
        Flow("f")
        .parallel("g", [Step("hung", lambda ctx: wait_for(release), timeout=0.2), Step("later", value(1))])
        .step("next", value(2))
    )
    result = flow.run(**executors.make(max_workers=1))
    assert result.steps["hung"].status is StepStatus.TIMED_OUT
    assert result.steps["later"].status is StepStatus.COMPLETED
    assert result.steps["next"].status is StepStatus.COMPLETED


DAEMON_SCRIPT = textwrap.dedent(
    """
    import threading
    from flowpool import Flow

    def hang(ctx):
        threading.Event().wait()  # blocks forever, ignoring ctx.cancelled

    flow = Flow("daemon").step("hang", hang, **OPTIONS)
    result = flow.run(**RUN)
    print(result.status, result.steps["hang"].status, flush=True)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.modes(
    "thread", "process", reason="about flowpool's own pools: a user's executor or Dask client is the user's to manage"
)
@pytest.mark.parametrize(
    ("options", "run", "expected"),
    [
        ({"timeout": 0.2}, {}, "failed timed_out"),
        ({}, {"timeout": 0.2}, "failed cancelled"),
    ],
    ids=["step-timeout", "run-timeout"],
)
def test_a_hung_abandoned_step_does_not_keep_the_interpreter_alive(executor_mode, options, run, expected):
    run = {**run, "executor": executor_mode}  # in process mode the hung worker is killed, and lanes close at exit
    script = f"OPTIONS = {options!r}\nRUN = {run!r}\n{DAEMON_SCRIPT}"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
    assert time.monotonic() - started < 20


# ── §3 the run's timeout ────────────────────────────────────────────────────────


@pytest.mark.timeout(30)
def test_run_timeout_fails_the_flow_and_compensates(run_kw, executor_mode, gates, tmp_path):
    release = gates.new()  # frees a Dask worker thread at the end (there ctx.cancelled stays False)
    undone = Log(tmp_path)
    seen = Record(tmp_path)

    def slow(ctx: Context) -> str:
        seen["cancelled"] = until_cancelled(ctx, release=release)
        return "returned after being told to stop"

    flow = (
        Flow("f")
        .step("done", value("d"), compensate=lambda ctx, v: undone.add(("done", v)))
        .step("slow", slow, compensate=lambda ctx, v: undone.add(("slow", v)))
        .step("never", value(1))
    )
    started = time.monotonic()
    result = flow.run(timeout=0.3, **run_kw)
    elapsed = time.monotonic() - started
    if executor_mode in ("thread", "user-threadpool"):
        assert seen["cancelled"] is True, "running work is told to stop"
    else:  # stopped by a kill (process), or abandoned after the grace period (Dask: best effort)
        assert result.steps["slow"].status is StepStatus.CANCELLED
    assert result.status is FlowStatus.FAILED
    assert isinstance(result.error, FlowTimeoutError)
    assert isinstance(result.error, TimeoutError)
    assert result.steps["done"].status is StepStatus.COMPLETED
    assert result.steps["never"].status is StepStatus.SKIPPED
    # SPEC: "stopped steps are CANCELLED"; a step that still returned a value may be read
    # as completed (like a fail-fast survivor), and then it must be compensated too.
    slow_status = result.steps["slow"].status
    assert slow_status in (StepStatus.CANCELLED, StepStatus.COMPLETED)
    if slow_status is StepStatus.CANCELLED:
        assert list(undone) == [("done", "d")]
        assert result.compensated == ("done",)
    else:
        assert list(undone) == [("slow", "returned after being told to stop"), ("done", "d")]
        assert result.compensated == ("slow", "done")
    assert elapsed < WAIT


@pytest.mark.timeout(30)
def test_run_timeout_abandons_work_that_ignores_cancellation(run_kw, gates, tmp_path):
    release = gates.new()
    undone = Log(tmp_path)
    flow = (
        Flow("f")
        .step("done", value("d"), compensate=lambda ctx, v: undone.add("done"))
        .parallel(
            "g",
            [
                Step("stuck", lambda ctx: wait_for(release)),
                Step("quick", value(1), compensate=lambda ctx, v: undone.add("quick")),
            ],
        )
    )
    started = time.monotonic()
    result = flow.run(timeout=0.3, **run_kw)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, "a stuck step gets a short grace period, then is abandoned"
    assert result.status is FlowStatus.FAILED
    assert isinstance(result.error, FlowTimeoutError)
    assert result.steps["stuck"].status is StepStatus.CANCELLED
    assert result.steps["quick"].status is StepStatus.COMPLETED
    assert result.compensated == ("quick", "done")


@pytest.mark.timeout(30)
def test_run_timeout_not_reached(run_kw):
    result = Flow("f").step("a", value(1)).run(timeout=30, **run_kw)
    assert result.ok


# ── §5 groups ───────────────────────────────────────────────────────────────────


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


# ── §5 compensation ─────────────────────────────────────────────────────────────


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


# ── §6 results ──────────────────────────────────────────────────────────────────


@pytest.mark.timeout(20)
def test_flow_result_fields_for_a_completed_run(run_kw):
    before = time.monotonic()
    flow = (
        Flow("fields")
        .step("a", value({"x": 1}))
        .parallel("g", [Step("b", value(2)), {"name": "c", "fn": fail(ValueError("c"))}, Step("d", value(None))])
        .step("e", value("e"))
    )
    result = flow.run(**run_kw)
    after = time.monotonic()
    assert isinstance(result, FlowResult)
    assert result.name == "fields"
    assert result.status is FlowStatus.COMPLETED
    assert result.ok is True
    assert result.error is None
    assert result.failed_stage is None
    assert result.compensated == ()
    assert result.not_compensated == ()
    assert list(result.steps) == ["a", "b", "c", "d", "e"]
    assert dict(result.values) == {"a": {"x": 1}, "b": 2, "d": None, "e": "e"}
    assert list(result.groups) == ["g"]
    group = result.groups["g"]
    assert isinstance(group, GroupResult)
    assert (group.name, group.status, group.members) == ("g", GroupStatus.PARTIAL, ("b", "c", "d"))
    assert result.duration is not None
    assert 0 <= result.duration <= after - before + 0.01
    a = result.steps["a"]
    assert isinstance(a, StepResult)
    assert (a.name, a.status, a.value, a.error, a.attempts, a.group, a.compensation, a.ok) == (
        "a",
        StepStatus.COMPLETED,
        {"x": 1},
        None,
        1,
        None,
        None,
        True,
    )
    assert a.started_at is not None
    assert a.finished_at is not None
    assert before <= a.started_at <= a.finished_at <= after
    assert a.duration == pytest.approx(a.finished_at - a.started_at)
    c = result.steps["c"]
    assert (c.status, c.value, c.group, c.ok, c.attempts) == (StepStatus.FAILED, None, "g", False, 1)
    assert isinstance(c.error, ValueError)
    assert result.steps["b"].group == "g"


@pytest.mark.timeout(20)
def test_every_step_of_the_definition_appears_with_a_final_status(run_kw):
    flow = (
        Flow("f")
        .step("a", value(1))
        .parallel("g", [Step("b", fail(ValueError())), Step("c", value(1)), Step("x", value(1))], fail_fast=True)
        .parallel("h", [Step("d", value(1))])
        .step("e", value(1))
    )
    result = flow.run(**run_kw)
    assert list(result.steps) == ["a", "b", "c", "x", "d", "e"]
    assert list(result.groups) == ["g", "h"]
    assert result.groups["h"].status is GroupStatus.SKIPPED
    final = {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.CANCELLED, StepStatus.SKIPPED}
    assert all(step.status in final for step in result.steps.values())


def test_status_enums_are_strings():
    assert StepStatus.COMPLETED == "completed"
    assert str(StepStatus.TIMED_OUT) == "timed_out"
    assert {s.value for s in StepStatus} == {"completed", "failed", "timed_out", "cancelled", "skipped"}
    assert {s.value for s in GroupStatus} == {"completed", "partial", "failed", "skipped"}
    assert {s.value for s in FlowStatus} == {"completed", "failed", "cancelled"}
    assert str(GroupStatus.PARTIAL) == "partial"
    assert FlowStatus.FAILED == "failed"


@pytest.mark.timeout(20)
def test_to_dict_is_json_serialisable(run_kw):
    class Opaque:
        pass

    def broken_undo(ctx: Context, v: Any) -> None:
        raise OSError("undo failed")

    flow = (
        Flow("json")
        .step("plain", value({"k": [1, 2.5, None, True]}))
        .parallel(
            "g",
            [
                Step("opaque", value(Opaque()), compensate=broken_undo),
                Step("a-set", value({1, 2}), compensate=lambda ctx, v: None),
                Step("bytes", value(b"\x00\xff")),
                Step("nan", value(float("nan"))),
                Step("bad", fail(ValueError("bad"))),
            ],
            fail_fast=True,
            max_concurrency=1,
        )
    )
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.FAILED
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["name"] == "json"
    assert data["status"] == "failed"
    assert data["ok"] is False
    assert data["run_id"] == result.run_id
    assert data["failed_stage"] == "g"
    assert list(data["steps"]) == list(result.steps)
    assert data["steps"]["plain"]["status"] == "completed"
    assert data["steps"]["plain"]["value"] == {"k": [1, 2.5, None, True]}
    assert data["steps"]["bad"]["status"] == "failed"
    assert data["groups"]["g"]["status"] == "failed"
    assert data["compensated"] == list(result.compensated)
    assert data["not_compensated"] == list(result.not_compensated)
    assert "opaque" in data["not_compensated"]
    text = json.dumps(data)
    assert "bad" in text
    assert "undo failed" in text


@pytest.mark.timeout(20)
def test_raise_for_status(run_kw):
    good = Flow("f").step("a", value(1)).run(**run_kw)
    assert good.raise_for_status() in (None, good)  # no raise when ok

    bad = Flow("f").step("a", fail(ValueError("bad"))).run(**run_kw)
    with pytest.raises(FlowFailedError) as excinfo:
        bad.raise_for_status()
    assert excinfo.value.result is bad
    assert isinstance(excinfo.value, FlowpoolError)
    assert "f" in str(excinfo.value)


@pytest.mark.timeout(20)
def test_results_are_immutable(run_kw):
    flow = (
        Flow("f")
        .step("a", value([1]), compensate=lambda ctx, v: None)
        .parallel("g", [Step("b", value(2))])
        .step("boom", fail(ValueError()))
    )
    result = flow.run(**run_kw)
    step = result.steps["a"]
    group = result.groups["g"]
    compensation = step.compensation
    assert compensation is not None
    attempts: list[tuple[Any, str, Any]] = [
        (result, "status", FlowStatus.COMPLETED),
        (result, "error", None),
        (result, "steps", {}),
        (result, "compensated", ()),
        (step, "status", StepStatus.FAILED),
        (step, "value", 0),
        (group, "status", GroupStatus.COMPLETED),
        (group, "members", ()),
        (compensation, "status", "failed"),
    ]
    for target, attribute, new in attempts:
        with pytest.raises((FrozenInstanceError, AttributeError, TypeError)):
            setattr(target, attribute, new)
    with pytest.raises(TypeError):
        result.steps["a"] = step  # type: ignore[index]
    with pytest.raises(TypeError):
        del result.steps["a"]  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        result.groups["h"] = group  # type: ignore[index]
    with pytest.raises(TypeError):
        result.values["a"] = 0  # type: ignore[index]
    assert isinstance(result.compensated, tuple)
    assert isinstance(result.not_compensated, tuple)
    assert isinstance(group.members, tuple)
    assert result.status is FlowStatus.FAILED
    assert result.values["a"] == [1]


# ── §8 events ───────────────────────────────────────────────────────────────────


def _kinds(events: list[Event], **where: Any) -> list[str]:
    return [e.kind for e in events if all(getattr(e, k) == v for k, v in where.items())]


@pytest.mark.timeout(20)
def test_events_kinds_order_and_attributes(run_kw, tmp_path):
    events: list[Event] = []
    threads = Log(tmp_path)

    def listen(event: Event) -> None:
        threads.add(threading.get_ident())
        events.append(event)

    flow = (
        Flow("ev")
        .step("a", value(1), compensate=lambda ctx, v: None)
        .parallel("g", [Step("b", value(2)), Step("c", fail(ValueError("c")))], fail_fast=True)
        .step("d", value(3))
    )
    before = time.monotonic()
    result = flow.run(on_event=listen, **run_kw)
    after = time.monotonic()
    assert set(threads) == {threading.get_ident()}, "on_event is called in the caller's thread"
    kinds = [e.kind for e in events]
    assert set(kinds) <= set(EVENT_KINDS)
    assert kinds[0] == "flow_started"
    assert kinds[-1] == "flow_finished"
    assert kinds.count("flow_started") == kinds.count("flow_finished") == 1
    for event in events:
        for attribute in ("step", "group", "attempt", "status", "error", "time"):
            assert hasattr(event, attribute)
        assert isinstance(event.time, float)
        assert before <= event.time <= after
    # One step_finished per step, with its final status.
    finished = {e.step: e for e in events if e.kind == "step_finished"}
    assert [e.step for e in events if e.kind == "step_finished"].count("a") == 1
    assert set(finished) == set(result.steps)
    for name, step in result.steps.items():
        assert finished[name].status == step.status
        assert finished[name].group == step.group
    assert isinstance(finished["c"].error, ValueError)
    assert finished["d"].status == "skipped"
    # Each started attempt comes before its step's end; the group ends after its members.
    for name in ("a", "b", "c"):
        started = kinds_index(events, "step_started", name)
        assert started < events.index(finished[name])
        assert events[started].attempt == 1
        assert events[started].group == result.steps[name].group
    group_finished = [e for e in events if e.kind == "group_finished"]
    assert [(e.group, e.status) for e in group_finished] == [("g", "failed")]
    assert events.index(group_finished[0]) > max(events.index(finished["b"]), events.index(finished["c"]))
    assert events.index(group_finished[0]) < events.index(finished["d"])
    # Compensation of "a" after everything else settled, before the end.
    comp = [e for e in events if e.kind.startswith("compensation_")]
    assert [(e.kind, e.step) for e in comp] == [("compensation_started", "a"), ("compensation_finished", "a")]
    assert events.index(comp[0]) > events.index(finished["d"])
    assert events[-1].status == "failed"
    flow_started = events[0]
    assert (flow_started.step, flow_started.group, flow_started.attempt, flow_started.error) == (
        None,
        None,
        None,
        None,
    )


def kinds_index(events: list[Event], kind: str, step: str) -> int:
    return next(i for i, e in enumerate(events) if e.kind == kind and e.step == step)


@pytest.mark.timeout(20)
def test_events_for_retried_attempts(run_kw):
    events: list[Event] = []

    def flaky(ctx: Context) -> int:
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return ctx.attempt

    result = Flow("f").step("flaky", flaky, retries=3).run(clock=AutoJumpClock(), on_event=events.append, **run_kw)
    assert result.ok
    mine = [(e.kind, e.attempt) for e in events if e.step == "flaky"]
    assert mine == [
        ("step_started", 1),
        ("step_retrying", 1),
        ("step_started", 2),
        ("step_retrying", 2),
        ("step_started", 3),
        ("step_finished", 3),
    ]
    retrying = [e for e in events if e.kind == "step_retrying"]
    assert all(isinstance(e.error, ConnectionError) for e in retrying)
    assert [str(e.error) for e in retrying] == ["attempt 1", "attempt 2"]
    assert all(e.status == "failed" for e in retrying)
    assert next(e for e in events if e.kind == "step_finished").status == "completed"


@pytest.mark.timeout(20)
def test_events_for_a_step_that_exhausts_its_retries(run_kw):
    events: list[Event] = []
    Flow("f").step("s", fail(ValueError("x")), retries=1).run(clock=AutoJumpClock(), on_event=events.append, **run_kw)
    mine = [(e.kind, e.attempt, e.status) for e in events if e.step == "s"]
    assert mine == [
        ("step_started", 1, None),
        ("step_retrying", 1, "failed"),
        ("step_started", 2, None),
        ("step_finished", 2, "failed"),
    ]


@pytest.mark.timeout(30)
def test_events_for_timed_out_cancelled_and_skipped_steps(run_kw, gates):
    release = gates.new()
    events: list[Event] = []
    flow = (
        Flow("f")
        .parallel(
            "g",
            [Step("slow", lambda ctx: wait_for(release), timeout=0.2), Step("never", value(1))],
            fail_fast=True,
            max_concurrency=1,
        )
        .step("skipped", value(1))
    )
    result = flow.run(on_event=events.append, **run_kw)
    finished = {e.step: e for e in events if e.kind == "step_finished"}
    assert finished["slow"].status == "timed_out"
    assert isinstance(finished["slow"].error, StepTimeoutError)
    assert finished["never"].status == "cancelled"
    assert finished["skipped"].status == "skipped"
    assert _kinds(events, step="never") == ["step_finished"]
    assert _kinds(events, step="skipped") == ["step_finished"]
    assert result.steps["never"].status is StepStatus.CANCELLED


@pytest.mark.timeout(20)
def test_compensation_events(run_kw):
    events: list[Event] = []

    def undo(ctx: Context, v: Any) -> None:
        if ctx.step == "bad-undo":
            raise OSError("nope")

    flow = (
        Flow("f")
        .step("good-undo", value(1), compensate=undo)
        .step("bad-undo", value(2), compensate=undo, compensate_retries=1)
        .step("boom", fail(ValueError()))
    )
    flow.run(clock=AutoJumpClock(), on_event=events.append, **run_kw)
    comp = [(e.kind, e.step, e.attempt, e.status) for e in events if e.kind.startswith("compensation")]
    assert comp == [
        ("compensation_started", "bad-undo", 1, None),
        ("compensation_finished", "bad-undo", 1, "failed"),
        ("compensation_started", "bad-undo", 2, None),
        ("compensation_finished", "bad-undo", 2, "failed"),
        ("compensation_started", "good-undo", 1, None),
        ("compensation_finished", "good-undo", 1, "compensated"),
    ]
    failed = [e for e in events if e.kind == "compensation_finished" and e.step == "bad-undo"]
    assert all(isinstance(e.error, OSError) for e in failed)
    assert events[-1].kind == "flow_finished"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("raise_on", [None, "step_finished", "group_finished", "flow_finished", "compensation_started"])
def test_a_raising_listener_changes_nothing(run_kw, caplog, raise_on, tmp_path):
    def make_flow(undone: Log) -> Flow:
        return (
            Flow("f")
            .step("a", value(1), compensate=lambda ctx, v: undone.add("a"))
            .parallel("g", [Step("b", value(2)), Step("c", fail(ValueError("c")))])
            .step("d", fail(RuntimeError("d")))
        )

    def listener(event: Event) -> None:
        if raise_on is None or event.kind == raise_on:
            raise RuntimeError(f"listener broke on {event.kind}")

    quiet_undone, loud_undone = Log(tmp_path), Log(tmp_path)
    quiet = make_flow(quiet_undone).run(**run_kw)
    with caplog.at_level(logging.ERROR):
        loud = make_flow(loud_undone).run(on_event=listener, **run_kw)
    assert loud.status is quiet.status is FlowStatus.FAILED
    assert statuses(loud) == statuses(quiet)
    assert dict(loud.values) == dict(quiet.values)
    assert loud.compensated == quiet.compensated == ("a",)
    assert list(loud_undone) == list(quiet_undone) == ["a"]
    assert {k: g.status for k, g in loud.groups.items()} == {k: g.status for k, g in quiet.groups.items()}
    assert type(loud.error) is type(quiet.error)
    assert any("listener broke" in (r.exc_text or "") or r.exc_info for r in caplog.records), "the error is logged"


@pytest.mark.timeout(20)
def test_events_do_not_change_results(run_kw):
    events: list[Event] = []
    flow = Flow("f").step("a", value(1)).parallel("g", [Step("b", value(2))])
    result = flow.run(on_event=events.append, **run_kw)
    assert result.ok
    assert result.values == {"a": 1, "b": 2}
    assert [e.kind for e in events] == [
        "flow_started",
        "step_started",
        "step_finished",
        "step_started",
        "step_finished",
        "group_finished",
        "flow_finished",
    ]


# ── §5 interrupts (Ctrl-C in a run started from the main thread) ────────────────


def _interrupt_run(flow: Flow, run_kw: dict[str, Any]) -> FlowInterrupted:
    """Run ``flow`` (whose steps press Ctrl-C) and return the ``FlowInterrupted`` it raises.

    Tests using it take pytest-timeout's thread method: with its SIGALRM method, a SIGINT
    that follows an abandoned run was seen to reach the handler only when the step returned.
    """
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Ctrl-C is only routed into runs started from the main thread")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("someone else owns SIGINT in this test process")
    try:
        flow.run(**run_kw)
    except BaseException as raised:  # a bare KeyboardInterrupt must fail the test, not end the session
        assert isinstance(raised, FlowInterrupted), f"expected FlowInterrupted, got {raised!r}"
        return raised
    raise AssertionError("the run was interrupted but did not raise FlowInterrupted")


@pytest.mark.timeout(30, method="thread")  # see _interrupt_run
def test_ctrl_c_stops_running_work_compensates_and_raises_flow_interrupted(run_kw, executor_mode, gates, tmp_path):
    release = gates.new()  # frees a Dask worker thread at the end (there ctx.cancelled stays False)
    undone = Log(tmp_path)
    seen = Record(tmp_path)
    main_pid = os.getpid()

    def stopper(ctx: Context) -> None:
        press_ctrl_c(main_pid)
        seen["cancelled"] = until_cancelled(ctx, release=release)
        ctx.raise_if_cancelled()

    flow = (
        Flow("f")
        .step("done", value("d"), compensate=lambda ctx, v: undone.add(ctx.step))
        .parallel("g", [Step("stopper", stopper), Step("member", value(1), compensate=lambda ctx, v: undone.add("m"))])
        .step("never", value(1))
    )
    interrupted = _interrupt_run(flow, run_kw)
    assert isinstance(interrupted, KeyboardInterrupt)
    assert not isinstance(interrupted, Exception)
    if executor_mode in ("thread", "user-threadpool"):
        assert seen["cancelled"] is True
    # else: killed (process mode) or abandoned after the grace period (Dask); CANCELLED either way
    result = interrupted.result
    assert isinstance(result, FlowResult)
    assert result.status is FlowStatus.CANCELLED
    assert isinstance(result.error, FlowInterrupted)
    assert result.steps["done"].status is StepStatus.COMPLETED
    assert result.steps["stopper"].status is StepStatus.CANCELLED
    assert result.steps["never"].status is StepStatus.SKIPPED
    assert undone.items[-1] == "done"
    assert result.compensated[-1] == "done"


@pytest.mark.timeout(30, method="thread")  # see _interrupt_run
def test_ctrl_c_abandons_thread_work_that_ignores_it_after_a_short_grace(run_kw, gates):
    release = gates.new()
    main_pid = os.getpid()

    def stuck(ctx: Context) -> None:
        press_ctrl_c(main_pid)
        wait_for(release)  # ignores ctx.cancelled: abandoned (threads, Dask) or killed (process)

    flow = Flow("f").step("stuck", stuck).step("never", value(1))
    started = time.monotonic()
    interrupted = _interrupt_run(flow, run_kw)
    assert time.monotonic() - started < 5.0, "the grace period is at most 0.5 s"
    result = interrupted.result
    assert result is not None
    assert result.status is FlowStatus.CANCELLED
    assert statuses(result) == {"stuck": StepStatus.CANCELLED, "never": StepStatus.SKIPPED}


@pytest.mark.timeout(30, method="thread")  # see _interrupt_run
def test_a_second_ctrl_c_abandons_the_remaining_compensations(run_kw, executors, gates, tmp_path):
    release = gates.new()
    undone = Log(tmp_path)
    main_pid = os.getpid()
    # A process or Dask compensation is not interrupted by the parent's Ctrl-C: it is
    # abandoned, so it waits (for the test's end) before recording that it finished.
    abandoned_runs_on = not executors.in_process

    def press_again(ctx: Context, v: Any) -> None:
        undone.add(ctx.step)
        press_ctrl_c(main_pid)  # thread modes: compensations run in the caller's thread, where it lands
        if abandoned_runs_on:
            release.wait()
        undone.add(f"{ctx.step} finished")

    def stopper(ctx: Context) -> None:
        press_ctrl_c(main_pid)
        until_cancelled(ctx, release=release)
        ctx.raise_if_cancelled()

    flow = (
        Flow("f")
        .step("a", value(1), compensate=lambda ctx, v: undone.add("a"))
        .step("b", value(2), compensate=press_again)
        .step("stopper", stopper)
    )
    interrupted = _interrupt_run(flow, run_kw)
    result = interrupted.result
    assert result is not None
    assert result.status is FlowStatus.CANCELLED
    assert list(undone) == ["b"]
    assert result.compensated == ()
    assert set(result.not_compensated) == {"a", "b"}


# ── more of §§2-5 ───────────────────────────────────────────────────────────────


@pytest.mark.timeout(30)
@pytest.mark.modes("thread", "user-threadpool", "dask", reason=KILLED)
def test_a_late_value_of_an_earlier_attempt_does_not_replace_the_retry(run_kw, gates, started_timeout):
    release = gates.new()
    first_returned = gates.new()

    def fn(ctx: Context) -> str:
        if ctx.attempt == 1:
            wait_for(release)
            first_returned.set()
            return "late first attempt"
        release.set()  # let attempt 1 return its value while attempt 2 still runs
        wait_for(first_returned)
        return "second attempt"

    result = Flow("f").step("s", fn, retries=1, timeout=started_timeout(0.3)).run(**run_kw)
    step = result.steps["s"]
    assert (step.status, step.value, step.attempts) == (StepStatus.COMPLETED, "second attempt", 2)


@pytest.mark.timeout(20)
@pytest.mark.modes(
    "thread",
    "process",
    "dask",
    reason="max_workers sizes flowpool's own pool (or caps what it sends to Dask); a user's executor is used as is",
)
def test_max_workers_caps_how_many_steps_run_at_once(executors, tmp_path):
    running = Gauge(tmp_path)
    barrier = FileBarrier(tmp_path, 2)

    def member(ctx: Context) -> None:
        running.enter()
        try:
            barrier.wait()
        finally:
            running.leave()

    flow = Flow("f").parallel("g", [Step(f"m{i}", member) for i in range(6)])
    result = flow.run(**executors.make(max_workers=2))
    assert result.ok, result.error
    assert running.peak == 2


@pytest.mark.timeout(20)
def test_a_step_may_ask_for_flowpools_thread_pool(run_kw, executor_mode, tmp_path):
    where = Record(tmp_path)

    def record(ctx: Context) -> None:
        where[ctx.step] = (os.getpid(), threading.current_thread().name)

    flow = Flow("f").step("default", record).step("own-threads", record, executor="thread")
    assert flow.run(**run_kw).ok
    own_pid, own_thread = where["own-threads"]
    assert own_pid == os.getpid(), "flowpool's thread pool is in the caller's process"
    assert not own_thread.startswith("user-pool")
    default_pid, default_thread = where["default"]
    if executor_mode == "user-threadpool":
        assert default_thread.startswith("user-pool")
    elif executor_mode in ("process", "dask"):
        assert default_pid != os.getpid(), "the run's other steps still run in worker processes"
