"""Map stages: a columnar ledger of a map's items, and the results read from it.

A map may run a million items, so it keeps no object per item: statuses,
attempt counts and times live in ``array`` columns, values and keys in plain
lists, and errors and compensations in sparse dictionaries (only items that
have one). ``ItemResult`` objects are built when someone reads them. None of
these columns is a container the cyclic garbage collector walks per item.

The ledger is written by the settle loop alone while the stage runs, then
frozen into a ``MapResult`` that only reads it.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

from ._record import record
from ._results import (
    CompensationResult,
    GroupStatus,
    Outcome,
    StepStatus,
    describe_error,
)

__all__ = ["ItemFeeder", "ItemResult", "MapLedger", "MapResult", "item_label"]

#: Status codes in the ledger's status column; 0 is "taken, not settled yet".
_STATUSES: tuple[StepStatus, ...] = tuple(StepStatus)
_CODE = {status: code for code, status in enumerate(_STATUSES, start=1)}
_UNSETTLED = 0
#: The status column's code of a completed item.
COMPLETED_CODE = _CODE[StepStatus.COMPLETED]
_NO_TIME = math.nan

Key = str | int


def item_label(map_name: str, key: Key) -> str:
    """How an item is named in ``compensated``, ``not_compensated`` and ``still_running``."""
    return f"{map_name}[{key!r}]"


def check_key(key: object) -> Key:
    """``key`` if it can name an item (a ``str`` or an ``int``, not a bool)."""
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise ValueError(f"an item's key must be a str or an int, not {type(key).__name__} ({key!r})")
    return key


@record
class ItemResult(Outcome):
    """The final record of one map item (built on access from the map's columns)."""

    index: int
    key: Key
    status: StepStatus
    value: Any = None
    error: BaseException | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    compensation: CompensationResult | None = None
    subflow: Any = None

    def __init__(  # written out: one is built per item read, and a generated one costs import time
        self,
        index: int,
        key: Key,
        status: StepStatus,
        value: Any = None,
        error: BaseException | None = None,
        attempts: int = 0,
        started_at: float | None = None,
        finished_at: float | None = None,
        compensation: CompensationResult | None = None,
        subflow: Any = None,
    ) -> None:
        _set = object.__setattr__
        _set(self, "index", index)
        _set(self, "key", key)
        _set(self, "status", status)
        _set(self, "value", value)
        _set(self, "error", error)
        _set(self, "attempts", attempts)
        _set(self, "started_at", started_at)
        _set(self, "finished_at", finished_at)
        _set(self, "compensation", compensation)
        _set(self, "subflow", subflow)

    def to_dict(self, wall_offset: float | None = None) -> dict[str, Any]:
        """A JSON-serialisable view."""
        return {
            "index": self.index,
            "key": self.key,
            **self.outcome_dict(wall_offset),
            "subflow": None if self.subflow is None else self.subflow.to_dict(),
        }


class MapLedger:
    """The settle loop's record of every item a map has taken, one column per field."""

    __slots__ = (
        "name",
        "keys",
        "seen",
        "index_of",
        "codes",
        "attempts",
        "started",
        "finished",
        "values",
        "errors",
        "compensations",
        "subflows",
        "completed",
    )

    def __init__(self, name: str, *, keyed: bool) -> None:
        self.name = name
        # Without a key function an item's key is its index: nothing to store.
        self.keys: list[Key] | None = [] if keyed else None
        # A set finds duplicates with less memory per item than a key → index dict;
        # that dict is built only if someone looks an item up by key.
        self.seen: set[Key] | None = set() if keyed else None
        self.index_of: dict[Key, int] | None = None
        self.codes = array("b")
        self.attempts = array("I")
        self.started = array("d")
        self.finished = array("d")
        self.values: list[Any] = []
        self.errors: dict[int, BaseException] = {}
        self.compensations: dict[int, CompensationResult] = {}
        self.subflows: dict[int, Any] = {}
        self.completed = 0

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, key: object = None) -> int:
        """Record a newly taken item and return its index.

        Raises:
            ValueError: the key is not a str or an int, or another item has it;
                the item is then not taken.
        """
        index = len(self.codes)
        if self.keys is not None:
            assert self.seen is not None
            key = check_key(key)
            if key in self.seen:
                raise ValueError(f"two items of map {self.name!r} have the key {key!r}")
            self.seen.add(key)
            self.keys.append(key)
            self.index_of = None
        self.codes.append(_UNSETTLED)
        self.attempts.append(0)
        self.started.append(_NO_TIME)
        self.finished.append(_NO_TIME)
        self.values.append(None)
        return index

    def key_of(self, index: int) -> Key:
        """The key of the item at ``index``."""
        return index if self.keys is None else self.keys[index]

    def index_for(self, key: Key) -> int | None:
        """The index of the item with ``key``, or None."""
        if self.keys is not None:
            if self.index_of is None:
                self.index_of = {k: i for i, k in enumerate(self.keys)}
            return self.index_of.get(key)
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(self.codes):
            return key
        return None

    def settle(
        self,
        index: int,
        status: StepStatus,
        value: Any,
        error: BaseException | None,
        attempts: int,
        started_at: float | None,
        finished_at: float | None,
    ) -> None:
        """Record the final outcome of the item at ``index``."""
        self.codes[index] = _CODE[status]
        self.attempts[index] = attempts
        self.started[index] = _NO_TIME if started_at is None else started_at
        self.finished[index] = _NO_TIME if finished_at is None else finished_at
        if status is StepStatus.COMPLETED:
            self.values[index] = value
            self.completed += 1
        if error is not None:
            self.errors[index] = error

    def status_of(self, index: int) -> StepStatus | None:
        """The item's final status, or None while it has not settled."""
        code = self.codes[index]
        return None if code == _UNSETTLED else _STATUSES[code - 1]

    def item(self, index: int) -> ItemResult:
        """The ``ItemResult`` of a settled item."""
        code = self.codes[index]
        status = StepStatus.CANCELLED if code == _UNSETTLED else _STATUSES[code - 1]
        started = self.started[index]
        finished = self.finished[index]
        return ItemResult(
            index,
            self.key_of(index),
            status,
            self.values[index] if status is StepStatus.COMPLETED else None,
            self.errors.get(index),
            self.attempts[index],
            None if math.isnan(started) else started,
            None if math.isnan(finished) else finished,
            self.compensations.get(index),
            self.subflows.get(index),
        )

    def counts(self) -> dict[StepStatus, int]:
        """Every ``StepStatus`` → how many items ended with it."""
        tally = [0] * (len(_STATUSES) + 1)
        for code in self.codes:
            tally[code] += 1
        return {status: tally[code] for code, status in enumerate(_STATUSES, start=1)}


