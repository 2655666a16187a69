"""A self-contained HTML timeline drawn from a run's events.

The page is one HTML file with inline SVG and inline CSS: no script, no
network, no other file. An events file is data from anywhere: every text from it
is escaped, and the page's Content-Security-Policy forbids scripts and any
loading, so even a hostile log cannot make the page run or fetch anything.
It is built from event dictionaries (``Event.to_dict()``, one per line of
``--events``), so a live run and a saved log draw the same page::

    events ──> runs by run_id ──> rows (groups, then their members; subflows, then their
               child's rows) ──> SVG bars

Each attempt is one bar from its ``started_at`` to its end event's ``time``;
backoff waits are dashed lines between attempts; compensations are bars of
their own on their step's row. A map is one row whatever its size: a band of
how many of its items ran over time, with the items that did not complete
marked above it (events about items carry ``item``/``index``). A skipped step
has a mark where it was skipped, and says why when the run's ``Flow`` is given
(``_reasons``: its condition was false, or the flow had stopped); with the flow,
always-stages are outlined and set apart below the rest. A subflow's row has
its child's rows nested beneath it (events carry the ``path`` from the top); a
map of subflows stays one row, the steps inside its items are not drawn one by
one. Hovering shows
details through SVG ``<title>``. ``Timeline`` takes events one at a time and
keeps a few numbers per map attempt, not the events, so a live run of a
large map does not hold its event log in memory.
"""

from __future__ import annotations

import html
import itertools
import math
from array import array
from collections.abc import Iterable, Mapping
from typing import Any

from flowpool import Flow

from ._reasons import PATH_SEPARATOR
from ._timeline_model import EventModel, _Bar, _MapRow, _Row, _RunModel, flatten, read_events

__all__ = ["STATUS_COLOURS", "Timeline", "read_events", "render_timeline"]

# Outcome → colour; chosen to stay apart for the common kinds of colour blindness.
STATUS_COLOURS: dict[str, str] = {
    "completed": "#2e9d4f",
    "failed": "#d64541",
    "timed_out": "#e8912d",
    "cancelled": "#9aa0a6",
    "compensated": "#7b5ea7",
    "compensation_failed": "#6b1530",
    "running": "#4a90d9",
}
_LEGEND = (
    ("completed", "completed"),
    ("failed", "failed"),
    ("timed_out", "timed out"),
    ("cancelled", "cancelled"),
    ("compensated", "compensated"),
    ("compensation_failed", "compensation failed"),
)

_LABEL_WIDTH = 240
_PLOT_WIDTH = 860
_RIGHT_PAD = 30
_ROW = 26
_BAR = 16
_AXIS_TOP = 50  # one line of legend above; each further line moves the axis down
_FIRST_ROW = 74
_LEGEND_LINE = 18
_INDENT = 16  # a group's members, and a subflow's steps, are indented this much under it
_MAP_ROWS = 2  # a map's row is this many rows high
_MAP_BUCKETS = 215  # time slices of a map's band (4 px each): the page's size does not grow with items


class Timeline(EventModel):
    """Builds the page from events given one at a time (``Event.to_dict()`` dictionaries).

    Given the ``flow`` the events come from, it marks always-stages and says why a
    step was skipped; runs of another flow in the same events are drawn without.
    """

    def render(self, *, title: str | None = None) -> str:
        """The HTML page of every run seen so far."""
        return _page(list(self._runs.values()), title)


# ── drawing ──────────────────────────────────────────────────────────────────────


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.3f} s"


def _tick_step(span: float) -> float:
    raw = span / 8
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def _span(run: _RunModel) -> tuple[float, float]:
    first = run.first if run.first is not None else 0.0
    last = run.last if run.last is not None else first
    return (run.start if run.start is not None else first, run.end if run.end is not None else last)


