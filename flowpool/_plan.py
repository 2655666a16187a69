"""A flow's plan as text, Mermaid or Graphviz dot, without running it.

``flowpool show`` prints what a run would do: the stages in order, each
group's failure policy, every step's retries, timeouts and compensation, and
the order compensations would run in if the flow failed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

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
    return plan_phrases(step)


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


def _split(flow: Flow) -> tuple[list[Step | Group | Map], list[Always]]:
    """The flow's stages in run order: the rest, then the always-stages."""
    always = [stage for stage in flow.stages if isinstance(stage, Always)]
    return [stage for stage in flow.stages if not isinstance(stage, Always)], always


def _text(flow: Flow) -> str:
    stages, always = _split(flow)
    maps = sum(1 for stage in stages if isinstance(stage, Map))
    counted = f" and {len(always)} always-stage(s)" if always else ""
    counted += f", {len(flow.steps())} step(s)"
    counted += f", {maps} map(s)" if maps else ""
    lines = [f"flow {flow.name!r}: {len(stages)} stage(s){counted}"]
    for number, stage in enumerate(stages, start=1):
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
    if always:
        lines.append("then, whatever the outcome (completed, failed, timed out or interrupted):")
        for number, step in enumerate(always, start=len(stages) + 1):
            lines.append(f"{number}. always {_step_line(step)}")
    return "\n".join(lines) + "\n"


# ── graphs ───────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class _Node:
    """One box: a step, a map, an always-stage, or the compensations."""

    id: str
    label: str
    kind: str  # "step", "always" or "undo"
    conditional: bool = False


@dataclass(frozen=True, slots=True)
class _Cluster:
    """A box around boxes: a parallel group."""

    id: str
    title: str
    items: tuple[_Node | _Cluster, ...]


@dataclass(frozen=True, slots=True)
class _Edge:
    source: str
    target: str
    kind: str = "then"  # "then"; "on failure" (to the compensations); "after" (from them)


class _Graph:
    """The boxes and arrows of a plan, shared by the Mermaid and dot renderers.

    Stages follow each other in run order, then the compensations (when a step
    has one: the arrow to them is taken only when the flow fails), then the
    always-stages, reached either way. A group fans out to its members and back in; two groups in a
    row meet at a join point rather than with members x members edges.
    """

    def __init__(self, flow: Flow) -> None:
        self.count = 0
        self.edges: list[_Edge] = []
        self.joins: list[str] = []
        stages, always = _split(flow)
        self.items: list[_Node | _Cluster] = []
        exits: list[str] = []
        for stage in stages:
            item, entries, ends = self._stage(stage)
            self.items.append(item)
            self._link(exits, entries)
            exits = ends
        order = compensation_order(flow)
        undo: _Node | None = None
        if order:
            undo = _Node(self._id("c"), f"if the flow fails, compensate in this order: {', '.join(order)}", "undo")
            self.items.append(undo)
            self.edges.extend(_Edge(end, undo.id, "on failure") for end in exits)
        for step in always:
            node = _Node(self._id("n"), _label(step, "always: runs last, whatever the outcome"), "always")
            self.items.append(node)
            self._link(exits, [node.id])
            if undo is not None:
                self.edges.append(_Edge(undo.id, node.id, "after"))
                undo = None
            exits = [node.id]

    def _id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def _stage(self, stage: Step | Group | Map) -> tuple[_Node | _Cluster, list[str], list[str]]:
        """The stage's box, and the ids that arrows enter and leave it by."""
        if isinstance(stage, Group):
            members = [self._step(member) for member in stage.members]
            cluster = _Cluster(self._id("g"), f"{stage.name} ({group_policy(stage)})", tuple(members))
            ids = [member.id for member in members]
            return cluster, ids, ids
        node = self._step(stage.step, f"map: {map_policy(stage)}") if isinstance(stage, Map) else self._step(stage)
        return node, [node.id], [node.id]

    def _step(self, step: Step, *more: str) -> _Node:
        return _Node(self._id("n"), _label(step, *more), "step", conditional=step.when is not None)

    def _link(self, exits: list[str], entries: list[str]) -> None:
        if len(exits) > 1 and len(entries) > 1:
            join = f"j{entries[0]}"
            self.joins.append(join)
            self.edges.extend(_Edge(end, join) for end in exits)
            self.edges.extend(_Edge(join, entry) for entry in entries)
        else:
            self.edges.extend(_Edge(end, entry) for end in exits for entry in entries)


