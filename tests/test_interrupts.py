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
