"""Fixtures of the behaviour suite only; the executor modes come from ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture
def started_timeout(executor_mode: str) -> Callable[[float], float]:
    """A step timeout for tests that need the attempt to have really started when it passes.

    On Dask a timeout counts from the submission (SPEC §9: soft; the backend cannot see a
    task start), so there it allows a second for the cluster to pick the task up.
    """
    return (lambda seconds: max(seconds, 1.0)) if executor_mode == "dask" else (lambda seconds: seconds)
