"""Benchmark flowpool against raw executors and peers, side by side, in one process.

Every workload alternates its runners repetition by repetition (A B C A B C …)
so that drift of the machine (frequency scaling, other load) hits all of them
alike, then reports the median and the min..max of each, and checks flowpool
against its targets.

    python scripts/bench.py                 # W1-W7, W9-W11 and the installed peers
    python scripts/bench.py --quick         # few repetitions, small sizes (< 60 s)
    python scripts/bench.py --full          # also W4 up to 100,000 steps (slow)
    python scripts/bench.py --only W1,W4    # a selection
    python scripts/bench.py --json          # machine-readable results on stdout

Workloads: W1 thread-mode overhead · W2 sleep fan-out · W3 CPU on 2 processes ·
W4 one group of 1,000 vs 20,000 steps (100,000 with --full) · W5 timeout latency · W6 process-mode overhead ·
W7 start-up · W9 a map of many items · W10 journaled against plain · W11 process
mode after large earlier values. Peers (joblib, Dask, Prefect 3) run W1-W3 when installed,
and joblib and Dask's ``client.map`` run W9.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/ is not a package

import _bench_peers as peers_mod
from _bench_peers import burn, burn_step, hang_on_event, noop, noop_step, sleep_long, sleep_step

import flowpool
from flowpool import Flow, Step

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W9", "W10", "W11")
DEFAULT_WORKLOADS = WORKLOADS
#: W4's per-step cost goals: ``size`` steps in one group ≤ ``factor`` times the cost at 1,000 (issue 12).
W4_GOALS = {20_000: 1.1, 100_000: 1.2}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ── records ─────────────────────────────────────────────────────────────────────


@dataclass
class Row:
    """One runner's measurements of one metric."""

    workload: str
    runner: str
    metric: str
    unit: str
    samples: list[float] = field(default_factory=list)
    note: str = ""
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def low(self) -> float | None:
        return min(self.samples) if self.samples else None

    @property
    def high(self) -> float | None:
        return max(self.samples) if self.samples else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(median=self.median, min=self.low, max=self.high, n=len(self.samples))
        return out


@dataclass
class Check:
    """A target and whether flowpool met it."""

    workload: str
    target: str
    value: float | None
    limit: float
    op: str  # "<=" or ">="
    unit: str

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["met"] = self.met
        return out


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # workload, runner, why

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def find(self, workload: str, runner: str, metric: str | None = None) -> Row | None:
        for row in self.rows:
            if row.workload == workload and row.runner == runner and (metric is None or row.metric == metric):
                return row
        return None


@dataclass
class Side:
    """One runner of a workload: ``fn`` runs one timed repetition and returns its metrics."""

    runner: str
    fn: Callable[[], dict[str, float]]
    max_reps: int | None = None
    warmups: int = 1


@dataclass
class Config:
    quick: bool
    reps: dict[str, int]
    w1_steps: int
    w2_steps: int
    w2_sleep: float
    w3_steps: int
    w3_seconds: float
    w4_sizes: tuple[int, ...]
    w6_steps: int
    peers: bool


def make_config(quick: bool, reps: int | None, peers: bool, full: bool = False) -> Config:
    if quick:
        config = Config(
            quick=True,
            reps={"W1": 5, "W2": 3, "W3": 3, "W4": 2, "W5": 3, "W6": 3, "W7": 3, "W9": 3, "W11": 3},
            w1_steps=2000,
            w2_steps=50,
            w2_sleep=0.1,
            w3_steps=8,
            w3_seconds=0.08,
            w4_sizes=(1000, 5000, 20000),
            w6_steps=300,
            peers=peers,
        )
    else:
        config = Config(
            quick=False,
            reps={"W1": 21, "W2": 9, "W3": 7, "W4": 9, "W5": 9, "W6": 9, "W7": 9, "W9": 5, "W11": 9},
            w1_steps=2000,
            w2_steps=50,
            w2_sleep=0.1,
            w3_steps=8,
            w3_seconds=0.25,
            w4_sizes=(1000, 20000, 100000) if full else (1000, 20000),
            w6_steps=1000,
            peers=peers,
        )
    config.reps.setdefault("W10", 5 if quick else 15)
    if reps is not None:
        config.reps = dict.fromkeys(config.reps, reps)
    return config


