"""The command's pictures of composed flows: conditions (a skipped step says why) and
always-stages (drawn and listed after the rest and after the compensations), in
``show`` (text, Mermaid, dot), the live progress, the summary table and the timeline."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowpool import Context, Flow, FlowResult, Step
from flowpool._plan import render_plan
from flowpool._reasons import skip_reasons
from flowpool._summary import summary_table
from flowpool._terminal import Progress
from flowpool.cli import main


def is_weekday(ctx: Context) -> bool:
    return False


def is_open(ctx: Context) -> bool:
    return True


def work(ctx: Context) -> str:
    return ctx.step


def undo(ctx: Context, value: Any) -> None:
    return None


def decline(ctx: Context) -> None:
    raise RuntimeError("card declined")


def report(ctx: Context) -> str:
    return str(ctx.outcome)


def conditional_flow() -> Flow:
    """Conditions on a step, a member and a map; an always-stage declared first."""
    return (
        Flow("conditional")
        .always("report", report)
        .step("load", work, compensate=undo)
        .step("weekday-only", work, when=is_weekday)
        .parallel("pair", [Step("a", work, compensate=undo, when=is_open), Step("b", work, when=is_weekday)])
        .map("each", work, items=[1, 2], when=is_weekday)
        .always("release", work)
    )


def failing_flow() -> Flow:
    return (
        Flow("failing")
        .step("load", work, compensate=undo)
        .step("weekday-only", work, when=is_weekday)
        .step("charge", decline)
        .step("later", work, when=is_weekday)
        .step("last", work)
        .always("report", report)
    )


# ── show ─────────────────────────────────────────────────────────────────────────


def test_show_text_names_each_condition_and_puts_always_stages_after_the_compensations() -> None:
    lines = render_plan(conditional_flow()).splitlines()
    assert lines[0] == "flow 'conditional': 4 stage(s) and 2 always-stage(s), 6 step(s), 1 map(s)"
    assert lines[1] == "1. step load (work)  [compensate undo]"
    assert lines[2] == "2. step weekday-only (work)  [only when is_weekday]"
    assert "   |- a (work)  [compensate undo, only when is_open]" in lines
    assert "   `- b (work)  [only when is_weekday]" in lines
    assert "4. map each (work)  [only when is_weekday] over its items" in lines
    compensation = lines.index("if the flow fails, completed steps are compensated in this order: a, load")
    # Declared first, run last: after the compensations, in declaration order.
    assert lines[compensation + 1 :] == [
        "then, whatever the outcome (completed, failed, timed out or interrupted):",
        "5. always report (report)",
        "6. always release (work)",
    ]


def test_show_graphs_draw_conditions_dashed_and_always_stages_after_the_compensations() -> None:
    mermaid = render_plan(conditional_flow(), "mermaid").splitlines()
    nodes = {line.strip().split("[", 1)[0].split("(", 1)[0]: line.strip() for line in mermaid if '"' in line}
    by_name = {line.split('"')[1].split("<br/>")[0]: node for node, line in nodes.items() if "subgraph" not in line}
    assert nodes[by_name["weekday-only"]].endswith(":::when")
    assert nodes[by_name["b"]].endswith(":::when") and not nodes[by_name["load"]].endswith(":::when")
    assert "  classDef when stroke-dasharray: 5 5" in mermaid
    undo_node = next(node for node, line in nodes.items() if "compensate in this order: a, load" in line)
    report_node, release_node = by_name["report"], by_name["release"]
    assert nodes[report_node].startswith(f'{report_node}(["report<br/>always: runs last')
    # The last stage leads to the compensations only on failure, and to the
    # always-stages either way; the compensations lead to the first always-stage.
    each = by_name["each"]
    assert f"  {each} -. on failure .-> {undo_node}" in mermaid
    assert f"  {each} --> {report_node}" in mermaid
    assert f"  {undo_node} -.-> {report_node}" in mermaid
    assert f"  {report_node} --> {release_node}" in mermaid
    assert mermaid.index(f"  {each} --> {report_node}") > mermaid.index(f"  {each} -. on failure .-> {undo_node}")

    dot = render_plan(conditional_flow(), "dot")
    assert 'label="weekday-only\\nonly when is_weekday", style="rounded,dashed"];' in dot
    assert 'label="report\\nalways: runs last, whatever the outcome", peripheries=2];' in dot
    assert 'label="if the flow fails, compensate in this order: a, load", shape=note, style=dashed];' in dot
    assert dot.index('label="release') > dot.index("compensate in this order") > dot.index('label="each')
    assert '[style=dashed, label="on failure"];' in dot and "[style=dashed];" in dot


def test_show_without_compensations_or_always_stages_draws_neither() -> None:
    flow = Flow("plain").step("one", work).step("two", work, when=is_open)
    assert "compensate" not in render_plan(flow, "mermaid")
    assert "peripheries" not in render_plan(flow, "dot") and "shape=note" not in render_plan(flow, "dot")
    assert "always" not in render_plan(flow)


# ── why a step was skipped ───────────────────────────────────────────────────────


def test_a_skipped_step_says_whether_its_condition_or_a_stop_skipped_it() -> None:
    flow = failing_flow()
    reasons = skip_reasons(flow, flow.run())
    assert reasons == {
        "weekday-only": "when is_weekday was false",
        "later": "the flow stopped at stage 'charge'",
        "last": "the flow stopped at stage 'charge'",
    }


def test_an_optional_failure_does_not_stop_the_flow_so_a_later_condition_is_the_reason() -> None:
    flow = (
        Flow("optional")
        .step("try", decline, optional=True)
        .parallel("pair", [Step("a", work), Step("b", work, when=is_weekday)])
        .map("each", work, items=[1], when=is_weekday)
    )
    assert skip_reasons(flow, flow.run()) == {"b": "when is_weekday was false", "each": "when is_weekday was false"}


def test_a_failed_group_stops_the_flow_for_conditional_and_plain_steps_alike() -> None:
    flow = (
        Flow("group")
        .parallel("both", [Step("x", decline), Step("y", decline)])
        .step("weekday-only", work, when=is_weekday)
        .map("each", work, items=[1])
    )
    result = flow.run()
    assert result.failed_stage == "both"
    assert skip_reasons(flow, result) == {
        "weekday-only": "the flow stopped at stage 'both'",
        "each": "the flow stopped at stage 'both'",
    }


# ── progress ─────────────────────────────────────────────────────────────────────


def progress_of(flow: Flow) -> tuple[list[str], FlowResult]:
    stream = io.StringIO()
    progress = Progress(stream, flow, live=False)
    try:
        result = flow.run(on_event=progress.event)
    finally:
        progress.close()
    return [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()], result


def test_progress_says_why_each_step_was_skipped_and_tags_always_stages() -> None:
    lines, _ = progress_of(failing_flow())
    assert "skipped     weekday-only: when is_weekday was false" in lines
    assert "skipped     later: the flow stopped at stage 'charge'" in lines
    assert "skipped     last: the flow stopped at stage 'charge'" in lines
    assert lines.index("compensated load") < lines.index("started     report [always]")
    assert "completed   report [always] after 1 attempt" in lines


def test_progress_says_why_a_member_and_a_map_were_skipped() -> None:
    lines, _ = progress_of(conditional_flow())
    assert "skipped     b [pair]: when is_weekday was false" in lines
    assert "group       pair: completed" in lines
    assert "map         each: skipped: when is_weekday was false" in lines
    # An always-stage declared first still runs last.
    skipped_map = lines.index("map         each: skipped: when is_weekday was false")
    assert lines.index("completed   report [always] after 1 attempt") > skipped_map


# ── summary ──────────────────────────────────────────────────────────────────────


def rows(table: str) -> dict[str, list[str]]:
    """The table's rows by step name, cells split on the two-space column gaps."""
    found: dict[str, list[str]] = {}
    for line in table.splitlines()[2:]:
        if not line.strip():
            break
        cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
        found[cells[0]] = cells
    return found


