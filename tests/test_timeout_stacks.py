"""SPEC §16 "Where it hung": a StepTimeoutError carries the stack of its attempt as a note."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

from flowpool import Context, Flow, StepStatus, StepTimeoutError

pytestmark = pytest.mark.timeout(90)

RELEASE = threading.Event()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    RELEASE.clear()
    try:
        yield RELEASE
    finally:
        RELEASE.set()


def _wait_for_the_gate() -> None:
    RELEASE.wait(60)  # thread mode hangs here


def stuck_in_a_thread(ctx: Context) -> None:
    _wait_for_the_gate()


def _sleep_for_a_minute() -> None:
    time.sleep(60)  # process mode hangs here


def stuck_in_a_process(ctx: Context) -> None:
    _sleep_for_a_minute()


def stuck_and_deaf(ctx: Context) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # as if stuck where no signal handler can run
    time.sleep(60)


def _timeout_error(flow: Flow, executor: Any) -> StepTimeoutError:
    result = flow.run({}, executor=executor, max_workers=None if not isinstance(executor, str) else 1)
    step = next(iter(result.steps.values()))
    assert step.status is StepStatus.TIMED_OUT
    assert isinstance(step.error, StepTimeoutError)
    return step.error


def _note(error: BaseException) -> str:
    notes = getattr(error, "__notes__", [])
    assert len(notes) == 1, notes
    note: str = notes[0]
    return note


@pytest.mark.parametrize("pool", ["thread", "user-threadpool"])
def test_a_thread_timeout_shows_the_line_the_worker_thread_was_stuck_on(release: threading.Event, pool: str) -> None:
    user_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1) if pool == "user-threadpool" else None
    try:
        error = _timeout_error(Flow("t").step("wait", stuck_in_a_thread, timeout=0.5), user_pool or "thread")
    finally:
        release.set()
        if user_pool is not None:
            user_pool.shutdown(wait=True)
    note = _note(error)
    assert note.startswith("Where it hung")
    assert "in stuck_in_a_thread" in note
    assert "in _wait_for_the_gate" in note
    assert "RELEASE.wait(60)  # thread mode hangs here" in note
    assert "flowpool/_" not in note  # none of flowpool's own frames
    assert note.index("stuck_in_a_thread") < note.index("_wait_for_the_gate")  # most recent call last
    assert "RELEASE.wait(60)" in "".join(traceback.format_exception(error))


def test_a_process_mode_timeout_shows_the_line_the_worker_was_stuck_on() -> None:
    error = _timeout_error(Flow("p").step("sleep", stuck_in_a_process, timeout=1.0), "process")
    note = _note(error)
    assert note.startswith("Where it hung")
    assert "in stuck_in_a_process" in note
    assert "time.sleep(60)  # process mode hangs here" in note
    assert "flowpool/_" not in note and "loky" not in note


def test_without_a_dump_from_the_worker_the_note_says_so_and_the_worker_is_still_killed() -> None:
    started = time.monotonic()
    error = _timeout_error(Flow("p").step("deaf", stuck_and_deaf, timeout=1.0), "process")
    assert "did not dump its stack within 0.25 s" in _note(error)
    assert time.monotonic() - started < 30  # generous: it did not wait for the minute's sleep
