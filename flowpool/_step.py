"""Steps: ``Step`` (a name, a function or a subflow, and its options) and ``Always``.

Each option is declared once, in ``Step``'s body (``_options.option``); the
declaration checks it, shows it in ``repr``, plans it for ``flowpool show`` and
puts it in the journal's fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ._options import (
    _MISSING,
    ExecutorName,
    Option,
    _check_bool,
    _check_callable_or_none,
    _check_count,
    _check_executor,
    _check_retry_on,
    _check_retrying,
    _check_seconds,
    _describe_retry_on,
    _describe_retrying,
    _fail,
    _given,
    _plan_compensate,
    _plan_retries,
    _plan_retry_on,
    _show_retry_on,
    _slotted_by_options,
    callable_name,
    check_name,
    option,
)

if TYPE_CHECKING:
    from ._context import Context
    from ._definition import Flow

__all__ = ["STEP_OPTIONS", "Always", "Step"]


@_slotted_by_options
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
        retry_on: retry only failures that match: an exception class, a tuple of them
            (``isinstance``), or a predicate ``callable(exc) -> bool``; default: every
            ``Exception``. Not together with ``retry``.
        optional: when the step does not complete, its status and error are recorded
            but it never fails the flow, never triggers fail fast, and is left out of
            its group's verdict. Not together with ``required``.
        when: ``when(ctx) -> bool``, called in the caller's thread when the stage
            starts: false leaves the step ``SKIPPED`` (never called, never failing the
            flow, left out of its group's verdict); an exception fails the step.
        executor: ``"thread"`` or ``"process"`` to run this step on another kind of
            pool than the run's; ``None`` uses the run's.
        input: for a subflow only (``fn`` is a ``Flow``): ``input(ctx)`` gives the child
            flow's input (default: the map's item, else the parent's input).

    ``fn`` may be a ``Flow``: the step is then a subflow, run by the same loop on the
    same executor; its value is the child's ``values``.
    """

    # The step's options, in the order options are checked, shown and planned. Each
    # declaration is the option's only home: see ``option()``.
    retries: int = option(0, _check_count, plan=_plan_retries)
    retry: Any = option(
        None,
        _check_retrying,
        excludes=("retries",),
        fingerprint=_describe_retrying,
        show=lambda value: None if value is None else "retry=<tenacity>",
        plan=lambda value, step: None if value is None else "custom tenacity retry policy",
    )
    timeout: float | None = option(
        None,
        _check_seconds,
        show=lambda value: None if value is None else f"timeout={value:g}",
        plan=lambda value, step: None if value is None else f"timeout {value:g} s",
    )
    compensate: Callable[[Context, Any], Any] | None = option(
        None,
        _check_callable_or_none,
        fingerprint=lambda value: value is not None,
        show=lambda value: None if value is None else "compensate=...",
        plan=_plan_compensate,
    )
    compensate_retries: int = option(0, _check_count, show=None)  # planned with compensate
    compensate_timeout: float | None = option(None, _check_seconds, show=None)  # planned with compensate
    required: bool = option(False, _check_bool, plan=lambda value, step: "required" if value else None)
    executor: ExecutorName | None = option(
        None, _check_executor, plan=lambda value, step: None if value is None else f"on {value}"
    )
    retry_on: Any = option(
        None,
        _check_retry_on,
        excludes=("retry",),
        fingerprint=_describe_retry_on,
        fingerprint_default=False,
        show=_show_retry_on,
        plan=_plan_retry_on,
    )
    optional: bool = option(
        False,
        _check_bool,
        excludes=("required",),
        fingerprint_default=False,
        plan=lambda value, step: "optional" if value else None,
    )
    when: Callable[[Context], bool] | None = option(
        None,
        _check_callable_or_none,
        fingerprint=lambda value: value is not None,
        fingerprint_default=False,
        show=lambda value: None if value is None else f"when={callable_name(value)}",
        plan=lambda value, step: None if value is None else f"only when {callable_name(value)}",
    )
    input: Callable[[Context], Any] | None = option(
        None,
        _check_callable_or_none,
        fingerprint=lambda value: value is not None,
        fingerprint_default=False,
        show=lambda value: None if value is None else f"input={callable_name(value)}",
        plan=lambda value, step: None if value is None else f"input from {callable_name(value)}",
    )

    OPTIONS: ClassVar[tuple[Option, ...]]
    name: str
    fn: Callable[[Context], Any]

    def __init__(self, name: str, fn: Callable[[Context], Any] | Flow, **options: Any) -> None:
        self._build(None, name, fn, options)

    @classmethod
    def checked(cls, flow: str | None, name: object, fn: object, options: Mapping[str, Any]) -> Step:
        """Build a step whose errors name ``flow``; ``options`` may hold only step options."""
        step = cls.__new__(cls)
        step._build(flow, name, fn, options)
        return step

    def _build(self, flow: str | None, name: object, fn: object, options: Mapping[str, Any]) -> None:
        name = check_name(name, flow=flow, what="step")
        unknown = sorted((key for key in options if key not in STEP_OPTIONS), key=repr)
        if unknown:
            raise _fail(
                f"unknown option(s) {', '.join(map(repr, unknown))}; known options: {', '.join(STEP_OPTIONS)}",
                flow,
                name,
                unknown[0],
            )
        from ._definition import Flow  # the flow module imports this one

        subflow = isinstance(fn, Flow)
        if not subflow and not callable(fn):
            raise _fail(f"must be callable or a Flow, not {type(fn).__name__}", flow, name, "fn")
        if subflow and options.get("compensate") is not None:
            raise _fail(
                "a subflow compensates itself (its steps' compensations, in reverse order); "
                "put compensate= on the child's steps",
                flow,
                name,
                "compensate",
            )
        if not subflow and options.get("input") is not None:
            raise _fail("'input' applies only to a subflow (a Flow given as fn)", flow, name, "input")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)
        for spec in self.OPTIONS:
            value = options.get(spec.name, _MISSING)
            value = spec.default if value is _MISSING else spec.check(value, spec.name, flow, name)
            if spec.excludes and _given(options, spec.name):
                for other in spec.excludes:
                    if other in options:
                        raise _fail(f"give either {other!r} or {spec.name!r}, not both", flow, name, spec.name)
            object.__setattr__(self, spec.name, value)

    def __setattr__(self, attribute: str, value: object) -> None:
        raise AttributeError(f"Step is immutable; cannot set {attribute!r}")

    @property
    def subflow(self) -> Flow | None:
        """The child flow when ``fn`` is a ``Flow`` (a subflow); None for a function."""
        from ._definition import Flow  # the flow module imports this one

        fn: object = self.fn
        return fn if isinstance(fn, Flow) else None

    def options(self) -> dict[str, Any]:
        """The step's options, as keyword arguments that rebuild it."""
        options = {spec.name: getattr(self, spec.name) for spec in self.OPTIONS}
        for spec in self.OPTIONS:
            if not spec.excludes:
                continue
            if _given(options, spec.name):
                for other in spec.excludes:
                    options.pop(other, None)
            else:
                options.pop(spec.name, None)
        return options

    def __repr__(self) -> str:
        shown = [f"{self.name!r}", getattr(self.fn, "__qualname__", repr(self.fn))]
        fragments = (spec.show(getattr(self, spec.name)) for spec in self.OPTIONS if spec.show is not None)
        shown.extend(fragment for fragment in fragments if fragment is not None)
        return f"Step({', '.join(shown)})"


#: The names of ``Step``'s options, in declaration order.
STEP_OPTIONS: tuple[str, ...] = tuple(spec.name for spec in Step.OPTIONS)


class Always(Step):
    """An always-stage (``Flow.always``): a step that runs after the rest of the flow
    has finished, whatever its outcome, and after the compensations."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Always" + super().__repr__().removeprefix("Step")
