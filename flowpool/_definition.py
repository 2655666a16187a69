"""Flow definitions: ``Flow``, ``Step`` and parallel groups, with all their validation.

A definition is checked where it is written: every call that introduces a
problem raises ``FlowDefinitionError`` naming the flow, the step and the
argument, so nothing invalid ever reaches a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._errors import FlowDefinitionError

if TYPE_CHECKING:
    import concurrent.futures
    import os

    from ._context import Context
    from ._events import Event
    from ._journal import Journal
    from ._results import FlowResult

__all__ = ["Flow", "Group", "Step"]

ExecutorName = Literal["thread", "process"]
EXECUTOR_NAMES: tuple[str, ...] = ("thread", "process")

STEP_OPTIONS: tuple[str, ...] = (
    "retries",
    "retry",
    "timeout",
    "compensate",
    "compensate_retries",
    "compensate_timeout",
    "required",
    "executor",
)

_UNSET: Any = object()


def _fail(problem: str, flow: str | None, step: str | None, argument: str | None) -> FlowDefinitionError:
    return FlowDefinitionError(problem, flow=flow, step=step, argument=argument)


def check_name(name: object, *, flow: str | None, what: str) -> str:
    """Return ``name`` if it is a non-empty string, else raise naming ``what`` it names."""
    if not isinstance(name, str):
        raise _fail(f"a {what} name must be a string, not {type(name).__name__}", flow, None, "name")
    if not name.strip():
        raise _fail(f"a {what} name must be a non-empty string", flow, None, "name")
    return name


def _check_count(value: object, argument: str, flow: str | None, step: str | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"must be an int >= 0, not {value!r}", flow, step, argument)
    if value < 0:
        raise _fail(f"must be an int >= 0, not {value}", flow, step, argument)
    return value


def _check_seconds(value: object, argument: str, flow: str | None, step: str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"must be a number of seconds > 0 or None, not {value!r}", flow, step, argument)
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        raise _fail("must be a finite number of seconds > 0, not a number that large", flow, step, argument) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise _fail(f"must be a finite number of seconds > 0, not {value!r}", flow, step, argument)
    return seconds


def _check_retrying(value: object, flow: str | None, step: str | None) -> Any:
    if value is None:
        return None
    import tenacity  # only paid for by flows that use it

    if not isinstance(value, tenacity.BaseRetrying) or isinstance(value, tenacity.AsyncRetrying):
        raise _fail(f"must be a tenacity.Retrying (or None), not {type(value).__name__}", flow, step, "retry")
    return value


class Step:
    """One step: a name, a function ``fn(ctx) -> value`` and its options.

    Args:
        name: unique within the flow.
        fn: a plain synchronous callable taking a ``Context``.
        retries: extra attempts after the first, with a short exponential backoff.
        retry: a ``tenacity.Retrying`` for full control (not together with ``retries``).
        timeout: seconds allowed for one attempt, counted from when it starts running.
        compensate: ``compensate(ctx, value)`` undoes the step once it completed.
        compensate_retries: extra attempts for the compensation.
        compensate_timeout: seconds allowed for one compensation attempt.
        required: for group members: the group fails if this member does not complete.
        executor: ``"thread"`` or ``"process"`` to run this step on another kind of
            pool than the run's; ``None`` uses the run's.
    """

    __slots__ = (
        "name",
        "fn",
        "retries",
        "retry",
        "timeout",
        "compensate",
        "compensate_retries",
        "compensate_timeout",
        "required",
        "executor",
    )

    name: str
    fn: Callable[[Context], Any]
    retries: int
    retry: Any
    timeout: float | None
    compensate: Callable[[Context, Any], Any] | None
    compensate_retries: int
    compensate_timeout: float | None
    required: bool
    executor: ExecutorName | None

    def __init__(
        self,
        name: str,
        fn: Callable[[Context], Any],
        *,
        retries: int = _UNSET,
        retry: Any = None,
        timeout: float | None = None,
        compensate: Callable[[Context, Any], Any] | None = None,
        compensate_retries: int = 0,
        compensate_timeout: float | None = None,
        required: bool = False,
        executor: ExecutorName | None = None,
        **unknown: Any,
    ) -> None:
        self._build(
            None,
            name,
            fn,
            {
                **unknown,
                "retries": retries,
                "retry": retry,
                "timeout": timeout,
                "compensate": compensate,
                "compensate_retries": compensate_retries,
                "compensate_timeout": compensate_timeout,
                "required": required,
                "executor": executor,
            },
        )

    @classmethod
    def checked(cls, flow: str | None, name: object, fn: object, options: Mapping[str, Any]) -> Step:
        """Build a step whose errors name ``flow``; ``options`` may hold only step options."""
        step = cls.__new__(cls)
        step._build(flow, name, fn, dict(options))
        return step

    def _build(self, flow: str | None, name: object, fn: object, options: dict[str, Any]) -> None:
        name = check_name(name, flow=flow, what="step")
        unknown = sorted((key for key in options if key not in STEP_OPTIONS), key=repr)
        if unknown:
            raise _fail(
                f"unknown option(s) {', '.join(map(repr, unknown))}; known options: {', '.join(STEP_OPTIONS)}",
                flow,
                name,
                unknown[0],
            )
        if not callable(fn):
            raise _fail(f"must be callable, not {type(fn).__name__}", flow, name, "fn")
        retries = options.get("retries", _UNSET)
        retry = _check_retrying(options.get("retry"), flow, name)
        if retries is not _UNSET and retry is not None:
            raise _fail("give either 'retries' or 'retry', not both", flow, name, "retry")
        retries = 0 if retries is _UNSET else _check_count(retries, "retries", flow, name)
        timeout = _check_seconds(options.get("timeout"), "timeout", flow, name)
        compensate = options.get("compensate")
        if compensate is not None and not callable(compensate):
            raise _fail(f"must be callable or None, not {type(compensate).__name__}", flow, name, "compensate")
        compensate_retries = _check_count(options.get("compensate_retries", 0), "compensate_retries", flow, name)
        compensate_timeout = _check_seconds(options.get("compensate_timeout"), "compensate_timeout", flow, name)
        required = options.get("required", False)
        if not isinstance(required, bool):
            raise _fail(f"must be True or False, not {required!r}", flow, name, "required")
        executor = options.get("executor")
        if executor is not None and (not isinstance(executor, str) or executor not in EXECUTOR_NAMES):
            raise _fail(f"unknown executor {executor!r}; use 'thread', 'process' or None", flow, name, "executor")
        for attribute, value in (
            ("name", name),
            ("fn", fn),
            ("retries", retries),
            ("retry", retry),
            ("timeout", timeout),
            ("compensate", compensate),
            ("compensate_retries", compensate_retries),
            ("compensate_timeout", compensate_timeout),
            ("required", required),
            ("executor", executor),
        ):
            object.__setattr__(self, attribute, value)

    def __setattr__(self, attribute: str, value: object) -> None:
        raise AttributeError(f"Step is immutable; cannot set {attribute!r}")

    def options(self) -> dict[str, Any]:
        """The step's options, as keyword arguments that rebuild it."""
        options: dict[str, Any] = {
            "timeout": self.timeout,
            "compensate": self.compensate,
            "compensate_retries": self.compensate_retries,
            "compensate_timeout": self.compensate_timeout,
            "required": self.required,
            "executor": self.executor,
        }
        if self.retry is not None:
            options["retry"] = self.retry
        else:
            options["retries"] = self.retries
        return options

    def __repr__(self) -> str:
        shown = [f"{self.name!r}", getattr(self.fn, "__qualname__", repr(self.fn))]
        if self.retries:
            shown.append(f"retries={self.retries}")
        if self.retry is not None:
            shown.append("retry=<tenacity>")
        if self.timeout is not None:
            shown.append(f"timeout={self.timeout:g}")
        if self.compensate is not None:
            shown.append("compensate=...")
        if self.required:
            shown.append("required=True")
        if self.executor is not None:
            shown.append(f"executor={self.executor!r}")
        return f"Step({', '.join(shown)})"


