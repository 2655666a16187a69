"""SPEC §2: every problem in a definition raises ``FlowDefinitionError`` from the call
that introduced it, naming the flow, the step and the bad argument."""

from __future__ import annotations

import math
from typing import Any

import pytest
import tenacity

from flowpool import Flow, FlowDefinitionError, FlowpoolError, Step

pytestmark = pytest.mark.timeout(30)

FLOW = "flow-under-test"


def ok(ctx: Any) -> str:
    return "ok"


def undo(ctx: Any, value: Any) -> None:
    return None


def check(
    excinfo: pytest.ExceptionInfo[FlowDefinitionError],
    *,
    flow: str | None = FLOW,
    step: str | None = None,
    argument: str | None = None,
) -> None:
    """The error is a FlowDefinitionError and a ValueError whose message names what it should."""
    error = excinfo.value
    assert isinstance(error, FlowDefinitionError)
    assert isinstance(error, ValueError)
    assert isinstance(error, FlowpoolError)
    message = str(error)
    for what, expected in (("flow", flow), ("step", step), ("argument", argument)):
        if expected is not None:
            assert expected in message, f"the message should name the {what} {expected!r}: {message!r}"


def base() -> Flow:
    return Flow(FLOW).step("first", ok)


def still_usable(flow: Flow, *, stages: int = 1) -> None:
    """A failed call left the flow unchanged: the next valid call works and the flow runs."""
    assert len(flow.stages) == stages
    flow.step("after-the-error", ok)
    result = flow.run()
    assert result.ok
    assert list(result.steps)[-1] == "after-the-error"


# ── names ───────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", ["", None, 3])
def test_flow_name_must_be_a_non_empty_string(name: Any) -> None:
    with pytest.raises(FlowDefinitionError) as excinfo:
        Flow(name)
    check(excinfo, flow=None, argument="name")


@pytest.mark.parametrize("name", ["", None, 7])
def test_step_name_must_be_a_non_empty_string(name: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step(name, ok)
    check(excinfo, argument="name")
    still_usable(flow)


@pytest.mark.parametrize("name", ["", None])
def test_standalone_step_name_must_be_a_non_empty_string(name: Any) -> None:
    with pytest.raises(FlowDefinitionError) as excinfo:
        Step(name, ok)
    check(excinfo, flow=None, argument="name")


@pytest.mark.parametrize("name", ["", None])
def test_group_name_must_be_a_non_empty_string(name: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel(name, [Step("m", ok)])
    check(excinfo, argument="name")
    still_usable(flow)


def test_mapping_member_name_must_be_a_non_empty_string() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [{"name": "", "fn": ok}])
    check(excinfo, argument="name")
    still_usable(flow)


def test_duplicate_step_names() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("first", ok)
    check(excinfo, step="first", argument="name")
    still_usable(flow)


def test_group_name_may_not_repeat_a_step_name() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("first", [Step("m", ok)])
    check(excinfo, step="first", argument="name")
    still_usable(flow)


def test_step_name_may_not_repeat_a_group_name() -> None:
    flow = base().parallel("group", [Step("m", ok)])
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("group", ok)
    check(excinfo, step="group", argument="name")
    still_usable(flow, stages=2)


def test_member_name_may_not_repeat_an_earlier_step_name() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [Step("m", ok), {"name": "first", "fn": ok}])
    check(excinfo, step="first", argument="name")
    still_usable(flow)


def test_members_of_one_group_need_distinct_names() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [Step("twin", ok), Step("twin", ok)])
    check(excinfo, step="twin", argument="name")
    still_usable(flow)


def test_member_name_may_not_repeat_its_own_group_name() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [Step("group", ok)])
    check(excinfo, step="group", argument="name")
    still_usable(flow)


def test_a_later_step_may_not_reuse_a_member_name() -> None:
    flow = base().parallel("group", [Step("m", ok)])
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("m", ok)
    check(excinfo, step="m", argument="name")
    still_usable(flow, stages=2)


def test_names_of_a_rejected_group_stay_free() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError):
        flow.parallel("group", [Step("m", ok), {"name": "bad", "fn": ok, "retries": -1}])
    flow.parallel("group", [Step("m", ok)]).step("bad", ok)
    assert [stage.name for stage in flow.stages] == ["first", "group", "bad"]
    assert flow.run().ok


# ── fn and compensate ───────────────────────────────────────────────────────────


