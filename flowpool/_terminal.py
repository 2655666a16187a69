"""What the command shows while a run goes: the live progress view and log records (``-v``, and
``--log-file`` as JSON lines). The end-of-run summary is ``_summary``'s.

Text that comes from a step (its error) or from a journal is passed through
``_printable`` first, so it cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from flowpool import Event, Flow, Group, LogContextFilter, Map, RemoteError
from flowpool._definition import Always

from ._logcontext import FIELDS as LOG_FIELDS
from ._reasons import PATH_SEPARATOR, SkipReasons, definition_at, subflow_at

__all__ = ["FAILED_ITEMS_SHOWN", "Progress", "RunLogs"]

#: How many failed items of a map are listed, live and in the summary.
FAILED_ITEMS_SHOWN = 20


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
        # Maps are known by their item events; a map whose items have a len() gets a bar.
        self.maps: dict[str, _MapProgress] = {}
        self.map_sizes = {stage.name: size for stage in flow.stages if (size := _items_size(stage)) is not None}
        self.flow = flow
        # Why steps were skipped, per flow being run: () for the top, a subflow's path
        # for each child running now (dropped when it ends, so a long run does not grow).
        self.skips: dict[tuple[str, ...], SkipReasons] = {(): SkipReasons(flow)}
        #: Every map seen, by its path's label: an event under one happened inside an item.
        self.map_labels: set[str] = set()
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
                if self.drawn or self.running or self.waiting or self.maps:
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
            self.maps = {}
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
        lines.extend(bar[:width] for bar in (m.bar(now) for m in self.maps.values()) if bar)
        return lines

    def event(self, event: Event) -> None:
        """Show one event."""
        with self.lock:
            if event.item is not None or event.index is not None:
                # A map may send thousands of these a second: most only move its bar,
                # which the ticker redraws.
                inside = self._inside_item(event.path)
                lines = self._item_lines(event) if inside is None else self._item_child_lines(event, inside)
                if lines:
                    self._draw(lines)
                return
            self._draw(self._lines(event))

    def _skips(self, path: tuple[str, ...]) -> SkipReasons | None:
        """Why-skipped for the flow the step at ``path`` belongs to (None: not in the definition)."""
        prefix = path[:-1]
        found = self.skips.get(prefix)
        if found is None:
            child = subflow_at(self.flow, prefix)
            if child is None:
                return None
            found = self.skips[prefix] = SkipReasons(child)
        return found

    def _lines(self, event: Event) -> list[str]:
        if self.start is None:
            self.start = event.time
        stamp = f"[{event.time - self.start:8.3f}s] "
        kind = event.kind
        path = _path(event)
        step = _label(path)  # a step inside a subflow is named by its path
        status = str(event.status) if event.status is not None else ""
        where = f" [{event.group}]" if event.group else ""
        if kind.startswith("step_") and not where and isinstance(definition_at(self.flow, path), Always):
            where = " [always]"
        error = _error_line(event.error)
        if kind == "group_finished":
            return self._group_lines(event, stamp, status)
        if kind == "flow_started":
            return [f"{stamp}flow {event.flow!r} started (run {event.run_id})"]
        if kind == "flow_finished":
            return [f"{stamp}flow {event.flow!r} " + self._paint(status, status)]
        if kind == "step_started":
            self.skips.pop(path, None)  # a subflow starting (again): its child's stops start afresh
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
            skips = self._skips(path)
            if skips is not None:
                if status == "skipped":
                    error = skips.reason(path[-1])
                skips.saw(path[-1], status, stage=event.group is None)
            self.skips.pop(path, None)  # a subflow's child has ended
            if event.group in self.done and len(path) == 1:
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
        if kind == "compensation_started":
            return [] if self.live else [f"{stamp}undoing     {step}"]
        if kind == "compensation_finished":
            if status == "compensated":
                return [f"{stamp}{self._paint('compensated', 'compensated')} {step}"]
            reason = f": {error}" if error else ""
            return [f"{stamp}{self._paint('undo failed', 'failed')} {step} ({status}){reason}"]
        return [f"{stamp}{kind} {step}"]

    def _group_lines(self, event: Event, stamp: str, status: str) -> list[str]:
        """A group's or a map's verdict; a skipped one says why."""
        path = _path(event)
        name = _label(path)
        skips = self._skips(path)
        why = f": {skips.reason(path[-1])}" if status == "skipped" and skips is not None else ""
        if skips is not None:
            skips.saw(path[-1], status)
        if len(path) == 1:
            self.done.pop(name, None)  # its bar has served
        board = self.maps.pop(name, None)
        if board is not None:
            return [f"{stamp}map         {name}: " + self._paint(status, status) + f" ({board.summary()})"]
        kind = "map  " if isinstance(definition_at(self.flow, path), Map) else "group"
        return [f"{stamp}{kind}       {name}: " + self._paint(status, status) + why]

    def _inside_item(self, path: tuple[str, ...]) -> int | None:
        """How many names of ``path`` lead to the map whose item this event happened
        inside (a map of subflows), or None when the event is about an item itself."""
        for depth in range(1, len(path)):
            if _label(path[:depth]) in self.map_labels:
                return depth
        return None

    def _item_child_lines(self, event: Event, depth: int) -> list[str]:
        """Inside one item of a map of subflows: only what went wrong, and what was
        undone, while the map's failed items are still being listed."""
        board = self.maps.get(_label(event.path[:depth]))
        if board is None or board.shown >= FAILED_ITEMS_SHOWN or self.start is None:
            # The map has settled: its items' children undone later (the flow failed
            # after it) are summed up by the summary, as a plain map's items are.
            return []
        stamp = f"[{event.time - self.start:8.3f}s] "
        status = str(event.status) if event.status is not None else ""
        key = event.item if event.item is not None else event.index
        where = _printable(f"{board.name}[{key!r}]{PATH_SEPARATOR}{_label(event.path[depth:])}")
        error = _error_line(event.error)
        reason = f": {error}" if error else ""
        if event.kind == "step_finished" and status not in ("completed", "skipped"):
            return [f"{stamp}{self._paint(f'{status:<11}', status)} {where}{reason}"]
        if event.kind == "compensation_finished":
            if status == "compensated":
                return [f"{stamp}{self._paint('compensated', 'compensated')} {where}"]
            return [f"{stamp}{self._paint('undo failed', 'failed')} {where} ({status}){reason}"]
        return []

    def _item_lines(self, event: Event) -> list[str]:
        """A map's item events feed its bar; only its first failures get a line each."""
        if self.start is None:
            self.start = event.time
        stamp = f"[{event.time - self.start:8.3f}s] "
        name = _label(_path(event))
        board = self.maps.get(name)
        if board is None:
            if name in self.map_labels and event.kind.startswith("compensation"):
                return []  # its items undone after the map settled: not drawn one by one
            board = self.maps[name] = _MapProgress(name, self.map_sizes.get(name), self._now())
            self.map_labels.add(name)
        index = event.index if event.index is not None else event.item
        kind = event.kind
        status = str(event.status) if event.status is not None else ""
        if kind == "step_started":
            board.running.add(index)
            return []
        board.running.discard(index)
        if kind == "step_finished":
            board.counts[status] = board.counts.get(status, 0) + 1
            if status in ("completed", "skipped"):
                return [] if self.live else board.every_so_often(self._now(), stamp)
            board.shown += 1
            if board.shown > FAILED_ITEMS_SHOWN:
                if board.shown == FAILED_ITEMS_SHOWN + 1:
                    return [f"{stamp}map         {name}: more items did not complete; counted, not listed"]
                return [] if self.live else board.every_so_often(self._now(), stamp)
            key = event.item if event.item is not None else event.index
            error = _error_line(event.error)
            reason = f": {error}" if error else ""
            label = _printable(f"{name}[{key!r}]")
            return [f"{stamp}{self._paint(f'{status:<11}', status)} {label}{reason}"]
        return []  # a retry of one item among many: its final status is what counts


