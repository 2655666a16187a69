"""SPEC §2: retries."""

from __future__ import annotations

import time

import pytest
import tenacity
from _behaviour_helpers import Log, fail, value, wait_for

from flowpool import Context, Event, Flow, FlowStatus, Step, StepStatus, StepTimeoutError
from flowpool.testing import AutoJumpClock

pytestmark = pytest.mark.timeout(60)


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
