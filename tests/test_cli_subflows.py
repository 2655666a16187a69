"""The command's pictures of subflows: the progress names a child's steps by their
path (single, pay, capture), the summary indents a child's rows under its step
(and under each failed item listed for a map of subflows), and the timeline nests a
child's rows under the subflow's row, a map of subflows staying one row."""

from __future__ import annotations

import io
import itertools
import re
from typing import Any

import pytest

from flowpool import Context, Flow, FlowResult, Step
from flowpool._summary import summary_table
from flowpool._terminal import Progress
from flowpool._timeline import render_timeline

SEP = " \u203a "


def work(ctx: Context) -> str:
    return ctx.step


def undo(ctx: Context, value: Any) -> None:
    return None


def capture(ctx: Context) -> str:
    if ctx.input == 2:
        raise RuntimeError("card declined")
    return "captured"


def never(ctx: Context) -> bool:
    return False


def two(ctx: Context) -> int:
    return 2


def one(ctx: Context) -> int:
    return 1


def payment() -> Flow:
    return (
        Flow("payment")
        .step("authorize", work, compensate=undo)
        .step("capture", capture, compensate=undo)
        .always("audit", work)
    )


def order() -> Flow:
    return (
        Flow("order")
        .step("reserve", work, compensate=undo)
        .step("pay", payment())
        .parallel("notify", [Step("mail", work), Step("sms", work, when=never)])
    )


def batch() -> Flow:
    return (
        Flow("batch")
        .step("load", work, compensate=undo)
        .map("orders", order(), items=[1, 2, 3], tolerated_failures=1, max_concurrency=1)
        .parallel("extras", [Step("single", order(), input=one), Step("plain", work)])
        .step("declined", order(), input=two, optional=True)
        .always("release", work)
    )


def progress_of(flow: Flow) -> tuple[list[str], FlowResult]:
    stream = io.StringIO()
    progress = Progress(stream, flow, live=False)
    try:
        result = flow.run(on_event=progress.event)
    finally:
        progress.close()
    return [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()], result


# ── progress ─────────────────────────────────────────────────────────────────────


def test_progress_names_a_childs_steps_by_their_path() -> None:
    lines, result = progress_of(batch())
    assert result.ok
    single = [line for line in lines if f"single{SEP}" in line]
    assert single[:4] == [
        f"started     single{SEP}reserve",
        f"completed   single{SEP}reserve after 1 attempt",
        f"started     single{SEP}pay",
        f"started     single{SEP}pay{SEP}authorize",
    ]
    assert f"started     single{SEP}pay{SEP}audit [always]" in lines
    assert f"skipped     single{SEP}sms [notify]: when never was false" in lines
    assert f"group       single{SEP}notify: completed" in lines
    assert "completed   single [extras] after 1 attempt" in lines


def test_a_failed_child_says_which_of_its_steps_failed_what_it_undid_and_why_the_rest_was_skipped() -> None:
    lines, _ = progress_of(batch())
    declined = [line for line in lines if line.split(" ", 1)[1].lstrip().startswith("declined")]
    assert f"failed      declined{SEP}pay{SEP}capture after 1 attempt: RuntimeError: card declined" in declined
    assert f"compensated declined{SEP}pay{SEP}authorize" in declined
    assert f"failed      declined{SEP}pay after 1 attempt: RuntimeError: card declined" in declined
    assert f"compensated declined{SEP}reserve" in declined
    # Inside the child, its own stop is the reason, not the members' conditions.
    assert f"skipped     declined{SEP}mail [notify]: the flow stopped at stage 'pay'" in declined
    assert f"skipped     declined{SEP}sms [notify]: the flow stopped at stage 'pay'" in declined


