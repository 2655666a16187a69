"""Kill worker processes at a timeout, then exit at once; used by test_clean_exit.

Usage: python kill_then_exit.py
Prints "DONE" when the run returned; the test reads stderr for resource-tracker warnings.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faults import steps
from flowpool import Flow, Step

flow = (
    Flow("killed")
    .step("first", steps.quick)
    .parallel("hung", [Step("a", steps.hang, timeout=0.5), Step("b", steps.hang, timeout=0.5)])
)
result = flow.run({}, executor="process", max_workers=2)
assert result.steps["a"].status == "timed_out", result.steps["a"]
print("DONE", flush=True)
