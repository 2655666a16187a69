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
