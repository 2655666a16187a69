"""SPEC §14: log context around every attempt, and a worker's log records in the parent."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flowpool import Context, Flow, StepStatus
from flowpool._logcontext import LogContextFilter

pytestmark = pytest.mark.timeout(90)

LOGGER = "flowpool_tests.worker_logs"


def chatty(ctx: Context) -> str:
    log = logging.getLogger(LOGGER)
    log.debug("not emitted: the parent's level is INFO")
    log.info("hello %s, attempt %d", "world", ctx.attempt)
    try:
        1 / 0  # noqa: B018 - the exception is the point
    except ZeroDivisionError:
        log.exception("it broke")
    log.warning("done", extra={"order": 7, "detail": object()})
    return "ok"


def charge(ctx: Context) -> str:
    return "charged"


def refund(ctx: Context, value: str) -> None:
    logging.getLogger(LOGGER).warning("refunding %s", value)


def fail(ctx: Context) -> None:
    raise RuntimeError("the email bounced")


def log_then_hang(ctx: Context) -> None:
    logging.getLogger(LOGGER).warning("about to hang")
    time.sleep(60)


def item_talks(ctx: Context) -> str:
    logging.getLogger(LOGGER).info("item %s, attempt %d", ctx.key, ctx.attempt)
    if ctx.key == "b" and ctx.attempt == 1:
        raise OSError("once")
    return f"{ctx.key}!"


def item_refund(ctx: Context, value: str) -> None:
    logging.getLogger(LOGGER).warning("refunding %s", value)


def levels_seen(ctx: Context) -> tuple[bool, bool, int]:
    log = logging.getLogger(LOGGER)
    return log.isEnabledFor(logging.INFO), log.isEnabledFor(logging.WARNING), os.getpid()


def argv_seen(ctx: Context) -> list[str]:
    return list(sys.argv)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(LogContextFilter())
        self.slow = 0.0  # seconds each record takes to handle (a slow handler: a remote log service)

    def emit(self, record: logging.LogRecord) -> None:
        if self.slow:
            threading.Event().wait(self.slow)
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[Collect]:
    """A handler on ``LOGGER`` (level INFO), removed after the test."""
    logger = logging.getLogger(LOGGER)
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logging.disable(logging.NOTSET)


def test_a_process_steps_records_are_handled_by_the_parents_logging_with_their_context(collected: Collect) -> None:
    seen_at_finish: list[list[str]] = []
    collected.slow = 0.2  # records still being handled when the worker's result is back

    def on_event(event: Any) -> None:
        if event.kind == "step_finished":
            seen_at_finish.append([record.getMessage() for record in collected.records])

    result = Flow("logs").step("talk", chatty).run({}, executor="process", max_workers=1, on_event=on_event)
    assert result.steps["talk"].status is StepStatus.COMPLETED
    records = collected.records
    assert [record.getMessage() for record in records] == ["hello world, attempt 1", "it broke", "done"]
    # Handled before the step's end was reported.
    assert seen_at_finish == [["hello world, attempt 1", "it broke", "done"]]
    info, error, warning = records
    assert {record.name for record in records} == {LOGGER}
    assert [record.levelno for record in records] == [logging.INFO, logging.ERROR, logging.WARNING]
    assert all(record.process != os.getpid() for record in records)  # logged in a worker
    assert info.args is None or info.args == ()
    assert error.exc_text is not None and "ZeroDivisionError: division by zero" in error.exc_text
    assert warning.order == 7  # type: ignore[attr-defined]
    assert warning.detail.startswith("<object object")  # type: ignore[attr-defined]
    for record in records:
        assert record.flowpool_step == "talk"  # type: ignore[attr-defined]
        assert record.flowpool_attempt == 1  # type: ignore[attr-defined]
        assert record.flowpool_run_id == result.run_id  # type: ignore[attr-defined]
        assert record.flowpool_flow == "logs"  # type: ignore[attr-defined]
        assert record.flowpool_path == ("talk",)  # type: ignore[attr-defined]


def test_a_record_logged_before_the_worker_is_killed_by_its_timeout_still_arrives(collected: Collect) -> None:
    result = Flow("hang").step("stuck", log_then_hang, timeout=1.0).run({}, executor="process", max_workers=1)
    assert result.steps["stuck"].status is StepStatus.TIMED_OUT
    assert [record.getMessage() for record in collected.records] == ["about to hang"]
    assert collected.records[0].flowpool_step == "stuck"  # type: ignore[attr-defined]


def test_a_compensation_that_runs_in_a_worker_logs_with_its_steps_context(collected: Collect) -> None:
    flow = Flow("saga").step("charge", charge, compensate=refund).step("email", fail)
    result = flow.run({}, executor="process", max_workers=1)
    assert result.status == "failed"
    assert [(r.getMessage(), r.flowpool_step, r.process != os.getpid()) for r in collected.records] == [  # type: ignore[attr-defined]
        ("refunding charged", "charge", True)
    ]


def test_a_worker_follows_the_parents_levels_at_each_submission(collected: Collect) -> None:
    flow = Flow("levels").step("levels", levels_seen)
    info, warning, first = flow.run({}, executor="process", max_workers=1).steps["levels"].value
    assert (info, warning) == (True, True)
    logging.getLogger(LOGGER).setLevel(logging.WARNING)
    info, warning, second = flow.run({}, executor="process", max_workers=1).steps["levels"].value
    assert (info, warning) == (False, True)
    logging.disable(logging.WARNING)
    info, warning, third = flow.run({}, executor="process", max_workers=1).steps["levels"].value
    assert (info, warning) == (False, False)
    assert first == second == third  # the same worker, told of each change


def test_nothing_is_sent_from_a_worker_for_a_level_the_parent_does_not_emit(collected: Collect) -> None:
    logging.getLogger(LOGGER).setLevel(logging.ERROR)
    Flow("quiet").step("talk", chatty).run({}, executor="process", max_workers=1).raise_for_status()
    assert [record.getMessage() for record in collected.records] == ["it broke"]


def test_a_worker_process_runs_with_the_parents_sys_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["batch.py", "--day", "2026-12-02"])
    flow = Flow("argv").step("argv", argv_seen)
    assert flow.run({}, executor="process", max_workers=1).steps["argv"].value == ["batch.py", "--day", "2026-12-02"]
    monkeypatch.setattr(sys, "argv", ["batch.py", "other"])
    assert flow.run({}, executor="process", max_workers=1).steps["argv"].value == ["batch.py", "other"]


def test_a_module_imported_in_a_worker_sees_the_parents_sys_argv_while_it_is_imported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import flowpool

    (tmp_path / "argv_at_import.py").write_text(
        "import sys\nARGV = list(sys.argv)\n\n\ndef step(ctx):\n    return ARGV\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    flowpool.shutdown_workers()  # the next lane starts with this sys.path …
    Flow("warm").step("argv", argv_seen).run({}, executor="process", max_workers=1).raise_for_status()
    import argv_at_import  # type: ignore[import-not-found]

    # … and with the old sys.argv (loky copies it at start): only flowpool can tell it the new one.
    monkeypatch.setattr(sys, "argv", ["job.py", "input.csv"])
    try:
        result = Flow("argv").step("step", argv_at_import.step).run({}, executor="process", max_workers=1)
        assert result.steps["step"].value == ["job.py", "input.csv"]
    finally:
        sys.modules.pop("argv_at_import", None)
        flowpool.shutdown_workers()


def test_records_from_many_workers_keep_their_order_per_step(collected: Collect) -> None:
    flow = Flow("many").parallel("all", [_counting_step(name) for name in "abcd"])
    result = flow.run({}, executor="process", max_workers=4)
    assert result.status == "completed"
    for name in "abcd":
        mine = [record.getMessage() for record in collected.records if record.flowpool_step == name]  # type: ignore[attr-defined]
        assert mine == [f"{name} {i}" for i in range(50)]


def count_logs(ctx: Context) -> None:
    log = logging.getLogger(LOGGER)
    for i in range(50):
        log.info("%s %d", ctx.step, i)


def _counting_step(name: str) -> Any:
    from flowpool import Step

    return Step(name, count_logs)


def test_records_from_map_items_in_workers_carry_the_items_key_and_attempt(collected: Collect) -> None:
    flow = (
        Flow("items")
        .map("each", item_talks, items=["a", "b"], key=str, retries=1, compensate=item_refund)
        .step("email", fail)
    )
    result = flow.run({}, executor="process", max_workers=2)
    assert result.status == "failed"
    seen = sorted(
        (r.getMessage(), r.flowpool_step, r.flowpool_item, r.flowpool_attempt, r.process != os.getpid())  # type: ignore[attr-defined]
        for r in collected.records
    )
    assert seen == [
        ("item a, attempt 1", "each", "a", 1, True),
        ("item b, attempt 1", "each", "b", 1, True),
        ("item b, attempt 2", "each", "b", 2, True),
        ("refunding a!", "each", "a", 1, True),  # an item's compensation, in a worker too
        ("refunding b!", "each", "b", 1, True),
    ]
