"""What a batch user sees in the command (SPEC §16, §14, §12): a clean ``--json``,
the target's own arguments, the counts line and ``--strict``, abandoned attempts
still running, log records with their step, and maps in the progress and summary."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import flowpool._attempt
from flowpool import (
    Event,
    Flow,
    FlowResult,
    FlowStatus,
    GroupResult,
    GroupStatus,
    Step,
    StepResult,
    StepStatus,
)
from flowpool._logcontext import enter, leave
from flowpool._maps import MapLedger, MapResult
from flowpool._summary import counts_line, not_completed, still_running_lines, summary_table
from flowpool._terminal import Progress
from flowpool.cli import main

FLOWS = Path(__file__).parent / "flows"
NOISY = FLOWS / "noisy.py"
ARGV = FLOWS / "argv.py"
REPO = Path(__file__).parent.parent

# The log context around every attempt comes with the process backend's own change;
# until it is here that test is expected to fail (strictly: once it lands it must pass).


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def flowpool(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    # As a user runs it: PYTHONUNBUFFERED would also make C's stdio unbuffered.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "flowpool", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _fresh_copy(source: Path, tmp_path: Path, name: str) -> Path:
    """The target under a name no earlier test imported (module-level code runs again)."""
    copy = tmp_path / f"{name}.py"
    copy.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    return copy


# ── a clean --json ───────────────────────────────────────────────────────────────


@pytest.mark.timeout(120)
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_json_stdout_holds_only_the_document_whatever_the_flow_prints(executor: str) -> None:
    done = flowpool("run", f"{NOISY}:flow", "--json", "--executor", executor, "--workers", "2")
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)  # the whole of stdout is one JSON document
    assert data["status"] == "failed"
    assert data["compensated"] == ["talk"]
    for text in (
        "noisy: print in talk",
        "noisy: descriptor 1 in talk",
        "noisy: subprocess in talk",
        "noisy: compensating talk",
    ):
        assert text in done.stderr, text
    if executor == "thread":
        # C's buffer was flushed before the document (a worker's goes to stderr whenever).
        assert "noisy: printf in talk" in done.stderr
    imports = done.stderr.count("noisy: printed at import")
    # In process mode the workers import the target too, and print while they do.
    assert imports >= (2 if executor == "process" else 1), done.stderr
    assert "1/2 completed, 1 failed" in done.stderr  # the counts line moves to stderr


@pytest.mark.timeout(60)
def test_json_in_process_keeps_the_callers_stdout_and_gives_it_back(tmp_path: Path) -> None:
    noisy = _fresh_copy(NOISY, tmp_path, "noisy_in_process")
    before = sys.stdout
    result = invoke("run", f"{noisy}:flow", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["steps"]["talk"]["value"] == "talk"
    assert "noisy: print in talk" in result.stderr
    assert "noisy: printed at import" in result.stderr
    assert sys.stdout is before


@pytest.mark.timeout(60)
def test_without_json_prints_stay_on_stdout(tmp_path: Path) -> None:
    noisy = _fresh_copy(NOISY, tmp_path, "noisy_plain")
    result = invoke("run", f"{noisy}:flow")
    assert result.exit_code == 1
    assert "noisy: print in talk" in result.stdout


# ── script arguments ─────────────────────────────────────────────────────────────


@pytest.mark.timeout(60)
def test_arguments_after_a_double_dash_are_the_targets_argv(tmp_path: Path) -> None:
    script = _fresh_copy(ARGV, tmp_path, "argv_script")
    argv_before = list(sys.argv)
    result = invoke("run", f"{script}:flow", "--json", "--", "input.csv", "--limit", "3", "-v")
    assert result.exit_code == 0, result.stderr
    value = json.loads(result.stdout)["steps"]["show"]["value"]
    expected = [str(script), "input.csv", "--limit", "3", "-v"]
    assert value["import"] == expected
    assert value["step"] == expected
    # Given back: the command may run in-process, as here.
    assert sys.argv == argv_before


@pytest.mark.timeout(60)
def test_without_arguments_argv_is_the_target_alone_never_flowpools_own(tmp_path: Path) -> None:
    script = _fresh_copy(ARGV, tmp_path, "argv_alone")
    result = invoke("run", f"{script}:flow", "--json", "--workers", "2")
    assert result.exit_code == 0, result.stderr
    value = json.loads(result.stdout)["steps"]["show"]["value"]
    assert value["import"] == value["step"] == [str(script)]


@pytest.mark.timeout(60)
def test_a_module_targets_argv_starts_with_the_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "argvpkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "job.py").write_text(ARGV.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke("run", "argvpkg.job:flow", "--json", "--", "x")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["steps"]["show"]["value"]["step"] == ["argvpkg.job", "x"]


@pytest.mark.timeout(30)
def test_a_stray_argument_without_the_double_dash_is_a_usage_error() -> None:
    result = invoke("run", f"{ARGV}:flow", "input.csv")
    assert result.exit_code == 2
    assert "go after --" in result.stderr
    assert "[-- ARG...]" in invoke("run", "--help").stdout


@pytest.mark.timeout(120)
def test_worker_processes_see_the_targets_argv_also_while_importing_it() -> None:
    done = flowpool("run", f"{ARGV}:flow", "--json", "--executor", "process", "--workers", "1", "--", "a b", "--flag")
    assert done.returncode == 0, done.stderr
    value = json.loads(done.stdout)["steps"]["show"]["value"]
    expected = [str(ARGV), "a b", "--flag"]
    assert value["step"] == expected
    assert value["import"] == expected  # the worker imported the target with it


# ── counts line and --strict ─────────────────────────────────────────────────────


def _boom(ctx: Any) -> None:
    raise RuntimeError("member failed")


@pytest.mark.timeout(60)
def test_counts_line_ends_the_output_and_strict_fails_a_partial_flow(tmp_path: Path) -> None:
    target = tmp_path / "partial_flows.py"
    target.write_text(
        "from flowpool import Flow, Step\n"
        "def ok(ctx): return 1\n"
        "def bad(ctx): raise RuntimeError('member failed')\n"
        "partial = Flow('partial').step('a', ok).parallel('g', [Step('b', ok), Step('c', bad), Step('d', bad)])\n"
        "whole = Flow('whole').step('a', ok).parallel('g', [Step('b', ok), Step('c', ok)])\n"
        "failing = Flow('failing').step('a', bad).step('z', ok)\n",
        encoding="utf-8",
    )
    loose = invoke("run", f"{target}:partial")
    assert loose.exit_code == 0, loose.stderr
    assert loose.stdout.splitlines()[-1] == "2/4 completed, 2 failed"
    strict = invoke("run", f"{target}:partial", "--strict")
    assert strict.exit_code == 1
    assert "--strict: not everything completed: group 'g' partial" in strict.stderr
    assert invoke("run", f"{target}:whole", "--strict").exit_code == 0
    failing = invoke("run", f"{target}:failing", "--strict")
    assert failing.exit_code == 1
    assert failing.stdout.splitlines()[-1] == "0/2 completed, 1 failed, 1 skipped"
    assert "--strict" not in failing.stderr  # it failed on its own
    as_json = invoke("run", f"{target}:partial", "--json", "--strict")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["status"] == "completed"
    *_, said, counts = as_json.stderr.splitlines()  # the counts line ends the output
    assert said.startswith("flowpool: --strict: not everything completed")
    assert counts == "2/4 completed, 2 failed"


def _step(name: str, status: StepStatus, group: str | None = None) -> StepResult:
    return StepResult(name, status, attempts=1, group=group)


def _ledger(name: str, statuses: list[StepStatus]) -> MapLedger:
    ledger = MapLedger(name, keyed=True)
    for index, status in enumerate(statuses):
        ledger.take(f"row-{index}")
        error = None if status is StepStatus.COMPLETED else ValueError(f"bad row {index}")
        ledger.settle(index, status, index, error, 1, 1.0, 1.5)
    return ledger


def _mapped_result(statuses: list[StepStatus], *, status: FlowStatus = FlowStatus.COMPLETED) -> FlowResult:
    ledger = _ledger("rows", statuses)
    verdict = GroupStatus.PARTIAL if any(s is not StepStatus.COMPLETED for s in statuses) else GroupStatus.COMPLETED
    return FlowResult(
        "batch",
        "run-1",
        status,
        steps={"load": _step("load", StepStatus.COMPLETED), "report": _step("report", StepStatus.COMPLETED)},
        groups={"rows": GroupResult("rows", verdict, ())},
        maps={"rows": MapResult("rows", verdict, ledger)},
    )


def test_counts_count_every_step_and_map_item() -> None:
    statuses = [StepStatus.COMPLETED] * 189 + [StepStatus.FAILED] * 8 + [StepStatus.TIMED_OUT]
    assert counts_line(_mapped_result(statuses)) == "191/200 completed, 8 failed, 1 timed out"
    assert counts_line(_mapped_result([StepStatus.COMPLETED] * 3)) == "5/5 completed"


def test_strict_names_a_partial_map_and_an_optional_step_that_failed() -> None:
    assert not_completed(_mapped_result([StepStatus.COMPLETED] * 3)) == ""
    partial = _mapped_result([StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED])
    assert not_completed(partial) == "map 'rows' partial (2 of 3 items did not complete)"
    # An optional step that failed leaves the flow completed; a skipped one is fine.
    result = FlowResult(
        "f",
        "r",
        FlowStatus.COMPLETED,
        steps={
            "a": _step("a", StepStatus.COMPLETED),
            "email": _step("email", StepStatus.TIMED_OUT),
            "maybe": _step("maybe", StepStatus.SKIPPED),
        },
        groups={},
    )
    assert not_completed(result) == "step 'email' timed out"


# ── still running ────────────────────────────────────────────────────────────────


def test_steps_still_running_are_named_with_the_advice_to_use_processes() -> None:
    result = FlowResult(
        "saga",
        "r",
        FlowStatus.FAILED,
        steps={"send-email": _step("send-email", StepStatus.TIMED_OUT)},
        groups={},
        still_running=("send-email", "resize['a.png']"),
    )
    lines = still_running_lines(result)
    assert "still running after the run: send-email, resize['a.png']" in lines[0]
    assert any("--executor process" in line for line in lines)
    assert still_running_lines(_mapped_result([StepStatus.COMPLETED])) == []


# ── logs: -v and --log-file ──────────────────────────────────────────────────────

_LOGGING_TARGET = """
import logging
from flowpool import Flow, Step
from flowpool._logcontext import enter, leave

