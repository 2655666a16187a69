"""An independent review of subflows (SPEC §13): each test here failed before its fix."""

from __future__ import annotations

import gc
import os
import signal
import textwrap
import threading
from typing import Any

import pytest
from _behaviour_helpers import Gate, Log, load_flow, press_ctrl_c, run_until_killed, until_cancelled, wait_for

from flowpool import Context, Flow, FlowInterrupted, FlowStatus, Step, StepStatus, StepTimeoutError
from flowpool.testing import AutoJumpClock

pytestmark = pytest.mark.timeout(120)


def _logged(log: Log, name: str) -> Any:
    def fn(ctx: Context) -> str:
        log.add(("run", name))
        return name

    return fn


def _undo(log: Log, name: str) -> Any:
    def undo(ctx: Context, v: Any) -> None:
        log.add(("undo", name))

    return undo


def undone(log: Log) -> list[str]:
    return [entry[1] for entry in log if entry[0] == "undo"]


def test_a_child_cancelled_during_its_always_stage_still_undoes_its_completed_steps(run_kw, tmp_path):
    # The child's steps all completed; it is in its always-stage when a sibling fails
    # fast and cancels it. It ended CANCELLED without compensating itself (its stages
    # had not failed), and the parent undoes only COMPLETED steps: x was never undone.
    # Its stages were over: like a member that returns normally after the cancel
    # (SPEC §5) it completes and is undone as a unit with the rest.
    log = Log(tmp_path)
    in_always = Gate(tmp_path, "in_always")
    release = Gate(tmp_path, "release")

    def cleanup(ctx: Context) -> None:
        in_always.set()
        wait_for(release, "the sibling's failure")

    def fail_when_in_always(ctx: Context) -> None:
        wait_for(in_always, "the child's always-stage")
        raise ValueError("sibling failed")

    child = Flow("child").step("x", _logged(log, "x"), compensate=_undo(log, "x")).always("cleanup", cleanup)
    flow = Flow("parent").parallel("g", [Step("sub", child), Step("bad", fail_when_in_always)], fail_fast=True)

    def on_event(event: Any) -> None:
        if event.kind == "step_finished" and event.step == "bad":
            release.set()

    try:
        result = flow.run(on_event=on_event, **run_kw)
    finally:
        release.set()
    assert result.status is FlowStatus.FAILED
    sub = result.steps["sub"]
    assert sub.status is StepStatus.COMPLETED
    assert sub.subflow is not None and sub.subflow.status is FlowStatus.COMPLETED
    assert undone(log) == ["x"]
    assert result.compensated == ("sub/x",)


