"""Fuzzing the definition API and ``run()``'s keyword arguments with arbitrary values.

Whatever is passed to ``Flow(...)``, ``Step(...)``, ``.step(...)``, ``.parallel(...)``
or ``run(...)``'s keywords, the only exception ever raised is ``FlowDefinitionError``,
naming the bad argument; valid inputs build a flow (and run). A small model of the
SPEC (§2, §3) says which arguments are invalid; values whose validity the SPEC leaves
open (a whitespace-only name, an integer too large for a float) may go either way,
but never with another exception.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
import tenacity
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flowpool import Flow, FlowDefinitionError, FlowResult, Step

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STEP_OPTIONS = (
    "retries",
    "retry",
    "timeout",
    "compensate",
    "compensate_retries",
    "compensate_timeout",
    "required",
    "executor",
)


def noop(ctx: Any) -> None:
    return None


def undo(ctx: Any, value: Any) -> None:
    return None


class CallableObject:
    def __call__(self, *args: Any) -> None:
        return None


class IntLike(int):
    """An int subclass: still an int."""


_SHUT_POOL = concurrent.futures.ThreadPoolExecutor(1)
_SHUT_POOL.shutdown()

#: Values that tend to break validation: odd numbers, odd strings, odd objects.
SPECIAL: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    IntLike(2),
    10**400,
    -(10**400),
    2**63,
    0.0,
    -0.0,
    5e-324,
    1e308,
    math.inf,
    -math.inf,
    math.nan,
    1j,
    Decimal("1.5"),
    Fraction(1, 3),
    "",
    " ",
    "\n\t",
    "\x00",
    "thread",
    "process",
    "Thread",
    "thread ",
    "x" * 500,
    "😀",
    b"thread",
    bytearray(b"x"),
    (),
    [],
    {},
    set(),
    frozenset({"a"}),
    range(3),
    object(),
    object,
    type,
    noop,
    undo,
    print,
    len,
    CallableObject(),
    lambda *a: None,
    Step("special", noop),
    Flow("special-flow"),
    tenacity.Retrying(),
    tenacity.AsyncRetrying(),
    tenacity.stop_after_attempt(2),
    _SHUT_POOL,
    NotImplemented,
    Ellipsis,
    ValueError("x"),
]

anything = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    st.tuples(st.integers(), st.text(max_size=2)),
)

huge = st.sampled_from([10**400, -(2**1024), 1e308, 5e-324, math.inf, math.nan, -0.0, IntLike(3)])
fuzz = st.one_of(anything, huge)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A valid value three times in four, else anything: most examples then carry one bad
    argument, which validation of the arguments checked before it cannot mask."""
    return st.integers(0, 3).flatmap(lambda i: fuzz if i == 0 else valid)


names = mostly(st.one_of(st.sampled_from(["a", "b", "step", "s-1", "名前"]), st.text(min_size=1, max_size=6)))
fns = mostly(st.sampled_from([noop, CallableObject(), len, print, lambda ctx: 1]))
counts = mostly(st.one_of(st.integers(0, 5), st.just(IntLike(1))))
seconds = mostly(st.one_of(st.none(), st.floats(0.001, 1e6), st.integers(1, 100)))
OPTION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "retries": counts,
    "retry": mostly(st.one_of(st.none(), st.just(tenacity.Retrying()))),
    "timeout": seconds,
    "compensate": mostly(st.one_of(st.none(), st.just(undo))),
    "compensate_retries": counts,
    "compensate_timeout": seconds,
    "required": mostly(st.booleans()),
    "executor": mostly(st.sampled_from([None, "thread", "process"])),
}
options = st.fixed_dictionaries({}, optional=OPTION_VALUES)


# ── a model of the SPEC's rules ──────────────────────────────────────────────────


class Verdict:
    """Which arguments are surely invalid (``bad``) and which may go either way (``maybe``)."""

    def __init__(self) -> None:
        self.bad: set[Any] = set()
        self.maybe: set[Any] = set()

    def add(self, argument: Any, state: str) -> None:
        if state == "bad":
            self.bad.add(argument)
        elif state == "maybe":
            self.maybe.add(argument)

    def merge(self, other: Verdict) -> None:
        self.bad |= other.bad
        self.maybe |= other.maybe


