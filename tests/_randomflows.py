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
``check_result`` checks a ``FlowResult`` and the call log against it and against
the SPEC's rules, returning a list of human-readable problems (empty when fine).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowpool import Flow, FlowResult, FlowStatus, GroupStatus, Step, StepStatus

__all__ = [
    "CallLog",
    "Chooser",
    "DrawChooser",
    "RandomChooser",
    "CompensationSpec",
    "Expectation",
    "FlowSpec",
    "ScriptedFailure",
    "StageSpec",
    "StepSpec",
    "BuiltFlow",
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
        tries = 1 + self.retries
        for number in range(1, tries + 1):
            if _scripted(self.script, number):
                return True, number
        return False, tries


@dataclass(frozen=True)
class StepSpec:
    """One step; ``script[n - 1]`` is True when attempt ``n`` returns a value."""

    name: str
    script: tuple[bool, ...]
    retries: int = 0
    timeout: float | None = None
    compensate: CompensationSpec | None = None
    required: bool = False

    def natural(self) -> tuple[bool, int]:
        """(completed, attempts) when nothing cuts the step short."""
        tries = 1 + self.retries
        for number in range(1, tries + 1):
            if _scripted(self.script, number):
                return True, number
        return False, tries


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
class FlowSpec:
    name: str
    stages: tuple[StageSpec, ...]

    def steps(self) -> list[StepSpec]:
        return [m for stage in self.stages for m in stage.members]

    def stage_of(self) -> dict[str, StageSpec]:
        return {m.name: stage for stage in self.stages for m in stage.members}


def _scripted(script: Sequence[bool], number: int) -> bool:
    return number <= len(script) and script[number - 1]


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
) -> FlowSpec:
    """A random flow description: 1..max_stages stages, groups of 1..max_members.

    ``source`` is a ``random.Random`` or a ``Chooser`` (``DrawChooser(draw)`` inside
    a hypothesis ``@st.composite`` strategy).
    """
    c = RandomChooser(source) if isinstance(source, random.Random) else source
    stages: list[StageSpec] = []
    for s in range(c.integer(1, max_stages)):
        is_group = c.chance(0.5)
        count = c.integer(1, max_members) if is_group else 1
        members = tuple(
            random_step_spec(c, f"s{s}" if not is_group else f"s{s}m{i}", is_group, timeouts) for i in range(count)
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
        stages.append(StageSpec(f"g{s}", members, True, fail_fast, min_successes, max_concurrency))
    return FlowSpec(name, tuple(stages))


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
        log.add("step", spec.name, attempt, frozenset(ctx.results))
        if _scripted(spec.script, attempt):
            return step_value(spec.name, attempt)
        raise ScriptedFailure("step", spec.name, attempt)

    return fn


def _compensate_fn(spec: StepSpec, log: CallLog) -> Callable[[Any, Any], None]:
    assert spec.compensate is not None
    script = spec.compensate.script

    def compensate(ctx: Any, value: Any) -> None:
        attempt = ctx.attempt
        log.add("compensate", spec.name, attempt, frozenset(ctx.results), value)
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


def build_flow(spec: FlowSpec) -> BuiltFlow:
    """The ``Flow`` described by ``spec``; its functions record into ``built.log``."""
    log = CallLog()
    flow = Flow(spec.name)
    for stage in spec.stages:
        if not stage.group:
            (member,) = stage.members
            flow.step(member.name, _step_fn(member, log), **_options(member, log))
            continue
        members: list[Any] = []
        for i, member in enumerate(stage.members):
            options = _options(member, log)
            if member.required:
                options["required"] = True
            if i % 2:  # both member forms of the SPEC: Step objects and mappings
                members.append({"name": member.name, "fn": _step_fn(member, log), **options})
            else:
                members.append(Step(member.name, _step_fn(member, log), **options))
        flow.parallel(
            stage.name,
            members,
            fail_fast=stage.fail_fast,
            min_successes=stage.min_successes,
            max_concurrency=stage.max_concurrency,
        )
    return BuiltFlow(spec, flow, log)


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


def expected_outcome(spec: FlowSpec) -> Expectation:
    """The oracle: the flow's outcome from the scripts alone."""
    failed_stage: str | None = None
    groups: dict[str, GroupStatus] = {}
    steps: dict[str, tuple[StepStatus, int] | None] = {}
    for stage in spec.stages:
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
    return Expectation(status, failed_stage, groups, steps)


# ── checking a result ───────────────────────────────────────────────────────────


def check_result(spec: FlowSpec, result: FlowResult, calls: Sequence[tuple[Any, ...]]) -> list[str]:
    """Every way ``result`` and the call log break the SPEC for ``spec``; empty when none."""
    problems: list[str] = []

    def expect(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    exp = expected_outcome(spec)
    all_steps = spec.steps()
    names = [m.name for m in all_steps]
    stage_of = spec.stage_of()
    step_calls: dict[str, list[tuple[Any, ...]]] = {n: [] for n in names}
    comp_calls: list[tuple[Any, ...]] = []
    for call in calls:
        (step_calls[call[1]] if call[0] == "step" else comp_calls).append(call)

    # Every step, in declaration order, with a final status; every group.
    expect(list(result.steps) == names, f"result.steps order {list(result.steps)} != declared {names}")
    if set(result.steps) != set(names):
        return problems
    group_names = [s.name for s in spec.stages if s.group]
    expect(set(result.groups) == set(group_names), f"result.groups {list(result.groups)} != {group_names}")
    final = set(StepStatus)
    for m in all_steps:
        r = result.steps[m.name]
        stage = stage_of[m.name]
        expect(r.name == m.name, f"{m.name}: StepResult.name is {r.name!r}")
        expect(r.status in final, f"{m.name}: status {r.status!r} is not a final StepStatus")
        expect(r.group == (stage.name if stage.group else None), f"{m.name}: group is {r.group!r}")

    # Flow status, ok, failed stage.
    expect(result.status is exp.status, f"flow status {result.status} != expected {exp.status}")
    expect(result.ok == (exp.status is FlowStatus.COMPLETED), f"result.ok is {result.ok} with status {result.status}")
    expect(
        result.failed_stage == exp.failed_stage,
        f"failed_stage {result.failed_stage!r} != expected {exp.failed_stage!r}",
    )
    expect((result.error is None) == result.ok, f"error {result.error!r} with status {result.status}")

    # Groups: verdict from the actual member statuses, and from the oracle.
    for stage in spec.stages:
        if not stage.group or stage.name not in result.groups:
            continue
        g = result.groups[stage.name]
        members = tuple(m.name for m in stage.members)
        expect(g.members == members, f"group {stage.name}: members {g.members} != {members}")
        statuses = [result.steps[n].status for n in members]
        if g.status is not GroupStatus.SKIPPED:
            rule = spec_verdict(stage, statuses)
            expect(
                g.status is rule,
                f"group {stage.name}: verdict {g.status} but the SPEC rule gives {rule} for member statuses "
                f"{[str(s) for s in statuses]}",
            )
        expect(
            g.status is exp.groups[stage.name],
            f"group {stage.name}: verdict {g.status} != expected {exp.groups[stage.name]}",
        )

    # Steps: status and attempts against the oracle, the call log, and the retry bound.
    completed_names = {n for n in names if result.steps[n].status is StepStatus.COMPLETED}
    earlier_completed: dict[str, frozenset[str]] = {}
    done: set[str] = set()
    for stage in spec.stages:
        for m in stage.members:
            earlier_completed[m.name] = frozenset(done)
        done |= {m.name for m in stage.members if m.name in completed_names}
    for m in all_steps:
        r = result.steps[m.name]
        mine = step_calls[m.name]
        expect(0 <= r.attempts <= 1 + m.retries, f"{m.name}: {r.attempts} attempts with retries={m.retries}")
        expect(r.attempts == len(mine), f"{m.name}: attempts {r.attempts} but called {len(mine)} times")
        numbers = [c[2] for c in mine]
        expect(numbers == list(range(1, len(mine) + 1)), f"{m.name}: ctx.attempt sequence {numbers}")
        for c in mine:
            expect(
                c[3] == earlier_completed[m.name],
                f"{m.name}: ctx.results keys {sorted(c[3])} != completed earlier steps "
                f"{sorted(earlier_completed[m.name])}",
            )
        predicted = exp.steps[m.name]
        if predicted is not None:
            status, attempts = predicted
            expect(
                (r.status, r.attempts) == (status, attempts),
                f"{m.name}: {r.status} after {r.attempts} attempts, expected {status} after {attempts}",
            )
        else:
            _check_racing_member(m, r, expect)
        if r.status is StepStatus.COMPLETED:
            expect(r.value == step_value(m.name, r.attempts), f"{m.name}: value {r.value!r}")
            expect(r.error is None, f"{m.name}: completed with error {r.error!r}")
        else:
            expect(r.value is None, f"{m.name}: value {r.value!r} though {r.status}")
        if r.status is StepStatus.FAILED:
            e = r.error
            expect(
                isinstance(e, ScriptedFailure) and e.attempt == r.attempts,
                f"{m.name}: failed with error {e!r}, not the last attempt's ScriptedFailure",
            )
        if r.status is StepStatus.SKIPPED:
            expect(r.attempts == 0 and not mine, f"{m.name}: skipped but ran {len(mine)} times")
    expect(dict(result.values) == {n: result.steps[n].value for n in completed_names}, "result.values mismatch")

    # Racing fail-fast groups: the group still fails exactly when some member did not complete.
    for stage in spec.stages:
        if stage.group and stage.fail_fast and not stage.deterministic and stage.name in result.groups:
            rs = [result.steps[m.name] for m in stage.members]
            if any(r.status is not StepStatus.COMPLETED for r in rs) and result.groups[stage.name].status is not (
                GroupStatus.SKIPPED
            ):
                triggers = [
                    m.name
                    for m, r in zip(stage.members, rs, strict=True)
                    if r.status is StepStatus.FAILED and r.attempts == m.natural()[1] and not m.natural()[0]
                ]
                expect(bool(triggers), f"group {stage.name}: members were cut short but none failed on its own")

    # Later stages after a failure: skipped, never called.
    if exp.failed_stage is not None:
        index = [s.name for s in spec.stages].index(exp.failed_stage)
        for stage in spec.stages[index + 1 :]:
            for m in stage.members:
                expect(result.steps[m.name].status is StepStatus.SKIPPED, f"{m.name}: {result.steps[m.name].status}")
                expect(not step_calls[m.name], f"{m.name}: called after the flow failed")
            if stage.group:
                expect(
                    result.groups[stage.name].status is GroupStatus.SKIPPED,
                    f"group {stage.name}: {result.groups[stage.name].status} after the flow failed",
                )

    _check_compensation(spec, result, comp_calls, completed_names, expect)
    return problems


def _check_racing_member(m: StepSpec, r: Any, expect: Callable[[bool, str], None]) -> None:
    ok, natural_attempts = m.natural()
    if r.status is StepStatus.CANCELLED:
        expect(r.attempts == 0, f"{m.name}: cancelled after {r.attempts} attempts")
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
    completed_names: set[str],
    expect: Callable[[bool, str], None],
) -> None:
    all_steps = spec.steps()
    if result.ok:
        expect(not comp_calls, f"compensations ran for a completed flow: {comp_calls}")
        expect(result.compensated == () and result.not_compensated == (), "compensated/not_compensated not empty")
        for m in all_steps:
            expect(result.steps[m.name].compensation is None, f"{m.name}: compensation set on a completed flow")
        return
    due = [m for m in reversed(all_steps) if m.compensate is not None and m.name in completed_names]
    expected_calls: list[tuple[str, int]] = []
    good: list[str] = []
    bad: list[str] = []
    for m in due:
        assert m.compensate is not None
        ok, attempts = m.compensate.outcome()
        expected_calls += [(m.name, n) for n in range(1, attempts + 1)]
        (good if ok else bad).append(m.name)
        c = result.steps[m.name].compensation
        if c is None:
            expect(False, f"{m.name}: completed with compensate but compensation is None")
            continue
        want = "compensated" if ok else "failed"
        expect(
            (c.status, c.attempts) == (want, attempts),
            f"{m.name}: compensation {c.status} after {c.attempts} attempts, expected {want} after {attempts}",
        )
        if ok:
            expect(c.error is None, f"{m.name}: compensated with error {c.error!r}")
        else:
            expect(
                isinstance(c.error, ScriptedFailure) and c.error.attempt == attempts,
                f"{m.name}: compensation error {c.error!r}",
            )
    due_names = {m.name for m in due}
    for m in all_steps:
        if m.name not in due_names:
            expect(result.steps[m.name].compensation is None, f"{m.name}: compensation set though not due")
    got_calls = [(c[1], c[2]) for c in comp_calls]
    expect(got_calls == expected_calls, f"compensation calls {got_calls} != expected {expected_calls}")
    expect(result.compensated == tuple(good), f"compensated {result.compensated} != expected {tuple(good)}")
    expect(result.not_compensated == tuple(bad), f"not_compensated {result.not_compensated} != expected {tuple(bad)}")
    for c in comp_calls:
        expect(c[3] == frozenset(completed_names), f"{c[1]}: compensation ctx.results keys {sorted(c[3])}")
        expect(c[4] == result.steps[c[1]].value, f"{c[1]}: compensation got value {c[4]!r}")
