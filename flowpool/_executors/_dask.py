"""Dask: every attempt is a fresh, non-pure task; timeouts are soft.

Dask's executor caches identical submissions (``pure=True``), so a retry could
get the cached error back; it passes ``key=``/``workers=`` keywords to itself
rather than to the function; and ``cancel()`` does not stop a running task. So
each attempt goes through ``client.submit(run_attempt, payload, pure=False)``
with a unique key, retries stay flowpool's own, and a timed-out attempt is
abandoned. At most as many attempts as the cluster has threads are in flight,
so that an attempt's submission is close to its start (the moment timeouts
count from here).
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import threading
import uuid
from typing import Any

from .._attempt import DONE, STARTED, Attempt, take_back
from .._errors import CallNotPicklableError, DaskUnavailableError, FlowDefinitionError, FlowpoolError
from . import _lanestore, _worker

__all__ = ["DaskBackend"]


def _connect(address: str) -> Any:
    try:
        import distributed
    except ImportError as error:
        raise DaskUnavailableError() from error
    target = address.removeprefix("dask://")
    if not target:
        raise FlowDefinitionError("give the scheduler as 'dask://HOST:PORT'", argument="executor")
    client_type: Any = distributed.Client
    try:
        return client_type(f"tcp://{target}", timeout=10, set_as_default=False)
    except OSError as error:
        raise DaskUnavailableError(target, str(error)) from error


class DaskCall:
    """``Attempt.handle`` in Dask mode until it is submitted (then its Dask future): the
    call, and references to what the cluster holds of its function, session and values."""

    __slots__ = ("call", "function", "session", "values")

    def __init__(self, call: _lanestore.Call, function: Any, session: Any, values: Any) -> None:
        self.call = call
        self.function = function
        self.session = session
        self.values = values


class DaskBackend:
    """Runs attempts on a Dask cluster through a ``distributed.Client``."""

    kind = "dask"
    kills = False
    in_process = False
    # Attempts wait here until the cluster has room; each is announced (STARTED) when
    # it is handed to Dask, which is the moment its timeout counts from.

    def __init__(self, executor: Any, max_workers: int | None) -> None:
        if isinstance(executor, str):
            self._client = _connect(executor)
            self._owns_client = True
        else:
            self._client = executor
            self._owns_client = False
        if max_workers is None:
            try:
                max_workers = max(1, sum(self._client.nthreads().values()))
            except Exception:  # noqa: BLE001 - an unknown cluster size just means no cap from us
                max_workers = 1_000_000
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._waiting: collections.deque[Attempt] = collections.deque()
        self._running: dict[Attempt, Any] = {}
        self._abandoned: set[Attempt] = set()  # given up on, still running: they hold their slot
        self._closed = False
        self._packer = _lanestore.CallPacker()
        # What this run scattered to the cluster, by the packer's keys: Dask keeps each on
        # the workers that fetched it, so an attempt sends only references; released at close.
        self._scattered: dict[int, Any] = {}
        self._results: dict[int, Any] = {}  # the latest snapshot's task
        self._scatter_lock = threading.Lock()

    def submit(self, attempt: Attempt) -> None:
        try:
            call = self._packer.prepare(attempt.fn, attempt.ctx, attempt.args)
        except Exception as error:  # noqa: BLE001 - reported as this attempt's failure
            attempt.fail_unstarted(CallNotPicklableError(attempt.step, f"{type(error).__name__}: {error}"))
            return
        try:
            references = self._references(call)
        except Exception as error:  # noqa: BLE001 - the client is closed or the cluster gone
            attempt.fail_unstarted(FlowpoolError(f"Dask refused step {attempt.step!r}: {error}"))
            return
        attempt.handle = DaskCall(call, *references)
        with self._lock:
            self._waiting.append(attempt)
        self._pump()

    def _pump(self) -> None:
        while True:
            with self._lock:
                busy = len(self._running) + len(self._abandoned)
                if self._closed or not self._waiting or busy >= self._max_workers:
                    return
                attempt = self._waiting.popleft()
                if not attempt.try_claim():
                    continue
                pending = attempt.handle
                assert isinstance(pending, DaskCall)
                call = pending.call
                # Unique across processes too: the same key from another client would be
                # taken for the same task and get its result.
                key = f"flowpool-{attempt.step}-{attempt.number}-{uuid.uuid4().hex}"
                try:
                    future = self._client.submit(
                        _worker.run_dask_attempt,
                        pickle.dumps((call.step, call.attempt, call.args)),
                        pending.function,
                        pending.session,
                        pending.values,
                        key=key,
                        pure=False,
                    )
                except Exception as error:  # noqa: BLE001 - the client is closed or the cluster gone
                    attempt.fail_unstarted(FlowpoolError(f"Dask refused step {attempt.step!r}: {error}"))
                    continue
                self._running[attempt] = future
                attempt.handle = future
                attempt.started_at = attempt.clock.now()
            if attempt.notify_start:
                attempt.inbox.put((STARTED, attempt))
            future.add_done_callback(lambda f, a=attempt: self._finished(a, f))

    def _references(self, call: _lanestore.Call) -> tuple[Any, Any, Any]:
        """What ``run_dask_attempt`` reads, as references to data sent to the cluster once per
        run: the function, the session, and one task per ``ctx.results`` snapshot that hands
        on its values (so an attempt depends on three keys, not on one per value)."""
        with self._scatter_lock:  # not self._lock: a scatter waits for the cluster
            snapshot = call.snapshot
            wanted = [call.function, call.session, *zip(snapshot.value_keys, snapshot.value_data, strict=True)]
            missing = {key: data for key, data in wanted if key not in self._scattered}
            if missing:
                assert all(isinstance(data, bytes) for data in missing.values())  # this packer has no spool
                futures = self._client.scatter(list(missing.values()), hash=False)  # one round trip
                self._scattered.update(zip(missing, futures, strict=True))
            results = self._results.get(snapshot.key)
            if results is None:
                values = [
                    (name, self._scattered[key].key, self._scattered[key])
                    for name, key in zip(snapshot.names, snapshot.value_keys, strict=True)
                ]
                results = values and self._client.submit(
                    _worker.hand_on, values, key=f"flowpool-results-{uuid.uuid4().hex}", pure=False
                )
                self._results = {snapshot.key: results}
            function, session = (self._scattered[key] for key, _ in (call.function, call.session))
            return (function.key, function), (session.key, session), results

    def _finished(self, attempt: Attempt, future: Any) -> None:
        with self._lock:
            self._running.pop(attempt, None)
            self._abandoned.discard(attempt)
        try:
            envelope = future.result()
        except BaseException as error:  # noqa: BLE001 - cancelled, lost worker, …
            attempt.error = error
        else:
            attempt.ok, attempt.value, attempt.error = _worker.decode(envelope, attempt.step)
            del envelope
        # Read: let Dask drop the result now, not when a cyclic GC collects the attempt.
        if attempt.handle is future:
            attempt.handle = None
        with contextlib.suppress(Exception):
            future.release()
        attempt.finished_at = attempt.clock.now()
        attempt.inbox.put((DONE, attempt))
        self._pump()

    def cancel(self, attempt: Attempt) -> None:
        """Dask cannot tell a running task to stop; ``ctx.cancelled`` stays False there."""

    def withdraw(self, attempt: Attempt) -> bool:
        return take_back(self._lock, self._waiting, attempt)

    def stop(self, attempt: Attempt) -> None:
        if self.withdraw(attempt):
            return
        # Dask cannot stop a task (``cancel()`` only drops our interest while it runs on):
        # its future is kept, so a late completion still reports back (SPEC §16) — the loop
        # ignores it unless it waits for abandoned attempts. It keeps its slot until it
        # ends: the next attempt would otherwise wait behind it while its timeout counts.
        with self._lock:
            if self._running.pop(attempt, None) is not None:
                self._abandoned.add(attempt)
        self._pump()

    def where_it_hung(self, attempt: Attempt) -> str:
        """Dask cannot show a running task's stack."""
        return "Where it hung: unknown (a Dask worker cannot report a running task's stack)"

    def check_capacity(self, step: str) -> None:
        """Nothing to check: the cluster bounds its own work."""

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._waiting.clear()
            running = list(self._running.values())
            self._running.clear()
            self._scattered.clear()  # releases them on the cluster
            self._results.clear()
        for future in running:
            with contextlib.suppress(Exception):
                future.cancel()
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close()
