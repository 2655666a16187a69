"""Crash test for durable runs: SIGKILL journaled runs at random moments, then resume.

Each round starts ``tests/faults/journal_flows.py`` (a saga whose steps and
compensations log every execution), kills it at a random moment (in a stage,
in a group, or during compensation), resumes the run from its journal, and
checks: the run ends completed or failed and fully compensated; no step
recorded completed before the kill executes again; no compensation runs twice
or goes missing. The "map" scenario kills a journaled map of 40 items (4 at a
time) at a random item and checks that no item recorded completed runs again.
The "subflow" scenario kills a map of 12 orders, each a saga subflow of three
steps, inside a random order's random step; the resumed run must not run again
any child step recorded completed, and when it then fails, every step that
completed (before or after the kill) is undone exactly once.

    python scripts/crashtest.py --kills 50 [--seed N]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="how many runs to kill and resume")
    parser.add_argument("--seed", type=int, default=None, help="seed for the kill moments")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)

    from test_journal import check_one_crash

    started = time.monotonic()
    failures: list[str] = []
    scenarios = {"saga-slow": 0, "saga-fail-slow": 0, "map": 0, "subflow": 0}
    with tempfile.TemporaryDirectory(prefix="flowpool-crashtest-") as tmp:
        for number in range(args.kills):
            run_dir = Path(tmp) / f"run{number}"
            run_dir.mkdir()
            scenario = rng.choice(sorted(scenarios))
            scenarios[scenario] += 1
            try:
                if scenario == "map":
                    check_one_map_crash(run_dir, rng)
                elif scenario == "subflow":
                    check_one_subflow_crash(run_dir, rng)
                else:
                    check_one_crash(run_dir, rng, scenario)
            except AssertionError as error:
                failures.append(f"kill {number} ({scenario}): {error}")
            except Exception as error:
                failures.append(f"kill {number} ({scenario}): {type(error).__name__}: {error}")
    elapsed = time.monotonic() - started
    print(f"crashtest: {args.kills} kills in {elapsed:.1f} s (seed {seed}); scenarios {scenarios}")
    print(f"  violations: {len(failures)}")
    for failure in failures:
        print(f"  - {failure}")
    return 1 if failures else 0


MAP_ITEMS = 40

MAP_FLOW = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from flowpool import Flow

    HERE = Path(__file__).parent
    KILL_AT = int(os.environ.get("KILL_AT", "-1"))

    def work(ctx):
        with open(HERE / "ran.log", "a") as log:
            log.write(f"{ctx.key}\\n")
        if ctx.index == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return ctx.index

    flow = Flow("crash-map").map(
        "m", work, items=lambda ctx: range(40), key=lambda n: f"item-{n}", max_concurrency=4
    )

    if __name__ == "__main__":
        flow.run(journal=sys.argv[1])
    """
)


def check_one_map_crash(run_dir: Path, rng: random.Random) -> None:
    """Kill a journaled map at a random item, resume it, and check no completed item ran twice."""
    from flowpool import Flow, Journal

    script = run_dir / "map_flow.py"
    script.write_text(MAP_FLOW)
    journal = run_dir / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent), "KILL_AT": str(rng.randrange(MAP_ITEMS))}
    done = subprocess.run([sys.executable, str(script), str(journal)], env=env, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, f"the run was not killed (exit {done.returncode})"
    book = Journal(journal)
    try:
        (run,) = book.runs()
        recorded = book.recorder.recorded(run.run_id)
        completed = {row[1] for row in recorded.items.get("m", []) if row[2].value == "completed"}
    finally:
        book.close()
    before = len((run_dir / "ran.log").read_text().split())
    namespace: dict[str, object] = {"__file__": str(script)}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    flow = namespace["flow"]
    assert isinstance(flow, Flow)
    os.environ.pop("KILL_AT", None)
    result = flow.resume(run.run_id, journal=journal)
    assert result.ok, f"resumed run ended {result.status.value}: {result.error}"
    assert result.maps["m"].total == MAP_ITEMS, result.maps["m"]
    again = set((run_dir / "ran.log").read_text().split()[before:]) & completed
    assert not again, f"items recorded completed ran again: {sorted(again)}"


ORDERS = 12
ORDER_STEPS = ("reserve", "charge", "ship")

SUBFLOW_FLOW = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from flowpool import Flow

    HERE = Path(__file__).parent
    KILL_AT = os.environ.get("KILL_AT", "")

    def note(line):
        with open(HERE / "ran.log", "a") as log:
            log.write(line + "\\n")

    def step(name):
        def fn(ctx):
            note(f"run {ctx.input}/{name}")
            if f"{ctx.input}/{name}" == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)
            return f"{ctx.input}/{name}"
        return fn

    def undo(ctx, value):
        note(f"undo {value}")

    order = Flow("order")
    for name in ("reserve", "charge", "ship"):
        order.step(name, step(name), compensate=undo)

    def close(ctx):
        if (HERE / "fail").exists():
            raise RuntimeError("rejected")

    flow = (
        Flow("crash-orders")
        .map("orders", order, items=lambda ctx: [f"o{n}" for n in range(12)], key=str, max_concurrency=3)
        .step("close", close)
    )

    if __name__ == "__main__":
        flow.run(journal=sys.argv[1])
    """
)


def check_one_subflow_crash(run_dir: Path, rng: random.Random) -> None:
    """Kill a map of saga subflows inside a random child step, resume it (failing at the end
    half the time), and check no completed child step ran again and every one was undone once."""
    from flowpool import Flow, Journal

    script = run_dir / "orders_flow.py"
    script.write_text(SUBFLOW_FLOW)
    journal = run_dir / "runs.db"
    kill_at = f"o{rng.randrange(ORDERS)}/{rng.choice(ORDER_STEPS)}"
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent), "KILL_AT": kill_at}
    done = subprocess.run([sys.executable, str(script), str(journal)], env=env, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, f"the run was not killed (exit {done.returncode})"
    book = Journal(journal)
    try:
        (run,) = book.runs()
        recorded = book.recorder.recorded(run.run_id)
        completed = {name for name, step in recorded.steps.items() if "/" in name and step.status.value == "completed"}
    finally:
        book.close()
    log = run_dir / "ran.log"
    before = len(log.read_text().splitlines())
    fails = rng.random() < 0.5
    if fails:
        (run_dir / "fail").touch()
    namespace: dict[str, object] = {"__file__": str(script)}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    flow = namespace["flow"]
    assert isinstance(flow, Flow)
    result = flow.resume(run.run_id, journal=journal)
    after = log.read_text().splitlines()[before:]
    ran_again = {line.removeprefix("run ") for line in after if line.startswith("run ")}
    again = {name for name in completed if _order_step(name) in ran_again}
    assert not again, f"child steps recorded completed ran again: {sorted(again)}"
    assert result.maps["orders"].total == ORDERS, result.maps["orders"]
    if not fails:
        assert result.ok, f"resumed run ended {result.status.value}: {result.error}"
        return
    assert not result.ok
    undone = [line.removeprefix("undo ") for line in after if line.startswith("undo ")]
    assert len(undone) == len(set(undone)), f"undone twice: {sorted(undone)}"
    assert set(undone) == {f"o{n}/{step}" for n in range(ORDERS) for step in ORDER_STEPS}, sorted(undone)


def _order_step(recorded_name: str) -> str:
    """``"orders['o3']/charge"`` → ``"o3/charge"``."""
    head, _, step = recorded_name.rpartition("/")
    return f"{head.split(chr(39))[1]}/{step}"


if __name__ == "__main__":
    raise SystemExit(main())
