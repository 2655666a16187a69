"""A flow's plan as text, Mermaid or Graphviz dot, without running it.

``flowpool show`` prints what a run would do: the stages in order, each
group's failure policy, every step's retries, timeouts, condition and
compensation, each subflow's own stages nested under it, the order
compensations would run in if the flow failed, and the always-stages after it.
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
    declaration; a map's items latest first). A subflow is undone as a unit at its
    place, its own steps in its reverse order: ``pay(refund, release)``."""
    order: list[str] = []
    for stage in reversed(flow.stages):
        if isinstance(stage, Map):
            child = stage.subflow
            inner = compensation_order(child) if child is not None else []
            if inner:
                order.append(f"{stage.name}[each item, latest first]({', '.join(inner)})")
            elif stage.step.compensate is not None:
                order.append(f"{stage.name}[each item, latest first]")
            continue
        for step in reversed(stage.members if isinstance(stage, Group) else (stage,)):
            child = step.subflow
            inner = compensation_order(child) if child is not None else []
            if inner:
                order.append(f"{step.name}({', '.join(inner)})")
            elif step.compensate is not None:
                order.append(step.name)
    return order


# ── text ─────────────────────────────────────────────────────────────────────────


def _step_line(step: Step) -> str:
    options = step_options(step)
    suffix = f"  [{', '.join(options)}]" if options else ""
    child = step.subflow
    if child is not None:
        return f"{step.name}: subflow {child.name!r}{suffix}"
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
    lines = [f"flow {flow.name!r}: {len(stages)} stage(s){counted}", *_stage_lines(flow, "", "")]
    order = compensation_order(flow)
    if order:
        lines.append(f"if the flow fails, completed steps are compensated in this order: {', '.join(order)}")
    else:
        lines.append("no step has a compensation")
    if always:
        lines.append("then, whatever the outcome (completed, failed, timed out or interrupted):")
        lines.extend(_always_lines(always, "", len(stages) + 1))
    return "\n".join(lines) + "\n"


def _always_lines(always: list[Always], number: str, first: int) -> list[str]:
    return [f"{number}{position}. always {_step_line(step)}" for position, step in enumerate(always, start=first)]


def _stage_lines(flow: Flow, number: str, indent: str) -> list[str]:
    """The stages of ``flow``, numbered ``{number}1.``, ``{number}2.`` and so on, each
    subflow's own stages nested under it (numbered ``2.1.`` under stage 2)."""
    stages, _ = _split(flow)
    lines: list[str] = []
    for position, stage in enumerate(stages, start=1):
        here = f"{number}{position}"
        if isinstance(stage, Group):
            lines.append(f"{indent}{here}. parallel group {stage.name} ({len(stage.members)} members)")
            lines.append(f"{indent}     policy: {group_policy(stage)}")
            for place, member in enumerate(stage.members):
                last = place == len(stage.members) - 1
                lines.append(f"{indent}   {'`-' if last else '|-'} {_step_line(member)}")
                lines.extend(_child_lines(member, f"{here}.{place + 1}.", f"{indent}   {'  ' if last else '| '}   "))
        elif isinstance(stage, Map):
            lines.append(f"{indent}{here}. map {_step_line(stage.step)} over its items")
            lines.append(f"{indent}     policy: {map_policy(stage)}")
            lines.extend(_child_lines(stage.step, f"{here}.", f"{indent}     ", each=True))
        else:
            lines.append(f"{indent}{here}. step {_step_line(stage)}")
            lines.extend(_child_lines(stage, f"{here}.", f"{indent}     "))
    return lines


def _child_lines(step: Step, number: str, indent: str, *, each: bool = False) -> list[str]:
    """A subflow's own stages, compensation and always-stages, under its step."""
    child = step.subflow
    if child is None:
        return []
    stages, always = _split(child)
    runs = "each item runs" if each else "runs"
    lines = [f"{indent}{runs} flow {child.name!r}: {len(stages)} stage(s)"]
    lines.extend(_stage_lines(child, number, indent))
    order = compensation_order(child)
    if order:
        lines.append(f"{indent}if {child.name!r} fails, it compensates itself in this order: {', '.join(order)}")
    if always:
        lines.append(f"{indent}then, whatever the outcome of {child.name!r}:")
        lines.extend(indent + line for line in _always_lines(always, number, len(stages) + 1))
    return lines


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
    """A box around boxes: a parallel group, or a subflow's stages."""

    id: str
    title: str
    items: tuple[_Node | _Cluster, ...]
    conditional: bool = False


