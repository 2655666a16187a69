"""SPEC §13 with §11: the journal records a subflow's steps; resume continues inside it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from _behaviour_helpers import load_flow, run_until_killed

from flowpool import FlowStatus, StepStatus

pytestmark = [pytest.mark.timeout(120), pytest.mark.modes("thread", reason="the journal is the same for every mode")]


#: A flow file: a map over four orders, each a saga subflow (reserve, charge, ship) that
#: logs every run; the process kills itself (SIGKILL) while order "o2" ships unless the
#: marker file exists; after the map, "fail" fails when asked to, so the orders are undone.
FLOW = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from flowpool import Flow

    HERE = Path(__file__).parent

    def note(line):
        with open(HERE / "ran.log", "a") as log:
            log.write(line + "\\n")

    def step(name):
        def fn(ctx):
            note(f"{name}:{ctx.input}")
            if name == "ship" and ctx.input == "o2" and not (HERE / "alive").exists():
                os.kill(os.getpid(), signal.SIGKILL)
            return f"{name}-{ctx.input}"
        return fn

    def undo(name):
        def fn(ctx, value):
            note(f"undo {value}")
        return fn

    order = Flow("order")
    for name in ("reserve", "charge", "ship"):
        order.step(name, step(name), compensate=undo(name))

    def maybe_fail(ctx):
        if (HERE / "fail").exists():
            raise RuntimeError("the batch is rejected")
        return "ok"

    flow = (
        Flow("shop")
        .map("orders", order, items=lambda ctx: ["o0", "o1", "o2", "o3"], key=str, max_concurrency=1)
        .step("close", maybe_fail)
    )

    if __name__ == "__main__":
        flow.run(journal=sys.argv[1])
    """
)


def _killed_run(tmp_path: Path) -> tuple[Path, Path, str, list[str]]:
    script, journal, run_id, ran = run_until_killed(tmp_path, FLOW)
    assert ran[-1] == "ship:o2"
    return script, journal, run_id, ran


def test_a_resumed_run_continues_inside_the_subflow_it_was_killed_in(executor, tmp_path):
    script, journal, run_id, before = _killed_run(tmp_path)
    (tmp_path / "alive").touch()
    result = load_flow(script).resume(run_id, journal=journal, executor=executor)
    assert result.status is FlowStatus.COMPLETED, result.error
    after = (tmp_path / "ran.log").read_text().split("\n")[len(before) : -1]
    # o0 and o1 completed, and o2's reserve and charge: none of them runs again.
    assert after == ["ship:o2", "reserve:o3", "charge:o3", "ship:o3"]
    orders = result.maps["orders"]
    assert orders.counts[StepStatus.COMPLETED] == 4
    assert result.values["orders"]["o2"] == {"reserve": "reserve-o2", "charge": "charge-o2", "ship": "ship-o2"}
    o2 = orders.items[2].subflow
    assert o2 is not None and o2.steps["charge"].status is StepStatus.COMPLETED


def test_a_resumed_run_that_fails_later_undoes_the_restored_subflows(executor, tmp_path):
    script, journal, run_id, before = _killed_run(tmp_path)
    (tmp_path / "alive").touch()
    (tmp_path / "fail").touch()
    result = load_flow(script).resume(run_id, journal=journal, executor=executor)
    assert result.status is FlowStatus.FAILED
    after = (tmp_path / "ran.log").read_text().split("\n")[len(before) :]
    undone = [line.removeprefix("undo ") for line in after if line.startswith("undo ")]
    expected = [f"{step}-o{n}" for n in (3, 2, 1, 0) for step in ("ship", "charge", "reserve")]
    assert undone == expected  # the orders restored from the journal are undone too, latest first
    assert result.compensated[:3] == ("orders['o3']/ship", "orders['o3']/charge", "orders['o3']/reserve")


#: A flow file: "pay" is a subflow whose input its step makes from "prep"'s value, then a
#: map of order subflows (reserve, charge), then "close", which fails: everything is undone,
#: and the process kills itself (SIGKILL) while undoing o1's charge unless "alive" exists.
#: Each compensation notes the ``ctx.input`` it saw.
UNDONE_AFTER_DEATH = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from flowpool import Flow

    HERE = Path(__file__).parent

    def note(line):
        with open(HERE / "ran.log", "a") as log:
            log.write(line + "\\n")

    def do(name):
        def fn(ctx):
            return f"{name}-{ctx.input}"
        return fn

    def undo(name):
        def fn(ctx, value):
            if value == "charge-o1" and not (HERE / "alive").exists():
                os.kill(os.getpid(), signal.SIGKILL)
            note(f"undo {value} input={ctx.input}")
        return fn

    order = Flow("order")
    for name in ("reserve", "charge"):
        order.step(name, do(name), compensate=undo(name))
    pay = Flow("pay").step("hold", do("hold"), compensate=undo("hold"))

    def close(ctx):
        raise RuntimeError("the batch is rejected")

    flow = (
        Flow("shop")
        .step("prep", lambda ctx: "card")
        .step("pay", pay, input=lambda ctx: ctx.results["prep"] + "-7")
        .map("orders", order, items=lambda ctx: ["o0", "o1", "o2"], key=str, max_concurrency=1)
        .step("close", close)
    )

    if __name__ == "__main__":
        flow.run(journal=sys.argv[1])
    """
)


def test_subflows_restored_to_be_undone_after_a_death_see_their_own_input(executor, tmp_path):
    # A completed subflow restored for compensation was given the parent's input: a map's
    # item or what the step's ``input`` made was not journaled, so its compensations saw
    # ``ctx.input`` of the top run (None here).
    script, journal, run_id, before = run_until_killed(tmp_path, UNDONE_AFTER_DEATH)
    assert before == ["undo charge-o2 input=o2", "undo reserve-o2 input=o2"]
    (tmp_path / "alive").touch()
    result = load_flow(script).resume(run_id, journal=journal, executor=executor)
    assert result.status is FlowStatus.FAILED
    after = (tmp_path / "ran.log").read_text().split("\n")[len(before) : -1]
    assert after == [
        "undo charge-o1 input=o1",
        "undo reserve-o1 input=o1",
        "undo charge-o0 input=o0",
        "undo reserve-o0 input=o0",
        "undo hold-card-7 input=card-7",
    ]
