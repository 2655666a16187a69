"""SPEC §5 group verdicts, tested directly on the pure policy functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowpool import Group, GroupStatus, Step, StepCancelledError, StepResult, StepStatus, StepTimeoutError
from flowpool._policy import group_error, group_verdict, may_retry, stage_verdict, status_of, stops_group_early

pytestmark = pytest.mark.timeout(60)

C = StepStatus.COMPLETED
F = StepStatus.FAILED
T = StepStatus.TIMED_OUT
X = StepStatus.CANCELLED
NOT_COMPLETED = (F, T, X)
RANK = {GroupStatus.FAILED: 0, GroupStatus.PARTIAL: 1, GroupStatus.COMPLETED: 2}


def verdict(statuses, required=None, **policy):
    return group_verdict(statuses, required or [False] * len(statuses), **policy)


# ── direct cases ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([C], GroupStatus.COMPLETED),
        ([C, C, C], GroupStatus.COMPLETED),
        ([C, F], GroupStatus.PARTIAL),
        ([F, T, C], GroupStatus.PARTIAL),
        ([X, X, C], GroupStatus.PARTIAL),
        ([F], GroupStatus.FAILED),
        ([F, T, X], GroupStatus.FAILED),
        ([T, T], GroupStatus.FAILED),
    ],
)
def test_default_fails_only_when_no_member_completed(statuses, expected):
    assert verdict(statuses) is expected


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([C], GroupStatus.COMPLETED),
        ([C, C], GroupStatus.COMPLETED),
        ([C, F], GroupStatus.FAILED),
        ([C, C, T], GroupStatus.FAILED),
        ([X, C], GroupStatus.FAILED),
        ([F, F], GroupStatus.FAILED),
    ],
)
def test_fail_fast_fails_when_any_member_did_not_complete(statuses, expected):
    assert verdict(statuses, fail_fast=True) is expected


@pytest.mark.parametrize(
    ("statuses", "k", "expected"),
    [
        ([C, C, C], 3, GroupStatus.COMPLETED),
        ([C, C, F], 2, GroupStatus.PARTIAL),
        ([C, C, F], 3, GroupStatus.FAILED),
        ([C, F, F], 1, GroupStatus.PARTIAL),
        ([C, F, T], 2, GroupStatus.FAILED),
        ([F, F, F], 1, GroupStatus.FAILED),
        ([C, X, C, T], 2, GroupStatus.PARTIAL),
    ],
)
def test_min_successes_fails_below_k(statuses, k, expected):
    assert verdict(statuses, min_successes=k) is expected


@pytest.mark.parametrize("policy", [{}, {"fail_fast": True}, {"min_successes": 1}])
@pytest.mark.parametrize("missing", NOT_COMPLETED)
def test_required_member_that_did_not_complete_fails_the_group(policy, missing):
    assert verdict([C, C, missing], [False, False, True], **policy) is GroupStatus.FAILED


@pytest.mark.parametrize("policy", [{}, {"min_successes": 1}])
def test_required_member_that_completed_does_not_fail_the_group(policy):
    assert verdict([C, F], [True, False], **policy) is GroupStatus.PARTIAL
    assert verdict([C, C], [True, True], **policy) is GroupStatus.COMPLETED


@pytest.mark.parametrize("status", list(StepStatus))
def test_stops_group_early_only_with_fail_fast_and_not_completed(status):
    assert stops_group_early(status, fail_fast=False) is False
    # A skipped member (its condition was false) did not fail: it never stops its group.
    ended_badly = status not in (StepStatus.COMPLETED, StepStatus.SKIPPED)
    assert stops_group_early(status, fail_fast=True) is ended_badly


# ── properties ──────────────────────────────────────────────────────────────────

member_status = st.sampled_from([C, F, T, X])


@st.composite
def groups(draw):
    """Members' statuses, which are required, and a valid policy for them."""
    size = draw(st.integers(1, 8))
    statuses = draw(st.lists(member_status, min_size=size, max_size=size))
    required = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    mode = draw(st.sampled_from(["default", "fail_fast", "min_successes"]))
    policy: dict = {}
    if mode == "fail_fast":
        policy["fail_fast"] = True
    elif mode == "min_successes":
        policy["min_successes"] = draw(st.integers(1, size))
    return statuses, required, policy


