"""The ``flowpool`` command: ``run``, ``show``, ``demo`` and ``timeline``.

It uses only flowpool's public API (plus its own rendering modules), so what
the command can do, a user's script can do too. Exit statuses: 0 the flow
completed, 1 it failed, 2 bad usage / unloadable target / bad definition,
130 interrupted by Ctrl-C, 143 stopped by SIGTERM. Every user-facing error is
one line on stderr, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import IO, Any, NoReturn

import click

from flowpool import (
    Event,
    Flow,
    FlowDefinitionError,
    FlowInterrupted,
    FlowpoolError,
    FlowResult,
    Group,
    Journal,
    JournalError,
    RemoteError,
    __version__,
)

from ._demo import run_demo
from ._plan import PLAN_FORMATS, render_plan
from ._timeline import read_events, render_timeline

__all__ = ["load_target", "main"]

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM


class CliError(click.ClickException):
    """A user-facing error: one line on stderr and exit status 2."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        # One line, whatever the user's exception put in its message.
        super().__init__(" ".join(message.split()))

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the one-line message on stderr."""
        click.echo(f"flowpool: error: {self.format_message()}", err=True)


def _fail(message: str) -> NoReturn:
    raise CliError(message)


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


# ── loading a TARGET ─────────────────────────────────────────────────────────────


def _where(error: BaseException, prefer: Path | None) -> str:
    """``file:line`` where ``error`` was raised, preferring frames in ``prefer``."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}:{error.lineno}"
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<frozen") and "importlib" not in Path(frame.filename).parts
    ]
    if prefer is not None:
        own = [frame for frame in frames if Path(frame.filename).resolve() == prefer]
        frames = own or frames
    if not frames:
        return "?"
    return f"{frames[-1].filename}:{frames[-1].lineno}"


def _summary(error: BaseException) -> str:
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg}"
    lines = traceback.format_exception_only(type(error), error)
    text = lines[0].strip() if lines else type(error).__name__
    return text or type(error).__name__


def _import_file(text: str) -> tuple[ModuleType, Path]:
    path = Path(text)
    if not path.is_file():
        _fail(f"no such file: {text}" if not path.exists() else f"not a file: {text}")
    path = path.resolve()
    # Like ``python file.py``: the file's directory comes first on sys.path, so its
    # sibling imports work and worker processes can import the module by name.
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        existing_file = getattr(existing, "__file__", None)
        if existing_file and Path(existing_file).resolve() == path:
            return existing, path
    by_value = existing is not None or not name.isidentifier()
    if by_value:
        # The name is taken (or unusable): load under a private name, whose functions
        # worker processes then receive by value instead of importing them.
        safe = re.sub(r"\W", "_", path.stem)
        name = f"_flowpool_target_{safe}_{abs(hash(str(path))):x}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        _fail(f"cannot import {text}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        sys.modules.pop(name, None)
        raise
    except BaseException as error:  # noqa: BLE001 - the user's file may raise anything, SystemExit included
        sys.modules.pop(name, None)
        _fail(f"importing {text} failed: {_summary(error)} ({_where(error, path)})")
    if by_value:
        try:
            import cloudpickle

            cloudpickle.register_pickle_by_value(module)
        except Exception:  # noqa: BLE001 - only process mode needs it; a run there will say what is wrong
            logging.getLogger("flowpool").debug("could not register %s for pickling by value", text)
    return module, path


def _import_module(text: str) -> tuple[ModuleType, Path | None]:
    # ``python -m`` puts the working directory first; ``flowpool`` as a script does not.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if not all(part.isidentifier() for part in text.split(".")):
        _fail(f"{text!r} is neither an existing file nor a module name (package.module)")
    try:
        spec = importlib.util.find_spec(text)
    except ModuleNotFoundError:
        spec = None
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - a parent package's __init__ raised
        _fail(f"importing {text} failed: {_summary(error)} ({_where(error, None)})")
    if spec is None:
        hint = " (a file path needs to end in .py)" if "." not in text else ""
        _fail(f"no module named {text!r}{hint}")
    origin = Path(spec.origin).resolve() if spec.origin and spec.has_location else None
    try:
        module = importlib.import_module(text)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - the user's module may raise anything, SystemExit included
        _fail(f"importing {text} failed: {_summary(error)} ({_where(error, origin)})")
    return module, origin


