"""SPEC §12: map stages — lazy items, bounded look-ahead, policies, early stop, results, events."""

from __future__ import annotations

import json

import pytest
from _behaviour_helpers import Log, Record, wait_for

from flowpool import (
    Context,
    Event,
    Flow,
    FlowStatus,
    GroupStatus,
    ItemResult,
    MapItemsError,
    StepStatus,
)

pytestmark = pytest.mark.timeout(60)


def double(ctx: Context) -> int:
    return ctx.item * 2


def fail_odd(ctx: Context) -> int:
    if ctx.item % 2:
        raise ValueError(f"odd item {ctx.item}")
    return ctx.item


def always_fail(ctx: Context) -> None:
    raise ValueError(f"item {ctx.index} failed")


# ── running items ───────────────────────────────────────────────────────────────


def test_each_item_runs_with_its_item_index_and_key_in_the_context(run_kw):
    def describe(ctx: Context) -> tuple[object, ...]:
        return (ctx.step, ctx.item, ctx.index, ctx.key, ctx.attempt)

    def after(ctx: Context) -> object:
        return (ctx.item, ctx.index, ctx.key, dict(ctx.results["m"]))

    flow = Flow("f").map("m", describe, items=["a", "bb", "ccc"], key=lambda s: s.upper()).step("after", after)
    result = flow.run(**run_kw)
    assert result.ok, result.error
    assert dict(result.maps["m"].values) == {
        "A": ("m", "a", 0, "A", 1),
        "BB": ("m", "bb", 1, "BB", 1),
        "CCC": ("m", "ccc", 2, "CCC", 1),
    }
    # Outside a map the item fields are None; later stages see the map's values by key.
    assert result.values["after"] == (None, None, None, dict(result.maps["m"].values))
    assert "m" not in result.steps
    assert list(result.values["m"]) == ["A", "BB", "CCC"]


def test_items_callable_sees_earlier_results_and_default_keys_are_indices(run_kw):
    flow = Flow("f").step("list", lambda ctx: [5, 6, 7]).map("m", double, items=lambda ctx: ctx.results["list"])
    result = flow.run(**run_kw)
    m = result.maps["m"]
    assert m.status is GroupStatus.COMPLETED
    assert (m.total, dict(m.values)) == (3, {0: 10, 1: 12, 2: 14})
    assert [item.key for item in m.items] == [0, 1, 2]
    assert all(isinstance(item, ItemResult) and item.ok and item.attempts == 1 for item in m.items)
    assert result.groups["m"].members == ()
    assert result.groups["m"].counts[StepStatus.COMPLETED] == 3


def test_items_are_taken_lazily_one_slot_at_a_time(run_kw, gates, tmp_path):
    yielded = Record(tmp_path)
    first_read = gates.new()

    def rows():
        for n in range(200):
            yielded["n"] = n + 1
            yield n

    def work(ctx: Context) -> int:
        if ctx.index == 0:
            seen = yielded["n"]
            first_read.set()
            return seen
        wait_for(first_read)  # nothing settles before the first item has looked
        return -1

    result = Flow("f").map("m", work, items=rows(), max_concurrency=2).run(**run_kw)
    assert result.ok, result.error
    # When the first item ran, at most the two items of its slots had been taken.
    assert result.maps["m"].values[0] <= 2
    assert result.maps["m"].total == 200


def test_taken_but_unstarted_items_stay_within_the_look_ahead_bound(run_kw):
    limit = 3
    finished = [0]
    ahead = []

    def rows():
        for n in range(300):
            ahead.append(n - finished[0])  # taken (n) minus settled, in the caller's thread
            yield n

    def count(event: Event) -> None:
        if event.kind == "step_finished" and event.item is not None:
            finished[0] += 1

    result = Flow("f").map("m", double, items=rows(), max_concurrency=limit).run(on_event=count, **run_kw)
    assert result.ok
    assert max(ahead) <= limit <= 2 * limit + 64


