"""Random flows with scripted outcomes, and an oracle for what a run must report.

Independent of pytest and hypothesis so that a soak script can reuse it:

    rng = random.Random(seed)
    spec = random_flow_spec(rng)          # a plain, printable description
    built = build_flow(spec)              # the Flow, plus a thread-safe call log
    result = built.flow.run(clock=AutoJumpClock())
    problems = check_result(spec, result, built.log.snapshot())
    assert not problems, problems

Every step function is scripted by ``ctx.attempt`` (``script[attempt - 1]``: True
returns a value, False raises ``ScriptedFailure``), so a run is deterministic
except where the SPEC itself leaves timing open (fail fast with more than one
member running at a time). ``expected_outcome`` computes what is predictable;
``check_result`` checks a ``FlowResult``, the call log and, when given, the run's
events against it and against the SPEC's rules, returning a list of human-readable
problems (empty when fine). It is the one invariant checker of the property tests
and of ``scripts/soak.py``: the soak injects faults on top of the scripts and says
what they leave open with a ``Leeway``; the checks that timing could break then
apply only where it cannot.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from flowpool import (
    Flow,
    FlowResult,
    FlowStatus,
    GroupStatus,
    Step,
    StepCancelledError,
    StepStatus,
    StepTimeoutError,
)

__all__ = [
    "CallLog",
    "ItemSpec",
    "MapExpectation",
    "MapSpec",
    "expected_map",
    "item_key",
    "item_object",
    "item_value",
    "map_items",
    "map_stops",
    "map_verdict",
    "random_map_spec",
    "Chooser",
    "DrawChooser",
    "RandomChooser",
    "CompensationSpec",
    "Expectation",
    "FlowSpec",
    "Leeway",
    "NO_LEEWAY",
    "ScriptedFailure",
    "StageSpec",
    "StepSpec",
    "BuiltFlow",
    "assemble",
    "build_flow",
    "check_result",
    "expected_outcome",
    "random_flow_spec",
    "random_step_spec",
    "spec_verdict",
]

MAX_RETRIES = 3
MAX_COMPENSATE_RETRIES = 2
#: Generous per-attempt timeouts that a scripted step (which returns at once) never reaches.
NEVER_HIT_TIMEOUT = 3600.0


class ScriptedFailure(Exception):
    """Raised by a step or compensation whose script says this attempt fails."""

    def __init__(self, kind: str, step: str, attempt: int) -> None:
        super().__init__(f"{kind} {step!r} attempt {attempt} fails (scripted)")
        self.kind = kind
        self.step = step
        self.attempt = attempt


# ── descriptions ────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class CompensationSpec:
    """``script[n - 1]`` is True when compensation attempt ``n`` succeeds."""

    script: tuple[bool, ...]
    retries: int = 0

    def outcome(self) -> tuple[bool, int]:
        """(succeeded, attempts) of the compensation."""
        return _first_success(self.script, self.retries)


@dataclass(frozen=True)
class StepSpec:
    """One step; ``script[n - 1]`` is True when attempt ``n`` returns a value."""

    name: str
    script: tuple[bool, ...]
    retries: int = 0
    timeout: float | None = None
    compensate: CompensationSpec | None = None
    required: bool = False
    #: A subflow step: the child flow its function is; ``script`` is then unused.
    child: FlowSpec | None = None
    #: A subflow step given ``input=`` (a token naming the child run: see ``child_input``).
    input: bool = False

    @property
    def effective_script(self) -> tuple[bool, ...]:
        """Attempt ``n`` succeeds when ``[n - 1]`` is True; a subflow's child decides every attempt alike."""
        if self.child is not None:
            return (child_completes(self.child),) * (1 + self.retries)
        return self.script

    def natural(self) -> tuple[bool, int]:
        """(completed, attempts) when nothing cuts the step short."""
        return _first_success(self.effective_script, self.retries)


@dataclass(frozen=True)
class StageSpec:
    """A single step (``group`` False, one member) or a parallel group."""

    name: str
    members: tuple[StepSpec, ...]
    group: bool = False
    fail_fast: bool = False
    min_successes: int | None = None
    max_concurrency: int | None = None

    @property
    def deterministic(self) -> bool:
        """Whether member statuses follow from the scripts alone (no fail-fast race)."""
        return not self.group or not self.fail_fast or self.max_concurrency == 1 or len(self.members) == 1


@dataclass(frozen=True)
class ItemSpec:
    """One item of a map: ``script`` as a step's; ``undo`` its compensation's script."""

    script: tuple[bool, ...]
    undo: tuple[bool, ...] = (True,)


@dataclass(frozen=True)
class MapSpec:
    """A map stage (SPEC §12) over ``items``, one function for all of them.

    ``source``: "list" (a list: its length is known), "callable" (``items(ctx)`` returning
    a list) or "generator" (``items(ctx)`` returning a generator: no length). Keyed maps
    take dicts keyed by their "label" (``item_key``); others take ints, keyed by index.
    ``when`` None: no condition; False: the map is SKIPPED.
    """

    name: str
    items: tuple[ItemSpec, ...]
    retries: int = 0
    keyed: bool = False
    source: str = "list"
    fail_fast: bool = False
    min_successes: int | None = None
    tolerated_failures: int | float | None = None
    max_concurrency: int | None = None
    compensate: bool = False
    compensate_retries: int = 0
    compensate_concurrency: int = 1
    when: bool | None = None
    #: A map of subflows: every item runs this child (it decides each item alike).
    child: FlowSpec | None = None
    #: ``input=`` given (a token naming each child run: see ``child_input``).
    input: bool = False

    #: A map has no steps of its own (its items are not in ``FlowResult.steps``).
    members: tuple[StepSpec, ...] = ()
    group = False

    @property
    def size(self) -> int | None:
        """``len(items)`` as flowpool can see it (a generator has none)."""
        return None if self.source == "generator" else len(self.items)

    def key(self, index: int) -> str | int:
        return item_key(self, index)

    def item_script(self, index: int) -> tuple[bool, ...]:
        """Item ``index``'s script: its own, or (a map of subflows) its child's outcome every attempt."""
        if self.child is not None:
            return (child_completes(self.child),) * (1 + self.retries)
        return self.items[index].script

    def label(self, index: int) -> str:
        return f"{self.name}[{self.key(index)!r}]"

    def policy(self) -> str:
        parts = [f"{len(self.items)} items", self.source, "keyed" if self.keyed else "by index"]
        if self.fail_fast:
            parts.append("fail_fast")
        if self.min_successes is not None:
            parts.append(f"min_successes={self.min_successes}")
        if self.tolerated_failures is not None:
            parts.append(f"tolerated_failures={self.tolerated_failures}")
        if self.max_concurrency is not None:
            parts.append(f"max_concurrency={self.max_concurrency}")
        if self.compensate:
            parts.append(f"compensate x{self.compensate_concurrency}")
        if self.when is not None:
            parts.append(f"when={self.when}")
        if self.child is not None:
            parts.append(f"subflow {self.child.name}" + (" with input=" if self.input else ""))
        return ", ".join(parts)


Stage = StageSpec | MapSpec


@dataclass(frozen=True)
class FlowSpec:
    name: str
    stages: tuple[Stage, ...]

    def steps(self) -> list[StepSpec]:
        return [m for stage in self.stages for m in stage.members]

    def stage_of(self) -> dict[str, Stage]:
        return {m.name: stage for stage in self.stages for m in stage.members}

    def maps(self) -> list[MapSpec]:
        return [stage for stage in self.stages if isinstance(stage, MapSpec)]

    def subflows(self) -> list[StepSpec | MapSpec]:
        """This level's subflow steps and maps of subflows (not their children's)."""
        return [m for m in self.steps() if m.child is not None] + [m for m in self.maps() if m.child is not None]

    def tree(self) -> list[FlowSpec]:
        """This flow and every child flow below it, depth first."""
        found = [self]
        for sub in self.subflows():
            assert sub.child is not None
            found += sub.child.tree()
        return found

    def depth(self) -> int:
        """How many levels of children are below this flow (0: none)."""
        return max((1 + s.child.depth() for s in self.subflows() if s.child is not None), default=0)


@functools.cache
def child_completes(child: FlowSpec) -> bool:
    """Whether a child flow completes by its scripts (the oracle's verdict on it)."""
    return expected_outcome(child).status is FlowStatus.COMPLETED


class Where(NamedTuple):
    """Which run a call came from: the flow's name (``ctx.flow``) and the token its
    ``ctx.input`` carries (``token_of``): ``()`` at the top, an item's, or ``input=``'s."""

    flow: str
    token: tuple[str, ...]


def token_of(value: Any) -> tuple[str, ...]:
    """The token of a run's input: ``input=``'s ``{"at": [...]}``, a map item's, else ``()``."""
    if isinstance(value, dict) and "at" in value:
        return tuple(value["at"])
    if isinstance(value, dict) and "label" in value:
        return (f"item {value['label']}",)
    if isinstance(value, int) and not isinstance(value, bool):
        return (f"item {value}",)
    return ()


def where_of(ctx: Any) -> Where:
    return Where(ctx.flow, token_of(ctx.input))


def child_input(name: str, mapped: bool) -> Callable[[Any], Any]:
    """A subflow's ``input=``: a token naming the child run, ``parent's token + (stage#attempt)``
    (``stage[key]#attempt`` for a map's item), so each child run's calls can be told apart."""

    def make(ctx: Any) -> Any:
        here = f"{name}[{ctx.key!r}]#{ctx.attempt}" if mapped else f"{name}#{ctx.attempt}"
        return {"at": [*token_of(ctx.input), here]}

    return make


def item_key(spec: MapSpec, index: int) -> str | int:
    """The key of a map's item: its label when the map is keyed, else its index."""
    return f"i{index:02d}" if spec.keyed else index


def item_object(spec: MapSpec, index: int) -> Any:
    """The item itself, as ``ctx.item`` must show it (plain data: it travels to workers)."""
    return {"label": f"i{index:02d}", "n": index} if spec.keyed else 100 + index


def item_value(map_name: str, key: str | int, attempt: int) -> str:
    """The value a scripted item returns on a successful attempt."""
    return f"{map_name}[{key!r}]@{attempt}"


def _scripted(script: Sequence[bool], number: int) -> bool:
    return number <= len(script) and script[number - 1]