#: A flow file: a subflow "sub" (x, y, both compensated; a step, or a map of one item), then "a" (compensated), then
#: "fail", which fails; "a"'s compensation kills the process (SIGKILL) unless the marker
#: file "alive" exists: the run dies while compensating, before it reached the subflow.
KILLED_WHILE_COMPENSATING = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from flowpool import Flow

    HERE = Path(__file__).parent

    def note(line):
        with open(HERE / "ran.log", "a") as log:
            log.write(line + "\\n")

    def step(name):
        def fn(ctx):
            note(name)
            return name
        return fn

    def undo(name):
        def fn(ctx, value):
            note(f"undo {name}")
            if name == "a" and not (HERE / "alive").exists():
                os.kill(os.getpid(), signal.SIGKILL)
        return fn

    def fail(ctx):
        raise RuntimeError("rejected")

    child = Flow("child").step("x", step("x"), compensate=undo("x")).step("y", step("y"), compensate=undo("y"))
    flow = Flow("parent")
    if (HERE / "shape").read_text() == "map":
        flow.map("sub", child, items=["o1"], key=str)
    else:
        flow.step("sub", child)
    flow.step("a", step("a"), compensate=undo("a")).step("fail", fail)

    if __name__ == "__main__":
        flow.run(journal=sys.argv[1])
    """
)


@pytest.mark.modes("thread", reason="the journal is the same for every mode")
@pytest.mark.parametrize("shape", ["step", "map"])
def test_a_run_killed_while_compensating_still_undoes_a_completed_subflow_on_resume(executor, tmp_path, shape):
    (tmp_path / "shape").write_text(shape)
    script, journal, run_id, before = run_until_killed(tmp_path, KILLED_WHILE_COMPENSATING)
    assert before == ["x", "y", "a", "undo a"]
    (tmp_path / "alive").touch()
    result = load_flow(script).resume(run_id, journal=journal, executor=executor)
    assert result.status is FlowStatus.FAILED
    after = (tmp_path / "ran.log").read_text().split("\n")[len(before) : -1]
    assert after == ["undo a", "undo y", "undo x"]  # "a" again (it had not finished), then the subflow
    label = "sub" if shape == "step" else "sub['o1']"
    assert result.compensated[-2:] == (f"{label}/y", f"{label}/x")


@pytest.mark.modes("thread", reason="the step moves the test clock: it must run in this process")
def test_an_attempt_that_returns_past_its_timeout_is_timed_out_even_when_the_loop_sees_it_late(run_kw):
    # The soak's "s0m0: completed on attempt 1, scripted to fail": a step scripted to hang
    # 1-2 s past a 0.24 s timeout completed. When the loop sees the attempt's outcome only
    # after its deadline (a loaded machine; here the step moves the clock itself), it took
    # the outcome as it came: COMPLETED after running four times longer than allowed.
    clock = AutoJumpClock()

    def overruns(ctx: Context) -> str:
        clock.advance(1.0)  # ran 1 s, of the 0.2 s allowed
        return "late"

    flow = Flow("f").step("slow", overruns, timeout=0.2, compensate=lambda ctx, v: None)
    result = flow.run(clock=clock, **run_kw)
    slow = result.steps["slow"]
    assert slow.status is StepStatus.TIMED_OUT
    assert isinstance(slow.error, StepTimeoutError)
    assert slow.late_value == "late"  # and, the run failing, it is compensated on it
    assert result.compensated == ("slow",)


@pytest.mark.modes("thread", reason="the step presses Ctrl-C from a thread of this process")
@pytest.mark.timeout(30, method="thread")  # a SIGINT after an abandoned run: see test_interrupts._interrupt_run
def test_a_second_ctrl_c_abandoning_a_child_names_its_completed_steps_not_compensated(run_kw, tmp_path):
    # A second Ctrl-C abandons the compensations, and "not_compensated names them" (SPEC §5).
    # A child abandoned mid-stages closed its body: its completed step was neither undone
    # nor named anywhere; the result claimed there was nothing left done.
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Ctrl-C is only routed into runs started from the main thread")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("someone else owns SIGINT in this test process")
    release = Gate(tmp_path, "release")
    log = Log(tmp_path)
    main_pid = os.getpid()

    def stopper(ctx: Context) -> None:
        press_ctrl_c(main_pid)
        until_cancelled(ctx)  # the first Ctrl-C reached the child
        press_ctrl_c(main_pid)
        wait_for(release, "the end of the test")  # ignores the stop: abandoned

    child = Flow("child").step("booked", _logged(log, "booked"), compensate=_undo(log, "booked")).step("stop", stopper)
    flow = Flow("f").step("sub", child)
    try:
        flow.run(**run_kw)
    except FlowInterrupted as raised:
        interrupted = raised
    else:
        raise AssertionError("the run was interrupted but did not raise FlowInterrupted")
    finally:
        release.set()
    result = interrupted.result
    assert result is not None and result.status is FlowStatus.CANCELLED
    sub = result.steps["sub"]
    assert sub.status is StepStatus.CANCELLED and sub.subflow is not None
    assert undone(log) == []
    assert sub.subflow.not_compensated == ("booked",)
    booked = sub.subflow.steps["booked"]
    assert booked.compensation is not None and booked.compensation.status == "abandoned"
    # What is still running is the child's thread, named by its path; the subflow itself
    # runs nowhere (it was named 'sub', and its step 'stop' without its path).
    assert result.still_running == ("sub/stop",)


@pytest.mark.modes("thread", reason="counts the loop's frames in this process")
def test_a_map_of_subflows_with_a_timeout_holds_only_the_frames_in_flight(run_kw):
    # A child's run timeout was armed as a DEADLINE timer that nothing dropped when the
    # child ended: the heap held every ended child's frame (its records, context, stages)
    # until its deadline, so a map of subflows with a timeout grew with its items, not
    # with those in flight (SPEC §12).
    from flowpool._runner import _Run

    seen: list[int] = []

    def count(ctx: Context) -> int:
        if ctx.input == 299:
            gc.collect()
            seen.append(sum(1 for o in gc.get_objects() if isinstance(o, _Run) and o.run_id == ctx.run_id))
        return 1

    child = Flow("child").step("x", count)
    flow = Flow("f").map("m", child, items=range(300), timeout=600, max_concurrency=2)
    result = flow.run(**run_kw)
    assert result.ok, result.error
    (live,) = seen
    assert live <= 8, f"{live} frames of the run alive at the last of 300 items, 2 in flight"


#: A flow file: a subflow step "sub" (retries=1) whose child runs "pre", a map "m" of one
#: compensated item, then "boom", which fails on its first call. The child compensates m[0]
#: and is retried; its second "pre" kills the process (SIGKILL) unless "alive" exists.
RETRIED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from flowpool import Flow

    HERE = Path(__file__).parent

    def note(line):
        with open(HERE / "ran.log", "a") as log:
            log.write(line + "\\n")

    def calls(name):
        return sum(1 for line in (HERE / "ran.log").read_text().split("\\n") if line == name)

    def pre(ctx):
        note("pre")
        if calls("pre") == 2 and not (HERE / "alive").exists():
            os.kill(os.getpid(), signal.SIGKILL)

    def item(ctx):
        note(f"item {ctx.item}")
        return ctx.item

    def boom(ctx):
        note("boom")
        if calls("boom") == 1:
            raise RuntimeError("first time")

    child = (
        Flow("child")
        .step("pre", pre)
        .map("m", item, items=[0], compensate=lambda ctx, v: note(f"undo item {v}"))
        .step("boom", boom)
    )
    flow = Flow("parent").step("sub", child, retries=1)

    if __name__ == "__main__":
        flow.run(journal=sys.argv[1])
    """
)