def test_max_concurrency_bounds_items_running_at_once(run_kw, tmp_path):
    from _behaviour_helpers import Gauge

    gauge = Gauge(tmp_path)

    def work(ctx: Context) -> int:
        gauge.enter()
        try:
            return ctx.item
        finally:
            gauge.leave()

    result = Flow("f").map("m", work, items=range(30), max_concurrency=2).run(**run_kw)
    assert result.ok
    assert 1 <= gauge.peak <= 2


# ── policies and early stop ─────────────────────────────────────────────────────


def test_default_policy_passes_partial_and_fails_when_nothing_completed(run_kw):
    result = Flow("f").map("m", fail_odd, items=range(6)).step("next", lambda ctx: len(ctx.results["m"])).run(**run_kw)
    m = result.maps["m"]
    assert (result.ok, m.status, m.counts[StepStatus.FAILED]) == (True, GroupStatus.PARTIAL, 3)
    assert [item.key for item in m.failed] == [1, 3, 5]
    assert result.values["next"] == 3

    result = Flow("f").map("m", always_fail, items=range(3)).step("next", double).run(**run_kw)
    m = result.maps["m"]
    assert (result.status, m.status, result.failed_stage) == (FlowStatus.FAILED, GroupStatus.FAILED, "m")
    assert isinstance(m.error, ExceptionGroup) and len(m.error.exceptions) == 3
    assert result.error is m.error
    assert result.steps["next"].status is StepStatus.SKIPPED


def test_an_int_tolerance_replaces_the_default_rule(run_kw):
    result = Flow("f").map("m", always_fail, items=range(3), tolerated_failures=5).run(**run_kw)
    assert result.ok and result.maps["m"].status is GroupStatus.PARTIAL
    result = Flow("f").map("m", fail_odd, items=range(4), tolerated_failures=1).run(**run_kw)
    assert result.maps["m"].status is GroupStatus.FAILED


def test_min_successes_is_checked_against_the_items(run_kw):
    result = Flow("f").map("m", fail_odd, items=range(4), min_successes=3).run(**run_kw)
    assert result.maps["m"].status is GroupStatus.FAILED
    result = Flow("f").map("m", fail_odd, items=range(6), min_successes=3).run(**run_kw)
    assert result.maps["m"].status is GroupStatus.PARTIAL


def test_an_empty_map_is_completed_whatever_its_policy(run_kw):
    result = Flow("f").map("m", double, items=[], min_successes=3).step("next", lambda ctx: dict(ctx.results["m"]))
    done = result.run(**run_kw)
    assert done.ok and done.maps["m"].status is GroupStatus.COMPLETED and done.maps["m"].total == 0
    assert done.values["next"] == {}


def test_fail_fast_stops_taking_items(run_kw):
    taken = []

    def rows():
        for n in range(1000):
            taken.append(n)
            yield n

    result = Flow("f").map("m", always_fail, items=rows(), fail_fast=True, max_concurrency=2).run(**run_kw)
    m = result.maps["m"]
    assert m.status is GroupStatus.FAILED and m.stopped_early
    assert m.total == len(taken) < 1000
    assert m.counts[StepStatus.FAILED] >= 1
    assert sum(m.counts.values()) == m.total


def test_an_int_tolerance_stops_once_exceeded(run_kw):
    result = Flow("f").map("m", always_fail, items=iter(range(500)), tolerated_failures=3, max_concurrency=1)
    m = result.run(**run_kw).maps["m"]
    assert (m.status, m.stopped_early, m.total) == (GroupStatus.FAILED, True, 4)


def test_a_float_tolerance_stops_early_only_when_the_items_have_a_length(run_kw):
    sized = Flow("f").map("m", always_fail, items=list(range(100)), tolerated_failures=0.1, max_concurrency=1)
    m = sized.run(**run_kw).maps["m"]
    assert (m.status, m.stopped_early, m.total) == (GroupStatus.FAILED, True, 11)
    unsized = Flow("f").map("m", always_fail, items=iter(range(20)), tolerated_failures=0.1, max_concurrency=1)
    m = unsized.run(**run_kw).maps["m"]
    assert (m.status, m.stopped_early, m.total) == (GroupStatus.FAILED, False, 20)


# ── items that cannot be produced ───────────────────────────────────────────────