def expected_verdict(statuses, required, policy):
    completed = sum(s is C for s in statuses)
    if any(r and s is not C for s, r in zip(statuses, required, strict=True)):
        return GroupStatus.FAILED
    if completed == len(statuses):
        return GroupStatus.COMPLETED
    if completed == 0:
        return GroupStatus.FAILED
    if policy.get("fail_fast"):
        return GroupStatus.FAILED
    if completed < policy.get("min_successes", 1):
        return GroupStatus.FAILED
    return GroupStatus.PARTIAL


@given(groups())
def test_verdict_matches_the_spec_table(group):
    statuses, required, policy = group
    assert group_verdict(statuses, required, **policy) is expected_verdict(statuses, required, policy)


@given(groups())
def test_verdict_is_never_skipped(group):
    statuses, required, policy = group
    assert group_verdict(statuses, required, **policy) in RANK


@given(groups(), st.data())
def test_verdict_is_monotonic_in_completions(group, data):
    statuses, required, policy = group
    unfinished = [i for i, s in enumerate(statuses) if s is not C]
    if not unfinished:
        return
    i = data.draw(st.sampled_from(unfinished))
    better = [*statuses]
    better[i] = C
    before = group_verdict(statuses, required, **policy)
    after = group_verdict(better, required, **policy)
    assert RANK[after] >= RANK[before]


@given(groups(), st.data())
def test_required_not_completed_always_fails(group, data):
    statuses, required, policy = group
    i = data.draw(st.integers(0, len(statuses) - 1))
    statuses = [*statuses]
    required = [*required]
    statuses[i] = data.draw(st.sampled_from(NOT_COMPLETED))
    required[i] = True
    assert group_verdict(statuses, required, **policy) is GroupStatus.FAILED


@given(groups())
def test_all_completed_is_completed_and_none_completed_is_failed(group):
    statuses, required, policy = group
    assert group_verdict([C] * len(statuses), required, **policy) is GroupStatus.COMPLETED
    assert group_verdict([F] * len(statuses), required, **policy) is GroupStatus.FAILED


@given(groups(), st.randoms())
def test_verdict_does_not_depend_on_member_order(group, rnd):
    statuses, required, policy = group
    pairs = list(zip(statuses, required, strict=True))
    rnd.shuffle(pairs)
    shuffled = [s for s, _ in pairs], [r for _, r in pairs]
    assert group_verdict(*shuffled, **policy) is group_verdict(statuses, required, **policy)


@given(groups())
def test_which_not_completed_status_does_not_matter(group):
    statuses, required, policy = group
    as_failed = [s if s is C else F for s in statuses]
    assert group_verdict(statuses, required, **policy) is group_verdict(as_failed, required, **policy)


@given(groups())
def test_fail_fast_passes_only_when_all_completed(group):
    statuses, required, _ = group
    passed = group_verdict(statuses, required, fail_fast=True) is not GroupStatus.FAILED
    assert passed == all(s is C for s in statuses)


@given(groups())
def test_a_group_stopped_early_by_a_member_fails(group):
    statuses, required, _ = group
    if any(stops_group_early(s, fail_fast=True) for s in statuses):
        assert group_verdict(statuses, required, fail_fast=True) is GroupStatus.FAILED


@given(groups())
def test_min_successes_one_is_the_default_policy(group):
    statuses, required, _ = group
    assert group_verdict(statuses, required, min_successes=1) is group_verdict(statuses, required)


# ── errors ──────────────────────────────────────────────────────────────────────


def test_an_attempts_status_follows_its_error():
    assert status_of(StepCancelledError("a", "stop")) is X
    assert status_of(StepTimeoutError("a", 1.0, 1)) is T
    assert status_of(ValueError("boom")) is F
    assert status_of(KeyboardInterrupt()) is F


def test_a_group_error_holds_each_unfinished_members_error_and_says_why():
    boom = ValueError("boom")
    records = [
        StepResult("a", C, 1),
        StepResult("b", F, error=boom),
        StepResult("c", X),  # cancelled without an error of its own
        StepResult("d", F, error=KeyboardInterrupt()),  # not an Exception: wrapped
    ]
    error = group_error("g", "fail fast", records, [False, True, False, False])
    assert isinstance(error, ExceptionGroup)
    assert error.exceptions[0] is boom
    assert [type(e) for e in error.exceptions[1:]] == [StepCancelledError, StepCancelledError]
    assert [e.step for e in error.exceptions[1:]] == ["c", "d"]
    assert "group 'g' failed (1 of 4 members completed; policy: fail fast" in str(error)
    assert "required member(s) did not complete: b" in str(error)


