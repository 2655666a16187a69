"""Ctrl-C (SIGINT) once and twice, and SIGKILL of the parent, in real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import pid_alive, wait_until_gone

pytestmark = pytest.mark.timeout(90)

SCRIPT = Path(__file__).parent / "faults" / "interrupt_script.py"


def wait_for(predicate, within: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"{what} did not happen within {within} s")


def start(mode: str, markers: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), mode, str(markers), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def running(markers: Path) -> list[Path]:
    return sorted(markers.glob("running-*"))


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_one_ctrl_c_stops_work_compensates_and_raises_flow_interrupted(tmp_path: Path, mode: str) -> None:
    proc = start(mode, tmp_path)
    try:
        wait_for(lambda: len(running(tmp_path)) >= 1, 60, "a blocking step to start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["outcome"] == "interrupted", err
    assert report["is_keyboard_interrupt"]
    assert report["status"] == "cancelled"
    assert report["error"] == "FlowInterrupted"
    assert report["steps"]["load"] == "completed"
    assert report["steps"]["a"] == "cancelled"
    assert report["steps"]["b"] == "cancelled"
    assert report["steps"]["after"] == "skipped"
    assert report["compensated"] == ["load"]
    assert (tmp_path / "compensated-load").exists()
    pids = [int(p.name.rsplit("-", 1)[1]) for p in running(tmp_path)]
    if mode == "process":
        assert not wait_until_gone([pid for pid in pids if pid != proc.pid], within=5.0)


def test_a_second_ctrl_c_abandons_the_remaining_compensations(tmp_path: Path) -> None:
    proc = start("thread", tmp_path, "slow-compensation")
    try:
        wait_for(lambda: len(running(tmp_path)) >= 1, 60, "a blocking step to start")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: (tmp_path / "compensating-load").exists(), 30, "the compensation to start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["outcome"] == "interrupted", err
    assert report["compensated"] == []
    assert report["not_compensated"] == ["load"]
    assert not (tmp_path / "compensated-load").exists()


PARENT = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from faults import steps
from flowpool import Flow, Step
flow = Flow("orphans").parallel("g", [Step("a", steps.write_pid_and_wait), Step("b", steps.hang)])
flow.run({{"pid_file": {pid_file!r}}}, executor="process", max_workers=2)
"""


def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    code = PARENT.format(tests=str(Path(__file__).parent), pid_file=str(pid_file))
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", 60, "a worker to start")
        worker = int(pid_file.read_text())
        assert pid_alive(worker)
        import psutil

        workers = [p.pid for p in psutil.Process(parent.pid).children(recursive=True)]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert not wait_until_gone([worker, *workers], within=5.0)
    finally:
        if parent.poll() is None:
            parent.kill()


# ── Ctrl-C during a map ─────────────────────────────────────────────────────────

#: A map of eight keyed items, three at a time: k00 and k01 complete at once, k02..k04
#: block (each writes "running-KEY-PID" first). k02 and k03 stop when told (ctx.cancelled,
#: writing "stopped-KEY"); k04 ignores the request: for 3 s in thread mode (thread grace, then
#: abandoned), for good in process mode (its worker must be killed; the others' workers stay
#: as idle lanes for reuse). Completed items are undone by ``undo``, which logs
#: its key and, with "slow-undo", waits until told to stop (only a second Ctrl-C ends it).
#: The script prints the result as JSON, then (thread mode) waits for the told items to
#: write their markers, and (process mode) reports which item workers are still alive.
MAP_SCRIPT = """
import faulthandler, json, os, signal, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from processes import wait_until_gone
from flowpool import Flow, FlowInterrupted

signal.signal(signal.SIGINT, signal.default_int_handler)
faulthandler.register(signal.SIGUSR1, all_threads=True)

MODE, MARKERS, SLOW_UNDO, UNDO_CONCURRENCY = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "slow", int(sys.argv[4])


def mark(name):
    (MARKERS / name).write_text(str(os.getpid()))


def work(ctx):
    if ctx.index < 2:
        return ctx.index * 10
    mark(f"running-{{ctx.key}}-{{os.getpid()}}")
    deadline = time.monotonic() + 60
    told = None
    while time.monotonic() < deadline:
        if ctx.cancelled:
            told = told or time.monotonic()
            if ctx.key != "k04" or (MODE == "thread" and time.monotonic() - told > 3):
                mark(f"stopped-{{ctx.key}}")
                ctx.raise_if_cancelled()
        time.sleep(0.01)
    mark(f"never-told-{{ctx.key}}")


def undo(ctx, value):
    with open(MARKERS / "undone.log", "a") as log:
        log.write(f"{{ctx.key}} {{value}}\\n")
    mark(f"compensating-{{ctx.key}}")
    deadline = time.monotonic() + 30
    while SLOW_UNDO and time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.01)


flow = (
    Flow("mapstop")
    .map("m", work, items=lambda ctx: range(8), key=lambda n: f"k{{n:02d}}", max_concurrency=3,
         compensate=undo, compensate_concurrency=UNDO_CONCURRENCY)
    .step("after", lambda ctx: "never")
)
try:
    flow.run({{}}, executor=MODE, max_workers=4)
    print(json.dumps({{"outcome": "returned"}}), flush=True)
    sys.exit(0)
except FlowInterrupted as interrupted:
    result = interrupted.result
m = result.maps["m"]
workers = {{p.name.split("-")[1]: int(p.name.rsplit("-", 1)[1]) for p in MARKERS.glob("running-*")}}
stuck = workers.get("k04")
report = {{
    "outcome": "interrupted",
    "status": str(result.status),
    "error": type(result.error).__name__,
    "map": str(m.status),
    "total": m.total,
    "items": {{item.key: str(item.status) for item in m.items}},
    "item_compensations": {{item.key: item.compensation.status for item in m.items if item.compensation}},
    "after": str(result.steps["after"].status),
    "compensated": list(result.compensated),
    "not_compensated": list(result.not_compensated),
    "still_running": list(result.still_running),
    "stuck_worker_alive": bool(wait_until_gone([stuck], within=5.0)) if MODE == "process" else None,
}}
print(json.dumps(report), flush=True)
if MODE == "thread":  # the told items are daemon threads: give them time to show they were told
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(list(MARKERS.glob("stopped-*"))) < 3:
        time.sleep(0.02)
"""


