"""Shared fixtures: one behaviour suite, run against every executor mode.

The ``executor`` fixture is parametrised by mode name and gives the value to pass
as ``Flow.run(executor=...)``; ``run_kw`` gives the full keyword arguments
(``executor`` and, where it matters, ``max_workers``). The modes:

- ``"thread"``: flowpool's own thread pool;
- ``"user-threadpool"``: a user's ``ThreadPoolExecutor``, built per test and checked
  after it (flowpool must leave a user's executor running);
- ``"process"``: flowpool's isolated worker processes (``executor="process"``), at
  most ``PROCESS_WORKERS`` at a time unless a test asks for another size;
- ``"dask"``: a ``distributed.Client`` on a session-wide ``LocalCluster`` (two
  worker processes, two threads each), started the first time a dask-mode test
  runs and shut down after the last one (and at the latest at session end, before
  the check for leftover processes). Skipped when ``distributed`` is not installed.

Tests that apply only to some modes say so with ``@pytest.mark.modes("thread", ...)``
and are skipped, with a reason, in the others.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _behaviour_helpers import Gate

#: Every executor mode the behaviour suite runs in.
MODES = ("thread", "user-threadpool", "process", "dask")

#: Modes whose steps run in this process (so closures, locks and gates are shared).
IN_PROCESS_MODES = frozenset({"thread", "user-threadpool"})

#: Worker processes a process-mode run may use when the test does not say.
PROCESS_WORKERS = 4

#: The Dask cluster's shape: enough threads for the suite's widest group (four members).
DASK_WORKERS = 2
DASK_THREADS = 2

#: Seconds a dask-mode test's teardown waits for abandoned attempts to leave the workers.
DASK_SETTLE = 15.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "modes(*names, reason=...): run this behaviour test only in these executor modes",
    )


# ── the Dask cluster ────────────────────────────────────────────────────────────


class _DaskCluster:
    """A ``LocalCluster`` and its ``Client``, started on first use; ``close()`` is idempotent."""

    def __init__(self) -> None:
        self._cluster: Any = None
        self._client: Any = None

    @property
    def running(self) -> bool:
        return self._client is not None

    def client(self) -> Any:
        if self._client is None:
            import distributed

            import flowpool

            cluster = distributed.LocalCluster(
                n_workers=DASK_WORKERS,
                threads_per_worker=DASK_THREADS,
                processes=True,
                dashboard_address=None,
            )
            try:
                client = distributed.Client(cluster, set_as_default=False)
                client.wait_for_workers(DASK_WORKERS, timeout=60)
                # The workers are spawned with this process's sys.path: check that they
                # run this checkout of flowpool (not an installed copy) and can import
                # the suite's helpers by reference.
                where = client.run(_where_flowpool_lives)
            except BaseException:
                cluster.close()
                raise
            expected = flowpool.__file__
            if set(where.values()) != {expected}:
                client.close()
                cluster.close()
                raise RuntimeError(f"Dask workers import another flowpool: {where} (here: {expected})")
            self._cluster, self._client = cluster, client
        return self._client

    def close(self) -> None:
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def wait_until_idle(self, within: float) -> None:
        """Wait until no task (abandoned ones included) is still executing on a worker."""
        if self._client is None:
            return
        deadline = time.monotonic() + within
        while True:
            busy = sum(self._client.run(_executing).values())
            if not busy:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{busy} Dask task(s) still running {within} s after the test")
            threading.Event().wait(0.02)


def _where_flowpool_lives() -> str:
    import _behaviour_helpers  # noqa: F401 - must be importable by reference

    import flowpool

    return flowpool.__file__


def _executing(dask_worker: Any) -> int:
    state = dask_worker.state
    return len(state.executing) + len(state.long_running)


_DASK = _DaskCluster()
_LAST_DASK_ITEM: list[pytest.Item | None] = [None]


def _mode_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("executor_mode")


def pytest_collection_finish(session: pytest.Session) -> None:
    dask_items = [item for item in session.items if _mode_of(item) == "dask"]
    _LAST_DASK_ITEM[0] = dask_items[-1] if dask_items else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    # Shut the cluster down after the last dask-mode test: its worker processes would
    # otherwise count as processes left behind by later modules' leak checks.
    if item is _LAST_DASK_ITEM[0]:
        _DASK.close()


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[_DaskCluster]:
    """The session's Dask cluster (started lazily by ``client()``)."""
    try:
        yield _DASK
    finally:
        _DASK.close()


