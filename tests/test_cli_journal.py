"""The journal from the command line: run --journal, runs, runs show, resume."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from faults import journal_flows

from flowpool import Flow, Journal
from flowpool.cli import main

pytestmark = pytest.mark.timeout(60)

SAMPLE = Path(__file__).parent / "flows" / "sample.py"
JOURNAL_FLOWS = Path(journal_flows.__file__)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_run_with_a_journal_prints_the_run_id_and_runs_lists_it(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    done = invoke("run", f"{SAMPLE}:ok_flow", "--journal", str(path), "--quiet")
    assert done.exit_code == 0, done.stderr
    run_id = re.search(r"run id ([0-9a-f]{32})", done.stderr)
    assert run_id, done.stderr
    listed = invoke("runs", "--journal", str(path))
    assert listed.exit_code == 0, listed.stderr
    [line] = listed.stdout.strip().splitlines()
    assert line.startswith(run_id.group(1)) and "completed" in line and "ok" in line
    shown = invoke("runs", "show", run_id.group(1), "--journal", str(path))
    assert shown.exit_code == 0, shown.stderr
    assert "completed" in shown.stdout


def test_the_default_journal_comes_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.db"
    assert invoke("run", f"{SAMPLE}:ok_flow", "--journal", str(path), "--quiet").exit_code == 0
    listed = invoke("runs", env={"FLOWPOOL_JOURNAL": str(path)})
    assert listed.exit_code == 0 and len(listed.stdout.strip().splitlines()) == 1


def test_resume_continues_a_run_whose_process_died(tmp_path: Path) -> None:
    log = tmp_path / "log"
    path = tmp_path / "runs.db"
    died = subprocess.run(
        [sys.executable, str(JOURNAL_FLOWS), str(path), str(log), "dies"], check=False, capture_output=True
    )
    assert died.returncode == -9
    with Journal(path) as book:
        [run] = book.runs()
    assert run.status == "running"
    shown = invoke("runs", "show", run.run_id, "--journal", str(path))
    assert shown.exit_code == 0 and "has not finished" in shown.stdout
    resumed = invoke("resume", f"{JOURNAL_FLOWS}:dies_in_stage", run.run_id, "--journal", str(path), "--quiet")
    assert resumed.exit_code == 0, resumed.stderr
    assert log.read_text().count("done first") == 1
    with Journal(path) as book:
        assert book.runs()[0].status == "completed"


def test_resume_refuses_a_changed_definition_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    done = invoke("run", f"{SAMPLE}:ok_flow", "--journal", str(path), "--quiet")
    run_id = re.search(r"run id ([0-9a-f]{32})", done.stderr)
    assert run_id
    refused = invoke("resume", f"{SAMPLE}:failing_flow", run_id.group(1), "--journal", str(path))
    assert "fingerprint" in one_line_error(refused)


@pytest.mark.parametrize("command", ["runs", "show", "resume"])
def test_unknown_runs_and_bad_journals_exit_2_with_one_line(tmp_path: Path, command: str) -> None:
    good = tmp_path / "runs.db"
    assert invoke("run", f"{SAMPLE}:ok_flow", "--journal", str(good), "--quiet").exit_code == 0
    not_journal = tmp_path / "notes.txt"
    not_journal.write_text("not a journal\n" * 50)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    missing = tmp_path / "missing.db"
    for path, run_id in ((good, "nope"), (not_journal, "x"), (other, "x"), (missing, "x")):
        if command == "runs":
            if run_id == "nope":
                continue
            result = invoke("runs", "--journal", str(path))
        elif command == "show":
            result = invoke("runs", "show", run_id, "--journal", str(path))
        else:
            result = invoke("resume", f"{SAMPLE}:ok_flow", run_id, "--journal", str(path))
        line = one_line_error(result)
        assert str(path) in line or run_id in line, line


class Booby:
    """A value whose unpickling runs a function: it creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.path,))


def test_runs_and_runs_show_never_unpickle_what_a_journal_holds(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "runs.db"

    def fails(ctx):  # type: ignore[no-untyped-def]
        raise ValueError("it fails \x1b]0;pwned\x07\x1b[2J here")

    flow = Flow("f").step("trap", lambda ctx: Booby(marker)).step("fails", fails)
    run_id = flow.run(journal=path).run_id
    marker.unlink(missing_ok=True)  # writing checks that the error loads back
    listed = invoke("runs", "--journal", str(path))
    shown = invoke("runs", "show", run_id, "--journal", str(path))
    as_json = invoke("runs", "show", run_id, "--journal", str(path), "--json")
    assert not marker.exists()
    assert listed.exit_code == shown.exit_code == as_json.exit_code == 0, (shown.stderr, as_json.stderr)
    recorded = json.loads(as_json.stdout)
    assert "Booby object" in recorded["steps"]["trap"]["value"]
    assert recorded["steps"]["fails"]["error"]["type"] == recorded["error"]["type"] == "ValueError"
    assert "ValueError: it fails" in shown.stdout and "here" in shown.stdout
    assert "\x1b" not in shown.stdout + listed.stdout  # the error's escape sequences are not replayed
    with Journal(path) as book:
        book.result(run_id)  # the test can fail: unpickling this journal does run the trap
    assert marker.exists()
