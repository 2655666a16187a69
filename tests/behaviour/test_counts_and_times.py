"""SPEC §16: counts per group, wall-clock times on events and in ``to_dict()``."""

from __future__ import annotations

import datetime
import json
import time

import pytest
from _behaviour_helpers import fail, value

from flowpool import Flow, GroupStatus, Step, StepStatus

pytestmark = pytest.mark.timeout(60)


def _parse(text: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.utcoffset() == datetime.timedelta(0), text  # an explicit UTC offset
    return moment


def test_a_group_counts_its_members_by_status(run_kw):
    flow = Flow("counts").parallel(
        "g",
        [Step("a", value(1)), Step("b", fail(ValueError("b"))), Step("c", value(3)), Step("d", fail(OSError("d")))],
    )
    result = flow.run(**run_kw)
    group = result.groups["g"]
    assert group.status is GroupStatus.PARTIAL
    assert group.counts[StepStatus.COMPLETED] == 2
    assert group.counts[StepStatus.FAILED] == 2
    assert set(group.counts) == set(StepStatus)
    assert group.counts[StepStatus.TIMED_OUT] == 0
    assert json.loads(json.dumps(result.to_dict()))["groups"]["g"]["counts"] == {
        "completed": 2,
        "failed": 2,
        "timed_out": 0,
        "cancelled": 0,
        "skipped": 0,
    }


def test_a_skipped_group_counts_every_member_skipped():
    flow = Flow("skips").step("boom", fail(ValueError("x"))).parallel("g", [Step("a", value(1)), Step("b", value(2))])
    result = flow.run()
    assert result.groups["g"].status is GroupStatus.SKIPPED
    assert result.groups["g"].counts[StepStatus.SKIPPED] == 2


def test_events_carry_wall_time_beside_monotonic_time(run_kw):
    events = []
    before = time.time()
    Flow("wall").step("a", value(1)).run(on_event=events.append, **run_kw)
    after = time.time()
    assert events
    for event in events:
        assert before - 1 <= event.wall_time <= after + 1
        assert event.to_dict()["wall_time"] == event.wall_time
    first, last = events[0], events[-1]
    assert last.wall_time - first.wall_time == pytest.approx(last.time - first.time, abs=1e-6)


def test_events_name_their_path(run_kw):
    events = []
    Flow("paths").step("a", value(1)).parallel("g", [Step("b", value(2))]).run(on_event=events.append, **run_kw)
    by_kind = {(e.kind, e.step, e.group): e.path for e in events}
    assert by_kind[("flow_started", None, None)] == ()
    assert by_kind[("step_finished", "a", None)] == ("a",)
    assert by_kind[("step_finished", "b", "g")] == ("b",)
    assert by_kind[("group_finished", None, "g")] == ("g",)


def test_to_dict_gives_iso_times_with_an_explicit_utc_offset(run_kw):
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    flow = Flow("iso").step("a", value(1)).step("b", fail(ValueError("b"))).step("c", value(3))
    data = flow.run(**run_kw).to_dict()
    after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    started, finished = _parse(data["started"]), _parse(data["finished"])
    assert before <= started <= finished <= after
    step_a = data["steps"]["a"]
    assert started <= _parse(step_a["started"]) <= _parse(step_a["finished"]) <= finished
    assert data["steps"]["c"]["started"] is None  # never started
    assert data["steps"]["c"]["finished"] is None
    assert data["still_running"] == []