class _Items(Sequence[ItemResult]):
    """A map's items in item order, each built when read."""

    __slots__ = ("_ledger",)

    def __init__(self, ledger: MapLedger) -> None:
        self._ledger = ledger

    def __len__(self) -> int:
        return len(self._ledger)

    @overload
    def __getitem__(self, index: int) -> ItemResult: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ItemResult]: ...
    def __getitem__(self, index: int | slice) -> ItemResult | Sequence[ItemResult]:
        if isinstance(index, slice):
            return [self._ledger.item(i) for i in range(*index.indices(len(self._ledger)))]
        size = len(self._ledger)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("item index out of range")
        return self._ledger.item(index)

    def __iter__(self) -> Iterator[ItemResult]:
        ledger = self._ledger
        return (ledger.item(i) for i in range(len(ledger)))

    def __repr__(self) -> str:
        return f"<{len(self)} items of map {self._ledger.name!r}>"


class MapValues(Mapping[Key, Any]):
    """Read-only key → value of a map's completed items, in item order."""

    __slots__ = ("_ledger",)

    def __init__(self, ledger: MapLedger) -> None:
        self._ledger = ledger

    def __getitem__(self, key: Key) -> Any:
        ledger = self._ledger
        index = ledger.index_for(key)
        if index is None or ledger.codes[index] != _CODE[StepStatus.COMPLETED]:
            raise KeyError(key)
        return ledger.values[index]

    def __iter__(self) -> Iterator[Key]:
        ledger = self._ledger
        done = _CODE[StepStatus.COMPLETED]
        codes = ledger.codes
        return (ledger.key_of(i) for i in range(len(codes)) if codes[i] == done)

    def __len__(self) -> int:
        return self._ledger.completed

    def __repr__(self) -> str:
        return f"MapValues({dict(self)!r})" if len(self) <= 20 else f"<values of {len(self)} items>"

    def __reduce__(self) -> tuple[Any, ...]:
        # What travels to a worker process is a plain dict of the values.
        return (dict, (dict(self),))