def _svg(run: _RunModel) -> str:
    t0, t1 = _span(run)
    span = max(t1 - t0, 1e-3)
    scale = _PLOT_WIDTH / span

    def x(t: float) -> float:
        return _LABEL_WIDTH + max(0.0, t - t0) * scale

    rows = flatten(run)  # ("group", _GroupInfo), ("step", _Row) or ("map", _MapRow), with depth
    width = _LABEL_WIDTH + _PLOT_WIDTH + _RIGHT_PAD
    legend, lines = _legend(run, width)
    below = _LEGEND_LINE * (lines - 1)
    tall = sum(_MAP_ROWS if kind == "map" else 1 for kind, _, _ in rows)
    height = _FIRST_ROW + below + _ROW * max(tall, 1) + 10
    out = [
        f'<svg class="timeline" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="timeline of flow {_esc(run.flow)}">',
        *legend,
    ]
    # Time axis with gridlines.
    step = _tick_step(span)
    bottom = height - 10
    tick = 0.0
    while tick <= span + 1e-12:
        tx = _LABEL_WIDTH + tick * scale
        out.append(f'<line x1="{tx:.1f}" y1="{_AXIS_TOP + below + 6}" x2="{tx:.1f}" y2="{bottom}" class="grid"/>')
        label = f"{tick:.3g} s" if step >= 0.01 else f"{tick * 1000:.3g} ms"
        out.append(f'<text x="{tx:.1f}" y="{_AXIS_TOP + below}" class="tick">{_esc(label)}</text>')
        tick += step
    # Rows.
    y = _FIRST_ROW + below - _ROW
    high = _ROW
    ruled = False
    for position, (kind, item, depth) in enumerate(rows):
        y += high
        high = _ROW * (_MAP_ROWS if kind == "map" else 1)
        if position % 2 == 0:
            out.append(f'<rect x="0" y="{y}" width="{width}" height="{high}" class="stripe"/>')
        indent = 8 + _INDENT * depth
        if kind == "step" and item.always and not ruled and depth == 0:
            # Always-stages run after everything else and after the compensations.
            ruled = True
            out.append(f'<line x1="0" y1="{y}" x2="{width}" y2="{y}" class="always-rule"/>')
        if kind == "map":
            out.extend(_map_band(item, y, high, t0, span, indent))
            continue
        if kind == "group":
            verdict = f" - {item.status}" if item.status else ""
            out.append(
                f'<text x="{indent}" y="{y + 17}" class="group-label" data-group="{_esc(item.name)}">'
                f"group {_esc(item.name)}{_esc(verdict)}</text>"
            )
            continue
        row: _Row = item
        final = f" ({row.status})" if row.status and row.status != "completed" else ""
        marked = ' data-always="1"' if row.always else ""
        if len(row.path) > 1:  # inside a subflow: the whole path, as events give it
            marked += f' data-path="{_esc(PATH_SEPARATOR.join(row.path))}"'
        out.append(
            f'<text x="{indent}" y="{y + 17}" class="step-label" data-step="{_esc(row.step)}"{marked}>'
            f"{'always: ' if row.always else ''}{_esc(row.step)}{_esc(final)}</text>"
        )
        if row.skipped_at is not None:
            out.extend(_skip_mark(row.step, row.reason, x(row.skipped_at), y))
        bars = sorted(row.attempts.values(), key=lambda b: b.attempt)
        for bar, following in itertools.zip_longest(bars, bars[1:]):
            out.extend(_bar(row, bar, x, y, t1))
            # The gap between an attempt and the next is the backoff wait.
            if following is not None and bar.end is not None and following.start is not None:
                planned = f"; planned {_fmt(bar.delay)}" if bar.delay is not None else ""
                gap = max(0.0, following.start - bar.end)
                out.append(
                    f'<line x1="{x(bar.end):.1f}" y1="{y + _ROW / 2}" x2="{x(following.start):.1f}" '
                    f'y2="{y + _ROW / 2}" class="backoff" data-step="{_esc(row.step)}">'
                    f"<title>{_esc(f'{row.step}: backoff {_fmt(gap)} before attempt {following.attempt}{planned}')}"
                    "</title></line>"
                )
        for bar in sorted(row.compensations.values(), key=lambda b: b.attempt):
            out.extend(_bar(row, bar, x, y, t1))
    out.append("</svg>")
    return "\n".join(out)


def _legend(run: _RunModel, width: int) -> tuple[list[str], int]:
    """The legend's SVG, wrapped to the page's width, and how many lines it took:
    outcomes, then the marks this run's drawing uses."""
    entries: list[tuple[str, str]] = [
        (f'<rect x="{{x}}" y="{{y}}" width="12" height="12" rx="2" fill="{STATUS_COLOURS[key]}"/>', label)
        for key, label in _LEGEND
    ]
    entries.append(('<line x1="{x}" y1="{mid}" x2="{end}" y2="{mid}" class="backoff"/>', "backoff before a retry"))
    if any(m.starts or m.running for m in run.maps.values()):
        swatch = f'<rect x="{{x}}" y="{{y}}" width="12" height="12" rx="2" fill="{STATUS_COLOURS["running"]}"/>'
        entries.append((swatch, "items of a map running at once"))
    rows = run.rows.values()
    if any(row.skipped_at is not None for row in rows) or any(m.status == "skipped" for m in run.maps.values()):
        entries.append(('<path class="skip-mark" d="M{x},{mid}l6,-6l6,6l-6,6z"/>', "skipped (did not run)"))
    if any(row.always for row in rows):
        swatch = (
            f'<rect x="{{x}}" y="{{y}}" width="12" height="12" rx="2" fill="{STATUS_COLOURS["completed"]}" '
            'class="always-swatch"/>'
        )
        entries.append((swatch, "always-stage: after the compensations, whatever the outcome"))
    out: list[str] = []
    lx, line = 10.0, 0
    for swatch, label in entries:
        wide = (28.0 if "backoff" in swatch else 16.0) + 7.6 * len(label)
        if lx > 10 and lx + wide > width - 10:
            lx, line = 10.0, line + 1
        top = 10 + _LEGEND_LINE * line
        out.append(swatch.format(x=f"{lx:.0f}", y=top, mid=top + 6, end=f"{lx + 22:.0f}"))
        text_x = lx + (28 if "backoff" in swatch else 16)
        out.append(f'<text x="{text_x:.0f}" y="{top + 11}" class="legend">{_esc(label)}</text>')
        lx += wide + 8
    return out, line + 1


