"""A process-mode run whose step starts a subprocess and waits; the test SIGKILLs this process.

Usage: python killed_parent.py MARKER_DIR
The step writes ``MARKER_DIR/pids`` ("worker child") once its subprocess runs; this
process writes ``MARKER_DIR/paths`` (its spool file, lane flag file and log folder) first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowpool import Flow
from flowpool._executors import _lanestore, _logs, _process

MARKERS = Path(sys.argv[1])


def big(ctx):  # type: ignore[no-untyped-def]
    return b"x" * 100_000  # spooled when the next stage is handed it


def start_child_and_wait(ctx):  # type: ignore[no-untyped-def]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (MARKERS / "pids.tmp").write_text(f"{os.getpid()} {child.pid}")
    os.replace(MARKERS / "pids.tmp", MARKERS / "pids")
    time.sleep(120)  # until the parent is killed


spools: list[str] = []
original = _lanestore.Spool.append


def noting(self, data):  # type: ignore[no-untyped-def]
    spools.append(self.path)
    return original(self, data)


_lanestore.Spool.append = noting  # type: ignore[method-assign]
original_payload = _process.Lane.payload


def noting_paths(self, call):  # type: ignore[no-untyped-def]
    payload = original_payload(self, call)
    if call.step == "wait":
        paths = {"spool": spools[0], "flag": self.flag_path, "log": _logs.receiver().address}
        (MARKERS / "paths").write_text(json.dumps(paths))
    return payload


_process.Lane.payload = noting_paths  # type: ignore[method-assign]
Flow("killed").step("big", big).step("wait", start_child_and_wait).run(executor="process", max_workers=1)
