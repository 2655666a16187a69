"""The bundled example flows behind ``flowpool demo``.

Four small flows, each showing one behaviour, run on threads in about a
second, then explained in plain words: a parallel group that passes with a
failed member, a flaky step saved by a retry, a hung step cut off by its
timeout, and a failing flow whose completed steps are undone in reverse order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowpool import Context, Flow, FlowResult, Step, StepStatus

from ._timeline import render_timeline

__all__ = ["SCENARIOS", "Scenario", "run_demo"]

# A hung step polls ctx.cancelled this often; the bound keeps a stuck demo from
# leaving a thread behind for long even if cancellation never came.
_POLL = 0.02
_HANG_LIMIT = 3.0


def _work(seconds: float) -> None:
    """Stand in for real work, so that each bar on the timeline has a visible length."""
    threading.Event().wait(seconds)


# ── scenario 1: a parallel group with partial success ────────────────────────────


def load_user(ctx: Context) -> dict[str, Any]:
    """Pretend to load a user record."""
    _work(0.03)
    return {"id": 7, "name": "Ada"}


def fetch_profile(ctx: Context) -> dict[str, Any]:
    """Pretend to call the profile service."""
    _work(0.06)
    return {"bio": "mathematician"}


def fetch_posts(ctx: Context) -> list[str]:
    """A call to a service that is down."""
    _work(0.04)
    raise ConnectionError("posts service answered 503 Service Unavailable")


def fetch_friends(ctx: Context) -> list[str]:
    """Pretend to call the social graph."""
    _work(0.08)
    return ["Charles", "Mary"]


def process_all(ctx: Context) -> str:
    """Combine whatever the fetches returned."""
    _work(0.02)
    fetched = [name for name in ("fetch-profile", "fetch-posts", "fetch-friends") if name in ctx.results]
    return f"profile page built from {', '.join(fetched)}"


def partial_flow() -> Flow:
    """Load, fetch three things in parallel (one fails), then process."""
    return (
        Flow("fetch-data-demo")
        .step("load-user", load_user)
        .parallel(
            "fetch-data",
            [
                Step("fetch-profile", fetch_profile),
                Step("fetch-posts", fetch_posts),
                Step("fetch-friends", fetch_friends),
            ],
        )
        .step("process-all", process_all)
    )


# ── scenario 2: a flaky step that succeeds on retry ──────────────────────────────


def call_flaky_api(ctx: Context) -> str:
    """Fails on its first two attempts, as a flaky network call might."""
    _work(0.02)
    if ctx.attempt < 3:
        raise ConnectionResetError(f"connection reset by peer (attempt {ctx.attempt})")
    return "200 OK"


def retry_flow() -> Flow:
    """One flaky step allowed three retries."""
    return Flow("retry-demo").step("call-flaky-api", call_flaky_api, retries=3)


# ── scenario 3: a hung step that times out ───────────────────────────────────────


def prepare_report(ctx: Context) -> str:
    """A quick first step."""
    _work(0.03)
    return "data ready"


def render_report(ctx: Context) -> str:
    """Hangs, as a call to a stuck server would, but honours ``ctx.cancelled``."""
    never = threading.Event()
    waited = 0.0
    while waited < _HANG_LIMIT:
        ctx.raise_if_cancelled()
        never.wait(_POLL)
        waited += _POLL
    return "too late"


def timeout_flow() -> Flow:
    """A step that hangs, cut off by a 0.3 s timeout."""
    return Flow("timeout-demo").step("prepare-report", prepare_report).step("render-report", render_report, timeout=0.3)


# ── scenario 4: a failing flow, compensated in reverse order ─────────────────────


class _Ledger:
    """Records the undo actions in the order they ran, for the explanation."""

    def __init__(self) -> None:
        self.undone: list[str] = []
        self._lock = threading.Lock()

    def undo(self, what: str) -> Callable[[Context, Any], None]:
        def compensate(ctx: Context, value: Any) -> None:
            _work(0.02)
            with self._lock:
                self.undone.append(what)

        compensate.__qualname__ = f"cancel_{what.replace(' ', '_')}"
        return compensate


def _booked(what: str) -> Callable[[Context], str]:
    def book(ctx: Context) -> str:
        _work(0.03)
        return f"{what} booked"

    book.__qualname__ = f"book_{what.replace(' ', '_')}"
    return book


def charge_card(ctx: Context) -> str:
    """The payment is declined, which fails the whole trip."""
    _work(0.02)
    raise PermissionError("card declined by the bank")


def saga_flow(ledger: _Ledger) -> Flow:
    """Book a flight, then a hotel and a car in parallel, then charge the card (which fails)."""
    return (
        Flow("trip-demo")
        .step("reserve-flight", _booked("flight"), compensate=ledger.undo("flight"))
        .parallel(
            "book-extras",
            [
                Step("book-hotel", _booked("hotel"), compensate=ledger.undo("hotel")),
                Step("rent-car", _booked("car"), compensate=ledger.undo("car")),
            ],
        )
        .step("charge-card", charge_card)
    )


# ── scenario 5: a batch with a few bad rows, tolerated ───────────────────────────

#: The demo batch: rows of an import, two of them malformed.
ROWS: tuple[str, ...] = (
    *(f"row-{n:02d},{n * 10}" for n in range(20) if n not in (7, 13)),
    "row-07,seven",
    "row-13",
)


def import_row(ctx: Context) -> int:
    """Parse one ``name,amount`` row (a malformed one raises)."""
    _work(0.01)
    _, amount = ctx.item.split(",")
    return int(amount)


def total_rows(ctx: Context) -> int:
    return sum(ctx.results["import-rows"].values())


def batch_flow() -> Flow:
    """A map over the rows that tolerates up to 3 bad ones, then a total of the good ones."""
    return (
        Flow("batch-demo")
        .map(
            "import-rows",
            import_row,
            items=lambda ctx: ROWS,
            key=lambda row: row.split(",")[0],
            tolerated_failures=3,
            max_concurrency=4,
        )
        .step("total", total_rows)
    )


# ── scenario 6: a batch of orders, a saga per order ──────────────────────────────

#: The demo's orders; the bank declines the card of "order-3".
ORDERS: tuple[str, ...] = ("order-1", "order-2", "order-3", "order-4", "order-5")


def _order_step(what: str) -> Callable[[Context], str]:
    def act(ctx: Context) -> str:
        _work(0.02)
        return f"{ctx.input} {what}"

    act.__qualname__ = what.replace(" ", "_")
    return act


def charge_order(ctx: Context) -> str:
    """Charge the order's card; the bank declines one of them."""
    _work(0.02)
    if ctx.input == "order-3":
        raise PermissionError(f"card of {ctx.input} declined by the bank")
    return f"{ctx.input} charged"