def load_target(target: str) -> Flow:
    """Load the flow named by ``TARGET`` (``path/to/file.py:NAME`` or ``package.module:NAME``).

    ``NAME`` may be a ``Flow`` or a callable that returns one.

    Raises:
        CliError: the file or module is missing, importing it failed, the name is
            missing, or it is not a flow; the message is one line.
    """
    source, colon, name = target.rpartition(":")
    if not colon or not source or not name:
        _fail(f"TARGET {target!r} must look like path/to/file.py:NAME or package.module:NAME")
    is_file = source.endswith(".py") or "/" in source or os.sep in source or Path(source).is_file()
    module, path = _import_file(source) if is_file else _import_module(source)
    obj: Any = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            flows = sorted(key for key, value in vars(module).items() if isinstance(value, Flow))
            hint = f" (flows in it: {', '.join(flows)})" if flows else ""
            _fail(f"{source} has no attribute {name!r}{hint}")
    if isinstance(obj, Flow):
        return obj
    if not callable(obj) or isinstance(obj, type):
        _fail(f"{name!r} in {source} is a {type(obj).__name__}, not a flowpool.Flow or a function returning one")
    try:
        made = obj()
    except KeyboardInterrupt:
        raise
    except FlowDefinitionError as error:
        _fail(f"{name}() built an invalid flow: {error}")
    except BaseException as error:  # noqa: BLE001 - the user's factory may raise anything
        _fail(f"calling {name}() from {source} failed: {_summary(error)} ({_where(error, path)})")
    if not isinstance(made, Flow):
        _fail(f"{name}() in {source} returned a {type(made).__name__}, not a flowpool.Flow")
    return made


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


# ── live progress ────────────────────────────────────────────────────────────────


def _live_ok(stream: IO[str]) -> bool:
    """Redraw with ANSI (and colour) only on a terminal, and never when NO_COLOR is set."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_COLOURS = {
    "completed": "32",
    "compensated": "35",
    "partial": "33",
    "failed": "31",
    "timed_out": "33",
    "retrying": "33",
    "cancelled": "2",
    "skipped": "2",
}


# Terminal escape sequences: CSI (colours, cursor moves), OSC (titles, links), and
# the two-character ones.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def _printable(text: str) -> str:
    """Text written by a step (an error message) or read from a journal, made safe to
    print on a terminal: escape sequences dropped, other control characters shown as
    ``\\xNN`` so that they cannot move the cursor, recolour or retitle the terminal."""
    text = _ESCAPES.sub("", text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _error_line(error: Any, width: int = 80) -> str:
    """One printable line for an error description (``describe_error``'s dict) or exception."""
    if error is None:
        return ""
    if isinstance(error, RemoteError):
        text = f"{error.type_name}: {error.message}"  # the original type, not the stand-in's
    elif isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}"
    elif isinstance(error, dict):
        text = f"{error.get('type')}: {error.get('message')}"
    else:
        text = str(error)
    text = _printable(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 3] + "..."


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


