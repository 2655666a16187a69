"""``flowpool._record``: records behave as the ``dataclass(frozen=True, slots=True)`` classes they replace."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Mapping
from typing import Any

import pytest

from flowpool import (
    CompensationResult,
    Event,
    FlowResult,
    FlowStatus,
    GroupResult,
    GroupStatus,
    ItemResult,
    StepResult,
    StepStatus,
)
from flowpool._definition import Group, Map, Step
from flowpool._record import field, fields, record, replace
from flowpool._retry import Decision

pytestmark = pytest.mark.timeout(30)


def _noop(ctx: Any) -> None:
    return None


@record
class Pair:
    """A record whose ``__init__`` is generated."""

    name: str
    size: int = 0
    tags: tuple[str, ...] = ()
    extra: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Twin:
    """``Pair`` as a dataclass (named apart only by ``Twin``)."""

    name: str
    size: int = 0
    tags: tuple[str, ...] = ()
    extra: Mapping[str, int] = dataclasses.field(default_factory=dict, repr=False, compare=False)


def test_a_record_repr_eq_hash_and_slots_are_those_of_its_dataclass_twin() -> None:
    for args, kwargs in [(("a",), {}), (("a", 2), {"tags": ("x",)}), ((), {"name": "b", "extra": {"k": 1}})]:
        mine, twin = Pair(*args, **kwargs), Twin(*args, **kwargs)
        assert repr(mine) == repr(twin).replace("Twin(", "Pair(")
        assert hash(mine) == hash(twin)
        assert Pair.__slots__ == Twin.__slots__
        assert Pair.__match_args__ == Twin.__match_args__
        assert not hasattr(mine, "__dict__")
    assert Pair("a", extra={"k": 1}) == Pair("a", extra={"k": 2})  # compare=False
    assert Pair("a") != Pair("a", 1)
    assert Pair("a").__eq__(Twin("a")) is NotImplemented
    assert Pair("a").extra == {} and Pair("a").extra is not Pair("a").extra  # a fresh default per record


def test_records_of_one_field_or_none_compare_and_hash_like_dataclasses() -> None:
    @record
    class One:
        only: int

    @record
    class Hidden:
        secret: int = field(default=0, compare=False, repr=False)

    assert One(1) == One(1) and One(1) != One(2) and hash(One(1)) == hash((1,))
    assert Hidden(1) == Hidden(2) and hash(Hidden(1)) == hash(()) and repr(Hidden(1)).endswith(".Hidden()")
    assert repr(One(3)).endswith(".One(only=3)")


def test_a_record_refuses_assignment_and_deletion_with_frozen_instance_error() -> None:
    pair = Pair("a")
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'size'"):
        pair.size = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del pair.name  # type: ignore[misc]
    with pytest.raises(AttributeError):
        pair.other = 1  # type: ignore[attr-defined]
    assert pair.size == 0


def test_a_record_keeps_construction_errors_of_a_dataclass() -> None:
    with pytest.raises(TypeError):
        Pair()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Pair("a", nope=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        StepResult("a")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        StepResult("a", StepStatus.FAILED, color="red")  # type: ignore[call-arg]


def test_records_pickle_copy_and_replace() -> None:
    pair = Pair("a", 2, ("t",), {"k": 1})
    for clone in (pickle.loads(pickle.dumps(pair)), copy.copy(pair), copy.deepcopy(pair)):
        assert clone == pair and clone.extra == {"k": 1}
    changed = replace(pair, size=5)
    assert (changed.name, changed.size, changed.tags, changed.extra) == ("a", 5, ("t",), {"k": 1})
    assert [spec.name for spec in fields(Pair)] == ["name", "size", "tags", "extra"]
    with pytest.raises(TypeError):
        fields(Twin)


def test_a_pickle_made_before_a_field_was_added_gets_the_field_default() -> None:
    step = StepResult("a", StepStatus.COMPLETED, 1, attempts=1)
    old = StepResult.__new__(StepResult)
    old.__setstate__(step.__getstate__()[:-1])  # the state a record without ``subflow`` pickled
    assert old == step and old.subflow is None


def test_a_hand_written_init_must_take_the_fields_with_their_defaults() -> None:
    with pytest.raises(TypeError, match="takes"):

        @record
        class Swapped:
            a: int
            b: int

            def __init__(self, b: int, a: int) -> None:
                object.__setattr__(self, "a", a)
                object.__setattr__(self, "b", b)

    with pytest.raises(TypeError, match="default of 'b'"):

        @record
        class Drifted:
            a: int
            b: int = 1

            def __init__(self, a: int, b: int = 2) -> None:
                object.__setattr__(self, "a", a)
                object.__setattr__(self, "b", b)

    with pytest.raises(TypeError, match="non-default field 'b'"):

        @record
        class Unordered:
            a: int = 0
            b: int  # type: ignore[misc]


#: Each public record: one built with defaults only, and its fields in order.
_RECORDS: list[tuple[Any, tuple[str, ...]]] = [
    (CompensationResult("failed"), ("status", "error", "attempts")),
    (
        StepResult("a", StepStatus.SKIPPED),
        (
            "name",
            "status",
            "value",
            "error",
            "attempts",
            "started_at",
            "finished_at",
            "group",
            "compensation",
            "late_value",
            "subflow",
        ),
    ),
    (ItemResult(0, "k", StepStatus.COMPLETED), ItemResult.__match_args__),
    (GroupResult("g", GroupStatus.COMPLETED, ("a",)), ("name", "status", "members", "counts")),
    (
        FlowResult("f", "r", FlowStatus.COMPLETED, {}, {}),
        (
            "name",
            "run_id",
            "status",
            "steps",
            "groups",
            "error",
            "failed_stage",
            "compensated",
            "not_compensated",
            "started_at",
            "finished_at",
            "still_running",
            "wall_offset",
            "maps",
            "_values",
        ),
    ),
    (Event("flow_started", "f", "r", 1.0), Event.__match_args__),
    (Decision(retry=False), ("retry", "delay", "ok", "value", "error")),
    (Group("g", (Step("a", _noop),)), Group.__match_args__),
    (Map("m", Step("m", _noop), [1]), Map.__match_args__),
]


@pytest.mark.parametrize("built, names", _RECORDS, ids=lambda r: "fields" if isinstance(r, tuple) else type(r).__name__)
def test_every_record_is_frozen_slotted_and_survives_pickling(built: Any, names: tuple[str, ...]) -> None:
    assert tuple(spec.name for spec in fields(built)) == names == type(built).__match_args__
    assert not hasattr(built, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, names[0], None)
    if not isinstance(built, Map | Group):  # they hold functions: pickled by reference in real flows
        clone = pickle.loads(pickle.dumps(built))
        assert clone == built and repr(clone) == repr(built)
    assert replace(built) == built


def test_step_result_keeps_its_dataclass_defaults_and_keywords() -> None:
    step = StepResult(name="a", status=StepStatus.FAILED, error=ValueError("x"), attempts=2, group="g")
    assert (step.value, step.started_at, step.finished_at, step.compensation, step.late_value, step.subflow) == (
        None,
        None,
        None,
        None,
        None,
        None,
    )
    assert list(step.to_dict())[-2:] == ["late_value", "subflow"]
    assert step.to_dict()["subflow"] is None
    child = FlowResult("child", "r2", FlowStatus.COMPLETED, {}, {})
    assert replace(step, subflow=child).to_dict()["subflow"] == child.to_dict()


def test_run_ids_are_what_uuid4_hex_gives() -> None:
    import uuid

    from flowpool._results import new_run_id

    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200
    for run_id in ids:
        parsed = uuid.UUID(hex=run_id)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, run_id)
