"""SPEC §14: every attempt runs inside its log context, in every executor mode."""

from __future__ import annotations

from typing import Any

import pytest

from flowpool import Context, Flow, StepStatus
from flowpool._logcontext import current

pytestmark = pytest.mark.timeout(90)


def context_of_second_attempt(ctx: Context) -> dict[str, Any]:
    if ctx.attempt == 1:
        raise ConnectionError("transient")
    return current()


def test_a_step_runs_inside_its_log_context_and_a_retry_shows_its_attempt(run_kw: dict[str, Any]) -> None:
    result = Flow("logged").step("fetch", context_of_second_attempt, retries=1).run({}, **run_kw)
    assert result.steps["fetch"].status is StepStatus.COMPLETED
    assert result.steps["fetch"].value == {
        "flowpool_run_id": result.run_id,
        "flowpool_flow": "logged",
        "flowpool_step": "fetch",
        "flowpool_attempt": 2,
        "flowpool_item": None,
        "flowpool_path": ("fetch",),
    }
    assert current()["flowpool_step"] is None  # nothing leaks into the caller
