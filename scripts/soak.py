"""Soak test: random flows with injected faults, many runs at once, for a while.

    python scripts/soak.py --duration 600 --concurrency 4 [--json] [--seed N]
    python scripts/soak.py --replay SEED          # run one flow again and show its checks

Each run draws a random flow (``tests/_randomflows.py``: stages, group policies,
required members, concurrency caps, retries, compensations, and maps of 0-10 items
under every map policy, with item compensations run one at a time or together; and, per
level, stages with children: subflow steps, group members and maps of subflows, nested
down to three levels, some retried, some given ``input=``, some with a run timeout never
reached) and an executor mode
(flowpool's threads, flowpool's process lanes, or one ``ThreadPoolExecutor`` that all
runs share), then injects faults on top: odd exceptions, hangs that outlast a short
step timeout, worker crashes (``os._exit``) and unpicklable values in process mode,
slow compensations and compensations that outlast their own timeout; a map's items
get the same faults (a map with a hanging item has a short per-item timeout), and so do
the steps and maps inside children. Children are checked level by level (every step at
every depth has a final status, a failed child compensated its own completed steps, a
completed child whose parent failed later was undone as a unit at its place, each call
came from the child run its ``ctx.flow`` and ``ctx.input`` name, event paths).

Every run is checked against the SPEC's invariants (§5): every step has a final
status, group verdicts follow their policy, later stages are skipped and never
called, compensations are exactly the completed steps (and map items) that have one,
in reverse declaration order (a map's items in reverse item order when one at a time),
every map item has a final status and the counts and values add up, events agree
with the result. The checks are those of the
property tests (``check_result`` in ``tests/_randomflows.py``), told what the
injected faults leave open; runs without timing-dependent faults are checked
exactly against its oracle.
Step and compensation calls are logged to a file per run (one ``os.write`` per
call, so process-mode workers log too); each log is read again a few seconds
after its run to catch calls that happen after the run returned.

Every ``--sample-every`` runs the process's threads, child processes (other than
flowpool's lane workers and loky's resource tracker), open file descriptors and
RSS are sampled. At the end, once idle, the counts must be back to their baseline
and memory must have stayed flat after warm-up. Exit status: 0 when there were no
invariant violations and no leaks, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psutil
from _randomflows import (
    FlowSpec,
    ItemSpec,
    Leeway,
    MapSpec,
    ScriptedFailure,
    Stage,
    StepSpec,
    Where,
    assemble,
    check_result,
    item_value,
    random_flow_spec,
    where_of,
)

import flowpool
from flowpool import (
    Flow,
    FlowResult,
    RemoteError,
    Step,
    UnpicklableResultError,
    WorkerCrashedError,
)

MODES = ("thread", "process", "user-pool")
MODE_WEIGHTS = (45, 30, 25)
#: Outcomes of one attempt. "ok" returns ``name@attempt``; every other kind does not complete.
OK, FAIL, ODD, HANG, CRASH, UNPICKLABLE = "ok", "fail", "odd-exception", "hang", "crash", "unpicklable-value"
PROCESS_ONLY = frozenset({CRASH, UNPICKLABLE})
#: Thread-mode hangs wait at most this long (on an Event the soak sets at the end).
MAX_HANG = 2.0
#: Seconds after a run before its call log is read again for late calls.
LATE_CHECK_DELAY = MAX_HANG + 1.5
#: A run taking longer than this is reported as hung.
RUN_LIMIT = 30.0
#: The chance of a stage with children (subflow steps, members, maps of subflows) per level.
SUBFLOWS = 0.3
#: The run timeout some subflow steps get: never reached (a hang is cut by its step's short timeout).
SUBFLOW_TIMEOUT = 20.0

# Released at the end so that abandoned thread-mode hangs return at once.
_HANG_RELEASE = threading.Event()


# ── step and compensation functions (plain data; picklable by cloudpickle) ────────


class SoakFailure(ScriptedFailure):
    """A scripted failure that survives pickling (``ScriptedFailure`` takes three arguments)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kind, self.step, self.attempt))


class OddError(Exception):
    """An exception that cannot be rebuilt from its args: it cannot come back from a worker intact."""

    def __init__(self, step: str, attempt: int) -> None:
        super().__init__(f"odd failure of {step!r} attempt {attempt}")
        self.step_name = step


