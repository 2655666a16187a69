"""Durable runs: the journal, resume, fingerprints, bad files, and a crash test."""

from __future__ import annotations

import collections
import contextlib
import datetime
import hashlib
import random
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from faults import journal_flows

from flowpool import (
    Flow,
    FlowDefinitionError,
    FlowpoolError,
    FlowStatus,
    Journal,
    JournalError,
    RemoteError,
    Step,
    StepStatus,
)

pytestmark = pytest.mark.timeout(120)

SCRIPT = Path(journal_flows.__file__)


def executions(log: Path) -> collections.Counter[str]:
    """How many times each step (``done X``) or compensation (``undo-done X``) finished."""
    if not log.exists():
        return collections.Counter()
    return collections.Counter(line.strip() for line in log.read_text().splitlines())


def only_run(book: Journal) -> str:
    runs = book.runs()
    assert len(runs) == 1
    return runs[0].run_id


def test_a_run_is_recorded_and_its_result_read_back(tmp_path: Path) -> None:
    log = tmp_path / "log"
    path = tmp_path / "runs.db"
    result = journal_flows.saga().run({"log": str(log), "fail": True}, journal=str(path))
    assert result.status is FlowStatus.FAILED
    with Journal(path) as book:
        [run] = book.runs()
        assert run.run_id == result.run_id and run.flow == "saga" and run.status == "failed"
        assert run.started_at <= (run.finished_at or 0)
        recorded = book.result(result.run_id)
    assert recorded.status is FlowStatus.FAILED
    assert recorded.compensated == result.compensated == ("meal", "insurance", "car", "hotel", "reserve")
    assert {name: s.status for name, s in recorded.steps.items()} == {
        name: s.status for name, s in result.steps.items()
    }
    assert recorded.values == result.values
    assert recorded.failed_stage == "charge"
    assert isinstance(recorded.error, RuntimeError)
    assert recorded.groups["book"].status == result.groups["book"].status


def test_resuming_a_finished_run_runs_nothing(tmp_path: Path) -> None:
    log = tmp_path / "log"
    path = tmp_path / "runs.db"
    flow = journal_flows.saga()
    first = flow.run({"log": str(log)}, journal=path)
    assert first.ok
    before = executions(log)
    again = flow.resume(first.run_id, journal=path)
    assert again.ok and again.values == first.values
    assert executions(log) == before


def test_a_run_that_died_in_a_stage_resumes_without_repeating_completed_steps(tmp_path: Path) -> None:
    log = tmp_path / "log"
    path = tmp_path / "runs.db"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), str(log), "dies"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    with Journal(path) as book:
        run_id = only_run(book)
        assert book.runs()[0].status == "running"
        with pytest.raises(JournalError, match="has not finished"):
            book.result(run_id)
    result = journal_flows.dies_in_stage().resume(run_id, journal=path)
    assert result.ok
    assert result.run_id == run_id
    assert result.values["first"] == "value of first"
    counts = executions(log)
    assert counts["done first"] == 1  # completed before the death: never again
    assert counts["start second"] == 2  # running when the process died: runs again
    assert counts["done third"] == 1
    with Journal(path) as book:
        assert book.runs()[0].status == "completed"


def test_a_run_that_died_while_compensating_finishes_only_the_pending_compensations(tmp_path: Path) -> None:
    log = tmp_path / "log"
    path = tmp_path / "runs.db"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), str(log), "saga-fail-diecomp"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    before = executions(log)
    assert before["undo-done meal"] == 1 and before["undo-done insurance"] == 1
    assert before["undo-start car"] == 1 and before["undo-done car"] == 0
    with Journal(path) as book:
        run_id = only_run(book)
    result = journal_flows.saga().resume(run_id, journal=path)
    assert result.status is FlowStatus.FAILED
    counts = executions(log)
    for step in ("meal", "insurance", "car", "hotel", "reserve"):
        assert counts[f"undo-done {step}"] == 1, step  # finished ones never twice; none missing
    assert counts["done reserve"] == 1  # no step runs again
    assert result.compensated == ("meal", "insurance", "car", "hotel", "reserve")
    assert result.steps["charge"].status is StepStatus.FAILED
    with Journal(path) as book:
        assert book.runs()[0].status == "failed"


