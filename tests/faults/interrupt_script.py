"""Run a flow in this process's main thread and report on stdout; used by test_interrupts.

Usage: python interrupt_script.py MODE MARKER_DIR [slow-compensation]
Prints "READY" once every blocking step is running, then JSON of the result.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faults import steps
from flowpool import Context, Flow, FlowInterrupted, Step

# Behave like a program started from a terminal, even when the test runner was started
# with SIGINT ignored (a non-interactive shell does that to background jobs).
signal.signal(signal.SIGINT, signal.default_int_handler)
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for stacks if we hang

MODE = sys.argv[1]
MARKERS = Path(sys.argv[2])
SLOW_COMPENSATION = len(sys.argv) > 3


def load(ctx: Context) -> str:
    return "loaded"


def unload(ctx: Context, value: object) -> None:
    (MARKERS / f"compensating-{ctx.step}").write_text("1")
    if SLOW_COMPENSATION:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # only a second Ctrl-C ends this
            time.sleep(0.01)
    (MARKERS / f"compensated-{ctx.step}").write_text("1")


def blocker(ctx: Context) -> None:
    (MARKERS / f"running-{ctx.step}-{os.getpid()}").write_text("1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.01)
    ctx.raise_if_cancelled()


flow = (
    Flow("interrupted")
    .step("load", load, compensate=unload)
    .parallel("work", [Step("a", blocker), Step("b", steps.hang if MODE == "process" else blocker)])
    .step("after", load)
)

try:
    flow.run({}, executor=MODE, max_workers=2)
    print(json.dumps({"outcome": "returned"}))
except FlowInterrupted as interrupted:
    result = interrupted.result
    assert result is not None
    print(
        json.dumps(
            {
                "outcome": "interrupted",
                "status": str(result.status),
                "error": type(result.error).__name__,
                "steps": {name: str(step.status) for name, step in result.steps.items()},
                "compensated": list(result.compensated),
                "not_compensated": list(result.not_compensated),
                "is_keyboard_interrupt": isinstance(interrupted, KeyboardInterrupt),
            }
        ),
        flush=True,
    )