def order_flow(ledger: _Ledger) -> Flow:
    """One order as a saga: reserve the stock, charge the card, ship; each undone on failure."""
    return (
        Flow("order")
        .step("reserve-stock", _order_step("reserved"), compensate=ledger.undo("stock"))
        .step("charge", charge_order, compensate=ledger.undo("charge"))
        .step("ship", _order_step("shipped"), compensate=ledger.undo("shipment"))
    )


def orders_flow(ledger: _Ledger) -> Flow:
    """A map over the orders where each item is the order saga, tolerating one failed order."""
    return (
        Flow("orders-demo")
        .map("orders", order_flow(ledger), items=lambda ctx: ORDERS, key=str, tolerated_failures=1)
        .step("count-shipped", lambda ctx: len(ctx.results["orders"]))
    )


# ── running and explaining ───────────────────────────────────────────────────────


@dataclass(frozen=True)
class Scenario:
    """One demo: a title, what it shows, and how to run and explain it."""

    title: str
    intro: str
    run: Callable[[Callable[[Any], None]], tuple[FlowResult, list[str], bool]]


def _error(error: BaseException | None) -> str:
    if error is None:
        return ""
    return f"{type(error).__name__}: {error}"


def _steps(result: FlowResult) -> list[str]:
    lines = []
    for step in result.steps.values():
        where = f" (in group {step.group})" if step.group else ""
        attempts = f"{step.attempts} attempt{'s' if step.attempts != 1 else ''}"
        extra = f" - {_error(step.error)}" if step.error is not None else ""
        undo = f", then {step.compensation.status}" if step.compensation is not None else ""
        lines.append(f"    {step.name}{where}: {step.status.value} after {attempts}{undo}{extra}")
    return lines


def _run_partial(on_event: Callable[[Any], None]) -> tuple[FlowResult, list[str], bool]:
    result = partial_flow().run({"user_id": 7}, on_event=on_event)
    group = result.groups["fetch-data"]
    posts = result.steps["fetch-posts"]
    words = [
        f"fetch-posts failed ({_error(posts.error)}), but fetch-profile and fetch-friends completed.",
        f"The group 'fetch-data' ended {group.status.value.upper()}: by default a group fails only when",
        "none of its members completes, so the flow went on to process-all, which saw the values",
        f"of the members that completed ({result.values.get('process-all')!r}).",
        f"The flow {result.status.value}.",
    ]
    ok = result.ok and group.status.value == "partial"
    return result, words, ok


def _run_retry(on_event: Callable[[Any], None]) -> tuple[FlowResult, list[str], bool]:
    result = retry_flow().run(on_event=on_event)
    step = result.steps["call-flaky-api"]
    words = [
        f"call-flaky-api failed twice with a connection reset and completed on attempt {step.attempts}.",
        "Between attempts flowpool waited a short, growing backoff without holding a worker;",
        "the timeline shows each attempt as its own bar with the waits between them.",
    ]
    return result, words, result.ok and step.attempts == 3