def test_a_run_that_failed_before_its_process_died_resumes_only_its_compensations(tmp_path: Path) -> None:
    log = tmp_path / "log"
    path = tmp_path / "runs.db"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), str(log), "failsdie"], check=False, capture_output=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr  # died right after the failure, before compensating
    with Journal(path) as book:
        run_id = only_run(book)
    result = journal_flows.fails_then_dies().resume(run_id, journal=path)
    assert result.status is FlowStatus.FAILED
    assert result.failed_stage == "flaky"
    assert result.compensated == ("charge",)
    counts = executions(log)
    assert counts["start flaky"] == 1  # the failed step is not run again (it would now succeed)
    assert counts["start ship"] == 0
    assert counts["undo-done charge"] == 1


def test_a_settled_group_is_not_run_again_on_resume(tmp_path: Path) -> None:
    log = tmp_path / "log"
    path = tmp_path / "runs.db"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), str(log), "groupdie"], check=False, capture_output=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr
    with Journal(path) as book:
        run_id = only_run(book)
    result = journal_flows.group_then_dies().resume(run_id, journal=path)
    assert result.ok
    assert result.groups["g"].status.value == "partial"
    assert result.steps["bad"].status is StepStatus.FAILED
    counts = executions(log)
    assert counts["start bad"] == 1  # failed before the death: its verdict stands
    assert counts["done ok"] == 1


def test_a_changed_definition_is_refused_unless_forced(tmp_path: Path) -> None:
    log = tmp_path / "log"
    path = tmp_path / "runs.db"
    result = journal_flows.saga().run({"log": str(log)}, journal=path)
    changed = journal_flows.saga().step("extra", journal_flows.work)
    with pytest.raises(FlowDefinitionError, match="fingerprint"):
        changed.resume(result.run_id, journal=path)
    assert changed.resume(result.run_id, journal=path, force=True).ok


def test_the_fingerprint_ignores_where_functions_come_from() -> None:
    from flowpool._journal import fingerprint

    def work(ctx):  # type: ignore[no-untyped-def]
        return None

    same_shape = (
        Flow("saga")
        .step("reserve", work, compensate=lambda c, v: None)
        .parallel(
            "book",
            [
                {"name": "hotel", "fn": work, "compensate": lambda c, v: None},
                {"name": "car", "fn": work, "compensate": lambda c, v: None},
                {"name": "train", "fn": work},
            ],
        )
        .parallel(
            "extras",
            [
                {"name": "insurance", "fn": work, "compensate": lambda c, v: None},
                {"name": "meal", "fn": work, "compensate": lambda c, v: None},
            ],
        )
        .step("charge", work)
    )
    assert fingerprint(same_shape) == fingerprint(journal_flows.saga())
    assert fingerprint(same_shape.step("more", work)) != fingerprint(journal_flows.saga())