def test_a_map_of_subflows_lists_only_what_went_wrong_inside_its_failed_items() -> None:
    lines, _ = progress_of(batch())
    inside = [line for line in lines if f"orders[{1!r}]" in line]
    assert inside == [
        f"failed      orders[1]{SEP}pay{SEP}capture: RuntimeError: card declined",
        f"compensated orders[1]{SEP}pay{SEP}authorize",
        f"failed      orders[1]{SEP}pay: RuntimeError: card declined",
        f"compensated orders[1]{SEP}reserve",
        "failed      orders[1]: RuntimeError: card declined",
    ]
    assert not any(f"orders[0]{SEP}" in line or f"orders[2]{SEP}" in line for line in lines)
    assert not any(line.startswith(f"started     orders{SEP}") for line in lines)


def test_a_retried_subflow_judges_its_second_run_afresh() -> None:
    attempts = itertools.count(1)

    def flaky(ctx: Context) -> str:
        if next(attempts) == 1:
            raise ConnectionError("first run fails")
        return "ok"

    child = Flow("child").step("first", flaky).step("maybe", work, when=never)
    lines, result = progress_of(Flow("parent").step("sub", child, retries=1))
    assert result.ok
    skipped = [line for line in lines if line.startswith("skipped")]
    assert skipped == [
        f"skipped     sub{SEP}maybe: the flow stopped at stage 'first'",
        f"skipped     sub{SEP}maybe: when never was false",
    ]


# ── summary ──────────────────────────────────────────────────────────────────────


def names(table: str) -> list[str]:
    """The step column of the table's rows, indentation kept."""
    rows = table.split("\n\n", 1)[0].splitlines()[2:]
    return [re.split(r"\s{2,}", row.rstrip())[0] if not row.startswith(" ") else _indented(row) for row in rows]


def _indented(row: str) -> str:
    stripped = row.lstrip(" ")
    return " " * (len(row) - len(stripped)) + re.split(r"\s{2,}", stripped)[0]


def test_the_summary_indents_each_childs_rows_under_its_subflow() -> None:
    flow = batch()
    table = summary_table(flow.run(), flow=flow)
    assert names(table) == [
        "load",
        "orders",
        "  orders[1]",
        "    reserve",
        "    pay",
        "      authorize",
        "      capture",
        "      audit",
        "    mail",
        "    sms",
        "single",
        "  reserve",
        "  pay",
        "    authorize",
        "    capture",
        "    audit",
        "  mail",
        "  sms",
        "plain",
        "declined",
        "  reserve",
        "  pay",
        "    authorize",
        "    capture",
        "    audit",
        "  mail",
        "  sms",
        "release",
    ]
    lines = table.splitlines()
    failed_item_child = next(line for line in lines if line.startswith("      capture"))
    assert "failed" in failed_item_child and "RuntimeError: card declined" in failed_item_child
    assert "compensated" in next(line for line in lines if line.startswith("      authorize"))
    assert "(always)" in next(line for line in lines if line.startswith("      audit"))
    assert "when never was false" in next(line for line in lines if line.startswith("  sms"))
    declined_mail = [line for line in lines if line.startswith("  mail")][-1]
    assert "the flow stopped at stage 'pay'" in declined_mail


def test_without_the_flow_the_summary_still_nests_children() -> None:
    table = summary_table(Flow("top").step("single", order(), input=one).run())
    assert names(table) == [
        "single",
        "  reserve",
        "  pay",
        "    authorize",
        "    capture",
        "    audit",
        "  mail",
        "  sms",
    ]


# ── timeline ─────────────────────────────────────────────────────────────────────


def labels(page: str) -> list[tuple[int, str, str]]:
    """Each row label: its x (indentation), its data-path (or name) and its text."""
    found = []
    for x, attrs, text in re.findall(
        r'<text x="(\d+)" y="\d+" class="(?:step|group)-label" ([^>]*)>([^<]*)</text>', page
    ):
        path = re.search(r'data-path="([^"]*)"', attrs) or re.search(r'data-(?:step|group|map)="([^"]*)"', attrs)
        assert path is not None
        found.append((int(x), path.group(1).replace("&#x27;", "'"), text))
    return found


def record(flow: Flow) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    flow.run(on_event=lambda event: events.append(event.to_dict()))
    return events