# ── executor modes ──────────────────────────────────────────────────────────────


class _Executors:
    """Builds the ``run()`` keyword arguments for one mode, and checks user pools after the test."""

    def __init__(self, mode: str, request: pytest.FixtureRequest) -> None:
        self.mode = mode
        self._request = request
        self._pools: list[concurrent.futures.ThreadPoolExecutor] = []
        self._dask: _DaskCluster | None = None

    @property
    def in_process(self) -> bool:
        """True when steps run in this process (closures, locks and identities are shared)."""
        return self.mode in IN_PROCESS_MODES

    def make(self, max_workers: int | None = None) -> dict[str, Any]:
        """Keyword arguments for ``Flow.run`` selecting this mode with ``max_workers`` slots."""
        if self.mode == "thread":
            return {"executor": "thread", "max_workers": max_workers}
        if self.mode == "user-threadpool":
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers or 32, thread_name_prefix="user-pool")
            self._pools.append(pool)
            return {"executor": pool}
        if self.mode == "process":
            return {"executor": "process", "max_workers": max_workers or PROCESS_WORKERS}
        if self.mode == "dask":
            if self._dask is None:
                self._dask = self._request.getfixturevalue("dask_cluster")
            return {"executor": self._dask.client(), "max_workers": max_workers}
        raise AssertionError(f"unknown executor mode {self.mode!r}")

    def check_and_close(self) -> None:
        try:
            for pool in self._pools:
                # flowpool must never shut a user's executor down: it still accepts work.
                assert pool.submit(threading.get_ident).result(timeout=10) is not None, "user pool was shut down"
            if self._dask is not None and self._dask.running:
                client = self._dask.client()
                assert client.status == "running", "flowpool closed the user's Dask client"
                # Abandoned attempts (soft timeouts) must not hold the cluster's threads
                # into the next test; the gates were released just before this.
                self._dask.wait_until_idle(DASK_SETTLE)
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
    if mode == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            pytest.skip("not in dask mode: the 'distributed' package is not installed")
    return mode


@pytest.fixture
def executors(executor_mode: str, request: pytest.FixtureRequest) -> Iterator[_Executors]:
    """A factory for ``run()`` keyword arguments in the current mode (``executors.make(max_workers=1)``)."""
    made = _Executors(executor_mode, request)
    try:
        yield made
    finally:
        made.check_and_close()


@pytest.fixture
def run_kw(executors: _Executors) -> dict[str, Any]:
    """Default ``run()`` keyword arguments for the current mode: ``flow.run(x, **run_kw)``."""
    return {key: v for key, v in executors.make().items() if v is not None}


@pytest.fixture
def executor(run_kw: dict[str, Any]) -> Any:
    """The value to pass as ``Flow.run(executor=...)`` in the current mode."""
    return run_kw["executor"]


class Gates:
    """Marker-file gates (``_behaviour_helpers.Gate``, an ``Event`` that works across
    processes) that are all released when the test ends, pass or fail."""

    def __init__(self, where: Path) -> None:
        self._where = where
        self._made: list[Gate] = []

    def new(self, name: str = "gate") -> Gate:
        gate = Gate(self._where, name)
        self._made.append(gate)
        return gate

    def release_all(self) -> None:
        for gate in self._made:
            gate.set()


@pytest.fixture
def gates(executors: _Executors, tmp_path: Path) -> Iterator[Gates]:
    """A factory of gates; set up after ``executors`` so its teardown runs first."""
    made = Gates(tmp_path)
    try:
        yield made
    finally:
        made.release_all()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any child process of the test session is still alive at its end."""
    from processes import stray_children, wait_until_gone

    import flowpool

    _DASK.close()
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
