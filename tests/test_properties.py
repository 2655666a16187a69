"""Property tests over random flows (SPEC §§2, 5, 6), in thread mode with a virtual clock.

Each example is a random flow of 1-5 stages (single steps, or groups of 1-6 members
under every failure policy) whose steps succeed or raise by a script keyed on
``ctx.attempt``, with retries, compensations that succeed or raise, and per-attempt
timeouts that are never reached. ``tests/_randomflows.py`` builds the flow and holds
the oracle and the checks; the properties checked are listed in ``check_result``:

- every step appears in ``result.steps`` in declaration order with a final status,
  every group in ``result.groups``, with its members in order;
- group verdicts follow the SPEC rules applied to the members' final statuses, and
  (where fail fast does not race) member statuses and attempts match the script;
- after a failing stage every later stage is SKIPPED and none of its functions ran;
- compensations ran exactly for the COMPLETED steps that have one, one at a time, in
  reverse declaration order, each ``compensation`` field and ``compensated`` /
  ``not_compensated`` set accordingly; none when the flow completed;
- attempts never exceed 1 + retries and equal the recorded calls;
- flow status, ``ok`` and ``failed_stage`` follow the stages' verdicts;
- fail fast one at a time: members after the first failing one are CANCELLED, unrun;
- maps (0-8 items, every policy, caps, list/callable/generator items, ``when=``): every item
  taken has a final status, ``counts`` add up to ``total``, ``values`` hold exactly the
  completed items, the verdict and ``stopped_early`` follow the policy, items see their
  ``ctx.item``/``index``/``key``; exactly the completed items are compensated (in reverse
  item order when one at a time), and every stage's compensations end before an earlier
  stage's start;
- subflows (a child flow as a step, a group member and a map's function, nested down to
  three levels, some retried and some given ``input=``): every step at every depth has a
  final status, each child's ``FlowResult`` is in ``StepResult.subflow`` /
  ``ItemResult.subflow``, a failed child compensated exactly its own completed steps in
  reverse order, a completed child whose parent failed later was undone as a unit at its
  place (``sub/x``, ``m['k']/x`` in ``compensated``) exactly once; every call came from
  the child run its ``ctx.flow`` and ``ctx.input`` say, and an earlier attempt's child
  made the calls the last one did;
- and the checks the soak shares (``scripts/soak.py``): no member of a group without
  fail fast is CANCELLED or unrun, a CANCELLED step carries ``StepCancelledError``, a
  failed group's error is an ``ExceptionGroup``, a failed step used all its attempts.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from _randomflows import (
    CompensationSpec,
    DrawChooser,
    FlowSpec,
    ItemSpec,
    MapSpec,
    StageSpec,
    StepSpec,
    build_flow,
    check_result,
    random_flow_spec,
    random_step_spec,
)
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from flowpool import FlowResult, FlowStatus, GroupStatus, StepStatus
from flowpool.testing import AutoJumpClock

pytestmark = pytest.mark.timeout(180)


@st.composite
def flow_specs(draw: Any, **options: Any) -> FlowSpec:
    return random_flow_spec(DrawChooser(draw), **options)


def run_and_check(spec: FlowSpec, max_workers: int | None = None) -> FlowResult:
    built = build_flow(spec)
    result = built.flow.run({"spec": spec.name}, max_workers=max_workers, clock=AutoJumpClock())
    problems = check_result(spec, result, built.log.snapshot())
    assert not problems, "\n".join(problems)
    if currently_in_test_context():  # statistics for --hypothesis-show-statistics
        event(f"flow {result.status}")
        if result.compensated or result.not_compensated:
            event("compensations ran" + (" (some failed)" if result.not_compensated else ""))
        if any(r.status is StepStatus.CANCELLED for r in result.steps.values()):
            event("fail fast cancelled a member")
        for m in result.maps.values():
            event(f"map {m.status}" + (" (stopped early)" if m.stopped_early else ""))
    return result


# Justified suppressions: a flow is built from many small draws, so the data-size check
# trips on the bigger ones (about 6% of examples overrun and are discarded), and every
# example really runs a flow on threads, where each backoff costs the virtual clock's
# 20 ms of real quiet before it jumps, so generation looks "slow" to hypothesis.
_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=500, deadline=None, suppress_health_check=_SLOW_DATA)
@given(spec=flow_specs(), max_workers=st.sampled_from((None, 1, 2, 3)))
def test_random_flows_follow_the_spec(spec: FlowSpec, max_workers: int | None) -> None:
    # A small pool leaves members queued in it, so fail fast also withdraws queued work.
    run_and_check(spec, max_workers)


@st.composite
def sequential_fail_fast_specs(draw: Any) -> FlowSpec:
    """A random flow with one fail-fast group run one member at a time, with at least
    one member whose script fails every attempt."""
    base = draw(flow_specs(max_stages=3, max_members=4))
    chooser = DrawChooser(draw)
    count = chooser.integer(2, 6)
    members = [random_step_spec(chooser, f"ff{i}") for i in range(count)]
    doomed = chooser.integer(0, count - 1)
    m = members[doomed]
    members[doomed] = StepSpec(m.name, (False,) * (1 + m.retries), m.retries, m.timeout, m.compensate, m.required)
    group = StageSpec("ff", tuple(members), group=True, fail_fast=True, max_concurrency=1)
    at = chooser.integer(0, len(base.stages))
    return FlowSpec(base.name, (*base.stages[:at], group, *base.stages[at:]))


@settings(max_examples=150, deadline=None, suppress_health_check=_SLOW_DATA)
@given(spec=sequential_fail_fast_specs())
def test_fail_fast_one_at_a_time_cancels_the_rest(spec: FlowSpec) -> None:
    result = run_and_check(spec)
    group = next(s for s in spec.stages if s.name == "ff")
    if result.groups["ff"].status is GroupStatus.SKIPPED:
        return  # an earlier stage failed
    assert result.groups["ff"].status is GroupStatus.FAILED
    assert result.status is FlowStatus.FAILED
    statuses = [result.steps[m.name].status for m in group.members]
    first = next(i for i, s in enumerate(statuses) if s is not StepStatus.COMPLETED)
    assert statuses[first] is StepStatus.FAILED
    for m in group.members[first + 1 :]:
        r = result.steps[m.name]
        assert r.status is StepStatus.CANCELLED, (m.name, r.status)
        assert r.attempts == 0, (m.name, r.attempts)


@settings(max_examples=300, deadline=None, suppress_health_check=_SLOW_DATA)
@given(spec=flow_specs(maps=0.7, max_stages=4), max_workers=st.sampled_from((None, 1, 2, 3)))
def test_random_flows_with_maps_follow_the_spec(spec: FlowSpec, max_workers: int | None) -> None:
    # Mostly maps: empty ones, early stops one at a time and racing, items undone together.
    run_and_check(spec, max_workers)


@pytest.mark.parametrize("seed", range(20))
def test_seeded_random_flows(seed: int) -> None:
    # The path a soak script takes: a plain random.Random, no hypothesis.
    run_and_check(random_flow_spec(random.Random(seed)))


def test_the_checks_are_not_vacuous() -> None:
    # A result checked against a different script must be flagged.
    spec = FlowSpec(
        "check",
        (
            StageSpec("a", (StepSpec("a", (True,)),)),
            StageSpec("b", (StepSpec("b", (False,)),)),
        ),
    )
    built = build_flow(spec)
    result = built.flow.run(clock=AutoJumpClock())
    assert not check_result(spec, result, built.log.snapshot())
    other = FlowSpec("check", (spec.stages[0], StageSpec("b", (StepSpec("b", (True,)),))))
    assert check_result(other, result, built.log.snapshot())
    assert check_result(spec, result, [*built.log.snapshot(), ("step", "a", 2, frozenset())])


def test_the_map_checks_are_not_vacuous() -> None:
    # A map run checked against other scripts, policies or calls must be flagged.
    items = (ItemSpec((True,)), ItemSpec((False, True)), ItemSpec((False, False)), ItemSpec((True,), (False,)))
    m = MapSpec("m", items, retries=1, keyed=True, compensate=True, max_concurrency=1)
    spec = FlowSpec("check", (m, StageSpec("b", (StepSpec("b", (False,)),))))
    built = build_flow(spec)
    result = built.flow.run(clock=AutoJumpClock())
    calls = built.log.snapshot()
    assert not check_result(spec, result, calls)
    assert result.maps["m"].status is GroupStatus.PARTIAL
    assert result.compensated == ("m['i01']", "m['i00']") and result.not_compensated == ("m['i03']",)
    others = [
        dataclasses.replace(m, items=(items[0], items[2], items[1], items[3])),  # other item scripts
        dataclasses.replace(m, tolerated_failures=0),  # a policy that fails the map
        dataclasses.replace(m, fail_fast=True),  # would have stopped early
        dataclasses.replace(m, items=(*items[:3], ItemSpec((True,), (True,)))),  # other compensation script
        dataclasses.replace(m, keyed=False),  # other keys
    ]
    for other in others:
        assert check_result(FlowSpec("check", (other, spec.stages[1])), result, calls), other
    undo = [c for c in calls if c[0] == "item_compensate"]
    assert check_result(spec, result, [c for c in calls if c not in undo] + undo[::-1])  # forward order
    assert check_result(spec, result, [*calls, ("item", "m", "i00", 2, frozenset(), 0, {"label": "i00", "n": 0})])


@settings(max_examples=300, deadline=None, suppress_health_check=_SLOW_DATA)
@given(spec=flow_specs(subflows=0.6, max_stages=4), max_workers=st.sampled_from((None, 1, 2, 3)))
def test_random_nested_flows_follow_the_spec(spec: FlowSpec, max_workers: int | None) -> None:
    # Children in every place a function goes, down to three levels (SPEC §13).
    result = run_and_check(spec, max_workers)
    if currently_in_test_context():
        event(f"depth {spec.depth()}")
        if any("/" in label for label in result.compensated):
            event("a child undone as a unit")


@pytest.mark.parametrize("seed", range(30))
def test_seeded_random_nested_flows(seed: int) -> None:
    spec = random_flow_spec(random.Random(seed), subflows=0.5)
    run_and_check(spec)


def _saga(name: str, fails: bool) -> FlowSpec:
    undo = CompensationSpec((True,))
    steps = [StepSpec(f"{name}_a", (True,), compensate=undo), StepSpec(f"{name}_b", (not fails,), compensate=undo)]
    return FlowSpec(f"flow-{name}", tuple(StageSpec(m.name, (m,)) for m in steps))


def test_the_nested_checks_are_not_vacuous() -> None:
    # A parent fails after a completed child and a child that failed (retried once):
    # checked against other children, or with calls moved between runs, it is flagged.
    sub = StepSpec("sub", (), child=_saga("sub", fails=False))
    bad = StepSpec("bad", (), retries=1, child=_saga("bad", fails=True), input=True)
    group = StageSpec("g", (StepSpec("p", (True,), compensate=CompensationSpec((True,))), sub), group=True)
    spec = FlowSpec("nested", (group, StageSpec("bad", (bad,))))
    built = build_flow(spec)
    result = built.flow.run(clock=AutoJumpClock())
    calls = built.log.snapshot()
    assert not check_result(spec, result, calls)
    assert result.compensated == ("sub/sub_b", "sub/sub_a", "p")
    assert result.steps["bad"].attempts == 2 and result.steps["bad"].subflow is not None
    assert result.steps["bad"].subflow.compensated == ("bad_a",)
    other_sub = dataclasses.replace(sub, child=_saga("sub", fails=True))
    assert check_result(
        FlowSpec("nested", (dataclasses.replace(group, members=(group.members[0], other_sub)), spec.stages[1])),
        result,
        calls,
    )
    undo = [c for c in calls if c[0] == "compensate" and c[1].startswith("sub_")]
    assert check_result(spec, result, [c for c in calls if c not in undo] + undo[::-1])  # a child undone forward
    assert check_result(spec, result, [c for c in calls if c not in undo[:1]])  # a child compensation missing
    moved = [c if c[1] != "bad_a" or c[0] != "step" else (*c[:-1], c[-1]._replace(token=("elsewhere",))) for c in calls]
    assert check_result(spec, result, moved)  # a call from a run that is no child
    attempt_one = [c for c in calls if c[-1].token != ("bad#1",)]
    assert check_result(spec, result, attempt_one)  # the first attempt's child made no calls
