"""Helpers for scripts/bench.py: worker-side functions and the peer runners.

The functions live in an importable module (not ``__main__``) so every process
pool pickles them by reference and runs exactly the same code. Each peer is
optional: ``available()`` says whether it can be imported, and nothing here
imports a peer at module level.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import warnings
from typing import Any

# ── worker-side functions ─────────────────────────────────────────────────────


def noop(*args: Any) -> None:
    """A task that does nothing (raw executors and peers)."""
    return None


def noop_step(ctx: Any) -> None:
    """A flowpool step that does nothing."""
    return None


def sleep_step(ctx: Any) -> None:
    """A flowpool step that sleeps ``ctx.input`` seconds."""
    time.sleep(ctx.input)


def burn(n: int) -> int:
    """Pure-Python CPU work: about ``n`` loop iterations."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def burn_step(ctx: Any) -> int:
    """A flowpool step that burns ``ctx.input`` iterations."""
    return burn(ctx.input)


def hang_on_event(ctx: Any) -> None:
    """A thread-mode step that blocks until the event in ``ctx.input`` is set (at most 60 s)."""
    ctx.input.wait(60.0)


def sleep_long(ctx: Any) -> None:
    """A process-mode step that hangs for 30 s (its timeout kills it long before)."""
    time.sleep(30.0)


# ── peers ───────────────────────────────────────────────────────────────────────


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class Peer:
    """A comparison runner. ``w1``/``w2``/``w3`` run one repetition and return nothing."""

    name = "peer"
    module = ""
    #: Tasks per W1 repetition (None: the same count as flowpool) and at most this many repetitions.
    w1_tasks: int | None = None
    max_reps: int | None = None
    #: At most this many W9 repetitions (None: as many as flowpool's).
    w9_max_reps: int | None = None

    def available(self) -> bool:
        return _importable(self.module)

    def w1(self, n: int) -> None:
        raise NotImplementedError

    def w2(self, n: int, seconds: float) -> None:
        raise NotImplementedError

    def w3(self, n: int, work: int) -> None:
        raise NotImplementedError

    def w9(self, n: int, workers: int) -> None:
        """Map a no-op over ``range(n)`` on ``workers`` threads (only where ``maps``)."""
        raise NotImplementedError

    @property
    def maps(self) -> bool:
        """Whether this peer takes part in W9."""
        return type(self).w9 is not Peer.w9

    def w9_label(self, workers: int) -> str:
        return self.name

    def label(self, workload: str) -> str:
        return self.name

    def skip_quick(self, workload: str) -> str | None:
        """Why this peer sits out ``workload`` in a --quick run (None: it runs)."""
        return None

    def close(self) -> None:
        """Release every process and thread this peer started."""


class JoblibPeer(Peer):
    """joblib ``Parallel`` with the loky backend (its own vendored loky)."""

    name = "joblib"
    module = "joblib"
    W1_JOBS = 2
    W2_JOBS = 50
    W3_JOBS = 2

    def label(self, workload: str) -> str:
        jobs = {"W1": self.W1_JOBS, "W2": self.W2_JOBS, "W3": self.W3_JOBS}[workload]
        return f"joblib loky n_jobs={jobs}"

    def skip_quick(self, workload: str) -> str | None:
        return f"starting {self.W2_JOBS} worker processes takes ~10 s" if workload == "W2" else None

    def _parallel(self, jobs: int) -> Any:
        from joblib import Parallel

        return Parallel(n_jobs=jobs, backend="loky")

    def w1(self, n: int) -> None:
        from joblib import delayed

        self._parallel(self.W1_JOBS)(delayed(noop)() for _ in range(n))

    def w2(self, n: int, seconds: float) -> None:
        from joblib import delayed

        self._parallel(self.W2_JOBS)(delayed(time.sleep)(seconds) for _ in range(n))

    def w3(self, n: int, work: int) -> None:
        from joblib import delayed

        self._parallel(self.W3_JOBS)(delayed(burn)(work) for _ in range(n))

    def w9(self, n: int, workers: int) -> None:
        from joblib import Parallel, delayed

        # Threads, as flowpool's map and ThreadPoolExecutor.map in W9 use: a no-op per item
        # measures the per-item bookkeeping, not process start-up or pickling.
        Parallel(n_jobs=workers, backend="threading")(delayed(noop)(i) for i in range(n))

    def w9_label(self, workers: int) -> str:
        return f"joblib Parallel threading n_jobs={workers}"

    def close(self) -> None:
        try:
            from joblib.externals.loky import reusable_executor
        except ImportError:
            return
        executor = getattr(reusable_executor, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True)