# ── the alternation ─────────────────────────────────────────────────────────────


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes (a collection first, so garbage of earlier runs is not billed)."""
    gc.collect()
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def alternate(workload: str, sides: Sequence[Side], reps: int) -> dict[str, dict[str, list[float]]]:
    """Run every side ``reps`` times, interleaved; return runner → metric → samples.

    A side that raises is dropped from the remaining repetitions and reported with its error.
    """
    samples: dict[str, dict[str, list[float]]] = {side.runner: {} for side in sides}
    errors: dict[str, str] = {}
    for side in sides:
        started = time.perf_counter()
        for _ in range(side.warmups):
            try:
                side.fn()
            except Exception as error:
                errors[side.runner] = f"{type(error).__name__}: {error}"
                log(f"  {workload} {side.runner}: warm-up failed: {errors[side.runner]}")
                break
        log(f"  {workload} {side.runner}: warmed up in {time.perf_counter() - started:.2f} s")
    for rep in range(reps):
        for side in sides:
            if side.runner in errors or (side.max_reps is not None and rep >= side.max_reps):
                continue
            try:
                metrics = side.fn()
            except Exception as error:
                errors[side.runner] = f"{type(error).__name__}: {error}"
                log(f"  {workload} {side.runner}: failed: {errors[side.runner]}")
                continue
            for metric, value in metrics.items():
                samples[side.runner].setdefault(metric, []).append(value)
        log(f"  {workload}: repetition {rep + 1}/{reps} done")
    for runner, message in errors.items():
        _ERRORS[(workload, runner)] = message
    return samples


_ERRORS: dict[tuple[str, str], str] = {}


def rows_from(
    report: Report,
    workload: str,
    samples: dict[str, dict[str, list[float]]],
    key: str,
    metric: str,
    unit: str,
    notes: dict[str, str] | None = None,
) -> None:
    """One row per runner for the samples stored under ``key``, labelled ``metric``."""
    for runner, metrics in samples.items():
        row = Row(workload, runner, metric, unit, list(metrics.get(key, [])), (notes or {}).get(runner, ""))
        row.error = _ERRORS.get((workload, runner))
        if row.samples or (row.error and report.find(workload, runner) is None):
            report.add(row)


def paired(a: list[float], b: list[float], op: Callable[[float, float], float]) -> list[float]:
    """Per-repetition combination of two runners' samples (they ran back to back)."""
    return [op(x, y) for x, y in zip(a, b, strict=False)]


def ratio(x: float, y: float) -> float:
    return x / y if y else float("inf")


def peer_sides(report: Report, workload: str, config: Config, make: Callable[[Any], Side]) -> list[Side]:
    """Sides for the installed peers; the others are reported as not installed."""
    if not config.peers:
        return []
    sides = []
    for peer in PEERS:
        if not peer.available():
            report.skipped.append((workload, peer.name, "not installed"))
            continue
        why = peer.skip_quick(workload) if config.quick else None
        if why is not None:
            report.skipped.append((workload, peer.name, f"skipped with --quick ({why})"))
            continue
        side = make(peer)
        side.max_reps = peer.max_reps
        if config.quick:
            side.max_reps = min(side.max_reps or config.reps[workload], 2)
        sides.append(side)
    return sides


PEERS: list[peers_mod.Peer] = []


# ── W1: thread-mode overhead ────────────────────────────────────────────────────


def w1(report: Report, config: Config) -> None:
    n = config.w1_steps
    flow = Flow("w1").parallel("g", [Step(f"s{i}", noop_step) for i in range(n)])
    raw = concurrent.futures.ThreadPoolExecutor(32)

    def run_flowpool() -> dict[str, float]:
        holder: list[Any] = []
        seconds = timed(lambda: holder.append(flow.run(max_workers=32)))
        holder[0].raise_for_status()
        return {"per_step": seconds / n * 1e6}

    def run_raw() -> dict[str, float]:
        seconds = timed(lambda: concurrent.futures.wait([raw.submit(noop) for _ in range(n)]))
        return {"per_step": seconds / n * 1e6}

    def run_raw_fresh() -> dict[str, float]:
        def body() -> None:
            with concurrent.futures.ThreadPoolExecutor(32) as fresh:
                concurrent.futures.wait([fresh.submit(noop) for _ in range(n)])

        return {"per_step": timed(body) / n * 1e6}

    def make_peer(peer: peers_mod.Peer) -> Side:
        count = min(peer.w1_tasks or n, 100 if config.quick else n)
        return Side(peer.label("W1"), lambda: {"per_step": timed(lambda: peer.w1(count)) / count * 1e6})

    sides = [
        Side("flowpool thread", run_flowpool),
        Side("ThreadPoolExecutor(32)", run_raw),
        Side("ThreadPoolExecutor(32) new per run", run_raw_fresh),
        *peer_sides(report, "W1", config, make_peer),
    ]
    try:
        samples = alternate("W1", sides, config.reps["W1"])
    finally:
        raw.shutdown(wait=True)
    notes = {"ThreadPoolExecutor(32) new per run": "info: pool start-up billed, like flowpool's per-run pool"}
    for peer in PEERS:
        count = min(peer.w1_tasks or n, 100 if config.quick else n)
        if count != n:
            notes[peer.label("W1")] = f"{count} tasks a repetition"
    rows_from(report, "W1", samples, "per_step", f"µs/step ({n} no-ops)", "µs", notes)
    fp = samples["flowpool thread"].get("per_step", [])
    base = samples["ThreadPoolExecutor(32)"].get("per_step", [])
    ratios = paired(fp, base, ratio)
    report.add(Row("W1", "flowpool / ThreadPoolExecutor", "per-step ratio (paired)", "x", ratios))
    report.checks.append(
        Check("W1", "per step ≤ 3x raw thread pool", statistics.median(ratios) if ratios else None, 3.0, "<=", "x")
    )


