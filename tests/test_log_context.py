"""LogContextFilter: step identity copied onto log records (SPEC §14)."""

from __future__ import annotations

import contextvars
import logging
import threading

from flowpool._logcontext import FIELDS, LogContextFilter, current, enter, leave


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("user.module", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.__dict__.update(extra)
    return record


def test_outside_a_run_every_attribute_is_none() -> None:
    record = _record()
    assert LogContextFilter().filter(record)
    for name in FIELDS:
        assert getattr(record, name) is None


def test_inside_a_step_the_record_names_run_flow_step_attempt_and_path() -> None:
    token = enter("r1", "orders", "charge", 2, item="o-7", path=("orders", "charge"))
    try:
        record = _record()
        LogContextFilter().filter(record)
    finally:
        leave(token)
    assert record.flowpool_run_id == "r1"  # type: ignore[attr-defined]
    assert record.flowpool_flow == "orders"  # type: ignore[attr-defined]
    assert record.flowpool_step == "charge"  # type: ignore[attr-defined]
    assert record.flowpool_attempt == 2  # type: ignore[attr-defined]
    assert record.flowpool_item == "o-7"  # type: ignore[attr-defined]
    assert record.flowpool_path == ("orders", "charge")  # type: ignore[attr-defined]
    assert current()["flowpool_step"] is None  # left again


def test_a_top_level_steps_path_is_its_name() -> None:
    token = enter("r1", "f", "load", 1)
    try:
        assert current()["flowpool_path"] == ("load",)
    finally:
        leave(token)


def test_attributes_a_record_already_carries_are_kept() -> None:
    token = enter("r1", "f", "here", 1)
    try:
        record = _record(flowpool_step="from-a-worker", flowpool_attempt=3)
        LogContextFilter().filter(record)
    finally:
        leave(token)
    assert record.flowpool_step == "from-a-worker"  # type: ignore[attr-defined]
    assert record.flowpool_attempt == 3  # type: ignore[attr-defined]
    assert record.flowpool_flow == "f"  # type: ignore[attr-defined]


def test_a_thread_started_in_a_copy_of_the_context_sees_it() -> None:
    seen: dict[str, object] = {}
    token = enter("r1", "f", "fan-out", 1)
    try:
        context = contextvars.copy_context()
        plain = threading.Thread(target=lambda: seen.update(plain=current()["flowpool_step"]))
        copied = threading.Thread(target=context.run, args=(lambda: seen.update(copied=current()["flowpool_step"]),))
        for thread in (plain, copied):
            thread.start()
            thread.join(timeout=10)
    finally:
        leave(token)
    assert seen == {"plain": None, "copied": "fan-out"}


def test_the_filter_works_on_a_handler_for_any_logger() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(LogContextFilter())
    library = logging.getLogger("some.third.party")
    library.addHandler(handler)
    library.setLevel(logging.INFO)
    token = enter("r1", "f", "fetch", 1)
    try:
        library.info("fetched %d rows", 3)
    finally:
        leave(token)
        library.removeHandler(handler)
    assert records[0].flowpool_step == "fetch"  # type: ignore[attr-defined]
    assert records[0].getMessage() == "fetched 3 rows"