class Progress:
    """Shows a run's events on a stream: a live view on a terminal, plain lines otherwise.

    The live view keeps, under the lines already printed, a block of the steps
    running now (with elapsed time and attempt), the retries waiting, and a bar
    for each large group; a daemon thread refreshes the elapsed times.
    """

    LARGE_GROUP = 8  # groups at least this big get a bar instead of a line per member
    BLOCK_LINES = 12
    REFRESH = 0.2

    def __init__(self, stream: IO[str], flow: Flow, *, live: bool) -> None:
        self.stream = stream
        self.live = live
        self.lock = threading.RLock()
        self.start: float | None = None
        self.running: dict[str, tuple[str | None, int, float]] = {}
        self.waiting: dict[str, tuple[int, float]] = {}
        self.sizes = {
            stage.name: len(stage.members)
            for stage in flow.stages
            if isinstance(stage, Group) and len(stage.members) >= self.LARGE_GROUP
        }
        self.done: dict[str, dict[str, int]] = {name: {} for name in self.sizes}
        self.drawn = 0
        self.stopped = threading.Event()
        self.ticker: threading.Thread | None = None
        if live:
            self.ticker = threading.Thread(target=self._tick, name="flowpool-progress", daemon=True)
            self.ticker.start()

    # Events carry monotonic seconds from the system clock; the live view compares
    # against the same clock to show how long a step has been running.
    _now = staticmethod(time.monotonic)

    def _tick(self) -> None:
        while not self.stopped.wait(self.REFRESH):
            with self.lock:
                if self.drawn or self.running or self.waiting:
                    self._draw([])

    def close(self) -> None:
        """Stop refreshing and clear the live block."""
        self.stopped.set()
        if self.ticker is not None:
            self.ticker.join(timeout=2)
        with self.lock:
            self.running.clear()
            self.waiting.clear()
            self.done = {}
            self._draw([])

    def print(self, line: str) -> None:
        """Print a line above the live block (or just print it)."""
        with self.lock:
            self._draw([line])

    def _paint(self, text: str, status: str) -> str:
        code = _COLOURS.get(status)
        return f"\x1b[{code}m{text}\x1b[0m" if self.live and code else text

    def _width(self) -> int:
        return max(40, shutil.get_terminal_size((100, 24)).columns - 1)

    def _draw(self, lines: list[str]) -> None:
        if not self.live:
            for line in lines:
                self.stream.write(line + "\n")
            self.stream.flush()
            return
        out = []
        if self.drawn:
            # Back to the first line of the block, and clear it before writing anew.
            out.append(f"\x1b[{self.drawn}F\x1b[J")
        out.extend(line + "\n" for line in lines)
        block = self._block()
        out.extend(line + "\n" for line in block)
        self.drawn = len(block)
        self.stream.write("".join(out))
        self.stream.flush()

    def _block(self) -> list[str]:
        now = self._now()
        width = self._width()
        lines: list[str] = []
        for step, (group, attempt, started) in self.running.items():
            if group in self.sizes:
                continue  # shown by the group's bar
            where = f" [{group}]" if group else ""
            again = f" attempt {attempt}" if attempt > 1 else ""
            lines.append(f"  running  {step}{where}{again}  {_seconds(now - started)}"[:width])
        for step, (attempt, at) in self.waiting.items():
            lines.append(f"  waiting  {step}: attempt {attempt} in {_seconds(max(0.0, at - now))}"[:width])
        if len(lines) > self.BLOCK_LINES:
            lines = [*lines[: self.BLOCK_LINES - 1], f"  ... and {len(lines) - self.BLOCK_LINES + 1} more"]
        for group, counts in self.done.items():
            total = self.sizes[group]
            finished = sum(counts.values())
            active = sum(1 for g, _, _ in self.running.values() if g == group)
            if not finished and not active:
                continue
            cells = 24
            filled = round(cells * finished / total)
            bad = sum(n for status, n in counts.items() if status != "completed")
            extra = f", {bad} not completed" if bad else ""
            bar = "#" * filled + "-" * (cells - filled)
            lines.append(f"  {group} [{bar}] {finished}/{total} done, {active} running{extra}"[:width])
        return lines

    def event(self, event: Event) -> None:
        """Show one event."""
        with self.lock:
            lines = self._lines(event)
            self._draw(lines)

    def _lines(self, event: Event) -> list[str]:
        if self.start is None:
            self.start = event.time
        stamp = f"[{event.time - self.start:8.3f}s] "
        kind = event.kind
        step = event.step or ""
        status = str(event.status) if event.status is not None else ""
        where = f" [{event.group}]" if event.group else ""
        error = _error_line(event.error)
        if kind == "flow_started":
            return [f"{stamp}flow {event.flow!r} started (run {event.run_id})"]
        if kind == "flow_finished":
            return [f"{stamp}flow {event.flow!r} " + self._paint(status, status)]
        if kind == "step_started":
            self.waiting.pop(step, None)
            self.running[step] = (event.group, event.attempt or 1, self._now())
            if self.live:
                return []  # the live block shows it
            again = f" attempt {event.attempt}" if (event.attempt or 1) > 1 else ""
            return [f"{stamp}started     {step}{where}{again}"]
        if kind == "step_retrying":
            self.running.pop(step, None)
            delay = event.delay or 0.0
            self.waiting[step] = ((event.attempt or 1) + 1, self._now() + delay)
            text = f"attempt {event.attempt} {status.replace('_', ' ')}: {error}; next attempt in {_seconds(delay)}"
            return [f"{stamp}{self._paint('retrying', 'retrying')}    {step}{where}: {text}"]
        if kind == "step_finished":
            self.running.pop(step, None)
            self.waiting.pop(step, None)
            if event.group in self.done:
                counts = self.done[event.group or ""]
                counts[status] = counts.get(status, 0) + 1
                if self.live and status == "completed":
                    return []  # the bar counts it
            took = ""
            if event.started_at is not None:
                took = f" after {event.attempt or 1} attempt{'s' if (event.attempt or 1) > 1 else ''}"
            reason = f": {error}" if error else ""
            label = self._paint(f"{status:<11}", status)
            return [f"{stamp}{label} {step}{where}{took}{reason}"]
        if kind == "group_finished":
            self.done.pop(event.group or "", None)  # its bar has served
            return [f"{stamp}group       {event.group}: " + self._paint(status, status)]
        if kind == "compensation_started":
            return [] if self.live else [f"{stamp}undoing     {step}"]
        if kind == "compensation_finished":
            if status == "compensated":
                return [f"{stamp}{self._paint('compensated', 'compensated')} {step}"]
            reason = f": {error}" if error else ""
            return [f"{stamp}{self._paint('undo failed', 'failed')} {step} ({status}){reason}"]
        return [f"{stamp}{kind} {step}"]


