"""SPEC §3: the run's timeout."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from _behaviour_helpers import WAIT, FileBarrier, Log, Record, until_cancelled, value, wait_for

from flowpool import Context, Flow, FlowStatus, FlowTimeoutError, Step, StepStatus

pytestmark = pytest.mark.timeout(60)


def _warm_up(run_kw: dict[str, Any], where: Path) -> None:
    """Have two of the mode's workers ready before a run whose 0.3 s timeout must reach
    running steps: cold process lanes take longer than that to start, so a test run on its
    own (or first) saw its steps SKIPPED or CANCELLED before they started.

    The two members meet at a barrier, so two workers really ran at the same time.
    """
    barrier = FileBarrier(where, 2, "warm-up")
    flow = Flow("warm-up").parallel("g", [Step("a", lambda ctx: barrier.wait()), Step("b", lambda ctx: barrier.wait())])
    result = flow.run(**run_kw)
    assert result.ok, result.error


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
    _warm_up(run_kw, tmp_path)
    started = time.monotonic()
    # Long enough for "done" to finish and "slow" to start even on a loaded machine (at 0.3 s
    # a process-mode run on 2 busy cores once timed out before "slow" started: SKIPPED).
    result = flow.run(timeout=1.5, **run_kw)
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
    _warm_up(run_kw, tmp_path)
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
