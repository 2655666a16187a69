"""Review of the day's performance changes: each test here failed before its fix.

- the spool's writer thread (``Spool.append_later``): a thread that cannot be started
  must not lose the attempt whose value was being remembered.
"""

from __future__ import annotations

import threading
import types

import pytest

from flowpool import Flow
from flowpool._executors import _lanestore

pytestmark = pytest.mark.timeout(90)


def _fifty_kb(ctx):  # type: ignore[no-untyped-def]
    return bytes(50_000)


def _reads_it(ctx):  # type: ignore[no-untyped-def]
    return len(ctx.results["big"])


class _NoThreadLeft(threading.Thread):
    """A thread the process cannot start (its thread limit reached, …)."""

    def start(self) -> None:
        raise RuntimeError("can't start new thread")


def test_a_spool_writer_that_cannot_start_loses_no_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    # remember() runs in the lane's reader callback, before the attempt's DONE is posted:
    # a writer thread that failed to start raised there, the DONE never came, and the run
    # waited for the step forever (here: until its timeout).
    fake = types.SimpleNamespace(Lock=threading.Lock, Condition=threading.Condition, Thread=_NoThreadLeft)
    monkeypatch.setattr(_lanestore, "threading", fake)
    flow = Flow("no-writer").step("big", _fifty_kb).step("read", _reads_it)
    result = flow.run(executor="process", max_workers=1, timeout=30)
    assert result.ok, result.error
    assert result.values["read"] == 50_000


def test_a_spool_whose_writer_could_not_start_still_writes_what_it_is_handed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    fake = types.SimpleNamespace(Lock=threading.Lock, Condition=threading.Condition, Thread=_NoThreadLeft)
    monkeypatch.setattr(_lanestore, "threading", fake)
    spool = _lanestore.Spool(str(tmp_path))
    try:
        assert spool.append_later(b"x" * 10) is None  # not queued for a writer that is not there
        assert spool.append(b"y" * 10) == (0, 10)  # the spool itself still works
    finally:
        spool.close()