def _first_success(script: Sequence[bool], retries: int) -> tuple[bool, int]:
    """(succeeded, attempts): the first scripted success within ``1 + retries`` attempts."""
    tries = 1 + retries
    for number in range(1, tries + 1):
        if _scripted(script, number):
            return True, number
    return False, tries


def step_value(name: str, attempt: int) -> str:
    """The value a scripted step returns on a successful attempt."""
    return f"{name}@{attempt}"


# ── random generation ───────────────────────────────────────────────────────────


class Chooser:
    """Where the generator's choices come from: ``random.Random`` or hypothesis draws."""

    def integer(self, low: int, high: int) -> int:
        raise NotImplementedError

    def chance(self, p: float) -> bool:
        """True with probability about ``p`` (shrinks towards False under hypothesis)."""
        raise NotImplementedError

    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.integer(0, len(options) - 1)]


class RandomChooser(Chooser):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


class DrawChooser(Chooser):
    """Choices from hypothesis's ``draw`` (inside ``@st.composite``), so examples shrink."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st

        self.draw = draw
        self.st = st

    def integer(self, low: int, high: int) -> int:
        return int(self.draw(self.st.integers(low, high)))

    def chance(self, p: float) -> bool:
        return bool(self.draw(self.st.integers(0, 99)) >= round((1 - p) * 100))


def random_flow_spec(
    source: random.Random | Chooser,
    *,
    max_stages: int = 5,
    max_members: int = 6,
    timeouts: bool = True,
    name: str = "random-flow",
    maps: float = 0.25,
    max_items: int = 8,
    subflows: float = 0.0,
    depth: int = 0,
    max_depth: int = 3,
    prefix: str = "",
    subflow_timeout: float | None = None,
) -> FlowSpec:
    """A random flow description: 1..max_stages stages: single steps, groups of
    1..max_members, and (with probability ``maps`` each) maps of 0..max_items items.

    ``source`` is a ``random.Random`` or a ``Chooser`` (``DrawChooser(draw)`` inside
    a hypothesis ``@st.composite`` strategy). A new kind of stage is one more branch
    here, with its ``random_*_spec``, its part of ``assemble`` and its oracle.

    With ``subflows`` > 0, a stage is (with that probability) one with children: a
    subflow step, a group some of whose members are subflows, or a map of subflows;
    each child is a random flow itself, nested down to ``max_depth`` levels. Names
    carry their ancestors' (``prefix``), so every step's name is unique in the tree.
    ``subflow_timeout``: a timeout some subflow steps get (a child's run timeout, meant
    never to be reached; None for none: under a virtual clock that jumps to the next
    deadline whenever it is quiet, a child's timeout can be reached on a loaded machine).
    """
    c = RandomChooser(source) if isinstance(source, random.Random) else source
    stages: list[Stage] = []
    nested = depth < max_depth and subflows > 0
    for s in range(c.integer(1, max_stages)):
        kind = c.pick(("step", "group", "map")) if nested and c.chance(subflows) else None

        def child(name: str) -> FlowSpec:
            return random_flow_spec(
                c,
                max_stages=3,
                max_members=3,
                timeouts=timeouts,
                name=f"flow-{name}",
                maps=maps,
                max_items=min(max_items, 4),
                subflows=subflows * 0.7,
                depth=depth + 1,
                max_depth=max_depth,
                prefix=f"{name}_",
                subflow_timeout=subflow_timeout,
            )

        if kind == "map" or (maps and kind is None and c.chance(maps)):
            map_name = f"{prefix}m{s}"
            spec = random_map_spec(c, map_name, max_items if kind is None else min(max_items, 4))
            if kind == "map":
                # Nested, or retried, a map's children are told apart by their input= token.
                spec = dataclasses.replace(
                    spec,
                    items=tuple(ItemSpec((), ()) for _ in spec.items),
                    compensate=False,
                    compensate_retries=0,
                    compensate_concurrency=1,
                    child=child(map_name),
                    input=depth > 0 or spec.retries > 0 or c.chance(0.4),
                )
            stages.append(spec)
            continue
        is_group = c.chance(0.5) if kind is None else kind == "group"
        count = c.integer(1, max_members) if is_group else 1
        members = tuple(
            random_subflow_step(c, member, is_group, subflow_timeout, child)
            if kind is not None and (not is_group or c.chance(0.5))
            else random_step_spec(c, member, is_group, timeouts)
            for i in range(count)
            for member in [f"{prefix}s{s}" if not is_group else f"{prefix}s{s}m{i}"]
        )
        if not is_group:
            stages.append(StageSpec(members[0].name, members))
            continue
        fail_fast = False
        min_successes = None
        policy = c.pick(("default", "fail_fast", "min_successes"))
        if policy == "fail_fast":
            fail_fast = True
        elif policy == "min_successes":
            min_successes = c.integer(1, count)
        max_concurrency = c.pick((None, 1, count)) if c.chance(0.5) else None
        if max_concurrency == count and count > 1:
            max_concurrency = c.integer(1, count)
        stages.append(StageSpec(f"{prefix}g{s}", members, True, fail_fast, min_successes, max_concurrency))
    return FlowSpec(name, tuple(stages))


def random_subflow_step(
    c: Chooser, name: str, in_group: bool, timeout: float | None, child: Callable[[str], FlowSpec]
) -> StepSpec:
    """A subflow step: a random child, sometimes retried (then given ``input=``, which
    names each attempt's child run), sometimes with ``timeout`` (meant never to be reached)."""
    retries = c.integer(1, 2) if c.chance(0.3) else 0
    return StepSpec(
        name=name,
        script=(),
        retries=retries,
        timeout=timeout if timeout is not None and c.chance(0.2) else None,
        required=in_group and c.chance(0.2),
        child=child(name),
        input=retries > 0 or c.chance(0.4),
    )


def random_map_spec(c: Chooser, name: str, max_items: int = 8) -> MapSpec:
    """A random map: its items (succeeding, flaky or failing by their scripts, with
    compensation scripts), its policy, concurrency caps, source form and condition."""
    count = c.integer(0, max_items)
    retries = c.integer(0, 2)
    compensate = c.chance(0.5)
    compensate_retries = c.integer(0, 1) if compensate else 0
    items = tuple(
        ItemSpec(_random_script(c, 1 + retries, 0.7), _random_script(c, 1 + compensate_retries, 0.7))
        for _ in range(count)
    )
    fail_fast = False
    min_successes: int | None = None
    tolerated: int | float | None = None
    policy = c.pick(("default", "fail_fast", "min_successes", "tolerated_count", "tolerated_fraction"))
    if policy == "fail_fast":
        fail_fast = True
    elif policy == "min_successes":
        min_successes = c.integer(1, count + 1)
    elif policy == "tolerated_count":
        tolerated = c.integer(0, 3)
    elif policy == "tolerated_fraction":
        tolerated = c.pick((0.2, 0.5))
    return MapSpec(
        name=name,
        items=items,
        retries=retries,
        keyed=c.chance(0.5),
        source=c.pick(("list", "callable", "generator")),
        fail_fast=fail_fast,
        min_successes=min_successes,
        tolerated_failures=tolerated,
        max_concurrency=c.pick((None, 1, 2, 3)) if c.chance(0.6) else None,
        compensate=compensate,
        compensate_retries=compensate_retries,
        compensate_concurrency=c.pick((1, 2, 3)) if compensate and c.chance(0.5) else 1,
        when=c.pick((True, False)) if c.chance(0.15) else None,
    )


def _random_script(c: Chooser, length: int, p_success: float) -> tuple[bool, ...]:
    return tuple(c.chance(p_success) for _ in range(length))


def random_step_spec(c: Chooser, name: str, in_group: bool = True, timeouts: bool = True) -> StepSpec:
    """One random step: its script, retries, compensation, maybe a timeout, maybe required."""
    retries = c.integer(0, MAX_RETRIES)
    script = _random_script(c, 1 + retries, 0.6)
    compensate = None
    if c.chance(0.5):
        compensate_retries = c.integer(0, MAX_COMPENSATE_RETRIES)
        compensate = CompensationSpec(_random_script(c, 1 + compensate_retries, 0.6), compensate_retries)
    return StepSpec(
        name=name,
        script=script,
        retries=retries,
        timeout=NEVER_HIT_TIMEOUT if timeouts and c.chance(0.2) else None,
        compensate=compensate,
        required=in_group and c.chance(0.2),
    )


# ── building a runnable flow ────────────────────────────────────────────────────


class CallLog:
    """A thread-safe record of every call: (kind, step, attempt, results-keys[, value])."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[tuple[Any, ...]] = []

    def add(self, *entry: Any) -> None:
        with self._lock:
            self._calls.append(entry)

    def snapshot(self) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._calls)


@dataclass
class BuiltFlow:
    spec: FlowSpec
    flow: Flow
    log: CallLog = field(default_factory=CallLog)


def _step_fn(spec: StepSpec, log: CallLog) -> Callable[[Any], Any]:
    def fn(ctx: Any) -> Any:
        attempt = ctx.attempt
        log.add("step", spec.name, attempt, frozenset(ctx.results), where_of(ctx))
        if _scripted(spec.script, attempt):
            return step_value(spec.name, attempt)
        raise ScriptedFailure("step", spec.name, attempt)

    return fn


def _compensate_fn(spec: StepSpec, log: CallLog) -> Callable[[Any, Any], None]:
    assert spec.compensate is not None
    script = spec.compensate.script

    def compensate(ctx: Any, value: Any) -> None:
        attempt = ctx.attempt
        log.add("compensate", spec.name, attempt, frozenset(ctx.results), value, where_of(ctx))
        if not _scripted(script, attempt):
            raise ScriptedFailure("compensation", spec.name, attempt)

    return compensate


def _options(spec: StepSpec, log: CallLog) -> dict[str, Any]:
    options: dict[str, Any] = {"retries": spec.retries}
    if spec.timeout is not None:
        options["timeout"] = spec.timeout
    if spec.compensate is not None:
        options["compensate"] = _compensate_fn(spec, log)
        options["compensate_retries"] = spec.compensate.retries
    return options


def _item_fn(spec: MapSpec, log: CallLog) -> Callable[[Any], Any]:
    scripts = {spec.key(i): item.script for i, item in enumerate(spec.items)}

    def fn(ctx: Any) -> Any:
        key, attempt = ctx.key, ctx.attempt
        log.add("item", spec.name, key, attempt, frozenset(ctx.results), ctx.index, ctx.item, where_of(ctx))
        if _scripted(scripts[key], attempt):
            return item_value(spec.name, key, attempt)
        raise ScriptedFailure("item", f"{spec.name}[{key!r}]", attempt)

    return fn


def _undo_item_fn(spec: MapSpec, log: CallLog) -> Callable[[Any, Any], None]:
    scripts = {spec.key(i): item.undo for i, item in enumerate(spec.items)}

    def undo(ctx: Any, value: Any) -> None:
        key, attempt = ctx.key, ctx.attempt
        log.add(
            "item_compensate",
            spec.name,
            key,
            attempt,
            frozenset(ctx.results),
            value,
            ctx.index,
            ctx.item,
            where_of(ctx),
        )
        if not _scripted(scripts[key], attempt):
            raise ScriptedFailure("compensation", f"{spec.name}[{key!r}]", attempt)

    return undo


def _map_options(spec: MapSpec, log: CallLog) -> dict[str, Any]:
    options: dict[str, Any] = {"retries": spec.retries}
    if spec.compensate:
        options["compensate"] = _undo_item_fn(spec, log)
        options["compensate_retries"] = spec.compensate_retries
    return options


def build_flow(spec: FlowSpec) -> BuiltFlow:
    """The ``Flow`` described by ``spec``; its functions record into ``built.log``."""
    log = CallLog()
    flow = assemble(
        spec,
        lambda step: (_step_fn(step, log), _options(step, log)),
        lambda stage: (_item_fn(stage, log), _map_options(stage, log)),
    )
    return BuiltFlow(spec, flow, log)


def map_items(spec: MapSpec) -> Any:
    """The ``items`` argument of ``spec``'s map, in the form its ``source`` says."""
    items = [item_object(spec, i) for i in range(len(spec.items))]
    if spec.source == "list":
        return items
    if spec.source == "callable":
        return lambda ctx: list(items)
    return lambda ctx: (item for item in items)


def _item_label(item: Any) -> str:
    return str(item["label"])


def _add_map(flow: Flow, spec: MapSpec, fn: Callable[..., Any], options: dict[str, Any]) -> None:
    policy: dict[str, Any] = {}
    if spec.fail_fast:
        policy["fail_fast"] = True
    if spec.min_successes is not None:
        policy["min_successes"] = spec.min_successes
    if spec.tolerated_failures is not None:
        policy["tolerated_failures"] = spec.tolerated_failures
    if spec.max_concurrency is not None:
        policy["max_concurrency"] = spec.max_concurrency
    if spec.compensate_concurrency != 1:
        policy["compensate_concurrency"] = spec.compensate_concurrency
    if spec.when is not None:
        holds = spec.when
        options = {**options, "when": lambda ctx: holds}
    flow.map(
        spec.name,
        fn,
        items=map_items(spec),
        key=_item_label if spec.keyed else None,
        **policy,
        **options,
    )


def assemble(
    spec: FlowSpec,
    member: Callable[[StepSpec], tuple[Callable[..., Any], dict[str, Any]]],
    mapper: Callable[[MapSpec], tuple[Callable[..., Any], dict[str, Any]]] | None = None,
) -> Flow:
    """The ``Flow`` of ``spec``'s stages; ``member(step)`` gives a step's function and options
    (``required`` is added here, for group members), ``mapper(map)`` a map's function and
    step options (its items, key, policy and condition are added here)."""
    flow = Flow(spec.name)
    for stage in spec.stages:
        if isinstance(stage, MapSpec) and stage.child is not None:
            options: dict[str, Any] = {"retries": stage.retries}
            if stage.input:
                options["input"] = child_input(stage.name, mapped=True)
            _add_map(flow, stage, assemble(stage.child, member, mapper), options)
            continue
        if isinstance(stage, MapSpec):
            assert mapper is not None, f"{stage.name}: a map stage needs a mapper"
            _add_map(flow, stage, *mapper(stage))
            continue
        made = [(step, *_subflow(step, member, mapper)) for step in stage.members]
        if not stage.group:
            ((step, fn, options),) = made
            flow.step(step.name, fn, **options)
            continue
        members: list[Any] = []
        for i, (step, fn, own) in enumerate(made):
            options = {**own, "required": True} if step.required else own
            if i % 2:  # both member forms of the SPEC: Step objects and mappings
                members.append({"name": step.name, "fn": fn, **options})
            else:
                members.append(Step(step.name, fn, **options))
        flow.parallel(
            stage.name,
            members,
            fail_fast=stage.fail_fast,
            min_successes=stage.min_successes,
            max_concurrency=stage.max_concurrency,
        )
    return flow


def _subflow(
    step: StepSpec,
    member: Callable[[StepSpec], tuple[Callable[..., Any], dict[str, Any]]],
    mapper: Callable[[MapSpec], tuple[Callable[..., Any], dict[str, Any]]] | None,
) -> tuple[Any, dict[str, Any]]:
    """A member's function and options: ``member``'s, or for a subflow step its child flow."""
    if step.child is None:
        return member(step)
    options: dict[str, Any] = {"retries": step.retries}
    if step.timeout is not None:
        options["timeout"] = step.timeout
    if step.input:
        options["input"] = child_input(step.name, mapped=False)
    return assemble(step.child, member, mapper), options


# ── the oracle ──────────────────────────────────────────────────────────────────


def spec_verdict(stage: StageSpec, statuses: Sequence[StepStatus]) -> GroupStatus:
    """A group's verdict from its members' final statuses, by the SPEC's rules (§5)."""
    completed = [s is StepStatus.COMPLETED for s in statuses]
    count = sum(completed)
    failed = False
    if stage.fail_fast:
        failed = count < len(statuses)
    elif stage.min_successes is not None:
        failed = count < stage.min_successes
    else:
        failed = count == 0
    if any(m.required and not ok for m, ok in zip(stage.members, completed, strict=True)):
        failed = True
    if failed:
        return GroupStatus.FAILED
    return GroupStatus.COMPLETED if count == len(statuses) else GroupStatus.PARTIAL


@dataclass
class Expectation:
    """What a run of a spec must report. ``steps[name]`` is (status, attempts) or None
    where the SPEC leaves it to timing (members of a racing fail-fast group)."""

    status: FlowStatus
    failed_stage: str | None
    groups: dict[str, GroupStatus]
    steps: dict[str, tuple[StepStatus, int] | None]
    maps: dict[str, MapExpectation] = field(default_factory=dict)


@dataclass(frozen=True)
class MapExpectation:
    """What a map must report. ``items`` (status, attempts) per item taken, and ``total``,
    are None where the SPEC leaves them to timing: a map that stops early with more than
    one item in flight. Its verdict and ``stopped_early`` never depend on timing."""

    status: GroupStatus
    stopped_early: bool
    total: int | None
    items: tuple[tuple[StepStatus, int], ...] | None


SKIPPED_MAP = MapExpectation(GroupStatus.SKIPPED, False, 0, ())


def map_stops(spec: MapSpec, failed: int) -> bool:
    """Whether a map with ``failed`` items that did not complete can only end FAILED, so it
    stops taking items (SPEC §12, stopping early)."""
    if failed == 0:
        return False
    if spec.fail_fast:
        return True
    tolerated = spec.tolerated_failures
    if isinstance(tolerated, int):
        return failed > tolerated
    if isinstance(tolerated, float) and spec.size is not None:
        return failed > tolerated * spec.size
    return False


def map_verdict(spec: MapSpec, completed: int, settled: int) -> GroupStatus:
    """A map's verdict from how many of its ``settled`` (taken) items completed (SPEC §12)."""
    if settled == 0:
        return GroupStatus.COMPLETED
    if spec.min_successes is not None and completed < spec.min_successes:
        return GroupStatus.FAILED
    failed = settled - completed
    if failed == 0:
        return GroupStatus.COMPLETED
    tolerated = spec.tolerated_failures
    if tolerated is not None:
        limit = tolerated if isinstance(tolerated, int) else tolerated * settled
        return GroupStatus.FAILED if failed > limit else GroupStatus.PARTIAL
    if spec.fail_fast or completed == 0:
        return GroupStatus.FAILED
    return GroupStatus.PARTIAL


def expected_map(spec: MapSpec) -> MapExpectation:
    """The oracle for one map that runs: from its items' scripts alone."""
    naturals = [_first_success(spec.item_script(i), spec.retries) for i in range(len(spec.items))]
    stops = map_stops(spec, sum(not ok for ok, _ in naturals))
    if stops and spec.max_concurrency != 1:
        # Which items are taken, and which are cut short, is timing; the verdict is not:
        # more items failed than the policy allows.
        return MapExpectation(GroupStatus.FAILED, True, None, None)
    items: list[tuple[StepStatus, int]] = []
    failed = 0
    for ok, attempts in naturals:
        items.append((StepStatus.COMPLETED if ok else StepStatus.FAILED, attempts))
        failed += not ok
        if map_stops(spec, failed):  # one at a time: nothing more is taken
            break
    completed = sum(status is StepStatus.COMPLETED for status, _ in items)
    return MapExpectation(map_verdict(spec, completed, len(items)), stops, len(items), tuple(items))


def expected_outcome(spec: FlowSpec) -> Expectation:
    """The oracle: the flow's outcome from the scripts alone."""
    failed_stage: str | None = None
    groups: dict[str, GroupStatus] = {}
    steps: dict[str, tuple[StepStatus, int] | None] = {}
    maps: dict[str, MapExpectation] = {}
    for stage in spec.stages:
        if isinstance(stage, MapSpec):
            if failed_stage is not None or stage.when is False:
                maps[stage.name] = SKIPPED_MAP
                continue
            maps[stage.name] = expected = expected_map(stage)
            if expected.status is GroupStatus.FAILED:
                failed_stage = stage.name
            continue
        if failed_stage is not None:
            for m in stage.members:
                steps[m.name] = (StepStatus.SKIPPED, 0)
            if stage.group:
                groups[stage.name] = GroupStatus.SKIPPED
            continue
        naturals = [m.natural() for m in stage.members]
        if stage.group and stage.fail_fast and not stage.deterministic:
            # Which members get cut short depends on timing, but the verdict does not:
            # some member that naturally fails either fails or is cancelled.
            for m in stage.members:
                steps[m.name] = None
            failed = not all(ok for ok, _ in naturals)
            verdict = GroupStatus.FAILED if failed else GroupStatus.COMPLETED
        else:
            statuses: list[StepStatus] = []
            stopped = False
            for m, (ok, attempts) in zip(stage.members, naturals, strict=True):
                if stopped:  # fail fast, one at a time: the rest never start
                    steps[m.name] = (StepStatus.CANCELLED, 0)
                    statuses.append(StepStatus.CANCELLED)
                    continue
                status = StepStatus.COMPLETED if ok else StepStatus.FAILED
                steps[m.name] = (status, attempts)
                statuses.append(status)
                if stage.fail_fast and not ok:
                    stopped = True
            if stage.group:
                verdict = spec_verdict(stage, statuses)
            else:
                verdict = GroupStatus.COMPLETED if statuses[0] is StepStatus.COMPLETED else GroupStatus.FAILED
        if stage.group:
            groups[stage.name] = verdict
        if verdict is GroupStatus.FAILED:
            failed_stage = stage.name
    status = FlowStatus.COMPLETED if failed_stage is None else FlowStatus.FAILED
    return Expectation(status, failed_stage, groups, steps, maps)


# ── checking a result ───────────────────────────────────────────────────────────


def _is_scripted_failure(step: str, attempt: int, error: BaseException | None) -> bool:
    return isinstance(error, ScriptedFailure)


@dataclass(frozen=True)
class Leeway:
    """What a run may do that its scripts do not say: the faults a caller (the soak)
    injected on top of them. The default, none, is a plain scripted run, checked exactly.

    ``error_fits(step, attempt, error)`` says whether ``error`` is what that attempt of
    that step may fail with.
    """

    timeouts: frozenset[str] = frozenset()  # steps whose attempts may hit a short timeout
    compensation_timeouts: frozenset[str] = frozenset()  # steps whose compensation may time out
    other_failures: bool = False  # some attempts fail by something other than ScriptedFailure
    error_fits: Callable[[str, int, BaseException | None], bool] = _is_scripted_failure

    @property
    def exact(self) -> bool:
        """No timing-dependent fault: statuses and attempts follow from the scripts alone."""
        return not self.timeouts and not self.compensation_timeouts

    @property
    def scripted(self) -> bool:
        """Only scripted outcomes: every check applies, down to each error's attempt."""
        return self.exact and not self.other_failures


NO_LEEWAY = Leeway()


def check_result(
    spec: FlowSpec,
    result: FlowResult,
    calls: Sequence[tuple[Any, ...]],
    *,
    events: Sequence[Any] | None = None,
    leeway: Leeway = NO_LEEWAY,
) -> list[str]:
    """Every way ``result``, the call log (and ``events``, when given) break the SPEC for
    ``spec``; empty when none. Exact against the oracle where ``leeway`` leaves no doubt.

    Subflows are checked level by level: each child run (told apart by ``Where``: its
    flow's name and its input's token) against its own spec, its ``FlowResult`` (in
    ``StepResult.subflow`` / ``ItemResult.subflow``) and its own calls."""
    problems: list[str] = []
    by_run: dict[Where, list[tuple[Any, ...]]] = collections.defaultdict(list)
    for call in calls:
        if call and isinstance(call[-1], Where):
            by_run[call[-1]].append(tuple(call[:-1]))
        else:
            by_run[Where(spec.name, ())].append(tuple(call))
    checker = _Levels(by_run, leeway, problems, events)
    top_events = None if events is None else [e for e in events if len(e.path) <= 1]
    checker.level(spec, result, Where(spec.name, ()), "", top_events, unwound=False, stopped=False, at=())
    for where, mine in by_run.items():
        if where not in checker.seen:
            problems.append(f"{len(mine)} calls from a run that is no child of this one: {where}: {mine[:2]}")
    if events is not None:
        _check_event_paths(spec, events, problems)
    return problems


def _canonical(calls: Sequence[tuple[Any, ...]]) -> list[str]:
    return sorted(repr(tuple(sorted(x) if isinstance(x, frozenset) else x for x in call)) for call in calls)


def _deterministic(spec: FlowSpec) -> bool:
    """Whether every run of ``spec`` makes the same calls (no racing fail fast, no map
    that stops early with items in flight), at every depth."""
    exp = expected_outcome(spec)
    if any(v is None for v in exp.steps.values()) or any(m.items is None for m in exp.maps.values()):
        return False
    return all(s.child is None or _deterministic(s.child) for s in spec.subflows())


@dataclass
class _Levels:
    """Checks one run level after another, down through its children."""

    by_run: dict[Where, list[tuple[Any, ...]]]
    leeway: Leeway
    problems: list[str]
    events: Sequence[Any] | None
    seen: set[Where] = field(default_factory=set)

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            self.problems.append(message)

    def level(
        self,
        spec: FlowSpec,
        result: FlowResult,
        where: Where,
        label: str,
        events: Sequence[Any] | None,
        *,
        unwound: bool,
        stopped: bool,
        at: tuple[str, ...] | None,
    ) -> None:
        """``label``: the child's place from the top ("sub", "m0['i00']/sub"); ``at``: its
        events' path prefix when one run alone has it (no map, no retry above), else None."""
        self.seen.add(where)
        calls = self.by_run.get(where, [])
        found = _check_flat(spec, result, calls, events, self.leeway, unwound, stopped, top=not label)
        self.problems.extend(f"in {label}: {p}" if label else p for p in found)
        if set(result.steps) != {m.name for m in spec.steps()} or set(result.maps) != {m.name for m in spec.maps()}:
            return  # reported by _check_flat; its children cannot be found
        undoing = not result.ok or unwound
        for m in spec.steps():
            if m.child is None:
                continue
            r = result.steps[m.name]
            run_of = functools.partial(_step_run, m.child.name, where.token, m.name if m.input else None)
            once = at is not None and r.attempts == 1
            self.child(
                m.child,
                result,
                m.name,
                label,
                r.status,
                r.attempts,
                r.error,
                r.subflow,
                run_of,
                undoing,
                (*at, m.name) if once and at is not None else None,
                1 + m.retries,
            )
        for mp in spec.maps():
            if mp.child is None or mp.name not in result.maps:
                continue
            for it in result.maps[mp.name].items:
                item_run = functools.partial(
                    _step_run,
                    mp.child.name,
                    where.token,
                    f"{mp.name}[{it.key!r}]" if mp.input else None,
                    fixed=None if mp.input else token_of(item_object(mp, it.index)),
                )
                self.child(
                    mp.child,
                    result,
                    mp.label(it.index),
                    label,
                    it.status,
                    it.attempts,
                    it.error,
                    it.subflow,
                    item_run,
                    undoing,
                    None,
                    1 + mp.retries,
                )

    def child(
        self,
        spec: FlowSpec,
        parent: FlowResult,
        name: str,
        label: str,
        status: StepStatus,
        attempts: int,
        error: BaseException | None,
        sub: FlowResult | None,
        run_of: Callable[[int], Where],
        undoing: bool,
        at: tuple[str, ...] | None,
        tries: int,
    ) -> None:
        """One subflow step's (or item's) child runs: its earlier attempts by their calls,
        its last by its ``FlowResult``; undone as a unit, at its place, when it completed
        and its parent failed later."""
        here = f"{label}/{name}" if label else name
        prefix = f"{name}/"
        unit = [n[len(prefix) :] for n in parent.compensated if n.startswith(prefix)]
        unit_not = [n[len(prefix) :] for n in parent.not_compensated if n.startswith(prefix)]
        if status is StepStatus.COMPLETED and undoing and sub is not None:
            self.expect(
                unit == list(sub.compensated) and unit_not == list(sub.not_compensated),
                f"{here}: the parent's compensated {unit} / not {unit_not}, the child's {sub.compensated} / not "
                f"{sub.not_compensated}",
            )
        else:
            self.expect(not unit and not unit_not, f"{here}: {status} but undone as a unit: {unit} / not {unit_not}")
        if attempts == 0 or status is StepStatus.SKIPPED:
            self.expect(sub is None, f"{here}: {status} without running but has a child result")
            return
        if sub is None:
            self.expect(False, f"{here}: {status} after {attempts} attempts without its child's FlowResult")
            return
        self.expect(sub.name == spec.name, f"{here}: child result named {sub.name!r}, not {spec.name!r}")
        self.expect(sub.run_id == parent.run_id, f"{here}: child run id {sub.run_id}, parent {parent.run_id}")
        last = run_of(attempts)
        for number in range(1, attempts):
            earlier = run_of(number)
            if earlier == last:
                self.expect(False, f"{here}: {attempts} attempts but its child runs cannot be told apart")
                break
            self.seen.add(earlier)
            # Its own children's runs went with it (their tokens extend its, or share it in its tree).
            mine = {f.name for f in spec.tree()}
            size = len(earlier.token)
            self.seen |= {
                w for w in self.by_run if w.token[:size] == earlier.token and (len(w.token) > size or w.flow in mine)
            }
            if self.leeway.exact and status is StepStatus.FAILED and _deterministic(spec):
                got, want = _canonical(self.by_run.get(earlier, [])), _canonical(self.by_run.get(last, []))
                self.expect(got == want, f"{here}: child attempt {number} made other calls than the last: {got} {want}")
        for number in range(attempts + 1, tries + 1):
            self.expect(run_of(number) not in self.by_run, f"{here}: a child run for attempt {number} of {attempts}")
        stopped = status in (StepStatus.CANCELLED, StepStatus.TIMED_OUT)
        if stopped:
            self.expect(sub.status is not FlowStatus.COMPLETED, f"{here}: {status} but its child completed")
        else:
            want = FlowStatus.COMPLETED if status is StepStatus.COMPLETED else FlowStatus.FAILED
            self.expect(sub.status is want, f"{here}: {status} but its child ended {sub.status}")
        events = None
        if at is not None and self.events is not None:
            events = [e for e in self.events if len(e.path) == len(at) + 1 and e.path[: len(at)] == at]
        self.level(
            spec, sub, last, here, None, unwound=status is StepStatus.COMPLETED and undoing, stopped=stopped, at=at
        )
        if events is not None:
            found: list[str] = []
            _check_child_events(sub, events, lambda ok, message: None if ok else found.append(message))
            self.problems.extend(f"in {here}: {p}" for p in found)


def _step_run(
    flow: str, base: tuple[str, ...], named: str | None, attempt: int, fixed: tuple[str, ...] | None = None
) -> Where:
    """The run of a subflow's attempt: with ``input=`` its token names it (``named#attempt``
    under the parent's), else it has the parent's input (``base``) or its item's (``fixed``)."""
    if named is not None:
        return Where(flow, (*base, f"{named}#{attempt}"))
    return Where(flow, base if fixed is None else fixed)


def _check_child_events(result: FlowResult, events: Sequence[Any], expect: Callable[[bool, str], None]) -> None:
    """A child run's own events (those at its path): one ``step_finished`` per step, with
    its status; starts and compensations as counted; each event's step is its path's end."""
    finished = collections.Counter(e.step for e in events if e.kind == "step_finished" and e.item is None)
    comp_started = collections.Counter(e.step for e in events if e.kind == "compensation_started")
    for e in events:
        if e.step is not None:
            expect(e.path[-1] == e.step, f"{e.kind} of {e.step!r} at path {e.path}")
        if e.kind == "step_finished" and e.step in result.steps and e.item is None:
            expect(e.status == result.steps[e.step].status, f"{e.step}: step_finished {e.status}")
    for name, r in result.steps.items():
        expect(finished[name] == 1, f"{name}: {finished[name]} step_finished events")
        c = r.compensation
        expect(comp_started[name] == (c.attempts if c else 0), f"{name}: {comp_started[name]} compensation_started")


def _check_event_paths(spec: FlowSpec, events: Sequence[Any], problems: list[str]) -> None:
    """Every event's path names stages from the top down through subflows, ending at
    its step (or group, or map); the flow's own events have an empty path."""
    for e in events:
        if e.kind in ("flow_started", "flow_finished"):
            if e.path != ():
                problems.append(f"{e.kind} with path {e.path}")
            continue
        node: FlowSpec | None = spec
        for name in e.path[:-1]:
            sub = _subflow_named(node, name) if node is not None else None
            node = sub.child if sub is not None else None
        if node is None or not e.path:
            problems.append(f"{e.kind} of {e.step or e.group!r}: path {e.path} is no chain of subflows")
            continue
        names = {m.name for m in node.steps()} | {s.name for s in node.stages if s.group or isinstance(s, MapSpec)}
        last = e.path[-1]
        if last not in names or (e.step is not None and e.step != last) or (e.step is None and e.group != last):
            problems.append(f"{e.kind} of step {e.step!r} / group {e.group!r} at path {e.path}")


def _subflow_named(spec: FlowSpec, name: str) -> StepSpec | MapSpec | None:
    return next((s for s in spec.subflows() if s.name == name), None)


def _check_flat(
    spec: FlowSpec,
    result: FlowResult,
    calls: Sequence[tuple[Any, ...]],
    events: Sequence[Any] | None,
    leeway: Leeway,
    unwound: bool = False,
    stopped: bool = False,
    top: bool = True,
) -> list[str]:
    """One level's checks (``check_result``'s, without its children): ``calls`` are this
    run's own; ``unwound``: a completed child whose parent failed later, so undone as a
    unit; ``stopped``: a child stopped from outside (fail fast, its timeout), where only
    what holds however far it got is checked (final statuses, values, compensations)."""
    problems: list[str] = []

    def expect(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    all_steps = spec.steps()
    names = [m.name for m in all_steps]
    stage_of = spec.stage_of()
    stage_index = {m.name: i for i, stage in enumerate(spec.stages) for m in stage.members}
    stage_index.update({stage.name: i for i, stage in enumerate(spec.stages) if isinstance(stage, MapSpec)})

    # 1. Nothing is lost: every step, in order, with a final status; every group.
    expect(list(result.steps) == names, f"result.steps {list(result.steps)} != declared {names}")
    if set(result.steps) != set(names):
        return problems
    groups = [s.name for s in spec.stages if s.group or isinstance(s, MapSpec)]  # a map has a GroupResult too
    expect(sorted(result.groups) == sorted(groups), f"result.groups {list(result.groups)} != {groups}")
    map_names = [s.name for s in spec.maps()]
    expect(sorted(result.maps) == sorted(map_names), f"result.maps {list(result.maps)} != {map_names}")
    if sorted(result.maps) != sorted(map_names):
        return problems
    if sorted(result.groups) != sorted(groups):
        return problems
    for m in all_steps:
        r = result.steps[m.name]
        expect(r.name == m.name, f"{m.name}: StepResult.name is {r.name!r}")
        expect(isinstance(r.status, StepStatus), f"{m.name}: status {r.status!r} is not a StepStatus")
        expect(r.group == (stage_of[m.name].name if stage_of[m.name].group else None), f"{m.name}: group {r.group}")
    for stage in spec.stages:
        if stage.group:
            g = result.groups[stage.name]
            expect(g.members == tuple(m.name for m in stage.members), f"group {stage.name}: members {g.members}")

    step_calls: dict[str, list[tuple[Any, ...]]] = {n: [] for n in names}
    comp_calls: list[tuple[Any, ...]] = []
    item_calls: dict[str, list[tuple[Any, ...]]] = {n: [] for n in map_names}
    for call in calls:
        if call[0] == "step":
            if call[1] in step_calls:
                step_calls[call[1]].append(call)
            else:
                problems.append(f"call of unknown step {call[1]!r}")
        elif call[0] == "compensate":
            comp_calls.append(call)
        elif call[0] in ("item", "item_compensate") and call[1] in item_calls:
            item_calls[call[1]].append(call)
        else:
            problems.append(f"unknown call {call[:3]!r}")

    completed = {n for n in names if result.steps[n].status is StepStatus.COMPLETED}
    # What each stage's functions see in ctx.results: the values of earlier stages, where a
    # map's value is its values mapping once it passed (a skipped map has none).
    earlier: dict[str, frozenset[str]] = {}
    done: set[str] = set()
    for stage in spec.stages:
        if isinstance(stage, MapSpec):
            earlier[stage.name] = frozenset(done)
            if result.maps[stage.name].status in (GroupStatus.COMPLETED, GroupStatus.PARTIAL):
                done.add(stage.name)
            continue
        for m in stage.members:
            earlier[m.name] = frozenset(done)
        done |= {m.name for m in stage.members if m.name in completed}

    # 2. Stage by stage: verdicts follow the policy; after a failed stage everything is skipped.
    failed_stage: str | None = None
    for stage in spec.stages if not stopped else ():
        if isinstance(stage, MapSpec):
            mr = result.maps[stage.name]
            if failed_stage is not None:
                expect(mr.status is GroupStatus.SKIPPED, f"map {stage.name}: {mr.status} after {failed_stage} failed")
                expect(not item_calls[stage.name], f"map {stage.name}: items ran after stage {failed_stage} failed")
            elif mr.status is GroupStatus.FAILED:
                failed_stage = stage.name
            continue
        member_results = [result.steps[m.name] for m in stage.members]
        statuses = [r.status for r in member_results]
        if failed_stage is not None:
            for m, r in zip(stage.members, member_results, strict=True):
                expect(r.status is StepStatus.SKIPPED, f"{m.name}: {r.status} after stage {failed_stage} failed")
                expect(not step_calls[m.name], f"{m.name}: called after stage {failed_stage} failed")
            if stage.group:
                g = result.groups[stage.name].status
                expect(g is GroupStatus.SKIPPED, f"group {stage.name}: {g} after stage {failed_stage} failed")
            continue
        for m, r in zip(stage.members, member_results, strict=True):
            expect(r.status is not StepStatus.SKIPPED, f"{m.name}: SKIPPED though no earlier stage failed")
        if stage.group:
            g = result.groups[stage.name]
            rule = spec_verdict(stage, statuses)
            expect(g.status is rule, f"group {stage.name}: {g.status}, the policy gives {rule} for {statuses}")
            stage_failed = g.status is GroupStatus.FAILED
            if not stage.fail_fast:
                for m, r in zip(stage.members, member_results, strict=True):
                    expect(r.status is not StepStatus.CANCELLED, f"{m.name}: CANCELLED without fail fast")
                    expect(r.attempts >= 1, f"{m.name}: never ran though its group does not fail fast")
            else:
                cut = [
                    m.name
                    for m, r in zip(stage.members, member_results, strict=True)
                    if r.status is StepStatus.CANCELLED
                ]
                triggers = [
                    m.name
                    for m, r in zip(stage.members, member_results, strict=True)
                    if r.status in (StepStatus.FAILED, StepStatus.TIMED_OUT)
                ]
                if cut:
                    expect(bool(triggers), f"group {stage.name}: {cut} cancelled but no member failed on its own")
                if leeway.scripted and not stage.deterministic and any(s is not StepStatus.COMPLETED for s in statuses):
                    # Racing fail fast: some member failed on its own, after its script's last attempt.
                    natural = [
                        m.name
                        for m, r in zip(stage.members, member_results, strict=True)
                        if r.status is StepStatus.FAILED and r.attempts == m.natural()[1] and not m.natural()[0]
                    ]
                    expect(bool(natural), f"group {stage.name}: members were cut short but none failed on its own")
        else:
            expect(statuses[0] is not StepStatus.CANCELLED, f"{stage.name}: a single step CANCELLED")
            stage_failed = statuses[0] is not StepStatus.COMPLETED
        if stage_failed:
            failed_stage = stage.name
    want_status = FlowStatus.COMPLETED if failed_stage is None else FlowStatus.FAILED
    if stopped:
        expect(not result.ok, f"a stopped child ended {result.status}")
    else:
        expect(
            result.failed_stage == failed_stage, f"failed_stage {result.failed_stage!r}, stages say {failed_stage!r}"
        )
        expect(result.status is want_status, f"flow {result.status}, stages say {want_status}")
    expect(result.ok == (result.status is FlowStatus.COMPLETED), f"ok {result.ok} with {result.status}")
    expect((result.error is None) == result.ok, f"error {result.error!r} with status {result.status}")
    if failed_stage is not None and failed_stage in result.groups:
        expect(isinstance(result.error, ExceptionGroup), f"a failed group's error is {type(result.error).__name__}")

    # 3. Each step: attempts, calls, what it saw, its value and error.
    for m in all_steps:
        r = result.steps[m.name]
        mine = step_calls[m.name]
        numbers = [c[2] for c in mine]
        expect(0 <= r.attempts <= 1 + m.retries, f"{m.name}: {r.attempts} attempts with retries={m.retries}")
        expect(numbers == sorted(set(numbers)), f"{m.name}: ctx.attempt sequence {numbers}")
        expect(
            all(1 <= n <= r.attempts for n in numbers), f"{m.name}: called as attempts {numbers}, counted {r.attempts}"
        )
        if leeway.exact and m.child is None:  # a subflow's attempts are its child runs (checked with them)
            want = list(range(1, r.attempts + 1))
            # In a child stopped from outside (fail fast), its last attempt may have been
            # killed with its worker (process mode) before the function began.
            killed_first = stopped and r.status is StepStatus.CANCELLED and numbers == want[:-1]
            expect(numbers == want or killed_first, f"{m.name}: calls {numbers}, attempts {r.attempts}")
        for c in mine:
            expect(c[3] == earlier[m.name], f"{m.name}: ctx.results {sorted(c[3])} != {sorted(earlier[m.name])}")
        if m.child is not None and r.status is not StepStatus.SKIPPED and r.attempts >= 1:
            expect(r.subflow is not None, f"{m.name}: a subflow step without its child's FlowResult")
        elif m.child is None or r.attempts == 0:
            expect(r.subflow is None, f"{m.name}: subflow {r.subflow!r} though it ran no child")
        if r.status is StepStatus.COMPLETED:
            if m.child is None:
                expect(r.value == step_value(m.name, r.attempts), f"{m.name}: value {r.value!r}")
            else:
                want = None if r.subflow is None else dict(r.subflow.values)
                expect(r.value == want, f"{m.name}: value {r.value!r}, its child's values {want!r}")
            expect(r.error is None, f"{m.name}: completed with error {r.error!r}")
            expect(
                _scripted(m.effective_script, r.attempts),
                f"{m.name}: completed on attempt {r.attempts}, scripted to fail",
            )
        else:
            expect(r.value is None, f"{m.name}: value {r.value!r} though {r.status}")
        if r.status is StepStatus.TIMED_OUT:
            expect(m.timeout is not None, f"{m.name}: TIMED_OUT without a timeout")
            expect(isinstance(r.error, StepTimeoutError), f"{m.name}: TIMED_OUT with {r.error!r}")
        if r.status is StepStatus.FAILED and m.child is not None:
            sub = r.subflow
            expect(
                sub is not None and r.error is sub.error and sub.status is FlowStatus.FAILED,
                f"{m.name}: FAILED with {r.error!r}, not its failed child's error",
            )
        elif r.status is StepStatus.FAILED:
            expect(r.attempts >= 1, f"{m.name}: FAILED without an attempt ({r.error!r})")
            if r.attempts >= 1:
                expect(
                    leeway.error_fits(m.name, r.attempts, r.error),
                    f"{m.name}: FAILED on attempt {r.attempts} with {r.error!r}",
                )
            if leeway.scripted:
                e = r.error
                expect(
                    isinstance(e, ScriptedFailure) and e.attempt == r.attempts,
                    f"{m.name}: failed with error {e!r}, not the last attempt's ScriptedFailure",
                )
        if r.status is StepStatus.CANCELLED:
            expect(isinstance(r.error, StepCancelledError), f"{m.name}: CANCELLED with {r.error!r}")
        if r.status in (StepStatus.FAILED, StepStatus.TIMED_OUT) and not stage_of[m.name].fail_fast and not stopped:
            expect(r.attempts == 1 + m.retries, f"{m.name}: {r.status} after {r.attempts} of {1 + m.retries} attempts")
        if r.status is StepStatus.SKIPPED:
            expect(r.attempts == 0 and not mine, f"{m.name}: SKIPPED but ran")
    step_values = {n: v for n, v in result.values.items() if n not in result.maps}
    expect(step_values == {n: result.steps[n].value for n in completed}, "result.values mismatch")

    # 4. Exactly what the oracle says where timing cannot matter (not in a child stopped from outside).
    exp = expected_outcome(spec)
    if leeway.exact and not stopped:
        expect(result.status is exp.status, f"flow {result.status}, oracle {exp.status}")
        expect(
            result.failed_stage == exp.failed_stage, f"failed_stage {result.failed_stage}, oracle {exp.failed_stage}"
        )
        for name, status in exp.groups.items():
            expect(result.groups[name].status is status, f"group {name}: {result.groups[name].status}, oracle {status}")
    for m in all_steps if not stopped else ():
        stage = stage_of[m.name]
        predicted = exp.steps[m.name]
        r = result.steps[m.name]
        if predicted is None:
            if leeway.scripted:
                _check_racing_member(m, r, expect)
            continue
        if r.status is StepStatus.SKIPPED or predicted[0] is StepStatus.SKIPPED:
            continue
        racing = stage.fail_fast and any(o.name in leeway.timeouts for o in stage.members)
        if leeway.exact or (m.name not in leeway.timeouts and stage.deterministic and not racing):
            expect(
                (r.status, r.attempts) == predicted,
                f"{m.name}: {r.status} after {r.attempts} attempts, oracle {predicted[0]} after {predicted[1]}",
            )

    # 5. Maps: every item taken has a final status, the counts add up, values hold exactly
    # the completed items, the verdict follows the policy; exact where timing cannot matter.
    for stage in spec.maps():
        expected_map = exp.maps[stage.name]
        _check_map(
            stage, result, item_calls[stage.name], earlier[stage.name], expected_map, leeway, expect, stopped, unwound
        )

    # 6. Compensation: the completed steps (and items) that have one, in reverse declaration
    # order (a map's items in reverse item order unless they may run together).
    undoing = not result.ok or unwound
    # A TIMED_OUT step whose abandoned attempt returned during the wait before compensating
    # (a late completion, SPEC §16: only with a short timeout) is undone at its place too;
    # not in a child (its frame has ended by then: the late value is only recorded).
    late = {
        n
        for n in names
        if top and result.steps[n].status is StepStatus.TIMED_OUT and result.steps[n].late_value is not None
    }
    expect(late <= leeway.timeouts, f"late completions {sorted(late)} without a short timeout")
    _check_compensation(spec, result, comp_calls, completed | late, leeway, expect, undoing)
    _check_compensation_order(spec, result, calls, expect, undoing)

    # 7. Events agree with the result, stage by stage.
    if events is not None:
        _check_events(spec, result, events, stage_index, leeway.exact, expect)
    return problems


def _check_map(
    spec: MapSpec,
    result: FlowResult,
    calls: Sequence[tuple[Any, ...]],
    earlier: frozenset[str],
    expected: MapExpectation,
    leeway: Leeway,
    expect: Callable[[bool, str], None],
    stopped: bool = False,
    unwound: bool = False,
) -> None:
    name = spec.name
    mr = result.maps[name]
    runs = [c for c in calls if c[0] == "item"]
    undos = [c for c in calls if c[0] == "item_compensate"]
    expect(mr.name == name, f"map {name}: MapResult.name {mr.name!r}")
    expect(result.groups[name].status is mr.status, f"map {name}: {result.groups[name].status} in groups, {mr.status}")
    expect(result.groups[name].members == (), f"map {name}: group members {result.groups[name].members}")
    expect(name not in result.steps, f"map {name} is in result.steps")
    # Whether an earlier stage failed may be up to timing (an item's or a step's short
    # timeout): then the map is skipped exactly when the run failed before it.
    timing = not leeway.exact
    if expected.status is GroupStatus.SKIPPED and mr.status is not GroupStatus.SKIPPED:
        expect(timing, f"map {name}: {mr.status}, oracle {expected.status}")
    elif expected.status is GroupStatus.SKIPPED or mr.status is GroupStatus.SKIPPED:
        if not stopped:  # a stopped child skips the stages it never reached
            if timing:
                expect(
                    result.failed_stage is not None or spec.when is False,
                    f"map {name}: SKIPPED, but nothing failed before it and its condition held",
                )
            else:
                expect(mr.status is expected.status, f"map {name}: {mr.status}, oracle {expected.status}")
        expect(mr.total == 0 and not list(mr.items), f"map {name}: SKIPPED with {mr.total} items")
        expect(not calls, f"map {name}: SKIPPED but its functions ran: {calls[:3]}")
        expect(name not in result.values, f"map {name}: SKIPPED but has a value")
        expect(not mr.stopped_early and mr.error is None, f"map {name}: SKIPPED, stopped early or with an error")
        return
    items = list(mr.items)
    total = mr.total
    keys = [spec.key(i) for i in range(total)]
    expect(len(items) == total <= len(spec.items), f"map {name}: {len(items)} items, total {total}")
    expect([it.index for it in items] == list(range(len(items))), f"map {name}: indexes {[it.index for it in items]}")
    expect([it.key for it in items] == keys[: len(items)], f"map {name}: keys {[it.key for it in items]}")
    statuses = [it.status for it in items]
    tally = collections.Counter(statuses)
    want_counts = {status: tally.get(status, 0) for status in StepStatus}
    expect(dict(mr.counts) == want_counts, f"map {name}: counts {dict(mr.counts)}, items say {want_counts}")
    expect(sum(mr.counts.values()) == total, f"map {name}: counts add up to {sum(mr.counts.values())}, not {total}")
    expect(StepStatus.SKIPPED not in tally, f"map {name}: an item SKIPPED")
    done = [it for it in items if it.status is StepStatus.COMPLETED]
    expect(
        list(mr.values.items()) == [(it.key, it.value) for it in done],
        f"map {name}: values {dict(mr.values)} != the completed items'",
    )
    expect(
        [it.key for it in mr.failed] == [it.key for it in items if it.status is not StepStatus.COMPLETED],
        f"map {name}: failed {[it.key for it in mr.failed]}",
    )
    verdict = map_verdict(spec, len(done), total)
    stops = map_stops(spec, total - len(done))
    if not stopped:  # a map cut short from outside ends however far it got
        expect(mr.status is verdict, f"map {name}: {mr.status}, the policy gives {verdict} for {statuses}")
        expect(mr.stopped_early == stops, f"map {name}: stopped_early {mr.stopped_early}, the policy says {stops}")
    if not mr.stopped_early and not stopped:
        expect(total == len(spec.items), f"map {name}: took {total} of {len(spec.items)} items without stopping")
    if mr.status is GroupStatus.FAILED:
        expect(isinstance(mr.error, ExceptionGroup), f"map {name}: FAILED with error {mr.error!r}")
    else:
        expect(mr.error is None, f"map {name}: {mr.status} with error {mr.error!r}")
    if mr.status in (GroupStatus.COMPLETED, GroupStatus.PARTIAL):
        value = result.values.get(name)
        expect(value is not None and dict(value) == dict(mr.values), f"map {name}: result.values {value!r}")
    taken = set(keys)
    expect(all(c[2] in taken for c in calls), f"map {name}: an item not taken was called")
    exact = leeway.exact and name not in leeway.timeouts and not stopped
    for it in items:
        index, key = it.index, it.key
        label = spec.label(index)
        mine = [c for c in runs if c[2] == key]
        numbers = [c[3] for c in mine]
        expect(0 <= it.attempts <= 1 + spec.retries, f"{label}: {it.attempts} attempts, retries={spec.retries}")
        expect(numbers == sorted(set(numbers)), f"{label}: ctx.attempt sequence {numbers}")
        expect(all(1 <= n <= it.attempts for n in numbers), f"{label}: called as {numbers}, counted {it.attempts}")
        if leeway.exact and spec.child is None:
            want = list(range(1, it.attempts + 1))
            # As for a step: in a child stopped from outside, the item's last attempt may have
            # been killed with its worker (process mode) before the function began.
            killed_first = stopped and it.status is StepStatus.CANCELLED and numbers == want[:-1]
            expect(numbers == want or killed_first, f"{label}: calls {numbers}, attempts {it.attempts}")
        if spec.child is not None and it.attempts >= 1:
            expect(it.subflow is not None, f"{label}: an item of a map of subflows without its child's FlowResult")
        elif spec.child is None or it.attempts == 0:
            expect(it.subflow is None, f"{label}: subflow {it.subflow!r} though it ran no child")
        for c in mine:
            expect(c[4] == earlier, f"{label}: ctx.results {sorted(c[4])} != {sorted(earlier)}")
            expect(c[5] == index and c[6] == item_object(spec, index), f"{label}: ctx.index {c[5]}, ctx.item {c[6]!r}")
        script = spec.item_script(index)
        if it.status is StepStatus.COMPLETED and spec.child is not None:
            want = None if it.subflow is None else dict(it.subflow.values)
            expect(it.value == want, f"{label}: value {it.value!r}, its child's values {want!r}")
        if it.status is StepStatus.COMPLETED:
            if spec.child is None:
                expect(it.value == item_value(name, key, it.attempts), f"{label}: value {it.value!r}")
            expect(it.error is None, f"{label}: completed with error {it.error!r}")
            expect(_scripted(script, it.attempts), f"{label}: completed on attempt {it.attempts}, scripted to fail")
        else:
            expect(it.value is None, f"{label}: value {it.value!r} though {it.status}")
        if it.status is StepStatus.FAILED and spec.child is not None:
            sub = it.subflow
            expect(
                sub is not None and it.error is sub.error and sub.status is FlowStatus.FAILED,
                f"{label}: FAILED with {it.error!r}, not its failed child's error",
            )
        elif it.status is StepStatus.FAILED:
            expect(it.attempts >= 1, f"{label}: FAILED without an attempt ({it.error!r})")
            if it.attempts >= 1:
                expect(leeway.error_fits(label, it.attempts, it.error), f"{label}: FAILED with {it.error!r}")
            if leeway.scripted:
                e = it.error
                expect(
                    isinstance(e, ScriptedFailure) and e.attempt == it.attempts,
                    f"{label}: failed with {e!r}, not the last attempt's ScriptedFailure",
                )
            if not mr.stopped_early and not stopped:
                expect(it.attempts == 1 + spec.retries, f"{label}: FAILED after {it.attempts} attempts")
        if it.status is StepStatus.TIMED_OUT:
            expect(name in leeway.timeouts, f"{label}: TIMED_OUT without a short timeout")
            expect(isinstance(it.error, StepTimeoutError), f"{label}: TIMED_OUT with {it.error!r}")
        if it.status is StepStatus.CANCELLED:
            expect(mr.stopped_early or stopped, f"{label}: CANCELLED though the map did not stop early")
            expect(isinstance(it.error, StepCancelledError), f"{label}: CANCELLED with {it.error!r}")
    if exact:
        expect(mr.status is expected.status, f"map {name}: {mr.status}, oracle {expected.status}")
        expect(mr.stopped_early == expected.stopped_early, f"map {name}: stopped_early, oracle {expected}")
        if expected.items is not None:
            got = [(it.status, it.attempts) for it in items]
            expect(got == list(expected.items), f"map {name}: items {got}, oracle {list(expected.items)}")
        elif leeway.scripted:
            for it in items:
                ok, natural = _first_success(spec.item_script(it.index), spec.retries)
                if it.status is StepStatus.COMPLETED:
                    expect(ok and it.attempts == natural, f"{spec.label(it.index)}: completed on {it.attempts}")
                elif it.status is StepStatus.FAILED:
                    expect(
                        1 <= it.attempts <= natural and (not ok or it.attempts < natural),
                        f"{spec.label(it.index)}: failed after {it.attempts} (natural: {ok} after {natural})",
                    )
    _check_item_compensations(spec, result, items, undos, leeway, expect, unwound)


def _check_item_compensations(
    spec: MapSpec,
    result: FlowResult,
    items: list[Any],
    undos: list[tuple[Any, ...]],
    leeway: Leeway,
    expect: Callable[[bool, str], None],
    unwound: bool = False,
) -> None:
    """Exactly the completed items are compensated when the flow failed (or, a child, was
    undone as a unit), each by its script. A map of subflows' children are checked with them."""
    name = spec.name
    undoing = not result.ok or unwound
    due = [it for it in reversed(items) if it.status is StepStatus.COMPLETED] if spec.compensate and undoing else []
    due_labels = [spec.label(it.index) for it in due]
    prefix = f"{name}["
    # An item's own label; "m['k']/x" is a step of its child, undone as a unit.
    ours = [label for label in result.compensated if label.startswith(prefix) and "/" not in label]
    not_ours = [label for label in result.not_compensated if label.startswith(prefix) and "/" not in label]
    expect(
        sorted(ours + not_ours) == sorted(due_labels),
        f"map {name}: compensated {ours} + not_compensated {not_ours} != due {due_labels}",
    )
    due_keys = {it.key for it in due}
    expect(all(c[2] in due_keys for c in undos), f"map {name}: compensation of an item not due: {undos[:3]}")
    for it in items:
        label = spec.label(it.index)
        c = it.compensation
        if it.key not in due_keys:
            expect(c is None, f"{label}: compensation {c} though not due")
            continue
        if c is None:
            expect(False, f"{label}: due but no compensation record")
            continue
        tries = 1 + spec.compensate_retries
        expect(1 <= c.attempts <= tries, f"{label}: compensation attempts {c.attempts} of {tries}")
        expect((c.status == "compensated") == (label in ours), f"{label}: compensation {c.status}, compensated {ours}")
        mine = [call for call in undos if call[2] == it.key]
        numbers = [call[3] for call in mine]
        expect(numbers == list(range(1, len(numbers) + 1)), f"{label}: compensation calls {numbers}")
        if name not in leeway.compensation_timeouts:
            ok, attempts = _first_success(spec.items[it.index].undo, spec.compensate_retries)
            want = ("compensated" if ok else "failed", attempts)
            expect((c.status, c.attempts) == want, f"{label}: compensation {(c.status, c.attempts)}, script {want}")
            expect(numbers == list(range(1, attempts + 1)), f"{label}: compensation calls {numbers}, script {want}")
            if not ok:
                expect(
                    isinstance(c.error, ScriptedFailure) and c.error.attempt == attempts,
                    f"{label}: compensation error {c.error!r}",
                )
        for call in mine:
            expect(call[4] == frozenset(result.values), f"{label}: compensation ctx.results {sorted(call[4])}")
            expect(call[5] == it.value, f"{label}: compensation got {call[5]!r}, value {it.value!r}")
            expect(
                call[6] == it.index and call[7] == item_object(spec, it.index),
                f"{label}: compensation ctx.index {call[6]}, ctx.item {call[7]!r}",
            )
    if spec.compensate_concurrency == 1:
        # One at a time, latest item first: each item's attempts together, in due order.
        order: list[Any] = []
        for call in undos:
            if not order or order[-1] != call[2]:
                order.append(call[2])
        expect(order == [it.key for it in due if it.key in set(order)], f"map {name}: compensation order {order}")
        expect(len(order) == len(set(order)), f"map {name}: item compensations interleaved: {order}")
        expect(ours == [label for label in due_labels if label in ours], f"map {name}: compensated out of order")


def _check_compensation_order(
    spec: FlowSpec,
    result: FlowResult,
    calls: Sequence[tuple[Any, ...]],
    expect: Callable[[bool, str], None],
    undoing: bool,
) -> None:
    """Across stages: compensations run latest stage first, and all of one stage's end
    before an earlier stage's start (a child undone as a unit at its stage's place);
    none run when the flow completed (and, a child, was not undone as a unit)."""
    position = {m.name: i for i, stage in enumerate(spec.stages) for m in stage.members}
    position.update({stage.name: i for i, stage in enumerate(spec.stages) if isinstance(stage, MapSpec)})
    undone = [position[c[1]] for c in calls if c[0] in ("compensate", "item_compensate") and c[1] in position]
    if not undoing:
        expect(not undone, "compensations ran for a completed flow")
        return
    expect(undone == sorted(undone, reverse=True), f"compensation calls by stage {undone}: not latest stage first")
    stages = [position.get(label.split("/", 1)[0].split("[", 1)[0], -1) for label in result.compensated]
    expect(len(set(result.compensated)) == len(result.compensated), f"compensated twice: {result.compensated}")
    expect(stages == sorted(stages, reverse=True), f"compensated {result.compensated}: not latest stage first")


def _check_racing_member(m: StepSpec, r: Any, expect: Callable[[bool, str], None]) -> None:
    ok, natural_attempts = m.natural()
    if r.status is StepStatus.CANCELLED:  # a running child can be stopped, a running function not
        expect(r.attempts == 0 or m.child is not None, f"{m.name}: cancelled after {r.attempts} attempts")
    elif r.status is StepStatus.COMPLETED:
        expect(ok and r.attempts == natural_attempts, f"{m.name}: completed on attempt {r.attempts}")
    elif r.status is StepStatus.FAILED:
        expect(
            1 <= r.attempts <= natural_attempts and (not ok or r.attempts < natural_attempts),
            f"{m.name}: failed after {r.attempts} attempts (natural: {ok} after {natural_attempts})",
        )
    else:
        expect(False, f"{m.name}: unexpected status {r.status} in a fail-fast group")


def _check_compensation(
    spec: FlowSpec,
    result: FlowResult,
    comp_calls: list[tuple[Any, ...]],
    completed: set[str],
    leeway: Leeway,
    expect: Callable[[bool, str], None],
    undoing: bool,
) -> None:
    all_steps = spec.steps()
    if not undoing:
        expect(not comp_calls, f"compensations ran for a completed flow: {comp_calls}")
        expect(result.compensated == () == result.not_compensated, "compensated/not_compensated not empty")
        for m in all_steps:
            expect(result.steps[m.name].compensation is None, f"{m.name}: compensation on a completed flow")
        return
    due = [m for m in reversed(all_steps) if m.compensate is not None and m.name in completed]
    due_names = [m.name for m in due]
    # Items (``map[key]``) are checked with their maps: here only the steps.
    step_names = {m.name for m in all_steps}
    compensated = tuple(n for n in result.compensated if n in step_names)
    not_compensated = tuple(n for n in result.not_compensated if n in step_names)
    expect(
        sorted(compensated + not_compensated) == sorted(due_names),
        f"compensated {compensated} + not_compensated {not_compensated} != due {due_names}",
    )
    expect(list(compensated) == [n for n in due_names if n in compensated], "compensated out of order")
    for m in all_steps:
        c = result.steps[m.name].compensation
        if m.name not in due_names:
            expect(c is None, f"{m.name}: compensation {c} though not due")
            continue
        assert m.compensate is not None
        if c is None:
            expect(False, f"{m.name}: due but no compensation record")
            continue
        tries = 1 + m.compensate.retries
        expect(1 <= c.attempts <= tries, f"{m.name}: compensation attempts {c.attempts} of {tries}")
        expect(
            (c.status == "compensated") == (m.name in compensated),
            f"{m.name}: compensation {c.status} vs compensated {compensated}",
        )
        if c.status == "compensated":
            expect(m.compensate.script[c.attempts - 1], f"{m.name}: compensated on a failing attempt")
            expect(c.error is None, f"{m.name}: compensated with {c.error!r}")
        else:
            expect(c.attempts == tries, f"{m.name}: compensation failed after {c.attempts} of {tries}")
            expect(c.error is not None, f"{m.name}: failed compensation without an error")
        if m.name not in leeway.compensation_timeouts:
            ok, attempts = m.compensate.outcome()
            want = ("compensated" if ok else "failed", attempts)
            expect((c.status, c.attempts) == want, f"{m.name}: compensation {(c.status, c.attempts)}, script {want}")
            if not ok:
                expect(isinstance(c.error, ScriptedFailure), f"{m.name}: compensation error {c.error!r}")
                if leeway.scripted:
                    expect(
                        isinstance(c.error, ScriptedFailure) and c.error.attempt == attempts,
                        f"{m.name}: compensation error {c.error!r} is not its last attempt's",
                    )
    # Calls: one step at a time, in the due order; what each saw.
    order: list[str] = []
    for call in comp_calls:
        if not order or order[-1] != call[1]:
            order.append(call[1])
        expect(call[3] == frozenset(result.values), f"{call[1]}: compensation ctx.results {sorted(call[3])}")
        r = result.steps[call[1]]
        value = r.value if r.status is StepStatus.COMPLETED else r.late_value
        expect(call[4] == value, f"{call[1]}: compensation got {call[4]!r}")
    expect(len(order) == len(set(order)), f"compensations interleaved: {order}")
    positions = [due_names.index(n) if n in due_names else -1 for n in order]
    expect(-1 not in positions and positions == sorted(positions), f"compensation calls {order}, due {due_names}")
    if leeway.exact:
        expect(order == due_names, f"compensation calls {order} != due {due_names}")
        for m in due:
            c = result.steps[m.name].compensation
            numbers = [call[2] for call in comp_calls if call[1] == m.name]
            if c is not None:
                expect(numbers == list(range(1, c.attempts + 1)), f"{m.name}: compensation calls {numbers}")
    if leeway.scripted:
        good: list[str] = []
        bad: list[str] = []
        expected_calls: list[tuple[str, int]] = []
        for m in due:
            assert m.compensate is not None
            ok, attempts = m.compensate.outcome()
            expected_calls += [(m.name, n) for n in range(1, attempts + 1)]
            (good if ok else bad).append(m.name)
        got_calls = [(c[1], c[2]) for c in comp_calls]
        expect(got_calls == expected_calls, f"compensation calls {got_calls} != expected {expected_calls}")
        expect(compensated == tuple(good), f"compensated {compensated} != expected {tuple(good)}")
        expect(not_compensated == tuple(bad), f"not_compensated {not_compensated} != {tuple(bad)}")


def _check_events(
    spec: FlowSpec,
    result: FlowResult,
    events: Sequence[Any],
    stage_index: dict[str, int],
    exact: bool,
    expect: Callable[[bool, str], None],
) -> None:
    if not events:
        expect(False, "no events")
        return
    kinds = [e.kind for e in events]
    expect(kinds[0] == "flow_started" and kinds.count("flow_started") == 1, "flow_started not first/unique")
    expect(kinds[-1] == "flow_finished" and kinds.count("flow_finished") == 1, "flow_finished not last/unique")
    expect(all(e.run_id == result.run_id for e in events), "an event carries another run's id")
    expect(events[-1].status == result.status, f"flow_finished {events[-1].status} != {result.status}")
    finished = collections.Counter(e.step for e in events if e.kind == "step_finished")
    started = collections.Counter(e.step for e in events if e.kind == "step_started")
    comp_started = collections.Counter(e.step for e in events if e.kind == "compensation_started")
    for name, r in result.steps.items():
        expect(finished[name] == 1, f"{name}: {finished[name]} step_finished events")
        expect(started[name] <= r.attempts, f"{name}: {started[name]} step_started for {r.attempts} attempts")
        if exact:
            expect(started[name] == r.attempts, f"{name}: {started[name]} step_started for {r.attempts} attempts")
        c = r.compensation
        expect(comp_started[name] == (c.attempts if c else 0), f"{name}: {comp_started[name]} compensation_started")
    for e in events:
        if e.kind == "step_finished" and e.step in result.maps:
            continue  # an item's: checked with its map below
        if e.kind == "step_finished":
            expect(e.status == result.steps[e.step].status, f"{e.step}: step_finished {e.status}")
        if e.kind == "group_finished":
            expect(e.status == result.groups[e.group].status, f"{e.group}: group_finished {e.status}")
    for stage in spec.maps():
        _check_map_events(stage, result, events, exact, expect)
    # Stages in order: no event of a stage after a later stage's.
    group_stage = {s.name: i for i, s in enumerate(spec.stages) if s.group or isinstance(s, MapSpec)}
    current = -1
    compensating = False
    for e in events:
        if e.kind in ("step_started", "step_retrying", "step_finished"):
            index = stage_index[e.step]
        elif e.kind == "group_finished":
            index = group_stage[e.group]
        elif e.kind.startswith("compensation"):
            compensating = True
            continue
        else:
            continue
        expect(not compensating, f"{e.kind} of {e.step or e.group} after compensations began")
        expect(index >= current, f"{e.kind} of stage {index} after stage {current}")
        current = max(current, index)
    # Concurrency caps: members between their first start and their end.
    for stage in spec.stages:
        if not stage.group or stage.max_concurrency is None or isinstance(stage, MapSpec):
            continue
        members = {m.name for m in stage.members}
        active: set[str] = set()
        peak = 0
        for e in events:
            if e.step not in members:
                continue
            if e.kind == "step_started":
                active.add(e.step)
            elif e.kind == "step_finished":
                active.discard(e.step)
            peak = max(peak, len(active))
        expect(
            peak <= stage.max_concurrency, f"group {stage.name}: {peak} members at once, cap {stage.max_concurrency}"
        )


def _check_map_events(
    spec: MapSpec, result: FlowResult, events: Sequence[Any], exact: bool, expect: Callable[[bool, str], None]
) -> None:
    """A map's item events: one ``step_finished`` per item taken, with its key, index and
    status; starts and compensations as counted; never more items at once than its cap."""
    name = spec.name
    mr = result.maps[name]
    mine = [e for e in events if e.step == name]
    finished = collections.Counter(e.item for e in mine if e.kind == "step_finished")
    started = collections.Counter(e.item for e in mine if e.kind == "step_started")
    undoing = collections.Counter(e.item for e in mine if e.kind == "compensation_started")
    expect(
        sorted(finished.items(), key=repr) == sorted(((it.key, 1) for it in mr.items), key=repr),
        f"map {name}: step_finished per item {dict(finished)}",
    )
    for it in mr.items:
        label = spec.label(it.index)
        expect(started[it.key] <= it.attempts, f"{label}: {started[it.key]} step_started for {it.attempts} attempts")
        if exact:
            expect(started[it.key] == it.attempts, f"{label}: {started[it.key]} step_started, {it.attempts} attempts")
        c = it.compensation
        expect(undoing[it.key] == (c.attempts if c else 0), f"{label}: {undoing[it.key]} compensation_started")
    for e in mine:
        if e.kind in ("step_started", "step_finished", "step_retrying", "compensation_started"):
            expect(e.group is None, f"map {name}: an item's {e.kind} has group {e.group!r}")
            index = _index_of(mr, e.item)
            expect(index is not None and e.index == index, f"map {name}: {e.kind} of item {e.item!r} index {e.index}")
            if e.kind == "step_finished" and index is not None:
                status = mr.items[index].status
                expect(e.status == status, f"{spec.label(index)}: step_finished {e.status}, result {status}")
    group_finished = [e for e in events if e.kind == "group_finished" and e.group == name]
    expect(len(group_finished) == 1, f"map {name}: {len(group_finished)} group_finished events")
    if spec.max_concurrency is not None:
        active: set[Any] = set()
        peak = 0
        for e in mine:
            if e.kind == "step_started":
                active.add(e.item)
            elif e.kind == "step_finished":
                active.discard(e.item)
            peak = max(peak, len(active))
        expect(peak <= spec.max_concurrency, f"map {name}: {peak} items at once, cap {spec.max_concurrency}")


def _index_of(mr: Any, key: Any) -> int | None:
    try:
        return int(mr.item(key).index)
    except KeyError:
        return None
