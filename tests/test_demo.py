"""``flowpool demo``: runs with no arguments, explains, writes a timeline, exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowpool._demo import SCENARIOS, partial_flow, retry_flow, timeout_flow
from flowpool.cli import main

REPO = Path(__file__).parent.parent


@pytest.mark.timeout(60)
def test_demo_explains_every_scenario_and_writes_a_timeline() -> None:
    before = set(threading.enumerate())
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "ended PARTIAL" in out
    assert "completed on attempt 3" in out
    assert "reported TIMED_OUT" in out
    assert "in the reverse of declaration order: rent-car, book-hotel, reserve-flight" in out
    assert "not what the demo expected" not in out
    assert "With tolerated_failures=3 the map ended PARTIAL" in out
    match = re.search(r"Timeline of all \d+ runs \(open it in a browser\): (\S+)", out)
    assert match is not None
    page = Path(match.group(1))
    try:
        html = page.read_text(encoding="utf-8")
        assert html.count("<svg") == len(SCENARIOS)
        assert 'data-status="timed_out"' in html and 'class="bar compensation"' in html
    finally:
        page.unlink()
    # The hung step honours ctx.cancelled: no thread of the demo outlives it for long.
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=5)
        assert not thread.is_alive() or thread.daemon, thread


@pytest.mark.timeout(60)
def test_demo_timeline_option(tmp_path: Path) -> None:
    page = tmp_path / "demo.html"
    result = CliRunner().invoke(main, ["demo", "--timeline", str(page)])
    assert result.exit_code == 0
    assert str(page) in result.stdout
    assert page.read_text(encoding="utf-8").count('class="bar attempt"') > len(SCENARIOS)


@pytest.mark.timeout(60)
def test_demo_in_a_real_process_needs_nothing() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "flowpool", "demo"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)[-1]
    assert Path(path).is_file()
    Path(path).unlink()


@pytest.mark.timeout(30)
def test_demo_flows_end_as_described() -> None:
    partial = partial_flow().run()
    assert partial.ok and partial.groups["fetch-data"].status == "partial"
    assert retry_flow().run().steps["call-flaky-api"].attempts == 3
    timed_out = timeout_flow().run()
    assert timed_out.steps["render-report"].status == "timed_out"


def test_demo_orders_undo_only_the_declined_order() -> None:
    from flowpool._demo import _Ledger, orders_flow

    ledger = _Ledger()
    result = orders_flow(ledger).run()
    assert result.ok and result.values["count-shipped"] == 4
    (declined,) = result.maps["orders"].failed
    assert declined.key == "order-3" and declined.subflow is not None
    assert declined.subflow.compensated == ("reserve-stock",)
    assert ledger.undone == ["stock"]
