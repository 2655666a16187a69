"""SPEC §13 and §16 on maps: ``when`` skips a whole map; ``optional`` keeps a failed map from failing the flow."""

from __future__ import annotations

import pytest
from _behaviour_helpers import Log, fail, value

from flowpool import Context, Flow, FlowStatus, GroupStatus

pytestmark = pytest.mark.timeout(60)


def test_a_false_condition_skips_the_map_and_takes_no_item(run_kw, tmp_path):
    taken = Log(tmp_path)

    def items(ctx: Context) -> list[int]:
        taken.add("items")
        return [1, 2, 3]

    flow = Flow("f").step("a", value(0)).map("m", value(1), items=items, when=lambda ctx: ctx.results["a"] > 0)
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.maps["m"].status is GroupStatus.SKIPPED
    assert result.maps["m"].total == 0
    assert list(taken) == []


def test_an_exception_in_a_maps_condition_fails_the_map(run_kw):
    def broken(ctx: Context) -> bool:
        raise KeyError("flag")

    result = Flow("f").map("m", value(1), items=[1, 2], when=broken).run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert result.maps["m"].status is GroupStatus.FAILED
    assert isinstance(result.maps["m"].error, KeyError)


def test_an_optional_map_that_fails_does_not_fail_the_flow(run_kw):
    flow = Flow("f").map("m", fail(OSError("down")), items=[1, 2, 3], optional=True).step("after", value("ran"))
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.COMPLETED
    assert result.maps["m"].status is GroupStatus.FAILED
    assert result.steps["after"].value == "ran"