class DaskPeer(Peer):
    """Dask ``LocalCluster``: in-process threads for W1/W2, two 1-thread worker processes for W3."""

    name = "dask"
    module = "distributed"
    w1_tasks = 500  # ~2.4 ms a task: keep a repetition near one second
    max_reps = 5
    w9_max_reps = 2  # ~2 ms an item: 50,000 items take about 100 s
    THREADS = 50

    def __init__(self) -> None:
        self._threads: tuple[Any, Any] | None = None
        self._processes: tuple[Any, Any] | None = None
        self._map_threads: tuple[Any, Any] | None = None

    def label(self, workload: str) -> str:
        if workload == "W3":
            return "dask LocalCluster 2 procs"
        return f"dask LocalCluster threads={self.THREADS}"

    @staticmethod
    def _quiet() -> None:
        for name in ("distributed", "dask", "tornado", "bokeh"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="distributed")

    def _thread_client(self) -> Any:
        if self._threads is None:
            self._quiet()
            from distributed import Client, LocalCluster

            cluster = LocalCluster(
                n_workers=1, threads_per_worker=self.THREADS, processes=False, dashboard_address=None
            )
            self._threads = (cluster, Client(cluster))
        return self._threads[1]

    def _process_client(self) -> Any:
        if self._processes is None:
            self._quiet()
            from distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
            self._processes = (cluster, Client(cluster))
        return self._processes[1]

    def w9(self, n: int, workers: int) -> None:
        from distributed import wait

        if self._map_threads is None:
            self._quiet()
            from distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=1, threads_per_worker=workers, processes=False, dashboard_address=None)
            self._map_threads = (cluster, Client(cluster))
        client = self._map_threads[1]
        futures = client.map(noop, range(n), pure=False)
        wait(futures)
        del futures

    def w9_label(self, workers: int) -> str:
        return f"dask client.map, LocalCluster threads={workers}"

    def w1(self, n: int) -> None:
        from distributed import wait

        client = self._thread_client()
        wait([client.submit(noop, i, pure=False) for i in range(n)])

    def w2(self, n: int, seconds: float) -> None:
        from distributed import wait

        client = self._thread_client()
        wait([client.submit(sleep_task, seconds, i, pure=False) for i in range(n)])

    def w3(self, n: int, work: int) -> None:
        from distributed import wait

        client = self._process_client()
        wait([client.submit(burn_task, work, i, pure=False) for i in range(n)])

    def close(self) -> None:
        for pair in (self._threads, self._processes, self._map_threads):
            if pair is None:
                continue
            cluster, client = pair
            for closer in (client.close, cluster.close):
                try:
                    closer()
                except Exception:
                    logging.getLogger("bench").debug("closing dask failed", exc_info=True)
        self._threads = self._processes = self._map_threads = None


def sleep_task(seconds: float, _key: int) -> None:
    time.sleep(seconds)


def burn_task(work: int, _key: int) -> int:
    return burn(work)


class PrefectPeer(Peer):
    """Prefect 3 with its ``ThreadPoolTaskRunner`` (heavy: only if importable)."""

    name = "prefect"
    module = "prefect"
    w1_tasks = 200  # ~7.6 ms a task
    max_reps = 3

    def __init__(self) -> None:
        self._flows: dict[int, Any] = {}

    def skip_quick(self, workload: str) -> str | None:
        return "heavy"

    def label(self, workload: str) -> str:
        workers = {"W1": 32, "W2": 50, "W3": 2}[workload]
        return f"prefect 3 ThreadPoolTaskRunner({workers})"

    def _flow(self, workers: int) -> Any:
        flow_fn = self._flows.get(workers)
        if flow_fn is None:
            os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
            from prefect import flow, task
            from prefect.task_runners import ThreadPoolTaskRunner

            @task
            def prefect_task(kind: str, arg: Any) -> Any:
                if kind == "sleep":
                    time.sleep(arg)
                    return None
                if kind == "burn":
                    return burn(arg)
                return None

            @flow(task_runner=ThreadPoolTaskRunner(max_workers=workers), log_prints=False)
            def prefect_flow(kind: str, n: int, arg: Any) -> None:
                futures = [prefect_task.submit(kind, arg) for _ in range(n)]
                for future in futures:
                    future.result()

            flow_fn = self._flows[workers] = prefect_flow
        return flow_fn

    def w1(self, n: int) -> None:
        self._flow(32)("noop", n, None)

    def w2(self, n: int, seconds: float) -> None:
        self._flow(50)("sleep", n, seconds)

    def w3(self, n: int, work: int) -> None:
        self._flow(2)("burn", n, work)


def all_peers() -> list[Peer]:
    return [JoblibPeer(), DaskPeer(), PrefectPeer()]
