"""SPEC §§2-8, end to end: one behaviour suite run in every executor mode, a module a section.

Every test takes the ``executor`` fixture (through ``run_kw``/``executors``), so it
runs once per mode listed in ``conftest.MODES``: flowpool's threads, a user's thread
pool, flowpool's worker processes and a Dask cluster. Tests that only make sense in
some modes carry ``@pytest.mark.modes(...)`` with the reason.

Step functions may run in another process, so everything they share with the test
lives in files under ``tmp_path`` (``_behaviour_helpers``): ``Log`` and ``Record``
stand in for lists and dicts, ``Gate`` (from the ``gates`` fixture, released even
when a test fails) and ``FileBarrier`` for ``threading.Event``/``Barrier``. Step
functions are defined inside the tests, so cloudpickle sends them by value; the
helpers they call travel by reference. Nothing sleeps to coordinate, and every
blocking wait has a timeout. Backoffs run on ``AutoJumpClock``; timeout semantics
use the real clock with generous bounds.

Where a mode's documented semantics differ (SPEC §§4-5, §9), a test asserts each
mode's own: values and exceptions come back from a worker as copies (so identity is
checked only where steps run in this process); a timed-out or stopped process-mode
attempt is killed, so it never returns late; compensations of process and Dask steps
run in a worker, not in the caller's thread; on Dask ``ctx.cancelled`` stays False.
"""
