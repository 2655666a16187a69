"""Cross-process test doubles for the behaviour suite (importable by worker processes).

The behaviour suite runs its step functions in threads, in flowpool's worker
processes and on Dask workers. Everything a step shares with its test therefore
lives in files under the test's ``tmp_path``: these objects hold only a path,
so they pickle (by reference to this module, which every worker can import:
loky and Dask's spawned workers get the parent's ``sys.path``).

- ``Log``: an append-only list (one pickled item per line, each written with a
  single ``O_APPEND`` write, so concurrent writers never interleave).
- ``Record``: a dict built on a ``Log`` of ``(key, value)`` pairs.
- ``Gate``: a marker file standing in for ``threading.Event``.
- ``FileBarrier``: ``threading.Barrier`` for parties in any process.
- ``Gauge``: how many callers were inside a block at once, at most.

The tests' own helpers (which never travel to a worker) are at the end: the reasons
some tests skip a mode, ``same_error`` and ``statuses``.

Waits poll with a short timed wait and always have a deadline; a step that hits
one raises ``AssertionError`` so the test fails loudly instead of hanging.
"""

from __future__ import annotations

import base64
import itertools
import os
import pickle
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from flowpool import Context, Flow, FlowResult, StepStatus

WAIT = 10.0  # the longest anything may be waited on; a test that hits it has failed
POLL = 0.005

_names = itertools.count()


def _pause(seconds: float = POLL) -> None:
    """A timed wait between two polls (not a sleep used to coordinate)."""
    threading.Event().wait(seconds)


class Log:
    """An append-only list of what happened, in order, shared by every process."""

    def __init__(self, where: Path | str, name: str | None = None) -> None:
        where = Path(where)
        self.path = str(where / f"{name or 'log'}-{next(_names)}.log") if where.is_dir() else str(where)

    def add(self, item: Any) -> None:
        line = base64.b64encode(pickle.dumps(item)) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    @property
    def items(self) -> list[Any]:
        try:
            with open(self.path, "rb") as file:
                lines = file.read().splitlines()
        except FileNotFoundError:
            return []
        return [pickle.loads(base64.b64decode(line)) for line in lines if line]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Log({self.items!r})"


class Record(Mapping[str, Any]):
    """A dict shared by every process (later writes of a key win)."""

    def __init__(self, where: Path | str, name: str = "record") -> None:
        self._log = Log(where, name)

    def __setitem__(self, key: str, value: Any) -> None:
        self._log.add((key, value))

    def update(self, other: Mapping[str, Any]) -> None:
        # One line for the whole update, so a reader never sees half of it.
        self._log.add(("__update__", dict(other)))

    def _dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self._log:
            if key == "__update__":
                out.update(value)
            else:
                out[key] = value
        return out

    def __getitem__(self, key: str) -> Any:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return f"Record({self._dict()!r})"


class Gate:
    """A marker file: ``set()`` creates it; ``wait()`` polls for it, with a timeout."""

    def __init__(self, where: Path | str, name: str = "gate") -> None:
        self.name = name
        self.path = str(Path(where) / f"{name}-{next(_names)}.gate")

    def set(self) -> None:
        Path(self.path).touch()

    def is_set(self) -> bool:
        return os.path.exists(self.path)

    def wait(self, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path):
            if time.monotonic() > deadline:
                return False
            _pause()
        return True


class FileBarrier:
    """``threading.Barrier`` for callers in any thread or process: every ``parties``
    arrivals in a row (1st to ``parties``-th, then the next ``parties``…) wait for each other."""

    def __init__(self, where: Path | str, parties: int, name: str = "barrier") -> None:
        self.parties = parties
        self._log = Log(where, name)

    def wait(self, timeout: float = WAIT) -> None:
        me = f"{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex}"
        self._log.add(me)
        generation = self._log.items.index(me) // self.parties
        needed = (generation + 1) * self.parties
        deadline = time.monotonic() + timeout
        while (arrived := len(self._log)) < needed:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {arrived} of {needed} parties met within {timeout} s")
            _pause()