@dataclass(frozen=True, slots=True)
class Group:
    """A parallel group: members started together under one failure policy."""

    name: str
    members: tuple[Step, ...]
    fail_fast: bool = False
    min_successes: int | None = None
    max_concurrency: int | None = None

    @property
    def policy(self) -> str:
        """A short description of the failure policy, e.g. ``"fail fast"``."""
        if self.fail_fast:
            return "fail fast"
        if self.min_successes is not None:
            return f"at least {self.min_successes} of {len(self.members)}"
        return "fails only if all fail"


Stage = Step | Group


def _member(flow: str, group: str, position: int, member: object) -> Step:
    if isinstance(member, Step):
        # Checked again so that the error names the flow.
        return Step.checked(flow, member.name, member.fn, member.options())
    if isinstance(member, Mapping):
        options = dict(member)
        missing = [key for key in ("name", "fn") if key not in options]
        if missing:
            name = options.get("name") if isinstance(options.get("name"), str) else None
            raise _fail(
                f"member {position} of group {group!r} lacks the key(s) {', '.join(map(repr, missing))}",
                flow,
                name,
                missing[0],
            )
        name = options.pop("name")
        fn = options.pop("fn")
        return Step.checked(flow, name, fn, options)
    raise _fail(
        f"member {position} of group {group!r} must be a Step or a mapping with 'name' and 'fn', "
        f"not {type(member).__name__}",
        flow,
        group,
        "members",
    )