# ── W2: fan-out of sleeps ───────────────────────────────────────────────────────


def w2(report: Report, config: Config) -> None:
    n, seconds = config.w2_steps, config.w2_sleep
    flow = Flow("w2").parallel("g", [Step(f"s{i}", sleep_step) for i in range(n)])
    raw = concurrent.futures.ThreadPoolExecutor(n)

    def run_flowpool() -> dict[str, float]:
        holder: list[Any] = []
        wall = timed(lambda: holder.append(flow.run(seconds, max_workers=n)))
        holder[0].raise_for_status()
        return {"ratio": wall / seconds}

    def run_raw() -> dict[str, float]:
        wall = timed(lambda: concurrent.futures.wait([raw.submit(time.sleep, seconds) for _ in range(n)]))
        return {"ratio": wall / seconds}

    def make_peer(peer: peers_mod.Peer) -> Side:
        return Side(peer.label("W2"), lambda: {"ratio": timed(lambda: peer.w2(n, seconds)) / seconds})

    sides = [
        Side("flowpool thread", run_flowpool),
        Side(f"ThreadPoolExecutor({n})", run_raw),
        *peer_sides(report, "W2", config, make_peer),
    ]
    try:
        samples = alternate("W2", sides, config.reps["W2"])
    finally:
        raw.shutdown(wait=True)
    rows_from(report, "W2", samples, "ratio", f"wall / {seconds * 1000:g} ms ({n} sleeps, {n} workers)", "x")
    fp = samples["flowpool thread"].get("ratio", [])
    report.checks.append(Check("W2", "wall ≤ 1.05 x one sleep", statistics.median(fp) if fp else None, 1.05, "<=", "x"))


# ── W3: CPU-bound work on 2 processes ───────────────────────────────────────────


def calibrate(seconds: float) -> int:
    """Iterations of ``burn`` that take about ``seconds`` here."""
    n = 20000
    while True:
        took = timed(lambda n=n: burn(n))
        if took > 0.05:
            break
        n *= 2
    return max(1, int(n * seconds / took))


def sequential(steps: int, work: int) -> float:
    return timed(lambda: [burn(work) for _ in range(steps)])


def w3(report: Report, config: Config) -> None:
    import loky

    steps = config.w3_steps
    work = calibrate(config.w3_seconds)
    flow = Flow("w3").parallel("g", [Step(f"c{i}", burn_step) for i in range(steps)])
    raw_loky = loky.get_reusable_executor(max_workers=2)
    stdlib = concurrent.futures.ProcessPoolExecutor(2)
    sample_units = min(2, steps)
    seq_runner = "sequential, this process"

    def run_sequential() -> dict[str, float]:
        # A few units in this process each repetition, scaled to all steps: the baseline drifts with the rest.
        return {"seconds": sequential(sample_units, work) * steps / sample_units}

    def run_flowpool() -> dict[str, float]:
        holder: list[Any] = []
        wall = timed(lambda: holder.append(flow.run(work, executor="process", max_workers=2)))
        holder[0].raise_for_status()
        return {"wall": wall}

    def run_pool(pool: concurrent.futures.Executor) -> dict[str, float]:
        return {"wall": timed(lambda: concurrent.futures.wait([pool.submit(burn, work) for _ in range(steps)]))}

    def make_peer(peer: peers_mod.Peer) -> Side:
        return Side(peer.label("W3"), lambda: {"wall": timed(lambda: peer.w3(steps, work))})

    sides = [
        Side(seq_runner, run_sequential),
        Side("flowpool process", run_flowpool),
        Side("loky reusable(2)", lambda: run_pool(raw_loky)),
        Side("ProcessPoolExecutor(2)", lambda: run_pool(stdlib)),
        *peer_sides(report, "W3", config, make_peer),
    ]
    try:
        samples = alternate("W3", sides, config.reps["W3"])
    finally:
        stdlib.shutdown(wait=True)
    seq = samples.pop(seq_runner).get("seconds", [])
    report.add(
        Row(
            "W3",
            seq_runner,
            f"s for {steps} steps ({sample_units} timed each repetition, scaled)",
            "s",
            seq,
            note=f"{work} loop iterations a step",
        )
    )
    for metrics in samples.values():
        # Each repetition's efficiency uses the sequential time measured in the same repetition.
        metrics["efficiency"] = paired(seq, metrics.get("wall", []), lambda s, w: s / 2 / w)
    rows_from(report, "W3", samples, "efficiency", f"efficiency = seq / 2 / wall ({steps}x{config.w3_seconds:g} s)", "")
    fp = samples["flowpool process"]["efficiency"]
    loky_eff = samples["loky reusable(2)"]["efficiency"]
    report.add(Row("W3", "flowpool / loky reusable", "efficiency ratio (paired)", "x", paired(fp, loky_eff, ratio)))
    report.checks.append(Check("W3", "efficiency ≥ 0.90", statistics.median(fp) if fp else None, 0.90, ">=", ""))