def _log(path: str, entry: list[Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def _where(ctx: Any) -> list[Any]:
    """Which run a call came from (``Where`` of ``tests/_randomflows.py``), as JSON."""
    where = where_of(ctx)
    return [where.flow, list(where.token)]


def _wait_cancellable(ctx: Any, seconds: float, wait: Callable[[float], Any]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        wait(0.01)


@dataclasses.dataclass(frozen=True)
class StepFn:
    """A step that logs its call, then does what ``outcomes[attempt - 1]`` says."""

    name: str
    outcomes: tuple[str, ...]
    log: str
    hang: float = 0.0
    cancel_aware: bool = False

    def outcome(self, attempt: int) -> str:
        return self.outcomes[attempt - 1] if attempt <= len(self.outcomes) else FAIL

    def __call__(self, ctx: Any) -> Any:
        attempt = ctx.attempt
        _log(self.log, ["step", self.name, attempt, sorted(ctx.results), _where(ctx)])
        kind = self.outcome(attempt)
        if kind == OK:
            return f"{self.name}@{attempt}"
        if kind == ODD:
            raise OddError(self.name, attempt)
        if kind == HANG:
            self.do_hang(ctx)
            return f"{self.name}@{attempt}"  # a late value: must be ignored
        if kind == CRASH:
            os._exit(70)
        if kind == UNPICKLABLE:
            return threading.Lock()
        raise SoakFailure("step", self.name, attempt)

    def do_hang(self, ctx: Any) -> None:
        raise NotImplementedError  # per mode below; the base must not reference _HANG_RELEASE


@dataclasses.dataclass(frozen=True)
class ProcessStepFn(StepFn):
    """Process-mode variant: hangs with ``time.sleep`` (the timeout kills the worker)."""

    def do_hang(self, ctx: Any) -> None:
        if self.cancel_aware:
            _wait_cancellable(ctx, self.hang, time.sleep)
        else:
            time.sleep(self.hang)


@dataclasses.dataclass(frozen=True)
class ThreadStepFn(StepFn):
    def do_hang(self, ctx: Any) -> None:
        if self.cancel_aware:
            _wait_cancellable(ctx, min(self.hang, MAX_HANG), _HANG_RELEASE.wait)
        else:
            _HANG_RELEASE.wait(min(self.hang, MAX_HANG))


@dataclasses.dataclass(frozen=True)
class CompFn:
    """A compensation that logs its call, maybe takes its time, then follows its script."""

    name: str
    script: tuple[bool, ...]
    log: str
    slow: float = 0.0

    def __call__(self, ctx: Any, value: Any) -> None:
        attempt = ctx.attempt
        _log(self.log, ["compensate", self.name, attempt, sorted(ctx.results), value, _where(ctx)])
        if self.slow:
            self.pause(self.slow)
        if not (attempt <= len(self.script) and self.script[attempt - 1]):
            raise SoakFailure("compensation", self.name, attempt)

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclasses.dataclass(frozen=True)
class ThreadCompFn(CompFn):
    def pause(self, seconds: float) -> None:
        _HANG_RELEASE.wait(min(seconds, MAX_HANG))


@dataclasses.dataclass(frozen=True)
class ItemFn:
    """A map's function: logs the call, then does what ``outcomes[ctx.index][attempt - 1]`` says."""

    name: str
    outcomes: tuple[tuple[str, ...], ...]
    log: str
    hang: float = 0.0
    cancel_aware: bool = False

    def __call__(self, ctx: Any) -> Any:
        key, index, attempt = ctx.key, ctx.index, ctx.attempt
        _log(self.log, ["item", self.name, key, attempt, sorted(ctx.results), index, ctx.item, _where(ctx)])
        mine = self.outcomes[index]
        kind = mine[attempt - 1] if attempt <= len(mine) else FAIL
        label = f"{self.name}[{key!r}]"
        if kind == OK:
            return item_value(self.name, key, attempt)
        if kind == ODD:
            raise OddError(label, attempt)
        if kind == HANG:
            self.do_hang(ctx)
            return item_value(self.name, key, attempt)  # a late value: must be ignored
        if kind == CRASH:
            os._exit(70)
        if kind == UNPICKLABLE:
            return threading.Lock()
        raise SoakFailure("item", label, attempt)

    def do_hang(self, ctx: Any) -> None:
        raise NotImplementedError  # per mode below; the base must not reference _HANG_RELEASE


@dataclasses.dataclass(frozen=True)
class ProcessItemFn(ItemFn):
    def do_hang(self, ctx: Any) -> None:
        if self.cancel_aware:
            _wait_cancellable(ctx, self.hang, time.sleep)
        else:
            time.sleep(self.hang)


@dataclasses.dataclass(frozen=True)
class ThreadItemFn(ItemFn):
    def do_hang(self, ctx: Any) -> None:
        if self.cancel_aware:
            _wait_cancellable(ctx, min(self.hang, MAX_HANG), _HANG_RELEASE.wait)
        else:
            _HANG_RELEASE.wait(min(self.hang, MAX_HANG))


@dataclasses.dataclass(frozen=True)
class UndoItemFn:
    """A map's compensation: logs the call, maybe takes its time, then follows the item's script."""

    name: str
    scripts: tuple[tuple[bool, ...], ...]
    log: str
    slow: float = 0.0

    def __call__(self, ctx: Any, value: Any) -> None:
        key, index, attempt = ctx.key, ctx.index, ctx.attempt
        where = _where(ctx)
        _log(self.log, ["item_compensate", self.name, key, attempt, sorted(ctx.results), value, index, ctx.item, where])
        if self.slow:
            time.sleep(self.slow)
        script = self.scripts[index]
        if not (attempt <= len(script) and script[attempt - 1]):
            raise SoakFailure("compensation", f"{self.name}[{key!r}]", attempt)


# ── plans: a random flow plus the faults injected into it ─────────────────────────


@dataclasses.dataclass(frozen=True)
class StepPlan:
    spec: StepSpec  # the script has False wherever a fault makes the attempt not complete
    outcomes: tuple[str, ...]
    where: str  # "thread" or "process": where the step (and its compensation) runs
    override: str | None  # the step's own executor option
    timeout: float | None
    short_timeout: bool
    hang: float
    cancel_aware: bool
    comp_slow: float
    comp_timeout: float | None


@dataclasses.dataclass(frozen=True)
class MapPlan:
    spec: MapSpec  # item scripts have False wherever a fault makes the attempt not complete
    outcomes: tuple[tuple[str, ...], ...]  # per item, per attempt
    where: str
    timeout: float | None  # the map's per-attempt timeout: short when an item may hang
    hang: float
    cancel_aware: bool
    comp_slow: float

    @property
    def short_timeout(self) -> bool:
        return self.timeout is not None


@dataclasses.dataclass
class RunPlan:
    seed: int
    mode: str
    max_workers: int | None
    spec: FlowSpec
    steps: dict[str, StepPlan]
    faults: collections.Counter[str]
    maps: dict[str, MapPlan] = dataclasses.field(default_factory=dict)

    @property
    def exact(self) -> bool:
        """No timing-dependent fault: statuses follow from the scripts alone."""
        return not any(p.short_timeout or p.comp_timeout is not None for p in self.steps.values()) and not any(
            m.short_timeout for m in self.maps.values()
        )

    @property
    def leeway(self) -> Leeway:
        """What the injected faults leave open, for ``check_result`` of ``tests/_randomflows.py``."""
        outcomes = [set(p.outcomes) for p in self.steps.values()]
        outcomes += [set(item) for m in self.maps.values() for item in m.outcomes]
        short = frozenset(name for name, p in self.steps.items() if p.short_timeout) | frozenset(
            name for name, m in self.maps.items() if m.short_timeout
        )
        return Leeway(
            timeouts=short | self.timed_subflows(self.spec, short),
            compensation_timeouts=frozenset(name for name, p in self.steps.items() if p.comp_timeout is not None),
            other_failures=any(not kinds <= {OK, FAIL} for kinds in outcomes),
            error_fits=self.error_fits,
        )

    def timed_subflows(self, spec: FlowSpec, short: frozenset[str]) -> frozenset[str]:
        """The subflow steps and maps (at any depth) with a short timeout somewhere inside:
        their child fails as the scripts say, but when is timing."""
        found: set[str] = set()
        for sub in spec.subflows():
            assert sub.child is not None
            below = self.timed_subflows(sub.child, short)
            found |= below
            inside = {m.name for f in sub.child.tree() for m in f.steps()} | {
                m.name for f in sub.child.tree() for m in f.maps()
            }
            if inside & short:
                found.add(sub.name)
        return frozenset(found)

    def error_fits(self, step: str, attempt: int, error: BaseException | None) -> bool:
        if step in self.steps:
            p = self.steps[step]
            return _error_fits(p.outcomes[attempt - 1], p.where, error)
        name, _, _ = step.partition("[")  # an item, by its label "map[key]"
        m = self.maps[name]
        for index in range(len(m.outcomes)):
            if m.spec.label(index) == step:
                return _error_fits(m.outcomes[index][attempt - 1], m.where, error)
        return False

    def outcome_of(self, call: tuple[Any, ...]) -> str:
        """What a logged step or item call was scripted to do."""
        if call[0] == "item":
            m = self.maps[call[1]]
            mine = m.outcomes[call[5]]
            return mine[call[3] - 1] if call[3] <= len(mine) else FAIL
        p = self.steps[call[1]]
        return p.outcomes[call[2] - 1] if call[2] <= len(p.outcomes) else FAIL

    def describe(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "mode": self.mode,
            "max_workers": self.max_workers,
            "stages": self.describe_stages(self.spec),
        }

    def describe_stages(self, spec: FlowSpec) -> list[dict[str, Any]]:
        stages: list[dict[str, Any]] = []
        for stage in spec.stages:
            if isinstance(stage, MapSpec) and stage.child is not None:
                stages.append(
                    {
                        "name": stage.name,
                        "map": stage.policy(),
                        "retries": stage.retries,
                        "subflow": self.describe_stages(stage.child),
                    }
                )
                continue
            if isinstance(stage, MapSpec):
                m = self.maps[stage.name]
                stages.append(
                    {
                        "name": stage.name,
                        "map": stage.policy(),
                        "retries": stage.retries,
                        "timeout": m.timeout,
                        "hang": m.hang,
                        "where": m.where,
                        "items": [list(o) for o in m.outcomes],
                        "compensations": [list(item.undo) for item in stage.items] if stage.compensate else None,
                    }
                )
                continue
            members: list[dict[str, Any]] = []
            for m in stage.members:
                if m.child is not None:
                    members.append(
                        {
                            "name": m.name,
                            "retries": m.retries,
                            "timeout": m.timeout,
                            "required": m.required,
                            "input": m.input,
                            "subflow": self.describe_stages(m.child),
                        }
                    )
                    continue
                p = self.steps[m.name]
                members.append(
                    {
                        "name": m.name,
                        "outcomes": list(p.outcomes),
                        "retries": m.retries,
                        "timeout": p.timeout,
                        "required": m.required,
                        "where": p.where,
                        "compensate": None
                        if m.compensate is None
                        else {
                            "script": list(m.compensate.script),
                            "retries": m.compensate.retries,
                            "slow": p.comp_slow,
                            "timeout": p.comp_timeout,
                        },
                    }
                )
            stages.append(
                {
                    "name": stage.name,
                    "group": stage.group,
                    "fail_fast": stage.fail_fast,
                    "min_successes": stage.min_successes,
                    "max_concurrency": stage.max_concurrency,
                    "members": members,
                }
            )
        return stages


def make_plan(seed: int) -> RunPlan:
    rng = random.Random(seed)
    mode = rng.choices(MODES, MODE_WEIGHTS)[0]
    max_members = 4 if mode == "process" else 6
    spec = random_flow_spec(
        rng,
        max_stages=5,
        max_members=max_members,
        name=f"soak-{seed}",
        max_items=6 if mode == "process" else 10,
        subflows=SUBFLOWS,
        subflow_timeout=SUBFLOW_TIMEOUT,
    )
    faulty = rng.random() < 0.6
    faults: collections.Counter[str] = collections.Counter()
    steps: dict[str, StepPlan] = {}
    maps: dict[str, MapPlan] = {}
    stages = plan_stages(rng, spec.stages, mode, faulty, steps, maps)
    max_workers = rng.choice((1, 2, 3, None)) if mode == "process" else rng.choice((None, 1, 2, 4, 8))
    return RunPlan(seed, mode, max_workers, FlowSpec(spec.name, stages), steps, faults, maps)


def plan_stages(
    rng: random.Random,
    stages: tuple[Stage, ...],
    mode: str,
    faulty: bool,
    steps: dict[str, StepPlan],
    maps: dict[str, MapPlan],
) -> tuple[Stage, ...]:
    """Faults on top of one flow's stages, and (the same faults) inside its children; the
    plans of every step and map of the tree go to ``steps`` and ``maps`` (names are unique)."""
    planned: list[Stage] = []
    for stage in stages:
        if isinstance(stage, MapSpec) and stage.child is not None:
            child = stage.child
            inner = plan_stages(rng, child.stages, mode, faulty, steps, maps)
            planned.append(dataclasses.replace(stage, child=dataclasses.replace(child, stages=inner)))
            continue
        if isinstance(stage, MapSpec):
            m = plan_map(rng, stage, "process" if mode == "process" else "thread", faulty)
            maps[stage.name] = m
            planned.append(m.spec)
            continue
        members: list[StepSpec] = []
        for m in stage.members:
            if m.child is not None:
                inner = plan_stages(rng, m.child.stages, mode, faulty, steps, maps)
                members.append(dataclasses.replace(m, child=dataclasses.replace(m.child, stages=inner)))
                continue
            override = None
            if rng.random() < 0.1:
                override = "thread" if mode == "process" else "process"
            where = override or ("process" if mode == "process" else "thread")
            outcomes = [OK if ok else FAIL for ok in m.script]
            timeout = m.timeout
            short = False
            hang = 0.0
            if faulty and rng.random() < 0.3:
                kinds = [ODD, HANG] + ([CRASH, UNPICKLABLE] if where == "process" else [])
                kind = rng.choice(kinds)
                outcomes[rng.randrange(len(outcomes))] = kind
                if kind == HANG:
                    timeout = round(rng.uniform(0.1, 0.3), 3)
                    short = True
                    hang = round(rng.uniform(1.0, MAX_HANG), 3)
            comp = m.compensate
            comp_slow = 0.0
            comp_timeout = None
            if comp is not None and faulty:
                roll = rng.random()
                if roll < 0.15:
                    comp_slow = round(rng.uniform(0.02, 0.15), 3)
                elif roll < 0.25:
                    comp_slow = round(rng.uniform(1.0, MAX_HANG), 3)
                    comp_timeout = round(rng.uniform(0.1, 0.3), 3)
            script = tuple(o == OK for o in outcomes)
            new = dataclasses.replace(m, script=script, timeout=timeout)
            members.append(new)
            steps[m.name] = StepPlan(
                new,
                tuple(outcomes),
                where,
                override,
                timeout,
                short,
                hang,
                rng.random() < 0.5,
                comp_slow,
                comp_timeout,
            )
        planned.append(dataclasses.replace(stage, members=tuple(members)))
    return tuple(planned)


def plan_map(rng: random.Random, spec: MapSpec, where: str, faulty: bool) -> MapPlan:
    """Faults on top of a random map's scripts: items that raise odd exceptions, hang past
    the map's short timeout, crash their worker or return what cannot be pickled."""
    outcomes: list[tuple[str, ...]] = []
    hangs = False
    for item in spec.items:
        mine = [OK if ok else FAIL for ok in item.script]
        if faulty and rng.random() < 0.2:
            kind = rng.choice([ODD, HANG] + ([CRASH, UNPICKLABLE] if where == "process" else []))
            mine[rng.randrange(len(mine))] = kind
            hangs = hangs or kind == HANG
        outcomes.append(tuple(mine))
    items = tuple(
        ItemSpec(tuple(o == OK for o in mine), item.undo) for mine, item in zip(outcomes, spec.items, strict=True)
    )
    return MapPlan(
        spec=dataclasses.replace(spec, items=items),
        outcomes=tuple(outcomes),
        where=where,
        timeout=round(rng.uniform(0.1, 0.3), 3) if hangs else None,
        hang=round(rng.uniform(1.0, MAX_HANG), 3) if hangs else 0.0,
        cancel_aware=rng.random() < 0.5,
        comp_slow=round(rng.uniform(0.02, 0.15), 3) if faulty and spec.compensate and rng.random() < 0.15 else 0.0,
    )


def build(plan: RunPlan, log: str) -> Flow:
    def member(m: StepSpec) -> tuple[StepFn, dict[str, Any]]:
        p = plan.steps[m.name]
        step_cls = ProcessStepFn if p.where == "process" else ThreadStepFn
        comp_cls = CompFn if p.where == "process" else ThreadCompFn
        fn = step_cls(m.name, p.outcomes, log, p.hang, p.cancel_aware)
        options: dict[str, Any] = {"retries": m.retries}
        if p.timeout is not None:
            options["timeout"] = p.timeout
        if p.override is not None:
            options["executor"] = p.override
        if m.compensate is not None:
            options["compensate"] = comp_cls(m.name, m.compensate.script, log, p.comp_slow)
            options["compensate_retries"] = m.compensate.retries
            if p.comp_timeout is not None:
                options["compensate_timeout"] = p.comp_timeout
        return fn, options

    def mapper(stage: MapSpec) -> tuple[ItemFn, dict[str, Any]]:
        m = plan.maps[stage.name]
        item_cls = ProcessItemFn if m.where == "process" else ThreadItemFn
        fn = item_cls(stage.name, m.outcomes, log, m.hang, m.cancel_aware)
        options: dict[str, Any] = {"retries": stage.retries}
        if m.timeout is not None:
            options["timeout"] = m.timeout
        if stage.compensate:
            scripts = tuple(item.undo for item in stage.items)
            options["compensate"] = UndoItemFn(stage.name, scripts, log, m.comp_slow)
            options["compensate_retries"] = stage.compensate_retries
        return fn, options

    return assemble(plan.spec, member, mapper)


def read_log(path: str) -> list[tuple[Any, ...]]:
    """The call log as ``tests/_randomflows.py``'s ``CallLog`` records it."""
    calls: list[tuple[Any, ...]] = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as file:
        for line in file:
            if not line.endswith("\n"):
                break  # a write still in progress
            *entry, (flow, token) = json.loads(line)
            where = Where(flow, tuple(token))
            if entry[0] == "step":
                calls.append(("step", entry[1], entry[2], frozenset(entry[3]), where))
            elif entry[0] == "compensate":
                calls.append(("compensate", entry[1], entry[2], frozenset(entry[3]), entry[4], where))
            elif entry[0] == "item":
                calls.append(("item", entry[1], entry[2], entry[3], frozenset(entry[4]), entry[5], entry[6], where))
            else:
                calls.append(("item_compensate", *entry[1:4], frozenset(entry[4]), *entry[5:], where))
    return calls


def call_id(call: tuple[Any, ...]) -> tuple[str, str, int]:
    """(kind, step or item label, attempt) of a logged call."""
    if call[0] in ("item", "item_compensate"):
        return (call[0], f"{call[1]}[{call[2]!r}]", call[3])
    return (call[0], call[1], call[2])


# ── the invariants (the checks are tests/_randomflows.py's check_result) ─────────


def _error_fits(kind: str, where: str, error: BaseException | None) -> bool:
    if kind == FAIL:
        return isinstance(error, ScriptedFailure)
    if kind == ODD:
        if where == "process":
            return isinstance(error, RemoteError) and "OddError" in error.type_name
        return isinstance(error, OddError)
    if kind == CRASH:
        return isinstance(error, WorkerCrashedError)
    if kind == UNPICKLABLE:
        return isinstance(error, UnpicklableResultError)
    return False


def child_results(result: FlowResult, depth: int = 1) -> list[tuple[int, FlowResult]]:
    """Every child run's ``FlowResult`` below ``result`` (the last attempt's), with its depth."""
    found: list[tuple[int, FlowResult]] = []
    subs = [r.subflow for r in result.steps.values()]
    subs += [item.subflow for m in result.maps.values() for item in m.items]
    for sub in subs:
        if sub is not None:
            found += [(depth, sub), *child_results(sub, depth + 1)]
    return found


def late_calls_allowed(result: FlowResult) -> set[tuple[str, str, int]]:
    """Calls that may still appear after the run: only attempts the run counted (in a
    child's too: step names are unique in the whole tree)."""
    allowed: set[tuple[str, str, int]] = set()
    for name, r in result.steps.items():
        allowed |= {("step", name, n) for n in range(1, r.attempts + 1)}
        if r.compensation is not None:
            allowed |= {("compensate", name, n) for n in range(1, r.compensation.attempts + 1)}
        if r.subflow is not None:
            allowed |= late_calls_allowed(r.subflow)
    for name, m in result.maps.items():
        for item in m.items:
            if item.subflow is not None:
                allowed |= late_calls_allowed(item.subflow)
            label = f"{name}[{item.key!r}]"
            allowed |= {("item", label, n) for n in range(1, item.attempts + 1)}
            if item.compensation is not None:
                allowed |= {("item_compensate", label, n) for n in range(1, item.compensation.attempts + 1)}
    return allowed


# ── sampling ──────────────────────────────────────────────────────────────────────


def lane_pids() -> set[int]:
    process = sys.modules.get("flowpool._executors._process")
    if process is None:
        return set()
    pids: set[int] = process._POOL.pids()
    return pids


def _is_tracker(child: psutil.Process) -> bool:
    try:
        return any("resource_tracker" in part for part in child.cmdline())
    except psutil.Error:
        return False


def describe_fds() -> dict[str, int]:
    """Open descriptors by kind (pipe, socket, anon_inode:…, or the file's directory)."""
    kinds = collections.Counter[str]()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            kind = target.split(":[")[0] if ":[" in target else os.path.dirname(target) or target
            kinds[kind] += 1
    return dict(sorted(kinds.items()))


def flag_files() -> int:
    directory = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return len(list(directory.glob(f"flowpool-{os.getpid()}-lane*")))


def sample(elapsed: float, runs: int) -> dict[str, Any]:
    me = psutil.Process()
    lanes = lane_pids()
    others = []
    zombies = 0
    for child in me.children(recursive=True):
        if child.pid in lanes or _is_tracker(child):
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies += 1
        except psutil.Error:
            continue
        others.append(child.pid)
    from flowpool._executors._threads import abandoned_threads

    return {
        "elapsed": round(elapsed, 2),
        "runs": runs,
        "threads": threading.active_count(),
        "os_threads": me.num_threads(),
        "lanes": len(lanes),
        "children": len(others),
        "zombies": zombies,
        "fds": me.num_fds(),
        "rss_mb": round(me.memory_info().rss / 2**20, 1),
        "abandoned_threads": abandoned_threads(),
        "flag_files": flag_files(),
    }


# ── the soak ──────────────────────────────────────────────────────────────────────


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.stop = threading.Event()
        self.tmp = tempfile.mkdtemp(prefix="flowpool-soak-")
        self.user_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.runs = 0
        self.runs_by = collections.Counter[str]()
        self.steps = 0
        self.maps = 0
        self.subflows = 0  # child runs checked (their FlowResults), at every depth
        self.child_steps = 0
        self.depths = collections.Counter[int]()
        self.items = 0
        self.calls = 0
        self.compensation_calls = 0
        self.faults = collections.Counter[str]()
        self.violations: list[dict[str, Any]] = []
        self.violation_count = 0
        self.leaks: list[str] = []
        self.samples: list[dict[str, Any]] = []
        self.late: collections.deque[tuple[float, str, int, set[tuple[str, str, int]], int]] = collections.deque()
        self.current: dict[int, tuple[int, float]] = {}
        self.started = 0.0
        self.hung_runs: list[int] = []
        self.durations: list[float] = []

    # one run
    def run_one(self, seed: int, record: bool = True) -> list[str]:
        plan = make_plan(seed)
        log = os.path.join(self.tmp, f"{seed}.log")
        flow = build(plan, log)
        events: list[Any] = []
        kwargs: dict[str, Any] = {"max_workers": plan.max_workers, "on_event": events.append}
        if plan.mode == "process":
            kwargs["executor"] = "process"
        elif plan.mode == "user-pool":
            assert self.user_pool is not None
            kwargs = {"executor": self.user_pool, "on_event": events.append}
        began = time.monotonic()
        try:
            result = flow.run({"seed": seed}, **kwargs)
        except BaseException as error:
            problems = [f"run raised {type(error).__name__}: {error}\n{traceback.format_exc()}"]
            self.record(plan, problems, [], record)
            return problems
        with self.lock:
            self.durations.append(time.monotonic() - began)
        calls = read_log(log)
        problems = check_result(plan.spec, result, calls, events=events, leeway=plan.leeway)
        if record:
            with self.lock:
                self.late.append(
                    (time.monotonic() + LATE_CHECK_DELAY, log, len(calls), late_calls_allowed(result), seed)
                )
        self.count(plan, result, calls)
        self.record(plan, problems, calls, record)
        return problems

    def count(self, plan: RunPlan, result: FlowResult, calls: list[tuple[Any, ...]]) -> None:
        triggered: collections.Counter[str] = collections.Counter()
        for call in calls:
            if call[0] in ("step", "item"):
                kind = plan.outcome_of(call)
                triggered["exception" if kind == FAIL else kind] += 1
            elif call[0] == "item_compensate":
                triggered["item-compensation"] += 1
            else:
                p = plan.steps[call[1]]
                if p.comp_timeout is not None:
                    triggered["compensation-timeout"] += 1
                elif p.comp_slow:
                    triggered["slow-compensation"] += 1
                member = p.spec
                assert member.compensate is not None
                script = member.compensate.script
                if not (call[2] <= len(script) and script[call[2] - 1]):
                    triggered["failing-compensation"] += 1
        triggered.pop(OK, None)
        with self.lock:
            self.runs += 1
            self.runs_by[f"mode:{plan.mode}"] += 1
            self.runs_by[f"status:{result.status.value}"] += 1
            self.runs_by["exact" if plan.exact else "timing-dependent"] += 1
            self.steps += len(result.steps)
            self.items += sum(m.total for m in result.maps.values())
            self.maps += len(result.maps)
            for depth, child in child_results(result):
                self.subflows += 1
                self.child_steps += len(child.steps)
                self.depths[depth] += 1
            self.runs_by.update(f"map:{m.status.value}" for m in result.maps.values())
            self.runs_by["map:stopped_early"] += sum(m.stopped_early for m in result.maps.values())
            self.calls += sum(1 for c in calls if c[0] in ("step", "item"))
            self.compensation_calls += sum(1 for c in calls if c[0] in ("compensate", "item_compensate"))
            self.faults.update(triggered)

    def record(self, plan: RunPlan, problems: list[str], calls: list[tuple[Any, ...]], record: bool) -> None:
        if not problems or not record:
            return
        with self.lock:
            self.violation_count += len(problems)
            if len(self.violations) < 10:
                self.violations.append({"seed": plan.seed, "mode": plan.mode, "problems": problems[:20]})

    def check_late(self, force: bool = False) -> None:
        now = time.monotonic()
        while True:
            with self.lock:
                if not self.late or (not force and self.late[0][0] > now):
                    return
                _, log, seen, allowed, seed = self.late.popleft()
            calls = read_log(log)
            extra = calls[seen:]
            keys = {(call_id(c), c[-1]) for c in calls[:seen]}  # the same call of the same (child) run
            bad = [call_id(c) for c in extra if call_id(c) not in allowed or (call_id(c), c[-1]) in keys]
            if bad:
                with self.lock:
                    self.violation_count += 1
                    if len(self.violations) < 10:
                        self.violations.append(
                            {"seed": seed, "mode": "?", "problems": [f"calls after the run returned: {bad}"]}
                        )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log)

    def take_sample(self) -> None:
        s = sample(time.monotonic() - self.started, self.runs)
        with self.lock:
            self.samples.append(s)

    # the loop of one runner thread
    def runner(self, number: int, deadline: float) -> None:
        base = self.args.seed * 1_000_003
        while time.monotonic() < deadline and not self.stop.is_set():
            index = next(self.counter)
            seed = base + index
            with self.lock:
                self.current[number] = (seed, time.monotonic())
            try:
                self.run_one(seed)
            except Exception:
                with self.lock:
                    self.violation_count += 1
                    self.violations.append(
                        {"seed": seed, "mode": "?", "problems": [f"soak error: {traceback.format_exc()}"]}
                    )
            with self.lock:
                self.current.pop(number, None)
            if (index + 1) % self.args.sample_every == 0:
                self.take_sample()

    def warm_up(self) -> None:
        """Load everything lazily loaded (loky, its resource tracker, tenacity), then go idle."""
        for seed in range(3):
            flow = Flow(f"warm-{seed}").step("a", _warm_step).parallel("g", [Step("b", _warm_step)])
            flow.run(executor="process", max_workers=2)
            flow.run()
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                flow.run(executor=pool)
        flowpool.shutdown_workers()

    def settle(self, condition: Callable[[], bool], limit: float) -> bool:
        end = time.monotonic() + limit
        while not condition():
            if time.monotonic() > end:
                return False
            self.stop.wait(0.1)
        return True

    def main(self) -> int:
        args = self.args
        self.warm_up()
        self.settle(lambda: threading.active_count() <= 1 + _reaper_alive(), 10)
        baseline = sample(0.0, 0)
        baseline_fds = describe_fds()
        self.user_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=8 * args.concurrency, thread_name_prefix="soak-user-pool"
        )
        self.started = time.monotonic()
        deadline = self.started + args.duration
        runners: dict[int, threading.Thread] = {}

        def start_runner(number: int) -> None:
            thread = threading.Thread(
                target=self.runner, args=(number, deadline), name=f"soak-runner-{number}", daemon=True
            )
            runners[number] = thread
            thread.start()

        for number in range(args.concurrency):
            start_runner(number)
        hung: dict[int, int] = {}  # runner number -> seed of its hung run
        try:
            while any(t.is_alive() for n, t in runners.items() if n not in hung):
                self.check_late()
                now = time.monotonic()
                with self.lock:
                    current = dict(self.current)
                for number, (seed, since) in current.items():
                    if number in hung or now - since <= RUN_LIMIT:
                        continue
                    hung[number] = seed
                    self.hung_runs.append(seed)
                    with self.lock:
                        self.violation_count += 1
                        self.violations.append(
                            {
                                "seed": seed,
                                "mode": make_plan(seed).mode,
                                "problems": [f"run still running after {RUN_LIMIT:.0f} s (hung)"],
                            }
                        )
                    if now < deadline:
                        start_runner(len(runners))  # keep the concurrency; the hung thread is a daemon
                self.stop.wait(0.25)
        except KeyboardInterrupt:
            self.stop.set()
            for thread in runners.values():
                thread.join(RUN_LIMIT)
        elapsed = time.monotonic() - self.started
        self.take_sample()
        busy = self.samples[-1]

        # Idle: release abandoned hangs, let them finish, read late calls.
        _HANG_RELEASE.set()
        from flowpool._executors import _process
        from flowpool._executors._threads import abandoned_threads

        if not self.settle(lambda: abandoned_threads() == 0, 15):
            self.leaks.append(f"{abandoned_threads()} abandoned thread-mode attempts still running when idle")
        self.check_late(force=True)
        if not self.settle(lambda: sample(0, 0)["children"] == 0, 15):
            self.leaks.append(f"child processes other than lane workers when idle: {sample(0, 0)}")
        pool = _process._POOL
        if not self.settle(lambda: pool.size() == len(pool._idle), 10):
            self.leaks.append(f"{pool.size() - len(pool._idle)} lanes still busy when idle")
        idle_with_lanes = sample(elapsed, self.runs)
        self.user_pool.shutdown(wait=True, cancel_futures=True)
        flowpool.shutdown_workers()

        def back_to_baseline() -> bool:
            s = sample(0, 0)
            return (
                s["threads"] <= baseline["threads"]
                and s["os_threads"] <= baseline["os_threads"]
                and s["fds"] <= baseline["fds"]
                and s["children"] == 0
                and s["lanes"] == 0
                and s["flag_files"] == 0
            )

        if not self.settle(back_to_baseline, 20):
            final = sample(elapsed, self.runs)
            for key in ("threads", "os_threads", "fds", "flag_files"):
                if final[key] > baseline[key]:
                    self.leaks.append(f"{key}: {final[key]} when idle, baseline {baseline[key]}")
            for key in ("children", "lanes"):
                if final[key]:
                    self.leaks.append(f"{key}: {final[key]} after shutdown_workers()")
            if final["fds"] > baseline["fds"]:
                self.leaks.append(f"open descriptors: {describe_fds()} (baseline: {baseline_fds})")
            if final["threads"] > baseline["threads"]:
                names = sorted(t.name for t in threading.enumerate())
                self.leaks.append(f"threads alive: {names}")
        final = sample(elapsed, self.runs)
        live = _live_engine_objects()
        if live:
            self.leaks.append(f"engine objects still alive when idle: {live}")
        memory = self.memory_check(args.duration)
        if self.hung_runs and self.leaks:
            self.leaks.append(f"(the {len(self.hung_runs)} hung runs still hold their threads and objects)")
        shutil.rmtree(self.tmp, ignore_errors=True)
        summary = {
            "duration": round(elapsed, 1),
            "concurrency": args.concurrency,
            "seed": args.seed,
            "runs": self.runs,
            "runs_by": dict(sorted(self.runs_by.items())),
            "steps": self.steps,
            "maps": self.maps,
            "subflows": self.subflows,
            "child_steps": self.child_steps,
            "subflows_by_depth": dict(sorted(self.depths.items())),
            "items": self.items,
            "step_calls": self.calls,
            "compensation_calls": self.compensation_calls,
            "faults": dict(sorted(self.faults.items())),
            "violations": self.violation_count,
            "violation_examples": self.violations,
            "hung_runs": self.hung_runs,
            "run_seconds": {
                "mean": round(statistics.fmean(self.durations), 3) if self.durations else None,
                "max": round(max(self.durations), 3) if self.durations else None,
            },
            "leaks": len(self.leaks),
            "leak_details": self.leaks,
            "memory": memory,
            "baseline": baseline,
            "busy_at_end": busy,
            "idle_with_lanes": idle_with_lanes,
            "idle_after_shutdown": final,
            "samples": len(self.samples),
            "peak": {k: max(s[k] for s in self.samples) for k in ("threads", "os_threads", "lanes", "children", "fds")}
            if self.samples
            else {},
        }
        if args.json:
            summary["sample_log"] = self.samples
            print(json.dumps(summary, indent=2, default=str))
        else:
            print_summary(summary)
        return 1 if self.violation_count or self.leaks else 0

    def memory_check(self, duration: float) -> dict[str, Any]:
        warm = max(5.0, 0.25 * duration)
        after = [s for s in self.samples if s["elapsed"] >= warm]
        if len(after) < 4:
            return {"checked": False, "reason": f"only {len(after)} samples after {warm:.0f} s of warm-up"}
        head = statistics.median(s["rss_mb"] for s in after[:3])
        tail = statistics.median(s["rss_mb"] for s in after[-3:])
        tolerance = max(self.args.memory_tolerance_mb, 0.2 * head)
        growth = tail - head
        if growth > tolerance:
            self.leaks.append(f"memory grew {growth:.1f} MB after warm-up ({head:.1f} -> {tail:.1f} MB)")
        return {
            "checked": True,
            "after_warm_up_mb": head,
            "at_end_mb": tail,
            "growth_mb": round(growth, 1),
            "tolerance_mb": round(tolerance, 1),
        }


def _warm_step(ctx: Any) -> int:
    return 1


def _reaper_alive() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "flowpool-lane-reaper")


