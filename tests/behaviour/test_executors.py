"""SPEC §§2-5: where steps run, and how many at once."""

from __future__ import annotations

import os
import threading

import pytest
from _behaviour_helpers import FileBarrier, Gauge, Record

from flowpool import Context, Flow, Step

pytestmark = pytest.mark.timeout(60)


@pytest.mark.timeout(20)
@pytest.mark.modes(
    "thread",
    "process",
    "dask",
    reason="max_workers sizes flowpool's own pool (or caps what it sends to Dask); a user's executor is used as is",
)
def test_max_workers_caps_how_many_steps_run_at_once(executors, tmp_path):
    running = Gauge(tmp_path)
    barrier = FileBarrier(tmp_path, 2)

    def member(ctx: Context) -> None:
        running.enter()
        try:
            barrier.wait()
        finally:
            running.leave()

    flow = Flow("f").parallel("g", [Step(f"m{i}", member) for i in range(6)])
    result = flow.run(**executors.make(max_workers=2))
    assert result.ok, result.error
    assert running.peak == 2


@pytest.mark.timeout(20)
def test_a_step_may_ask_for_flowpools_thread_pool(run_kw, executor_mode, tmp_path):
    where = Record(tmp_path)

    def record(ctx: Context) -> None:
        where[ctx.step] = (os.getpid(), threading.current_thread().name)

    flow = Flow("f").step("default", record).step("own-threads", record, executor="thread")
    assert flow.run(**run_kw).ok
    own_pid, own_thread = where["own-threads"]
    assert own_pid == os.getpid(), "flowpool's thread pool is in the caller's process"
    assert not own_thread.startswith("user-pool")
    default_pid, default_thread = where["default"]
    if executor_mode == "user-threadpool":
        assert default_thread.startswith("user-pool")
    elif executor_mode in ("process", "dask"):
        assert default_pid != os.getpid(), "the run's other steps still run in worker processes"