def test_the_summary_gives_each_skip_its_reason_and_lists_always_stages_last() -> None:
    flow = conditional_flow()
    table = summary_table(flow.run(), flow=flow)
    found = rows(table)
    assert list(found) == ["load", "weekday-only", "a", "b", "each", "report", "release"]
    assert found["weekday-only"][1:] == ["-", "skipped", "0", "-", "when is_weekday was false", "-"]
    assert found["b"][1:3] == ["pair", "skipped"] and found["b"][5] == "when is_weekday was false"
    assert found["each"][1:3] == ["(map)", "skipped"] and found["each"][5] == "when is_weekday was false"
    assert found["report"][1:3] == ["(always)", "completed"]
    assert "error / reason" in table.splitlines()[0]


def test_the_summary_of_a_failed_run_names_the_stage_that_stopped_it() -> None:
    flow = failing_flow()
    found = rows(summary_table(flow.run(), flow=flow))
    assert found["later"][5] == "the flow stopped at stage 'charge'"
    assert found["weekday-only"][5] == "when is_weekday was false"
    assert found["report"][1:3] == ["(always)", "completed"]


def test_without_the_flow_the_summary_still_lists_every_step() -> None:
    # A journal's recorded result has no definition beside it: no reasons, no marks.
    found = rows(summary_table(failing_flow().run()))
    assert list(found) == ["load", "weekday-only", "charge", "later", "last", "report"]
    assert found["later"][5] == "-" and found["report"][1] == "-"


# ── the command end to end ───────────────────────────────────────────────────────


def run_file(tmp_path: Path, *args: str) -> Result:
    source = tmp_path / "composed.py"
    source.write_text(
        textwrap.dedent(
            """
            from flowpool import Flow

            def is_weekday(ctx): return False
            def work(ctx): return 1
            def undo(ctx, value): return None
            def decline(ctx): raise RuntimeError("card declined")

            flow = (
                Flow("composed")
                .step("load", work, compensate=undo)
                .step("weekday-only", work, when=is_weekday)
                .step("charge", decline)
                .always("report", work)
            )
            """
        ),
        encoding="utf-8",
    )
    return CliRunner().invoke(main, ["run", f"{source}:flow", *args])


@pytest.mark.timeout(60)
def test_the_command_shows_reasons_and_always_stages_in_progress_summary_and_timeline(tmp_path: Path) -> None:
    page = tmp_path / "timeline.html"
    result = run_file(tmp_path, "--timeline", str(page))
    assert result.exit_code == 1, result.stderr
    assert "skipped     weekday-only: when is_weekday was false" in result.stderr
    assert "started     report [always]" in result.stderr
    assert rows(result.stderr.split("\n\n", 1)[1])["report"][1:3] == ["(always)", "completed"]
    html = page.read_text(encoding="utf-8")
    assert "skipped: when is_weekday was false" in html
    assert 'data-step="report" data-always="1">always: report</text>' in html
