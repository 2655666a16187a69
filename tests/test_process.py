"""Process mode: hard timeouts, crash isolation, envelopes — the fault matrix.

Every case checks that each step has a final status and that no process is
left behind (lane workers kept for reuse excepted).
"""

from __future__ import annotations

import glob
import os
import pickle
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import steps
from processes import pid_alive, stray_children, wait_for_file, wait_until_gone

from flowpool import (
    Event,
    Flow,
    FlowpoolError,
    RemoteError,
    Step,
    StepStatus,
    StepTimeoutError,
    UnpicklableResultError,
    WorkerCrashedError,
    shutdown_workers,
)
from flowpool._executors import _lanestore

pytestmark = pytest.mark.timeout(90)

FINAL = {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.CANCELLED, StepStatus.SKIPPED}


@pytest.fixture(autouse=True)
def no_stray_processes() -> Iterator[None]:
    yield
    leftovers = stray_children()
    alive = wait_until_gone([p.pid for p in leftovers], within=5.0)
    assert not alive, f"processes left behind: {alive}"


def assert_final(result) -> None:  # type: ignore[no-untyped-def]
    for step in result.steps.values():
        assert step.status in FINAL


def test_hung_step_is_killed_at_its_timeout_and_siblings_finish_undisturbed(tmp_path: Path) -> None:
    flow = Flow("hang").parallel(
        "g",
        [
            Step("hang", steps.write_pid_and_wait, timeout=0.5),
            Step("slow", steps.slow_ok),
            Step("quick", steps.quick),
        ],
    )
    # write_pid_and_wait checks ctx.cancelled, so use the uncooperative hang for the kill.
    flow = Flow("hang").parallel(
        "g", [Step("hang", steps.hang, timeout=0.5), Step("slow", steps.slow_ok), Step("quick", steps.quick)]
    )
    result = flow.run(executor="process", max_workers=3)
    assert_final(result)
    assert result.steps["hang"].status is StepStatus.TIMED_OUT
    assert isinstance(result.steps["hang"].error, StepTimeoutError)
    assert result.steps["slow"].value == "fine"
    assert result.steps["slow"].attempts == 1
    assert result.steps["quick"].ok


def test_timeout_kills_a_subprocess_the_step_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    flow = Flow("sub").step("spawn", steps.subprocess_hangs, timeout=2.0)
    result = flow.run({"pid_file": str(pid_file)}, executor="process")
    assert result.steps["spawn"].status is StepStatus.TIMED_OUT
    child = int(wait_for_file(pid_file))
    assert not wait_until_gone([child], within=5.0)


@pytest.mark.parametrize("fn", [steps.exit_hard, steps.segfault], ids=["os._exit", "SIGSEGV"])
def test_a_crashing_worker_fails_only_its_step(fn) -> None:  # type: ignore[no-untyped-def]
    flow = Flow("crash").parallel("g", [Step("crash", fn), Step("slow", steps.slow_ok), Step("quick", steps.quick)])
    result = flow.run(executor="process", max_workers=3)
    assert_final(result)
    crash = result.steps["crash"]
    assert crash.status is StepStatus.FAILED
    assert isinstance(crash.error, WorkerCrashedError)
    assert result.steps["slow"].ok and result.steps["slow"].attempts == 1
    assert result.steps["quick"].ok and result.steps["quick"].attempts == 1


def test_a_worker_crash_is_retryable(tmp_path: Path) -> None:
    flow = Flow("retry-crash").step("crash", steps.crash_then_succeed, retries=1)
    result = flow.run({"marker": str(tmp_path / "marker")}, executor="process")
    assert result.ok
    assert result.steps["crash"].attempts == 2
    assert result.values["crash"] == 2


