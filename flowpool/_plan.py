"""A flow's plan as text, Mermaid or Graphviz dot, without running it.

``flowpool show`` prints what a run would do: the stages in order, each
group's failure policy, every step's retries, timeouts and compensation, and
the order compensations would run in if the flow failed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

from flowpool import Flow, Group, Map, Step
from flowpool._definition import (
    Always,
    group_plan_phrases,
    group_rule,
    map_plan_phrases,
    map_rule,
)
from flowpool._options import callable_name, plan_phrases

__all__ = ["PLAN_FORMATS", "render_plan"]

PLAN_FORMATS: tuple[str, ...] = ("text", "mermaid", "dot")


def render_plan(flow: Flow, fmt: str = "text") -> str:
    """Render ``flow``'s plan in ``fmt`` (``"text"``, ``"mermaid"`` or ``"dot"``).

    Raises:
        ValueError: ``fmt`` is not one of ``PLAN_FORMATS``.
    """
    renderers: dict[str, Callable[[Flow], str]] = {"text": _text, "mermaid": _mermaid, "dot": _dot}
    try:
        renderer = renderers[fmt]
    except KeyError:
        raise ValueError(f"unknown plan format {fmt!r}; use one of {', '.join(PLAN_FORMATS)}") from None
    return renderer(flow)


def step_options(step: Step) -> list[str]:
    """Short phrases for a step's options, e.g. ``["retries 2", "timeout 5 s"]``."""
    phrases = plan_phrases(step)
    if isinstance(step, Always):
        phrases.insert(0, "always: runs last, whatever the outcome")
    return phrases


def group_policy(group: Group) -> str:
    """The group's failure policy in words, with its concurrency cap."""
    phrases = [group_rule(group)[1]]
    required = [m.name for m in group.members if m.required]
    if required:
        phrases.append(f"required: {', '.join(required)}")
    phrases.extend(group_plan_phrases(group))
    return "; ".join(phrases)


def map_policy(stage: Map) -> str:
    """The map's failure policy in words, with its concurrency caps and key."""
    return "; ".join([map_rule(stage)[1], *map_plan_phrases(stage)])


def compensation_order(flow: Flow) -> list[str]:
    """Steps (and maps) with a compensation, in the order they would be undone (reverse
    declaration; a map's items latest first)."""
    order: list[str] = []
    for stage in reversed(flow.stages):
        if isinstance(stage, Map):
            if stage.step.compensate is not None:
                order.append(f"{stage.name}[each item, latest first]")
        else:
            members = stage.members if isinstance(stage, Group) else (stage,)
            order.extend(step.name for step in reversed(members) if step.compensate is not None)
    return order


# ── text ─────────────────────────────────────────────────────────────────────────


def _step_line(step: Step) -> str:
    options = step_options(step)
    suffix = f"  [{', '.join(options)}]" if options else ""
    return f"{step.name} ({callable_name(step.fn)}){suffix}"


def _text(flow: Flow) -> str:
    maps = sum(1 for stage in flow.stages if isinstance(stage, Map))
    counted = f", {maps} map(s)" if maps else ""
    lines = [f"flow {flow.name!r}: {len(flow.stages)} stage(s), {len(flow.steps())} step(s){counted}"]
    for number, stage in enumerate(flow.stages, start=1):
        if isinstance(stage, Group):
            lines.append(f"{number}. parallel group {stage.name} ({len(stage.members)} members)")
            lines.append(f"     policy: {group_policy(stage)}")
            for position, member in enumerate(stage.members):
                branch = "`-" if position == len(stage.members) - 1 else "|-"
                lines.append(f"   {branch} {_step_line(member)}")
        elif isinstance(stage, Map):
            lines.append(f"{number}. map {_step_line(stage.step)} over its items")
            lines.append(f"     policy: {map_policy(stage)}")
        else:
            lines.append(f"{number}. step {_step_line(stage)}")
    order = compensation_order(flow)
    if order:
        lines.append(f"if the flow fails, completed steps are compensated in this order: {', '.join(order)}")
    else:
        lines.append("no step has a compensation")
    return "\n".join(lines) + "\n"


