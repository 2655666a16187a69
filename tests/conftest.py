"""Shared fixtures: one behaviour suite, run against every executor mode.

The ``executor`` fixture is parametrised by mode name and gives the value to pass
as ``Flow.run(executor=...)``. Modes that need more than a string (a user's
``ThreadPoolExecutor``) are built per test and checked after it: flowpool must
leave a user's executor running. A later issue adds ``"process"`` and
``"dask"`` to ``MODES`` and a branch to ``_Executors.make``.

Tests that apply only to some modes say so with ``@pytest.mark.modes("thread", ...)``
and are skipped, with a reason, in the others.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import pytest

#: Every executor mode the behaviour suite runs in.
MODES = ("thread", "user-threadpool")

#: Modes whose steps run in this process (so closures, locks and gates are shared).
IN_PROCESS_MODES = frozenset({"thread", "user-threadpool"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "modes(*names, reason=...): run this behaviour test only in these executor modes",
    )


class _Executors:
    """Builds the ``run()`` keyword arguments for one mode, and checks user pools after the test."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._pools: list[concurrent.futures.ThreadPoolExecutor] = []

    def make(self, max_workers: int | None = None) -> dict[str, Any]:
        """Keyword arguments for ``Flow.run`` selecting this mode with ``max_workers`` slots."""
        if self.mode == "thread":
            return {"executor": "thread", "max_workers": max_workers}
        if self.mode == "user-threadpool":
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers or 32, thread_name_prefix="user-pool")
            self._pools.append(pool)
            return {"executor": pool}
        raise AssertionError(f"unknown executor mode {self.mode!r}")

    def check_and_close(self) -> None:
        try:
            for pool in self._pools:
                # flowpool must never shut a user's executor down: it still accepts work.
                assert pool.submit(threading.get_ident).result(timeout=10) is not None, "user pool was shut down"
        finally:
            for pool in self._pools:
                pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(params=MODES)
def executor_mode(request: pytest.FixtureRequest) -> str:
    """The executor mode's name; skips the test when its ``modes`` marker excludes it."""
    mode: str = request.param
    marker = request.node.get_closest_marker("modes")
    if marker is not None and mode not in marker.args:
        reason = marker.kwargs.get("reason", f"applies only to {', '.join(marker.args)}")
        pytest.skip(f"not in {mode} mode: {reason}")
    return mode


@pytest.fixture
def executors(executor_mode: str) -> Iterator[_Executors]:
    """A factory for ``run()`` keyword arguments in the current mode (``executors.make(max_workers=1)``)."""
    made = _Executors(executor_mode)
    try:
        yield made
    finally:
        made.check_and_close()


@pytest.fixture
def executor(executors: _Executors) -> Any:
    """The value to pass as ``Flow.run(executor=...)`` in the current mode."""
    return executors.make()["executor"]


@pytest.fixture
def run_kw(executor: Any) -> dict[str, Any]:
    """Default ``run()`` keyword arguments for the current mode: ``flow.run(x, **run_kw)``."""
    return {"executor": executor}


class Gates:
    """``threading.Event`` gates that are all released when the test ends, pass or fail."""

    def __init__(self) -> None:
        self._made: list[threading.Event] = []

    def new(self) -> threading.Event:
        gate = threading.Event()
        self._made.append(gate)
        return gate

    def release_all(self) -> None:
        for gate in self._made:
            gate.set()


@pytest.fixture
def gates(executors: _Executors) -> Iterator[Gates]:
    """A factory of gates; set up after ``executors`` so its teardown runs first."""
    made = Gates()
    try:
        yield made
    finally:
        made.release_all()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any child process of the test session is still alive at its end."""
    from processes import stray_children, wait_until_gone

    import flowpool

    flowpool.shutdown_workers()
    leftovers = stray_children(ignore_lanes=False)
    alive = wait_until_gone([child.pid for child in leftovers], within=10.0)
    if alive:
        described = []
        for child in leftovers:
            if child.pid in alive:
                try:
                    described.append(f"{child.pid}: {' '.join(child.cmdline())[:120]}")
                except Exception:
                    described.append(str(child.pid))
        print("\nchild processes left behind by the test session:\n  " + "\n  ".join(described))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
