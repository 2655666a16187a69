"""Resuming runs whose completed steps' values could not be journaled (review findings)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "flow_script.py"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def _run(script: Path, *args: str, crash: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CRASH", None)
    if crash:
        env["CRASH"] = "1"
    command = [sys.executable, str(script), *args]
    return subprocess.run(command, check=False, cwd=script.parent, env=env, capture_output=True, text=True, timeout=100)


def test_a_member_whose_value_was_not_journaled_runs_again_without_flipping_its_groups_verdict(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        import os, sys, threading
        from flowpool import Flow, Step, Journal
        def a(ctx): return threading.Lock()          # completes; its value cannot be pickled
        def b(ctx): raise ValueError("b fails")
        def c(ctx):
            if os.environ.get("CRASH"): os._exit(9)  # the process dies in a later stage
            return "c"
        flow = Flow("r").parallel("g", [Step("a", a), Step("b", b)]).step("c", c)
        if sys.argv[1] == "run":
            flow.run(journal="r.db")
        else:
            res = flow.resume(Journal("r.db").runs()[0].run_id, journal="r.db")
            print(res.status, res.groups["g"].status, res.steps["a"].status, res.steps["c"].status)
        """,
    )
    assert _run(script, "run", crash=True).returncode == 9
    resumed = _run(script, "resume", crash=False)
    assert resumed.stdout.split() == ["completed", "partial", "completed", "completed"], resumed.stderr


def test_a_step_whose_value_was_not_journaled_is_not_compensated_with_none(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        import os, sys, threading
        from flowpool import Flow, Journal
        def a(ctx): return threading.Lock()
        def undo_a(ctx, value): print("undo_a got", value, flush=True)
        def c(ctx): return "c"
        def undo_c(ctx, value):
            if os.environ.get("CRASH"): os._exit(9)   # the process dies while compensating
        def d(ctx): raise ValueError("d fails")
        flow = Flow("r2").step("a", a, compensate=undo_a).step("c", c, compensate=undo_c).step("d", d)
        if sys.argv[1] == "run":
            flow.run(journal="r2.db")
        else:
            res = flow.resume(Journal("r2.db").runs()[0].run_id, journal="r2.db")
            print(res.status, list(res.compensated), list(res.not_compensated), res.steps["a"].compensation.status)
        """,
    )
    assert _run(script, "run", crash=True).returncode == 9
    resumed = _run(script, "resume", crash=False)
    assert "undo_a got" not in resumed.stdout
    assert resumed.stdout.split() == ["failed", "['c']", "['a']", "failed"], resumed.stderr
