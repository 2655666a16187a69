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
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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

    def natural(self) -> tuple[bool, int]:
        """(completed, attempts) when nothing cuts the step short."""
        return _first_success(self.script, self.retries)


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
    flow = assemble(spec, lambda step: (_step_fn(step, log), _options(step, log)))
    return BuiltFlow(spec, flow, log)


def assemble(spec: FlowSpec, member: Callable[[StepSpec], tuple[Callable[..., Any], dict[str, Any]]]) -> Flow:
    """The ``Flow`` of ``spec``'s stages; ``member(step)`` gives a step's function and options
    (``required`` is added here, for group members)."""
    flow = Flow(spec.name)
    for stage in spec.stages:
        made = [(step, *member(step)) for step in stage.members]
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
    ``spec``; empty when none. Exact against the oracle where ``leeway`` leaves no doubt."""
    problems: list[str] = []

    def expect(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    all_steps = spec.steps()
    names = [m.name for m in all_steps]
    stage_of = spec.stage_of()
    stage_index = {m.name: i for i, stage in enumerate(spec.stages) for m in stage.members}

    # 1. Nothing is lost: every step, in order, with a final status; every group.
    expect(list(result.steps) == names, f"result.steps {list(result.steps)} != declared {names}")
    if set(result.steps) != set(names):
        return problems
    groups = [s.name for s in spec.stages if s.group]
    expect(sorted(result.groups) == sorted(groups), f"result.groups {list(result.groups)} != {groups}")
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
    for call in calls:
        if call[0] == "step":
            if call[1] in step_calls:
                step_calls[call[1]].append(call)
            else:
                problems.append(f"call of unknown step {call[1]!r}")
        else:
            comp_calls.append(call)

    completed = {n for n in names if result.steps[n].status is StepStatus.COMPLETED}
    earlier: dict[str, frozenset[str]] = {}
    done: set[str] = set()
    for stage in spec.stages:
        for m in stage.members:
            earlier[m.name] = frozenset(done)
        done |= {m.name for m in stage.members if m.name in completed}

    # 2. Stage by stage: verdicts follow the policy; after a failed stage everything is skipped.
    failed_stage: str | None = None
    for stage in spec.stages:
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
    expect(result.failed_stage == failed_stage, f"failed_stage {result.failed_stage!r}, stages say {failed_stage!r}")
    want_status = FlowStatus.COMPLETED if failed_stage is None else FlowStatus.FAILED
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
        if leeway.exact:
            expect(numbers == list(range(1, r.attempts + 1)), f"{m.name}: calls {numbers}, attempts {r.attempts}")
        for c in mine:
            expect(c[3] == earlier[m.name], f"{m.name}: ctx.results {sorted(c[3])} != {sorted(earlier[m.name])}")
        if r.status is StepStatus.COMPLETED:
            expect(r.value == step_value(m.name, r.attempts), f"{m.name}: value {r.value!r}")
            expect(r.error is None, f"{m.name}: completed with error {r.error!r}")
            expect(_scripted(m.script, r.attempts), f"{m.name}: completed on attempt {r.attempts}, scripted to fail")
        else:
            expect(r.value is None, f"{m.name}: value {r.value!r} though {r.status}")
        if r.status is StepStatus.TIMED_OUT:
            expect(m.timeout is not None, f"{m.name}: TIMED_OUT without a timeout")
            expect(isinstance(r.error, StepTimeoutError), f"{m.name}: TIMED_OUT with {r.error!r}")
        if r.status is StepStatus.FAILED:
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
        if r.status in (StepStatus.FAILED, StepStatus.TIMED_OUT) and not stage_of[m.name].fail_fast:
            expect(r.attempts == 1 + m.retries, f"{m.name}: {r.status} after {r.attempts} of {1 + m.retries} attempts")
        if r.status is StepStatus.SKIPPED:
            expect(r.attempts == 0 and not mine, f"{m.name}: SKIPPED but ran")
    expect(dict(result.values) == {n: result.steps[n].value for n in completed}, "result.values mismatch")

    # 4. Exactly what the oracle says where timing cannot matter.
    exp = expected_outcome(spec)
    if leeway.exact:
        expect(result.status is exp.status, f"flow {result.status}, oracle {exp.status}")
        expect(
            result.failed_stage == exp.failed_stage, f"failed_stage {result.failed_stage}, oracle {exp.failed_stage}"
        )
        for name, status in exp.groups.items():
            expect(result.groups[name].status is status, f"group {name}: {result.groups[name].status}, oracle {status}")
    for m in all_steps:
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

    # 5. Compensation: the completed steps that have one, in reverse declaration order.
    _check_compensation(spec, result, comp_calls, completed, leeway, expect)

    # 6. Events agree with the result, stage by stage.
    if events is not None:
        _check_events(spec, result, events, stage_index, leeway.exact, expect)
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
    completed: set[str],
    leeway: Leeway,
    expect: Callable[[bool, str], None],
) -> None:
    all_steps = spec.steps()
    if result.ok:
        expect(not comp_calls, f"compensations ran for a completed flow: {comp_calls}")
        expect(result.compensated == () == result.not_compensated, "compensated/not_compensated not empty")
        for m in all_steps:
            expect(result.steps[m.name].compensation is None, f"{m.name}: compensation on a completed flow")
        return
    due = [m for m in reversed(all_steps) if m.compensate is not None and m.name in completed]
    due_names = [m.name for m in due]
    expect(
        sorted(result.compensated + result.not_compensated) == sorted(due_names),
        f"compensated {result.compensated} + not_compensated {result.not_compensated} != due {due_names}",
    )
    expect(list(result.compensated) == [n for n in due_names if n in result.compensated], "compensated out of order")
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
            (c.status == "compensated") == (m.name in result.compensated),
            f"{m.name}: compensation {c.status} vs compensated {result.compensated}",
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
        expect(call[3] == frozenset(completed), f"{call[1]}: compensation ctx.results {sorted(call[3])}")
        expect(call[4] == result.steps[call[1]].value, f"{call[1]}: compensation got {call[4]!r}")
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
        expect(result.compensated == tuple(good), f"compensated {result.compensated} != expected {tuple(good)}")
        expect(result.not_compensated == tuple(bad), f"not_compensated {result.not_compensated} != {tuple(bad)}")


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
        if e.kind == "step_finished":
            expect(e.status == result.steps[e.step].status, f"{e.step}: step_finished {e.status}")
        if e.kind == "group_finished":
            expect(e.status == result.groups[e.group].status, f"{e.group}: group_finished {e.status}")
    # Stages in order: no event of a stage after a later stage's.
    group_stage = {s.name: i for i, s in enumerate(spec.stages) if s.group}
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
        if not stage.group or stage.max_concurrency is None:
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
