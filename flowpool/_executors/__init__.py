"""Backends that run attempts: one module per kind, behind ``Backend``."""

from __future__ import annotations

import os
from typing import Any

from .._errors import FlowDefinitionError
from ._base import Backend

__all__ = ["Backend", "Backends", "default_workers", "describe_executor", "open_backend", "shutdown_workers"]


def default_workers(kind: str) -> int:
    """How many attempts run at once when ``max_workers`` is not given."""
    cpus = os.cpu_count() or 1
    if kind == "process":
        return cpus
    # Steps are mostly I/O-bound legacy calls: let a group's members really start together.
    return max(32, cpus + 4)


def describe_executor(executor: object) -> str:
    """What kind of backend ``executor`` selects, or raise ``FlowDefinitionError``."""
    if isinstance(executor, str):
        if executor in ("thread", "process"):
            return executor
        if executor.startswith("dask://"):
            return "dask"
        raise FlowDefinitionError(
            f"unknown executor {executor!r}; use 'thread', 'process', 'dask://HOST:PORT', "
            f"a concurrent.futures.Executor or a distributed.Client",
            argument="executor",
        )
    import concurrent.futures  # not at import time: it pulls in threading machinery

    if isinstance(executor, concurrent.futures.Executor):
        return "executor"
    if type(executor).__module__.startswith("distributed") and type(executor).__name__ == "Client":
        return "dask"
    raise FlowDefinitionError(
        f"executor must be 'thread', 'process', 'dask://HOST:PORT', a concurrent.futures.Executor "
        f"or a distributed.Client, not {type(executor).__name__}",
        argument="executor",
    )


def open_backend(executor: Any, max_workers: int | None) -> Backend:
    """The backend for ``executor`` (already checked by ``describe_executor``)."""
    kind = describe_executor(executor)
    if kind == "thread":
        from ._threads import ThreadBackend

        return ThreadBackend(max_workers or default_workers("thread"))
    if kind == "process":
        from ._process import ProcessBackend

        return ProcessBackend(max_workers or default_workers("process"))
    if kind == "dask":
        from ._dask import DaskBackend

        return DaskBackend(executor, max_workers)
    from ._futures import ExecutorBackend

    return ExecutorBackend(executor)


class Backends:
    """The backends one run opened: ``"run"`` for the run's executor, and one per other
    executor that a step names."""

    __slots__ = ("_executor", "_max_workers", "_open")

    def __init__(self, executor: Any, max_workers: int | None) -> None:
        self._executor = executor
        self._max_workers = max_workers
        self._open: dict[str, Backend] = {}

    def open_run_backend(self) -> None:
        """Open the run's own backend now: a cluster that cannot be reached fails the
        call before any event is sent."""
        self._open["run"] = open_backend(self._executor, self._max_workers)

    def for_step(self, step_executor: str | None) -> Backend:
        """The backend for a step whose ``executor`` option is ``step_executor``."""
        key = step_executor or "run"
        if key != "run" and isinstance(self._executor, str) and self._executor == key:
            key = "run"
        backend = self._open.get(key)
        if backend is None:
            spec = self._executor if key == "run" else key
            backend = open_backend(spec, self._max_workers)
            self._open[key] = backend
        return backend

    def worker_count(self, step_executor: str | None) -> int:
        """How many attempts the backend of such a step runs at once: ``max_workers``,
        else the executor's own size (a map's default limit)."""
        backend = self.for_step(step_executor)
        for holder in (backend, getattr(backend, "_executor", None)):
            count = getattr(holder, "_max_workers", None)
            if isinstance(count, int) and not isinstance(count, bool) and count >= 1:
                return min(count, 10_000)  # an unknown Dask cluster size is not a look-ahead
        return self._max_workers or default_workers("thread")

    def close(self) -> None:
        for backend in self._open.values():
            try:
                backend.close()
            except Exception:
                import logging  # only when closing fails: logging costs start-up time

                logging.getLogger("flowpool").exception("flowpool: closing the %s backend failed", backend.kind)


def shutdown_workers() -> None:
    """Close flowpool's workers now: worker processes (idle ones cleanly, busy ones by
    a kill) and idle threads.

    Workers are otherwise kept for later runs: processes close after five minutes
    idle and always at interpreter exit; threads exit after a minute idle (they
    are daemons and never delay exit). Safe to call at any time; the next run
    starts new workers.
    """
    import sys

    process = sys.modules.get("flowpool._executors._process")
    if process is not None:
        process.shutdown_workers()
    threads = sys.modules.get("flowpool._executors._threads")
    if threads is not None:
        threads.SHARED.retire_idle()