@dataclass(frozen=True, slots=True)
class _Edge:
    source: str
    target: str
    kind: str = "then"  # "then"; "on failure" (to the compensations); "after" (from them)


class _Graph:
    """The boxes and arrows of a plan, shared by the Mermaid and dot renderers.

    Stages follow each other in run order, then the compensations (when a step
    has one: the arrow to them is taken only when the flow fails), then the
    always-stages, reached either way. A group fans out to its members and back
    in; two groups in a row meet at a join point rather than with members x
    members edges. A subflow is a box around its own stages (and always-stages),
    entered by its first stage and left by its last.
    """

    def __init__(self, flow: Flow) -> None:
        self.count = 0
        self.edges: list[_Edge] = []
        self.joins: list[str] = []
        self.items, _, _ = self._flow(flow, undo=compensation_order(flow))

    def _flow(self, flow: Flow, *, undo: list[str]) -> tuple[list[_Node | _Cluster], list[str], list[str]]:
        """A flow's boxes, and the ids that arrows enter and leave it by."""
        stages, always = _split(flow)
        items: list[_Node | _Cluster] = []
        entries: list[str] = []
        exits: list[str] = []
        for stage in stages:
            item, ins, outs = self._stage(stage)
            items.append(item)
            if not ins:
                continue  # a subflow with no stages: nothing to pass through
            self._link(exits, ins)
            entries = entries or ins
            exits = outs
        compensations: _Node | None = None
        if undo:
            label = f"if the flow fails, compensate in this order: {', '.join(undo)}"
            compensations = _Node(self._id("c"), label, "undo")
            items.append(compensations)
            self.edges.extend(_Edge(end, compensations.id, "on failure") for end in exits)
        for step in always:
            node = _Node(self._id("n"), _label(step, "always: runs last, whatever the outcome"), "always")
            items.append(node)
            self._link(exits, [node.id])
            if compensations is not None:
                self.edges.append(_Edge(compensations.id, node.id, "after"))
                compensations = None
            entries = entries or [node.id]
            exits = [node.id]
        return items, entries, exits

    def _id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def _stage(self, stage: Step | Group | Map) -> tuple[_Node | _Cluster, list[str], list[str]]:
        """The stage's box, and the ids that arrows enter and leave it by."""
        if isinstance(stage, Group):
            members = [self._step(member) for member in stage.members]
            cluster = _Cluster(self._id("g"), f"{stage.name} ({group_policy(stage)})", tuple(m[0] for m in members))
            return cluster, [i for m in members for i in m[1]], [o for m in members for o in m[2]]
        if isinstance(stage, Map):
            return self._step(stage.step, f"map: {map_policy(stage)}", each=True)
        return self._step(stage)

    def _step(self, step: Step, *more: str, each: bool = False) -> tuple[_Node | _Cluster, list[str], list[str]]:
        child = step.subflow
        if child is None:
            node = _Node(self._id("n"), _label(step, *more), "step", conditional=step.when is not None)
            return node, [node.id], [node.id]
        runs = "each item runs flow" if each else "subflow"
        title = "\n".join([f"{step.name}: {runs} {child.name!r}", *step_options(step), *more])
        items, ins, outs = self._flow(child, undo=[])
        return _Cluster(self._id("s"), title, tuple(items), conditional=step.when is not None), ins, outs

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
            if item.conditional:
                lines.append(f"{indent}style {item.id} stroke-dasharray: 5 5")
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
    """Whether a node inside (a dashed cluster is styled on its own) has a condition."""
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
            if item.conditional:
                lines.append(f"{indent}  style=dashed;")
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