@pytest.mark.parametrize("fn", [None, 42, "ok"])
def test_fn_must_be_callable(fn: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("bad", fn)
    check(excinfo, step="bad", argument="fn")
    still_usable(flow)


def test_standalone_step_fn_must_be_callable() -> None:
    with pytest.raises(FlowDefinitionError) as excinfo:
        Step("bad", 42)  # type: ignore[arg-type]
    check(excinfo, flow=None, step="bad", argument="fn")


def test_mapping_member_fn_must_be_callable() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [{"name": "bad", "fn": "not callable"}])
    check(excinfo, step="bad", argument="fn")
    still_usable(flow)


@pytest.mark.parametrize("compensate", [42, "undo", object()])
def test_compensate_must_be_callable(compensate: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("bad", ok, compensate=compensate)
    check(excinfo, step="bad", argument="compensate")
    still_usable(flow)


def test_standalone_step_compensate_must_be_callable() -> None:
    with pytest.raises(FlowDefinitionError) as excinfo:
        Step("bad", ok, compensate=42)  # type: ignore[arg-type]
    check(excinfo, flow=None, step="bad", argument="compensate")


def test_mapping_member_compensate_must_be_callable() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [{"name": "bad", "fn": ok, "compensate": 1}])
    check(excinfo, step="bad", argument="compensate")
    still_usable(flow)


def test_valid_options_are_accepted_everywhere() -> None:
    flow = (
        Flow(FLOW)
        .step("a", ok, retries=0, timeout=1, compensate=undo, compensate_retries=2, compensate_timeout=0.5)
        .parallel(
            "group",
            [
                Step("b", ok, retries=3, timeout=2.5, required=True, executor="thread"),
                {"name": "c", "fn": ok, "retry": tenacity.Retrying(stop=tenacity.stop_after_attempt(2))},
                {"name": "d", "fn": ok, "executor": None, "required": False},
            ],
            min_successes=3,
            max_concurrency=1,
        )
    )
    assert flow.run().ok


# ── retries, timeouts and their compensation twins ──────────────────────────────

BAD_COUNTS = [-1, 1.5, "2", None, True, False]
BAD_SECONDS = [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, True, False, "1", [1]]