def _to_stderr(line: str) -> None:
    click.echo(line, err=True)


class _ProgressLogHandler(logging.Handler):
    """Sends log records through the progress view, so they do not tear the live block."""

    def __init__(self, write: Callable[[str], None]) -> None:
        super().__init__()
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        """Write one formatted record."""
        try:
            self.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


# ── the summary ──────────────────────────────────────────────────────────────────


def summary_table(result: FlowResult, *, colour: bool = False) -> str:
    """The end-of-run table: one row per step, then the flow's outcome and compensations."""
    header = ("step", "group", "status", "attempts", "duration", "error", "compensation")
    rows: list[tuple[str, ...]] = []
    not_compensated = set(result.not_compensated)
    for step in result.steps.values():
        if step.compensation is not None:
            undo = step.compensation.status
            if not step.compensation.ok:
                undo += f": {_error_line(step.compensation.error, 40)}"
        elif step.name in not_compensated:
            undo = "not run"
        else:
            undo = "-"
        rows.append(
            (
                step.name,
                step.group or "-",
                step.status.value,
                str(step.attempts),
                _seconds(step.duration),
                _error_line(step.error, 60) or "-",
                undo,
            )
        )
    # Names may come from a journal written elsewhere: print nothing a terminal obeys.
    rows = [tuple(_printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...], status: str | None = None) -> str:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        if colour and status in _COLOURS:
            cells[2] = f"\x1b[{_COLOURS[status]}m{cells[2]}\x1b[0m"
        return "  ".join(cells).rstrip()

    out = [line(header), line(tuple("-" * w for w in widths))]
    out.extend(line(row, row[2]) for row in rows)
    where = f" at stage {result.failed_stage!r}" if result.failed_stage else ""
    cause = f": {_error_line(result.error, 100)}" if result.error is not None and not result.ok else ""
    out.append("")
    out.append(f"flow {result.name!r} {result.status.value}{where} in {_seconds(result.duration)}{cause}")
    if result.compensated:
        out.append(_printable(f"compensated (in this order): {', '.join(result.compensated)}"))
    if result.not_compensated:
        out.append(_printable(f"NOT compensated: {', '.join(result.not_compensated)}"))
    return "\n".join(out)


# ── run ──────────────────────────────────────────────────────────────────────────


@main.command(short_help="Run a flow, with live progress and a summary.")
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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (and nothing else there).")
@click.option("--events", "events_path", metavar="PATH", help="Write every event as one JSON object a line.")
@click.option("--timeline", "timeline_path", metavar="PATH", help="Write an HTML timeline of the run.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary on stderr.")
@click.option("-v", "--verbose", count=True, help="Show flowpool's log (-vv for debug).")
@click.option("--journal", "journal_path", metavar="PATH", help="Record the run in this journal (resumable).")
def run(
    target: str,
    input_json: str | None,
    input_file: str | None,
    executor: str,
    workers: int | None,
    timeout: float | None,
    as_json: bool,
    events_path: str | None,
    timeline_path: str | None,
    quiet: bool,
    verbose: int,
    journal_path: str | None,
) -> None:
    """Run the flow TARGET (path/to/file.py:NAME or package.module:NAME).

    Loading TARGET imports it and so executes its Python code, as
    ``python file.py`` would: run only targets you trust.

    Exit status: 0 completed, 1 failed, 2 bad usage or target, 130 interrupted,
    143 terminated (SIGTERM). Completed steps are compensated before exiting.
    """
    _execute(
        target,
        lambda: _read_input(input_json, input_file),
        executor,
        workers,
        timeout,
        as_json,
        events_path,
        timeline_path,
        quiet,
        verbose,
        journal_path,
        None,
        False,
    )


