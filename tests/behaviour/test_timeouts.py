"""SPEC §5: step timeouts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from _behaviour_helpers import BEST_EFFORT, KILLED, WAIT, Record, statuses, until_cancelled, value, wait_for

from flowpool import (
    Context,
    Flow,
    FlowpoolError,
    FlowStatus,
    GroupStatus,
    Step,
    StepCancelledError,
    StepStatus,
    StepTimeoutError,
)

pytestmark = pytest.mark.timeout(60)


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
    # Never set: the blocker holds the only worker for 3 s, three times the step's timeout (a
    # timeout counted from queueing would pass; one counted from the start leaves a quick step
    # 1 s, enough on a loaded machine, where 0.3 s once was not for a process-mode no-op).
    blocker_busy = gates.new()

    def blocker(ctx: Context) -> str:
        blocker_busy.wait(3.0)
        return "blocked"

    flow = Flow("f").parallel(
        "g", [Step("blocker", blocker), Step("timed", value("quick"), timeout=started_timeout(1.0))]
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
        blocker_busy.wait(3.0)
        return "blocked"

    flow = Flow("f").parallel(
        "g", [Step("blocker", blocker), Step("timed", value("quick"), timeout=started_timeout(1.0))], max_concurrency=1
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