def test_an_external_sigkill_of_a_worker_fails_only_its_step(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    flow = Flow("sigkill").parallel("g", [Step("victim", steps.write_pid_and_wait), Step("slow", steps.slow_ok)])
    killer_error: list[BaseException] = []

    def kill_victim() -> None:
        try:
            os.kill(int(wait_for_file(pid_file)), signal.SIGKILL)
        except BaseException as error:
            killer_error.append(error)

    killer = threading.Thread(target=kill_victim)
    killer.start()
    try:
        result = flow.run({"pid_file": str(pid_file)}, executor="process", max_workers=2)
    finally:
        killer.join(timeout=30)
    assert not killer_error
    assert isinstance(result.steps["victim"].error, WorkerCrashedError)
    assert result.steps["slow"].ok and result.steps["slow"].attempts == 1


def test_an_unpicklable_value_fails_only_its_step() -> None:
    flow = Flow("value").parallel("g", [Step("lock", steps.lock_value), Step("quick", steps.quick)])
    result = flow.run(executor="process")
    error = result.steps["lock"].error
    assert isinstance(error, UnpicklableResultError)
    assert isinstance(error, FlowpoolError)
    assert "pickle" in str(error)
    assert result.steps["quick"].ok


@pytest.mark.parametrize(
    ("fn", "type_name"),
    [(steps.raise_unpicklable, "LockError"), (steps.raise_two_arg, "TwoArgError")],
    ids=["unpicklable", "two-arg-init"],
)
def test_an_exception_that_cannot_travel_keeps_its_type_message_and_traceback(fn, type_name) -> None:  # type: ignore[no-untyped-def]
    flow = Flow("exc").parallel("g", [Step("raise", fn), Step("slow", steps.slow_ok)])
    result = flow.run(executor="process", max_workers=2)
    error = result.steps["raise"].error
    assert isinstance(error, RemoteError)
    assert isinstance(error, FlowpoolError)
    assert error.type_name.endswith(type_name)
    assert "Traceback" in error.remote_traceback
    assert error.__cause__ is not None and type_name in str(error.__cause__)
    assert result.steps["slow"].ok and result.steps["slow"].attempts == 1


def test_an_exception_that_travels_comes_back_with_its_remote_traceback() -> None:
    result = Flow("exc").step("fail", steps.fail).run(executor="process")
    error = result.steps["fail"].error
    assert isinstance(error, ValueError) and str(error) == "boom"
    assert "Traceback" in str(error.__cause__)


def test_a_100_mb_value_comes_back() -> None:
    result = Flow("big").step("big", steps.big_value).run(executor="process")
    assert result.ok
    assert len(result.values["big"]) == 100_000_000


def test_lambdas_and_closures_work() -> None:
    base = 40
    result = Flow("closure").step("add", lambda ctx: base + 2).run(executor="process")
    assert result.values["add"] == 42


def test_ctx_cancelled_reaches_a_worker_when_its_group_fails_fast() -> None:
    flow = Flow("ff").parallel("g", [Step("waits", steps.wait_cancelled), Step("fails", steps.fail)], fail_fast=True)
    result = flow.run(executor="process", max_workers=2)
    assert result.steps["fails"].status is StepStatus.FAILED
    assert result.steps["waits"].status is StepStatus.CANCELLED
    assert "failed fast" in str(result.steps["waits"].error)


def test_workers_are_reused_across_runs() -> None:
    flow = Flow("reuse").step("pid", steps.quick)
    first = flow.run(executor="process").values["pid"]
    second = flow.run(executor="process").values["pid"]
    assert first == second


def test_process_step_inside_a_thread_run_and_its_compensation_runs_there(tmp_path: Path) -> None:
    log = tmp_path / "log"
    flow = (
        Flow("mixed")
        .step("proc", steps.quick, executor="process", compensate=steps.record_compensation)
        .step("fail", steps.fail)
    )
    result = flow.run({"log": str(log)})
    assert result.compensated == ("proc",)
    step, pid = log.read_text().strip().split(":")
    assert step == "proc"
    assert int(pid) != os.getpid()


def test_shutdown_workers_kills_the_lanes() -> None:
    Flow("pids").step("pid", steps.quick).run(executor="process")
    pid = Flow("pids").step("pid", steps.quick).run(executor="process").values["pid"]
    assert pid_alive(pid)
    shutdown_workers()
    assert not wait_until_gone([pid], within=5.0)


def test_a_users_process_pool_gets_attempts_only_when_a_worker_is_free() -> None:
    import concurrent.futures

    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        flow = Flow("queued").parallel(
            "g", [Step(f"m{i}", steps.slow_ok, timeout=5.0) for i in range(3)]
        )  # 0.3 s each, one at a time: a timeout counted from submission would still pass,
        result = flow.run(executor=pool)
        assert result.ok, result.error
        starts = sorted(step.started_at for step in result.steps.values() if step.started_at is not None)
        # ...but the starts must be spread out, one after another, not all at submission.
        assert starts[-1] - starts[0] >= 0.4


# ── values reach later stages; each is sent to each lane once per run ──────────────


def _big(ctx):  # type: ignore[no-untyped-def]
    return bytes([ctx.input["seed"] % 256]) * ctx.input.get("size", 1_000_000)


def _reads_big(ctx):  # type: ignore[no-untyped-def]
    value = ctx.results["big"]
    return (ctx.step, value[:1] * len(value) == value, len(value), value[0], sorted(ctx.results))


def _flaky_reader(ctx):  # type: ignore[no-untyped-def]
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return _reads_big(ctx)


def _crash_first_then_read(ctx):  # type: ignore[no-untyped-def]
    marker = Path(ctx.input["marker"])
    if not marker.exists():
        marker.write_text("crashed")
        os._exit(3)
    return _reads_big(ctx)


def _hang_first_then_read(ctx):  # type: ignore[no-untyped-def]
    if ctx.attempt == 1:
        steps.hang(ctx)
    return _reads_big(ctx)


def _sees_no_sibling(ctx):  # type: ignore[no-untyped-def]
    return sorted(ctx.results)


def _held_sessions(ctx):  # type: ignore[no-untyped-def]
    from flowpool._executors import _worker

    return len(_worker._sessions), os.getpid()


def assert_read_big(result, name: str, seed: int, names: list[str], size: int = 1_000_000) -> None:  # type: ignore[no-untyped-def]
    assert result.steps[name].ok, result.steps[name].error
    step, uniform, read_size, first, seen = result.values[name]
    assert (step, uniform, read_size, first) == (name, True, size, seed % 256)
    assert seen == names


@pytest.fixture
def payloads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    from flowpool._executors import _process

    sent: list[tuple[str, int, int]] = []
    monkeypatch.setattr(_process, "on_payload", lambda step, lane, size: sent.append((step, lane, size)))
    return sent


def our_spools() -> list[str]:
    return glob.glob(os.path.join(glob.escape(tempfile.gettempdir()), f"flowpool-{os.getpid()}-spool-*"))


@pytest.mark.parametrize("size", [1_000_000, 3_000_000], ids=["spooled-as-it-came", "pickled-again-once"])
def test_a_large_earlier_value_is_never_in_a_payload_and_its_spool_goes_with_the_run(
    payloads: list[tuple[str, int, int]], size: int
) -> None:
    flow = Flow("spooled").step("big", _big).parallel("g", [Step(f"r{i}", _reads_big) for i in range(12)])
    for seed in (1, 2):
        payloads.clear()
        result = flow.run({"seed": seed, "size": size}, executor="process", max_workers=2)
        for i in range(12):
            assert_read_big(result, f"r{i}", seed, ["big"], size)
        readers = [size for step, _lane, size in payloads if step.startswith("r")]
        assert len(readers) == 12
        assert max(readers) < 20_000, "the 1 MB value is read from the run's spool, not sent"
        assert our_spools() == []


def _medium(ctx):  # type: ignore[no-untyped-def]
    return "m" * 3000


def _reads_medium(ctx):  # type: ignore[no-untyped-def]
    return ctx.results["medium"] == "m" * 3000


def test_a_small_earlier_value_travels_to_each_lane_once_per_run(payloads: list[tuple[str, int, int]]) -> None:
    flow = Flow("once").step("medium", _medium).parallel("g", [Step(f"r{i}", _reads_medium) for i in range(12)])
    for _ in range(2):  # a second run sends its own value again, once per lane
        payloads.clear()
        result = flow.run(executor="process", max_workers=2)
        assert result.ok, result.error
        assert all(result.values[f"r{i}"] is True for i in range(12))
        readers = [(lane, size) for step, lane, size in payloads if step.startswith("r")]
        assert len(readers) == 12
        lanes = {lane for lane, _ in readers}
        carrying = [lane for lane, size in readers if size > 3000]
        assert sorted(carrying) == sorted(lanes), "exactly the first payload on each lane carries the value"


def test_values_reach_later_stages_through_retries_and_group_members_do_not_see_each_other() -> None:
    flow = (
        Flow("stages")
        .step("big", _big)
        .parallel("g", [Step("flaky", _flaky_reader, retries=1), Step("a", _sees_no_sibling)])
        .step("last", _sees_no_sibling)
    )
    result = flow.run({"seed": 7}, executor="process", max_workers=2)
    assert result.ok, result.error
    assert result.steps["flaky"].attempts == 2
    assert_read_big(result, "flaky", 7, ["big"])
    assert result.values["a"] == ["big"]
    assert result.values["last"] == ["a", "big", "flaky"]


def test_a_compensation_reads_every_completed_value_in_a_worker(tmp_path: Path) -> None:
    log = tmp_path / "log"

    def compensate(ctx, value):  # type: ignore[no-untyped-def]
        Path(ctx.input["log"]).write_text(
            repr((sorted(ctx.results), len(ctx.results["big"]), value == ctx.results["do"]))
        )

    flow = (
        Flow("saga")
        .step("big", _big)
        .step("do", lambda ctx: len(ctx.results["big"]), compensate=compensate)
        .step("fail", steps.fail)
    )
    result = flow.run({"seed": 3, "log": str(log)}, executor="process", max_workers=2)
    assert result.compensated == ("do",)
    assert log.read_text() == repr((["big", "do"], 1_000_000, True))


def test_values_reach_a_lane_that_replaced_one_killed_at_a_timeout(payloads: list[tuple[str, int, int]]) -> None:
    flow = (
        Flow("killed")
        .step("big", _big)
        .step("hang", _hang_first_then_read, timeout=1.0, retries=1)
        .parallel("after", [Step(f"r{i}", _reads_big) for i in range(4)])
    )
    result = flow.run({"seed": 5}, executor="process", max_workers=1)
    assert result.steps["hang"].attempts == 2
    assert_read_big(result, "hang", 5, ["big"])
    for i in range(4):
        assert_read_big(result, f"r{i}", 5, ["big", "hang"])
    hang = [lane for step, lane, _size in payloads if step == "hang"]
    assert len(hang) == 2 and hang[0] != hang[1], "the retry ran on the lane that replaced the killed one"


def test_values_reach_a_lane_that_replaced_one_that_crashed(tmp_path: Path) -> None:
    flow = Flow("crashed").step("big", _big).step("crash", _crash_first_then_read, retries=1)
    result = flow.run({"seed": 9, "marker": str(tmp_path / "marker")}, executor="process", max_workers=1)
    assert result.steps["crash"].attempts == 2
    assert_read_big(result, "crash", 9, ["big"])


def test_concurrent_runs_sharing_lanes_each_read_their_own_values() -> None:
    flow = Flow("shared").step("big", _big).parallel("g", [Step(f"r{i}", _reads_big) for i in range(6)])
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run(seed: int) -> None:
        try:
            start.wait(timeout=30)
            results[seed] = flow.run({"seed": seed}, executor="process", max_workers=2)
        except BaseException as error:
            errors.append(error)
            start.abort()

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(10, 14)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=80)
    assert not errors
    assert sorted(results) == [10, 11, 12, 13]
    for seed, result in results.items():
        for i in range(6):
            assert_read_big(result, f"r{i}", seed, ["big"])