def name_state(value: Any) -> str:
    if not isinstance(value, str) or value == "":
        return "bad"
    return "ok" if value.strip() else "maybe"  # whitespace-only: the SPEC only says "non-empty"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def count_state(value: Any) -> str:
    return "ok" if _is_int(value) and value >= 0 else "bad"


def seconds_state(value: Any) -> str:
    if value is None:
        return "ok"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "bad"
    if _is_int(value) and value > 0 and value.bit_length() > 1000:
        return "maybe"  # finite and > 0, but larger than any float
    if isinstance(value, float) and not math.isfinite(value):
        return "bad"
    return "ok" if value > 0 else "bad"


def option_verdict(opts: Mapping[Any, Any], *, in_group: bool) -> Verdict:
    v = Verdict()
    for key, value in opts.items():
        if key not in STEP_OPTIONS:
            v.add(key, "bad")
        elif key in ("retries", "compensate_retries"):
            v.add(key, count_state(value))
        elif key in ("timeout", "compensate_timeout"):
            v.add(key, seconds_state(value))
        elif key == "retry":
            ok = value is None or (
                isinstance(value, tenacity.BaseRetrying) and not isinstance(value, tenacity.AsyncRetrying)
            )
            v.add(key, "ok" if ok else "bad")
            if value is not None and "retries" in opts:
                v.add("retry", "bad")
                v.add("retries", "bad")  # either may be named for the conflict
        elif key == "compensate":
            v.add(key, "ok" if value is None or callable(value) else "bad")
        elif key == "required":
            if not isinstance(value, bool) or (value and not in_group):
                v.add(key, "bad")
        elif key == "executor":
            v.add(key, "ok" if value in (None, "thread", "process") and not isinstance(value, bytes) else "bad")
    return v


def step_verdict(name: Any, fn: Any, opts: Mapping[Any, Any], *, in_group: bool) -> Verdict:
    v = option_verdict(opts, in_group=in_group)
    v.add("name", name_state(name))
    subflow = isinstance(fn, Flow)
    v.add("fn", "ok" if callable(fn) or subflow else "bad")
    if subflow and opts.get("compensate") is not None:
        v.add("compensate", "bad")  # a subflow compensates itself
    return v


def expect_outcome(build: Callable[[], Any], verdict: Verdict, flow: str | None = None) -> Any:
    """Call ``build``: it must succeed when nothing is bad, else raise ``FlowDefinitionError``
    naming one of the bad (or ambiguous) arguments; nothing else may escape."""
    try:
        built = build()
    except FlowDefinitionError as error:
        suspects = verdict.bad | verdict.maybe
        assert suspects, f"valid input rejected: {error}"
        assert error.argument in suspects, f"error names {error.argument!r}, bad: {suspects}: {error}"
        assert str(error.argument) in str(error), f"message does not name the argument: {error}"
        if flow is not None:
            assert error.flow == flow and repr(flow) in str(error), f"message does not name the flow: {error}"
        return None
    except BaseException as error:  # the point of the test
        pytest.fail(f"{type(error).__name__} instead of FlowDefinitionError: {error!r}")
    assert not verdict.bad, f"invalid arguments {verdict.bad} accepted"
    return built


# ── Flow(...) and Step(...) ─────────────────────────────────────────────────────


@FUZZ
@given(name=names)
def test_flow_name(name: Any) -> None:
    v = Verdict()
    v.add("name", name_state(name))
    flow = expect_outcome(lambda: Flow(name), v)
    if flow is not None:
        assert flow.name == name


@FUZZ
@given(name=names, fn=fns, opts=options)
@example(name="a", fn=noop, opts={"timeout": 10**400})
@example(name="a", fn=noop, opts={"compensate_timeout": 10**400, "compensate": undo})
@example(name="a", fn=noop, opts={"retries": 1, "retry": tenacity.Retrying()})
def test_step(name: Any, fn: Any, opts: dict[str, Any]) -> None:
    v = step_verdict(name, fn, opts, in_group=True)  # a Step may be a group member: required is fine
    step = expect_outcome(lambda: Step(name, fn, **opts), v)
    if step is not None:
        assert step.name == name and step.fn is fn


