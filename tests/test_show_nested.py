"""``flowpool show`` of flows that run other flows: each subflow's stages nested under
it with its name (indented text; Mermaid and dot subgraphs), and the compensation
order showing a child's steps at the child's place."""

from __future__ import annotations

import re
from typing import Any

from flowpool import Context, Flow, Step
from flowpool._plan import compensation_order, render_plan


def work(ctx: Context) -> int:
    return 1


def undo(ctx: Context, value: Any) -> None:
    return None


def is_big(ctx: Context) -> bool:
    return True


def pick(ctx: Context) -> Any:
    return ctx.input


def batch() -> Flow:
    payment = (
        Flow("payment")
        .step("authorize", work, compensate=undo)
        .step("capture", work, compensate=undo)
        .always("audit", work)
    )
    order = (
        Flow("order")
        .step("reserve", work, compensate=undo)
        .step("pay", payment, retries=1)
        .parallel("notify", [Step("mail", work), Step("sms", work, when=is_big)])
        .step("ship", work)
    )
    return (
        Flow("batch")
        .step("load", work, compensate=undo)
        .map("orders", order, items=[1, 2, 3], tolerated_failures=0.01, when=is_big)
        .parallel("extras", [Step("gift", payment, input=pick), Step("plain", work)])
        .step("report", work)
        .always("release", work)
    )


def test_the_compensation_order_undoes_each_child_as_a_unit_at_its_place() -> None:
    assert compensation_order(batch()) == [
        "gift(capture, authorize)",
        "orders[each item, latest first](pay(capture, authorize), reserve)",
        "load",
    ]
    # A child with nothing to undo takes no place; a plain map keeps its form.
    flow = Flow("f").step("sub", Flow("plain").step("x", work)).map("m", work, items=[1], compensate=undo)
    assert compensation_order(flow) == ["m[each item, latest first]"]


def test_text_nests_each_subflow_under_its_step_with_its_name() -> None:
    lines = render_plan(batch()).splitlines()
    expected = [
        "2. map orders: subflow 'order'  [only when is_big] over its items",
        "     policy: tolerance: fails when more than 1% of the items fail",
        "     each item runs flow 'order': 4 stage(s)",
        "     2.1. step reserve (work)  [compensate undo]",
        "     2.2. step pay: subflow 'payment'  [retries 1]",
        "          runs flow 'payment': 2 stage(s)",
        "          2.2.1. step authorize (work)  [compensate undo]",
        "          2.2.2. step capture (work)  [compensate undo]",
        "          if 'payment' fails, it compensates itself in this order: capture, authorize",
        "          then, whatever the outcome of 'payment':",
        "          2.2.3. always audit (work)",
        "     2.3. parallel group notify (2 members)",
    ]
    start = lines.index(expected[0])
    assert lines[start : start + len(expected)] == expected
    assert "        `- sms (work)  [only when is_big]" in lines
    assert "     if 'order' fails, it compensates itself in this order: pay(capture, authorize), reserve" in lines
    # A member that is a subflow: its stages hang under it, inside the group's tree.
    member = lines.index("   |- gift: subflow 'payment'  [input from pick]")
    assert lines[member + 1 : member + 3] == [
        "   |    runs flow 'payment': 2 stage(s)",
        "   |    3.1.1. step authorize (work)  [compensate undo]",
    ]
    assert lines[-3:] == [
        "if the flow fails, completed steps are compensated in this order: "
        "gift(capture, authorize), orders[each item, latest first](pay(capture, authorize), reserve), load",
        "then, whatever the outcome (completed, failed, timed out or interrupted):",
        "5. always release (work)",
    ]


def _blocks(text: str, opening: str, closing: str) -> dict[str, list[str]]:
    """Each subgraph's id → the ids of the nodes and subgraphs directly inside it."""
    inside: dict[str, list[str]] = {"": []}
    stack = [""]
    for line in text.splitlines()[1:]:
        found = re.match(opening, line.strip())
        if found:
            inside[stack[-1]].append(found.group(1))
            inside[found.group(1)] = []
            stack.append(found.group(1))
        elif line.strip() == closing and len(stack) > 1:
            stack.pop()
        elif (node := re.match(r"(n\d+|c\d+)[\[( ]", line.strip())) and "->" not in line:
            inside[stack[-1]].append(node.group(1))
    assert stack == [""]
    return inside


def test_mermaid_draws_each_subflow_as_a_subgraph_entered_by_its_first_stage() -> None:
    text = render_plan(batch(), "mermaid")
    inside = _blocks(text, r'subgraph (\w+)\["', "end")
    titles = dict(re.findall(r'subgraph (\w+)\["([^"]*)"\]', text))
    named = {title.split("<br/>")[0]: sid for sid, title in titles.items()}
    orders, pay, gift = (
        named["orders: each item runs flow 'order'"],
        named["pay: subflow 'payment'"],
        named["gift: subflow 'payment'"],
    )
    assert pay in inside[orders]  # nested two levels deep
    assert len(inside[pay]) == 3  # authorize, capture, and its always-stage audit
    assert gift in inside[named["extras (default: fails only when no member completes)"]]
    assert f"  style {orders} stroke-dasharray: 5 5" in text  # the map has a condition
    by_name: dict[str, str] = {}
    for node, name in re.findall(r'(n\d+)[\[(]+"([^<"]*)', text):
        by_name.setdefault(name, node)  # the first box of that name: payment's steps under pay, not gift
    load, reserve, authorize, audit = by_name["load"], by_name["reserve"], by_name["authorize"], by_name["audit"]
    assert f"  {load} --> {reserve}" in text  # into the child by its first stage
    assert f"  {reserve} --> {authorize}" in text  # into the grandchild
    assert f"  {audit} --> {by_name['mail']}" in text  # out of the grandchild by its always-stage
    assert len([line for line in text.splitlines() if "on failure" in line]) == 1  # only the top flow's


def test_dot_draws_each_subflow_as_a_cluster() -> None:
    text = render_plan(batch(), "dot")
    inside = _blocks(text, r"subgraph cluster_(\w+) \{", "}")
    titles = dict(re.findall(r'subgraph cluster_(\w+) \{\n\s+label="([^"]*)";', text))
    named = {title.split("\\n")[0]: sid for sid, title in titles.items()}
    orders, pay = named["orders: each item runs flow 'order'"], named["pay: subflow 'payment'"]
    assert pay in inside[orders] and len(inside[pay]) == 3
    assert "    style=dashed;\n    n" in text  # the conditional map's cluster
    assert text.count("subgraph cluster_") == 5  # orders, pay, notify, extras, gift
    assert text.count("{") == text.count("}")