def test_a_worker_drops_the_values_of_runs_that_ended() -> None:
    flow = Flow("many").step("big", _big).step("held", _held_sessions)
    for seed in range(8):
        result = flow.run({"seed": seed}, executor="process", max_workers=1)
        assert result.ok, result.error
        held, _pid = result.values["held"]
        assert held == 1, "only the running run's values are kept"


def _loaded_then_read(ctx):  # type: ignore[no-untyped-def]
    from flowpool._executors import _worker

    session = next(session for session in _worker._sessions.values() if session.results is ctx.results)
    before = len(session.loaded)
    mapping = (len(ctx.results), "big" in ctx.results, "nope" in ctx.results, sorted(ctx.results))
    unread = len(session.loaded)
    copied = ctx.results.copy()
    return before, mapping, unread, len(session.loaded), type(copied).__name__, len(copied["big"])


def test_a_worker_loads_a_value_only_when_a_step_reads_it() -> None:
    flow = Flow("lazy").step("big", _big).step("small", lambda ctx: 1).step("inspect", _loaded_then_read)
    result = flow.run({"seed": 1}, executor="process", max_workers=1)
    assert result.ok, result.error
    assert result.values["inspect"] == (0, (2, True, False, ["big", "small"]), 0, 2, "dict", 1_000_000)


