"""What the command draws on a terminal: the live progress view and the summary table.

Text that comes from a step (its error) or from a journal is passed through
``_printable`` first, so it cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from flowpool import Event, Flow, FlowResult, Group, RemoteError

__all__ = ["Progress", "summary_table"]


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
