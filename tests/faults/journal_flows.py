"""Flows for the journal and crash tests. Every execution is appended to a log file.

Run as a script: ``python journal_flows.py JOURNAL LOG SCENARIO [SEED]`` runs one
journaled flow and prints its run id first, so the test can kill it at any moment.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowpool import Context, Flow, Step


def _log(ctx: Context, what: str) -> None:
    with open(ctx.input["log"], "a") as log:
        log.write(f"{what} {ctx.step}\n")
        log.flush()
        os.fsync(log.fileno())


def _pause(ctx: Context) -> None:
    delay = ctx.input.get("delay", 0.0)
    if delay:
        time.sleep(random.uniform(0, delay))


def work(ctx: Context) -> str:
    _log(ctx, "start")
    _pause(ctx)
    _log(ctx, "done")
    return f"value of {ctx.step}"


def fail_at_end(ctx: Context) -> None:
    _log(ctx, "start")
    _pause(ctx)
    if ctx.input.get("fail"):
        raise RuntimeError("the last step fails, so everything is compensated")
    _log(ctx, "done")


def undo(ctx: Context, value: Any) -> None:
    _log(ctx, "undo-start")
    _pause(ctx)
    if ctx.input.get("die_in_compensation") == ctx.step and not Path(ctx.input["log"] + ".died").exists():
        Path(ctx.input["log"] + ".died").write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)
    _log(ctx, "undo-done")


def die_once(ctx: Context) -> str:
    _log(ctx, "start")
    if not Path(ctx.input["log"] + ".died").exists():
        Path(ctx.input["log"] + ".died").write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)
    _log(ctx, "done")
    return "survived"


def fail_once(ctx: Context) -> str:
    _log(ctx, "start")
    if not Path(ctx.input["log"] + ".failed").exists():
        Path(ctx.input["log"] + ".failed").write_text("1")
        raise RuntimeError("fails the first time only")
    _log(ctx, "done")
    return "fine"


def fails_then_dies() -> Flow:
    """The middle step fails (so the flow fails); the process dies before compensating."""
    return Flow("fails-then-dies").step("charge", work, compensate=undo).step("flaky", fail_once).step("ship", work)


def group_then_dies() -> Flow:
    """A group settles PARTIAL (one member failed); the process dies in the next stage."""
    return (
        Flow("group-then-dies")
        .parallel("g", [Step("ok", work, compensate=undo), Step("bad", fail_once)])
        .step("second", die_once)
        .step("third", work)
    )


def _die_on_first_skip(event: Any) -> None:
    if event.kind == "step_finished" and str(event.status) == "skipped":
        os.kill(os.getpid(), signal.SIGKILL)


def saga() -> Flow:
    """Four stages, two parallel groups, compensations everywhere but the last step."""
    return (
        Flow("saga")
        .step("reserve", work, compensate=undo)
        .parallel(
            "book",
            [Step("hotel", work, compensate=undo), Step("car", work, compensate=undo), Step("train", work)],
        )
        .parallel("extras", [Step("insurance", work, compensate=undo), Step("meal", work, compensate=undo)])
        .step("charge", fail_at_end)
    )


def dies_in_stage() -> Flow:
    return Flow("dies").step("first", work, compensate=undo).step("second", die_once).step("third", work)


if __name__ == "__main__":
    journal, log, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    random.seed(seed)
    flows = {"saga": saga, "dies": dies_in_stage, "failsdie": fails_then_dies, "groupdie": group_then_dies}
    flow = flows[scenario.split("-")[0]]()
    run_input: dict[str, Any] = {"log": log, "delay": 0.05 if scenario.endswith("slow") else 0.0}
    if "fail" in scenario:
        run_input["fail"] = True
    if "diecomp" in scenario:
        run_input["die_in_compensation"] = "car"
    from flowpool import Journal

    listener = _die_on_first_skip if scenario == "failsdie" else None
    with Journal(journal) as book:
        result = flow.run(run_input, journal=book, on_event=listener)
    print(result.run_id, result.status, flush=True)