def _label(step: Step, *more: str) -> str:
    return "\n".join([step.name, *step_options(step), *more])


def _mermaid_text(text: str) -> str:
    # Mermaid labels are quoted; quotes and angle brackets need entity codes.
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;").replace("\n", "<br/>")


# Mermaid shapes: a step is a box, an always-stage a stadium, the compensations a
# parallelogram; a step with a condition has a dashed border.
_MERMAID_SHAPES = {"step": ('["', '"]'), "always": ('(["', '"])'), "undo": ('[/"', '"/]')}


def _mermaid_items(items: tuple[_Node | _Cluster, ...] | list[_Node | _Cluster], indent: str) -> list[str]:
    lines: list[str] = []
    for item in items:
        if isinstance(item, _Cluster):
            lines.append(f'{indent}subgraph {item.id}["{_mermaid_text(item.title)}"]')
            lines.extend(_mermaid_items(item.items, indent + "  "))
            lines.append(f"{indent}end")
            continue
        opening, closing = _MERMAID_SHAPES[item.kind]
        styled = ":::when" if item.conditional else ""
        lines.append(f"{indent}{item.id}{opening}{_mermaid_text(item.label)}{closing}{styled}")
    return lines


def _mermaid(flow: Flow) -> str:
    graph = _Graph(flow)
    lines = ["flowchart TD", f"  %% flow {flow.name}"]
    lines.extend(_mermaid_items(graph.items, "  "))
    lines.extend(f'  {join}((" "))' for join in graph.joins)
    arrows = {"then": "-->", "on failure": "-. on failure .->", "after": "-.->"}
    for edge in graph.edges:
        arrow = arrows[edge.kind]
        lines.append(f"  {edge.source} {arrow} {edge.target}")
    if any(_conditional(item) for item in graph.items):
        lines.append("  classDef when stroke-dasharray: 5 5")
    return "\n".join(lines) + "\n"


def _conditional(item: _Node | _Cluster) -> bool:
    if isinstance(item, _Cluster):
        return any(_conditional(inner) for inner in item.items)
    return item.conditional


def _dot_text(text: str) -> str:
    # A JSON string is a valid dot string, escapes included.
    return json.dumps(text)


# dot: an always-stage has a double border, the compensations are a note; a step
# with a condition has a dashed border.
_DOT_SHAPES = {"step": "", "always": ", peripheries=2", "undo": ", shape=note, style=dashed"}


def _dot_items(items: tuple[_Node | _Cluster, ...] | list[_Node | _Cluster], indent: str) -> list[str]:
    lines: list[str] = []
    for item in items:
        if isinstance(item, _Cluster):
            lines.append(f"{indent}subgraph cluster_{item.id} {{")
            lines.append(f"{indent}  label={_dot_text(item.title)};")
            lines.extend(_dot_items(item.items, indent + "  "))
            lines.append(f"{indent}}}")
            continue
        styled = _DOT_SHAPES[item.kind] + (', style="rounded,dashed"' if item.conditional else "")
        lines.append(f"{indent}{item.id} [label={_dot_text(item.label)}{styled}];")
    return lines


def _dot(flow: Flow) -> str:
    graph = _Graph(flow)
    lines = [
        f"digraph {_dot_text(flow.name)} {{",
        "  rankdir=TB;",
        "  node [shape=box, style=rounded];",
    ]
    lines.extend(_dot_items(graph.items, "  "))
    lines.extend(f'  {join} [shape=point, label=""];' for join in graph.joins)
    styles = {"then": "", "on failure": ' [style=dashed, label="on failure"]', "after": " [style=dashed]"}
    for edge in graph.edges:
        styled = styles[edge.kind]
        lines.append(f"  {edge.source} -> {edge.target}{styled};")
    lines.append("}")
    return "\n".join(lines) + "\n"