def _path(event: Event) -> tuple[str, ...]:
    """The event's path from the top (a step's name alone in an event without one)."""
    return event.path or ((event.step or event.group or ""),)


def _label(path: tuple[str, ...]) -> str:
    """How a step is named on screen: its path, e.g. ``("orders", "charge")`` as
    ``orders \u203a charge``."""
    return PATH_SEPARATOR.join(path)


def _items_size(stage: Any) -> int | None:
    """How many items a map stage will take, when its ``items`` is a sized collection."""
    if isinstance(stage, Group):
        return None
    items = getattr(stage, "items", None)
    if items is None or callable(items):
        return None
    try:
        return len(items)
    except TypeError:
        return None


class _MapProgress:
    """One map's live counts: items done by status, items running, items per second."""

    PLAIN_EVERY = 5.0  # seconds between progress lines when not on a terminal

    def __init__(self, name: str, total: int | None, now: float) -> None:
        self.name = name
        self.total = total
        self.started = now
        self.counts: dict[str, int] = {}
        self.running: set[Any] = set()
        self.shown = 0
        self.told = now

    def done(self) -> int:
        return sum(self.counts.values())

    def summary(self, now: float | None = None) -> str:
        done = self.done()
        bad = done - self.counts.get("completed", 0) - self.counts.get("skipped", 0)
        of = f"/{self.total}" if self.total is not None else ""
        text = f"{done}{of} done, {len(self.running)} running, {bad} failed"
        if now is not None and now > self.started:
            text += f", {done / (now - self.started):.0f} items/s"
        return text

    def bar(self, now: float) -> str:
        if not self.done() and not self.running:
            return ""
        cells = 24
        if self.total:
            filled = min(cells, round(cells * self.done() / self.total))
            drawn = "#" * filled + "-" * (cells - filled)
        else:  # an unsized stream of items: a bar that moves, not one that fills
            spot = self.done() % cells
            drawn = "-" * spot + "#" + "-" * (cells - spot - 1)
        return f"  {self.name} [{drawn}] {self.summary(now)}"

    def every_so_often(self, now: float, stamp: str) -> list[str]:
        """A progress line at most every few seconds, for logs that are not a terminal."""
        if now - self.told < self.PLAIN_EVERY:
            return []
        self.told = now
        return [f"{stamp}map         {self.name}: {self.summary(now)}"]


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


