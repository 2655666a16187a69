"""The exception hierarchy: one home, pickling, and what ``flowpool`` exports.

Errors travel: from worker processes and Dask workers back to the parent, and into
the journal, both through pickle. An exception whose ``__init__`` takes structured
fields does not survive the default ``Exception`` pickling (it is rebuilt from its
message alone), so each class declares a ``__reduce__``; these tests hold every
class in ``flowpool._errors`` to it.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import flowpool
from flowpool import Flow, FlowResult, _errors


def _fail(ctx: Any) -> None:
    raise ValueError("boom")


def _failed_result() -> FlowResult:
    return Flow("failing").step("boom", _fail).run()


#: One instance of every exception class, with every field set to a value other than its default.
SAMPLES: dict[str, Any] = {
    "FlowpoolError": lambda: _errors.FlowpoolError("something went wrong"),
    "FlowDefinitionError": lambda: _errors.FlowDefinitionError("bad", flow="f", step="s", argument="timeout"),
    "StepTimeoutError": lambda: _errors.StepTimeoutError("s", 1.5, 2),
    "FlowTimeoutError": lambda: _errors.FlowTimeoutError("f", 3.0),
    "StepCancelledError": lambda: _errors.StepCancelledError("s", "group 'g' failed fast"),
    "WorkerCrashedError": lambda: _errors.WorkerCrashedError("s", 3, "killed by signal 9"),
    "RemoteError": lambda: _errors.RemoteError("mod.Odd", "odd", "Traceback ...\n"),
    "UnpicklableResultError": lambda: _errors.UnpicklableResultError("s", "TypeError: cannot pickle lock"),
    "JournalError": lambda: _errors.JournalError("no run 'abc' in the journal"),
    "MapItemsError": lambda: _errors.MapItemsError("f", "m", 3, "ValueError: bad row"),
    "FlowFailedError": lambda: _errors.FlowFailedError(_failed_result()),
    "FlowInterrupted": lambda: _errors.FlowInterrupted("f", _failed_result()),
    "RetryRejectedError": lambda: _errors.RetryRejectedError("s", 4),
    "AbandonedThreadsError": lambda: _errors.AbandonedThreadsError("s", 256),
    "CallNotPicklableError": lambda: _errors.CallNotPicklableError("s", "PicklingError: lambda"),
    "ExecutorRefusedError": lambda: _errors.ExecutorRefusedError("s", "the executor cancelled it"),
    "DaskUnavailableError": lambda: _errors.DaskUnavailableError("host:8786", "connection refused"),
    "NotStartedError": lambda: _errors.NotStartedError("s", "cancelled (it never started)"),
    "StaleStoreError": lambda: _errors.StaleStoreError("this worker does not hold what its lane was sent"),
    "RemoteTraceback": lambda: _errors.RemoteTraceback("Traceback (most recent call last):\n  ...\n"),
}


def _exception_classes() -> list[str]:
    return sorted(
        name
        for name, value in vars(_errors).items()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == _errors.__name__
    )


def _fields(error: BaseException) -> dict[str, Any]:
    fields = dict(vars(error))
    if "result" in fields and fields["result"] is not None:
        # FlowResult has no value equality; its identity is its name, status and steps.
        result = fields["result"]
        fields["result"] = (result.name, result.status, tuple(result.steps))
    return fields


def test_every_exception_class_lives_in_errors_and_has_a_sample() -> None:
    assert set(_exception_classes()) == set(SAMPLES)
    assert set(_errors.__all__) == set(SAMPLES)


def test_no_exception_class_is_defined_outside_errors() -> None:
    import importlib
    import pkgutil

    import click

    strays = []
    for module_info in pkgutil.walk_packages(flowpool.__path__, "flowpool."):
        if module_info.name in ("flowpool._errors", "flowpool.__main__"):  # __main__ runs the command
            continue
        module = importlib.import_module(module_info.name)
        strays += [
            f"{module_info.name}.{name}"
            for name, value in vars(module).items()
            if isinstance(value, type)
            and issubclass(value, BaseException)
            and value.__module__ == module_info.name
            # The command's own error is click's to render (one line, exit status 2).
            and not issubclass(value, click.ClickException)
        ]
    assert strays == []


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_exception_survives_pickling_with_its_fields_and_message(name: str) -> None:
    error = SAMPLES[name]()
    assert type(error).__name__ == name
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert _fields(copy) == _fields(error)


def test_structured_errors_build_their_own_messages() -> None:
    assert str(_errors.RetryRejectedError("fetch", 3)) == (
        "step 'fetch': the retry policy rejected the value of every attempt (3 attempts)"
    )
    assert str(_errors.ExecutorRefusedError("fetch", "shut down")) == "the executor did not run step 'fetch': shut down"
    assert str(_errors.DaskUnavailableError()) == "executor 'dask://...' needs Dask: pip install 'flowpool[dask]'"
    missing = _errors.DaskUnavailableError()
    assert missing.address is None and missing.detail == ""
    unreachable = _errors.DaskUnavailableError("host:8786", "timed out")
    assert str(unreachable) == "cannot reach the Dask scheduler at host:8786: timed out"
    assert (unreachable.address, unreachable.detail) == ("host:8786", "timed out")
    assert "step 'fetch' was not started: 7 timed-out" in str(_errors.AbandonedThreadsError("fetch", 7))
    assert str(_errors.CallNotPicklableError("fetch", "no")).startswith("step 'fetch' cannot be sent to a worker")
    assert _errors.NotStartedError("fetch", "why").reason == "why"
    assert str(_errors.RemoteTraceback("text\n")) == '\n"""\ntext\n"""'


EXPORTED = [
    "FlowpoolError",
    "FlowDefinitionError",
    "StepTimeoutError",
    "FlowTimeoutError",
    "StepCancelledError",
    "WorkerCrashedError",
    "RemoteError",
    "UnpicklableResultError",
    "JournalError",
    "MapItemsError",
    "FlowFailedError",
    "FlowInterrupted",
    "RetryRejectedError",
    "AbandonedThreadsError",
    "CallNotPicklableError",
    "ExecutorRefusedError",
    "DaskUnavailableError",
]


@pytest.mark.parametrize("name", EXPORTED)
def test_errors_users_receive_are_exported(name: str) -> None:
    assert name in flowpool.__all__
    assert getattr(flowpool, name) is getattr(_errors, name)
    if name != "FlowInterrupted":
        assert issubclass(getattr(flowpool, name), flowpool.FlowpoolError)


def test_internal_errors_are_not_exported() -> None:
    # NotStartedError arrives as a StepCancelledError; RemoteTraceback only as a __cause__.
    assert "NotStartedError" not in flowpool.__all__
    assert "RemoteTraceback" not in flowpool.__all__
    assert issubclass(_errors.NotStartedError, flowpool.StepCancelledError)


def test_every_public_name_resolves() -> None:
    for name in flowpool.__all__:
        assert getattr(flowpool, name) is not None, name
    assert len(set(flowpool.__all__)) == len(flowpool.__all__)


def test_moved_exceptions_still_resolve_from_their_old_modules() -> None:
    from flowpool import _retry
    from flowpool._executors import _futures, _process, _threads, _worker

    assert _retry.RetryRejectedError is _errors.RetryRejectedError
    assert _threads.AbandonedThreadsError is _errors.AbandonedThreadsError
    assert _process.CallNotPicklableError is _errors.CallNotPicklableError
    assert _futures.ExecutorRefusedError is _errors.ExecutorRefusedError
    assert _worker.NotStartedError is _errors.NotStartedError
    assert _worker.RemoteTraceback is _errors.RemoteTraceback