@pytest.mark.parametrize("argument", ["retries", "compensate_retries"])
@pytest.mark.parametrize("value", BAD_COUNTS, ids=repr)
def test_counts_must_be_ints_at_least_zero(argument: str, value: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("bad", ok, compensate=undo, **{argument: value})
    check(excinfo, step="bad", argument=argument)
    still_usable(flow)


@pytest.mark.parametrize("argument", ["retries", "compensate_retries"])
@pytest.mark.parametrize("value", [-1, True, 2.0], ids=repr)
def test_standalone_step_counts_are_checked(argument: str, value: Any) -> None:
    with pytest.raises(FlowDefinitionError) as excinfo:
        Step("bad", ok, **{argument: value})
    check(excinfo, flow=None, step="bad", argument=argument)


@pytest.mark.parametrize("argument", ["retries", "compensate_retries"])
@pytest.mark.parametrize("value", [-3, False, "1"], ids=repr)
def test_mapping_member_counts_are_checked(argument: str, value: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [{"name": "bad", "fn": ok, argument: value}])
    check(excinfo, step="bad", argument=argument)
    still_usable(flow)


@pytest.mark.parametrize("argument", ["timeout", "compensate_timeout"])
@pytest.mark.parametrize("value", BAD_SECONDS, ids=repr)
def test_seconds_must_be_finite_and_positive(argument: str, value: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("bad", ok, compensate=undo, **{argument: value})
    check(excinfo, step="bad", argument=argument)
    still_usable(flow)


@pytest.mark.parametrize("argument", ["timeout", "compensate_timeout"])
@pytest.mark.parametrize("value", [0, math.nan, math.inf, -2, True, "3"], ids=repr)
def test_standalone_step_seconds_are_checked(argument: str, value: Any) -> None:
    with pytest.raises(FlowDefinitionError) as excinfo:
        Step("bad", ok, **{argument: value})
    check(excinfo, flow=None, step="bad", argument=argument)


@pytest.mark.parametrize("argument", ["timeout", "compensate_timeout"])
@pytest.mark.parametrize("value", [0, math.nan, -math.inf, True], ids=repr)
def test_mapping_member_seconds_are_checked(argument: str, value: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [{"name": "bad", "fn": ok, argument: value}])
    check(excinfo, step="bad", argument=argument)
    still_usable(flow)


def retrying() -> tenacity.Retrying:
    return tenacity.Retrying(stop=tenacity.stop_after_attempt(3))


def test_retries_and_retry_together_on_step() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("bad", ok, retries=2, retry=retrying())
    check(excinfo, step="bad")
    assert "retries" in str(excinfo.value)
    assert "retry" in str(excinfo.value)
    still_usable(flow)


def test_retries_and_retry_together_on_standalone_step() -> None:
    with pytest.raises(FlowDefinitionError) as excinfo:
        Step("bad", ok, retries=1, retry=retrying())
    check(excinfo, flow=None, step="bad", argument="retr")


def test_retries_and_retry_together_in_mapping() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [{"name": "bad", "fn": ok, "retries": 1, "retry": retrying()}])
    check(excinfo, step="bad", argument="retr")
    still_usable(flow)


@pytest.mark.parametrize("value", [3, "tenacity", lambda: None], ids=["int", "str", "lambda"])
def test_retry_must_be_a_tenacity_retrying(value: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("bad", ok, retry=value)
    check(excinfo, step="bad", argument="retry")
    still_usable(flow)


# ── groups ──────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("members", [[], ()], ids=["list", "tuple"])
def test_empty_group(members: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", members)
    check(excinfo, step="group", argument="members")
    still_usable(flow)


def test_unknown_mapping_keys() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [{"name": "bad", "fn": ok, "retires": 2}])
    check(excinfo, step="bad", argument="retires")
    still_usable(flow)


def test_unknown_option_on_step() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("bad", ok, timout=1.0)
    check(excinfo, step="bad", argument="timout")
    still_usable(flow)


@pytest.mark.parametrize("missing", ["name", "fn"])
def test_mapping_missing_a_key(missing: str) -> None:
    member = {"name": "bad", "fn": ok}
    del member[missing]
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [Step("fine", ok), member])
    check(excinfo, step="bad" if missing == "fn" else None, argument=missing)
    still_usable(flow)


@pytest.mark.parametrize("member", [42, "step", ok], ids=["int", "str", "function"])
def test_member_must_be_a_step_or_a_mapping(member: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [Step("fine", ok), member])
    check(excinfo, step="group")
    still_usable(flow)


@pytest.mark.parametrize("min_successes", [0, -1, 3, 10])
def test_min_successes_outside_range(min_successes: int) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [Step("a", ok), Step("b", ok)], min_successes=min_successes)
    check(excinfo, step="group", argument="min_successes")
    still_usable(flow)


@pytest.mark.parametrize("min_successes", [1, 2])
def test_min_successes_inside_range(min_successes: int) -> None:
    flow = base().parallel("group", [Step("a", ok), Step("b", ok)], min_successes=min_successes)
    assert flow.run().ok


def test_min_successes_with_fail_fast() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [Step("a", ok), Step("b", ok)], min_successes=1, fail_fast=True)
    check(excinfo, step="group", argument="min_successes")
    assert "fail_fast" in str(excinfo.value)
    still_usable(flow)


@pytest.mark.parametrize("max_concurrency", [0, -1])
def test_max_concurrency_below_one(max_concurrency: int) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [Step("a", ok)], max_concurrency=max_concurrency)
    check(excinfo, step="group", argument="max_concurrency")
    still_usable(flow)


def test_required_outside_a_group() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("bad", ok, required=True)
    check(excinfo, step="bad", argument="required")
    still_usable(flow)


def test_required_on_a_member_is_fine() -> None:
    flow = base().parallel("group", [Step("a", ok, required=True), {"name": "b", "fn": ok, "required": True}])
    assert flow.run().ok


@pytest.mark.parametrize("value", ["threads", "dask", "", 3])
def test_unknown_executor_name_on_a_step(value: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.step("bad", ok, executor=value)
    check(excinfo, step="bad", argument="executor")
    still_usable(flow)


def test_unknown_executor_name_on_standalone_step() -> None:
    with pytest.raises(FlowDefinitionError) as excinfo:
        Step("bad", ok, executor="gpu")  # type: ignore[arg-type]
    check(excinfo, flow=None, step="bad", argument="executor")


def test_unknown_executor_name_in_mapping() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [{"name": "bad", "fn": ok, "executor": "gpu"}])
    check(excinfo, step="bad", argument="executor")
    still_usable(flow)


def test_parallel_checks_step_objects_again_and_names_the_flow() -> None:
    member = Step("sneaky", ok)
    # Break the immutable Step behind its back: .parallel() must not trust it.
    object.__setattr__(member, "retries", -1)
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [member])
    check(excinfo, step="sneaky", argument="retries")
    still_usable(flow)