class Flow:
    """An ordered list of stages; each is one step or a parallel group.

    ``step`` and ``parallel`` add a stage and return the flow, so calls chain.
    A flow may be run many times, from several threads at once; each run takes a
    snapshot of the stages it starts with.
    """

    __slots__ = ("_name", "_stages", "_names", "__weakref__")

    def __init__(self, name: str) -> None:
        self._name = check_name(name, flow=None, what="flow")
        self._stages: tuple[Stage, ...] = ()
        self._names: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """The flow's name."""
        return self._name

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages in order: ``Step`` or ``Group`` records."""
        return self._stages

    def steps(self) -> tuple[Step, ...]:
        """Every step of the flow in declaration order, group members included."""
        out: list[Step] = []
        for stage in self._stages:
            out.extend(stage.members if isinstance(stage, Group) else (stage,))
        return tuple(out)

    def _check_unique(self, names: Iterable[str]) -> None:
        seen = set(self._names)
        for name in names:
            if name in seen:
                raise _fail(
                    "this name is already used in the flow; step and group names must be unique",
                    self._name,
                    name,
                    "name",
                )
            seen.add(name)

    def step(self, name: str, fn: Callable[[Context], Any], **options: Any) -> Flow:
        """Add a stage of one step; see ``Step`` for the options. Returns the flow."""
        try:
            step = Step.checked(self._name, name, fn, options)
        except FlowDefinitionError as error:
            raise error.with_flow(self._name) from None
        if step.required:
            raise _fail("'required' applies only to members of a parallel group", self._name, step.name, "required")
        self._check_unique([step.name])
        self._stages += (step,)
        self._names |= {step.name}
        return self

    def parallel(
        self,
        name: str,
        members: Iterable[Step | Mapping[str, Any]],
        *,
        fail_fast: bool = False,
        min_successes: int | None = None,
        max_concurrency: int | None = None,
    ) -> Flow:
        """Add a parallel group of independent steps. Returns the flow.

        Args:
            name: the group's name (unique among steps and groups).
            members: ``Step`` objects or mappings with ``name``, ``fn`` and options.
            fail_fast: fail the group as soon as one member does not complete.
            min_successes: fail the group when fewer than this many members complete.
            max_concurrency: run at most this many members at a time.
        """
        flow = self._name
        name = check_name(name, flow=flow, what="group")
        if isinstance(members, str | bytes | Mapping) or not isinstance(members, Iterable):
            raise _fail(
                f"members must be a list of Step or mappings, not {type(members).__name__}", flow, name, "members"
            )
        checked = tuple(_member(flow, name, i, member) for i, member in enumerate(members))
        if not checked:
            raise _fail("a parallel group needs at least one member", flow, name, "members")
        if not isinstance(fail_fast, bool):
            raise _fail(f"must be True or False, not {fail_fast!r}", flow, name, "fail_fast")
        if min_successes is not None:
            if isinstance(min_successes, bool) or not isinstance(min_successes, int):
                raise _fail(f"must be an int or None, not {min_successes!r}", flow, name, "min_successes")
            if not 1 <= min_successes <= len(checked):
                raise _fail(
                    f"must be between 1 and the number of members ({len(checked)}), not {min_successes}",
                    flow,
                    name,
                    "min_successes",
                )
            if fail_fast:
                raise _fail(
                    "cannot be combined with fail_fast=True (fail fast already needs every member)",
                    flow,
                    name,
                    "min_successes",
                )
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
        ):
            raise _fail(f"must be an int >= 1 or None, not {max_concurrency!r}", flow, name, "max_concurrency")
        self._check_unique([name, *(m.name for m in checked)])
        group = Group(name, checked, fail_fast, min_successes, max_concurrency)
        self._stages += (group,)
        self._names |= {name, *(m.name for m in checked)}
        return self

    def run(
        self,
        input: Any = None,
        *,
        executor: str | concurrent.futures.Executor | Any = "thread",
        max_workers: int | None = None,
        timeout: float | None = None,
        on_event: Callable[[Event], Any] | None = None,
        clock: Any = None,
        journal: str | os.PathLike[str] | Journal | None = None,
    ) -> FlowResult:
        """Run the flow and return its ``FlowResult``; a failing step does not raise.

        Args:
            input: available to every step as ``ctx.input``.
            executor: ``"thread"`` (default), ``"process"``, any
                ``concurrent.futures.Executor`` (used as is, never shut down), a
                ``distributed.Client`` or ``"dask://HOST:PORT"``.
            max_workers: how many steps may run at once (default: per executor).
            timeout: seconds for the whole run; past it the run stops and fails
                with ``FlowTimeoutError``, and completed steps are compensated.
            on_event: called in the caller's thread with each ``Event``.
            clock: a ``flowpool.testing`` clock, for tests.
            journal: a path or a ``flowpool.Journal``: record the run in an embedded
                SQLite journal so that ``resume`` can continue it if the process dies.

        Raises:
            FlowDefinitionError: the flow has no stages, or an argument is invalid.
            FlowInterrupted: Ctrl-C (or SIGTERM in the CLI) stopped the run.
        """
        from ._runner import run_flow

        return run_flow(
            self,
            input,
            executor=executor,
            max_workers=max_workers,
            timeout=timeout,
            on_event=on_event,
            clock=clock,
            journal=journal,
        )

    def resume(
        self,
        run_id: str,
        *,
        journal: str | os.PathLike[str] | Journal,
        force: bool = False,
        executor: str | concurrent.futures.Executor | Any = "thread",
        max_workers: int | None = None,
        timeout: float | None = None,
        on_event: Callable[[Event], Any] | None = None,
    ) -> FlowResult:
        """Continue a journaled run whose process died.

        Steps recorded as completed are not executed again (their values come back
        from the journal); a step that was running when the process died runs again
        (at least once). A run that had failed resumes only its pending
        compensations. A finished run runs nothing and returns its recorded result.

        Args:
            run_id: the run to continue (``Journal(path).runs()`` lists them).
            journal: the journal the run was recorded in.
            force: resume even if the definition changed since the run.

        Raises:
            JournalError: unknown run id, or a file that is not a journal or is corrupt.
            FlowDefinitionError: the definition changed since the run (unless ``force``).
        """
        from ._resume import resume_flow

        return resume_flow(
            self,
            run_id,
            journal=journal,
            force=force,
            executor=executor,
            max_workers=max_workers,
            timeout=timeout,
            on_event=on_event,
        )

    def __repr__(self) -> str:
        return f"Flow({self._name!r}, stages={len(self._stages)})"
