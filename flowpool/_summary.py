"""The end of a run in words: the summary table, the counts line, what did not
complete (``--strict``) and the warning about attempts still running."""

from __future__ import annotations

from typing import Any

from flowpool import Flow, FlowResult, Group, GroupStatus, Map, Step, StepResult, StepStatus
from flowpool._definition import Always

from ._reasons import skip_reasons
from ._terminal import _COLOURS, FAILED_ITEMS_SHOWN, _error_line, _printable, _seconds

__all__ = ["counts_line", "not_completed", "still_running_lines", "summary_table", "tally"]


_COUNTED = (
    (StepStatus.FAILED, "failed"),
    (StepStatus.TIMED_OUT, "timed out"),
    (StepStatus.CANCELLED, "cancelled"),
    (StepStatus.SKIPPED, "skipped"),
)


def tally(result: FlowResult) -> dict[StepStatus, int]:
    """Every ``StepStatus`` → how many steps and map items ended with it."""
    counts = dict.fromkeys(StepStatus, 0)
    for step in result.steps.values():
        counts[step.status] += 1
    for mapped in result.maps.values():
        for status, count in mapped.counts.items():
            counts[StepStatus(status)] += count
    return counts


def counts_line(result: FlowResult) -> str:
    """``C/T completed`` then ``, N failed`` and so on for each nonzero count, T
    counting every step and map item: e.g. ``191/200 completed, 8 failed, 1 timed out``."""
    counts = tally(result)
    parts = [f"{counts[StepStatus.COMPLETED]}/{sum(counts.values())} completed"]
    parts.extend(f"{counts[status]} {word}" for status, word in _COUNTED if counts[status])
    return ", ".join(parts)


def not_completed(result: FlowResult, *, limit: int = 10) -> str:
    """What in a run did not complete (groups and maps that were PARTIAL, steps that
    ended otherwise than completed or skipped), as one short text; "" when nothing."""
    found: list[str] = []
    partial: set[str] = set()
    for name, group in result.groups.items():
        if group.status is not GroupStatus.PARTIAL:
            continue
        partial.add(name)
        mapped = result.maps.get(name)
        if mapped is not None:
            missing = mapped.total - mapped.counts[StepStatus.COMPLETED] - mapped.counts[StepStatus.SKIPPED]
            found.append(f"map {name!r} partial ({missing} of {mapped.total} items did not complete)")
        else:
            found.append(f"group {name!r} partial")
    for name, mapped in result.maps.items():
        if name not in partial and mapped.status is GroupStatus.PARTIAL:
            partial.add(name)
            found.append(f"map {name!r} partial")
    for step in result.steps.values():
        if step.status in (StepStatus.COMPLETED, StepStatus.SKIPPED) or step.group in partial:
            continue
        found.append(f"step {step.name!r} {step.status.value.replace('_', ' ')}")
    if len(found) > limit:
        found = [*found[:limit], f"and {len(found) - limit} more"]
    return ", ".join(found)


def still_running_lines(result: FlowResult) -> list[str]:
    """The warning for attempts abandoned at their timeout that had not ended with the run."""
    if not result.still_running:
        return []
    names = _listed(result.still_running)
    return [
        _printable(f"flowpool: warning: still running after the run: {names}"),
        "  their threads could not be stopped and may still have side effects (not compensated);",
        "  run with --executor process to have hung steps killed at their timeout",
    ]


