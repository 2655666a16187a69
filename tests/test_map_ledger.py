"""The map's columnar ledger, its results, its feeder and its verdicts, tested directly."""

from __future__ import annotations

import gc
import pickle
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowpool import GroupStatus, StepStatus
from flowpool._maps import ItemFeeder, MapLedger, MapResult, item_label
from flowpool._policy import cannot_pass, check_tolerance, tally_verdict


def _settled_ledger(outcomes: list[StepStatus], *, keyed: bool = False) -> MapLedger:
    ledger = MapLedger("m", keyed=keyed)
    for index, status in enumerate(outcomes):
        taken = ledger.take(f"k{index}" if keyed else None)
        assert taken == index
        error = None if status is StepStatus.COMPLETED else RuntimeError(f"item {index}")
        ledger.settle(index, status, index * 10, error, 1, 1.0 + index, 2.0 + index)
    return ledger


def test_items_are_built_on_access_in_item_order() -> None:
    ledger = _settled_ledger([StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.COMPLETED])
    result = MapResult("m", GroupStatus.PARTIAL, ledger)
    assert result.total == 3
    assert [item.index for item in result.items] == [0, 1, 2]
    assert [item.key for item in result.items] == [0, 1, 2]
    assert result.items[1].status is StepStatus.FAILED
    assert result.items[1].value is None
    assert isinstance(result.items[1].error, RuntimeError)
    assert result.items[-1].value == 20
    assert result.items[0].duration == pytest.approx(1.0)
    assert dict(result.values) == {0: 0, 2: 20}
    assert [item.index for item in result.failed] == [1]
    assert result.counts[StepStatus.COMPLETED] == 2
    assert result.counts[StepStatus.FAILED] == 1
    assert set(result.counts) == set(StepStatus)
    assert result.counts[StepStatus.SKIPPED] == 0


def test_keyed_items_are_found_by_key_and_values_keep_item_order() -> None:
    ledger = _settled_ledger([StepStatus.COMPLETED, StepStatus.TIMED_OUT, StepStatus.COMPLETED], keyed=True)
    result = MapResult("m", GroupStatus.PARTIAL, ledger)
    assert list(result.values) == ["k0", "k2"]
    assert result.values["k2"] == 20
    with pytest.raises(KeyError):
        result.values["k1"]  # did not complete
    assert result.item("k1").status is StepStatus.TIMED_OUT
    with pytest.raises(KeyError):
        result.item("nope")


def test_duplicate_and_bad_keys_are_refused_and_not_taken() -> None:
    ledger = MapLedger("m", keyed=True)
    ledger.take("a")
    with pytest.raises(ValueError, match="'a'"):
        ledger.take("a")
    for bad in (True, 1.5, None, ("t",)):
        with pytest.raises(ValueError, match="str or an int"):
            ledger.take(bad)
    assert len(ledger) == 1


def test_a_map_result_is_immutable_and_survives_pickling() -> None:
    ledger = _settled_ledger([StepStatus.COMPLETED, StepStatus.FAILED], keyed=True)
    result = MapResult("m", GroupStatus.PARTIAL, ledger, stopped_early=True)
    with pytest.raises(AttributeError):
        result.status = GroupStatus.FAILED  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(result))
    assert copy.stopped_early
    assert [(i.key, i.status, i.value) for i in copy.items] == [(i.key, i.status, i.value) for i in result.items]
    assert pickle.loads(pickle.dumps(result.values)) == {"k0": 0}


def test_to_dict_lists_every_item_with_its_key_status_value_error_and_attempts() -> None:
    ledger = _settled_ledger([StepStatus.COMPLETED, StepStatus.FAILED], keyed=True)
    data = MapResult("m", GroupStatus.PARTIAL, ledger).to_dict(wall_offset=1_700_000_000.0)
    assert data["total"] == 2
    assert data["counts"]["completed"] == 1
    assert data["items"][0]["key"] == "k0"
    assert data["items"][1]["error"]["type"] == "RuntimeError"
    assert data["items"][1]["attempts"] == 1
    assert data["items"][0]["started"].endswith("+00:00")


def test_a_skipped_map_has_no_items() -> None:
    result = MapResult("m", GroupStatus.SKIPPED)
    assert result.total == 0
    assert list(result.items) == []
    assert dict(result.values) == {}
    assert all(count == 0 for count in result.counts.values())


def test_item_labels_name_the_map_and_the_key() -> None:
    assert item_label("resize", "a.png") == "resize['a.png']"
    assert item_label("resize", 3) == "resize[3]"


def test_the_ledger_keeps_under_200_bytes_per_item() -> None:
    n = 100_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ledger = MapLedger("m", keyed=False)
        for index in range(n):
            ledger.take()
            ledger.settle(index, StepStatus.COMPLETED, None, None, 1, 1.0, 2.0)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used / n < 200, f"{used / n:.0f} bytes per item"


# ── the feeder ──────────────────────────────────────────────────────────────────


