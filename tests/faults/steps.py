"""Step functions for the process-mode fault matrix (importable by worker processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from flowpool import Context


def write_pid_and_wait(ctx: Context) -> None:
    """Record this worker's pid, then wait (up to a minute) until cancelled."""
    Path(ctx.input["pid_file"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)


def write_pid_and_hang(ctx: Context) -> None:
    """Record this worker's pid, then ignore cancellation for a minute: only a kill stops this."""
    Path(ctx.input).write_text(str(os.getpid()))
    time.sleep(60)


def hang(ctx: Context) -> None:
    """Ignore cancellation: only a kill stops this."""
    time.sleep(60)


def quick(ctx: Context) -> int:
    return os.getpid()


def slow_ok(ctx: Context) -> str:
    time.sleep(0.3)
    return "fine"


def exit_hard(ctx: Context) -> None:
    os._exit(3)


def segfault(ctx: Context) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(5)


def crash_then_succeed(ctx: Context) -> int:
    marker = Path(ctx.input["marker"])
    if not marker.exists():
        marker.write_text("crashed once")
        os._exit(7)
    return ctx.attempt


def lock_value(ctx: Context) -> Any:
    return threading.Lock()


class LockError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable(ctx: Context) -> None:
    raise LockError("holds a lock")


class TwoArgError(Exception):
    """Pickles, but cannot be unpickled: __init__ needs two arguments."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


def raise_two_arg(ctx: Context) -> None:
    raise TwoArgError(42, "needs two arguments")


def big_value(ctx: Context) -> bytes:
    return b"x" * 100_000_000


def subprocess_hangs(ctx: Context) -> None:
    child = subprocess.Popen(["sleep", "60"])
    Path(ctx.input["pid_file"]).write_text(str(child.pid))
    child.wait()


def wait_cancelled(ctx: Context) -> str:
    deadline = time.monotonic() + 30
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    ctx.raise_if_cancelled()
    return "not cancelled"


def fail(ctx: Context) -> None:
    raise ValueError("boom")


def record_compensation(ctx: Context, value: Any) -> None:
    with open(ctx.input["log"], "a") as log:
        log.write(f"{ctx.step}:{os.getpid()}\n")


def wait_for_gate_file(ctx: Context) -> str:
    """Wait until the file ``ctx.input["gate"]`` exists (at most ``ctx.input["within"]`` s, or a minute)."""
    gate = Path(ctx.input["gate"])
    deadline = time.monotonic() + ctx.input.get("within", 60)
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "passed"


def held_sessions() -> tuple[int, int]:
    """How many runs' values this lane worker holds, and how many dropped ones' values are
    still loaded (submitted straight to a lane; turns the cyclic collector back on)."""
    import gc

    from flowpool._executors import _worker

    held = {id(session) for session in _worker._sessions.values()}
    dropped = [
        thing
        for thing in gc.get_objects()
        if isinstance(thing, _worker._Session) and id(thing) not in held and thing.loaded
    ]
    gc.enable()
    return len(_worker._sessions), len(dropped)