def test_an_iteration_error_fails_the_map_after_started_items_settle(run_kw):
    def rows():
        yield from range(3)
        raise OSError("the file went away")

    flow = Flow("f").map("m", double, items=rows()).step("next", double)
    result = flow.run(**run_kw)
    m = result.maps["m"]
    assert (m.status, m.total, result.failed_stage) == (GroupStatus.FAILED, 3, "m")
    assert isinstance(m.error, MapItemsError) and isinstance(m.error.__cause__, OSError)
    assert (m.error.map, m.error.taken) == ("m", 3)
    assert result.error is m.error
    assert dict(m.values) == {0: 0, 1: 2, 2: 4}  # a failed map's values keep its completed items
    assert result.steps["next"].status is StepStatus.SKIPPED


def test_an_items_callable_that_raises_fails_the_map(run_kw):
    def items(ctx: Context) -> list[int]:
        raise KeyError("no list")

    result = Flow("f").map("m", double, items=items).run(**run_kw)
    m = result.maps["m"]
    assert (m.status, m.total) == (GroupStatus.FAILED, 0)
    assert isinstance(m.error, MapItemsError) and isinstance(m.error.__cause__, KeyError)


@pytest.mark.parametrize(("bad", "taken"), [([1, 2, 1], 2), ([1, 2.5, 3], 1), ([1, True], 1)])
def test_duplicate_or_bad_keys_fail_the_map_and_are_not_taken(run_kw, bad, taken):
    result = Flow("f").map("m", lambda ctx: ctx.item, items=bad, key=lambda item: item).run(**run_kw)
    m = result.maps["m"]
    assert m.status is GroupStatus.FAILED
    assert m.total == taken  # the offending item is not taken, nor any after it
    assert isinstance(m.error, MapItemsError) and isinstance(m.error.__cause__, ValueError)
    if bad == [1, 2, 1]:
        assert "1" in str(m.error.__cause__)


# ── compensation ────────────────────────────────────────────────────────────────


def test_completed_items_are_compensated_at_the_maps_place_in_reverse_item_order(run_kw, tmp_path):
    undone = Log(tmp_path)

    def undo(ctx: Context, value: object) -> None:
        undone.add([ctx.step, ctx.key, ctx.item, ctx.index, value])

    def undo_first(ctx: Context, value: object) -> None:
        undone.add(["first", None, None, None, value])

    def boom(ctx: Context) -> None:
        raise RuntimeError("later stage failed")

    flow = (
        Flow("f")
        .step("first", lambda ctx: 1, compensate=undo_first)
        .map("m", fail_odd, items=[0, 1, 2, 4], key=lambda n: f"k{n}", compensate=undo)
        .step("boom", boom)
    )
    result = flow.run(**run_kw)
    assert result.status is FlowStatus.FAILED
    assert result.compensated == ("m['k4']", "m['k2']", "m['k0']", "first")
    assert undone.items == [
        ["m", "k4", 4, 3, 4],
        ["m", "k2", 2, 2, 2],
        ["m", "k0", 0, 0, 0],
        ["first", None, None, None, 1],
    ]
    assert result.maps["m"].item("k2").compensation.status == "compensated"
    assert result.maps["m"].item("k1").compensation is None


def test_compensate_concurrency_runs_a_stages_compensations_together(run_kw, tmp_path):
    from _behaviour_helpers import FileBarrier

    barrier = FileBarrier(tmp_path, 3)
    log = Log(tmp_path)

    def undo(ctx: Context, value: object) -> None:
        barrier.wait(timeout=20)  # only passes if three compensations run at once
        log.add(ctx.key)

    def undo_first(ctx: Context, value: object) -> None:
        log.add("first")

    def boom(ctx: Context) -> None:
        raise RuntimeError("x")

    flow = (
        Flow("f")
        .step("first", lambda ctx: 1, compensate=undo_first)
        .map("m", double, items=range(6), compensate=undo, compensate_concurrency=3)
        .step("boom", boom)
    )
    result = flow.run(**run_kw)
    assert sorted(result.compensated[:6]) == [f"m[{i}]" for i in range(6)]
    assert result.compensated[6] == "first"
    assert log.items[-1] == "first"  # every item's compensation ended before the earlier stage's began


