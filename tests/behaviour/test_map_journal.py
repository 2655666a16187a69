"""SPEC §12 with §11: a journaled map records its items; resume skips the completed ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowpool import Flow, FlowpoolError, GroupStatus, Journal, StepStatus

pytestmark = [pytest.mark.timeout(120), pytest.mark.modes("thread", reason="the journal is the same for every mode")]

REPO = Path(__file__).resolve().parent.parent.parent

#: A flow file: a map over 12 keys that logs every run of an item, and kills its own
#: process (SIGKILL) at item "k06" unless the marker file exists.
FLOW = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from flowpool import Flow

    HERE = Path(__file__).parent

    def work(ctx):
        with open(HERE / "ran.log", "a") as log:
            log.write(ctx.key + "\\n")
        if ctx.key == "k06" and not (HERE / "alive").exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return ctx.index * 10

    flow = (
        Flow("crashy")
        .map("m", work, items=lambda ctx: range(12), key=lambda n: f"k{n:02d}", max_concurrency=1)
        .step("total", lambda ctx: sum(ctx.results["m"].values()))
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


def test_a_sigkilled_journaled_map_resumes_without_running_completed_items_again(executor, tmp_path):
    script = tmp_path / "crashy.py"
    script.write_text(FLOW)
    journal = tmp_path / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), str(journal)], env=env, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL
    ran_before = (tmp_path / "ran.log").read_text().split()
    assert ran_before[-1] == "k06"
    (run,) = Journal(journal).runs()
    assert run.status == "running"

    (tmp_path / "alive").touch()
    result = _load(script).resume(run.run_id, journal=journal, executor=executor)
    assert result.ok, result.error
    m = result.maps["m"]
    assert (m.status, m.total) == (GroupStatus.COMPLETED, 12)
    assert result.values["total"] == sum(range(12)) * 10
    ran_after = (tmp_path / "ran.log").read_text().split()[len(ran_before) :]
    # Items committed before the kill never run again: every item whose successor had
    # started (k00..k04) was committed before the loop waited for that successor.
    assert not {f"k{n:02d}" for n in range(5)} & set(ran_after)
    assert "k06" in ran_after and "k11" in ran_after
    recorded = Journal(journal).result(run.run_id)
    assert dict(recorded.maps["m"].values) == dict(m.values)
    assert recorded.maps["m"].counts[StepStatus.COMPLETED] == 12


def test_a_journaled_maps_items_are_in_the_recorded_result(executor, tmp_path):
    def work(ctx):
        if ctx.item == 2:
            raise ValueError("bad row")
        return ctx.item

    flow = Flow("j").map("m", work, items=[0, 1, 2, 3], tolerated_failures=1)
    result = flow.run(executor=executor, journal=tmp_path / "runs.db")
    recorded = Journal(tmp_path / "runs.db").result(result.run_id)
    m = recorded.maps["m"]
    assert (m.status, m.total, dict(m.values)) == (GroupStatus.PARTIAL, 4, {0: 0, 1: 1, 3: 3})
    assert [item.status for item in m.items] == [StepStatus.COMPLETED] * 2 + [StepStatus.FAILED, StepStatus.COMPLETED]
    assert isinstance(m.items[2].error, ValueError)


def test_a_one_shot_iterator_cannot_be_resumed(executor, tmp_path):
    journal = Journal(tmp_path / "runs.db")
    try:
        recorder = journal.recorder
        flow = Flow("once").map("m", lambda ctx: ctx.item, items=iter(range(3)))
        recorder.begin_run("r1", flow, None, [["m", None, "map"]])
        with pytest.raises(FlowpoolError, match="one-shot iterator"):
            flow.resume("r1", journal=journal, executor=executor)
    finally:
        journal.close()
