"""Many runs of one Flow at once: nothing crosses from one run to another (SPEC §3).

Fifty threads, released together by a barrier, each run the same ``Flow`` with a
distinct input, sharing one executor: flowpool's process lanes (process-wide),
one user-supplied ``ThreadPoolExecutor``, or flowpool's default thread mode.
Every step derives its value from ``ctx.input`` and ``ctx.results`` and tags it
with its run, so a value, an event or a ``ctx.results`` entry from another run
shows up as a wrong value, a failed step or a foreign ``run_id``.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from flowpool import Event, Flow, FlowResult, FlowStatus, Step, StepStatus

RUNS = 50
JOIN_TIMEOUT = 90.0


class CrossedRunsError(Exception):
    """A step saw a value that belongs to another run."""


# Module-level step functions: cheap, picklable, and all derived from ctx.input / ctx.results.


def _check(ctx: Any, value: Any) -> None:
    if value["run"] != ctx.input["run"]:
        raise CrossedRunsError(f"run {ctx.input['run']} step {ctx.step} saw {value!r}")


def first(ctx: Any) -> dict[str, Any]:
    return {"run": ctx.input["run"], "v": ctx.input["x"] * 2}


def left(ctx: Any) -> dict[str, Any]:
    _check(ctx, ctx.results["first"])
    if set(ctx.results) != {"first"}:
        raise CrossedRunsError(f"left saw {sorted(ctx.results)}")
    return {"run": ctx.input["run"], "v": ctx.results["first"]["v"] + 1}


def right(ctx: Any) -> dict[str, Any]:
    _check(ctx, ctx.results["first"])
    if set(ctx.results) != {"first"}:
        raise CrossedRunsError(f"right saw {sorted(ctx.results)}")
    return {"run": ctx.input["run"], "v": ctx.results["first"]["v"] * 3, "run_id": ctx.run_id}


def last(ctx: Any) -> dict[str, Any]:
    for name in ("first", "left", "right"):
        _check(ctx, ctx.results[name])
    if ctx.results["right"]["run_id"] != ctx.run_id:
        raise CrossedRunsError("right ran in another run")
    if ctx.input["fail"]:
        raise RuntimeError(f"run {ctx.input['run']} fails on purpose")
    return {"run": ctx.input["run"], "v": ctx.results["left"]["v"] + ctx.results["right"]["v"]}


def undo_first(ctx: Any, value: Any) -> None:
    _check(ctx, value)
    _check(ctx, ctx.results["first"])
    _check(ctx, ctx.results["right"])


def build_flow() -> Flow:
    return (
        Flow("concurrent")
        .step("first", first, compensate=undo_first)
        .parallel("pair", [Step("left", left), {"name": "right", "fn": right}])
        .step("last", last)
    )


def expected_values(run: int) -> dict[str, Any]:
    x = run * 7 + 3
    v = x * 2
    values: dict[str, Any] = {
        "first": {"run": run, "v": v},
        "left": {"run": run, "v": v + 1},
        "right": {"run": run, "v": v * 3},  # and the run's own run_id, checked apart
    }
    if run % 5:
        values["last"] = {"run": run, "v": (v + 1) + v * 3}
    return values


def run_all(run_kwargs: dict[str, Any]) -> list[tuple[int, FlowResult, list[Event]]]:
    """Run the flow RUNS times at once, from RUNS threads released together."""
    flow = build_flow()
    barrier = threading.Barrier(RUNS, timeout=60)
    outcomes: dict[int, tuple[FlowResult, list[Event]]] = {}
    errors: dict[int, BaseException] = {}
    lock = threading.Lock()

    def one(run: int) -> None:
        events: list[Event] = []
        try:
            barrier.wait()
            result = flow.run(
                {"run": run, "x": run * 7 + 3, "fail": run % 5 == 0}, on_event=events.append, **run_kwargs
            )
            with lock:
                outcomes[run] = (result, events)
        except BaseException as error:
            barrier.abort()  # never leave the others waiting at the gate
            with lock:
                errors[run] = error

    threads = [threading.Thread(target=one, args=(run,), name=f"concurrent-run-{run}") for run in range(RUNS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    alive = [thread.name for thread in threads if thread.is_alive()]
    assert not alive, f"runs still running after {JOIN_TIMEOUT} s: {alive}"
    assert not errors, f"runs raised: {errors}"
    assert sorted(outcomes) == list(range(RUNS))
    return [(run, *outcomes[run]) for run in range(RUNS)]


def check_isolation(outcomes: list[tuple[int, FlowResult, list[Event]]]) -> None:
    run_ids = [result.run_id for _, result, _ in outcomes]
    assert len(set(run_ids)) == RUNS, "run ids are not unique"
    for run, result, events in outcomes:
        problems = [
            f"{name}: {r.status} {r.error!r}"
            for name, r in result.steps.items()
            if r.status is not StepStatus.COMPLETED and name != "last"
        ]
        assert not problems, f"run {run}: {problems}"
        values = {name: dict(value) for name, value in result.values.items()}
        assert values["right"].pop("run_id") == result.run_id, f"run {run}: right ran in another run"
        assert values == expected_values(run), f"run {run}: values {values} != {expected_values(run)}"
        if run % 5:
            assert result.status is FlowStatus.COMPLETED, f"run {run}: {result.status} {result.error!r}"
            assert result.compensated == ()
        else:
            assert result.status is FlowStatus.FAILED and result.failed_stage == "last"
            assert f"run {run} fails on purpose" in str(result.steps["last"].error)
            compensation = result.steps["first"].compensation
            assert compensation is not None and compensation.status == "compensated", (
                f"run {run}: compensation {compensation}"
            )
            assert result.compensated == ("first",)
        # Events: all of this run, none of another.
        assert events, f"run {run}: no events"
        foreign = {e.run_id for e in events} - {result.run_id}
        assert not foreign, f"run {run}: events of other runs {foreign}"
        assert events[0].kind == "flow_started" and events[-1].kind == "flow_finished"
        assert [e.kind for e in events].count("flow_finished") == 1
        finished = {e.step: e.status for e in events if e.kind == "step_finished"}
        assert finished == {name: r.status for name, r in result.steps.items()}, f"run {run}: {finished}"
        compensations = [e.step for e in events if e.kind == "compensation_started"]
        assert compensations == ([] if run % 5 else ["first"]), f"run {run}: compensations {compensations}"


@pytest.fixture
def user_pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="shared-user-pool")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.timeout(120)
def test_concurrent_runs_default_threads() -> None:
    check_isolation(run_all({}))


@pytest.mark.timeout(120)
def test_concurrent_runs_share_a_user_thread_pool(user_pool: concurrent.futures.ThreadPoolExecutor) -> None:
    check_isolation(run_all({"executor": user_pool}))
    assert user_pool.submit(threading.get_ident).result(timeout=10), "the user's pool was shut down"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_concurrent_runs_share_process_lanes() -> None:
    check_isolation(run_all({"executor": "process", "max_workers": 2}))
