"""flowpool's shared daemon threads hold nothing of a run once it has ended."""

from __future__ import annotations

import gc
import time
import weakref

import pytest

from flowpool import Flow, Step
from flowpool._executors._threads import SHARED

pytestmark = pytest.mark.timeout(60)


class Payload:
    """A value a weak reference can follow."""


def _make_payload(ctx: object) -> Payload:
    return Payload()


def _wait_until_every_thread_is_idle(within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        counts = SHARED.counts()
        if counts["idle"] == counts["threads"]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the shared threads did not go idle: {counts}")
        time.sleep(0.01)


def test_an_idle_thread_does_not_hold_the_last_attempt_it_ran() -> None:
    # An idle thread's loop kept its last attempt in a local variable while it waited for
    # the next one: the attempt's context, its run's values and (in a map of subflows) a
    # whole child run stayed alive for up to the idle timeout after the run had ended.
    result = Flow("pinned").parallel("g", [Step(f"s{i}", _make_payload) for i in range(8)]).run(max_workers=4)
    assert result.ok, result.error
    refs = [weakref.ref(value) for value in result.values.values()]
    del result
    _wait_until_every_thread_is_idle(within=30)
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []
