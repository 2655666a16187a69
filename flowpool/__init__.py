"""flowpool: run workflows of plain synchronous Python functions.

A flow is an ordered list of stages; a stage is one step or a parallel group
of independent steps. Steps run on a thread pool, on isolated worker
processes, or on any ``concurrent.futures.Executor`` (Dask included), with
retries, timeouts, group failure policies and saga compensation.
"""

from typing import TYPE_CHECKING, Any

from ._context import Context
from ._definition import Flow, Group, Map, Step
from ._errors import (
    AbandonedThreadsError,
    CallNotPicklableError,
    DaskUnavailableError,
    ExecutorRefusedError,
    FlowDefinitionError,
    FlowFailedError,
    FlowInterrupted,
    FlowpoolError,
    FlowTimeoutError,
    JournalError,
    MapItemsError,
    RemoteError,
    RetryRejectedError,
    StepCancelledError,
    StepTimeoutError,
    UnpicklableResultError,
    WorkerCrashedError,
)
from ._events import EVENT_KINDS, Event
from ._executors import shutdown_workers
from ._maps import ItemResult, MapResult
from ._results import (
    CompensationResult,
    FlowResult,
    FlowStatus,
    GroupResult,
    GroupStatus,
    StepResult,
    StepStatus,
)

if TYPE_CHECKING:
    from ._journal import Journal, JournalRun
    from ._logfilter import LogContextFilter

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The journal (sqlite3, hashlib, json) and logging are imported only by programs that use them.
    if name in ("Journal", "JournalRun"):
        from . import _journal

        return getattr(_journal, name)
    if name == "LogContextFilter":
        from ._logfilter import LogContextFilter

        return LogContextFilter
    raise AttributeError(f"module 'flowpool' has no attribute {name!r}")


__all__ = [
    "EVENT_KINDS",
    "AbandonedThreadsError",
    "CallNotPicklableError",
    "CompensationResult",
    "Context",
    "DaskUnavailableError",
    "Event",
    "ExecutorRefusedError",
    "Flow",
    "FlowDefinitionError",
    "FlowFailedError",
    "FlowInterrupted",
    "FlowResult",
    "FlowStatus",
    "FlowTimeoutError",
    "FlowpoolError",
    "Group",
    "GroupResult",
    "GroupStatus",
    "ItemResult",
    "Journal",
    "JournalError",
    "JournalRun",
    "Map",
    "MapItemsError",
    "MapResult",
    "LogContextFilter",
    "RemoteError",
    "RetryRejectedError",
    "Step",
    "StepCancelledError",
    "StepResult",
    "StepStatus",
    "StepTimeoutError",
    "UnpicklableResultError",
    "WorkerCrashedError",
    "shutdown_workers",
    "__version__",
]