def _live_engine_objects() -> dict[str, int]:
    from flowpool import _attempt, _runner

    gc.collect()
    kinds = {"Attempt": _attempt.Attempt, "_Run": _runner._Run, "_StepRun": _runner._StepRun}
    counts = collections.Counter[str]()
    for obj in gc.get_objects():
        for name, kind in kinds.items():
            if type(obj) is kind:
                counts[name] += 1
    return dict(counts)


def print_summary(s: dict[str, Any]) -> None:
    print(f"flowpool soak: {s['duration']} s, {s['concurrency']} runners, seed {s['seed']}")
    print(f"  runs: {s['runs']}  ({', '.join(f'{k} {v}' for k, v in s['runs_by'].items())})")
    print(f"  steps: {s['steps']}  maps: {s['maps']} ({s['items']} items)")
    print(f"  child runs: {s['subflows']} by depth {s['subflows_by_depth']} ({s['child_steps']} steps)")
    print(f"  step and item calls: {s['step_calls']}  compensation calls: {s['compensation_calls']}")
    print(f"  faults injected: {', '.join(f'{k} {v}' for k, v in s['faults'].items()) or 'none'}")
    print(f"  run seconds: {s['run_seconds']}  hung runs: {s['hung_runs'] or 'none'}")
    print(f"  peak while running: {s['peak']}")
    keys = ("threads", "os_threads", "children", "lanes", "fds", "rss_mb", "flag_files")
    for label in ("baseline", "idle_with_lanes", "idle_after_shutdown"):
        print(f"  {label}: " + ", ".join(f"{k} {s[label][k]}" for k in keys))
    print(f"  memory: {s['memory']}")
    print(f"  violations: {s['violations']}")
    for v in s["violation_examples"]:
        print(f"    seed {v['seed']} ({v['mode']}):")
        for p in v["problems"][:8]:
            print(f"      - {p}")
    print(f"  leaks: {s['leaks']}")
    for leak in s["leak_details"]:
        print(f"    - {leak}")
    print("OK" if not s["violations"] and not s["leaks"] else "FAILED")