def test_a_group_error_names_no_required_member_when_all_required_completed():
    error = group_error("g", "default", [StepResult("a", C, 1), StepResult("b", F, error=ValueError())], [True, False])
    assert "required" not in str(error)


# ── stage verdicts and retries ──────────────────────────────────────────────────


def test_a_single_step_stage_fails_the_run_with_its_error_unless_the_run_was_stopped():
    boom = ValueError("boom")
    stopped = StepCancelledError("", "stopped")
    assert stage_verdict("a", None, [StepResult("a", C, 1)], None) == (None, None)
    assert stage_verdict("a", None, [StepResult("a", F, error=boom)], None) == (None, boom)
    assert stage_verdict("a", None, [StepResult("a", F, error=boom)], stopped) == (None, stopped)
    assert stage_verdict("a", None, [StepResult("a", C, 1)], stopped) == (None, stopped)
    _, error = stage_verdict("a", None, [StepResult("a", X)], None)
    assert isinstance(error, StepCancelledError) and error.step == "a"


def test_a_group_stage_gets_its_verdict_and_fails_the_run_only_when_failed_or_stopped():
    g = Group("g", (Step("a", lambda ctx: 1), Step("b", lambda ctx: 1, required=True)))
    partial = [StepResult("a", F, error=ValueError()), StepResult("b", C, 1)]
    assert stage_verdict("g", g, partial, None) == (GroupStatus.PARTIAL, None)
    stopped = StepCancelledError("", "stopped")
    assert stage_verdict("g", g, partial, stopped) == (GroupStatus.PARTIAL, stopped)
    verdict, error = stage_verdict("g", g, [StepResult("a", C, 1), StepResult("b", F, error=ValueError())], None)
    assert verdict is GroupStatus.FAILED
    assert isinstance(error, ExceptionGroup) and "required member(s) did not complete: b" in str(error)


@pytest.mark.parametrize(
    ("status", "retries", "custom", "told", "stopping", "expected"),
    [
        (F, 0, False, False, False, False),  # no retries configured
        (F, 1, False, False, False, True),
        (T, 0, True, False, False, True),  # a custom tenacity policy decides
        (X, 3, False, False, False, False),  # a cancelled attempt is never retried
        (F, 3, False, True, False, False),  # told to stop (group failed fast)
        (T, 3, False, True, False, True),  # ... but its own timeout tells it too
        (F, 3, False, False, True, False),  # the stage or run is stopping
    ],
)
def test_which_attempts_may_be_retried(status, retries, custom, told, stopping, expected):
    allowed = may_retry(status, retries=retries, custom=custom, attempt_told_to_stop=told, stage_stopping=stopping)
    assert allowed is expected


# ── optional members and retry_on (SPEC §16) ────────────────────────────────────


def test_an_optional_member_that_did_not_complete_is_left_out_of_the_verdict() -> None:
    from flowpool._policy import group_verdict

    C, F = StepStatus.COMPLETED, StepStatus.FAILED
    assert group_verdict([C, F], [False, False], optional=[False, True]) is GroupStatus.COMPLETED
    assert group_verdict([C, F], [False, False], fail_fast=True, optional=[False, True]) is GroupStatus.COMPLETED
    assert group_verdict([F, F], [False, False], optional=[True, True]) is GroupStatus.PARTIAL
    assert group_verdict([F, F], [False, False], optional=[False, True]) is GroupStatus.FAILED
    # A completed optional member counts like any other.
    assert group_verdict([C, F], [False, False], optional=[True, False]) is GroupStatus.PARTIAL


def test_an_optional_member_never_fails_its_group_fast() -> None:
    from flowpool._policy import stops_group_early

    assert stops_group_early(StepStatus.FAILED, fail_fast=True)
    assert not stops_group_early(StepStatus.FAILED, fail_fast=True, optional=True)


def test_retry_on_matches_classes_tuples_and_predicates() -> None:
    from flowpool._policy import retry_matches

    assert retry_matches(None, ValueError())
    assert retry_matches(OSError, ConnectionError())
    assert not retry_matches(OSError, ValueError())
    assert retry_matches((KeyError, OSError), KeyError())
    assert retry_matches(lambda error: "503" in str(error), RuntimeError("HTTP 503"))
    assert not retry_matches(lambda error: "503" in str(error), RuntimeError("HTTP 400"))
    assert not retry_matches(OSError, None)  # a rejected value has no exception to match
    with pytest.raises(ZeroDivisionError):
        retry_matches(lambda error: 1 / 0, RuntimeError())
