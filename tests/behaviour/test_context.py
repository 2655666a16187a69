"""SPEC §4: the context a step gets."""

from __future__ import annotations

import pytest
from _behaviour_helpers import KILLED, WAIT, Log, Record, fail, value, wait_for

from flowpool import Context, Flow, GroupStatus, Step, StepCancelledError, StepStatus
from flowpool.testing import AutoJumpClock

pytestmark = pytest.mark.timeout(60)


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
