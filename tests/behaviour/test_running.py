"""SPEC §3: running a flow."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from _behaviour_helpers import WAIT, FileBarrier, Log, fail, value

from flowpool import Context, Flow, FlowResult, FlowStatus, Step

pytestmark = pytest.mark.timeout(60)


@pytest.mark.timeout(20)
def test_run_returns_a_result_instead_of_raising_when_a_step_fails(run_kw):
    result = Flow("f").step("boom", fail(ValueError("nope"))).run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert not result.ok
    assert isinstance(result.error, ValueError)


@pytest.mark.timeout(20)
def test_a_flow_is_reusable_and_runs_are_independent(run_kw):
    flow = Flow("f").step("echo", lambda ctx: ctx.input).step("twice", lambda ctx: ctx.results["echo"] * 2)
    first = flow.run(2, **run_kw)
    second = flow.run(5, **run_kw)
    assert first.values == {"echo": 2, "twice": 4}
    assert second.values == {"echo": 5, "twice": 10}
    assert first.run_id != second.run_id


@pytest.mark.timeout(30)
def test_concurrent_runs_from_several_threads_share_nothing(run_kw, tmp_path):
    runs = 4
    meet = FileBarrier(tmp_path, runs)  # every run is inside a step at once
    seen = Log(tmp_path)

    def load(ctx: Context) -> Any:
        meet.wait()
        seen.add((ctx.run_id, ctx.input))
        return ctx.input

    def check(ctx: Context) -> Any:
        return dict(ctx.results)

    flow = (
        Flow("shared")
        .step("load", load)
        .parallel("g", [Step("x", lambda ctx: ctx.input * 10), Step("y", lambda ctx: ctx.results["load"] + 1)])
        .step("check", check)
    )
    results: dict[int, FlowResult] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = flow.run(i, **run_kw)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not errors
    assert sorted(results) == list(range(runs))
    for i, result in results.items():
        assert result.ok, result.error
        assert result.values == {
            "load": i,
            "x": i * 10,
            "y": i + 1,
            "check": {"load": i, "x": i * 10, "y": i + 1},
        }
    run_ids = {result.run_id for result in results.values()}
    assert len(run_ids) == runs
    assert {(result.run_id, i) for i, result in results.items()} == set(seen)


@pytest.mark.timeout(20)
@pytest.mark.modes("user-threadpool", reason="checks a user-supplied executor")
def test_a_user_executor_is_used_as_is_and_never_shut_down(executor, tmp_path):
    names = Log(tmp_path)
    flow = (
        Flow("f")
        .step("a", lambda ctx: names.add(threading.current_thread().name))
        .parallel("g", [Step("b", lambda ctx: names.add(threading.current_thread().name))])
        .step("c", fail(RuntimeError("fails the flow")), timeout=5)
    )
    result = flow.run(executor=executor)
    assert result.status is FlowStatus.FAILED
    assert len(names) == 2
    assert all(name.startswith("user-pool") for name in names), list(names)
    # Still usable after a run that completed, too.
    assert Flow("again").step("a", value(1)).run(executor=executor).ok
    assert executor.submit(lambda: 42).result(timeout=WAIT) == 42


@pytest.mark.timeout(20)
@pytest.mark.modes("thread", reason="about flowpool's own thread pool")
def test_thread_mode_steps_run_on_flowpool_daemon_threads(run_kw, tmp_path):
    seen = Log(tmp_path)

    def where(ctx: Context) -> None:
        thread = threading.current_thread()
        seen.add((thread.ident, thread.daemon))

    flow = Flow("f").step("a", where).parallel("g", [Step("b", where), Step("c", where)])
    assert flow.run(**run_kw).ok
    assert len(seen) == 3
    for ident, daemon in seen:
        assert ident != threading.get_ident()
        assert daemon