def test_lane_pool_pids_lists_the_live_workers() -> None:
    from flowpool._executors import _process

    pid = Flow("pid").step("pid", steps.quick).run(executor="process").values["pid"]
    assert pid in _process._POOL.pids()
    assert all(pid_alive(p) for p in _process._POOL.pids())


# ── the lane protocol, run in this process (the worker side is plain functions) ─────


@pytest.fixture
def worker_side(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh worker-side store in this process, and a lane flag file."""
    import mmap

    from flowpool._executors import _worker

    monkeypatch.setattr(_worker, "_sessions", {})
    monkeypatch.setattr(_worker, "_functions", {})
    monkeypatch.setattr(_worker, "_store_key", 0)
    flag_path = tmp_path / "flag"
    flag_path.write_bytes(b"\0" * _worker.FLAG_SIZE)
    with open(flag_path, "r+b") as file:
        flag = mmap.mmap(file.fileno(), _worker.FLAG_SIZE)
    yield _worker, str(flag_path), flag
    flag.close()
    _worker._flags.pop(str(flag_path), None)


_INPUTS: dict[str, dict[str, str]] = {}


def _context(run_id: str, step: str, results: object, attempt: int = 1) -> object:
    from flowpool._context import Context

    run_input = _INPUTS.setdefault(run_id, {"run": run_id})  # one input object per run, as in a run
    return Context(input=run_input, flow="f", run_id=run_id, step=step, attempt=attempt, results=results)  # type: ignore[arg-type]


def _envelope_value(worker, envelope: bytes) -> object:  # type: ignore[no-untyped-def]
    ok, value, error = worker.decode(envelope, "step")
    assert ok, error
    return value


def _read_all(ctx):  # type: ignore[no-untyped-def]
    return ctx.input["run"], dict(ctx.results)


def test_a_withdrawn_queued_attempt_still_leaves_what_it_carried_for_the_next(worker_side) -> None:  # type: ignore[no-untyped-def]
    from types import MappingProxyType

    worker, flag_path, flag = worker_side
    packer, lane = _lanestore.CallPacker(), _lanestore.LaneStore()
    results = MappingProxyType({"a": "x" * 100})
    first = lane.payload(packer.prepare(_read_all, _context("r1", "s1", results), ()))
    second = lane.payload(packer.prepare(_read_all, _context("r1", "s2", results), ()))
    assert len(second) < 200 < len(first)  # the value rides with the first payload only
    worker.write_cancel(flag, 1, "group failed fast")
    ok, _value, error = worker.decode(worker.run_attempt(first, flag_path, 1, queued=True), "s1")
    assert not ok and isinstance(error, worker.NotStartedError)
    assert _envelope_value(worker, worker.run_attempt(second, flag_path, 2)) == ("r1", {"a": "x" * 100})


def test_a_worker_refuses_a_payload_made_for_another_worker(worker_side) -> None:  # type: ignore[no-untyped-def]
    from types import MappingProxyType

    worker, flag_path, _flag = worker_side
    packer, mine, other = _lanestore.CallPacker(), _lanestore.LaneStore(), _lanestore.LaneStore()
    results = MappingProxyType({"a": 1})
    worker.run_attempt(mine.payload(packer.prepare(_read_all, _context("r", "s1", results), ())), flag_path, 1)
    other.payload(packer.prepare(_read_all, _context("r", "s1", results), ()))  # its worker got this one
    follow_up = other.payload(packer.prepare(_read_all, _context("r", "s2", results), ()))
    with pytest.raises(worker.StaleStoreError):
        worker.run_attempt(follow_up, flag_path, 2)


def test_a_worker_keeps_a_bounded_number_of_runs_and_is_sent_an_evicted_one_again(worker_side) -> None:  # type: ignore[no-untyped-def]
    from types import MappingProxyType

    worker, flag_path, _flag = worker_side
    lane = _lanestore.LaneStore()
    packers = {f"r{i}": _lanestore.CallPacker() for i in range(lane.MAX_SESSIONS + 2)}
    token = 0
    for run_id, packer in [*packers.items(), ("r0", packers["r0"])]:
        results = MappingProxyType({"v": run_id})
        token += 1
        payload = lane.payload(packer.prepare(_read_all, _context(run_id, "s", results), ()))
        assert _envelope_value(worker, worker.run_attempt(payload, flag_path, token)) == (run_id, {"v": run_id})
        assert len(worker._sessions) <= lane.MAX_SESSIONS
    lane.forget(packers["r0"].sessions)
    token += 1
    payload = lane.payload(packers["r1"].prepare(_read_all, _context("r1", "s", MappingProxyType({})), ()))
    worker.run_attempt(payload, flag_path, token)
    assert packers["r0"].sessions[0] not in worker._sessions


def test_spool_files_of_dead_processes_are_swept_and_live_ones_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from flowpool._executors import _lanestore

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead = int(done.stdout)
    stale = tmp_path / f"flowpool-{dead}-spool-old"
    live = tmp_path / f"flowpool-{os.getpid()}-spool-current"
    other = tmp_path / "flowpool-notapid-spool-x"
    for path in (stale, live, other):
        path.write_bytes(b"x")
        os.utime(path, (1, 1))  # older than the grace a new file gets
    monkeypatch.setattr(_lanestore, "_swept", False)
    _lanestore._sweep_spools(str(tmp_path))
    assert not stale.exists()
    assert live.exists() and other.exists()


def test_a_worker_that_does_not_hold_what_its_lane_was_sent_counts_as_crashed_and_a_retry_runs_elsewhere() -> None:
    from flowpool._executors import _lanestore, _process

    shutdown_workers()
    flow = Flow("stale").step("pid", steps.quick, retries=1)
    first = flow.run(executor="process", max_workers=1).values["pid"]
    with _process._POOL._lock:
        lanes = list(_process._POOL._all)
    assert [pid for lane in lanes for pid in lane.pids()] == [first]
    stale = _lanestore.LaneStore()
    stale._fresh = False  # as if its worker had been replaced behind the lane's back
    lanes[0].store = stale
    result = flow.run(executor="process", max_workers=1)
    assert result.ok, result.error
    assert result.steps["pid"].attempts == 2
    assert result.values["pid"] != first


def test_an_attempt_that_ends_while_its_timeout_kill_is_under_way_does_not_give_its_lane_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Otherwise another run's attempt could start on that lane and be killed by this timeout."""
    from flowpool._executors import _process

    gate = tmp_path / "gate"
    finished = threading.Event()
    idle_at_kill: list[bool] = []
    original_finished = _process.ProcessBackend._finished
    original_kill = _process.Lane.kill

    def finished_then_tell(self, attempt, lane, future):  # type: ignore[no-untyped-def]
        try:
            original_finished(self, attempt, lane, future)
        finally:
            finished.set()

    def kill_after_the_attempt_ended(self, wait: bool = False) -> None:  # type: ignore[no-untyped-def]
        if not idle_at_kill:
            gate.write_text("go")  # the step returns now, before its lane is killed
            assert finished.wait(30.0), "the attempt never ended"
            with self.pool._lock:
                idle_at_kill.append(self in self.pool._idle)
        original_kill(self, wait)

    monkeypatch.setattr(_process.ProcessBackend, "_finished", finished_then_tell)
    monkeypatch.setattr(_process.Lane, "kill", kill_after_the_attempt_ended)
    flow = Flow("race").step("gated", steps.wait_for_gate_file, timeout=0.3)
    result = flow.run({"gate": str(gate)}, executor="process", max_workers=1)
    assert result.steps["gated"].status is StepStatus.TIMED_OUT
    assert idle_at_kill == [False], "the lane about to be killed was handed back as idle"


def _timed_out_then_next_attempt(tmp_path: Path, **run: object):  # type: ignore[no-untyped-def]
    """One worker; ``hang`` times out but runs on (until ``quick`` ends, or 5 s): ``quick``
    must not be handed over, and its timeout start, while ``hang`` still holds the worker."""
    gate = tmp_path / "gate"

    def release_hang(event) -> None:  # type: ignore[no-untyped-def]
        if event.kind == "step_finished" and event.step == "quick":
            gate.write_text("go")

    flow = Flow("slot").parallel(
        "g", [Step("hang", steps.wait_for_gate_file, timeout=0.3), Step("quick", steps.quick, timeout=2.0)]
    )
    try:
        return flow.run({"gate": str(gate), "within": 5.0}, on_event=release_hang, **run)
    finally:
        gate.write_text("go")


def test_a_users_process_pool_keeps_a_timed_out_attempts_slot_until_it_ends(tmp_path: Path) -> None:
    import concurrent.futures

    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        result = _timed_out_then_next_attempt(tmp_path, executor=pool)
    assert result.steps["hang"].status is StepStatus.TIMED_OUT
    assert result.steps["quick"].status is StepStatus.COMPLETED, result.steps["quick"].error


def _five_mb(ctx):  # type: ignore[no-untyped-def]
    import gc

    gc.disable()  # in the worker, until ``steps.held_sessions``: no cycle is collected meanwhile
    return bytearray(5_000_000)


def _reads_five_mb(ctx):  # type: ignore[no-untyped-def]
    return len(ctx.results["five"])


def test_an_idle_lane_drops_a_finished_runs_values_without_waiting_for_its_next_payload() -> None:
    from flowpool._executors import _process

    flow = Flow("idle").step("five", _five_mb).step("read", _reads_five_mb)
    result = flow.run(executor="process", max_workers=1)
    assert result.ok, result.error
    with _process._POOL._lock:
        idle = list(_process._POOL._idle)
    assert idle
    for lane in idle:  # a lane runs its calls in order: this one after any drop sent to it
        assert lane.call(steps.held_sessions, timeout=30) == (0, 0)


def _hundred_kb(ctx):  # type: ignore[no-untyped-def]
    return bytes(100_000)


def _reads_hundred_kb(ctx):  # type: ignore[no-untyped-def]
    return sorted(len(value) for value in ctx.results.values())


def _spool_writers_done() -> None:
    """Wait for the spool writer threads of runs that ended: a run's last values are written
    by its spool's thread, which may still be at it (or find the spool closed) when the run
    has returned, and would be counted by the next count."""
    for thread in threading.enumerate():
        if thread.name == "flowpool-spool":
            thread.join(30)
            assert not thread.is_alive(), "a spool writer outlived its run"


def _count_spool_writes_and_value_picklings(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    _spool_writers_done()  # an earlier test's writer must not be counted here
    written: list[int] = []
    pickled: list[int] = []
    append, dumps = _lanestore.Spool.append, _lanestore._dumps

    def counting_append(self, data):  # type: ignore[no-untyped-def]
        written.append(len(data))
        return append(self, data)

    def counting_dumps(value):  # type: ignore[no-untyped-def]
        data = dumps(value)
        if len(data) >= 100_000:
            pickled.append(len(data))
        return data

    monkeypatch.setattr(_lanestore.Spool, "append", counting_append)
    monkeypatch.setattr(_lanestore, "_dumps", counting_dumps)
    return written, pickled


def test_a_large_value_is_written_to_the_spool_once_as_it_arrives_and_never_pickled_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written, pickled = _count_spool_writes_and_value_picklings(monkeypatch)
    last = Flow("last").parallel("g", [Step(f"v{i}", _hundred_kb) for i in range(4)])
    assert last.run(executor="process", max_workers=2).ok
    _spool_writers_done()  # no later stage waited for the writes: the run may return first
    assert len(written) == 4, "each value is handed to the spool's writer as it arrives"
    written.clear()
    then = last.step("read", _reads_hundred_kb)
    result = then.run(executor="process", max_workers=2)
    assert result.ok, result.error
    assert result.values["read"] == [100_000] * 4
    assert len(written) == 4, "each value written once, not again for the stage that is handed them"
    assert pickled == [], "the worker's own bytes are what the spool holds"


def test_past_the_eager_spool_budget_values_are_pickled_when_a_later_stage_is_handed_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written, pickled = _count_spool_writes_and_value_picklings(monkeypatch)
    monkeypatch.setattr(_lanestore, "EAGER_SPOOL_MAX", 250_000)  # two envelopes of 100 KB
    flow = Flow("budget").parallel("g", [Step(f"v{i}", _hundred_kb) for i in range(4)]).step("read", _reads_hundred_kb)
    result = flow.run(executor="process", max_workers=2)
    assert result.ok, result.error
    assert result.values["read"] == [100_000] * 4
    assert len(pickled) == 2, "the two past the budget are pickled again, once, for the reader"
    assert len(written) == 4, "and written then: each value is in the spool once"


def _item_value(ctx):  # type: ignore[no-untyped-def]
    if ctx.item % 5 == 4:
        raise ValueError("every fifth item fails")
    return bytes([ctx.item]) * (100_000 if ctx.item % 2 else 10)  # large and small ones


def _reads_item_values(ctx):  # type: ignore[no-untyped-def]
    values = ctx.results["items"]
    return type(values).__name__, [(key, len(value), value[:1]) for key, value in values.items()]


def test_a_later_stage_gets_a_maps_large_item_values_from_the_spool_in_item_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written, pickled = _count_spool_writes_and_value_picklings(monkeypatch)
    flow = (
        Flow("map-values")
        .map("items", _item_value, items=[7, 2, 9, 4, 1, 6, 3], key=lambda item: f"k{item}", tolerated_failures=5)
        .parallel("g", [Step(f"r{i}", _reads_item_values) for i in range(4)])
    )
    result = flow.run(executor="process", max_workers=2)
    assert result.ok, result.error
    expected = [
        (f"k{item}", 100_000 if item % 2 else 10, bytes([item])) for item in [7, 2, 9, 4, 1, 6, 3] if item % 5 != 4
    ]
    assert all(result.values[f"r{i}"] == ("dict", expected) for i in range(4))
    assert len(written) == 3, "each large item value (7, 1, 3) is written once, as it arrives"
    assert pickled == [], "and not pickled again for the stage that reads the map"


def test_a_killed_parents_worker_ends_its_steps_subprocesses_and_removes_the_runs_files(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    script = Path(__file__).parent / "faults" / "killed_parent.py"
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stderr=subprocess.PIPE)
    try:
        worker, child = (int(pid) for pid in wait_for_file(tmp_path / "pids", within=60).split())
        paths = json.loads((tmp_path / "paths").read_text())
        assert all(os.path.exists(path) for path in paths.values())
        parent.kill()
        parent.wait(timeout=30)
        assert not wait_until_gone([worker, child], within=30.0), "the worker and its step's subprocess end"
        assert [path for path in paths.values() if os.path.exists(path)] == []
        assert not os.path.exists(os.path.dirname(paths["log"]))
    finally:
        parent.kill()
        parent.wait(timeout=30)
        if parent.stderr is not None:
            parent.stderr.close()


def test_a_sweep_removes_only_what_no_live_process_holds_whatever_pid_its_name_shows(tmp_path: Path) -> None:
    """A process in another PID namespace cannot see the owner: the owner's lock decides."""
    import fcntl
    import subprocess
    import sys

    from flowpool._executors import _sweep

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    invisible = int(done.stdout)  # looks dead to us, as a live owner in another namespace would
    held = tmp_path / f"flowpool-{invisible}-lane1-held"
    left = tmp_path / f"flowpool-{invisible}-lane1-left"
    new = tmp_path / f"flowpool-{invisible}-lane1-new"
    held_folder = tmp_path / f"flowpool-logs-{invisible}-held"
    left_folder = tmp_path / f"flowpool-logs-{invisible}-left"
    unnamed_folder = tmp_path / "flowpool-logs-old"  # no pid: from an older flowpool, maybe in use
    for path in (held, left, new):
        path.write_bytes(b"x")
    for folder in (held_folder, left_folder, unnamed_folder):
        folder.mkdir()
        (folder / "socket").write_bytes(b"")
    for path in (held, left, held_folder, left_folder, unnamed_folder):
        os.utime(path, (1, 1))
    holders = [_sweep.hold_path(str(held)), _sweep.hold_path(str(held_folder))]
    try:
        _sweep.sweep(str(tmp_path), "flowpool-*-lane*-*")
        _sweep.sweep(str(tmp_path), "flowpool-logs-*-*", pid_field=2)
        assert held.exists() and held_folder.exists(), "held by a live owner"
        assert unnamed_folder.exists()
        assert new.exists(), "too new to judge: its owner may not have locked it yet"
        assert not left.exists() and not left_folder.exists()
        fcntl.flock(holders[0], fcntl.LOCK_SH | fcntl.LOCK_NB)  # still ours
    finally:
        for fd in holders:
            os.close(fd)
    _sweep.sweep(str(tmp_path), "flowpool-*-lane*-*")
    assert not held.exists(), "let go: removed"


def test_a_run_holds_its_spool_file_against_sweeps(tmp_path: Path) -> None:
    import fcntl

    spool = _lanestore.Spool(str(tmp_path))
    assert spool.append(b"x" * 10) == (0, 10)
    try:
        fd = os.open(spool.path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        spool.close()
    assert not os.path.exists(spool.path)


def test_a_spool_file_another_run_holds_is_kept_though_its_pid_is_not_visible(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    owner = _lanestore.Spool(str(tmp_path))  # as a run in another PID namespace: a pid we cannot see
    owner.path = str(tmp_path / f"flowpool-{int(done.stdout)}-spool-live")
    monkeypatch.setattr(_lanestore, "_swept", True)  # (its own creation sweeps nothing)
    assert owner.append(b"x" * 10) is not None
    try:
        os.utime(owner.path, (1, 1))
        monkeypatch.setattr(_lanestore, "_swept", False)
        _lanestore._sweep_spools(str(tmp_path))
        assert os.path.exists(owner.path)
    finally:
        owner.close()


@pytest.mark.timeout(60)
def test_a_run_that_ends_abnormally_leaves_no_step_running(tmp_path: Path) -> None:
    """A KeyboardInterrupt that does not come through flowpool's Ctrl-C routing (here
    raised by a listener; a program's own SIGINT handler does the same) must not leave
    the running step's worker behind the caller."""
    pid_file = tmp_path / "worker.pid"

    def listener(event: Event) -> None:
        if event.kind == "step_started":
            wait_for_file(pid_file)
            raise KeyboardInterrupt

    flow = Flow("abnormal").step("hang", steps.write_pid_and_hang, timeout=60.0)
    with pytest.raises(KeyboardInterrupt):
        flow.run(str(pid_file), executor="process", max_workers=1, on_event=listener)
    pid = int(pid_file.read_text())
    assert wait_until_gone([pid], within=15.0) == [], "the step's worker outlived the run"


# ── a lane's own transport ──────────────────────────────────────────────────────


def _wait_for_gate(path: str) -> str:
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "opened"


def _size(data: bytes) -> int:
    return len(data)


def test_large_messages_to_a_busy_worker_never_hold_the_sender(tmp_path: Path) -> None:
    """A message bigger than a socket's buffer, sent while the worker runs something,
    would block its sender (the settle loop, or a lane's reader) until the worker reads
    it; the lane's writer thread sends those instead, in order with the small ones."""
    from flowpool._executors import _lane, _process

    lane = _lane.Lane(_process._POOL, 10_000)
    ready = threading.Event()
    replies: list[Any] = []
    gate = tmp_path / "gate"
    try:
        lane.start(lambda reply: ready.set())
        assert ready.wait(60), "the lane never answered its ping"
        lane.send_call(_wait_for_gate, (str(gate),), replies.append)
        big = bytes(4 * 1024 * 1024)
        for size in (len(big), 10, len(big), 20):  # small ones behind big ones keep their place
            lane.send_call(_size, (big[:size],), replies.append)
    finally:
        gate.write_text("go")  # only once every send above has returned
    assert lane.call(_size, b"last", timeout=60) == 4
    assert [pickle.loads(reply.data) for reply in replies] == ["opened", len(big), 10, len(big), 20]
    lane.kill(wait=True)


def _wait_for_path(path: str) -> str:
    """In a worker: hold it busy until ``path`` exists (the test's gate, released in its finally)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return "released"


def test_a_worker_that_dies_between_messages_answers_what_is_pending_as_crashed(tmp_path: Path) -> None:
    from flowpool._executors import _lane, _process

    lane = _lane.Lane(_process._POOL, 10_001)
    ready = threading.Event()
    replies: list[Any] = []
    answered = threading.Event()
    gate = tmp_path / "release"

    def on_reply(reply: Any) -> None:
        replies.append(reply)
        if len(replies) == 3:
            answered.set()

    lane.start(lambda reply: ready.set())
    try:
        assert ready.wait(60), "the lane never answered its ping"
        # The worker is held busy while the next two are sent: both are pending when it
        # dies (sent after its exit, the second would meet a closed socket instead).
        lane.send_call(_wait_for_path, (str(gate),), on_reply)
        lane.send_call(os._exit, (3,), on_reply)
        lane.send_call(_size, (b"never",), on_reply)
        gate.touch()
        assert answered.wait(60), "the callbacks were not called"
    finally:
        gate.touch()
        lane.kill(wait=True)
    assert pickle.loads(replies[0].data) == "released"
    assert [(reply.data, reply.crash) for reply in replies[1:]] == [(None, "exit status 3")] * 2
    assert lane.broken and lane.pids() == []
    with pytest.raises(OSError):
        lane.send_call(_size, (b"too late",), on_reply)
