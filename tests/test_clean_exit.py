"""Issue 17 item 10: no "leaked semlock" warning from loky's resource tracker when a process
that killed workers (a timeout, Ctrl-C) exits right after its run."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flowpool import Flow, Step, StepStatus, shutdown_workers

pytestmark = pytest.mark.timeout(120)

FAULTS = Path(__file__).parent / "faults"


def test_shutdown_workers_returns_only_once_killed_lanes_are_cleaned_up() -> None:
    from faults import steps

    flow = Flow("killed").parallel("hung", [Step("a", steps.hang, timeout=0.5), Step("b", steps.hang, timeout=0.5)])
    result = flow.run({}, executor="process", max_workers=2)
    assert result.steps["a"].status is StepStatus.TIMED_OUT
    shutdown_workers()
    cleaning = [t.name for t in threading.enumerate() if t.name in ("flowpool-lane-kill", "flowpool-lane-close")]
    assert cleaning == []


def _no_tracker_warnings(stderr: str) -> None:
    assert "leaked" not in stderr, stderr
    assert "resource_tracker" not in stderr, stderr


@pytest.mark.parametrize("run", range(3))
def test_a_process_that_exits_right_after_killing_workers_leaves_no_resource_tracker_warning(run: int) -> None:
    done = subprocess.run(
        [sys.executable, str(FAULTS / "kill_then_exit.py")], check=False, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0 and "DONE" in done.stdout, done.stderr
    _no_tracker_warnings(done.stderr)


@pytest.mark.parametrize("run", range(3))
def test_ctrl_c_in_process_mode_leaves_no_resource_tracker_warning(tmp_path: Path, run: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(FAULTS / "interrupt_script.py"), "process", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("running-*")):
            assert time.monotonic() < deadline, "no step started within 60 s"
            threading.Event().wait(0.02)  # polling for a file another process writes
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert '"outcome": "interrupted"' in out, err
    _no_tracker_warnings(err)
