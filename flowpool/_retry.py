"""Retry policies on top of tenacity, driven from the settle loop.

tenacity's own loop sleeps in the calling thread; flowpool instead asks it,
after each attempt, what to do next (``Retrying.iter``): ``DoSleep(s)`` becomes
a deadline in the settle loop, so no worker is ever held by a backoff. A step
with ``retries=N`` and no custom policy runs its first attempt without tenacity
at all and only enters it after a failure.
"""

from __future__ import annotations

from typing import Any

from ._errors import FlowpoolError, RetryRejectedError, StepCancelledError
from ._record import record

__all__ = ["Decision", "RetryDriver", "default_retrying"]

# "A short exponential backoff": 50 ms, 100 ms, 200 ms … capped at 2 s, with jitter
# so that failing siblings do not retry in lockstep.
BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 2.0
BACKOFF_JITTER = 0.05


def default_retrying(retries: int) -> Any:
    """The policy behind ``retries=N``: N extra attempts, short jittered backoff."""
    import tenacity

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=tenacity.wait_exponential(multiplier=BACKOFF_INITIAL, max=BACKOFF_MAX)
        + tenacity.wait_random(0, BACKOFF_JITTER),
        retry=tenacity.retry_if_exception(lambda error: not isinstance(error, StepCancelledError)),
        reraise=True,
    )


def backoff_delay(attempt: int) -> float:
    """The default backoff before attempt ``attempt + 1`` (no jitter; for compensations)."""
    return float(min(BACKOFF_INITIAL * 2 ** (attempt - 1), BACKOFF_MAX))


@record
class Decision:
    """What to do after an attempt: retry after ``delay`` seconds, or stop with
    ``value`` (``ok``) or ``error``."""

    retry: bool
    delay: float = 0.0
    ok: bool = False
    value: Any = None
    error: BaseException | None = None

    def __init__(
        self, retry: bool, delay: float = 0.0, ok: bool = False, value: Any = None, error: BaseException | None = None
    ) -> None:
        _set = object.__setattr__
        _set(self, "retry", retry)
        _set(self, "delay", delay)
        _set(self, "ok", ok)
        _set(self, "value", value)
        _set(self, "error", error)


class RetryDriver:
    """One step's tenacity state, driven one outcome at a time from one thread."""

    __slots__ = ("_retrying", "_state", "_step")

    def __init__(self, step: str, retrying: Any, first_attempt_started: float | None) -> None:
        import tenacity

        self._step = step
        self._retrying = retrying.copy()
        self._retrying.begin()
        self._state = tenacity.RetryCallState(self._retrying, None, (), {})
        if first_attempt_started is not None:
            # The first attempt ran before tenacity was entered; count it for delay-based stops.
            self._state.start_time = min(self._state.start_time, first_attempt_started)
        self._begin_attempt()

    def _begin_attempt(self) -> None:
        import tenacity

        action = self._retrying.iter(self._state)  # runs the user's ``before`` hook
        if not isinstance(action, tenacity.DoAttempt):  # pragma: no cover - tenacity contract
            raise FlowpoolError(f"step {self._step!r}: tenacity did not ask for an attempt ({action!r})")

    def next_attempt(self) -> None:
        """Tell tenacity the next attempt starts now (after a backoff)."""
        self._state.prepare_for_next_attempt()
        self._begin_attempt()

    def decide(self, ok: bool, value: Any, error: BaseException | None) -> Decision:
        """Record an attempt's outcome and return what tenacity says to do next."""
        import tenacity

        state = self._state
        if ok:
            state.set_result(value)
        else:
            assert error is not None
            state.set_exception((type(error), error, error.__traceback__))
        try:
            action = self._retrying.iter(state)
        except tenacity.RetryError as retry_error:
            last = retry_error.last_attempt
            if last.failed:
                return Decision(retry=False, error=last.exception())
            return Decision(retry=False, error=RetryRejectedError(self._step, state.attempt_number))
        except BaseException as raised:  # the attempt's own error (reraise) or a hook's
            if isinstance(raised, KeyboardInterrupt | SystemExit):
                raise
            return Decision(retry=False, error=raised)
        if isinstance(action, tenacity.DoSleep):
            return Decision(retry=True, delay=float(action))
        if isinstance(action, tenacity.DoAttempt):  # pragma: no cover - only after prepare
            return Decision(retry=True)
        return Decision(retry=False, ok=True, value=action)