class MapResult:
    """What a map stage did: its verdict, its counts and every item it took.

    Attributes:
        name: the map's name.
        status: a ``GroupStatus``.
        total: how many items were taken.
        counts: every ``StepStatus`` → how many items ended with it.
        items: every ``ItemResult``, in item order.
        values: key → value of the completed items, in item order.
        failed: the ``ItemResult``s that did not complete, in item order.
        stopped_early: True when the map stopped taking items because its
            verdict could only be FAILED.
        error: a ``MapItemsError``, or an ``ExceptionGroup`` of the items'
            errors when the policy failed the stage, else None.
    """

    __slots__ = ("name", "status", "stopped_early", "error", "_ledger", "_counts")

    name: str
    status: GroupStatus
    stopped_early: bool
    error: BaseException | None
    _ledger: MapLedger
    _counts: Mapping[StepStatus, int] | None

    def __init__(
        self,
        name: str,
        status: GroupStatus,
        ledger: MapLedger | None = None,
        *,
        stopped_early: bool = False,
        error: BaseException | None = None,
    ) -> None:
        ledger = ledger if ledger is not None else MapLedger(name, keyed=False)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "stopped_early", stopped_early)
        object.__setattr__(self, "error", error)
        object.__setattr__(self, "_ledger", ledger)
        object.__setattr__(self, "_counts", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"MapResult is immutable: cannot set {name!r}")

    @property
    def ok(self) -> bool:
        """True when the map passed (completed or partial)."""
        return self.status in (GroupStatus.COMPLETED, GroupStatus.PARTIAL)

    @property
    def total(self) -> int:
        """How many items the map took."""
        return len(self._ledger)

    @property
    def counts(self) -> Mapping[StepStatus, int]:
        """Every ``StepStatus`` → how many items ended with it (0 where none)."""
        counts = self._counts
        if counts is None:
            from types import MappingProxyType

            counts = MappingProxyType(self._ledger.counts())
            object.__setattr__(self, "_counts", counts)
        return counts

    @property
    def items(self) -> Sequence[ItemResult]:
        """Every item taken, in item order."""
        return _Items(self._ledger)

    @property
    def values(self) -> Mapping[Key, Any]:
        """Key → value of every completed item, in item order."""
        return MapValues(self._ledger)

    @property
    def failed(self) -> tuple[ItemResult, ...]:
        """The items that did not complete, in item order."""
        ledger = self._ledger
        done = _CODE[StepStatus.COMPLETED]
        return tuple(ledger.item(i) for i, code in enumerate(ledger.codes) if code != done)

    def item(self, key: Key) -> ItemResult:
        """The ``ItemResult`` of the item with ``key``.

        Raises:
            KeyError: no item has that key.
        """
        index = self._ledger.index_for(key)
        if index is None:
            raise KeyError(key)
        return self._ledger.item(index)

    def to_dict(self, wall_offset: float | None = None) -> dict[str, Any]:
        """A JSON-serialisable view."""
        return {
            "name": self.name,
            "status": self.status.value,
            "total": self.total,
            "counts": {status.value: count for status, count in self.counts.items()},
            "stopped_early": self.stopped_early,
            "error": describe_error(self.error),
            "items": [item.to_dict(wall_offset) for item in self.items],
        }

    def __repr__(self) -> str:
        return f"MapResult({self.name!r}, {self.status.value}, total={self.total}, stopped_early={self.stopped_early})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_map_result, (self.name, self.status, self._ledger, self.stopped_early, self.error))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MapResult):
            return NotImplemented
        return (
            self.name == other.name
            and self.status == other.status
            and self.stopped_early == other.stopped_early
            and list(self.items) == list(other.items)
        )

    __hash__ = None  # type: ignore[assignment]  # equality compares items, like a list


def _rebuild_map_result(
    name: str, status: GroupStatus, ledger: MapLedger, stopped_early: bool, error: BaseException | None
) -> MapResult:
    return MapResult(name, status, ledger, stopped_early=stopped_early, error=error)


class ItemFeeder:
    """Takes a map's items from its iterable one at a time, as slots free up.

    Nothing is read ahead: an item is taken only when it can be handed to the
    executor, so a generator of ten million rows is never materialised and
    the first item starts as soon as the stage does. Whatever goes wrong while
    producing an item (the iterable raises, a key is a duplicate or not a
    ``str``/``int``) ends the feeding; ``problem`` then holds the exception.
    """

    __slots__ = ("_iterator", "_key", "_ledger", "size", "problem", "exhausted")

    def __init__(self, iterable: Iterable[Any], key: Callable[[Any], Any] | None, ledger: MapLedger) -> None:
        size: int | None
        try:
            size = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            size = None
        #: The iterable's length when it has one (a float tolerance stops early only then).
        self.size = size
        self._iterator: Iterator[Any] | None = iter(iterable)
        self._key = key
        self._ledger = ledger
        self.problem: BaseException | None = None
        self.exhausted = False

    def take(self) -> tuple[int, Any] | None:
        """The next item as ``(index, item)``, or None when there is no more."""
        iterator = self._iterator
        if iterator is None:
            return None
        try:
            item = next(iterator)
            index = self._ledger.take(self._key(item) if self._key is not None else None)
        except StopIteration:
            self.close()
            self.exhausted = True
            return None
        except Exception as problem:  # noqa: BLE001 - recorded: it fails the stage once started items settle
            self.problem = problem
            self.close()
            return None
        return index, item

    def close(self) -> None:
        """Stop taking items (and close a generator, so its ``finally`` runs now)."""
        iterator = self._iterator
        self._iterator = None
        close = getattr(iterator, "close", None)
        if close is not None:
            try:
                close()
            except Exception as problem:  # noqa: BLE001 - a generator that raises while closing
                if self.problem is None and not self.exhausted:
                    self.problem = problem