def _run_timeout(on_event: Callable[[Any], None]) -> tuple[FlowResult, list[str], bool]:
    result = timeout_flow().run(on_event=on_event)
    step = result.steps["render-report"]
    words = [
        f"render-report hung; after its timeout of 0.3 s it was reported {step.status.value.upper()}",
        f"({_error(step.error)}).",
        "Its thread was told to stop through ctx.cancelled and returned at once. A step outside",
        f"a group that does not complete fails the flow, so the flow {result.status.value}.",
    ]
    return result, words, step.status.value == "timed_out" and not result.ok


def _run_saga(on_event: Callable[[Any], None]) -> tuple[FlowResult, list[str], bool]:
    ledger = _Ledger()
    result = saga_flow(ledger).run(on_event=on_event)
    order = ", ".join(result.compensated) or "nothing"
    words = [
        f"charge-card failed ({_error(result.steps['charge-card'].error)}), so the flow {result.status.value}.",
        "Every step that had completed and has a compensation was then undone, one at a time,",
        f"in the reverse of declaration order: {order}.",
        "The parallel members were undone too, and a failing undo would not stop the others.",
    ]
    expected = ("rent-car", "book-hotel", "reserve-flight")
    return (
        result,
        words,
        not result.ok and result.compensated == expected and ledger.undone == ["car", "hotel", "flight"],
    )


def _run_batch(on_event: Callable[[Any], None]) -> tuple[FlowResult, list[str], bool]:
    result = batch_flow().run(on_event=on_event)
    rows = result.maps["import-rows"]
    bad = ", ".join(f"{item.key} ({_error(item.error)})" for item in rows.failed)
    words = [
        f"The map 'import-rows' took {rows.total} rows lazily, at most 4 at a time; "
        f"{rows.counts[StepStatus.COMPLETED]} completed and {len(rows.failed)} failed: {bad}.",
        f"With tolerated_failures=3 the map ended {rows.status.value.upper()} and the flow went on:",
        f"'total' summed the values of the rows that completed ({result.values.get('total')!r}).",
    ]
    return result, words, result.ok and rows.status.value == "partial" and len(rows.failed) == 2


def _run_orders(on_event: Callable[[Any], None]) -> tuple[FlowResult, list[str], bool]:
    ledger = _Ledger()
    result = orders_flow(ledger).run(on_event=on_event)
    orders = result.maps["orders"]
    declined = orders.failed[0] if orders.failed else None
    child = declined.subflow if declined is not None else None
    undone = ", ".join(child.compensated) if child is not None else "nothing"
    words = [
        f"Each of the {orders.total} orders ran as its own saga (a subflow), all driven by the same loop.",
        f"{declined.key if declined else 'No order'} failed ({_error(declined.error if declined else None)});",
        f"only that order was undone, in reverse order: {undone}. The other orders were shipped,",
        f"and with tolerated_failures=1 the batch went on: {result.values.get('count-shipped')} orders shipped.",
    ]
    ok = result.ok and len(orders.failed) == 1 and ledger.undone == ["stock"]
    return result, words, ok


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "A parallel group with partial success",
        "Load a user, fetch profile, posts and friends at the same time, then build the page.",
        _run_partial,
    ),
    Scenario(
        "A flaky step that succeeds on retry",
        "A network call that fails twice before it answers, with retries=3.",
        _run_retry,
    ),
    Scenario(
        "A hung step that times out",
        "A report step that never answers, with timeout=0.3 (seconds).",
        _run_timeout,
    ),
    Scenario(
        "A failing flow, compensated",
        "Reserve a flight, book a hotel and a car in parallel, then charge the card - which is declined.",
        _run_saga,
    ),
    Scenario(
        "A batch with a few bad rows, tolerated",
        "Import 20 rows with a map that tolerates up to 3 bad ones, then total the good ones.",
        _run_batch,
    ),
    Scenario(
        "A batch of orders, a saga per order",
        "Five orders, each reserved, charged and shipped by a subflow; the bank declines one card.",
        _run_orders,
    ),
)


def run_demo(write: Callable[[str], None], timeline: str | Path) -> bool:
    """Run every scenario, explain it through ``write``, and save one timeline page.

    Returns:
        True when every scenario ended the way its explanation expects.
    """
    events: list[dict[str, Any]] = []
    all_as_expected = True
    for number, scenario in enumerate(SCENARIOS, start=1):
        write(f"{number}. {scenario.title}")
        write(f"   {scenario.intro}")
        result, words, as_expected = scenario.run(lambda event: events.append(event.to_dict()))
        write(f"   What happened ({result.duration or 0.0:.2f} s):")
        for line in _steps(result):
            write(line)
        for line in words:
            write(f"   {line}")
        if not as_expected:
            all_as_expected = False
            write("   (!) this is not what the demo expected: please report it to the flowpool developers.")
        write("")
    Path(timeline).write_text(render_timeline(events, title="flowpool demo"), encoding="utf-8")
    write(f"Timeline of all {len(SCENARIOS)} runs (open it in a browser): {timeline}")
    return all_as_expected
