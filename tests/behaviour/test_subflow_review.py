"""An independent review of subflows (SPEC §13): each test here failed before its fix."""

from __future__ import annotations

from typing import Any

import pytest
from _behaviour_helpers import Gate, Log, wait_for

from flowpool import Context, Flow, FlowStatus, Step, StepStatus

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
