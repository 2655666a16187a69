"""Review of the day's performance changes: each test here failed before its fix.

- the spool's writer thread (``Spool.append_later``): a thread that cannot be started
  must not lose the attempt whose value was being remembered.

The other tests guard what the review checked and found right: a spool closed while its
writer lags ends every wait and leaves no file; a map with no completed item, or whose
items are large and small, reaches a later process-mode stage as the same plain dict.
"""

from __future__ import annotations

import os
import threading
import types
from pathlib import Path

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


def test_a_spool_closed_while_its_writer_lags_ends_every_wait_and_leaves_no_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    entered, release = threading.Event(), threading.Event()
    append = _lanestore.Spool.append

    def held(self, data):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "flowpool-spool" and not entered.is_set():
            entered.set()
            release.wait(30)
        return append(self, data)

    monkeypatch.setattr(_lanestore.Spool, "append", held)
    spool = _lanestore.Spool(str(tmp_path))
    try:
        first, second = spool.append_later(b"a" * 10), spool.append_later(b"b" * 10)
        assert first is not None and second is not None
        assert entered.wait(30), "the writer took the first value"
        spool.close()  # the run ends while its writer is held before its first write
    finally:
        release.set()
    assert spool.span_of(first) is None and spool.span_of(second) is None
    assert spool.append_later(b"c" * 10) is None, "nothing is queued once closed"
    writers = [t for t in threading.enumerate() if t.name == "flowpool-spool"]
    for writer in writers:
        writer.join(30)
    assert not any(writer.is_alive() for writer in writers)
    assert not os.path.exists(spool.path), "the writer did not create the file after the close"


def _item_or_fail(ctx):  # type: ignore[no-untyped-def]
    if ctx.item < 0:
        raise ValueError("no value")
    return bytes([ctx.item]) * (30_000 if ctx.item % 2 else 10)


def _map_as_seen(ctx):  # type: ignore[no-untyped-def]
    values = ctx.results["m"]
    return type(values).__name__, [(key, len(value), value[:1]) for key, value in values.items()]


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([-1, -2], []),
        ([5, 2, -1, 3], [(0, 30_000, b"\x05"), (1, 10, b"\x02"), (3, 30_000, b"\x03")]),
    ],
    ids=["no-completed-item", "large-small-failed"],
)
def test_a_later_process_stage_gets_a_maps_values_as_a_plain_dict_in_item_order(
    items: list[int], expected: list[tuple[int, int, bytes]]
) -> None:
    flow = Flow("items").map("m", _item_or_fail, items=items, tolerated_failures=2).step("read", _map_as_seen)
    result = flow.run(executor="process", max_workers=2)
    assert result.ok, result.error
    assert result.values["read"] == ("dict", expected)