class Gauge:
    """Counts callers inside a block, in any thread or process: ``peak`` is the most at once."""

    def __init__(self, where: Path | str, name: str = "gauge") -> None:
        self._log = Log(where, name)

    def enter(self) -> None:
        self._log.add(1)

    def leave(self) -> None:
        self._log.add(-1)

    @property
    def peak(self) -> int:
        running = peak = 0
        for step in self._log:
            running += step
            peak = max(peak, running)
        return peak


def wait_for(gate: Gate, what: str = "gate") -> None:
    """Wait on ``gate`` (with a timeout) from a step; fail loudly if it never opens."""
    if not gate.wait(WAIT):
        raise AssertionError(f"{what} was not released within {WAIT} s")


def until_cancelled(ctx: Context, limit: float = WAIT, release: Gate | None = None) -> bool:
    """Block until ``ctx.cancelled`` turns true (polling; there is no notification). True if it did.

    ``release`` ends the wait early (False) once set: on Dask, where ``ctx.cancelled``
    stays False, the test's teardown frees the worker thread that way.
    """
    deadline = time.monotonic() + limit
    while not ctx.cancelled:
        if time.monotonic() > deadline or (release is not None and release.is_set()):
            return False
        _pause()
    return True


def value(v: Any) -> Callable[[Context], Any]:
    return lambda ctx: v


def fail(error: BaseException) -> Callable[[Context], Any]:
    def fn(ctx: Context) -> Any:
        raise error

    return fn


def press_ctrl_c(main_pid: int) -> None:
    """Press Ctrl-C at the test process's main thread, from a thread of it or from another process."""
    if os.getpid() == main_pid:
        # Like a terminal's Ctrl-C, aimed at the main thread: a process-directed os.kill from a
        # worker thread may be taken by that thread on recent Linux kernels.
        main = threading.main_thread().ident
        assert main is not None
        signal.pthread_kill(main, signal.SIGINT)
    else:
        os.kill(main_pid, signal.SIGINT)


# ── for the tests themselves ────────────────────────────────────────────────────

#: Why a test that needs an attempt to outlive its timeout does not run in process mode.
KILLED = "in process mode a timed-out attempt's worker is killed, so it never runs on or returns late"
#: Why a test that waits for ``ctx.cancelled`` does not run on Dask.
BEST_EFFORT = "on Dask ctx.cancelled is best effort: it stays False"


def same_error(got: BaseException | None, expected: BaseException, in_process: bool) -> bool:
    """``got`` is ``expected``; from a worker process, a copy of it (same type and message)."""
    if in_process:
        return got is expected
    return type(got) is type(expected) and str(got) == str(expected)


def statuses(result: FlowResult) -> dict[str, StepStatus]:
    return {name: step.status for name, step in result.steps.items()}


#: The project's root, put on a flow file's PYTHONPATH.
REPO = Path(__file__).resolve().parent.parent


def run_until_killed(tmp_path: Path, text: str) -> tuple[Path, Path, str, list[str]]:
    """Run the flow file ``text`` (given its journal's path as ``sys.argv[1]``) until it
    kills itself with SIGKILL: its script, its journal, the run id and the lines its
    functions wrote to ``ran.log``."""
    import subprocess
    import sys

    from flowpool import Journal  # (workers import this module: not at its top)

    script = tmp_path / "flow.py"
    script.write_text(text)
    journal = tmp_path / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), str(journal)], env=env, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL
    ran = (tmp_path / "ran.log").read_text().split("\n")[:-1]
    (run,) = Journal(journal).runs()
    return script, journal, run.run_id, ran


def load_flow(path: Path) -> Flow:
    """The ``flow`` a flow file defines, loaded as ``flowpool`` loads a TARGET."""
    namespace: dict[str, object] = {"__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    flow = namespace["flow"]
    assert isinstance(flow, Flow)
    return flow