def test_parallel_names_the_flow_for_a_bad_mapping_member() -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.parallel("group", [{"name": "bad", "fn": ok, "timeout": -1}])
    check(excinfo, flow=FLOW, step="bad", argument="timeout")


def test_standalone_step_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="retries"):
        Step("bad", ok, retries=-1)


# ── running ─────────────────────────────────────────────────────────────────────


def test_running_a_flow_with_no_stages() -> None:
    flow = Flow(FLOW)
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.run()
    check(excinfo)
    flow.step("only", ok)
    assert flow.run().ok


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "2"], ids=repr)
def test_run_max_workers(value: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.run(max_workers=value)
    check(excinfo, argument="max_workers")
    still_usable(flow)


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, True, "1"], ids=repr)
def test_run_timeout(value: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.run(timeout=value)
    check(excinfo, argument="timeout")
    still_usable(flow)


@pytest.mark.parametrize("value", ["threads", "", "dask", 42, object()], ids=repr)
def test_run_executor(value: Any) -> None:
    flow = base()
    with pytest.raises(FlowDefinitionError) as excinfo:
        flow.run(executor=value)
    check(excinfo, argument="executor")
    still_usable(flow)


def test_bad_run_arguments_do_not_call_any_step() -> None:
    calls: list[str] = []
    flow = Flow(FLOW).step("first", lambda ctx: calls.append("first"))
    for kwargs in ({"max_workers": 0}, {"timeout": -1}, {"executor": "nope"}):
        with pytest.raises(FlowDefinitionError):
            flow.run(**kwargs)
    assert calls == []


# ── one declaration per step option ─────────────────────────────────────────────

#: A valid value other than the default for every step option. A new option needs a line here.
SAMPLE_OPTION_VALUES: dict[str, Any] = {
    "retries": 2,
    "retry": tenacity.Retrying(stop=tenacity.stop_after_attempt(3)),
    "timeout": 1.5,
    "compensate": undo,
    "compensate_retries": 1,
    "compensate_timeout": 2.0,
    "required": True,
    "executor": "process",
    "retry_on": (OSError, ValueError),
    "optional": True,
    "when": bool,
    "input": dict,  # only for a subflow (a Flow as fn)
}

#: The function each sample option is tried with: a subflow for ``input``.
CHILD = Flow("child").step("c", lambda ctx: 1)


def fn_for(option: str) -> Any:
    return CHILD if option == "input" else ok


def test_step_options_are_the_spec_list_in_order() -> None:
    from flowpool._step import STEP_OPTIONS

    assert tuple(SAMPLE_OPTION_VALUES) == STEP_OPTIONS
    assert Step.__slots__ == ("name", "fn", *STEP_OPTIONS)
    assert not hasattr(Step("a", ok), "__dict__")


def test_a_step_without_options_holds_every_default() -> None:
    step = Step("a", ok)
    assert (step.retries, step.retry, step.timeout, step.compensate) == (0, None, None, None)
    assert (step.compensate_retries, step.compensate_timeout, step.required, step.executor) == (0, None, False, None)
    assert step.options() == {
        "retries": 0,
        "timeout": None,
        "compensate": None,
        "compensate_retries": 0,
        "compensate_timeout": None,
        "required": False,
        "executor": None,
        "when": None,
        "input": None,
    }


@pytest.mark.parametrize("name", list(SAMPLE_OPTION_VALUES))
def test_each_option_is_kept_given_back_and_described(name: str) -> None:
    from flowpool._options import plan_phrases
    from flowpool._structure import describe_structure

    value = SAMPLE_OPTION_VALUES[name]
    extra = {"compensate": undo} if name.startswith("compensate_") else {}
    fn = fn_for(name)
    step = Step("a", fn, **{name: value}, **extra)
    assert getattr(step, name) == value
    assert step.options()[name] == value
    rebuilt = Step("a", fn, **step.options())
    assert [getattr(rebuilt, n) for n in SAMPLE_OPTION_VALUES] == [getattr(step, n) for n in SAMPLE_OPTION_VALUES]
    # The fingerprint and the plan see the option.
    plain = Step("a", fn, **extra)
    structure = describe_structure(Flow("f").parallel("g", [step]))
    assert structure != describe_structure(Flow("f").parallel("g", [plain]))
    assert plan_phrases(step) != plan_phrases(plain)


def test_retry_and_retries_exclude_each_other_in_options() -> None:
    custom = Step("a", ok, retry=tenacity.Retrying())
    assert "retries" not in custom.options() and custom.options()["retry"] is custom.retry
    with pytest.raises(FlowDefinitionError, match="give either 'retries' or 'retry', not both"):
        Step("a", ok, retries=0, retry=tenacity.Retrying())
    assert Step("a", ok, retries=1, retry=None).retries == 1


def test_repr_shows_the_options_that_are_set() -> None:
    step = Step("a", ok, retries=2, timeout=1.5, compensate=undo, compensate_retries=3, executor="process")
    assert repr(step) == "Step('a', ok, retries=2, timeout=1.5, compensate=..., executor='process')"
    assert repr(Step("b", ok, retry=tenacity.Retrying(), required=True)) == (
        "Step('b', ok, retry=<tenacity>, required=True)"
    )


def test_fingerprint_structure_of_a_step() -> None:
    from flowpool._structure import describe_structure

    step = Step("a", ok, retry=tenacity.Retrying(stop=tenacity.stop_after_attempt(2)), compensate=undo)
    assert describe_structure(Flow("f").parallel("g", [step], fail_fast=True)) == {
        "flow": "f",
        "stages": [
            {
                "group": "g",
                "fail_fast": True,
                "min_successes": None,
                "max_concurrency": None,
                "members": [
                    {
                        "name": "a",
                        "retries": 0,
                        "retry": ["stop_after_attempt", "wait_none", "retry_if_exception_type"],
                        "timeout": None,
                        "compensate": True,
                        "compensate_retries": 0,
                        "compensate_timeout": None,
                        "required": False,
                        "executor": None,
                    }
                ],
            }
        ],
    }


def test_fingerprint_values_are_stable() -> None:
    # Journals compare these hashes to decide whether a run can resume: they may not
    # change when the definition code is reorganised (values recorded before the option table).
    from flowpool._journal import fingerprint

    assert fingerprint(Flow("a").step("x", ok)) == "67ed3524ddbbe5bac6e67d0e546a3176b05b390ec1100ffff21154fb549f4841"
    flow = (
        Flow("b")
        .step(
            "x",
            ok,
            retries=2,
            timeout=1.5,
            compensate=undo,
            compensate_retries=1,
            compensate_timeout=3,
            executor="process",
        )
        .parallel(
            "g",
            [
                Step("m1", ok, required=True, retry=tenacity.Retrying(stop=tenacity.stop_after_attempt(3))),
                {"name": "m2", "fn": ok, "retries": 0, "executor": "thread"},
            ],
            min_successes=1,
            max_concurrency=2,
        )
        .parallel("h", [Step("m3", ok)], fail_fast=True)
        .step("y", ok, retry=tenacity.Retrying())
    )
    assert fingerprint(flow) == "17284f078fa75a2d402fe808cd3813c4357d1d753a3b20afb755f0c1d338bc13"


# ── one declaration per group option ────────────────────────────────────────────


def test_group_options_are_declared_once_on_group() -> None:
    from flowpool import Group
    from flowpool._definition import GROUP_OPTIONS

    assert [spec.name for spec in GROUP_OPTIONS] == [
        "fail_fast",
        "min_successes",
        "max_concurrency",
        "tolerated_failures",
        "compensate_concurrency",
    ]
    assert [spec.default for spec in GROUP_OPTIONS] == [False, None, None, None, 1]
    # Still a plain record with the positional constructor it always had.
    group = Group("g", (Step("a", ok),), True, None, 3)
    assert (group.fail_fast, group.min_successes, group.max_concurrency) == (True, None, 3)
    assert group == Group("g", group.members, fail_fast=True, max_concurrency=3)


@pytest.mark.parametrize(
    ("options", "short", "text"),
    [
        ({}, "fails only if all fail", "default: fails only when no member completes"),
        ({"fail_fast": True}, "fail fast", "fail fast: fails as soon as one member does not complete"),
        ({"min_successes": 2}, "at least 2 of 3", "quorum: fails when fewer than 2 of 3 members complete"),
        (
            {"max_concurrency": 2},
            "fails only if all fail",
            "default: fails only when no member completes; required: b; at most 2 at a time",
        ),
    ],
)
def test_group_policy_phrases_follow_the_declared_options(options: dict[str, Any], short: str, text: str) -> None:
    from flowpool._plan import group_policy

    required = {"max_concurrency"} & set(options)
    members = [Step("a", ok), Step("b", ok, required=bool(required)), Step("c", ok)]
    group = Flow("f").parallel("g", members, **options).stages[0]
    assert group.policy == short  # type: ignore[union-attr]
    assert group_policy(group) == text  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{"fail_fast": True}, {"min_successes": 1}, {"max_concurrency": 1}])
