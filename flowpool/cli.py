"""The ``flowpool`` command: ``run``, ``show``, ``demo`` and ``timeline``.

It uses only flowpool's public API (plus its own modules: ``_target`` loads a
TARGET, ``_terminal`` draws progress, ``_summary`` the summary, ``_plan`` and ``_timeline``
render plans and timelines), so what the command can do, a user's script can do
too. Exit statuses: 0 the flow completed, 1 it failed, 2 bad usage / unloadable
target / bad definition, 130 interrupted by Ctrl-C, 143 stopped by SIGTERM.
Every user-facing error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

import click

from flowpool import (
    Event,
    Flow,
    FlowDefinitionError,
    FlowInterrupted,
    FlowpoolError,
    FlowResult,
    Journal,
    JournalError,
    RemoteError,
    __version__,
)

from ._demo import run_demo
from ._plan import PLAN_FORMATS, render_plan
from ._stdio import StdoutToStderr
from ._summary import counts_line, not_completed, still_running_lines, summary_table
from ._target import _fail, load_target, script_argv
from ._terminal import Progress, RunLogs, _live_ok, _printable, _seconds
from ._timeline import Timeline, read_events, render_timeline

__all__ = ["load_target", "main"]

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM


class _Command(click.Group):
    """The top-level group: every usage error is one line, and Ctrl-C outside a
    run exits 130 instead of click's ``Aborted!`` with status 1."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command; in standalone mode exit with its status."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as error:
            hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
            click.echo(f"flowpool: error: {' '.join(error.format_message().split())}{hint}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("flowpool: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else EXIT_COMPLETED)


