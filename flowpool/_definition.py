"""Flow definitions: ``Flow``, ``Step`` and parallel groups, with all their validation.

A definition is checked where it is written: every call that introduces a
problem raises ``FlowDefinitionError`` naming the flow, the step and the
argument, so nothing invalid ever reaches a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._errors import FlowDefinitionError
from ._options import (
    Option,
    _check_bool,
    _check_callable_or_none,
    _check_compensate_concurrency,
    _check_fail_fast,
    _check_max_concurrency,
    _check_min_successes,
    _check_tolerated_failures,
    _fail,
    _plan_compensate_concurrency,
    _tolerance_rule,
    callable_name,
    check_name,
    group_option,
)
from ._record import fields, record
from ._step import Always, Step

if TYPE_CHECKING:
    import concurrent.futures
    import os

    from ._context import Context
    from ._events import Event
    from ._journal import Journal
    from ._results import FlowResult

__all__ = [
    "Always",
    "Flow",
    "Group",
    "Map",
    "Step",
    "group_plan_phrases",
    "group_rule",
]


@record
class Group:
    """A parallel group: members started together under one failure policy."""

    name: str
    members: tuple[Step, ...]
    # The group's options, in the order they are checked and planned. Each declaration
    # is the option's only home besides its parameter of ``Flow.parallel``.
    fail_fast: bool = group_option(
        False,
        _check_fail_fast,
        rule=lambda value, group: (
            ("fail fast", "fail fast: fails as soon as one member does not complete") if value else None
        ),
    )
    min_successes: int | None = group_option(
        None,
        _check_min_successes,
        rule=lambda value, group: (
            None
            if value is None
            else (
                f"at least {value} of {len(group.members)}",
                f"quorum: fails when fewer than {value} of {len(group.members)} members complete",
            )
        ),
    )
    max_concurrency: int | None = group_option(
        None, _check_max_concurrency, plan=lambda value, group: None if value is None else f"at most {value} at a time"
    )
    # Added after runs were journaled: left out of the fingerprint while at their default.
    tolerated_failures: int | float | None = group_option(
        None,
        _check_tolerated_failures,
        fingerprint_default=False,
        rule=lambda value, group: _tolerance_rule(value, "members"),
    )
    compensate_concurrency: int = group_option(
        1, _check_compensate_concurrency, fingerprint_default=False, plan=_plan_compensate_concurrency
    )

    @property
    def policy(self) -> str:
        """A short description of the failure policy, e.g. ``"fail fast"``."""
        return group_rule(self)[0]


def _group_options() -> tuple[Option, ...]:
    options = []
    for declared in fields(Group):
        if "option" in declared.metadata:
            spec: Option = declared.metadata["option"]
            spec.name = declared.name
            options.append(spec)
    return tuple(options)


#: ``Group``'s options, in declaration order.
GROUP_OPTIONS: tuple[Option, ...] = _group_options()

_DEFAULT_RULE = ("fails only if all fail", "default: fails only when no member completes")


def group_rule(group: Group) -> tuple[str, str]:
    """The group's failure rule as ``(short, long)`` phrases, from the first option that sets one."""
    for spec in GROUP_OPTIONS:
        if spec.rule is not None:
            rule = spec.rule(getattr(group, spec.name), group)
            if rule is not None:
                return rule
    return _DEFAULT_RULE


def group_plan_phrases(group: Group) -> list[str]:
    """Short phrases for the group's options other than its failure rule, e.g. ``["at most 2 at a time"]``."""
    phrases = (spec.plan(getattr(group, spec.name), group) for spec in GROUP_OPTIONS if spec.plan is not None)
    return [phrase for phrase in phrases if phrase is not None]


@record
class Map:
    """A map stage: ``step`` (named as the map) runs once per item of ``items``.

    ``items`` is an iterable or a callable ``items(ctx)`` returning one; ``key(item)``
    names each item (default: its index). The policies are those of a group, plus
    ``tolerated_failures``; ``step``'s options apply to every item.
    """

    name: str
    step: Step
    items: Any
    key: Callable[[Any], Any] | None = None
    fail_fast: bool = False
    min_successes: int | None = None
    tolerated_failures: int | float | None = None
    max_concurrency: int | None = None
    compensate_concurrency: int = 1

    @property
    def fn(self) -> Callable[[Context], Any]:
        """The function (or ``Flow``) run for each item."""
        return self.step.fn

    @property
    def subflow(self) -> Flow | None:
        """The child flow run for each item when ``fn`` is a ``Flow``; else None."""
        return self.step.subflow

    @property
    def policy(self) -> str:
        """A short description of the failure policy, e.g. ``"tolerates 5 failure(s)"``."""
        return map_rule(self)[0]


