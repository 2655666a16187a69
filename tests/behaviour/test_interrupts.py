"""SPEC §5: interrupts (Ctrl-C in a run started from the main thread)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
from _behaviour_helpers import Log, Record, press_ctrl_c, statuses, until_cancelled, value, wait_for

from flowpool import Context, Flow, FlowInterrupted, FlowResult, FlowStatus, Step, StepStatus

pytestmark = pytest.mark.timeout(60)


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
    for name in result.not_compensated:  # SPEC §16: every not_compensated step says why
        compensation = result.steps[name].compensation
        assert compensation is not None and compensation.status == "abandoned", name


@pytest.mark.modes("thread", reason="the compensation's retries wait in the caller's thread")
@pytest.mark.timeout(30, method="thread")  # see _interrupt_run
def test_a_second_ctrl_c_during_a_compensations_backoff_ends_its_retries(run_kw, gates, tmp_path):
    from flowpool._clock import Clock

    release = gates.new()
    tries = Log(tmp_path)
    main_pid = os.getpid()

    class CtrlCWhileBackingOff(Clock):
        """The real clock, except that the second Ctrl-C lands while a compensation backs off."""

        def sleep(self, seconds: float) -> None:
            press_ctrl_c(main_pid)
            super().sleep(seconds)

    def undo(ctx: Context, v: Any) -> None:
        tries.add(ctx.attempt)
        raise RuntimeError("still broken")

    def stopper(ctx: Context) -> None:
        press_ctrl_c(main_pid)
        until_cancelled(ctx, release=release)
        ctx.raise_if_cancelled()

    flow = Flow("f").step("a", value(1), compensate=undo, compensate_retries=8).step("stopper", stopper)
    started = time.monotonic()
    interrupted = _interrupt_run(flow, {**run_kw, "clock": CtrlCWhileBackingOff()})
    result = interrupted.result
    assert result is not None
    assert list(tries) == [1]  # no retry after the second Ctrl-C (all 8 would take about 7 s)
    assert time.monotonic() - started < 5.0
    assert result.not_compensated == ("a",)
    compensation = result.steps["a"].compensation
    assert compensation is not None and compensation.status == "abandoned"


@pytest.mark.timeout(30, method="thread")  # see _interrupt_run
def test_ctrl_c_inside_a_subflow_stops_the_child_which_compensates_itself(run_kw, executor_mode, gates, tmp_path):
    release = gates.new()
    undone = Log(tmp_path)
    main_pid = os.getpid()

    def stopper(ctx: Context) -> None:
        press_ctrl_c(main_pid)
        until_cancelled(ctx, release=release)
        ctx.raise_if_cancelled()

    child = (
        Flow("child")
        .step("booked", value("b"), compensate=lambda ctx, v: undone.add(("child", ctx.step)))
        .step("stopper", stopper)
        .step("never", value(1))
    )
    flow = (
        Flow("f")
        .step("first", value("f"), compensate=lambda ctx, v: undone.add(("parent", ctx.step)))
        .map("orders", child, items=["only"], key=str)
        .step("after", value(1))
    )
    interrupted = _interrupt_run(flow, run_kw)
    result = interrupted.result
    assert isinstance(result, FlowResult)
    assert result.status is FlowStatus.CANCELLED
    (item,) = result.maps["orders"].items
    assert item.status is StepStatus.CANCELLED
    assert item.subflow is not None and item.subflow.status is FlowStatus.CANCELLED
    assert item.subflow.steps["never"].status is StepStatus.SKIPPED
    assert item.subflow.compensated == ("booked",)
    assert result.steps["after"].status is StepStatus.SKIPPED
    # The child undid its own step first; then the parent's compensations ran.
    assert undone.items == [("child", "booked"), ("parent", "first")]
