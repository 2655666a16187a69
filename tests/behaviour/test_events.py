"""SPEC §8: events."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from _behaviour_helpers import Log, fail, statuses, value, wait_for

from flowpool import EVENT_KINDS, Context, Event, Flow, FlowStatus, Step, StepStatus, StepTimeoutError
from flowpool.testing import AutoJumpClock

pytestmark = pytest.mark.timeout(60)


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