# ── W4: scale ───────────────────────────────────────────────────────────────────


def w4(report: Report, config: Config) -> None:
    sizes = config.w4_sizes
    log(f"  W4: building flows of {', '.join(map(str, sizes))} steps")
    flows = {size: Flow(f"w4-{size}").parallel("g", [Step(f"s{i}", noop_step) for i in range(size)]) for size in sizes}

    def make(size: int) -> Side:
        def run() -> dict[str, float]:
            holder: list[Any] = []
            seconds = timed(lambda: holder.append(flows[size].run(max_workers=32)))
            holder[0].raise_for_status()
            holder.clear()
            return {"per_step": seconds / size * 1e6}

        return Side(f"flowpool thread, {size:,} steps", run)

    sides = [make(size) for size in sizes]
    samples = alternate("W4", sides, config.reps["W4"])
    rows_from(report, "W4", samples, "per_step", "µs/step (no-ops, 32 threads)", "µs")
    small = sides[0].runner
    for size, side in zip(sizes[1:], sides[1:], strict=True):
        ratios = paired(samples[side.runner].get("per_step", []), samples[small].get("per_step", []), ratio)
        report.add(Row("W4", f"{size:,} vs {sizes[0]:,}", "per-step cost ratio (paired)", "x", ratios))
        goal = W4_GOALS.get(size)
        if goal is not None and sizes[0] == 1000:
            report.checks.append(
                Check(
                    "W4",
                    f"per-step cost at {size:,} ≤ {goal:g}x at {sizes[0]:,}",
                    statistics.median(ratios) if ratios else None,
                    goal,
                    "<=",
                    "x",
                )
            )
    peak_large: float | None = None
    for size in sizes:
        gc.collect()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            result = flows[size].run(max_workers=32)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        result.raise_for_status()
        del result
        per_step = peak / size
        report.add(
            Row("W4", f"flowpool thread, {size:,} steps", "peak traced memory / step", "B", [per_step], "tracemalloc")
        )
        peak_large = per_step
    report.checks.append(Check("W4", "peak memory ≤ 2 KB per step", peak_large, 2048.0, "<=", "B"))


# ── W5: timeout latency ─────────────────────────────────────────────────────────


def w5(report: Report, config: Config) -> None:
    timeout = 0.2
    thread_flow = Flow("w5-thread").step("hang", hang_on_event, timeout=timeout)
    process_flow = Flow("w5-process").step("hang", sleep_long, timeout=timeout)
    warm_flow = Flow("w5-warm").step("warm", noop_step)

    def late(result: Any, wall: float) -> dict[str, float]:
        step = result.steps["hang"]
        if step.status != "timed_out":
            raise RuntimeError(f"the hung step ended {step.status}, not timed_out")
        return {
            "step": (step.finished_at - step.started_at - timeout) * 1000,
            "wall": (wall - timeout) * 1000,
        }

    def run_thread() -> dict[str, float]:
        event = threading.Event()
        holder: list[Any] = []
        try:
            wall = timed(lambda: holder.append(thread_flow.run(event)))
        finally:
            event.set()
        return late(holder[0], wall)

    def run_process() -> dict[str, float]:
        # The timed-out lane was killed: start its replacement untimed, so only the timeout is measured.
        warm_flow.run(executor="process", max_workers=2).raise_for_status()
        holder: list[Any] = []
        wall = timed(lambda: holder.append(process_flow.run(executor="process", max_workers=2)))
        return late(holder[0], wall)

    sides = [Side("flowpool thread", run_thread), Side("flowpool process", run_process)]
    samples = alternate("W5", sides, config.reps["W5"])
    rows_from(report, "W5", samples, "step", "ms late: step finished_at - started_at - 0.2", "ms")
    rows_from(report, "W5", samples, "wall", "ms late: run() wall - 0.2", "ms")
    for runner, limit in (("flowpool thread", 10.0), ("flowpool process", 100.0)):
        values = samples[runner].get("step", [])
        report.checks.append(
            Check(
                "W5",
                f"{runner.split()[-1]}: reported ≤ {limit:g} ms after the deadline",
                statistics.median(values) if values else None,
                limit,
                "<=",
                "ms",
            )
        )


# ── W6: process-mode overhead ───────────────────────────────────────────────────