@FUZZ
@given(flow_name=st.sampled_from(["f", "flow 2"]), name=names, fn=fns, opts=options)
def test_flow_step(flow_name: str, name: Any, fn: Any, opts: dict[str, Any]) -> None:
    flow = Flow(flow_name).step("first", noop)
    v = step_verdict(name, fn, opts, in_group=False)
    if name == "first":
        v.add("name", "bad")  # duplicate
    built = expect_outcome(lambda: flow.step(name, fn, **opts), v, flow=flow_name)
    if built is not None:
        assert built is flow and [s.name for s in flow.steps()] == ["first", name]


# ── .parallel(...) ──────────────────────────────────────────────────────────────

mapping_keys = st.one_of(st.sampled_from(["name", "fn", *STEP_OPTIONS]), st.text(max_size=4), st.integers(), st.none())
well_formed = st.builds(
    lambda name, fn, opts: {"name": name, "fn": fn, **opts},
    st.text(alphabet="abcdefxyz _", min_size=1, max_size=4),
    fns,
    options,
)
random_mapping = st.dictionaries(mapping_keys, anything, max_size=4)
step_member = st.builds(lambda name: Step(name, noop), st.text(alphabet="abcxyz", min_size=1, max_size=3))
member = st.integers(0, 3).flatmap(
    lambda i: st.one_of(random_mapping, anything) if i == 0 else st.one_of(step_member, well_formed)
)
members_arg = mostly(
    st.one_of(
        st.lists(member, max_size=5),
        st.lists(member, max_size=3).map(tuple),
        st.lists(member, max_size=3).map(iter),
    )
)  # else anything: non-iterables, strings, mappings…


def member_verdict(position: int, item: Any) -> tuple[Verdict, Any]:
    """The verdict on one member, and its name when it has a usable one."""
    v = Verdict()
    if isinstance(item, Step):
        return v, item.name
    if isinstance(item, Mapping):
        opts = dict(item)
        missing = [key for key in ("name", "fn") if key not in opts]
        for key in missing:
            v.add(key, "bad")
        name = opts.pop("name", None)
        fn = opts.pop("fn", None)
        if not missing:
            v.merge(step_verdict(name, fn, opts, in_group=True))
        else:
            v.merge(option_verdict(opts, in_group=True))
        return v, name if isinstance(name, str) else None
    v.add("members", "bad")
    return v, None


def parallel_verdict(
    existing: set[str], name: Any, members: Any, fail_fast: Any, min_successes: Any, max_concurrency: Any
) -> tuple[Verdict, Any]:
    v = Verdict()
    v.add("name", name_state(name))
    items: list[Any] | None = None
    if isinstance(members, str | bytes | bytearray | Mapping) or not hasattr(members, "__iter__"):
        v.add("members", "bad")
    else:
        items = list(members)
        if not items:
            v.add("members", "bad")
        seen = set(existing)
        if isinstance(name, str):
            if name in seen:
                v.add("name", "bad")
            seen.add(name)
        for position, item in enumerate(items):
            mv, member_name = member_verdict(position, item)
            v.merge(mv)
            if member_name is not None:
                if member_name in seen:
                    v.add("name", "bad")
                seen.add(member_name)
    if not isinstance(fail_fast, bool):
        v.add("fail_fast", "bad")
    if min_successes is not None:
        if not _is_int(min_successes) or fail_fast is True:
            v.add("min_successes", "bad")
        elif items is None:
            v.add("min_successes", "maybe")
        elif not 1 <= min_successes <= len(items):
            v.add("min_successes", "bad")
    if max_concurrency is not None and not (_is_int(max_concurrency) and max_concurrency >= 1):
        v.add("max_concurrency", "bad")
    return v, items