def _skip_mark(name: str, reason: str | None, at: float, y: int) -> list[str]:
    """A hollow diamond where a step or map was skipped, and why beside it."""
    why = reason or "did not run"
    middle = y + _ROW / 2
    text = f"skipped: {why}"
    # Beside the mark, on whichever side has room for the words.
    if at + 12 + 6.6 * len(text) <= _LABEL_WIDTH + _PLOT_WIDTH + _RIGHT_PAD:
        note = f'<text x="{at + 12:.1f}" y="{y + 17}" class="skip-note">{_esc(text)}</text>'
    else:
        note = f'<text x="{at - 12:.1f}" y="{y + 17}" class="skip-note" text-anchor="end">{_esc(text)}</text>'
    return [
        f'<path class="skip-mark" data-step="{_esc(name)}" d="M{at - 6:.1f},{middle}l6,-6l6,6l-6,6z">'
        f"<title>{_esc(f'{name}: skipped - {why}')}</title></path>",
        note,
    ]


def _map_band(row: _MapRow, y: int, high: int, t0: float, span: float, indent: int = 8) -> list[str]:
    """A map's row: how many of its items ran in each slice of time, as one filled path,
    and a mark over each slice in which items ended without completing."""
    slices = _MAP_BUCKETS
    wide = _PLOT_WIDTH / slices

    def slot(t: float) -> int:
        return min(slices - 1, max(0, int((t - t0) / span * slices)))

    # Attempts still open when the events ended ran until the end of the drawing.
    ends = array("d", row.ends)
    starts = array("d", row.starts)
    for began in row.running.values():
        starts.append(began)
        ends.append(t0 + span)
    # Peak concurrency per slice, from a sweep over the sorted starts (+1) and ends (-1).
    changes = sorted(itertools.chain(((t, 1) for t in starts), ((t, -1) for t in ends)))
    peaks = [0] * slices
    running = 0
    last = 0
    for when, change in changes:
        here = slot(when)
        for between in range(last, here + 1):
            peaks[between] = max(peaks[between], running)
        running += change
        peaks[here] = max(peaks[here], running)
        last = here
    failures = [0] * slices
    for when in row.failures:
        failures[slot(when)] += 1
    peak = max(peaks) or 1
    base = y + high - 3
    room = high - 12
    points = [f"M{_LABEL_WIDTH:.1f},{base}"]
    for number, count in enumerate(peaks):
        top = base - room * count / peak
        left = _LABEL_WIDTH + number * wide
        points.append(f"L{left:.1f},{top:.1f}L{left + wide:.1f},{top:.1f}")
    points.append(f"L{_LABEL_WIDTH + _PLOT_WIDTH:.1f},{base}Z")
    total = sum(row.counts.values())
    counted = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in sorted(row.counts.items()))
    verdict = f" - {row.status}" if row.status else ""
    about = f"map {row.name}{verdict}: {total} items ({counted}); at most {max(peaks)} running at once"
    counted_line = f"{total} items, {sum(failures)} not completed"
    skipped: list[str] = []
    if row.skipped_at is not None:
        counted_line = "skipped: ran no item"
        at = _LABEL_WIDTH + max(0.0, row.skipped_at - t0) / span * _PLOT_WIDTH
        skipped = _skip_mark(row.name, row.reason, at, y)
    out = [
        f'<text x="{indent}" y="{y + 17}" class="group-label" data-map="{_esc(row.name)}">'
        f"map {_esc(row.name)}{_esc(verdict)}</text>",
        f'<text x="{indent}" y="{y + 35}" class="legend">{_esc(counted_line)}</text>',
        f'<path class="band" data-map="{_esc(row.name)}" data-peak="{max(peaks)}" d="{"".join(points)}" '
        f'fill="{STATUS_COLOURS["running"]}"><title>{_esc(about)}</title></path>',
    ]
    for number, count in enumerate(failures):
        if count:
            start = span * number / slices
            text = f"{row.name}: {count} items did not complete between {_fmt(start)} and {_fmt(start + span / slices)}"
            out.append(
                f'<rect class="fail-mark" data-map="{_esc(row.name)}" data-count="{count}" '
                f'x="{_LABEL_WIDTH + number * wide:.1f}" y="{y + 2}" width="{max(wide, 2.0):.1f}" height="6" '
                f'fill="{STATUS_COLOURS["failed"]}"><title>{_esc(text)}</title></rect>'
            )
    return out + skipped


