"""Flows the CLI tests load as TARGETs (``tests/flows/sample.py:NAME``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from flowpool import Context, Flow, Step

# How long a hung step waits for ``ctx.cancelled`` at most, so that a test that
# goes wrong never leaves a thread or a process behind for long.
HANG_LIMIT = 60.0
POLL = 0.02


def echo_input(ctx: Context) -> Any:
    return ctx.input


def ok(ctx: Context) -> str:
    return f"{ctx.step} done"


def boom(ctx: Context) -> str:
    raise RuntimeError(f"{ctx.step} exploded")


def flaky(ctx: Context) -> str:
    if ctx.attempt < 3:
        raise ConnectionError(f"{ctx.step} flaked on attempt {ctx.attempt}")
    return f"{ctx.step} done on attempt {ctx.attempt}"


def undo(ctx: Context, value: Any) -> None:
    pass


def undo_badly(ctx: Context, value: Any) -> None:
    raise OSError(f"could not undo {ctx.step}")


def hang(ctx: Context) -> str:
    """Stands still until cancelled; its timeout (or the bound) ends it."""
    gate = threading.Event()
    waited = 0.0
    while waited < HANG_LIMIT:
        ctx.raise_if_cancelled()
        gate.wait(POLL)
        waited += POLL
    return "never cancelled"


def write_marker_then_hang(ctx: Context) -> str:
    """Tells the test it is running (a marker file), then waits to be interrupted."""
    Path(ctx.input["marker"]).write_text("running", encoding="utf-8")
    return hang(ctx)


def record_compensation(ctx: Context, value: Any) -> None:
    Path(ctx.input["compensated"]).write_text(f"{ctx.step} compensated", encoding="utf-8")


ok_flow = (
    Flow("ok")
    .step("first", ok)
    .parallel("pair", [Step("left", ok), {"name": "right", "fn": ok}])
    .step("echo", echo_input)
)

failing_flow = (
    Flow("failing")
    .step("reserve", ok, compensate=undo)
    .parallel("extras", [Step("hotel", ok, compensate=undo), Step("car", boom)])
    .step("charge", boom)
    .step("never", ok)
)

retry_flow = (
    Flow("retrying")
    .step("flaky", flaky, retries=3)
    .parallel("both", [Step("flaky-member", flaky, retries=2), Step("steady", ok)])
    .step("slow", hang, timeout=0.2)
)

saga_flow = (
    Flow("saga")
    .step("book", ok, compensate=undo)
    .parallel("extras", [Step("hotel", ok, compensate=undo_badly), Step("car", ok, compensate=undo)])
    .step("pay", boom)
)

hang_flow = (
    Flow("hanging")
    .step("reserve", ok, compensate=record_compensation)
    .step("wait", write_marker_then_hang)
    .step("after", ok)
)

wide_flow = Flow("wide").parallel("many", [Step(f"member-{i}", ok) for i in range(10)])

policies_flow = (
    Flow("policies")
    .step("load", ok, retries=2, timeout=5.0, compensate=undo, compensate_retries=1)
    .parallel("strict", [Step("a", ok), Step("b", ok)], fail_fast=True)
    .parallel(
        "quorum",
        [Step("c", ok), Step("d", ok, required=True), Step("e", ok)],
        min_successes=2,
        max_concurrency=2,
    )
    .step("save", ok, executor="process")
)

empty_flow = Flow("empty")

not_a_flow = 42


def make_flow() -> Flow:
    return Flow("made").step("one", ok)


def make_nothing() -> int:
    return 42


def make_broken() -> Flow:
    raise LookupError("no configuration found")


def make_invalid() -> Flow:
    return Flow("invalid").step("twice", ok).step("twice", ok)