def start_map(tmp_path: Path, mode: str, slow_undo: bool = False, undo_concurrency: int = 1) -> subprocess.Popen[str]:
    script = tmp_path / "mapstop.py"
    script.write_text(MAP_SCRIPT.format(tests=str(Path(__file__).parent)))
    markers = tmp_path / "markers"
    markers.mkdir()
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(markers), "slow" if slow_undo else "quick", str(undo_concurrency)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupted_report(out: str, err: str) -> dict[str, object]:
    lines = out.strip().splitlines()
    assert lines, f"no report; stderr:\n{err[-4000:]}"
    report: dict[str, object] = json.loads(lines[0])
    assert report["outcome"] == "interrupted", err[-4000:]
    return report


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_one_ctrl_c_during_a_map_stops_its_running_items_and_undoes_the_completed_ones_in_reverse(
    tmp_path: Path, mode: str
) -> None:
    proc = start_map(tmp_path, mode)
    markers = tmp_path / "markers"
    try:
        wait_for(lambda: len(running(markers)) >= 3, 60, "three blocking items to start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = interrupted_report(out, err)
    assert report["status"] == "cancelled"
    assert report["error"] == "FlowInterrupted"
    assert report["map"] == "partial"  # the default policy on what settled: two of five completed
    # Nothing was taken beyond the three in flight: items are taken only as slots free up.
    assert report["total"] == 5
    assert report["items"] == {
        "k00": "completed",
        "k01": "completed",
        "k02": "cancelled",
        "k03": "cancelled",
        "k04": "cancelled",
    }
    assert report["after"] == "skipped"
    assert report["compensated"] == ["m['k01']", "m['k00']"]
    assert report["not_compensated"] == []
    assert (markers / "undone.log").read_text().split("\n")[:2] == ["k01 10", "k00 0"]
    assert not list(markers.glob("never-told-*"))
    if mode == "thread":
        # k04 ignored the request past the grace: it was abandoned, still running.
        assert report["still_running"] == ["m['k04']"]
        assert sorted(p.name for p in markers.glob("stopped-*")) == ["stopped-k02", "stopped-k03", "stopped-k04"]
    else:
        assert report["still_running"] == []
        # k04 never returns: its worker must have been killed, not left running it.
        assert report["stuck_worker_alive"] is False, "an interrupted item's worker process was left running"


@pytest.mark.parametrize("undo_concurrency", [1, 2])
def test_a_second_ctrl_c_during_a_maps_compensations_abandons_them(tmp_path: Path, undo_concurrency: int) -> None:
    proc = start_map(tmp_path, "thread", slow_undo=True, undo_concurrency=undo_concurrency)
    markers = tmp_path / "markers"
    try:
        wait_for(lambda: len(running(markers)) >= 3, 60, "three blocking items to start")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: bool(list(markers.glob("compensating-*"))), 30, "an item's compensation to start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = interrupted_report(out, err)
    assert report["status"] == "cancelled"
    assert report["compensated"] == []
    assert sorted(report["not_compensated"]) == ["m['k00']", "m['k01']"]  # type: ignore[arg-type]
    assert report["item_compensations"] == {"k00": "abandoned", "k01": "abandoned"}
    if undo_concurrency == 1:  # one at a time, latest first: k00's never started
        assert report["not_compensated"] == ["m['k01']", "m['k00']"]
        assert (markers / "undone.log").read_text().split() == ["k01", "10"]
