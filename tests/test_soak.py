"""A short soak: ``scripts/soak.py --duration 20`` must find no violation and no leak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_short_soak_finds_no_violation_and_no_leak() -> None:
    done = subprocess.run(
        [sys.executable, str(SOAK), "--duration", "20", "--json"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.stdout.strip(), f"no summary (exit {done.returncode}); stderr:\n{done.stderr[-4000:]}"
    summary = json.loads(done.stdout)
    shown = {key: summary[key] for key in ("runs", "violations", "violation_examples", "leaks", "leak_details")}
    assert summary["runs"] > 0, shown
    assert summary["maps"] > 0, shown  # the random flows include maps
    assert summary["subflows"] > 0, shown  # and children (subflows), checked level by level
    assert summary["violations"] == 0, shown
    assert summary["leaks"] == 0, shown
    assert done.returncode == 0, f"exit {done.returncode}: {shown}\n{done.stderr[-4000:]}"
