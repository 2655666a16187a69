"""Step and group options, declared once: the ``Option`` record, the checks each
option's value goes through, and the phrases that describe it in plans.

``_definition`` declares every option of ``Step``, ``Group`` and ``Map`` with
``option()`` / ``group_option()``; everything else (slots, accepted keywords,
checks, ``options()``, ``repr``, fingerprints, plan phrases) is derived from
those declarations. Nothing here knows about running a flow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from ._errors import FlowDefinitionError
from ._record import field

if TYPE_CHECKING:
    from ._definition import Step

__all__ = ["Option", "group_option", "option", "plan_phrases"]

ExecutorName = Literal["thread", "process"]
EXECUTOR_NAMES: tuple[str, ...] = ("thread", "process")

_MISSING: Any = object()


def _fail(problem: str, flow: str | None, step: str | None, argument: str | None) -> FlowDefinitionError:
    return FlowDefinitionError(problem, flow=flow, step=step, argument=argument)


def check_name(name: object, *, flow: str | None, what: str) -> str:
    """Return ``name`` if it is a non-empty string, else raise naming ``what`` it names."""
    if not isinstance(name, str):
        raise _fail(f"a {what} name must be a string, not {type(name).__name__}", flow, None, "name")
    if not name.strip():
        raise _fail(f"a {what} name must be a non-empty string", flow, None, "name")
    return name


def callable_name(fn: Any) -> str:
    """How a function is named in plans and reprs: its qualified name when it has one."""
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)


# ── checks: check(value, argument, flow, step) returns the value to keep or raises ──


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


def _check_retrying(value: object, argument: str, flow: str | None, step: str | None) -> Any:
    if value is None:
        return None
    import tenacity  # only paid for by flows that use it

    if not isinstance(value, tenacity.BaseRetrying) or isinstance(value, tenacity.AsyncRetrying):
        raise _fail(f"must be a tenacity.Retrying (or None), not {type(value).__name__}", flow, step, argument)
    return value


def _check_callable_or_none(value: object, argument: str, flow: str | None, step: str | None) -> Any:
    if value is not None and not callable(value):
        raise _fail(f"must be callable or None, not {type(value).__name__}", flow, step, argument)
    return value


def _check_bool(value: object, argument: str, flow: str | None, step: str | None) -> bool:
    if not isinstance(value, bool):
        raise _fail(f"must be True or False, not {value!r}", flow, step, argument)
    return value


def _is_exception_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


def _check_retry_on(value: object, argument: str, flow: str | None, step: str | None) -> Any:
    if value is None or _is_exception_class(value):
        return value
    if isinstance(value, tuple):
        if value and all(_is_exception_class(kind) for kind in value):
            return value
        raise _fail(f"a tuple must hold exception classes only (and at least one), not {value!r}", flow, step, argument)
    if callable(value):
        return value  # a predicate: callable(exc) -> bool
    raise _fail(
        f"must be an exception class, a tuple of them, or a predicate callable(exc) -> bool, not {value!r}",
        flow,
        step,
        argument,
    )


def _describe_retry_on(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, tuple):
        return [kind.__qualname__ for kind in value]
    return value.__qualname__ if _is_exception_class(value) else "predicate"


def _name_retry_on(value: Any) -> str:
    described = _describe_retry_on(value)
    return ", ".join(described) if isinstance(described, list) else str(described)


def _show_retry_on(value: Any) -> str | None:
    return None if value is None else f"retry_on={_name_retry_on(value)}"


def _plan_retry_on(value: Any, step: Any) -> str | None:
    return None if value is None else f"retried only on {_name_retry_on(value)}"


def _check_executor(value: object, argument: str, flow: str | None, step: str | None) -> ExecutorName | None:
    if value is not None and (not isinstance(value, str) or value not in EXECUTOR_NAMES):
        raise _fail(f"unknown executor {value!r}; use 'thread', 'process' or None", flow, step, argument)
    return cast("ExecutorName | None", value)


# ── the option declaration ──────────────────────────────────────────────────────


def _same(value: Any) -> Any:
    return value


_SHOW_UNLESS_DEFAULT: Any = object()


class Option:
    """One step or group option, declared once as a ``Step`` class attribute through
    ``option()`` or a ``Group`` field through ``group_option()``.

    ``Step`` derives everything else from its options, in declaration order: the
    slots, the keywords that ``Step``, ``Flow.step`` and group mappings accept, the
    checks, ``options()``, ``repr``, the structure the journal fingerprints and the
    phrases ``flowpool show`` prints.

    Args:
        default: the value when the option is not given (not checked).
        check: ``check(value, argument, flow, step)``: the value to keep, or raise
            through ``_fail`` naming ``argument``.
        excludes: options that may not be passed at all (even as their default)
            while this one is given, that is passed as neither ``None`` nor ``False``.
            ``options()`` gives back this option when it is given, the excluded ones
            when it is not.
        fingerprint: the option's part of the definition's fingerprint, from its
            value; ``None`` leaves it out.
        fingerprint_default: ``False`` leaves the option out of the fingerprint while
            it holds its default. Use it for every option added from now on, so that
            runs journaled before the option existed still resume unforced.
        show: the ``repr`` fragment for a value (``None``: never shown); by default
            ``name=value!r`` unless the value is the default.
        plan: ``plan(value, step)``: the phrase ``flowpool show`` prints, or None.
        rule: for group options, see ``group_option``.
    """

    __slots__ = ("check", "default", "excludes", "fingerprint", "fingerprint_default", "name", "plan", "rule", "show")

    def __init__(
        self,
        default: Any,
        check: Callable[..., Any],
        *,
        excludes: tuple[str, ...] = (),
        fingerprint: Callable[[Any], Any] | None = _same,
        fingerprint_default: bool = True,
        show: Callable[[Any], str | None] | None = _SHOW_UNLESS_DEFAULT,
        plan: Callable[[Any, Any], str | None] | None = None,
        rule: Callable[[Any, Any], tuple[str, str] | None] | None = None,
    ) -> None:
        self.name = ""  # set by __set_name__
        self.default = default
        self.check = check
        self.excludes = excludes
        self.fingerprint = fingerprint
        self.fingerprint_default = fingerprint_default
        self.show = self._show_unless_default if show is _SHOW_UNLESS_DEFAULT else show
        self.plan = plan
        self.rule = rule

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _show_unless_default(self, value: Any) -> str | None:
        return None if value is self.default or value == self.default else f"{self.name}={value!r}"

    def __repr__(self) -> str:
        return f"<step option {self.name!r}>"


def option(default: Any, check: Callable[[Any, str, str | None, str | None], Any], **spec: Any) -> Any:
    """``Option(default, check, **spec)``, typed ``Any`` so that ``retries: int = option(...)`` type-checks."""
    return Option(default, check, **spec)


_T = TypeVar("_T")


def _slotted_by_options(cls: type[_T]) -> type[_T]:
    """Rebuild ``cls`` with a slot per ``name``/``fn`` and per ``Option`` (as attrs and
    ``dataclass(slots=True)`` do): the options move to the ``OPTIONS`` tuple."""
    options = tuple(value for value in vars(cls).values() if isinstance(value, Option))
    namespace = {
        key: value
        for key, value in vars(cls).items()
        if not isinstance(value, Option) and key not in ("__dict__", "__weakref__")
    }
    namespace["__slots__"] = ("name", "fn", *(o.name for o in options))
    namespace["OPTIONS"] = options
    return cast("type[_T]", type(cls.__name__, cls.__bases__, namespace))


def _given(options: Mapping[str, Any], name: str) -> bool:
    return name in options and options[name] is not None and options[name] is not False


def _plan_retries(value: int, step: Any) -> str | None:
    return f"retries {value}" if value else None


def _plan_compensate(value: Any, step: Any) -> str | None:
    if value is None:
        return None
    undo = f"compensate {callable_name(value)}"
    if step.compensate_retries:
        undo += f" (retries {step.compensate_retries})"
    if step.compensate_timeout is not None:
        undo += f" (timeout {step.compensate_timeout:g} s)"
    return undo


def _describe_retrying(value: Any) -> Any:
    # Its strategies' kinds, not their parameters: a longer wait is the same definition.
    return None if value is None else [type(getattr(value, part, None)).__name__ for part in ("stop", "wait", "retry")]


# ── group options: checks get the group's checked members and all its raw options ──


def _check_fail_fast(
    value: object, argument: str, flow: str, group: str, members: tuple[Step, ...], options: Mapping[str, Any]
) -> bool:
    return _check_bool(value, argument, flow, group)


def _check_min_successes(
    value: object, argument: str, flow: str, group: str, members: tuple[Step, ...], options: Mapping[str, Any]
) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"must be an int or None, not {value!r}", flow, group, argument)
    if not 1 <= value <= len(members):
        raise _fail(f"must be between 1 and the number of members ({len(members)}), not {value}", flow, group, argument)
    if options["fail_fast"]:
        raise _fail(
            "cannot be combined with fail_fast=True (fail fast already needs every member)", flow, group, argument
        )
    return value


def _check_max_concurrency(
    value: object, argument: str, flow: str, group: str, members: tuple[Step, ...], options: Mapping[str, Any]
) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise _fail(f"must be an int >= 1 or None, not {value!r}", flow, group, argument)
    return value


def _check_tolerated_failures(
    value: object, argument: str, flow: str, group: str, members: tuple[Step, ...], options: Mapping[str, Any]
) -> int | float | None:
    from ._policy import check_tolerance

    try:
        tolerance = check_tolerance(value)
    except ValueError as problem:
        raise _fail(str(problem), flow, group, argument) from None
    if tolerance is not None:
        for other in ("fail_fast", "min_successes"):
            if _given(options, other):
                raise _fail(f"cannot be combined with {other}", flow, group, argument)
    return tolerance


def _check_compensate_concurrency(
    value: object, argument: str, flow: str, group: str, members: tuple[Step, ...], options: Mapping[str, Any]
) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(f"must be an int >= 1, not {value!r}", flow, group, argument)
    return value


def _tolerance_rule(value: int | float | None, size: str) -> tuple[str, str] | None:
    if value is None:
        return None
    if isinstance(value, float):
        share = f"{value * 100:.4g}%"
        return (f"tolerates {share} failed", f"tolerance: fails when more than {share} of the {size} fail")
    return (f"tolerates {value} failure(s)", f"tolerance: fails when more than {value} of the {size} fail")


def _plan_compensate_concurrency(value: int, holder: Any) -> str | None:
    return None if value == 1 else f"compensates {value} at a time"


def group_option(default: Any, check: Callable[..., Any], **spec: Any) -> Any:
    """A ``Group`` field declaring a group option (see ``Option``; its ``check`` is
    ``check(value, argument, flow, group, members, options)``, and ``rule``, if given,
    is ``rule(value, group)``: the failure rule the option sets, as ``(short, long)``
    phrases, or None when it sets none)."""
    return field(default=default, metadata={"option": Option(default, check, **spec)})


def plan_phrases(step: Step) -> list[str]:
    """Short phrases for a step's options, e.g. ``["retries 2", "timeout 5 s"]``."""
    phrases = (spec.plan(getattr(step, spec.name), step) for spec in step.OPTIONS if spec.plan is not None)
    return [phrase for phrase in phrases if phrase is not None]