def map_rule(stage: Map) -> tuple[str, str]:
    """The map's failure rule as ``(short, long)`` phrases."""
    if stage.fail_fast:
        return ("fail fast", "fail fast: stops and fails as soon as one item does not complete")
    if stage.min_successes is not None:
        return (
            f"at least {stage.min_successes} item(s)",
            f"quorum: fails when fewer than {stage.min_successes} items complete",
        )
    rule = _tolerance_rule(stage.tolerated_failures, "items")
    return rule if rule is not None else ("fails only if all fail", "default: fails only when no item completes")


def map_plan_phrases(stage: Map) -> list[str]:
    """Short phrases for the map's options other than its failure rule."""
    phrases = []
    if stage.max_concurrency is not None:
        phrases.append(f"at most {stage.max_concurrency} at a time")
    if stage.key is not None:
        phrases.append(f"key {callable_name(stage.key)}")
    if stage.compensate_concurrency != 1:
        phrases.append(f"compensates {stage.compensate_concurrency} at a time")
    return phrases


def _check_map(flow: str, name: str, items: object, key: object, policy: dict[str, Any]) -> dict[str, Any]:
    """The map's checked policy arguments (``policy`` holds them as given)."""
    if not callable(items) and (isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable)):
        raise _fail(
            f"must be an iterable (not a str, bytes or mapping) or a callable items(ctx), not {type(items).__name__}",
            flow,
            name,
            "items",
        )
    _check_callable_or_none(key, "key", flow, name)
    checked: dict[str, Any] = {"fail_fast": _check_bool(policy["fail_fast"], "fail_fast", flow, name)}
    quorum = policy["min_successes"]
    if quorum is not None:
        if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
            raise _fail(f"must be an int >= 1 or None, not {quorum!r}", flow, name, "min_successes")
        if checked["fail_fast"]:
            raise _fail(
                "cannot be combined with fail_fast=True (fail fast already needs every item)",
                flow,
                name,
                "min_successes",
            )
    checked["min_successes"] = quorum
    none: tuple[Step, ...] = ()
    checked["tolerated_failures"] = _check_tolerated_failures(
        policy["tolerated_failures"], "tolerated_failures", flow, name, none, policy
    )
    checked["max_concurrency"] = _check_max_concurrency(
        policy["max_concurrency"], "max_concurrency", flow, name, none, policy
    )
    checked["compensate_concurrency"] = _check_compensate_concurrency(
        policy["compensate_concurrency"], "compensate_concurrency", flow, name, none, policy
    )
    return checked


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