def w6(report: Report, config: Config) -> None:
    import loky

    n = config.w6_steps
    flow = Flow("w6").parallel("g", [Step(f"s{i}", noop_step) for i in range(n)])
    raw_loky = loky.get_reusable_executor(max_workers=2)
    stdlib = concurrent.futures.ProcessPoolExecutor(2)

    def run_flowpool() -> dict[str, float]:
        holder: list[Any] = []
        seconds = timed(lambda: holder.append(flow.run(executor="process", max_workers=2)))
        holder[0].raise_for_status()
        return {"per_step": seconds / n * 1e6}

    def run_pool(pool: concurrent.futures.Executor) -> dict[str, float]:
        return {"per_step": timed(lambda: concurrent.futures.wait([pool.submit(noop) for _ in range(n)])) / n * 1e6}

    sides = [
        Side("flowpool process", run_flowpool),
        Side("loky reusable(2)", lambda: run_pool(raw_loky)),
        Side("ProcessPoolExecutor(2)", lambda: run_pool(stdlib)),
    ]
    try:
        samples = alternate("W6", sides, config.reps["W6"])
    finally:
        stdlib.shutdown(wait=True)
    rows_from(report, "W6", samples, "per_step", f"µs/step ({n} no-ops, 2 workers)", "µs")
    ratios = paired(
        samples["flowpool process"].get("per_step", []), samples["loky reusable(2)"].get("per_step", []), ratio
    )
    report.add(Row("W6", "flowpool / loky reusable", "per-step ratio (paired)", "x", ratios))
    report.checks.append(
        Check("W6", "per step ≤ 1.5x raw loky", statistics.median(ratios) if ratios else None, 1.5, "<=", "x")
    )


# ── W7: start-up ────────────────────────────────────────────────────────────────

_FIRST_RUN = (
    "import time\n"
    "t0 = time.perf_counter()\n"
    "from flowpool import Flow\n"
    "t1 = time.perf_counter()\n"
    "r = Flow('first').step('a', lambda ctx: 1).run(executor={mode!r})\n"
    "t2 = time.perf_counter()\n"
    "assert r.ok, r.status\n"
    "print(t1 - t0, t2 - t1)\n"
)

#: The same program with a raw thread pool: the whole-process yardstick of a first thread run.
_RAW_FIRST_RUN = (
    "import time\n"
    "t0 = time.perf_counter()\n"
    "from concurrent.futures import ThreadPoolExecutor\n"
    "t1 = time.perf_counter()\n"
    "with ThreadPoolExecutor() as pool:\n"
    "    assert pool.submit(lambda: 1).result() == 1\n"
    "t2 = time.perf_counter()\n"
    "print(t1 - t0, t2 - t1)\n"
)


