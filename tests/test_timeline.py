"""The HTML timeline, drawn from events of real runs and from hand-written logs."""

from __future__ import annotations

import json
import threading
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from flowpool import Context, Flow, Step
from flowpool._timeline import STATUS_COLOURS, read_events, render_timeline


class _Elements(HTMLParser):
    """Collects every element's tag and attributes, and the text of <title>s."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.titles: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.titles.append(data)


def parse(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    parser.close()
    return parser


def bars(page: str, kind: str = "attempt") -> list[dict[str, str | None]]:
    return [attrs for tag, attrs in parse(page).elements if tag == "rect" and attrs.get("class") == f"bar {kind}"]


def record(flow: Flow, input: Any = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    flow.run(input, on_event=lambda event: events.append(event.to_dict()))
    return events


def _flaky(ctx: Context) -> int:
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} <failed> & was retried")
    return ctx.attempt


def _hang(ctx: Context) -> None:
    gate = threading.Event()
    for _ in range(500):  # bounded: at most ~10 s even if cancellation never came
        ctx.raise_if_cancelled()
        gate.wait(0.02)


def _undo_badly(ctx: Context, value: Any) -> None:
    raise OSError("cannot undo")


def _boom(ctx: Context) -> None:
    raise RuntimeError("boom")


@pytest.fixture(scope="module")
def mixed_run() -> list[dict[str, Any]]:
    """A run with retries, a timeout, a failure, skipped steps and compensations (one failing)."""
    flow = (
        Flow("mixed")
        .step("reserve", lambda ctx: 1, compensate=lambda ctx, value: None)
        .parallel(
            "fetch",
            [
                Step("flaky", _flaky, retries=3, compensate=_undo_badly),
                Step("slow", _hang, timeout=0.2),
                Step("broken", _boom),
            ],
            min_successes=2,
        )
        .step("never", lambda ctx: None)
    )
    return record(flow)


@pytest.mark.timeout(30)
def test_one_bar_per_attempt_with_its_outcome(mixed_run: list[dict[str, Any]]) -> None:
    page = render_timeline(mixed_run)
    attempts = bars(page)
    started = [e for e in mixed_run if e["kind"] == "step_started"]
    assert len(attempts) == len(started) == 1 + 3 + 1 + 1
    by_step = {(bar["data-step"], bar["data-attempt"]): bar["data-status"] for bar in attempts}
    assert by_step == {
        ("reserve", "1"): "completed",
        ("flaky", "1"): "failed",
        ("flaky", "2"): "failed",
        ("flaky", "3"): "completed",
        ("slow", "1"): "timed_out",
        ("broken", "1"): "failed",
    }
    colours = {bar["data-status"]: bar["fill"] for bar in attempts}
    assert colours["timed_out"] == STATUS_COLOURS["timed_out"]
    assert colours["failed"] != colours["completed"]


@pytest.mark.timeout(30)
def test_compensations_and_backoff_are_visible(mixed_run: list[dict[str, Any]]) -> None:
    page = render_timeline(mixed_run)
    compensations = {bar["data-step"]: bar["data-status"] for bar in bars(page, "compensation")}
    assert compensations == {"flaky": "compensation_failed", "reserve": "compensated"}
    backoffs = [attrs for tag, attrs in parse(page).elements if tag == "line" and attrs.get("class") == "backoff"]
    assert sum(1 for b in backoffs if b.get("data-step") == "flaky") == 2  # two waits between three attempts


@pytest.mark.timeout(30)
def test_hover_titles_hold_step_attempt_duration_and_error(mixed_run: list[dict[str, Any]]) -> None:
    titles = parse(render_timeline(mixed_run)).titles
    flaky = next(t for t in titles if t.startswith("flaky: attempt 1"))
    assert "group fetch" in flaky
    assert "duration" in flaky
    assert "ConnectionError: attempt 1 <failed> & was retried" in flaky  # unescaped by the parser
    assert any("OSError: cannot undo" in t for t in titles)
    assert any("StepTimeoutError" in t for t in titles)


@pytest.mark.timeout(30)
def test_rows_are_grouped_under_their_group(mixed_run: list[dict[str, Any]]) -> None:
    elements = parse(render_timeline(mixed_run)).elements
    labels = [
        (attrs.get("data-group") and "group " + str(attrs["data-group"])) or str(attrs.get("data-step"))
        for tag, attrs in elements
        if tag == "text" and attrs.get("class") in ("step-label", "group-label")
    ]
    assert labels == ["reserve", "group fetch", "flaky", "slow", "broken", "never"]


@pytest.mark.timeout(30)
def test_the_page_is_self_contained(mixed_run: list[dict[str, Any]]) -> None:
    page = render_timeline(mixed_run)
    lowered = page.lower()
    assert lowered.startswith("<!doctype html>")
    for forbidden in ("<script", "http:", "https:", "src=", "<link", "@import", "url("):
        assert forbidden not in lowered
    assert "<svg" in page and "<style>" in page


def test_text_is_escaped() -> None:
    events = [
        {"kind": "flow_started", "flow": "<b>flow</b>", "run_id": "r", "time": 0.0},
        {"kind": "step_started", "flow": "<b>flow</b>", "run_id": "r", "time": 0.1, "step": 'x"<y>', "attempt": 1},
        {
            "kind": "step_finished",
            "flow": "<b>flow</b>",
            "run_id": "r",
            "time": 0.5,
            "step": 'x"<y>',
            "attempt": 1,
            "status": "failed",
            "started_at": 0.1,
            "error": {"type": "ValueError", "message": "<script>alert(1)</script>"},
        },
        {"kind": "flow_finished", "flow": "<b>flow</b>", "run_id": "r", "time": 0.6, "status": "failed"},
    ]
    page = render_timeline(events)
    assert "<script>" not in page and "<b>flow" not in page
    assert bars(page)[0]["data-step"] == 'x"<y>'


def test_several_runs_are_drawn_one_below_the_other() -> None:
    flow = Flow("twice").step("one", lambda ctx: None)
    page = render_timeline(record(flow) + record(flow))
    assert page.count("<svg") == 2
    assert len(bars(page)) == 2


def test_an_unfinished_attempt_is_drawn_to_the_end_of_the_log() -> None:
    events = [
        {"kind": "flow_started", "flow": "f", "run_id": "r", "time": 10.0},
        {"kind": "step_started", "flow": "f", "run_id": "r", "time": 10.5, "step": "stuck", "attempt": 1},
    ]
    (bar,) = bars(render_timeline(events))
    assert bar["data-status"] == "running"


def test_skipped_steps_get_a_row_but_no_bar() -> None:
    flow = Flow("f").step("bad", _boom).step("later", lambda ctx: None)
    page = render_timeline(record(flow))
    assert [bar["data-step"] for bar in bars(page)] == ["bad"]
    assert 'data-step="later">later (skipped)' in page


def test_no_events_still_make_a_page() -> None:
    assert "holds no events" in render_timeline([])


def test_read_events_round_trips_and_names_bad_lines(tmp_path: Path, mixed_run: list[dict[str, Any]]) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in mixed_run) + "\n\n", encoding="utf-8")
    assert read_events(path) == json.loads(json.dumps(mixed_run))
    path.write_text('{"kind": "flow_started", "time": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"events.jsonl:2: not a flowpool event"):
        read_events(path)
    path.write_text('{"kind": "flow_started"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r":1: the event has no numeric 'time'"):
        read_events(path)
    path.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r":1: not valid JSON"):
        read_events(path)


PAYLOADS = (
    "<script>alert(1)</script>",
    '"><script>alert(2)</script>',
    "' onmouseover='alert(3)",
    "</title><script>alert(4)</script>",
    "</style><script>alert(5)</script>",
    "]]><script>alert(6)</script>",
    "<img src=x onerror=alert(7)>",
    "javascript:alert(8)",
    "<!--",
)


def test_a_hostile_events_file_is_drawn_as_data_and_the_page_stays_script_free(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from flowpool.cli import main

    events: list[dict[str, Any]] = []
    for n, bad in enumerate(PAYLOADS):
        common = {"run_id": bad, "flow": bad, "time": float(n)}
        error = {"type": bad, "message": bad, "exceptions": [{"type": bad, "message": bad}]}
        events += [
            {**common, "kind": "flow_started"},
            {**common, "kind": "step_started", "step": bad, "group": bad, "attempt": 1},
            {
                **common,
                "kind": "step_retrying",
                "step": bad,
                "group": bad,
                "attempt": 1,
                "status": bad,
                "error": error,
                "delay": 0.1,
                "started_at": float(n),
            },
            {
                **common,
                "kind": "step_finished",
                "step": bad,
                "group": bad,
                "attempt": 2,
                "status": bad,
                "error": error,
                "started_at": float(n),
            },
            {**common, "kind": "group_finished", "group": bad, "status": bad},
            {**common, "kind": "compensation_finished", "step": bad, "status": bad, "error": error},
            {**common, "kind": "step_started", "step": bad, "attempt": 1, "item": bad, "index": bad},
            {**common, "kind": "step_finished", "step": bad, "status": bad, "item": bad, "index": 3, "error": error},
            {**common, "kind": bad, "step": bad},
            {**common, "kind": "flow_finished", "status": bad, "error": error},
        ]
    events.append({"kind": "flow_started", "run_id": "huge", "time": 1e308})  # not drawable: no crash
    events.append({"kind": "step_started", "run_id": "huge", "step": "s", "time": -(10**400)})
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in events) + "\n", encoding="utf-8")
    drawn = CliRunner().invoke(main, ["timeline", str(log), "-o", str(tmp_path / "page.html")])
    assert drawn.exit_code == 0, drawn.stderr
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<img" not in page.lower() and "<!--" not in page
    parsed = _Elements()
    parsed.feed(page)
    tags = {tag for tag, _ in parsed.elements}
    allowed = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "svg", "rect", "text", "line", "path"}
    assert tags <= allowed
    assert any(attrs.get("class") == "band" for _, attrs in parsed.elements)  # the hostile map is drawn too
    for tag, attrs in parsed.elements:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
    assert [tag for tag, _ in parsed.elements].count("style") == 1
    policy = [a for tag, a in parsed.elements if a.get("http-equiv") == "Content-Security-Policy"]
    assert policy and "default-src 'none'" in (policy[0]["content"] or "")
    assert any(PAYLOADS[0] in title for title in parsed.titles)  # shown as text, not run


# ── maps: one row, whatever the number of items ──────────────────────────────────


_TICK = 1 / 64


def _map_events(
    name: str, items: int, *, running: int, failed_every: int = 0, start: float = 50.0
) -> list[dict[str, Any]]:
    """Events of a map whose items run ``running`` at a time, each 1/64 s long (a binary
    fraction, so that one item's end is exactly the next one's start)."""
    events: list[dict[str, Any]] = [{"kind": "flow_started", "flow": "batch", "run_id": "r", "time": start}]
    for index in range(items):
        began = start + (index // running) * _TICK
        failed = failed_every and index % failed_every == failed_every - 1
        common = {"flow": "batch", "run_id": "r", "step": name, "group": None, "attempt": 1, "item": f"k{index}"}
        events.append({**common, "kind": "step_started", "time": began, "index": index})
        events.append(
            {
                **common,
                "kind": "step_finished",
                "time": began + _TICK,
                "index": index,
                "started_at": began,
                "status": "failed" if failed else "completed",
                "error": {"type": "ValueError", "message": f"bad item {index}"} if failed else None,
            }
        )
    end = start + (items // running + 1) * _TICK
    events.append(
        {"kind": "group_finished", "flow": "batch", "run_id": "r", "time": end, "group": name, "status": "partial"}
    )
    events.append({"kind": "flow_finished", "flow": "batch", "run_id": "r", "time": end, "status": "completed"})
    return events


def _maps(page: str) -> list[dict[str, str | None]]:
    return [attrs for tag, attrs in parse(page).elements if tag == "path" and attrs.get("class") == "band"]


@pytest.mark.timeout(120)
def test_a_map_of_100000_items_is_one_row_and_the_page_stays_under_2_mb() -> None:
    page = render_timeline(_map_events("resize", 100_000, running=8, failed_every=1000))
    assert len(page.encode("utf-8")) < 2_000_000
    (band,) = _maps(page)
    assert band["data-map"] == "resize"
    assert band["data-peak"] == "8"
    assert bars(page) == []  # no bar per item
    elements = parse(page).elements
    labels = [attrs for tag, attrs in elements if tag == "text" and attrs.get("data-map") == "resize"]
    assert len(labels) == 1
    marks = [attrs for tag, attrs in elements if tag == "rect" and attrs.get("class") == "fail-mark"]
    assert sum(int(mark["data-count"] or 0) for mark in marks) == 100
    assert "map resize - partial" in page


def test_the_band_follows_how_many_items_ran_and_marks_failures_where_they_happened() -> None:
    events = _map_events("rows", 40, running=4, failed_every=0)
    # Ten more items later, one at a time, the last one failing.
    late = _map_events("rows", 10, running=1, failed_every=10, start=events[-1]["time"] + _TICK)
    for event in late[1:-2]:
        event["index"] = event["index"] + 40
        event["item"] = f"late{event['index']}"
    page = render_timeline([*events[:-2], *late[1:-2], events[-2], late[-1]])
    (band,) = _maps(page)
    assert band["data-peak"] == "4"
    (mark,) = [attrs for tag, attrs in parse(page).elements if tag == "rect" and attrs.get("class") == "fail-mark"]
    assert mark["data-count"] == "1"
    assert float(mark["x"] or 0) > 240 + 860 * 0.8  # the failure is near the end of the run
    assert any("at most 4 running at once" in title for title in parse(page).titles)


def test_a_map_among_steps_keeps_its_place_and_its_real_retries_count_once() -> None:
    events = [
        {"kind": "flow_started", "flow": "f", "run_id": "r", "time": 0.0},
        {"kind": "step_started", "flow": "f", "run_id": "r", "time": 0.0, "step": "load", "attempt": 1},
        {
            "kind": "step_finished",
            "flow": "f",
            "run_id": "r",
            "time": 0.1,
            "step": "load",
            "attempt": 1,
            "status": "completed",
            "started_at": 0.0,
        },
        {
            "kind": "step_started",
            "flow": "f",
            "run_id": "r",
            "time": 0.1,
            "step": "m",
            "attempt": 1,
            "item": "a",
            "index": 0,
        },
        {
            "kind": "step_retrying",
            "flow": "f",
            "run_id": "r",
            "time": 0.2,
            "step": "m",
            "attempt": 1,
            "item": "a",
            "index": 0,
            "status": "failed",
            "started_at": 0.1,
        },
        {
            "kind": "step_started",
            "flow": "f",
            "run_id": "r",
            "time": 0.3,
            "step": "m",
            "attempt": 2,
            "item": "a",
            "index": 0,
        },
        {
            "kind": "step_finished",
            "flow": "f",
            "run_id": "r",
            "time": 0.4,
            "step": "m",
            "attempt": 2,
            "item": "a",
            "index": 0,
            "status": "completed",
            "started_at": 0.3,
        },
        {"kind": "group_finished", "flow": "f", "run_id": "r", "time": 0.4, "group": "m", "status": "completed"},
        {"kind": "step_started", "flow": "f", "run_id": "r", "time": 0.4, "step": "save", "attempt": 1},
        {
            "kind": "step_finished",
            "flow": "f",
            "run_id": "r",
            "time": 0.5,
            "step": "save",
            "attempt": 1,
            "status": "completed",
            "started_at": 0.4,
        },
        {"kind": "flow_finished", "flow": "f", "run_id": "r", "time": 0.5, "status": "completed"},
    ]
    page = render_timeline(events)
    labels = [
        str(attrs.get("data-step") or "map " + str(attrs.get("data-map")))
        for tag, attrs in parse(page).elements
        if tag == "text" and attrs.get("class") in ("step-label", "group-label")
    ]
    assert labels == ["load", "map m", "save"]
    assert [bar["data-step"] for bar in bars(page)] == ["load", "save"]
    assert "1 items (1 completed)" in page
    assert _maps(page)[0]["data-peak"] == "1"


def test_a_timeline_fed_one_event_at_a_time_draws_the_same_page(mixed_run: list[dict[str, Any]]) -> None:
    from flowpool._timeline import Timeline

    timeline = Timeline()
    for event in [*mixed_run, *_map_events("rows", 30, running=3, failed_every=7)]:
        timeline.add(event)
    assert timeline.render() == render_timeline([*mixed_run, *_map_events("rows", 30, running=3, failed_every=7)])


# ── conditions and always-stages ─────────────────────────────────────────────────


def _is_weekday(ctx: Context) -> bool:
    return False


def _composed() -> Flow:
    return (
        Flow("composed")
        .always("report", lambda ctx: str(ctx.outcome))
        .step("load", lambda ctx: 1, compensate=lambda ctx, value: None)
        .step("weekday-only", lambda ctx: 2, when=_is_weekday)
        .map("each", lambda ctx: 3, items=[1, 2], when=_is_weekday)
        .step("charge", _boom)
        .step("later", lambda ctx: 4)
    )


def _skip_marks(page: str) -> dict[str, str]:
    """Step (or map) name → the title of its skip mark."""
    elements = parse(page)
    marks = [attrs for tag, attrs in elements.elements if tag == "path" and attrs.get("class") == "skip-mark"]
    named = [str(attrs["data-step"]) for attrs in marks if attrs.get("data-step")]
    titles = [title for title in elements.titles if ": skipped - " in title]
    return dict(zip(named, titles, strict=True))


def test_skipped_steps_and_maps_are_marked_and_say_why_when_the_flow_is_given() -> None:
    flow = _composed()
    page = render_timeline(record(flow), flow=flow)
    assert _skip_marks(page) == {
        "weekday-only": "weekday-only: skipped - when _is_weekday was false",
        "each": "each: skipped - when _is_weekday was false",
        "later": "later: skipped - the flow stopped at stage 'charge'",
    }
    assert "skipped: the flow stopped at stage &#x27;charge&#x27;</text>" in page
    assert 'data-map="each">map each - skipped</text>' in page  # a map that ran no item is still a map
    assert ">skipped (did not run)</text>" in page  # in the legend


def test_without_the_flow_skips_are_marked_but_not_explained() -> None:
    page = render_timeline(record(_composed()))
    assert set(_skip_marks(page).values()) == {
        f"{name}: skipped - did not run" for name in ("weekday-only", "each", "later")
    }
    assert 'data-always="1"' not in page and "always-stage" not in page


def test_always_stages_are_outlined_and_drawn_below_the_rest_after_the_compensations() -> None:
    flow = _composed()
    events = record(flow)
    page = render_timeline(events, flow=flow)
    labels = [
        str(attrs.get("data-step") or attrs.get("data-map"))
        for tag, attrs in parse(page).elements
        if tag == "text" and attrs.get("class") in ("step-label", "group-label")
    ]
    assert labels == ["load", "weekday-only", "each", "charge", "later", "report"]  # declared first, drawn last
    (always_bar,) = [bar for bar in bars(page) if bar.get("data-always")]
    assert always_bar["data-step"] == "report"
    (undo,) = bars(page, "compensation")
    assert float(str(always_bar["x"])) >= float(str(undo["x"])) + float(str(undo["width"])) - 0.5
    assert 'class="always-rule"' in page
    assert "always-stage: after the compensations, whatever the outcome" in page
    assert "always-stage: runs after the compensations, whatever the outcome" in page  # the bar's title
    # Another flow's run in the same log is drawn without the definition.
    other = render_timeline(record(Flow("other").step("report", lambda ctx: 1)), flow=flow)
    assert 'data-always="1"' not in other