def test_compensate_concurrency_on_a_parallel_group(run_kw, tmp_path):
    from _behaviour_helpers import FileBarrier

    barrier = FileBarrier(tmp_path, 2)

    def undo(ctx: Context, value: object) -> None:
        barrier.wait(timeout=20)

    def boom(ctx: Context) -> None:
        raise RuntimeError("x")

    members = [{"name": f"s{i}", "fn": (lambda ctx: 1), "compensate": undo} for i in range(4)]
    flow = Flow("f").parallel("g", members, compensate_concurrency=2).step("boom", boom)
    result = flow.run(**run_kw)
    assert sorted(result.compensated) == ["s0", "s1", "s2", "s3"]
    assert all(result.steps[f"s{i}"].compensation.ok for i in range(4))


# ── groups with a tolerance ─────────────────────────────────────────────────────


def test_a_groups_tolerance_replaces_its_default_rule_but_required_members_still_fail_it(run_kw):
    bad = [{"name": f"b{i}", "fn": always_fail} for i in range(3)]
    result = Flow("f").parallel("g", bad, tolerated_failures=5).run(**run_kw)
    assert result.ok and result.groups["g"].status is GroupStatus.PARTIAL
    result = Flow("f").parallel("g", bad, tolerated_failures=0.5).run(**run_kw)
    assert result.groups["g"].status is GroupStatus.FAILED
    members = [*bad, {"name": "r", "fn": always_fail, "required": True}]
    result = Flow("f").parallel("g", members, tolerated_failures=10).run(**run_kw)
    assert result.groups["g"].status is GroupStatus.FAILED


# ── events and results ──────────────────────────────────────────────────────────


def test_item_events_name_the_item(run_kw):
    events: list[Event] = []
    Flow("f").map("m", lambda ctx: ctx.item, items=["x", "y"], key=lambda s: s).run(on_event=events.append, **run_kw)
    finished = [e for e in events if e.kind == "step_finished"]
    assert sorted((e.item, e.index) for e in finished) == [("x", 0), ("y", 1)]
    assert all(e.step == "m" and e.group is None for e in finished)
    started = [e for e in events if e.kind == "step_started"]
    assert sorted(e.item for e in started) == ["x", "y"]
    groups = [e for e in events if e.kind == "group_finished"]
    assert len(groups) == 1 and groups[0].group == "m"
    flow_events = [e for e in events if e.kind in ("flow_started", "flow_finished")]
    assert all(e.item is None and e.index is None for e in flow_events)


def test_to_dict_has_the_maps(run_kw):
    result = Flow("f").map("m", fail_odd, items=range(3), key=lambda n: f"n{n}").run(**run_kw)
    data = json.loads(json.dumps(result.to_dict()))
    m = data["maps"]["m"]
    assert (m["status"], m["total"], m["stopped_early"]) == ("partial", 3, False)
    assert m["counts"]["completed"] == 2 and m["counts"]["failed"] == 1
    assert [(i["key"], i["status"], i["value"], i["attempts"]) for i in m["items"]] == [
        ("n0", "completed", 0, 1),
        ("n1", "failed", None, 1),
        ("n2", "completed", 2, 1),
    ]
    assert m["items"][1]["error"] is not None


def test_a_skipped_map_is_in_the_result(run_kw):
    def boom(ctx: Context) -> None:
        raise RuntimeError("x")

    result = Flow("f").step("boom", boom).map("m", double, items=range(3)).run(**run_kw)
    m = result.maps["m"]
    assert (m.status, m.total) == (GroupStatus.SKIPPED, 0)
    assert result.groups["m"].status is GroupStatus.SKIPPED


def test_items_retry_on_their_own(run_kw):
    def flaky(ctx: Context) -> int:
        if ctx.item == 1 and ctx.attempt == 1:
            raise ValueError("first try")
        return ctx.attempt

    result = Flow("f").map("m", flaky, items=range(3), retries=1).run(**run_kw)
    m = result.maps["m"]
    assert dict(m.values) == {0: 1, 1: 2, 2: 1}
    assert [item.attempts for item in m.items] == [1, 2, 1]