def test_the_feeder_takes_one_item_at_a_time_from_a_generator() -> None:
    yielded = 0

    def rows() -> Iterator[int]:
        nonlocal yielded
        for row in range(10_000_000):
            yielded += 1
            yield row

    feeder = ItemFeeder(rows(), None, MapLedger("m", keyed=False))
    assert feeder.size is None
    assert feeder.take() == (0, 0)
    assert feeder.take() == (1, 1)
    assert yielded == 2
    feeder.close()
    assert feeder.take() is None


def test_the_feeder_reports_an_iteration_error_and_stops() -> None:
    def rows() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    feeder = ItemFeeder(rows(), None, MapLedger("m", keyed=False))
    assert feeder.take() == (0, 1)
    assert feeder.take() is None
    assert isinstance(feeder.problem, OSError)
    assert not feeder.exhausted


def test_the_feeder_stops_at_a_duplicate_key_without_taking_it() -> None:
    ledger = MapLedger("m", keyed=True)
    feeder = ItemFeeder(["a", "b", "a", "c"], lambda item: item, ledger)
    assert feeder.size == 4
    taken = []
    while (pair := feeder.take()) is not None:
        taken.append(pair)
    assert taken == [(0, "a"), (1, "b")]
    assert isinstance(feeder.problem, ValueError)
    assert "'a'" in str(feeder.problem)
    assert len(ledger) == 2


def test_an_exhausted_feeder_has_no_problem() -> None:
    feeder = ItemFeeder(range(2), None, MapLedger("m", keyed=False))
    assert [feeder.take(), feeder.take(), feeder.take()] == [(0, 0), (1, 1), None]
    assert feeder.exhausted
    assert feeder.problem is None


# ── verdicts ────────────────────────────────────────────────────────────────────


def test_an_empty_map_completes_whatever_its_policy() -> None:
    assert tally_verdict(0, 0, fail_fast=True) is GroupStatus.COMPLETED
    assert tally_verdict(0, 0, min_successes=3) is GroupStatus.COMPLETED
    assert tally_verdict(0, 0, tolerated_failures=0) is GroupStatus.COMPLETED


def test_a_tolerance_replaces_the_default_rule() -> None:
    assert tally_verdict(0, 3, tolerated_failures=5) is GroupStatus.PARTIAL
    assert tally_verdict(0, 3) is GroupStatus.FAILED
    assert tally_verdict(7, 10, tolerated_failures=3) is GroupStatus.PARTIAL
    assert tally_verdict(6, 10, tolerated_failures=3) is GroupStatus.FAILED
    assert tally_verdict(95, 100, tolerated_failures=0.05) is GroupStatus.PARTIAL
    assert tally_verdict(94, 100, tolerated_failures=0.05) is GroupStatus.FAILED


def test_quorum_and_fail_fast_on_a_map() -> None:
    assert tally_verdict(2, 2, min_successes=3) is GroupStatus.FAILED
    assert tally_verdict(3, 4, min_successes=3) is GroupStatus.PARTIAL
    assert tally_verdict(3, 4, fail_fast=True) is GroupStatus.FAILED
    assert tally_verdict(4, 4, fail_fast=True) is GroupStatus.COMPLETED
    assert tally_verdict(1, 4) is GroupStatus.PARTIAL


def test_when_a_map_stops_early() -> None:
    assert not cannot_pass(0, fail_fast=True)
    assert cannot_pass(1, fail_fast=True)
    assert not cannot_pass(2, tolerated_failures=2)
    assert cannot_pass(3, tolerated_failures=2)
    assert not cannot_pass(50, tolerated_failures=0.1)  # no len(): never early
    assert not cannot_pass(10, tolerated_failures=0.1, size=100)
    assert cannot_pass(11, tolerated_failures=0.1, size=100)
    assert not cannot_pass(100)  # the default rule never stops early


@pytest.mark.parametrize("bad", [True, -1, 0.0, 1.0, 1.5, "3", None.__class__])
def test_bad_tolerances_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        check_tolerance(bad)


def test_good_tolerances_pass() -> None:
    assert check_tolerance(None) is None
    assert check_tolerance(0) == 0
    assert check_tolerance(0.25) == 0.25


@given(
    st.lists(st.sampled_from(list(StepStatus)), max_size=60),
    st.one_of(st.none(), st.integers(0, 10), st.floats(0.01, 0.99)),
)
def test_stopping_early_never_contradicts_the_verdict(outcomes: list[StepStatus], tolerance: float | None) -> None:
    """Once a map stops early its verdict is FAILED, however the remaining items would end."""
    failed = 0
    for settled, status in enumerate(outcomes, start=1):
        failed += status is not StepStatus.COMPLETED
        size = len(outcomes)
        if cannot_pass(failed, tolerated_failures=tolerance, size=size):
            # Everything else completes: still FAILED.
            completed = settled - failed + (size - settled)
            assert tally_verdict(completed, size, tolerated_failures=tolerance) is GroupStatus.FAILED
            break