def test_each_group_option_is_fingerprinted(options: dict[str, Any]) -> None:
    from flowpool._structure import describe_structure

    plain = describe_structure(Flow("f").parallel("g", [Step("a", ok)]))
    assert describe_structure(Flow("f").parallel("g", [Step("a", ok)], **options)) != plain


# ── maps ────────────────────────────────────────────────────────────────────────


def _undo(ctx: object, value: object) -> None:
    pass


def test_a_map_is_a_stage_with_its_policy_and_not_a_step() -> None:
    flow = Flow("f").step("a", ok).map("m", ok, items=[1, 2], tolerated_failures=0.05, max_concurrency=4)
    stage = flow.stages[1]
    assert (stage.name, stage.step.name, stage.max_concurrency, stage.policy) == ("m", "m", 4, "tolerates 5% failed")
    assert [step.name for step in flow.steps()] == ["a"]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"items": "abc"}, "items"),
        ({"items": b"abc"}, "items"),
        ({"items": {"a": 1}}, "items"),
        ({"items": 3}, "items"),
        ({"items": [1], "key": "id"}, "key"),
        ({"items": [1], "required": True}, "required"),
        ({"items": [1], "required": False}, "required"),
        ({"items": [1], "tolerated_failures": 2, "fail_fast": True}, "tolerated_failures"),
        ({"items": [1], "tolerated_failures": 2, "min_successes": 1}, "tolerated_failures"),
        ({"items": [1], "tolerated_failures": True}, "tolerated_failures"),
        ({"items": [1], "tolerated_failures": 1.0}, "tolerated_failures"),
        ({"items": [1], "tolerated_failures": -1}, "tolerated_failures"),
        ({"items": [1], "min_successes": 0}, "min_successes"),
        ({"items": [1], "min_successes": 2, "fail_fast": True}, "min_successes"),
        ({"items": [1], "max_concurrency": 0}, "max_concurrency"),
        ({"items": [1], "compensate_concurrency": 0}, "compensate_concurrency"),
        ({"items": [1], "compensate_concurrency": True}, "compensate_concurrency"),
        ({"items": [1], "retries": -1}, "retries"),
        ({"items": [1], "colour": "red"}, "colour"),
    ],
)
def test_bad_map_arguments_name_the_flow_the_map_and_the_argument(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(FlowDefinitionError) as raised:
        Flow("f").map("m", ok, **kwargs)
    assert (raised.value.flow, raised.value.step, raised.value.argument) == ("f", "m", argument)


def test_map_names_are_unique_across_the_flow() -> None:
    with pytest.raises(FlowDefinitionError, match="already used"):
        Flow("f").step("m", ok).map("m", ok, items=[1])
    with pytest.raises(FlowDefinitionError, match="already used"):
        Flow("f").map("m", ok, items=[1]).parallel("g", [Step("m", ok)])


def test_maps_and_new_group_options_keep_existing_fingerprints() -> None:
    from flowpool._structure import describe_structure

    flow = Flow("f").step("a", ok).parallel("g", [Step("b", ok), Step("c", ok)], fail_fast=True)
    assert "tolerated_failures" not in str(describe_structure(flow))
    assert "compensate_concurrency" not in str(describe_structure(flow))
    tolerant = Flow("f").step("a", ok).parallel("g", [Step("b", ok), Step("c", ok)], tolerated_failures=1)
    assert describe_structure(tolerant) != describe_structure(flow)
    mapped = Flow("f").map("m", ok, items=[1], compensate=_undo)
    assert describe_structure(mapped)["stages"][0]["map"] == "m"


def test_show_lists_a_map_with_its_policy() -> None:
    from flowpool._plan import render_plan

    flow = Flow("f").map("m", ok, items=[1], tolerated_failures=3, compensate=_undo, compensate_concurrency=2)
    text = render_plan(flow)
    assert "1. map m (ok)" in text
    assert "policy: tolerance: fails when more than 3 of the items fail; compensates 2 at a time" in text
    assert "m[each item, latest first]" in text
    assert "map: tolerance" in render_plan(flow, "mermaid") and "map: tolerance" in render_plan(flow, "dot")
