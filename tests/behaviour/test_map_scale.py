"""SPEC §12 at scale: a million items through one map, in thread mode."""

from __future__ import annotations

import gc

import pytest

from flowpool import Context, Flow, GroupStatus, StepStatus

ITEMS = 1_000_000


def keep_even(ctx: Context) -> int | None:
    return ctx.index if ctx.index % 2 == 0 else None


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.modes("thread", reason="a million items is a test of the loop, not of a backend")
def test_a_million_item_generator_runs_without_being_materialised(executor):
    taken = [0]

    def rows():
        for n in range(ITEMS):
            taken[0] += 1
            yield n

    gc.collect()
    tracked_before = len(gc.get_objects())
    result = Flow("big").map("m", keep_even, items=rows(), max_concurrency=8).run(executor=executor)
    m = result.maps["m"]
    assert (m.status, m.total, taken[0]) == (GroupStatus.COMPLETED, ITEMS, ITEMS)
    assert m.counts[StepStatus.COMPLETED] == ITEMS
    assert m.values[ITEMS - 2] == ITEMS - 2 and m.values[1] is None
    # The finished map holds columns, not an object per item: the collector tracks no more
    # than a few containers per thousand items.
    gc.collect()
    assert len(gc.get_objects()) - tracked_before < ITEMS // 1000


def noop(ctx: Context) -> None:
    return None


@pytest.mark.timeout(300)
@pytest.mark.modes("thread", reason="the loop's own bookkeeping, the same for every backend")
def test_a_settled_items_timeout_timer_does_not_keep_it_alive(executor):
    import tracemalloc

    items = 20_000
    flow = Flow("timers").map("m", noop, items=range(items), timeout=3600.0, max_concurrency=4)
    flow.run(executor=executor)  # warm: imports and threads are not the map's bookkeeping
    gc.collect()
    tracemalloc.start()
    try:
        result = flow.run(executor=executor)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok
    # Were each item's hour-long timer kept until due, its attempt and context would stay
    # too (well over a kilobyte an item); dropped at settle, the map stays near its columns.
    assert peak / items < 300, f"{peak / items:.0f} bytes per item"
