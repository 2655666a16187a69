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
#: process (SIGKILL) at item "k06" unless the marker file exists — once the journal,
#: read from a connection of its own, has items k00..k05 committed (or, if they are not
#: within 30 s, with a note saying so).
FLOW = textwrap.dedent(
    """
    import os, signal, sqlite3, sys, time
    from pathlib import Path
    from flowpool import Flow

    HERE = Path(__file__).parent

    def committed(journal):
        db = sqlite3.connect(journal)
        try:
            return db.execute("SELECT count(*) FROM items WHERE status = 'completed'").fetchone()[0]
        except sqlite3.OperationalError:  # no items table yet
            return 0
        finally:
            db.close()

    def work(ctx):
        with open(HERE / "ran.log", "a") as log:
            log.write(ctx.key + "\\n")
        if ctx.key == "k06" and not (HERE / "alive").exists():
            deadline = time.monotonic() + 30
            while committed(sys.argv[1]) < 6:  # committed while the map runs, not at its end
                if time.monotonic() > deadline:
                    (HERE / "not-committed").touch()
                    break
                time.sleep(0.002)
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
    # The items that completed before k06 were committed while k06 ran, and so never run again.
    assert not (tmp_path / "not-committed").exists()
    assert not {f"k{n:02d}" for n in range(6)} & set(ran_after)
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


COMPENSATING = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from flowpool import Flow

    HERE = Path(__file__).parent

    def undo(ctx, value):
        with open(HERE / "undone.log", "a") as log:
            log.write(f"{ctx.key}\\n")
        if ctx.key == "k03" and not (HERE / "alive").exists():
            os.kill(os.getpid(), signal.SIGKILL)

    def boom(ctx):
        raise RuntimeError("the last stage fails")

    flow = (
        Flow("undoing")
        .map("m", lambda ctx: ctx.index, items=lambda ctx: range(8), key=lambda n: f"k{n:02d}", compensate=undo)
        .step("boom", boom)
    )

    if __name__ == "__main__":
        flow.run(journal=sys.argv[1])
    """
)


def test_a_map_killed_while_compensating_resumes_only_the_pending_item_compensations(executor, tmp_path):
    script = tmp_path / "undoing.py"
    script.write_text(COMPENSATING)
    journal = tmp_path / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), str(journal)], env=env, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL
    before = (tmp_path / "undone.log").read_text().split()
    assert before == ["k07", "k06", "k05", "k04", "k03"]
    (run,) = Journal(journal).runs()

    (tmp_path / "alive").touch()
    result = _load(script).resume(run.run_id, journal=journal, executor=executor)
    after = (tmp_path / "undone.log").read_text().split()[len(before) :]
    # k07..k04 finished before the kill and never run again; k03 was running (at least once).
    assert after == ["k03", "k02", "k01", "k00"]
    assert result.compensated == tuple(f"m['k{n:02d}']" for n in range(7, -1, -1))
    assert result.maps["m"].status is GroupStatus.COMPLETED and result.maps["m"].total == 8
    recorded = Journal(journal).result(run.run_id)
    assert recorded.compensated == result.compensated
    assert recorded.groups["m"].status is GroupStatus.COMPLETED


def test_a_journaled_map_s_summary_counts_its_items_without_unpickling(executor, tmp_path):
    journal = tmp_path / "runs.db"
    flow = Flow("sums").map("m", lambda ctx: ctx.item * 2, items=[1, 2, 3], key=str)
    flow.run(journal=journal, executor=executor)
    book = Journal(journal)
    try:
        (run,) = book.runs()
        summary = book.summary(run.run_id).maps["m"]
    finally:
        book.close()
    assert (summary.total, summary.counts[StepStatus.COMPLETED]) == (3, 3)
    assert [item.key for item in summary.items] == ["1", "2", "3"]
