"""SPEC §6: results."""

from __future__ import annotations

import json
import time
from dataclasses import FrozenInstanceError
from typing import Any

import pytest
from _behaviour_helpers import fail, value

from flowpool import (
    Context,
    Flow,
    FlowFailedError,
    FlowpoolError,
    FlowResult,
    FlowStatus,
    GroupResult,
    GroupStatus,
    Step,
    StepResult,
    StepStatus,
)

pytestmark = pytest.mark.timeout(60)


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