@click.group(cls=_Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowpool")
def main() -> None:
    """Run flows of plain Python functions, show their plan, draw their timeline."""


# ── options ──────────────────────────────────────────────────────────────────────

_DASK_URL = re.compile(r"dask://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


def _check_executor(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value in ("thread", "process"):
        return value
    match = _DASK_URL.fullmatch(value)
    if match and 0 < int(match.group(1)) < 65536:
        return value
    raise click.BadParameter(f"{value!r}: use thread, process or dask://HOST:PORT")


def _read_input(text: str | None, file: str | None) -> Any:
    if text is not None and file is not None:
        _fail("give --input or --input-file, not both")
    where = "--input"
    if file is not None:
        where = f"--input-file {file}"
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except OSError as error:
            _fail(f"cannot read {where}: {error.strerror or error}")
        except UnicodeDecodeError:
            _fail(f"{where} is not UTF-8 text")
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        _fail(f"{where} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}")


def _check_writable(path: str, option: str) -> None:
    parent = Path(path).parent
    if Path(path).is_dir():
        _fail(f"{option} {path}: is a directory")
    if not parent.is_dir():
        _fail(f"{option} {path}: the directory {parent} does not exist")


def _to_stderr(line: str) -> None:
    click.echo(line, err=True)


# ── run ──────────────────────────────────────────────────────────────────────────


class _ScriptCommand(click.Command):
    """A command whose arguments after ``--`` belong to the target: its ``sys.argv[1:]``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Keep what follows the first ``--`` for the script; parse the rest as usual."""
        if "--" in args:
            at = args.index("--")
            ctx.meta[_SCRIPT_ARGS] = tuple(args[at + 1 :])
            args = args[:at]
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            if "extra argument" in error.message:
                error.message += "; the target's own arguments go after --, as in: TARGET [OPTIONS] -- ARG..."
            raise

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        """The usage line shows where the script's arguments go."""
        return [*super().collect_usage_pieces(ctx), "[-- ARG...]"]


_SCRIPT_ARGS = "flowpool.script_args"


def _script_args() -> tuple[str, ...]:
    args: tuple[str, ...] = click.get_current_context().meta.get(_SCRIPT_ARGS, ())
    return args


@main.command(cls=_ScriptCommand, short_help="Run a flow, with live progress and a summary.")
@click.argument("target")
@click.option("--input", "input_json", metavar="JSON", help="The run's input, as JSON (ctx.input).")
@click.option("--input-file", metavar="PATH", help="Read the input as JSON from a file ('-' for stdin).")
@click.option(
    "--executor",
    default="thread",
    show_default=True,
    callback=_check_executor,
    metavar="thread|process|dask://HOST:PORT",
    help="Where steps run.",
)
@click.option("--workers", type=click.IntRange(min=1), metavar="N", help="How many steps may run at once.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="A deadline for the whole run; past it the run fails and completed steps are compensated.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as JSON on stdout; anything else written to stdout during the run goes to stderr.",
)
@click.option(
    "--strict", is_flag=True, help="Exit 1 also when the flow completed but something in it did not (e.g. PARTIAL)."
)
@click.option("--events", "events_path", metavar="PATH", help="Write every event as one JSON object a line.")
@click.option("--timeline", "timeline_path", metavar="PATH", help="Write an HTML timeline of the run.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary on stderr.")
@click.option("-v", "--verbose", count=True, help="Show log records of any logger, with their step (-vv: debug too).")
@click.option("--log-file", "log_path", metavar="PATH", help="Write every log record as JSON lines, with step context.")
@click.option("--journal", "journal_path", metavar="PATH", help="Record the run in this journal (resumable).")
def run(
    target: str,
    input_json: str | None,
    input_file: str | None,
    executor: str,
    workers: int | None,
    timeout: float | None,
    as_json: bool,
    strict: bool,
    events_path: str | None,
    timeline_path: str | None,
    quiet: bool,
    verbose: int,
    log_path: str | None,
    journal_path: str | None,
) -> None:
    """Run the flow TARGET (path/to/file.py:NAME or package.module:NAME).

    Arguments after -- are the target's own: while it is imported and runs,
    sys.argv is [the part of TARGET before ":", ARG...], in worker processes too.

    Loading TARGET imports it and so executes its Python code, as
    ``python file.py`` would: run only targets you trust.

    Exit status: 0 completed, 1 failed (or, with --strict, not everything in it
    completed), 2 bad usage or target, 130 interrupted, 143 terminated
    (SIGTERM). Completed steps are compensated before exiting.
    """
    _execute(
        _Request(
            target,
            lambda: _read_input(input_json, input_file),
            executor=executor,
            workers=workers,
            timeout=timeout,
            as_json=as_json,
            strict=strict,
            events_path=events_path,
            timeline_path=timeline_path,
            quiet=quiet,
            verbose=verbose,
            log_path=log_path,
            journal_path=journal_path,
            script_args=_script_args(),
        )
    )


def _no_input() -> Any:
    return None


@dataclass(frozen=True, slots=True)
class _Request:
    """What ``run`` or ``resume`` was asked to do (``resume_id`` set: resume that run)."""

    target: str
    read_input: Callable[[], Any] = _no_input  # called once signals are handled
    executor: str = "thread"
    workers: int | None = None
    timeout: float | None = None
    as_json: bool = False
    strict: bool = False
    events_path: str | None = None
    timeline_path: str | None = None
    quiet: bool = False
    verbose: int = 0
    log_path: str | None = None
    journal_path: str | None = None
    resume_id: str | None = None
    force: bool = False
    script_args: tuple[str, ...] = ()


def _execute(request: _Request) -> NoReturn:
    terminated = threading.Event()
    restore = _install_sigterm(terminated)
    # From before the target is imported until the JSON is out, stdout is stderr.
    redirect = StdoutToStderr() if request.as_json else None
    try:
        with contextlib.ExitStack() as stack:
            if redirect is not None:
                stack.enter_context(redirect)
            stack.enter_context(script_argv(request.target, request.script_args))
            try:
                code = _run(request, request.read_input(), terminated, redirect)
            except KeyboardInterrupt:
                # Ctrl-C (or SIGTERM) before the run started, e.g. while importing the target.
                click.echo("flowpool: interrupted", err=True)
                code = EXIT_TERMINATED if terminated.is_set() else EXIT_INTERRUPTED
    finally:
        restore()
    raise SystemExit(code)


def _install_sigterm(terminated: threading.Event) -> Callable[[], None]:
    """Make SIGTERM take the same path as Ctrl-C (stop, compensate, report)."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        terminated.set()
        # The run's own Ctrl-C handler (or Python's default one) does the rest.
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        return lambda: None
    # The command promises exit 130 on SIGINT, even when it was started with SIGINT
    # ignored (a non-interactive shell does that to background jobs).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)

    return restore


def _run(request: _Request, value: Any, terminated: threading.Event, redirect: StdoutToStderr | None) -> int:
    flow = load_target(request.target)
    journal = (
        _open_journal(request.journal_path, must_exist=request.resume_id is not None) if request.journal_path else None
    )
    for path, option in (
        (request.events_path, "--events"),
        (request.timeline_path, "--timeline"),
        (request.log_path, "--log-file"),
    ):
        if path is not None:
            _check_writable(path, option)
    events_file: IO[str] | None = None
    if request.events_path is not None:
        try:
            events_file = open(request.events_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in the finally below
        except OSError as error:
            _fail(f"cannot write --events {request.events_path}: {error.strerror or error}")
    try:
        logs = RunLogs(request.verbose, request.log_path)
    except OSError as error:
        if events_file is not None:
            events_file.close()
        _fail(f"cannot write --log-file {request.log_path}: {error.strerror or error}")
    # Started last: nothing below can fail before the finally that closes it.
    progress = None if request.quiet else Progress(sys.stderr, flow, live=_live_ok(sys.stderr))
    timeline = Timeline(flow) if request.timeline_path is not None else None

    def on_event(event: Event) -> None:
        if events_file is not None or timeline is not None:
            record = event.to_dict()
            if events_file is not None:
                # Flushed per line, so the log is complete up to the moment of a crash.
                events_file.write(json.dumps(record, default=repr) + "\n")
                events_file.flush()
            if timeline is not None:
                timeline.add(record)
        if progress is not None:
            progress.event(event)

    result: FlowResult | None = None
    try:
        logs.install(progress.print if progress is not None else _to_stderr)
        if request.resume_id is not None:
            assert journal is not None
            result = flow.resume(
                request.resume_id,
                journal=journal,
                force=request.force,
                executor=request.executor,
                max_workers=request.workers,
                timeout=request.timeout,
                on_event=on_event,
            )
        else:
            listener: Callable[[Event], None] = on_event
            if journal is not None:
                # The run id is known only once the run starts: tell it from the first event.
                listener = _announce_run_id(on_event, journal.path)
            result = flow.run(
                value,
                executor=request.executor,
                max_workers=request.workers,
                timeout=request.timeout,
                on_event=listener,
                journal=journal,
            )
        code = EXIT_COMPLETED if result.ok else EXIT_FAILED
    except FlowInterrupted as interrupted:
        result = interrupted.result
        code = EXIT_TERMINATED if terminated.is_set() else EXIT_INTERRUPTED
    except FlowDefinitionError as error:
        _fail(str(error))
    except FlowpoolError as error:
        # Raised by run() itself, not by a step: the run could not start (e.g. an
        # unreachable Dask scheduler). Steps' errors end up in the result instead.
        _fail(f"{type(error).__name__}: {error}")
    finally:
        if progress is not None:
            progress.close()
        if events_file is not None:
            events_file.close()
        if journal is not None:
            journal.close()
        logs.remove()
    if timeline is not None and request.timeline_path is not None:
        Path(request.timeline_path).write_text(timeline.render(), encoding="utf-8")
    if result is None:
        click.echo("flowpool: interrupted", err=True)
        return code
    missing = not_completed(result) if request.strict and code == EXIT_COMPLETED else ""
    if missing:
        code = EXIT_FAILED
    _report(request, flow, result, code, missing)
    if redirect is not None:
        redirect.write_document(json.dumps(result.to_dict(), indent=2, default=repr) + "\n")
    return code


def _report(request: _Request, flow: Flow, result: FlowResult, code: int, missing: str) -> None:
    """The summary on stderr, warnings that hold even under --quiet, what --strict
    found missing, then the outcome and the counts line (stdout, or stderr under --json)."""
    if not request.quiet:
        click.echo("\n" + summary_table(result, colour=_live_ok(sys.stderr), flow=flow), err=True)
        if request.timeline_path is not None:
            click.echo(f"timeline: {request.timeline_path}", err=True)
        if request.log_path is not None:
            click.echo(f"log: {request.log_path}", err=True)
        if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
            why = "SIGTERM" if code == EXIT_TERMINATED else "interrupt"
            click.echo(f"flowpool: stopped by {why}", err=True)
    # A side effect may still happen after the command exits: say so, whatever -q says.
    for line in still_running_lines(result):
        click.echo(line, err=True)
    if missing:
        click.echo(_printable(f"flowpool: --strict: not everything completed: {missing}"), err=True)
    outcome = f"flow {result.name!r} {result.status.value} in {_seconds(result.duration)} (run {result.run_id})"
    if request.as_json:
        if not request.quiet:
            click.echo(counts_line(result), err=True)
    else:
        click.echo(_printable(outcome))
        click.echo(counts_line(result))


# ── durable runs: --journal, runs, resume ────────────────────────────────────────


def _default_journal() -> str:
    return os.environ.get("FLOWPOOL_JOURNAL") or "runs.db"


def _open_journal(path: str, *, must_exist: bool) -> Journal:
    if must_exist and not Path(path).exists():
        _fail(f"no journal at {path} (give one with --journal PATH or $FLOWPOOL_JOURNAL)")
    try:
        return Journal(path)
    except JournalError as error:
        _fail(str(error))


def _announce_run_id(on_event: Callable[[Event], None], path: str) -> Callable[[Event], None]:
    told = False

    def announce(event: Event) -> None:
        nonlocal told
        if not told:
            told = True
            click.echo(f"flowpool: run id {event.run_id} (journal {path})", err=True)
        on_event(event)

    return announce


@main.command(cls=_ScriptCommand, short_help="Continue a journaled run whose process died.")
@click.argument("target")
@click.argument("run_id")
@click.option("--journal", "journal_path", metavar="PATH", help="The journal (default: $FLOWPOOL_JOURNAL or runs.db).")
@click.option("--force", is_flag=True, help="Resume even if the flow's definition changed since the run.")
@click.option(
    "--executor",
    default="thread",
    callback=_check_executor,
    metavar="thread|process|dask://HOST:PORT",
    help="Where the remaining steps run (default: thread).",
)
@click.option("--workers", type=click.IntRange(min=1), metavar="N", help="How many steps may run at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (and nothing else there).")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary on stderr.")
def resume(
    target: str,
    run_id: str,
    journal_path: str | None,
    force: bool,
    executor: str,
    workers: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Continue run RUN_ID of the flow TARGET from its journal.

    Steps recorded as completed are not run again; a run that had failed finishes
    only its pending compensations; a finished run just shows its result.

    Loading TARGET executes its Python code, and resuming unpickles the run's
    values from the journal, which can execute code too: a journal is as trusted
    as the code that wrote it.
    """
    _execute(
        _Request(
            target,
            executor=executor,
            workers=workers,
            as_json=as_json,
            quiet=quiet,
            journal_path=journal_path or _default_journal(),
            resume_id=run_id,
            force=force,
            script_args=_script_args(),
        )
    )


@main.group(invoke_without_command=True, short_help="List the runs of a journal.")
@click.option("--journal", "journal_path", metavar="PATH", help="The journal (default: $FLOWPOOL_JOURNAL or runs.db).")
@click.pass_context
def runs(ctx: click.Context, journal_path: str | None) -> None:
    """List the runs recorded in a journal, one line each (oldest first)."""
    ctx.obj = journal_path
    if ctx.invoked_subcommand is not None:
        return
    path = journal_path or _default_journal()
    journal = _open_journal(path, must_exist=True)
    try:
        recorded = journal.runs()
    except JournalError as error:
        _fail(str(error))
    finally:
        journal.close()
    for entry in recorded:
        started = _wall(entry.started_at)
        finished = _wall(entry.finished_at) if entry.finished_at is not None else "-"
        line = f"{entry.run_id}  {entry.status:<9}  {entry.flow}  started {started}  finished {finished}"
        click.echo(_printable(line))


def _wall(when: float) -> str:
    return datetime.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")


@runs.command("show", short_help="Show one recorded run.")
@click.argument("run_id")
@click.option("--journal", "journal_path", metavar="PATH", help="The journal (default: $FLOWPOOL_JOURNAL or runs.db).")
@click.option("--json", "as_json", is_flag=True, help="Print the recorded result as JSON.")
@click.pass_context
def runs_show(ctx: click.Context, run_id: str, journal_path: str | None, as_json: bool) -> None:
    """Show the recorded result of run RUN_ID.

    Values and errors are shown from the short text stored beside them: nothing in
    the journal is unpickled, so this is safe on a journal written by anyone.
    """
    path = journal_path or ctx.obj or _default_journal()
    journal = _open_journal(path, must_exist=True)
    try:
        known = {entry.run_id: entry for entry in journal.runs()}
        if run_id not in known:
            _fail(f"journal {path} has no run {run_id!r}")
        entry = known[run_id]
        if entry.status == "running":
            click.echo(
                f"run {run_id} of flow {entry.flow!r} has not finished (its process may have died); "
                f"continue it with: flowpool resume TARGET {run_id} --journal {path}"
            )
            return
        result = journal.summary(run_id)  # text only: inspecting a journal never unpickles
    except JournalError as error:
        _fail(str(error))
    finally:
        journal.close()
    if as_json:
        click.echo(json.dumps(_recorded_dict(result), indent=2, default=repr))
        return
    click.echo(_printable(f"run {run_id}: flow {result.name!r} {result.status.value}"))
    click.echo(summary_table(result))


def _recorded_dict(result: FlowResult) -> dict[str, Any]:
    """``to_dict()`` of a journal summary, its errors described by their recorded type and
    message rather than as the ``RemoteError`` stand-ins that carry them."""

    def described(error: BaseException | None, default: Any) -> Any:
        if isinstance(error, RemoteError):
            return {"type": error.type_name, "message": error.message}
        return default

    data = result.to_dict()
    data["error"] = described(result.error, data["error"])
    for name, step in result.steps.items():
        shown = data["steps"][name]
        shown["error"] = described(step.error, shown["error"])
        if step.compensation is not None:
            shown["compensation"]["error"] = described(step.compensation.error, shown["compensation"]["error"])
    return data


# ── show, timeline, demo ─────────────────────────────────────────────────────────


@main.command(short_help="Print a flow's plan without running it.")
@click.argument("target")
@click.option(
    "--format", "fmt", type=click.Choice(PLAN_FORMATS), default="text", show_default=True, help="How to draw it."
)
def show(target: str, fmt: str) -> None:
    """Print the plan of the flow TARGET without running it.

    Loading TARGET still imports it, which executes its module-level code.
    """
    flow = load_target(target)
    if not flow.stages:
        _fail(f"flow {flow.name!r} has no stages; add one with .step() or .parallel()")
    click.echo(render_plan(flow, fmt), nl=False)


@main.command(short_help="Draw the HTML timeline of a saved event log.")
@click.argument("events_file", metavar="EVENTS.jsonl")
@click.option("-o", "--output", metavar="PATH", help="Where to write the page (default: EVENTS with .html).")
def timeline(events_file: str, output: str | None) -> None:
    """Draw the HTML timeline of a run from its saved event log (flowpool run --events)."""
    try:
        events = read_events(events_file)
    except OSError as error:
        _fail(f"cannot read {events_file}: {error.strerror or error}")
    except UnicodeDecodeError:
        _fail(f"{events_file} is not UTF-8 text")
    except ValueError as error:
        _fail(str(error))
    if not events:
        _fail(f"{events_file} holds no events")
    out = output if output is not None else str(Path(events_file).with_suffix(".html"))
    _check_writable(out, "--output")
    try:
        Path(out).write_text(render_timeline(events), encoding="utf-8")
    except OSError as error:
        _fail(f"cannot write {out}: {error.strerror or error}")
    click.echo(f"timeline: {out}", err=True)


@main.command(short_help="Run bundled example flows and explain them.")
@click.option("--timeline", "timeline_path", metavar="PATH", help="Where to write the timeline (default: a temp file).")
def demo(timeline_path: str | None) -> None:
    """Run bundled example flows and explain what happened (no arguments needed)."""
    if timeline_path is None:
        handle, timeline_path = tempfile.mkstemp(prefix="flowpool-demo-", suffix=".html")
        os.close(handle)
    else:
        _check_writable(timeline_path, "--timeline")
    as_expected = run_demo(click.echo, timeline_path)
    raise SystemExit(EXIT_COMPLETED if as_expected else EXIT_FAILED)
