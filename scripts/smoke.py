"""Smoke test of the public API, for a freshly installed flowpool.

One flow with a step, a parallel group, a retry, a timeout and compensations,
run on threads and on processes: once to completion and once failing at the
last stage, so that the completed steps are compensated in reverse order.
Meant to run from outside the source tree, against the installed wheel
(``scripts/check_dist.sh`` does that); it prints one line per run and exits
non-zero when anything is not as expected.

    python scripts/smoke.py
"""

from __future__ import annotations

import sys
import time
from typing import Any

import flowpool
from flowpool import Context, Flow, FlowStatus, GroupStatus, Step, StepStatus

SLOW_STEP_LIMIT = 30.0  # a timed-out thread-mode attempt stops on ctx.cancelled long before this


def reserve(ctx: Context) -> str:
    return f"seat-{ctx.input['order']}"


def release(ctx: Context, value: Any) -> None:
    if value != f"seat-{ctx.input['order']}":
        raise AssertionError(f"release got {value!r}")


def flaky(ctx: Context) -> int:
    if ctx.attempt == 1:
        raise ConnectionError("first attempt fails")
    return ctx.attempt


def undo_flaky(ctx: Context, value: Any) -> None:
    if value != 2:
        raise AssertionError(f"undo_flaky got {value!r}")


def slow(ctx: Context) -> str:
    deadline = time.monotonic() + SLOW_STEP_LIMIT
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    return "too late"


def charge(ctx: Context) -> str:
    if ctx.input["fail"]:
        raise RuntimeError("card declined")
    return f"charged {ctx.results['reserve']} after {ctx.results['flaky']} attempts"


FLOW = (
    Flow("smoke")
    .step("reserve", reserve, compensate=release)
    .parallel(
        "fetch",
        [
            Step("flaky", flaky, retries=2, compensate=undo_flaky),
            Step("slow", slow, timeout=0.5),
        ],
    )
    .step("charge", charge)
)


def check(executor: str, fail: bool) -> list[str]:
    """Run the flow once; return what was not as expected (empty when all was)."""
    result = FLOW.run({"order": 7, "fail": fail}, executor=executor, timeout=120)
    steps = result.steps
    seen = {
        "flow": result.status,
        "fetch": result.groups["fetch"].status,
        "reserve": steps["reserve"].status,
        "flaky": steps["flaky"].status,
        "flaky attempts": steps["flaky"].attempts,
        "slow": steps["slow"].status,
        "slow error": type(steps["slow"].error).__name__,
        "charge": steps["charge"].status,
        "compensated": result.compensated,
        "not compensated": result.not_compensated,
    }
    expected: dict[str, object] = {
        "flow": FlowStatus.FAILED if fail else FlowStatus.COMPLETED,
        "fetch": GroupStatus.PARTIAL,
        "reserve": StepStatus.COMPLETED,
        "flaky": StepStatus.COMPLETED,
        "flaky attempts": 2,
        "slow": StepStatus.TIMED_OUT,
        "slow error": "StepTimeoutError",
        "charge": StepStatus.FAILED if fail else StepStatus.COMPLETED,
        "compensated": ("flaky", "reserve") if fail else (),
        "not compensated": (),
    }
    if not fail:
        seen["value"] = steps["charge"].value
        expected["value"] = "charged seat-7 after 2 attempts"
    problems = [
        f"{key}: expected {expected[key]!r}, got {seen[key]!r}" for key in expected if seen[key] != expected[key]
    ]
    outcome = "fails and compensates" if fail else "completes"
    print(f"{executor:>7}: flow {outcome}: {'ok' if not problems else 'NOT OK'} ({result.duration or 0.0:.2f} s)")
    return problems


def main() -> int:
    print(f"flowpool {flowpool.__version__} from {flowpool.__file__}")
    problems: list[str] = []
    try:
        for executor in ("thread", "process"):
            for fail in (False, True):
                problems += [f"{executor}, fail={fail}: {problem}" for problem in check(executor, fail)]
    finally:
        flowpool.shutdown_workers()
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
