"""SPEC §12: ``ctx.item`` is the item for a map item's step *and its compensation*, also
in a resumed run, where completed items are restored from the journal and not run again.

The journal keeps items' keys and values, not the items: a resumed run calls ``items``
again (with the restored ``ctx.results``) and matches the items it produces to the
restored keys, keeping the item of each completed one that has a compensation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowpool import Flow, FlowStatus, Journal

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent

#: A map over six rows (dicts, keyed by their "id") whose compensation logs the key and
#: the item it sees; the process kills itself (SIGKILL) where KILL_AT says, unless the
#: marker file "alive" exists; the last stage fails so that every completed item is undone.
FLOW = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from flowpool import Flow

    HERE = Path(__file__).parent
    KILL_AT = os.environ.get("KILL_AT", "")

    def die(where):
        if where == KILL_AT and not (HERE / "alive").exists():
            os.kill(os.getpid(), signal.SIGKILL)

    def rows(ctx):
        with open(HERE / "rows.log", "a") as log:
            log.write(json.dumps(sorted(ctx.results)) + "\\n")
        return [{"id": f"r{n}", "size": n * 10, "source": ctx.results["source"]} for n in range(6)]

    def work(ctx):
        if ctx.key == "r4":
            raise ValueError("row 4 is bad")
        return ctx.item["size"]

    def undo(ctx, value):
        with open(HERE / "undone.log", "a") as log:
            log.write(json.dumps([ctx.key, ctx.index, ctx.item, value]) + "\\n")
        die("undo-" + ctx.key)

    def middle(ctx):
        die("middle")
        return "m"

    def boom(ctx):
        raise RuntimeError("the last stage fails")

    flow = (
        Flow("rows")
        .step("source", lambda ctx: "db")
        .map("m", work, items=rows, key=lambda row: row["id"], compensate=undo, tolerated_failures=1)
        .step("middle", middle)
        .step("boom", boom)
    )

    if __name__ == "__main__":
        flow.run(journal=sys.argv[1])
    """
)


def _load(path: Path) -> Flow:
    namespace: dict[str, object] = {"__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    flow = namespace["flow"]
    assert isinstance(flow, Flow)
    return flow


def _row(n: int) -> dict[str, object]:
    return {"id": f"r{n}", "size": n * 10, "source": "db"}


def _undone(path: Path) -> list[list[object]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def _killed_run(tmp_path: Path, kill_at: str) -> tuple[Path, Path, str]:
    script = tmp_path / "rows.py"
    script.write_text(FLOW)
    journal = tmp_path / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(REPO), "KILL_AT": kill_at}
    done = subprocess.run([sys.executable, str(script), str(journal)], env=env, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL
    with Journal(journal) as book:
        (run,) = book.runs()
    (tmp_path / "alive").touch()
    return script, journal, run.run_id


def test_items_restored_as_completed_see_their_item_when_compensated_after_resume(tmp_path: Path) -> None:
    # Killed in the stage after the map: the map's items are restored, not run again, and
    # compensated once the last stage fails.
    script, journal, run_id = _killed_run(tmp_path, "middle")
    assert not (tmp_path / "undone.log").exists()
    result = _load(script).resume(run_id, journal=journal)
    assert result.status is FlowStatus.FAILED
    undone = _undone(tmp_path / "undone.log")
    assert undone == [[f"r{n}", n, _row(n), n * 10] for n in (5, 3, 2, 1, 0)]


def test_a_run_killed_while_compensating_gives_its_pending_compensations_their_items(tmp_path: Path) -> None:
    script, journal, run_id = _killed_run(tmp_path, "undo-r2")
    before = _undone(tmp_path / "undone.log")
    assert [entry[0] for entry in before] == ["r5", "r3", "r2"]
    result = _load(script).resume(run_id, journal=journal)
    after = _undone(tmp_path / "undone.log")[len(before) :]
    # r2 was running when the process died: it runs again; r5 and r3 finished and do not.
    assert after == [[f"r{n}", n, _row(n), n * 10] for n in (2, 1, 0)]
    assert result.compensated == tuple(f"m['r{n}']" for n in (5, 3, 2, 1, 0))
    # items(ctx) was called again on resume with the restored results of the earlier stages.
    calls = (tmp_path / "rows.log").read_text().splitlines()
    assert calls == ['["source"]', '["source"]']