def _child_env(cache: str) -> dict[str, str]:
    """The children's environment: bytecode written (to ``cache``) and reused, as an installed
    package's is; a PYTHONDONTWRITEBYTECODE here would bill compiling every module each time."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def subprocess_wall(code: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return wall, done.stdout


def w7(report: Report, config: Config) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="flowpool-bench-pyc-") as cache:
        _w7(report, config, _child_env(cache))  # each side's warm-up fills the bytecode cache


def _w7(report: Report, config: Config, env: dict[str, str]) -> None:

    def bare() -> dict[str, float]:
        return {"wall": subprocess_wall("pass", env)[0] * 1000}

    def importing() -> dict[str, float]:
        return {"wall": subprocess_wall("import flowpool", env)[0] * 1000}

    def first_run(program: str) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            wall, out = subprocess_wall(program, env)
            _import, call = (float(x) for x in out.split())
            return {"wall": wall * 1000, "run": call * 1000}

        return run

    raw = "raw ThreadPoolExecutor, 1 task"
    sides = [
        Side("python -c pass", bare),
        Side("python -c 'import flowpool'", importing),
        Side(raw, first_run(_RAW_FIRST_RUN)),
        Side("first 1-step run, thread", first_run(_FIRST_RUN.format(mode="thread"))),
        Side("first 1-step run, process", first_run(_FIRST_RUN.format(mode="process"))),
    ]
    samples = alternate("W7", sides, config.reps["W7"])
    rows_from(report, "W7", samples, "wall", "subprocess wall", "ms")
    rows_from(report, "W7", samples, "run", "run() call inside it", "ms")
    extra = paired(
        samples["python -c 'import flowpool'"].get("wall", []),
        samples["python -c pass"].get("wall", []),
        lambda a, b: a - b,
    )
    report.add(Row("W7", "import flowpool - bare", "import cost (paired)", "ms", extra))
    report.checks.append(
        Check("W7", "import ≤ 60 ms over bare Python", statistics.median(extra) if extra else None, 60.0, "<=", "ms")
    )
    whole = paired(samples["first 1-step run, thread"].get("wall", []), samples[raw].get("wall", []), ratio)
    report.add(Row("W7", "first thread run / raw pool", "whole process (paired)", "x", whole))
    median = statistics.median(whole) if whole else None
    report.checks.append(Check("W7", "first thread run ≤ 1.6x raw ThreadPoolExecutor", median, 1.6, "<=", "x"))


# ── W11: process mode after large earlier values ────────────────────────────────

W11_EARLIER = 200
W11_VALUE_BYTES = 100_000
W11_GROUP = 100


def big_value_step(ctx: Any) -> bytes:
    return bytes(W11_VALUE_BYTES)


def w11(report: Report, config: Config) -> None:
    """100 tiny steps on 2 processes after 200 steps that returned 100 KB each, against
    the same 100 tiny steps after no earlier values. Timed inside the run: from the end
    of the earlier stage to the end of the group (the earlier stage's own cost is not billed)."""
    group = [Step(f"t{i}", noop_step) for i in range(W11_GROUP)]
    with_values = (
        Flow("w11")
        .parallel("earlier", [Step(f"b{i}", big_value_step) for i in range(W11_EARLIER)])
        .parallel("g", group)
    )
    without = Flow("w11-base").step("earlier", noop_step).parallel("g", group)

    def run(flow: Flow) -> dict[str, float]:
        result = flow.run(executor="process", max_workers=2)
        result.raise_for_status()
        earlier = [r.finished_at for name, r in result.steps.items() if name[0] in "be"]
        tiny = [r.finished_at for name, r in result.steps.items() if name.startswith("t")]
        assert all(t is not None for t in (*earlier, *tiny))
        return {"group": (max(tiny) - max(earlier)) * 1000}  # type: ignore[type-var, operator]

    sides = [
        Side(f"flowpool after {W11_EARLIER} x 100 KB", lambda: run(with_values)),
        Side("flowpool after no values", lambda: run(without)),
    ]
    samples = alternate("W11", sides, config.reps["W11"])
    rows_from(report, "W11", samples, "group", f"group of {W11_GROUP} tiny steps, 2 processes", "ms")
    ratios = paired(samples[sides[0].runner].get("group", []), samples[sides[1].runner].get("group", []), ratio)
    report.add(Row("W11", "with values / without", "group ratio (paired)", "x", ratios))
    report.checks.append(
        Check(
            "W11",
            "group after 200 x 100 KB ≤ 1.2x without",
            statistics.median(ratios) if ratios else None,
            1.2,
            "<=",
            "x",
        )
    )


# ── W9: a map of many items ─────────────────────────────────────────────────────

W9_ITEMS = 50_000
W9_SCALE = (10_000, 200_000)
W9_MEMORY = 100_000
W9_WORKERS = 4


def noop_item(ctx: Any) -> None:
    return None


def noop_call(item: int) -> None:
    return None


def w9(report: Report, config: Config) -> None:
    import concurrent.futures

    items = W9_ITEMS // 5 if config.quick else W9_ITEMS

    def run_map(n: int) -> dict[str, float]:
        flow = Flow("w9").map("m", noop_item, items=range(n))
        holder: list[Any] = []
        seconds = timed(lambda: holder.append(flow.run(max_workers=W9_WORKERS)))
        holder[0].raise_for_status()
        holder.clear()
        return {"per_item": seconds / n * 1e6}

    def run_raw() -> dict[str, float]:
        with concurrent.futures.ThreadPoolExecutor(W9_WORKERS) as pool:
            seconds = timed(lambda: list(pool.map(noop_call, range(items))))
        return {"per_item": seconds / items * 1e6}

    def make_peer(peer: peers_mod.Peer) -> Side:
        warmed: list[bool] = []

        def run() -> dict[str, float]:
            if not warmed:  # the warm-up: start the peer's pool on a few items, untimed
                warmed.append(True)
                peer.w9(min(items, 1000), W9_WORKERS)
                return {}
            seconds = timed(lambda: peer.w9(items, W9_WORKERS))
            return {"per_item": seconds / items * 1e6}

        return Side(peer.w9_label(W9_WORKERS), run)

    sides = [Side(f"flowpool map, {items:,} items", lambda: run_map(items)), Side("ThreadPoolExecutor.map", run_raw)]
    peer_runs: list[tuple[str, Side]] = []
    for peer in w9_peers(report, config):
        side = make_peer(peer)
        side.max_reps = peer.w9_max_reps
        if config.quick:
            side.max_reps = min(side.max_reps or config.reps["W9"], 2)
        peer_runs.append((peer.name, side))
    samples = alternate("W9", sides + [side for _, side in peer_runs], config.reps["W9"])
    rows_from(report, "W9", samples, "per_item", f"µs/item (no-ops, {W9_WORKERS} threads)", "µs")
    ratios = paired(samples[sides[0].runner].get("per_item", []), samples[sides[1].runner].get("per_item", []), ratio)
    report.add(Row("W9", "flowpool map / ThreadPoolExecutor.map", "per-item ratio (paired)", "x", ratios))
    for name, side in peer_runs:
        against = paired(samples[sides[0].runner].get("per_item", []), samples[side.runner].get("per_item", []), ratio)
        if against:
            report.add(Row("W9", f"flowpool map / {name}", "per-item ratio (paired)", "x", against))
    report.checks.append(
        Check(
            "W9",
            "per item ≤ 1.5x ThreadPoolExecutor.map",
            statistics.median(ratios) if ratios else None,
            1.5,
            "<=",
            "x",
        )
    )
    small, large = (size // 5 for size in W9_SCALE) if config.quick else W9_SCALE
    scale = [Side(f"flowpool map, {n:,} items", lambda n=n: run_map(n)) for n in (small, large)]
    scaled = alternate("W9", scale, max(1, config.reps["W9"] // 2))
    rows_from(report, "W9", scaled, "per_item", "µs/item (no-ops, scale)", "µs")
    growth = paired(scaled[scale[1].runner].get("per_item", []), scaled[scale[0].runner].get("per_item", []), ratio)
    report.add(Row("W9", f"{large:,} vs {small:,} items", "per-item cost ratio (paired)", "x", growth))
    report.checks.append(
        Check(
            "W9",
            f"per-item cost at {large:,} ≤ 1.2x at {small:,}",
            statistics.median(growth) if growth else None,
            1.2,
            "<=",
            "x",
        )
    )
    n = W9_MEMORY // 5 if config.quick else W9_MEMORY
    flow = Flow("w9-memory").map("m", noop_item, items=range(n))
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = flow.run(max_workers=W9_WORKERS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result.raise_for_status()
    del result
    report.add(Row("W9", f"flowpool map, {n:,} items", "peak traced memory / item", "B", [peak / n], "tracemalloc"))
    report.checks.append(Check("W9", "peak memory ≤ 200 B per item", peak / n, 200.0, "<=", "B"))


def w9_peers(report: Report, config: Config) -> list[peers_mod.Peer]:
    """The installed peers that have a map (joblib, Dask's ``client.map``); W9 runs them
    with --quick too, on its fifth of the items."""
    if not config.peers:
        return []
    chosen = []
    for peer in PEERS:
        if not peer.maps:
            continue
        if not peer.available():
            report.skipped.append(("W9", peer.name, "not installed"))
            continue
        chosen.append(peer)
    return chosen


# ── W10: a journaled run against the same run without a journal ─────────────────

W10_STEPS = 2000


def w10(report: Report, config: Config) -> None:
    """The same 2,000 no-op steps on threads (a group, like W1), with and without a
    journal. The journal is one file across repetitions, as a batch's would be."""
    import tempfile

    flow = Flow("w10").parallel("g", [Step(f"s{i}", noop_step) for i in range(W10_STEPS)])
    folder = tempfile.TemporaryDirectory(prefix="flowpool-bench-")
    journal = flowpool.Journal(os.path.join(folder.name, "runs.db"))

    def run(**options: Any) -> dict[str, float]:
        holder: list[Any] = []
        seconds = timed(lambda: holder.append(flow.run(max_workers=32, **options)))
        holder[0].raise_for_status()
        return {"per_step": seconds / W10_STEPS * 1e6}

    sides = [Side("flowpool thread, journaled", lambda: run(journal=journal)), Side("flowpool thread", run)]
    try:
        samples = alternate("W10", sides, config.reps["W10"])
    finally:
        journal.close()
        folder.cleanup()
    rows_from(report, "W10", samples, "per_step", f"µs/step ({W10_STEPS} no-ops)", "µs")
    ratios = paired(samples[sides[0].runner].get("per_step", []), samples[sides[1].runner].get("per_step", []), ratio)
    report.add(Row("W10", "journaled / plain", "per-step ratio (paired)", "x", ratios))
    report.checks.append(
        Check("W10", "journaled ≤ 1.25x plain", statistics.median(ratios) if ratios else None, 1.25, "<=", "x")
    )


RUNNERS: dict[str, Callable[[Report, Config], None]] = {
    "W1": w1,
    "W2": w2,
    "W3": w3,
    "W4": w4,
    "W5": w5,
    "W6": w6,
    "W7": w7,
    "W9": w9,
    "W10": w10,
    "W11": w11,
}


# ── output ──────────────────────────────────────────────────────────────────────


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    size = abs(value)
    if size >= 1000:
        text = f"{value:,.0f}"
    elif size >= 100:
        text = f"{value:.0f}"
    elif size >= 10:
        text = f"{value:.1f}"
    elif size >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text}{unit}" if unit in ("x",) else text


def table(report: Report, config: Config) -> str:
    headers = ("workload", "runner", "metric", "unit", "median", "min..max", "n")
    lines: list[list[str]] = []
    for row in report.rows:
        if row.error and not row.samples:
            lines.append([row.workload, row.runner, row.metric, row.unit, "error", row.error[:60], "0"])
            continue
        spread = f"{fmt(row.low)}..{fmt(row.high)}" if len(row.samples) > 1 else ""
        line = [row.workload, row.runner, row.metric, row.unit, fmt(row.median), spread, str(len(row.samples))]
        if row.note:
            line[2] += f" [{row.note}]"
        lines.append(line)
    for workload, runner, why in report.skipped:
        lines.append([workload, runner, why, "", "", "", ""])
    order = {w: i for i, w in enumerate(WORKLOADS)}
    lines.sort(key=lambda line: order.get(line[0], 99))  # stable: keeps each workload's order
    widths = [max(len(headers[i]), *(len(line[i]) for line in lines)) for i in range(len(headers))]
    out = []

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i >= 4 else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out.append(render(headers))
    out.append("  ".join("─" * w for w in widths))
    previous = None
    for line in lines:
        if previous is not None and line[0] != previous:
            out.append("")
        out.append(render(line))
        previous = line[0]
    out.append("")
    out.append("targets")
    for check in report.checks:
        verdict = {True: "met", False: "NOT MET", None: "no data"}[check.met]
        value = fmt(check.value)
        out.append(
            f"  {check.workload}  {check.target:<48} value {value:>8} {check.unit:<2} "
            f"limit {check.op} {fmt(check.limit)} {check.unit:<2} → {verdict}"
        )
    mode = "quick" if config.quick else "normal"
    out.append("")
    out.append(
        f"({mode} run; medians over alternating repetitions; paired ratios compare runs made back to back; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs)"
    )
    return "\n".join(out)


# ── clean-up ────────────────────────────────────────────────────────────────────


def clean_up() -> list[int]:
    """Close every pool this script used; kill (by pid) any child process still left."""
    for peer in PEERS:
        try:
            peer.close()
        except Exception as error:
            log(f"closing {peer.name} failed: {error}")
    flowpool.shutdown_workers()
    try:
        import loky

        loky.get_reusable_executor(max_workers=2).shutdown(wait=True)
    except Exception as error:
        log(f"closing the loky executor failed: {error}")
    try:
        import psutil
    except ImportError:
        return []
    me = psutil.Process()
    deadline = time.monotonic() + 3.0
    children = []
    while time.monotonic() < deadline:
        children = [c for c in me.children(recursive=True) if not _is_resource_tracker(c)]
        if not children:
            return []
        time.sleep(0.1)
    left = [child.pid for child in children]
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(children, timeout=3.0)
    return left


def _is_resource_tracker(process: Any) -> bool:
    # loky's and multiprocessing's resource trackers exit by themselves with this process.
    try:
        return "resource_tracker" in " ".join(process.cmdline())
    except Exception:
        return False


# ── main ────────────────────────────────────────────────────────────────────────


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    parser.add_argument("--quick", action="store_true", help="few repetitions, small sizes (< 60 s)")
    parser.add_argument("--full", action="store_true", help="also W4 up to 100,000 steps (slow)")
    parser.add_argument("--only", metavar="W1,W3", help="run only these workloads")
    parser.add_argument("--reps", type=int, help="repetitions of every workload (overrides the defaults)")
    parser.add_argument("--no-peers", action="store_true", help="skip joblib, Dask and Prefect")
    args = parser.parse_args(argv)
    if args.only:
        chosen = [w.strip().upper() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in chosen if w not in WORKLOADS]
        if unknown:
            parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
        args.workloads = [w for w in WORKLOADS if w in chosen]
    else:
        args.workloads = list(DEFAULT_WORKLOADS)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = make_config(args.quick, args.reps, not args.no_peers, args.full)
    PEERS[:] = peers_mod.all_peers() if config.peers else []
    report = Report()
    started = time.perf_counter()
    left: list[int] = []
    try:
        for workload in args.workloads:
            log(f"{workload} … ({time.perf_counter() - started:.1f} s in)")
            try:
                RUNNERS[workload](report, config)
            except Exception as error:
                log(f"{workload} failed: {type(error).__name__}: {error}")
                report.add(Row(workload, "(workload)", "", "", error=f"{type(error).__name__}: {error}"))
    finally:
        left = clean_up()
    elapsed = time.perf_counter() - started
    if left:
        log(f"killed {len(left)} leftover child process(es): {left}")
    if args.json:
        payload = {
            "mode": "quick" if config.quick else "normal",
            "workloads": args.workloads,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "flowpool": flowpool.__version__,
            "seconds": elapsed,
            "results": [row.to_dict() for row in report.rows],
            "skipped": [{"workload": w, "runner": r, "reason": why} for w, r, why in report.skipped],
            "targets": [check.to_dict() for check in report.checks],
            "leftover_processes": left,
        }
        json.dump(payload, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(table(report, config))
        print(f"(took {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
