"""Dask: a real scheduler and two workers on 127.0.0.1, started and stopped by the test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from faults import steps  # noqa: E402

from flowpool import Flow, Step, StepStatus, StepTimeoutError, UnpicklableResultError  # noqa: E402

pytestmark = pytest.mark.timeout(120)

TESTS = str(Path(__file__).parent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [
        subprocess.Popen(
            [*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    address = f"127.0.0.1:{port}"
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_worker",
                        f"tcp://{address}",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--no-nanny",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with distributed.Client(f"tcp://{address}", timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture
def client(scheduler: str) -> Iterator[object]:
    with distributed.Client(f"tcp://{scheduler}", timeout=30) as client:
        yield client


def test_a_flow_runs_on_a_dask_scheduler_address(scheduler: str) -> None:
    flow = Flow("dask").step("first", lambda ctx: 41).step("second", lambda ctx: ctx.results["first"] + 1)
    result = flow.run(executor=f"dask://{scheduler}")
    assert result.ok
    assert result.values["second"] == 42


def test_retries_really_run_again(client: object) -> None:
    def flaky(ctx):  # type: ignore[no-untyped-def]
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt}")
        return ctx.attempt

    result = Flow("retry").step("flaky", flaky, retries=3).run(executor=client)
    assert result.ok
    assert result.steps["flaky"].attempts == 3
    assert result.values["flaky"] == 3


def test_identical_steps_are_not_cached(client: object) -> None:
    calls = Flow("pure").parallel("g", [Step(f"s{i}", steps.quick) for i in range(4)]).run(executor=client)
    assert calls.ok
    assert len(calls.values) == 4


def test_timeouts_are_soft_and_siblings_finish(client: object) -> None:
    flow = Flow("soft").parallel("g", [Step("slow", steps.slow_ok, timeout=0.05), Step("quick", steps.quick)])
    result = flow.run(executor=client)
    assert result.steps["slow"].status is StepStatus.TIMED_OUT
    assert isinstance(result.steps["slow"].error, StepTimeoutError)
    assert result.steps["quick"].ok


def test_errors_and_unpicklable_values_come_back(client: object) -> None:
    flow = Flow("errors").parallel(
        "g", [Step("fail", steps.fail), Step("lock", steps.lock_value), Step("quick", steps.quick)]
    )
    result = flow.run(executor=client)
    assert isinstance(result.steps["fail"].error, ValueError)
    assert isinstance(result.steps["lock"].error, UnpicklableResultError)
    assert result.steps["quick"].ok


def test_compensations_run_on_dask(client: object, tmp_path: Path) -> None:
    log = tmp_path / "log"
    flow = Flow("saga").step("do", steps.quick, compensate=steps.record_compensation).step("fail", steps.fail)
    result = flow.run({"log": str(log)}, executor=client)
    assert result.compensated == ("do",)
    assert log.read_text().startswith("do:")


def test_flowpool_does_not_close_a_users_client(client: object) -> None:
    Flow("keep").step("one", steps.quick).run(executor=client)
    assert client.status == "running"  # type: ignore[attr-defined]


def _big(ctx):  # type: ignore[no-untyped-def]
    return bytes([ctx.input % 256]) * 1_000_000


def _reads_big(ctx):  # type: ignore[no-untyped-def]
    value = ctx.results["big"]
    if ctx.step == "flaky" and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return (len(value), value[0], value[:1] * len(value) == value, sorted(ctx.results))


def test_values_reach_later_stages_and_are_scattered_once_per_run(client: object, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    scattered: list[int] = []
    scatter = client.scatter  # type: ignore[attr-defined]

    def counting(data, **kwargs):  # type: ignore[no-untyped-def]
        scattered.extend(len(item) for item in data)
        return scatter(data, **kwargs)

    monkeypatch.setattr(client, "scatter", counting)
    members = [Step(f"r{i}", _reads_big) for i in range(6)] + [Step("flaky", _reads_big, retries=1)]
    flow = Flow("values").step("big", _big).parallel("g", members).step("last", _reads_big)
    for seed in (1, 2):
        scattered.clear()
        result = flow.run(seed, executor=client)
        assert result.ok, result.error
        assert result.steps["flaky"].attempts == 2
        for name in [*(f"r{i}" for i in range(6)), "flaky"]:
            assert result.values[name] == (1_000_000, seed, True, ["big"])
        assert result.values["last"][3] == ["big", "flaky", *(f"r{i}" for i in range(6))]
        assert sum(size >= 1_000_000 for size in scattered) == 1, "the value went to the cluster once"


def test_a_timed_out_attempt_keeps_its_slot_until_it_ends(client: object, tmp_path: Path) -> None:
    """``quick`` is not handed to Dask, and its timeout not started, while the ``hang`` steps
    run on, holding the cluster's two threads."""
    gate = tmp_path / "gate"

    def release_hang(event) -> None:  # type: ignore[no-untyped-def]
        if event.kind == "step_finished" and event.step == "quick":
            gate.write_text("go")

    flow = Flow("slot").parallel(
        "g",
        [
            Step("hang1", steps.wait_for_gate_file, timeout=0.3),
            Step("hang2", steps.wait_for_gate_file, timeout=0.3),
            Step("quick", steps.quick, timeout=2.0),
        ],
    )
    try:
        result = flow.run({"gate": str(gate), "within": 5.0}, executor=client, on_event=release_hang)
    finally:
        gate.write_text("go")
    assert result.steps["hang1"].status is StepStatus.TIMED_OUT
    assert result.steps["hang2"].status is StepStatus.TIMED_OUT
    assert result.steps["quick"].status is StepStatus.COMPLETED, result.steps["quick"].error


def _attempt_keys(dask_scheduler) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(key) for key in dask_scheduler.tasks if str(key).startswith(("flowpool-one-", "flowpool-two-"))]


def test_an_attempts_result_is_released_on_the_cluster_once_read(client: object) -> None:
    """Not when a cyclic garbage collection of the run's records gets to it."""
    import gc
    import time

    flow = Flow("held").step("one", lambda ctx: b"x" * 100_000).step("two", lambda ctx: len(ctx.results["one"]))
    gc.disable()
    try:
        result = flow.run(executor=client)
        assert result.ok, result.error
        deadline = time.monotonic() + 20.0
        keys = client.run_on_scheduler(_attempt_keys)  # type: ignore[attr-defined]
        while keys and time.monotonic() < deadline:  # the scheduler forgets them asynchronously
            time.sleep(0.1)
            keys = client.run_on_scheduler(_attempt_keys)  # type: ignore[attr-defined]
    finally:
        gc.enable()
    assert keys == []