def _execute(
    target: str,
    read_input: Callable[[], Any],
    executor: str,
    workers: int | None,
    timeout: float | None,
    as_json: bool,
    events_path: str | None,
    timeline_path: str | None,
    quiet: bool,
    verbose: int,
    journal_path: str | None,
    resume_id: str | None,
    force: bool,
) -> NoReturn:
    terminated = threading.Event()
    restore = _install_sigterm(terminated)
    try:
        code = _run(
            target,
            read_input(),
            executor,
            workers,
            timeout,
            as_json,
            events_path,
            timeline_path,
            quiet,
            verbose,
            terminated,
            journal_path,
            resume_id,
            force,
        )
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


def _run(
    target: str,
    value: Any,
    executor: str,
    workers: int | None,
    timeout: float | None,
    as_json: bool,
    events_path: str | None,
    timeline_path: str | None,
    quiet: bool,
    verbose: int,
    terminated: threading.Event,
    journal_path: str | None = None,
    resume_id: str | None = None,
    force: bool = False,
) -> int:
    flow = load_target(target)
    journal = _open_journal(journal_path, must_exist=resume_id is not None) if journal_path else None
    for path, option in ((events_path, "--events"), (timeline_path, "--timeline")):
        if path is not None:
            _check_writable(path, option)
    progress = None if quiet else Progress(sys.stderr, flow, live=_live_ok(sys.stderr))
    logger = logging.getLogger("flowpool")
    handler: logging.Handler | None = None
    previous_level = logger.level
    if verbose:
        handler = _ProgressLogHandler(progress.print if progress is not None else _to_stderr)
        handler.setFormatter(logging.Formatter("flowpool: %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    collected: list[dict[str, Any]] = []
    events_file: IO[str] | None = None
    if events_path is not None:
        try:
            events_file = open(events_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in the finally below
        except OSError as error:
            _fail(f"cannot write --events {events_path}: {error.strerror or error}")

    def on_event(event: Event) -> None:
        record = event.to_dict()
        if events_file is not None:
            # Flushed per line, so the log is complete up to the moment of a crash.
            events_file.write(json.dumps(record, default=repr) + "\n")
            events_file.flush()
        if timeline_path is not None:
            collected.append(record)
        if progress is not None:
            progress.event(event)

    result: FlowResult | None = None
    try:
        if resume_id is not None:
            assert journal is not None
            result = flow.resume(
                resume_id,
                journal=journal,
                force=force,
                executor=executor,
                max_workers=workers,
                timeout=timeout,
                on_event=on_event,
            )
        else:
            listener: Callable[[Event], None] = on_event
            if journal is not None:
                # The run id is known only once the run starts: tell it from the first event.
                listener = _announce_run_id(on_event, journal.path)
            result = flow.run(
                value, executor=executor, max_workers=workers, timeout=timeout, on_event=listener, journal=journal
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
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(previous_level)
    if timeline_path is not None:
        Path(timeline_path).write_text(render_timeline(collected), encoding="utf-8")
    if result is None:
        click.echo("flowpool: interrupted", err=True)
        return code
    if not quiet:
        click.echo("\n" + summary_table(result, colour=_live_ok(sys.stderr)), err=True)
    if timeline_path is not None and not quiet:
        click.echo(f"timeline: {timeline_path}", err=True)
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED) and not quiet:
        why = "SIGTERM" if code == EXIT_TERMINATED else "interrupt"
        click.echo(f"flowpool: stopped by {why}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=repr))
    else:
        click.echo(f"flow {result.name!r} {result.status.value} in {_seconds(result.duration)} (run {result.run_id})")
    return code


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


@main.command(short_help="Continue a journaled run whose process died.")
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
        target,
        lambda: None,
        executor,
        workers,
        None,
        as_json,
        None,
        None,
        quiet,
        0,
        journal_path or _default_journal(),
        run_id,
        force,
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
    import datetime

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
        click.echo(json.dumps(result.to_dict(), indent=2, default=repr))
        return
    click.echo(_printable(f"run {run_id}: flow {result.name!r} {result.status.value}"))
    click.echo(summary_table(result))


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