@FUZZ
@given(
    name=names,
    members=members_arg,
    fail_fast=mostly(st.booleans()),
    min_successes=mostly(st.one_of(st.none(), st.integers(0, 6))),
    max_concurrency=mostly(st.one_of(st.none(), st.integers(0, 6))),
)
@example(
    name="g",
    members=[{"name": "a", "fn": noop, 1: 2, "zz": 3}],
    fail_fast=False,
    min_successes=None,
    max_concurrency=None,
)
@example(
    name="g", members=[{"name": "a", "fn": noop, None: 1}], fail_fast=False, min_successes=None, max_concurrency=None
)
@example(
    name="g",
    members=[{"name": "a", "fn": noop, "timeout": 2**1024}],
    fail_fast=False,
    min_successes=None,
    max_concurrency=None,
)
@example(
    name="g", members=[Step("a", noop), Step("a", noop)], fail_fast=False, min_successes=None, max_concurrency=None
)
@example(name="g", members=5, fail_fast=False, min_successes=None, max_concurrency=None)
def test_parallel(name: Any, members: Any, fail_fast: Any, min_successes: Any, max_concurrency: Any) -> None:
    flow = Flow("fuzz").step("first", noop)
    if isinstance(members, Iterator):
        members = list(members)  # the model and the call each need to iterate
        as_iter = True
    else:
        as_iter = False
    v, items = parallel_verdict({"first"}, name, members, fail_fast, min_successes, max_concurrency)
    built = expect_outcome(
        lambda: flow.parallel(
            name,
            iter(members) if as_iter else members,
            fail_fast=fail_fast,
            min_successes=min_successes,
            max_concurrency=max_concurrency,
        ),
        v,
        flow="fuzz",
    )
    if built is not None:
        assert items is not None
        group = flow.stages[-1]
        assert group.name == name and len(group.members) == len(items)


@FUZZ
@given(members=st.lists(well_formed, min_size=1, max_size=4))
def test_parallel_member_errors_name_the_flow(members: list[dict[str, Any]]) -> None:
    """Errors about members (mostly well-formed mappings) name the flow as well."""
    v, _ = parallel_verdict(set(), "grp", members, False, None, None)
    expect_outcome(lambda: Flow("named").parallel("grp", members), v, flow="named")


# ── run(...) ────────────────────────────────────────────────────────────────────

_POOL = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="fuzz-pool")


def _not_out_of_scope(value: Any) -> bool:
    # "process" starts worker processes and "dask://…" would connect to a network.
    return not (isinstance(value, str) and (value == "process" or value.startswith("dask://")))


executors = mostly(st.sampled_from(["thread", _POOL, _SHUT_POOL])).filter(_not_out_of_scope)
# A tenacity ``Retrying`` is callable, and calling it with an event retries forever: a
# listener that never returns hangs any run, so the fuzzed listeners leave it out.
listeners = mostly(st.sampled_from([None, noop, lambda event: None, lambda event: 1 / 0, list().append])).filter(
    lambda listener: not isinstance(listener, tenacity.BaseRetrying)
)


def executor_state(value: Any) -> str:
    if isinstance(value, concurrent.futures.Executor) or (isinstance(value, str) and value == "thread"):
        return "ok"
    return "bad"


@FUZZ
@given(
    executor=executors,
    max_workers=mostly(st.one_of(st.none(), st.integers(1, 8))),
    timeout=mostly(st.one_of(st.none(), st.floats(1.0, 1e6))),
    on_event=listeners,
)
@example(executor="thread", max_workers=None, timeout=10**400, on_event=None)
@example(executor="thread", max_workers=10**400, timeout=1e308, on_event=None)
@example(executor="dask", max_workers=None, timeout=None, on_event=None)
@example(executor=_SHUT_POOL, max_workers=None, timeout=None, on_event=noop)
def test_run_keywords(executor: Any, max_workers: Any, timeout: Any, on_event: Any) -> None:
    flow = Flow("tiny").step("noop", noop)
    v = Verdict()
    v.add("executor", executor_state(executor))
    if max_workers is not None and not (_is_int(max_workers) and max_workers >= 1):
        v.add("max_workers", "bad")
    v.add("timeout", seconds_state(timeout))
    if on_event is not None and not callable(on_event):
        v.add("on_event", "bad")
    result = expect_outcome(
        lambda: flow.run(executor=executor, max_workers=max_workers, timeout=timeout, on_event=on_event),
        v,
        flow="tiny",
    )
    if result is not None:
        assert isinstance(result, FlowResult)
        assert list(result.steps) == ["noop"]


def test_run_without_stages_is_a_definition_error() -> None:
    with pytest.raises(FlowDefinitionError, match="empty"):
        Flow("empty").run()


def teardown_module() -> None:
    _POOL.shutdown(wait=True)
