"""The ``flowpool`` command: options and output through click's runner, exit
statuses and signals through real subprocesses."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowpool import EVENT_KINDS, Event, Flow, Step
from flowpool.cli import Progress, load_target, main, summary_table

FLOWS = Path(__file__).parent / "flows"
SAMPLE = FLOWS / "sample.py"
REPO = Path(__file__).parent.parent


def target(name: str) -> str:
    return f"{SAMPLE}:{name}"


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def one_line_error(result: Result) -> str:
    """The run failed with status 2 and exactly one line on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    return lines[0]


def flowpool(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "flowpool", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


# ── run: outcomes and output ─────────────────────────────────────────────────────


@pytest.mark.timeout(30)
def test_run_completed_prints_progress_and_summary_on_stderr_and_status_on_stdout() -> None:
    result = invoke("run", target("ok_flow"))
    assert result.exit_code == 0, result.stderr
    outcome, counts = result.stdout.splitlines()  # the outcome, then the counts line
    assert "'ok' completed" in outcome
    assert counts == "4/4 completed"
    assert "started     left [pair]" in result.stderr
    assert "group       pair: completed" in result.stderr
    header = next(line for line in result.stderr.splitlines() if line.startswith("step "))
    for column in ("step", "group", "status", "attempts", "duration", "error", "compensation"):
        assert column in header
    assert "\x1b[" not in result.stderr  # not a terminal: no colour, no redraw


@pytest.mark.timeout(30)
def test_run_failed_exits_1_and_reports_compensations() -> None:
    result = invoke("run", target("failing_flow"))
    assert result.exit_code == 1
    assert "failed" in result.stdout
    assert "RuntimeError: charge exploded" in result.stderr
    assert "compensated (in this order): hotel, reserve" in result.stderr
    rows = {line.split()[0]: line for line in result.stderr.splitlines() if line.split()}
    assert rows["never"].split()[2] == "skipped"
    assert rows["hotel"].rstrip().endswith("compensated")


@pytest.mark.timeout(30)
def test_summary_shows_failed_compensations() -> None:
    result = invoke("run", target("saga_flow"))
    assert result.exit_code == 1
    assert "NOT compensated: hotel" in result.stderr
    assert "failed: OSError: could not undo hotel" in result.stderr
    assert "compensated (in this order): car, book" in result.stderr


@pytest.mark.timeout(30)
def test_json_puts_only_the_result_on_stdout() -> None:
    result = invoke("run", target("failing_flow"), "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert data["status"] == "failed"
    assert data["failed_stage"] == "charge"
    assert data["compensated"] == ["hotel", "reserve"]
    assert list(data["steps"]) == ["reserve", "hotel", "car", "charge", "never"]
    assert "step " in result.stderr  # the summary still goes to stderr


@pytest.mark.timeout(30)
def test_input_json_reaches_ctx_input() -> None:
    result = invoke("run", target("ok_flow"), "--json", "--input", '{"user_id": 7}')
    assert result.exit_code == 0
    assert json.loads(result.stdout)["steps"]["echo"]["value"] == {"user_id": 7}


@pytest.mark.timeout(30)
def test_input_file_and_stdin(tmp_path: Path) -> None:
    path = tmp_path / "input.json"
    path.write_text('[1, 2, "three"]', encoding="utf-8")
    result = invoke("run", target("ok_flow"), "--json", "--input-file", str(path))
    assert json.loads(result.stdout)["steps"]["echo"]["value"] == [1, 2, "three"]
    result = invoke("run", target("ok_flow"), "--json", "--input-file", "-", input='{"from": "stdin"}')
    assert json.loads(result.stdout)["steps"]["echo"]["value"] == {"from": "stdin"}


@pytest.mark.timeout(30)
def test_a_callable_target_is_called_for_its_flow() -> None:
    result = invoke("run", target("make_flow"), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["name"] == "made"


@pytest.mark.timeout(30)
def test_module_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "myflows"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "jobs.py").write_text(
        "from flowpool import Flow\nflow = Flow('from-module').step('one', lambda ctx: 1)\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke("run", "myflows.jobs:flow", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "from-module"


@pytest.mark.timeout(30)
def test_quiet_prints_no_progress_and_no_summary() -> None:
    result = invoke("run", target("failing_flow"), "--quiet")
    assert result.exit_code == 1
    assert result.stderr == ""
    assert "failed" in result.stdout


@pytest.mark.timeout(30)
def test_verbose_attaches_a_log_handler_for_the_run_only() -> None:
    logger = logging.getLogger("flowpool")
    handlers = list(logger.handlers)
    result = invoke("run", target("ok_flow"), "-vv")
    assert result.exit_code == 0
    assert logger.handlers == handlers  # removed again after the run


@pytest.mark.timeout(30)
def test_verbose_shows_the_library_log(tmp_path: Path) -> None:
    # The engine logs a listener that raises; -v makes that visible.
    flows = tmp_path / "logging_flow.py"
    flows.write_text(
        "import logging\n"
        "from flowpool import Flow\n"
        "def step(ctx):\n"
        "    logging.getLogger('flowpool.user').warning('hello from the step')\n"
        "flow = Flow('logs').step('one', step)\n",
        encoding="utf-8",
    )
    result = invoke("run", f"{flows}:flow", "-v")
    assert result.exit_code == 0
    assert "hello from the step" in result.stderr
    quiet = invoke("run", f"{flows}:flow")
    assert "hello from the step" not in quiet.stderr


@pytest.mark.timeout(30)
def test_events_file_holds_one_event_per_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    result = invoke("run", target("retry_flow"), "--events", str(path))
    assert result.exit_code == 1  # the slow step times out
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert events[0]["kind"] == "flow_started"
    assert events[-1]["kind"] == "flow_finished"
    assert {event["kind"] for event in events} <= set(EVENT_KINDS)
    retrying = [e for e in events if e["kind"] == "step_retrying"]
    assert [(e["step"], e["attempt"]) for e in retrying] == [
        ("flaky", 1),
        ("flaky", 2),
        ("flaky-member", 1),
        ("flaky-member", 2),
    ]
    assert all(e["error"]["type"] == "ConnectionError" for e in retrying)
    slow = next(e for e in events if e["kind"] == "step_finished" and e["step"] == "slow")
    assert slow["status"] == "timed_out"
    assert set(events[0]) == set(Event("flow_started", "f", "r", 0.0).to_dict())


@pytest.mark.timeout(30)
def test_timeline_option_writes_one_bar_per_attempt(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    page = tmp_path / "timeline.html"
    result = invoke("run", target("retry_flow"), "--events", str(events), "--timeline", str(page))
    assert result.exit_code == 1
    html = page.read_text(encoding="utf-8")
    started = sum(1 for line in events.read_text().splitlines() if json.loads(line)["kind"] == "step_started")
    assert started == 3 + 3 + 1 + 1  # flaky, flaky-member, steady, slow
    assert html.count('class="bar attempt"') == started
    assert 'data-status="timed_out"' in html
    assert "<script" not in html


@pytest.mark.timeout(30)
def test_progress_bar_for_a_large_group_on_a_terminal() -> None:
    flow = Flow("wide").parallel("many", [Step(f"m{i}", lambda ctx: None) for i in range(10)])
    stream = io.StringIO()
    progress = Progress(stream, flow, live=True)
    try:
        flow.run(on_event=progress.event)
    finally:
        progress.close()
    text = stream.getvalue()
    assert "many [" in text and "10/10 done" in text
    assert "\x1b[" in text  # redrawn in place
    assert "started     m" not in text  # members of a large group are counted, not listed


@pytest.mark.timeout(30)
def test_live_view_shows_running_steps_and_retries() -> None:
    flow = Flow("one").step("flaky", lambda ctx: 1 / (ctx.attempt - 1), retries=1)
    stream = io.StringIO()
    progress = Progress(stream, flow, live=True)
    try:
        result = flow.run(on_event=progress.event)
    finally:
        progress.close()
    assert result.ok
    text = stream.getvalue()
    assert "running  flaky" in text
    assert "retrying" in text and "ZeroDivisionError" in text
    assert "\x1b[32m" in text  # completed, in green


@pytest.mark.timeout(30)
def test_control_characters_in_step_errors_never_reach_the_terminal() -> None:
    hostile = "bad \x1b]0;pwned\x07title\x1b[2J\x1b[1;1Hclear \x07bell\x9b1m\u202eend"

    def fails(ctx):  # type: ignore[no-untyped-def]
        raise ValueError(hostile)

    flow = Flow("one").step("fails", fails, retries=1)
    stream = io.StringIO()
    progress = Progress(stream, flow, live=True)
    try:
        result = flow.run(on_event=progress.event)
    finally:
        progress.close()
    shown = stream.getvalue() + summary_table(result, colour=True)
    assert "ValueError: bad title" in shown and "clear \\x07bell\\x9b1m\\u202eend" in shown
    for injected in ("\x1b]", "\x1b[2J", "\x1b[1;1H", "\x07", "\x9b", "\u202e"):
        assert injected not in shown, repr(injected)


def test_no_colour_when_no_color_is_set_or_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowpool.cli import _live_ok

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    assert _live_ok(Terminal())
    assert not _live_ok(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not _live_ok(Terminal())


@pytest.mark.timeout(30)
def test_summary_table_lists_every_step() -> None:
    flow = Flow("t").step("a", lambda ctx: 1).parallel("g", [Step("b", lambda ctx: 1 / 0), Step("c", lambda ctx: 2)])
    text = summary_table(flow.run())
    assert "ZeroDivisionError: division by zero" in text
    assert [line.split()[0] for line in text.splitlines()[2:5]] == ["a", "b", "c"]
    assert "flow 't' completed" in text


@pytest.mark.timeout(30)
def test_run_timeout_fails_the_run_and_compensates(tmp_path: Path) -> None:
    marker, compensated = tmp_path / "running", tmp_path / "compensated"
    data = json.dumps({"marker": str(marker), "compensated": str(compensated)})
    result = invoke("run", target("hang_flow"), "--timeout", "0.3", "--input", data, "--json")
    assert result.exit_code == 1
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "failed"
    assert outcome["error"]["type"] == "FlowTimeoutError"
    assert outcome["compensated"] == ["reserve"]
    assert compensated.read_text() == "reserve compensated"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_an_unreachable_dask_scheduler_exits_2_with_one_error_line() -> None:
    pytest.importorskip("distributed")
    # Nothing listens on port 9 here; flowpool gives the scheduler 10 s to answer.
    result = invoke("run", target("ok_flow"), "--executor", "dask://127.0.0.1:9")
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1
    assert errors[0].startswith("flowpool: error: ") and "127.0.0.1:9" in errors[0]


# ── run: every error path exits 2 with one line ──────────────────────────────────


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input", "{not json"], "--input is not valid JSON"),
        (["--input", "1", "--input-file", "x.json"], "not both"),
        (["--input-file", "/nonexistent/input.json"], "cannot read --input-file"),
        (["--workers", "0"], "--workers"),
        (["--workers", "many"], "--workers"),
        (["--executor", "fibres"], "--executor"),
        (["--executor", "dask://nohost"], "--executor"),
        (["--timeout", "0"], "--timeout"),
        (["--timeout", "-3"], "--timeout"),
        (["--events", "/nonexistent/dir/events.jsonl"], "does not exist"),
        (["--timeline", "/nonexistent/dir/t.html"], "does not exist"),
        (["--no-such-option"], "no-such-option"),
    ],
)
def test_bad_options_exit_2(args: list[str], expected: str) -> None:
    line = one_line_error(invoke("run", target("ok_flow"), *args))
    assert expected in line


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing", "has no attribute 'missing' (flows in it:"),
        ("not_a_flow", "'not_a_flow' in"),
        ("Flow", "not a flowpool.Flow"),
        ("make_nothing", "make_nothing() in"),
        ("make_broken", "LookupError: no configuration found"),
        ("make_invalid", "make_invalid() built an invalid flow"),
        ("empty_flow", "no stages"),
    ],
)
def test_bad_targets_exit_2(name: str, expected: str) -> None:
    line = one_line_error(invoke("run", target(name)))
    assert expected in line


@pytest.mark.timeout(30)
def test_factory_error_names_the_file_and_line() -> None:
    line = one_line_error(invoke("run", target("make_broken")))
    number = next(
        n for n, text in enumerate(SAMPLE.read_text().splitlines(), start=1) if "no configuration found" in text
    )
    assert f"sample.py:{number}" in line


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_such_file.py:flow", "no such file: no_such_file.py"),
        ("no_such_package.jobs:flow", "no module named 'no_such_package.jobs'"),
        ("just-a-name", "must look like path/to/file.py:NAME"),
        (f"{SAMPLE}:", "must look like"),
    ],
)
def test_missing_targets_exit_2(spec: str, expected: str) -> None:
    assert expected in one_line_error(invoke("run", spec))


@pytest.mark.timeout(30)
def test_an_error_while_importing_the_file_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken_flows.py"
    broken.write_text("from flowpool import Flow\n\nratio = 1 / 0\nflow = Flow('never')\n", encoding="utf-8")
    line = one_line_error(invoke("run", f"{broken}:flow"))
    assert "ZeroDivisionError: division by zero" in line
    assert f"{broken}:3" in line


@pytest.mark.timeout(30)
def test_a_syntax_error_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "bad_syntax.py"
    broken.write_text("from flowpool import Flow\nflow = Flow('x'\nx = = 2\n", encoding="utf-8")
    line = one_line_error(invoke("show", f"{broken}:flow"))
    assert "SyntaxError" in line
    assert "bad_syntax.py:" in line


@pytest.mark.timeout(30)
def test_an_import_error_in_a_module_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "brokenpkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "jobs.py").write_text("import no_such_dependency_here\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    line = one_line_error(invoke("run", "brokenpkg.jobs:flow"))
    assert "ModuleNotFoundError: No module named 'no_such_dependency_here'" in line
    assert "jobs.py:1" in line


def test_load_target_returns_the_flow() -> None:
    assert load_target(target("ok_flow")).name == "ok"
    assert load_target(target("make_flow")).name == "made"


# ── show ─────────────────────────────────────────────────────────────────────────


@pytest.mark.timeout(30)
def test_show_text_describes_policies_retries_timeouts_and_compensations() -> None:
    result = invoke("show", target("policies_flow"))
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "1. step load" in text
    assert "retries 2" in text and "timeout 5 s" in text and "compensate undo (retries 1)" in text
    assert "2. parallel group strict (2 members)" in text and "fail fast" in text
    assert "quorum: fails when fewer than 2 of 3 members complete" in text
    assert "required: d" in text and "at most 2 at a time" in text
    assert "on process" in text
    assert "compensated in this order: load" in text


@pytest.mark.timeout(30)
def test_show_mermaid_and_dot() -> None:
    mermaid = invoke("show", target("policies_flow"), "--format", "mermaid")
    assert mermaid.exit_code == 0
    assert mermaid.stdout.startswith("flowchart TD")
    assert mermaid.stdout.count("subgraph") == 2
    assert "-->" in mermaid.stdout
    dot = invoke("show", target("policies_flow"), "--format", "dot")
    assert dot.exit_code == 0
    assert dot.stdout.startswith('digraph "policies" {')
    assert dot.stdout.count("subgraph cluster_") == 2
    assert dot.stdout.rstrip().endswith("}")
    assert "shape=point" in dot.stdout  # two groups in a row meet at a join point


@pytest.mark.timeout(30)
def test_show_does_not_run_the_flow(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    flows = tmp_path / "side_effect.py"
    flows.write_text(
        "from pathlib import Path\nfrom flowpool import Flow\n"
        f"flow = Flow('x').step('touch', lambda ctx: Path({str(marker)!r}).touch())\n",
        encoding="utf-8",
    )
    assert invoke("show", f"{flows}:flow").exit_code == 0
    assert not marker.exists()


@pytest.mark.timeout(30)
def test_show_errors_exit_2() -> None:
    assert "no such file" in one_line_error(invoke("show", "nowhere.py:flow"))
    assert "no stages" in one_line_error(invoke("show", target("empty_flow")))
    assert "--format" in one_line_error(invoke("show", target("ok_flow"), "--format", "png"))


# ── timeline ─────────────────────────────────────────────────────────────────────


@pytest.mark.timeout(30)
def test_timeline_command_draws_the_same_page_from_a_saved_log(tmp_path: Path) -> None:
    events = tmp_path / "run.jsonl"
    live = tmp_path / "live.html"
    invoke("run", target("retry_flow"), "--events", str(events), "--timeline", str(live))
    result = invoke("timeline", str(events), "-o", str(tmp_path / "saved.html"))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "saved.html").read_text() == live.read_text()
    default = invoke("timeline", str(events))
    assert default.exit_code == 0
    assert (tmp_path / "run.html").exists()


@pytest.mark.timeout(30)
def test_timeline_command_errors_exit_2(tmp_path: Path) -> None:
    assert "cannot read" in one_line_error(invoke("timeline", str(tmp_path / "missing.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "flow_started", "time": 1}\nnot json\n', encoding="utf-8")
    assert "bad.jsonl:2: not valid JSON" in one_line_error(invoke("timeline", str(bad)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert "no events" in one_line_error(invoke("timeline", str(empty)))


# ── the installed command, exit statuses and signals (real processes) ────────────


@pytest.mark.timeout(60)
def test_exit_statuses_in_a_real_process() -> None:
    assert flowpool("run", target("ok_flow")).returncode == 0
    assert flowpool("run", target("failing_flow")).returncode == 1
    bad = flowpool("run", target("missing"))
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    usage = flowpool("run", target("ok_flow"), "--workers", "0")
    assert usage.returncode == 2
    assert usage.stderr.count("\n") == 1


@pytest.mark.timeout(60)
def test_import_error_in_a_real_process_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import os\nraise RuntimeError('config missing')\n", encoding="utf-8")
    done = flowpool("run", f"{broken}:flow")
    assert done.returncode == 2
    assert done.stdout == ""
    assert (
        done.stderr.strip() == f"flowpool: error: importing {broken} failed: RuntimeError: config missing ({broken}:2)"
    )


@pytest.mark.timeout(60)
def test_json_in_a_real_process_keeps_stdout_clean() -> None:
    done = flowpool("run", target("retry_flow"), "--json", "-v")
    assert done.returncode == 1
    assert json.loads(done.stdout)["steps"]["slow"]["status"] == "timed_out"


@pytest.mark.timeout(90)
def test_process_executor_loads_the_file_in_workers() -> None:
    done = flowpool("run", target("failing_flow"), "--executor", "process", "--workers", "2", "--json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["compensated"] == ["hotel", "reserve"]


def test_importing_flowpool_does_not_import_click() -> None:
    code = "import sys, flowpool; assert 'click' not in sys.modules, 'click imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def _interrupt(tmp_path: Path, signum: int) -> tuple[subprocess.CompletedProcess[str], Path]:
    marker = tmp_path / "running"
    compensated = tmp_path / "compensated"
    command = [
        sys.executable,
        "-m",
        "flowpool",
        "run",
        target("hang_flow"),
        "--json",
        "--input",
        json.dumps({"marker": str(marker), "compensated": str(compensated)}),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        try:
            # Polling for a file the step writes: the only way to know, from another
            # process, that the run has reached the step.
            deadline = time.monotonic() + 30
            while not marker.exists():
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the step never started"
                time.sleep(0.02)
            process.send_signal(signum)
            stdout, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), compensated


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_compensates_and_exits(tmp_path: Path, signum: int, status: int) -> None:
    done, compensated = _interrupt(tmp_path, signum)
    assert done.returncode == status, done.stderr
    assert compensated.read_text() == "reserve compensated"
    data = json.loads(done.stdout)
    assert data["status"] == "cancelled"
    assert data["compensated"] == ["reserve"]
    assert data["steps"]["wait"]["status"] == "cancelled"
    assert data["steps"]["after"]["status"] == "skipped"
    assert "Traceback" not in done.stderr
    assert ("SIGTERM" if signum == signal.SIGTERM else "interrupt") in done.stderr


@pytest.mark.timeout(30)
def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert "flowpool" in result.stdout