# ── graphs ───────────────────────────────────────────────────────────────────────


def _graph(
    flow: Flow,
) -> tuple[list[tuple[str, Step | Group | Map, list[tuple[str, Step]]]], list[tuple[str, str]]]:
    """Node ids per stage and the edges between stages.

    A group fans out to its members and back in; two groups in a row meet at a
    join point rather than with members x members edges.
    """
    stages: list[tuple[str, Step | Group | Map, list[tuple[str, Step]]]] = []
    counter = 0
    in_run_order = [s for s in flow.stages if not isinstance(s, Always)] + [
        s for s in flow.stages if isinstance(s, Always)
    ]
    for stage in in_run_order:
        if isinstance(stage, Group):
            members = []
            for member in stage.members:
                counter += 1
                members.append((f"n{counter}", member))
            counter += 1
            stages.append((f"g{counter}", stage, members))
        elif isinstance(stage, Map):
            counter += 1
            stages.append((f"n{counter}", stage, [(f"n{counter}", stage.step)]))
        else:
            counter += 1
            stages.append((f"n{counter}", stage, [(f"n{counter}", stage)]))
    edges: list[tuple[str, str]] = []
    for (_, prev, prev_nodes), (next_id, nxt, next_nodes) in itertools.pairwise(stages):
        if isinstance(prev, Group) and isinstance(nxt, Group):
            join = f"j{next_id}"
            edges.extend((node, join) for node, _ in prev_nodes)
            edges.extend((join, node) for node, _ in next_nodes)
        else:
            edges.extend((a, b) for a, _ in prev_nodes for b, _ in next_nodes)
    return stages, edges


def _label(step: Step) -> str:
    options = step_options(step)
    return step.name if not options else step.name + "\n" + "\n".join(options)


def _stage_label(stage: Step | Group | Map, step: Step) -> str:
    if isinstance(stage, Map):
        return f"{_label(step)}\nmap: {map_policy(stage)}"
    return _label(step)


def _mermaid_text(text: str) -> str:
    # Mermaid labels are quoted; quotes and angle brackets need entity codes.
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;").replace("\n", "<br/>")


def _mermaid(flow: Flow) -> str:
    stages, edges = _graph(flow)
    lines = ["flowchart TD", f"  %% flow {flow.name}"]
    for node_id, stage, members in stages:
        if isinstance(stage, Group):
            title = f"{stage.name} ({group_policy(stage)})"
            lines.append(f'  subgraph {node_id}["{_mermaid_text(title)}"]')
            for member_id, member in members:
                lines.append(f'    {member_id}["{_mermaid_text(_label(member))}"]')
            lines.append("  end")
        else:
            lines.append(f'  {node_id}["{_mermaid_text(_stage_label(stage, members[0][1]))}"]')
    joins = sorted({b for _, b in edges if b.startswith("j")})
    lines.extend(f'  {join}((" "))' for join in joins)
    lines.extend(f"  {a} --> {b}" for a, b in edges)
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    # A JSON string is a valid dot string, escapes included.
    return json.dumps(text)


def _dot(flow: Flow) -> str:
    stages, edges = _graph(flow)
    lines = [
        f"digraph {_dot_text(flow.name)} {{",
        "  rankdir=TB;",
        "  node [shape=box, style=rounded];",
    ]
    for node_id, stage, members in stages:
        if isinstance(stage, Group):
            lines.append(f"  subgraph cluster_{node_id} {{")
            lines.append(f"    label={_dot_text(f'{stage.name} ({group_policy(stage)})')};")
            for member_id, member in members:
                lines.append(f"    {member_id} [label={_dot_text(_label(member))}];")
            lines.append("  }")
        else:
            lines.append(f"  {node_id} [label={_dot_text(_stage_label(stage, members[0][1]))}];")
    joins = sorted({b for _, b in edges if b.startswith("j")})
    lines.extend(f'  {join} [shape=point, label=""];' for join in joins)
    lines.extend(f"  {a} -> {b};" for a, b in edges)
    lines.append("}")
    return "\n".join(lines) + "\n"