Stage = Step | Group | Map


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
        """The stages in order: ``Step``, ``Group`` or ``Map`` records."""
        return self._stages

    def steps(self) -> tuple[Step, ...]:
        """Every step of the flow in declaration order, group members included (a map's
        items are not steps)."""
        out: list[Step] = []
        for stage in self._stages:
            if isinstance(stage, Group):
                out.extend(stage.members)
            elif isinstance(stage, Step):
                out.append(stage)
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

    def subflows(self) -> tuple[Flow, ...]:
        """The flows this one runs as subflows (steps, group members and maps), in order."""
        out: list[Flow] = []
        for stage in self._stages:
            steps = stage.members if isinstance(stage, Group) else (stage.step if isinstance(stage, Map) else stage,)
            out.extend(step.subflow for step in steps if step.subflow is not None)
        return tuple(out)

    def contains(self, other: Flow) -> bool:
        """Whether ``other`` is this flow or runs inside it, at any depth."""
        seen: set[int] = set()
        todo = [self]
        while todo:
            flow = todo.pop()
            if flow is other:
                return True
            if id(flow) not in seen:
                seen.add(id(flow))
                todo.extend(flow.subflows())
        return False

    def _check_not_within(self, step: Step) -> None:
        child = step.subflow
        if child is not None and child.contains(self):
            raise _fail(
                f"subflow {child.name!r} contains flow {self._name!r} (a flow cannot run itself, at any depth)",
                self._name,
                step.name,
                "fn",
            )

    def step(self, name: str, fn: Callable[[Context], Any] | Flow, **options: Any) -> Flow:
        """Add a stage of one step; see ``Step`` for the options. Returns the flow."""
        try:
            step = Step.checked(self._name, name, fn, options)
        except FlowDefinitionError as error:
            raise error.with_flow(self._name) from None
        if step.required:
            raise _fail("'required' applies only to members of a parallel group", self._name, step.name, "required")
        self._check_not_within(step)
        self._check_unique([step.name])
        self._stages += (step,)
        self._names |= {step.name}
        return self

    def always(self, name: str, fn: Callable[[Context], Any], **options: Any) -> Flow:
        """Add an always-stage: a step that runs after the rest of the flow has finished,
        whatever its outcome, and after the compensations (in declaration order among
        always-stages). Its ``ctx.outcome`` is the flow's status so far; its failure is
        recorded and logged but does not change the flow's status. Returns the flow.

        ``required``, ``compensate`` and ``when`` do not apply to it.
        """
        for argument in ("required", "compensate", "when"):
            if argument in options:
                raise _fail(
                    f"{argument!r} does not apply to an always-stage (it runs whatever happened; nothing undoes it)",
                    self._name,
                    name if isinstance(name, str) else None,
                    argument,
                )
        try:
            step = Always.checked(self._name, name, fn, options)
        except FlowDefinitionError as error:
            raise error.with_flow(self._name) from None
        if step.subflow is not None:
            raise _fail("an always-stage must be a function, not a Flow", self._name, step.name, "fn")
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
        tolerated_failures: int | float | None = None,
        compensate_concurrency: int = 1,
    ) -> Flow:
        """Add a parallel group of independent steps. Returns the flow.

        Args:
            name: the group's name (unique among steps and groups).
            members: ``Step`` objects or mappings with ``name``, ``fn`` and options.
            fail_fast: fail the group as soon as one member does not complete.
            min_successes: fail the group when fewer than this many members complete.
            max_concurrency: run at most this many members at a time.
            tolerated_failures: replaces the default rule: an int n fails the group when
                more than n members do not complete, a float in (0, 1) when more than that
                fraction of them do not (required members still fail it).
            compensate_concurrency: run up to this many of the group's compensations at once.
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
        given = {
            "fail_fast": fail_fast,
            "min_successes": min_successes,
            "max_concurrency": max_concurrency,
            "tolerated_failures": tolerated_failures,
            "compensate_concurrency": compensate_concurrency,
        }
        options = {
            spec.name: spec.check(given[spec.name], spec.name, flow, name, checked, given) for spec in GROUP_OPTIONS
        }
        for member in checked:
            self._check_not_within(member)
        self._check_unique([name, *(m.name for m in checked)])
        group = Group(name, checked, **options)
        self._stages += (group,)
        self._names |= {name, *(m.name for m in checked)}
        return self

    def map(
        self,
        name: str,
        fn: Callable[[Context], Any] | Flow,
        *,
        items: Iterable[Any] | Callable[[Context], Iterable[Any]],
        key: Callable[[Any], Any] | None = None,
        fail_fast: bool = False,
        min_successes: int | None = None,
        tolerated_failures: int | float | None = None,
        max_concurrency: int | None = None,
        compensate_concurrency: int = 1,
        **step_options: Any,
    ) -> Flow:
        """Add a map stage: ``fn`` runs once per item, as a group whose members come
        from ``items``. Returns the flow.

        Args:
            name: the map's name (unique among steps, groups and maps).
            fn: ``fn(ctx)``; ``ctx.item``, ``ctx.index`` and ``ctx.key`` name the item.
            items: an iterable (not a str, bytes or mapping), or ``items(ctx)``
                returning one when the stage starts; consumed lazily.
            key: ``key(item)`` gives each item a stable ``str``/``int`` id (default:
                its index).
            fail_fast: fail (and stop taking items) as soon as one item does not complete.
            min_successes: fail when fewer than this many items complete.
            tolerated_failures: an int n or a float fraction in (0, 1): fail when more
                items than that do not complete (replaces the default rule).
            max_concurrency: run at most this many items at a time (default: the
                run's worker count).
            compensate_concurrency: run up to this many item compensations at once.
            **step_options: the options of ``Step`` (not ``required``), for every item.
        """
        flow = self._name
        name = check_name(name, flow=flow, what="map")
        if "required" in step_options:
            raise _fail("'required' applies only to members of a parallel group, not to a map", flow, name, "required")
        try:
            step = Step.checked(flow, name, fn, step_options)
        except FlowDefinitionError as error:
            raise error.with_flow(flow) from None
        policy = {
            "fail_fast": fail_fast,
            "min_successes": min_successes,
            "tolerated_failures": tolerated_failures,
            "max_concurrency": max_concurrency,
            "compensate_concurrency": compensate_concurrency,
        }
        checked = _check_map(flow, name, items, key, policy)
        self._check_not_within(step)
        self._check_unique([name])
        self._stages += (Map(name, step, items, key, **checked),)
        self._names |= {name}
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