def test_unknown_runs_and_bad_files_raise_flowpool_errors(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    flow = Flow("f").step("a", lambda ctx: 1)
    flow.run(journal=path)
    with pytest.raises(JournalError, match="no run"):
        flow.resume("nope", journal=path)
    text = tmp_path / "notes.txt"
    text.write_text("this is not a database\n" * 100)
    with pytest.raises(JournalError):
        Journal(text)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(JournalError, match="not a flowpool journal"):
        Journal(other)
    truncated = tmp_path / "truncated.db"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(FlowpoolError):
        Journal(truncated).runs()
    assert issubclass(JournalError, FlowpoolError)


def test_an_unpicklable_value_completes_but_runs_again_on_resume(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "runs.db"
    calls: list[str] = []

    def lock(ctx):  # type: ignore[no-untyped-def]
        calls.append("lock")
        return threading.Lock()

    flow = Flow("f").step("lock", lock).step("b", lambda ctx: 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = flow.run(journal=path)
    assert result.ok
    assert [w for w in caught if "cannot be pickled" in str(w.message)]
    with Journal(path) as book:
        recorded = book.recorder.recorded(result.run_id)
        assert recorded.steps["lock"].status is StepStatus.COMPLETED
        assert not recorded.steps["lock"].value_kept


def test_several_processes_write_to_one_journal(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(path), str(tmp_path / f"log{i}"), "saga"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outs = [proc.communicate(timeout=60) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outs]
    with Journal(path) as book:
        runs = book.runs()
        assert len(runs) == 4
        assert {run.status for run in runs} == {"completed"}
        assert {run.run_id for run in runs} == {out.split()[0] for out, _ in outs}


@pytest.mark.timeout(300)
def test_crash_test_kills_at_random_moments_and_every_run_ends_consistent(tmp_path: Path) -> None:
    rng = random.Random(20261129)
    kills = 0
    for attempt in range(24):
        run_dir = tmp_path / f"run{attempt}"
        run_dir.mkdir()
        check_one_crash(run_dir, rng, scenario=rng.choice(["saga-slow", "saga-fail-slow"]))
        kills += 1
    assert kills >= 20


def check_one_crash(run_dir: Path, rng: random.Random, scenario: str) -> None:
    """Start a journaled run, SIGKILL it at a random moment, resume it, check the invariants."""
    import time

    from processes import wait_for_file

    log = run_dir / "log"
    path = run_dir / "runs.db"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(path), str(log), scenario, str(rng.randrange(1 << 30))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_file(log, within=60)  # the run has started its first step
        time.sleep(rng.uniform(0, 0.5))  # a random moment: stage, group or compensation
        proc.kill()
    finally:
        proc.wait(timeout=30)
    before = executions(log)
    with Journal(path) as book:
        [run] = book.runs()
        recorded = book.recorder.recorded(run.run_id) if run.status == "running" else None
    completed_before = (
        set()
        if recorded is None
        else {name for name, step in recorded.steps.items() if step.status is StepStatus.COMPLETED}
    )
    # Compensations recorded as finished before the kill. One that finished its work but
    # was killed before the journal committed that runs again: at least once, by design.
    compensated_before = (
        set()
        if recorded is None
        else {name for name, (state, _, _) in recorded.compensations.items() if state in ("compensated", "failed")}
    )
    result = journal_flows.saga().resume(run.run_id, journal=path)
    counts = executions(log)
    # Every run ends completed, or failed and fully compensated.
    if "fail" in scenario:
        assert result.status is FlowStatus.FAILED
        assert not result.not_compensated
        expected = [name for name in ("meal", "insurance", "car", "hotel", "reserve")]
        assert list(result.compensated) == expected
        for name in expected:
            assert counts[f"undo-done {name}"] >= 1, (name, counts)  # never missing
            if name in compensated_before or recorded is None:  # never twice
                assert counts[f"undo-done {name}"] == before[f"undo-done {name}"] == 1, (name, dict(counts))
    else:
        assert result.ok, result.error
        assert not any(key.startswith("undo") for key in counts)
    # A step recorded completed before the kill never executes again.
    for name in completed_before:
        assert counts[f"start {name}"] == before[f"start {name}"], name


# Started by the test below as ``python -c OPENER GATES ROUNDS INDEX``: for each round,
# wait for the start file ``go<round>``, then open that round's new journal and record a
# run in it; report failures in ``failed<round>.<index>`` and finish with ``done<round>.<index>``.
OPENER = """
import sys, time, traceback
from pathlib import Path
from flowpool import Flow
gates, rounds, index = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
flow = Flow("f").step("a", lambda ctx: index)
for round in range(rounds):
    go = gates / f"go{round}"
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            sys.exit(f"no start file {go}")
        time.sleep(0.0005)
    try:
        assert flow.run(journal=gates / f"r{round}.db").ok
    except BaseException:
        (gates / f"failed{round}.{index}").write_text(traceback.format_exc())
    (gates / f"done{round}.{index}").write_text("done")
"""


@pytest.mark.timeout(180)
def test_eight_processes_create_one_new_journal_at_the_same_instant(tmp_path: Path) -> None:
    from processes import wait_for_file

    opened, rounds = 8, 20
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(tmp_path), str(rounds), str(i)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(opened)
    ]
    try:
        for round in range(rounds):
            (tmp_path / f"go{round}").write_text("")  # every process starts on this file at once
            for i in range(opened):
                wait_for_file(tmp_path / f"done{round}.{i}", within=60)
    finally:
        for round in range(rounds):
            (tmp_path / f"go{round}").write_text("")  # let any process still waiting finish
        outs = [proc.communicate(timeout=60) for proc in procs]
    failures = sorted(tmp_path.glob("failed*"))
    assert not failures, "\n".join(f"{f.name}:\n{f.read_text()}" for f in failures)
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outs]
    for round in range(rounds):
        with Journal(tmp_path / f"r{round}.db") as book:
            assert [run.status for run in book.runs()] == ["completed"] * opened


class Booby:
    """A value whose unpickling runs a function: it creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.path,))

    def __repr__(self) -> str:
        return "Booby(a value that must not be unpickled)"


def booby_journal(tmp_path: Path) -> tuple[Path, str, Path]:
    """A journal holding a value and an error whose unpickling creates a marker file."""
    marker = tmp_path / "unpickled"
    path = tmp_path / "runs.db"

    def trap(ctx):  # type: ignore[no-untyped-def]
        return Booby(marker)

    def fails(ctx):  # type: ignore[no-untyped-def]
        raise ValueError("the \x1b[31mlast\x1b[0m step fails")

    result = Flow("f").step("trap", trap).step("fails", fails).run(journal=path)
    assert result.status is FlowStatus.FAILED
    marker.unlink(missing_ok=True)
    return path, result.run_id, marker


def test_listing_and_summarising_runs_never_unpickle(tmp_path: Path) -> None:
    path, run_id, marker = booby_journal(tmp_path)
    with Journal(path) as book:
        [run] = book.runs()
        summary = book.summary(run_id)
    assert not marker.exists()
    assert run.status == "failed"
    assert summary.steps["trap"].value == "Booby(a value that must not be unpickled)"
    error = summary.steps["fails"].error
    assert isinstance(error, RemoteError)
    assert (error.type_name, error.message) == ("ValueError", "the \x1b[31mlast\x1b[0m step fails")
    assert summary.failed_stage == "fails"
    # Only result() (and resume) unpickle: the journal is as trusted as its writer.
    with Journal(path) as book:
        book.result(run_id)
    assert marker.exists()


def test_text_forms_are_short_and_survive_a_broken_repr(tmp_path: Path) -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    path = tmp_path / "runs.db"
    flow = Flow("f").step("big", lambda ctx: "x" * 100_000).step("broken", lambda ctx: Broken())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Broken is a local class: it cannot be pickled
        result = flow.run(journal=path)
    with Journal(path) as book:
        summary = book.summary(result.run_id)
    assert 100 < len(summary.steps["big"].value) <= 300
    assert "Broken" in summary.steps["broken"].value  # a stand-in, not an exception


def test_a_new_journal_is_private_and_an_existing_ones_mode_is_kept(tmp_path: Path) -> None:
    import stat

    path = tmp_path / "runs.db"
    with Journal(path) as book:
        Flow("f").step("a", lambda ctx: 1).run(journal=book)
        companions = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")]
        assert all(p.exists() for p in companions)  # while the journal is open
        for file in (path, *companions):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    shared = tmp_path / "shared.db"
    Journal(shared).close()
    shared.chmod(0o640)
    with Journal(shared) as book:
        Flow("f").step("a", lambda ctx: 1).run(journal=book)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640


def test_opening_an_existing_journal_writes_nothing(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "runs.db"
    Flow("f").step("a", lambda ctx: 1).run(journal=path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with Journal(path) as book:
        [run] = book.runs()
        book.summary(run.run_id)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_journal_from_a_newer_flowpool_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    Journal(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    with pytest.raises(JournalError, match=r"newer flowpool \(journal format v99"):
        Journal(path)


def test_the_public_journal_only_reads_and_recording_goes_through_its_recorder(tmp_path: Path) -> None:
    from flowpool._journal import JournalRecorder

    public = {name for name in vars(Journal) if not name.startswith("_")}
    assert public == {"runs", "summary", "result", "recorder", "close"}
    with Journal(tmp_path / "runs.db") as book:
        assert isinstance(book.recorder, JournalRecorder) and book.recorder is book.recorder
        with pytest.raises(AttributeError):
            book.flush  # type: ignore[attr-defined]  # noqa: B018 - writing is the recorder's alone
        result = Flow("f").step("a", lambda ctx: 1).run(journal=book)
        assert book.recorder.recorded(result.run_id).steps["a"].value == 1


def test_an_in_memory_journal_creates_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Journal(":memory:") as book:
        result = Flow("f").step("a", lambda ctx: 1).run(journal=book)
        assert book.summary(result.run_id).steps["a"].value == "1"
    assert list(tmp_path.iterdir()) == []


def _moment(text: str | None) -> datetime.datetime:
    assert text is not None, "no wall-clock time"
    moment = datetime.datetime.fromisoformat(text)
    assert moment.utcoffset() == datetime.timedelta(0), text  # an explicit UTC offset
    return moment


def test_results_read_back_have_the_wall_clock_times_of_the_run(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    flow = Flow("f").step("a", lambda ctx: 1).parallel("g", [Step("b", lambda ctx: 2), Step("c", lambda ctx: 3)])
    before = datetime.datetime.now(datetime.UTC)
    live = flow.run(journal=path)
    after = datetime.datetime.now(datetime.UTC)
    with Journal(path) as book:
        shown = {"result": book.result(live.run_id), "summary": book.summary(live.run_id)}
        again = flow.resume(live.run_id, journal=book)  # a finished run: its recorded result
    expected = live.to_dict()
    for how, recorded in {**shown, "resume": again}.items():
        data = recorded.to_dict()
        started, finished = _moment(data["started"]), _moment(data["finished"])
        assert before <= started <= finished <= after, how
        # The run's times are on its clock again, like its steps' (same duration as recorded).
        assert recorded.started_at is not None and recorded.finished_at is not None
        assert abs(recorded.started_at - (live.started_at or 0)) < 1.0, how
        for name in ("a", "b", "c"):
            step, live_step = data["steps"][name], expected["steps"][name]
            assert step["started_at"] == live_step["started_at"], (how, name)
            assert abs(_moment(step["started"]) - _moment(live_step["started"])) < _MS, (how, name)
            assert abs(_moment(step["finished"]) - _moment(live_step["finished"])) < _MS, (how, name)
            assert started - _MS <= _moment(step["started"]) <= _moment(step["finished"]) <= finished + _MS


_MS = datetime.timedelta(milliseconds=1)


def _as_version_2(path: Path) -> None:
    """Turn a journal into one written by a flowpool of journal format v2."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("ALTER TABLE runs DROP COLUMN wall_offset")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'version'")


def test_a_journal_of_the_previous_format_is_upgraded_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    flow = Flow("f").step("a", lambda ctx: 1)
    old = flow.run(journal=path)
    _as_version_2(path)
    with Journal(path) as book:
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone() == ("3",)
        recorded = book.result(old.run_id)  # recorded without a wall offset: no wall-clock times
        assert recorded.ok and recorded.values == {"a": 1}
        assert recorded.to_dict()["started"] is None and recorded.steps["a"].to_dict(None)["started"] is None
        assert recorded.duration is not None and recorded.duration >= 0
        new = flow.run(journal=book)
        assert book.result(new.run_id).to_dict()["started"] is not None
    upgraded = hashlib.sha256(path.read_bytes()).hexdigest()
    with Journal(path) as book:  # upgraded once: opening it again writes nothing
        assert [run.run_id for run in book.runs()] == [old.run_id, new.run_id]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == upgraded


def test_a_journal_of_an_older_format_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    Journal(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'version'")
    with pytest.raises(JournalError, match=r"earlier development version of flowpool \(journal format v1"):
        Journal(path)


def test_a_value_none_is_kept_so_that_resume_does_not_run_its_step_again(tmp_path: Path) -> None:
    with Journal(tmp_path / "runs.db") as book:
        result = Flow("f").step("a", lambda ctx: None).step("b", lambda ctx: 0).run(journal=book)
        recorded = book.recorder.recorded(result.run_id).steps
        assert (recorded["a"].value, recorded["a"].value_kept) == (None, True)
        assert (recorded["b"].value, recorded["b"].value_kept) == (0, True)
        assert book.summary(result.run_id).steps["a"].value == "None"
        assert book.result(result.run_id).values == {"a": None, "b": 0}


def test_every_attempt_is_recorded_once_and_a_steps_only_attempt_by_its_row(tmp_path: Path) -> None:
    calls: collections.Counter[str] = collections.Counter()

    def flaky(ctx: object) -> int:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ValueError("once")
        return 2

    from flowpool.testing import AutoJumpClock

    flow = Flow("f").step("once", lambda ctx: 1).step("flaky", flaky, retries=1).step("fails", lambda ctx: 1 / 0)
    path = tmp_path / "runs.db"
    result = flow.run(journal=path, clock=AutoJumpClock())  # the retry's wait is skipped
    assert [result.steps[name].attempts for name in ("once", "flaky", "fails")] == [1, 2, 1]
    with contextlib.closing(sqlite3.connect(path)) as db:
        attempts = db.execute("SELECT step, attempt, status, started_at <= finished_at FROM attempts").fetchall()
        steps = dict(db.execute("SELECT step, attempts FROM steps").fetchall())
    # A retried step's attempts each have a row; a step's only attempt is its step's row.
    assert sorted(attempts) == [("flaky", 1, "failed", 1), ("flaky", 2, "completed", 1)]
    assert steps == {"once": 1, "flaky": 2, "fails": 1}


def test_an_attempt_whose_start_was_committed_has_its_end_recorded_too(tmp_path: Path) -> None:
    from flowpool._results import StepResult

    path = tmp_path / "runs.db"
    with Journal(path) as book:
        result = Flow("f").step("a", lambda ctx: 1).run(journal=book)
        writer, run_id = book.recorder, result.run_id
        # "b" ran long enough for its start to be committed; "c" ended within one flush.
        writer.attempt_started(run_id, "b", 1)
        writer.flush()
        writer.attempt_started(run_id, "c", 1)
        for step in ("b", "c"):
            writer.attempt_finished(run_id, step, 1, "completed", 0.5)
            writer.step_finished(run_id, StepResult(step, StepStatus.COMPLETED, 2, None, 1, 10.0, 10.5))
        writer.flush()
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT step, attempt, status, finished_at - started_at FROM attempts").fetchall()
    assert [row[:3] for row in rows] == [("b", 1, "completed")] and abs(rows[0][3] - 0.5) < 0.01


def test_a_completed_step_is_committed_while_its_group_still_runs(tmp_path: Path) -> None:
    import threading
    import time

    path = tmp_path / "runs.db"
    finished: dict[str, float] = {}

    def quick(ctx: object) -> int:
        finished["a"] = time.monotonic()
        return 1

    def watch(ctx: object) -> float:
        # Reads the journal from a connection of its own until "a" is there (at most 30 s):
        # the loop commits while this step still runs, not only when the group ends.
        deadline = time.monotonic() + 30
        with contextlib.closing(sqlite3.connect(path)) as db:
            while time.monotonic() < deadline:
                if db.execute("SELECT 1 FROM steps WHERE step = 'a'").fetchone():
                    return time.monotonic() - finished["a"]
                time.sleep(0.001)
        return -1.0

    with Journal(path) as book:
        result = Flow("f").parallel("g", [Step("a", quick), Step("b", watch)]).run(journal=book, max_workers=2)
        writer = book.recorder._commits._writer
    assert result.ok, result.error
    latency = result.values["b"]
    # SPEC §11-12: committed within 100 ms of completion; the bound here only tolerates a loaded machine.
    assert 0 <= latency < 1.0, latency
    assert writer is None or not writer.is_alive()  # closing the journal ends its writer thread
    assert not any(t.name == "flowpool-journal" and t is writer for t in threading.enumerate())


def test_records_the_writer_thread_could_not_commit_are_kept_and_its_failure_reported(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with Journal(path) as book:
        run_id = Flow("f").step("a", lambda ctx: 1).run(journal=book).run_id
        writer = book.recorder
        book._db.execute("PRAGMA query_only = ON")  # every write now fails
        writer.group_finished(run_id, "g", "completed")
        writer.hand_off()
        thread = writer._commits._writer
        assert thread is not None
        thread.join(timeout=30)
        assert not thread.is_alive()
        with pytest.raises(JournalError, match="cannot write to journal"):
            writer.hand_off()  # the writer thread's failure, reported to the loop
        book._db.execute("PRAGMA query_only = OFF")
        writer.flush()  # what the writer thread could not commit is committed now
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT grp, status FROM groups WHERE run_id = ?", (run_id,)).fetchall() == [
                ("g", "completed")
            ]


def test_a_hand_off_commits_itself_when_the_writer_thread_is_late(tmp_path: Path) -> None:
    from flowpool._clock import SYSTEM_CLOCK

    path = tmp_path / "runs.db"
    with Journal(path) as book:
        run_id = Flow("f").step("a", lambda ctx: 1).run(journal=book).run_id
        writer = book.recorder
        writer.group_finished(run_id, "g", "completed")
        with writer._lock:  # as if records handed over 1 s ago were still waiting for the writer thread
            writer._commits._behind_since = SYSTEM_CLOCK.now() - 1.0
        writer.hand_off()
        with contextlib.closing(sqlite3.connect(path)) as db:  # committed by the hand-off itself
            assert db.execute("SELECT status FROM groups WHERE run_id = ?", (run_id,)).fetchall() == [("completed",)]
        assert writer._commits._behind_since is None