@pytest.mark.modes("thread", reason="the journal is the same for every mode")
def test_a_retried_child_resumed_does_not_restore_map_items_its_first_attempt_undid(executor, tmp_path):
    # Resume restores a child's completed steps except those its own compensation undid
    # (scoped_view) — but not its map items: m[0], completed by the first attempt and then
    # undone, was restored as completed and never ran again; the run completed with it undone.
    script, journal, run_id, before = run_until_killed(tmp_path, RETRIED_CHILD)
    assert before == ["pre", "item 0", "boom", "undo item 0", "pre"]
    (tmp_path / "alive").touch()
    result = load_flow(script).resume(run_id, journal=journal, executor=executor)
    assert result.status is FlowStatus.COMPLETED, result.error
    after = (tmp_path / "ran.log").read_text().split("\n")[len(before) : -1]
    assert "item 0" in after  # the undone item runs again


def test_a_child_that_failed_on_its_own_stays_failed_when_cancelled_while_it_compensates(run_kw, tmp_path):
    # The child failed (y raised) and is undoing x when a sibling fails fast. It ended
    # CANCELLED with a StepCancelledError, its own error lost to the parent; had it ended
    # compensating a moment earlier it was FAILED: the status depended on timing. A plain
    # step that failed is FAILED whatever happens after; so is a child that failed.
    log = Log(tmp_path)
    compensating = Gate(tmp_path, "compensating")
    release = Gate(tmp_path, "release")

    def slow_undo(ctx: Context, v: Any) -> None:
        compensating.set()
        wait_for(release, "the sibling's failure")
        log.add(("undo", "x"))

    def y_fails(ctx: Context) -> None:
        raise ValueError("y failed")

    def fail_when_compensating(ctx: Context) -> None:
        wait_for(compensating, "the child's compensation")
        raise ValueError("sibling failed")

    child = Flow("child").step("x", _logged(log, "x"), compensate=slow_undo).step("y", y_fails)
    flow = Flow("parent").parallel("g", [Step("sub", child), Step("bad", fail_when_compensating)], fail_fast=True)

    def on_event(event: Any) -> None:
        if event.kind == "step_finished" and event.step == "bad":
            release.set()

    try:
        result = flow.run(on_event=on_event, **run_kw)
    finally:
        release.set()
    sub = result.steps["sub"]
    assert sub.status is StepStatus.FAILED
    assert isinstance(sub.error, ValueError) and str(sub.error) == "y failed"
    assert sub.subflow is not None and sub.subflow.status is FlowStatus.FAILED
    assert undone(log) == ["x"]


#: A flow file: a subflow step "sub" (retries=1) whose child runs "x" (compensated), a map
#: "m" of one compensated item, then "boom", which fails on its first call: the child undoes
#: m[0] and x and is retried; the retry completes x and m[0] again, and its "boom" kills the
#: process (SIGKILL) unless "alive" exists.
REDONE_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from flowpool import Flow

    HERE = Path(__file__).parent

    def note(line):
        with open(HERE / "ran.log", "a") as log:
            log.write(line + "\\n")

    def calls(name):
        return sum(1 for line in (HERE / "ran.log").read_text().split("\\n") if line == name)

    def boom(ctx):
        note("boom")
        if calls("boom") == 1:
            raise RuntimeError("first time")
        if not (HERE / "alive").exists():
            os.kill(os.getpid(), signal.SIGKILL)

    child = (
        Flow("child")
        .step("x", lambda ctx: note("x"), compensate=lambda ctx, v: note("undo x"))
        .map("m", lambda ctx: note(f"item {ctx.item}"), items=[0], compensate=lambda ctx, v: note("undo item"))
        .step("boom", boom)
    )
    flow = Flow("parent").step("sub", child, retries=1)

    if __name__ == "__main__":
        flow.run(journal=sys.argv[1])
    """
)


@pytest.mark.modes("thread", reason="the journal is the same for every mode")
def test_a_retried_child_resumed_does_not_run_again_what_its_retry_completed_again(executor, tmp_path):
    # The first attempt's compensation rows ("compensated") outlived the retry's new
    # completions of x and m[0]: resume took them as undone and ran them a third time.
    script, journal, run_id, before = run_until_killed(tmp_path, REDONE_CHILD)
    assert before == ["x", "item 0", "boom", "undo item", "undo x", "x", "item 0", "boom"]
    (tmp_path / "alive").touch()
    result = load_flow(script).resume(run_id, journal=journal, executor=executor)
    assert result.status is FlowStatus.COMPLETED, result.error
    after = (tmp_path / "ran.log").read_text().split("\n")[len(before) : -1]
    assert after == ["boom"]  # x and m[0] completed in the retry: they do not run again
    sub = result.steps["sub"].subflow
    assert sub is not None and sub.compensated == ()