def _bar(row: _Row, bar: _Bar, x: Any, y: int, t1: float) -> list[str]:
    start = bar.start if bar.start is not None else bar.end
    if start is None:
        return []
    end = bar.end if bar.end is not None else t1
    x0 = x(start)
    wide = max(x(end) - x0, 2.0)  # an instant attempt still shows
    duration = max(0.0, end - start)
    what = "attempt" if bar.kind == "attempt" else "compensation attempt"
    status = bar.status.replace("_", " ")
    lines = [f"{row.step}: {what} {bar.attempt} - {status}", f"duration {_fmt(duration)}"]
    if row.group is not None:
        lines.insert(1, f"group {row.group}")
    if bar.error:
        lines.append(bar.error)
    if bar.kind == "attempt" and bar.delay is not None:
        lines.append(f"retry after {_fmt(bar.delay)}")
    colour = STATUS_COLOURS.get(bar.status, STATUS_COLOURS["running"])
    top = y + (_ROW - _BAR) / 2
    if row.always:
        lines.insert(1, "always-stage: runs after the compensations, whatever the outcome")
    always = ' data-always="1"' if row.always else ""
    return [
        f'<rect class="bar {bar.kind}"{always} data-step="{_esc(row.step)}" data-attempt="{bar.attempt}" '
        f'data-status="{_esc(bar.status)}" x="{x0:.1f}" y="{top:.0f}" width="{wide:.1f}" height="{_BAR}" '
        f'rx="3" fill="{colour}"><title>{_esc(chr(10).join(lines))}</title></rect>'
    ]


_CSS = """
body { font: 14px system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #202124; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 4px; }
p.meta { margin: 0 0 8px; color: #5f6368; }
svg.timeline { display: block; }
svg text { font: 12px system-ui, sans-serif; fill: #202124; }
svg text.tick { fill: #5f6368; text-anchor: middle; }
svg text.group-label { font-weight: 600; }
svg .stripe { fill: #f6f8fa; }
svg .grid { stroke: #e1e4e8; stroke-width: 1; }
svg .backoff { stroke: #5f6368; stroke-width: 2; stroke-dasharray: 4 3; }
svg rect.bar.compensation { stroke: #202124; stroke-width: 1; }
svg rect.bar:hover { stroke: #000; stroke-width: 2; }
svg rect.bar[data-always], svg rect.always-swatch { stroke: #202124; stroke-width: 1.5; stroke-dasharray: 3 2; }
svg text[data-always] { font-style: italic; }
svg .always-rule { stroke: #5f6368; stroke-width: 1; stroke-dasharray: 6 4; }
svg .skip-mark { fill: #fff; stroke: #9aa0a6; stroke-width: 1.5; }
svg text.skip-note { fill: #5f6368; font-style: italic; }
"""


# Nothing but the inline stylesheet may load or run.
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _model(events: Iterable[Mapping[str, Any]], flow: Flow | None = None) -> list[_RunModel]:
    timeline = Timeline(flow)
    for event in events:
        timeline.add(event)
    return list(timeline._runs.values())


def render_timeline(events: Iterable[Mapping[str, Any]], *, title: str | None = None, flow: Flow | None = None) -> str:
    """Return one self-contained HTML page that draws every run found in ``events``.

    Args:
        events: event dictionaries as produced by ``Event.to_dict()``; several runs
            (told apart by ``run_id``) are drawn one below the other.
        title: the page title; by default named after the flows.
        flow: the flow the events come from, if known: always-stages are marked and
            skipped steps say why.
    """
    return _page(_model(events, flow), title)


def _page(runs: list[_RunModel], title: str | None) -> str:
    flows = ", ".join(dict.fromkeys(run.flow for run in runs)) or "no runs"
    page_title = title or f"flowpool timeline: {flows}"
    body: list[str] = [f"<h1>{_esc(page_title)}</h1>"]
    if not runs:
        body.append('<p class="meta">The event log holds no events.</p>')
    for run in runs:
        start, end = _span(run)
        status = run.status or "unfinished"
        meta = f"run {run.run_id} - {status} in {_fmt(max(0.0, end - start))}"
        if run.error:
            meta += f" - {run.error}"
        body.append(f'<h2 data-run="{_esc(run.run_id)}">flow {_esc(run.flow)}</h2>')
        body.append(f'<p class="meta">{_esc(meta)}</p>')
        body.append(_svg(run))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        f"<title>{_esc(page_title)}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