@pytest.mark.timeout(30)
def test_the_timeline_nests_a_childs_rows_under_the_subflows_row_and_keeps_a_map_of_subflows_one_row() -> None:
    flow = batch()
    page = render_timeline(record(flow), flow=flow)
    rows = labels(page)
    assert [(x, path) for x, path, _ in rows] == [
        (8, "load"),
        (8, "orders"),
        (8, "extras"),
        (24, "single"),
        (40, f"single{SEP}reserve"),
        (40, f"single{SEP}pay"),
        (56, f"single{SEP}pay{SEP}authorize"),
        (56, f"single{SEP}pay{SEP}capture"),
        (56, f"single{SEP}pay{SEP}audit"),
        (40, "notify"),
        (56, f"single{SEP}sms"),
        (56, f"single{SEP}mail"),
        (24, "plain"),
        (8, "declined"),
        (24, f"declined{SEP}reserve"),
        (24, f"declined{SEP}pay"),
        (40, f"declined{SEP}pay{SEP}authorize"),
        (40, f"declined{SEP}pay{SEP}capture"),
        (40, f"declined{SEP}pay{SEP}audit"),
        (24, "notify"),
        (24 + 16, f"declined{SEP}mail"),
        (24 + 16, f"declined{SEP}sms"),
        (8, "release"),
    ]
    texts = {path: text for _, path, text in rows}
    assert texts[f"single{SEP}pay{SEP}audit"] == "always: audit"
    assert texts[f"declined{SEP}pay{SEP}capture"] == "capture (failed)"
    assert "skipped: when never was false" in page
    assert "skipped: the flow stopped at stage &#x27;pay&#x27;" in page
    assert "3 items, 1 not completed" in page  # the map's band counts items, not their children


def test_a_child_compensated_as_a_unit_later_is_drawn_on_the_childs_rows() -> None:
    def event(kind: str, time: float, path: list[str], **fields: Any) -> dict[str, Any]:
        return {"kind": kind, "flow": "f", "run_id": "r", "time": time, "path": path, "step": path[-1], **fields}

    events = [
        {"kind": "flow_started", "flow": "f", "run_id": "r", "time": 0.0},
        event("step_started", 0.1, ["sub"], attempt=1),
        event("step_started", 0.1, ["sub", "inner"], attempt=1),
        event("step_finished", 0.2, ["sub", "inner"], attempt=1, status="completed", started_at=0.1),
        event("step_finished", 0.2, ["sub"], attempt=1, status="completed", started_at=0.1),
        event("step_started", 0.3, ["boom"], attempt=1),
        event("step_finished", 0.4, ["boom"], attempt=1, status="failed", started_at=0.3),
        event("compensation_started", 0.5, ["sub", "inner"], attempt=1),
        event("compensation_finished", 0.6, ["sub", "inner"], attempt=1, status="compensated", started_at=0.5),
        {"kind": "flow_finished", "flow": "f", "run_id": "r", "time": 0.7, "status": "failed"},
    ]
    page = render_timeline(events)
    assert [(x, path) for x, path, _ in labels(page)] == [(8, "sub"), (24, f"sub{SEP}inner"), (8, "boom")]
    (undo_bar,) = re.findall(r'<rect class="bar compensation" data-step="(\w+)"', page)
    assert undo_bar == "inner"


def test_items_undone_after_their_map_settled_bring_back_no_bar() -> None:
    # The flow fails after the map: its completed items (a plain map's, and a map of
    # subflows' children) are undone then, and are summed up by the summary.
    flow = (
        Flow("late")
        .map("plain", work, items=[1, 2], compensate=undo)
        .map("sagas", order(), items=[1, 3])
        .step("boom", capture)
    )
    stream = io.StringIO()
    progress = Progress(stream, flow, live=True)
    try:
        result = flow.run(2, on_event=progress.event)
        assert not result.ok and result.compensated
        assert progress.maps == {}  # no bar came back for either map
    finally:
        progress.close()
