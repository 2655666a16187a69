"""Start-up cost (issue 16, W7): ``import flowpool`` and a plain run import only what they use.

Speed itself is measured by ``scripts/bench.py --only W7``; this checks the cause
that made it slow: modules pulled in eagerly for features the program does not use.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

#: Modules a plain thread run never needs, and the feature that needs each.
NOT_ON_A_PLAIN_RUN = {
    "dataclasses": "records are built by flowpool._record",
    "inspect": "imported by dataclasses",
    "logging": "only when something is logged (a failing listener, a failing close, LogContextFilter)",
    "traceback": "only to describe an error or where an attempt hung",
    "uuid": "run ids come from os.urandom (uuid imports platform)",
    "platform": "imported by uuid",
    "sqlite3": "the journal",
    "hashlib": "the journal's fingerprints",
    "json": "the journal and to_dict users",
    "pickle": "process mode and the journal",
    "concurrent.futures": "an Executor given as executor=",
    "tenacity": "a step that fails and has retries",
    "loky": "process mode",
    "cloudpickle": "process mode",
    "mmap": "process mode",
    "tempfile": "process mode",
    "socket": "process mode's log channel",
    "distributed": "Dask",
    "click": "the command",
    "opentelemetry": "tracing, when the program imported it",
    "datetime": "to_dict() times",
}

_PROGRAM = """
import json, sys
before = set(sys.modules)
import flowpool
after_import = set(sys.modules) - before
result = flowpool.Flow("plain").step("a", lambda ctx: 1).run()
assert result.ok and result.values["a"] == 1, result
after_run = set(sys.modules) - before
print(json.dumps({"import": sorted(after_import), "run": sorted(after_run)}))
"""


def _new_modules() -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    loaded: dict[str, list[str]] = json.loads(done.stdout)
    return loaded


def _unwanted(modules: list[str]) -> dict[str, str]:
    top = {name.split(".")[0] for name in modules} | set(modules)
    return {name: why for name, why in NOT_ON_A_PLAIN_RUN.items() if name in top}


def test_import_flowpool_and_a_plain_thread_run_import_nothing_they_do_not_use() -> None:
    loaded = _new_modules()
    assert "flowpool._runner" in loaded["run"]  # the run really ran in the child
    assert _unwanted(loaded["import"]) == {}
    assert _unwanted(loaded["run"]) == {}


def test_the_lazy_public_names_still_resolve() -> None:
    code = (
        "import logging, flowpool, flowpool._logcontext as lc\n"
        "assert issubclass(flowpool.LogContextFilter, logging.Filter)\n"
        "assert lc.LogContextFilter is flowpool.LogContextFilter\n"
        "assert flowpool.Journal.__name__ == 'Journal'\n"
        "from flowpool import *\n"
        "assert LogContextFilter is flowpool.LogContextFilter\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