def _listed(names: tuple[str, ...], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def summary_table(result: FlowResult, *, colour: bool = False, flow: Flow | None = None) -> str:
    """The end-of-run table: one row per step, then the flow's outcome and compensations.

    Given the run's ``flow``, the rows follow its stages, always-stages last (marked
    in the group column), and a skipped step or map says why (``_reasons``); a
    result read back from a journal has no definition beside it. A subflow's steps
    come indented under it (and under each failed item listed for a map of subflows).
    """
    header = ("step", "group", "status", "attempts", "duration", "error / reason", "compensation")
    rows = _rows(result, flow, "")
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
        out.append(_printable(f"compensated (in this order): {_listed(result.compensated)}"))
    if result.not_compensated:
        out.append(_printable(f"NOT compensated: {_listed(result.not_compensated)}"))
    return "\n".join(out)


def _rows(result: FlowResult, flow: Flow | None, indent: str) -> list[tuple[str, ...]]:
    """The rows of one flow's result (the top one, or a subflow's, further indented)."""
    not_compensated = set(result.not_compensated)
    reasons = skip_reasons(flow, result) if flow is not None else {}
    rows: list[tuple[str, ...]] = []

    def step_rows(step: StepResult, definition: Step | None) -> None:
        always = isinstance(definition, Always)
        rows.append(_step_row(step, not_compensated, reasons, indent, always=always))
        if step.subflow is not None:
            child = definition.subflow if definition is not None else None
            rows.extend(_rows(step.subflow, child, indent + "  "))

    if flow is None:
        for step in result.steps.values():
            step_rows(step, None)
        for mapped in result.maps.values():
            rows.extend(_map_rows(mapped, reasons, None, indent))
        return rows
    last = [stage for stage in flow.stages if isinstance(stage, Always)]
    for stage in [*(stage for stage in flow.stages if not isinstance(stage, Always)), *last]:
        if isinstance(stage, Map):
            if stage.name in result.maps:
                rows.extend(_map_rows(result.maps[stage.name], reasons, stage.subflow, indent))
            continue
        for member in stage.members if isinstance(stage, Group) else (stage,):
            if member.name in result.steps:
                step_rows(result.steps[member.name], member)
    return rows


def _step_row(
    step: StepResult, not_compensated: set[str], reasons: dict[str, str], indent: str, *, always: bool = False
) -> tuple[str, ...]:
    if step.compensation is not None:
        undo = step.compensation.status
        if not step.compensation.ok:
            undo += f": {_error_line(step.compensation.error, 40)}"
    elif step.name in not_compensated:
        undo = "not run"
    else:
        undo = "-"
    return (
        indent + step.name,
        "(always)" if always else step.group or "-",
        step.status.value,
        str(step.attempts),
        _seconds(step.duration),
        _error_line(step.error, 60) or reasons.get(step.name, "-"),
        undo,
    )


def _map_rows(mapped: Any, reasons: dict[str, str], child: Flow | None, indent: str) -> list[tuple[str, ...]]:
    """A map's row (its verdict and counts), then a row for each of its first failed
    items, each followed by its subflow's rows in a map of subflows."""
    counts = mapped.counts
    parts = [f"{mapped.total} items: {counts[StepStatus.COMPLETED]} completed"]
    parts.extend(f"{counts[status]} {word}" for status, word in _COUNTED if counts[status])
    if mapped.stopped_early:
        parts.append("stopped early")
    described = ", ".join(parts)
    if mapped.name in reasons:
        described = reasons[mapped.name]
    if mapped.error is not None and mapped.status is GroupStatus.FAILED:
        described += f"; {_error_line(mapped.error, 60)}"
    rows: list[tuple[str, ...]] = [(indent + mapped.name, "(map)", mapped.status.value, "-", "-", described, "-")]
    failed = mapped.failed
    for item in failed[:FAILED_ITEMS_SHOWN]:
        undo = "-" if item.compensation is None else item.compensation.status
        rows.append(
            (
                f"{indent}  {mapped.name}[{item.key!r}]",
                mapped.name,
                item.status.value,
                str(item.attempts),
                _seconds(item.duration),
                _error_line(item.error, 60) or "-",
                undo,
            )
        )
        if item.subflow is not None:
            rows.extend(_rows(item.subflow, child, indent + "    "))
    if len(failed) > FAILED_ITEMS_SHOWN:
        rows.append((f"{indent}  ... {len(failed) - FAILED_ITEMS_SHOWN} more", mapped.name, "", "", "", "", ""))
    return rows