def replay(seed: int) -> int:
    soak = Soak(argparse.Namespace(seed=0, sample_every=10**9, memory_tolerance_mb=0))
    soak.user_pool = concurrent.futures.ThreadPoolExecutor(8)
    plan = make_plan(seed)
    print(json.dumps(plan.describe(), indent=1))
    try:
        problems = soak.run_one(seed, record=False)
    finally:
        _HANG_RELEASE.set()
        soak.user_pool.shutdown()
        flowpool.shutdown_workers()
        shutil.rmtree(soak.tmp, ignore_errors=True)
    print("\n".join(problems) or "no problems")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds to keep starting runs (600)")
    parser.add_argument("--concurrency", type=int, default=4, help="threads each looping runs (4)")
    parser.add_argument("--seed", type=int, default=None, help="base seed (random by default)")
    parser.add_argument("--sample-every", type=int, default=20, help="sample resources every N runs (20)")
    parser.add_argument("--memory-tolerance-mb", type=float, default=48.0, help="allowed RSS growth (48)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary")
    parser.add_argument("--replay", type=int, default=None, metavar="SEED", help="run one flow again and check it")
    args = parser.parse_args(argv)
    if args.replay is not None:
        return replay(args.replay)
    if args.duration <= 0 or args.concurrency < 1 or args.sample_every < 1:
        parser.error("--duration must be > 0, --concurrency and --sample-every >= 1")
    if args.seed is None:
        args.seed = random.randrange(1, 10**6)
    try:
        return Soak(args).main()
    finally:
        _HANG_RELEASE.set()
        flowpool.shutdown_workers()


if __name__ == "__main__":
    sys.exit(main())
