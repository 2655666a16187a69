"""Crash test for durable runs: SIGKILL journaled runs at random moments, then resume.

Each round starts ``tests/faults/journal_flows.py`` (a saga whose steps and
compensations log every execution), kills it at a random moment (in a stage,
in a group, or during compensation), resumes the run from its journal, and
checks: the run ends completed or failed and fully compensated; no step
recorded completed before the kill executes again; no compensation runs twice
or goes missing.

    python scripts/crashtest.py --kills 50 [--seed N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="how many runs to kill and resume")
    parser.add_argument("--seed", type=int, default=None, help="seed for the kill moments")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)

    from test_journal import check_one_crash

    started = time.monotonic()
    failures: list[str] = []
    scenarios = {"saga-slow": 0, "saga-fail-slow": 0}
    with tempfile.TemporaryDirectory(prefix="flowpool-crashtest-") as tmp:
        for number in range(args.kills):
            run_dir = Path(tmp) / f"run{number}"
            run_dir.mkdir()
            scenario = rng.choice(sorted(scenarios))
            scenarios[scenario] += 1
            try:
                check_one_crash(run_dir, rng, scenario)
            except AssertionError as error:
                failures.append(f"kill {number} ({scenario}): {error}")
            except Exception as error:
                failures.append(f"kill {number} ({scenario}): {type(error).__name__}: {error}")
    elapsed = time.monotonic() - started
    print(f"crashtest: {args.kills} kills in {elapsed:.1f} s (seed {seed}); scenarios {scenarios}")
    print(f"  violations: {len(failures)}")
    for failure in failures:
        print(f"  - {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