class _StepLogFormatter(logging.Formatter):
    """A log record as one terminal line, named by the step (and item) that wrote it."""

    def format(self, record: logging.LogRecord) -> str:
        """``log  STEP[ITEM] (attempt N) LEVEL logger: message`` and any traceback below."""
        step = getattr(record, "flowpool_step", None)
        where = ""
        if step is not None:
            item = getattr(record, "flowpool_item", None)
            where = f"{step}[{item!r}]" if item is not None else str(step)
            attempt = getattr(record, "flowpool_attempt", None)
            if isinstance(attempt, int) and attempt > 1:
                where += f" (attempt {attempt})"
            where += " "
        text = f"log         {where}{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        # Records are the user's text: keep their lines, drop what a terminal would obey.
        return "\n".join(_printable(line) for line in text.splitlines())


class _JsonLines(logging.Formatter):
    """One JSON object a record: time, level, logger, message, the step context, any exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        data: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in LOG_FIELDS:
            value = getattr(record, name, None)
            data[name] = list(value) if isinstance(value, tuple) else value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, default=repr)


class RunLogs:
    """The handlers ``-v`` and ``--log-file`` put on the root logger for one run.

    They see records from every logger (the user's, third-party ones, flowpool's,
    and records that process workers send to this process's logging), each with
    its step context through ``LogContextFilter``. The log file is opened at once
    (``OSError`` if it cannot be); the handlers are attached by ``install``.
    """

    def __init__(self, verbose: int, log_path: str | None) -> None:
        self.verbose = verbose
        self.file: logging.Handler | None = None
        if log_path is not None:
            self.file = logging.FileHandler(log_path, mode="w", encoding="utf-8")
            self.file.setFormatter(_JsonLines())
        self.handlers: list[logging.Handler] = []
        self.previous_level: int | None = None

    def install(self, write: Callable[[str], None]) -> None:
        """Attach the handlers (``write`` shows a line on the terminal) and lower the
        root logger's level as far as they need."""
        wanted = logging.DEBUG if self.verbose > 1 else logging.INFO
        root = logging.getLogger()
        terminal_level: int | None = wanted if self.verbose else None
        if self.file is not None:
            self.handlers.append(self.file)
            if not self.verbose and not root.handlers:
                # Without our handler on the root, warnings would have reached stderr
                # through logging's last resort; keep showing them there.
                terminal_level = logging.WARNING
        if terminal_level is not None:
            terminal = _ProgressLogHandler(write)
            terminal.setFormatter(_StepLogFormatter())
            terminal.setLevel(terminal_level)
            self.handlers.append(terminal)
        if not self.handlers:
            return
        context = LogContextFilter()
        for handler in self.handlers:
            handler.addFilter(context)
            root.addHandler(handler)
        if logging.NOTSET != root.level > wanted:
            self.previous_level = root.level
            root.setLevel(wanted)

    def remove(self) -> None:
        """Detach the handlers and give the root logger its level back."""
        root = logging.getLogger()
        for handler in self.handlers:
            root.removeHandler(handler)
        if self.file is not None:
            self.file.close()
        self.handlers.clear()
        if self.previous_level is not None:
            root.setLevel(self.previous_level)
            self.previous_level = None