log = logging.getLogger("batch.app")

def fetch(ctx):
    # Names itself as flowpool does around every attempt (so this test checks the
    # command's part alone).
    token = enter(ctx.run_id, ctx.flow, ctx.step, ctx.attempt, item="row-7", path=("fetch",))
    try:
        log.info("fetching %s", "rows")
        log.debug("details nobody asked for")
        if ctx.attempt == 1:
            raise ConnectionError("flaky")
        log.warning("fetched on attempt %d", ctx.attempt)
    finally:
        leave(token)

def plain(ctx):
    log.info("a record from a plain step")

flow = Flow("logging").step("fetch", fetch, retries=1).step("plain", plain)
"""


@pytest.mark.timeout(60)
def test_verbose_shows_records_of_any_logger_with_their_step(tmp_path: Path) -> None:
    target = tmp_path / "logging_target.py"
    target.write_text(_LOGGING_TARGET, encoding="utf-8")
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    result = invoke("run", f"{target}:flow", "-v")
    assert result.exit_code == 0, result.stderr
    assert "fetch['row-7'] INFO batch.app: fetching rows" in result.stderr
    assert "fetch['row-7'] (attempt 2) WARNING batch.app: fetched on attempt 2" in result.stderr
    assert "details nobody asked for" not in result.stderr
    assert "a record from a plain step" in result.stderr
    debug = invoke("run", f"{target}:flow", "-vv")
    assert "details nobody asked for" in debug.stderr
    quiet = invoke("run", f"{target}:flow")
    assert "fetching rows" not in quiet.stderr
    assert (root.level, root.handlers) == (level, handlers)  # the run's handlers are gone


@pytest.mark.timeout(60)
def test_log_file_holds_every_record_as_json_with_its_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As in a fresh process: no handler on the root logger (pytest puts its own there).
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    target = tmp_path / "logging_file_target.py"
    target.write_text(_LOGGING_TARGET, encoding="utf-8")
    path = tmp_path / "run.log.jsonl"
    result = invoke("run", f"{target}:flow", "--json", "--log-file", str(path))
    assert result.exit_code == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    fetching = next(r for r in records if r["message"] == "fetching rows")
    assert fetching["level"] == "INFO" and fetching["logger"] == "batch.app"
    assert fetching["flowpool_run_id"] == run_id
    assert fetching["flowpool_flow"] == "logging"
    assert fetching["flowpool_step"] == "fetch"
    assert fetching["flowpool_attempt"] == 1
    assert fetching["flowpool_item"] == "row-7"
    assert fetching["flowpool_path"] == ["fetch"]
    assert fetching["time"].endswith("+00:00")
    assert [r["flowpool_attempt"] for r in records if r["message"].startswith("fetched on")] == [2]
    # Without -v, a warning still reaches stderr as it would without --log-file.
    assert "fetched on attempt 2" in result.stderr
    assert "fetching rows" not in result.stderr


@pytest.mark.timeout(60)
def test_verbose_names_the_step_of_a_plain_steps_record(tmp_path: Path) -> None:
    target = tmp_path / "logging_plain_target.py"
    target.write_text(_LOGGING_TARGET, encoding="utf-8")
    result = invoke("run", f"{target}:flow", "-v")
    assert "plain INFO batch.app: a record from a plain step" in result.stderr


def test_a_record_outside_any_step_has_no_step_prefix() -> None:
    from flowpool._terminal import _StepLogFormatter

    record = logging.LogRecord("lib", logging.WARNING, __file__, 1, "careful\x1b[2J", (), None)
    token = enter("r", "f", "s", 1)
    leave(token)
    line = _StepLogFormatter().format(record)
    assert line == "log         WARNING lib: careful"  # and no escape reaches the terminal


@pytest.mark.timeout(30)
def test_log_file_in_a_missing_directory_is_a_one_line_error(tmp_path: Path) -> None:
    result = invoke("run", f"{ARGV}:flow", "--log-file", str(tmp_path / "nowhere" / "x.jsonl"))
    assert result.exit_code == 2
    assert "--log-file" in result.stderr and "does not exist" in result.stderr


# ── maps in the progress view and the summary ────────────────────────────────────


def _item_events(name: str, outcomes: list[str], *, start: float = 100.0) -> list[Event]:
    """The events a map of ``outcomes`` sends, two items running at a time."""
    events = [Event("flow_started", "batch", "r", start)]
    clock = start
    for index, outcome in enumerate(outcomes):
        key = f"row-{index}"
        began = clock
        events.append(Event("step_started", "batch", "r", began, step=name, attempt=1, item=key, index=index))
        clock += 0.01
        error = None if outcome == "completed" else ValueError(f"bad row {index}")
        events.append(
            Event(
                "step_finished",
                "batch",
                "r",
                clock,
                step=name,
                attempt=1,
                status=outcome,
                error=error,
                started_at=began,
                item=key,
                index=index,
            )
        )
    events.append(Event("group_finished", "batch", "r", clock, group=name, status="partial"))
    events.append(Event("flow_finished", "batch", "r", clock, status="completed"))
    return events


def test_a_map_is_one_bar_on_a_terminal_not_a_line_per_item() -> None:
    flow = Flow("batch").step("load", lambda ctx: None)
    stream = io.StringIO()
    progress = Progress(stream, flow, live=True)
    outcomes = ["completed"] * 500 + ["failed"] * 25
    try:
        for event in _item_events("rows", outcomes):
            progress.event(event)
    finally:
        progress.close()
    text = stream.getvalue()
    assert "rows [" in text and "running" in text and "items/s" in text
    assert text.count("ValueError: bad row") == 20  # the first 20 failures, then counted only
    assert "counted, not listed" in text
    assert "row-0'" not in text  # completed items get no line
    assert "map         rows: \x1b[33mpartial\x1b[0m (525 done, 0 running, 25 failed)" in text


def test_a_map_without_a_terminal_prints_its_failures_and_its_verdict() -> None:
    flow = Flow("batch").step("load", lambda ctx: None)
    stream = io.StringIO()
    progress = Progress(stream, flow, live=False)
    try:
        for event in _item_events("rows", ["completed", "failed", "completed"]):
            progress.event(event)
    finally:
        progress.close()
    lines = stream.getvalue().splitlines()
    assert any("failed" in line and "rows['row-1']: ValueError: bad row 1" in line for line in lines)
    assert sum("rows[" in line for line in lines) == 1
    assert lines[-2].endswith("map         rows: partial (3 done, 0 running, 1 failed)")


def test_the_summary_has_one_row_per_map_then_its_first_20_failed_items() -> None:
    statuses = [StepStatus.COMPLETED] * 70 + [StepStatus.FAILED] * 29 + [StepStatus.TIMED_OUT]
    text = summary_table(_mapped_result(statuses))
    rows = text.splitlines()
    (row,) = [line for line in rows if line.startswith("rows ")]
    assert "partial" in row and "100 items: 70 completed, 29 failed, 1 timed out" in row
    items = [line for line in rows if line.startswith("  rows[")]
    assert len(items) == 20
    assert "rows['row-70']" in items[0] and "ValueError: bad row 70" in items[0]
    assert any("... 10 more" in line for line in rows)


@pytest.mark.timeout(30)
def test_a_group_still_gets_a_bar_and_item_events_never_reach_it() -> None:
    flow = Flow("wide").parallel("many", [Step(f"m{i}", lambda ctx: None) for i in range(10)])
    stream = io.StringIO()
    progress = Progress(stream, flow, live=True)
    try:
        flow.run(on_event=progress.event)
    finally:
        progress.close()
    assert "10/10 done" in stream.getvalue()
    assert progress.maps == {}


@pytest.mark.timeout(30)
def test_a_bad_target_under_json_leaves_stdout_empty_and_gives_it_back(tmp_path: Path) -> None:
    noisy = _fresh_copy(NOISY, tmp_path, "noisy_missing")
    before = sys.stdout
    result = invoke("run", f"{noisy}:missing", "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    # What the target printed while imported, then the one-line error.
    assert result.stderr.splitlines()[0].startswith("noisy: printed at import")
    assert "has no attribute 'missing'" in result.stderr.splitlines()[1]
    assert len(result.stderr.splitlines()) == 2
    assert sys.stdout is before


@pytest.mark.timeout(30)
def test_resume_takes_the_targets_arguments_after_a_double_dash_too(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    assert invoke("run", f"{ARGV}:flow", "--journal", str(journal), "--quiet").exit_code == 0
    result = invoke("resume", f"{ARGV}:flow", "no-such-run", "--journal", str(journal), "--", "x")
    assert result.exit_code == 2
    assert "extra argument" not in result.stderr
    assert "no-such-run" in result.stderr
