"""What a run leaves for Python's cycle collector: not its attempts nor their contexts.

A returned attempt held its context, its context held it back, and the step's record held
the attempt: every attempt of every run was a cycle that only a collection freed, and the
collector's full passes, which walk everything alive, grew with them.
"""

from __future__ import annotations

import gc
import time

import pytest

from flowpool import Flow, Step
from flowpool._attempt import Attempt
from flowpool._context import Context
from flowpool._executors._threads import SHARED

pytestmark = pytest.mark.timeout(60)


def _ok(ctx: Context) -> int:
    return ctx.attempt


def _item(ctx: Context) -> int:
    return int(ctx.item) * 2


def _alive() -> tuple[int, int]:
    objects = gc.get_objects()
    return sum(1 for o in objects if type(o) is Attempt), sum(1 for o in objects if type(o) is Context)


def _wait_until_every_thread_is_idle(within: float) -> None:
    deadline = time.monotonic() + within
    while (counts := SHARED.counts())["idle"] != counts["threads"]:
        if time.monotonic() > deadline:
            raise AssertionError(f"the shared threads did not go idle: {counts}")
        time.sleep(0.01)


def test_a_finished_run_leaves_no_attempt_or_context_for_the_cycle_collector() -> None:
    # (A failed attempt's error keeps its traceback, whose frames hold the attempt: that
    # cycle is the exception's, as anywhere in Python.)
    flow = (
        Flow("garbage")
        .parallel("g", [Step(f"s{i}", _ok) for i in range(20)])
        .map("m", _item, items=range(30), max_concurrency=4)
        .step("last", _ok)
    )
    assert flow.run(max_workers=4).ok  # warm: threads started, modules imported
    _wait_until_every_thread_is_idle(within=30)
    gc.collect()
    gc.disable()
    try:
        before = _alive()
        result = flow.run(max_workers=4)
        assert result.ok, result.error
        assert result.values["m"][29] == 58
        del result
        _wait_until_every_thread_is_idle(within=30)
        after = _alive()
    finally:
        gc.enable()
    assert after == before, "attempts and contexts (before, after) alive"
