"""The three scripts of issue 17's new user, rebuilt as tests (SPEC §12, §16).

1. An API batch: a map of 200 requests against a local HTTP server whose endpoints answer
   quickly, slowly, fail (500 once, 500 always, 400) or hang (a response that trickles
   forever), in thread mode, with a per-item timeout and retries of transient failures only.
2. A CPU-bound job over 40 files in process mode where one file's step hangs and ignores
   cancellation and another kills its worker.
3. A saga (reserve → charge → email) whose email times out but its abandoned attempt
   returns later, and a variant where the email is optional and fails.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from faults import first_scripts
from processes import stray_children, wait_for_file, wait_until_gone

from flowpool import (
    Context,
    Flow,
    FlowStatus,
    GroupStatus,
    StepStatus,
    StepTimeoutError,
    WorkerCrashedError,
)

# ---------------------------------------------------------------------------------------
# 1. The API batch
# ---------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 overflows under 16 concurrent clients, and a dropped SYN is
    # resent only after 1 s: as long as the step's timeout.
    request_queue_size = 128


class _Api:
    """A local HTTP server with quick, slow, failing and hanging endpoints.

    ``/ok/N`` answers at once, ``/slow/N`` after 50 ms, ``/flaky/N`` answers 500 the first
    time and 200 after, ``/down/N`` always 500, ``/bad/N`` always 400, and ``/hang/N``
    sends its headers and then one byte every 50 ms of a body that never ends, until
    ``release`` is set (so urllib's own socket timeout never fires)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with api._lock:
                    api.hits[self.path] += 1
                    hits = api.hits[self.path]
                kind = self.path.split("/")[1]
                if kind == "hang":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    while not api.release.wait(0.05):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    return
                if kind == "slow":
                    time.sleep(0.05)  # the endpoint's latency, not coordination
                if kind == "down" or (kind == "flaky" and hits == 1):
                    self.send_error(500, "try again")
                elif kind == "bad":
                    self.send_error(400, "malformed")
                else:
                    body = self.path.encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="api", daemon=True)

    def __enter__(self) -> _Api:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def api() -> Iterator[_Api]:
    with _Api() as server:
        yield server


def fetch(ctx: Context) -> str:
    with urllib.request.urlopen(ctx.input + ctx.item, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def transient(error: BaseException) -> bool:
    """Retry timeouts and server errors; a 4xx is the caller's bug and is not retried."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500
    return isinstance(error, StepTimeoutError)


def api_paths() -> list[str]:
    """200 request paths: 170 good (every tenth slow), 10 flaky, 8 down, 10 bad, 2 hanging."""
    paths = [f"/{'slow' if n % 10 == 0 else 'ok'}/{n}" for n in range(170)]
    paths += [f"/flaky/{n}" for n in range(10)]
    paths += [f"/down/{n}" for n in range(8)]
    paths += [f"/bad/{n}" for n in range(10)]
    paths += [f"/hang/{n}" for n in range(2)]
    return paths


@pytest.mark.timeout(120)
def test_api_batch_retries_only_transient_failures_and_cuts_hung_requests(api: _Api) -> None:
    paths = api_paths()
    flow = Flow("users").map(
        "fetch",
        fetch,
        items=paths,
        key=lambda path: path,
        timeout=2.0,
        retries=2,
        retry_on=transient,
        tolerated_failures=25,
    )
    started = time.monotonic()
    result = flow.run(api.base, executor="thread", max_workers=16)
    elapsed = time.monotonic() - started

    # Without flowpool's timeout the hanging requests would never end; with it, each hung
    # attempt is cut after 2 s and retried twice (generous bound for a loaded machine).
    assert elapsed < 60
    assert result.status is FlowStatus.COMPLETED
    batch = result.maps["fetch"]
    assert batch.status is GroupStatus.PARTIAL
    assert batch.total == 200
    assert batch.counts[StepStatus.COMPLETED] == 180
    assert batch.counts[StepStatus.FAILED] == 18
    assert batch.counts[StepStatus.TIMED_OUT] == 2
    assert batch.counts[StepStatus.CANCELLED] == 0
    assert batch.counts[StepStatus.SKIPPED] == 0
    assert not batch.stopped_early
    assert result.to_dict()["maps"]["fetch"]["counts"]["timed_out"] == 2

    items = {item.key: item for item in batch.items}
    for path in paths:
        kind = path.split("/")[1]
        item = items[path]
        if kind in ("ok", "slow"):
            assert (item.status, item.value, item.attempts) == (StepStatus.COMPLETED, path, 1), (path, item.error)
        elif kind == "flaky":
            assert (item.status, item.value, item.attempts) == (StepStatus.COMPLETED, path, 2), path
        elif kind == "down":
            assert item.status is StepStatus.FAILED and item.attempts == 3, path
            assert isinstance(item.error, urllib.error.HTTPError) and item.error.code == 500
        elif kind == "bad":
            assert item.status is StepStatus.FAILED and item.attempts == 1, path
            assert isinstance(item.error, urllib.error.HTTPError) and item.error.code == 400
        else:
            assert item.status is StepStatus.TIMED_OUT and item.attempts == 3, path
            assert isinstance(item.error, StepTimeoutError)
    # The server saw what the results say: no 400 was sent twice, every 500 was retried.
    assert all(api.hits[f"/bad/{n}"] == 1 for n in range(10))
    assert all(api.hits[f"/down/{n}"] == 3 for n in range(8))
    assert all(api.hits[f"/flaky/{n}"] == 2 for n in range(10))
    assert all(api.hits[f"/hang/{n}"] == 3 for n in range(2))
    # The hung requests' abandoned attempts still trickle (until the server releases
    # them at the end of the test): the result says so.
    assert set(result.still_running) == {"fetch['/hang/0']", "fetch['/hang/1']"}
    assert batch.values["/flaky/3"] == "/flaky/3"
    assert len(batch.values) == 180


# ---------------------------------------------------------------------------------------
# 2. The CPU-bound job over files, in process mode
# ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_file_job_kills_the_hung_file_and_fails_only_the_crashed_one(tmp_path: Path) -> None:
    files = []
    for n in range(40):
        file = tmp_path / f"file{n:02}.txt"
        file.write_text({13: "hang", 27: "crash"}.get(n, f"contents of file {n}\n" * (n + 1)))
        files.append(str(file))
    # Children that were alive before this run (a session's Dask cluster, say) are not its leftovers.
    before = {child.pid for child in stray_children()}
    flow = Flow("files").map(
        "digest", first_scripts.digest_file, items=files, key=lambda path: Path(path).name, timeout=3.0
    )
    result = flow.run(executor="process", max_workers=2)

    assert result.status is FlowStatus.COMPLETED
    digests = result.maps["digest"]
    assert digests.status is GroupStatus.PARTIAL
    assert digests.total == 40
    assert digests.counts[StepStatus.COMPLETED] == 38
    assert digests.counts[StepStatus.TIMED_OUT] == 1
    assert digests.counts[StepStatus.FAILED] == 1
    assert [(item.key, item.status) for item in digests.failed] == [
        ("file13.txt", StepStatus.TIMED_OUT),
        ("file27.txt", StepStatus.FAILED),
    ]
    hung, crashed = digests.failed
    assert isinstance(hung.error, StepTimeoutError) and hung.attempts == 1
    assert hung.duration is not None and hung.duration < 30
    assert isinstance(crashed.error, WorkerCrashedError) and crashed.attempts == 1
    for path in files:
        name = Path(path).name
        if name not in ("file13.txt", "file27.txt"):
            assert digests.values[name] == first_scripts.digest_text(Path(path).read_text()), name
    assert result.still_running == ()

    # The hung step's worker was killed, not left sleeping; nothing else was left behind.
    hung_pid = int(wait_for_file(tmp_path / "file13.pid", within=5))
    assert not wait_until_gone([hung_pid], within=10)
    leftovers = [child.pid for child in stray_children() if child.pid not in before]
    assert not wait_until_gone(leftovers, within=10)


# ---------------------------------------------------------------------------------------
# 3. The saga
# ---------------------------------------------------------------------------------------


class _Shop:
    """reserve → charge → email, each undoable; ``undone`` records every compensation."""

    def __init__(self) -> None:
        self.undone: list[tuple[str, Any]] = []
        self.email_may_return = threading.Event()
        self.email_returned = threading.Event()
        self.emails_sent: list[str] = []

    def reserve(self, ctx: Context) -> str:
        return f"reservation for {ctx.input}"

    def charge(self, ctx: Context) -> str:
        return f"charge of {ctx.input}"

    def slow_email(self, ctx: Context) -> str:
        # The mail server answers only after the step's timeout: the test releases it once
        # flowpool has reported the step timed out.
        try:
            if not self.email_may_return.wait(timeout=30):
                raise AssertionError("the email was never released")
            self.emails_sent.append(ctx.input)
            return f"email to {ctx.input}"
        finally:
            self.email_returned.set()

    def failing_email(self, ctx: Context) -> str:
        raise ConnectionRefusedError("smtp server down")

    def undo(self, name: str) -> Any:
        def compensate(ctx: Context, value: Any) -> None:
            self.undone.append((name, value))

        return compensate

    def flow(self, email: Any, **email_options: Any) -> Flow:
        return (
            Flow("order")
            .step("reserve", self.reserve, compensate=self.undo("reserve"))
            .step("charge", self.charge, compensate=self.undo("charge"))
            .step("email", email, compensate=self.undo("email"), **email_options)
        )


@pytest.mark.timeout(60)
def test_saga_compensates_an_email_that_was_sent_after_its_timeout() -> None:
    shop = _Shop()

    def on_event(event: Any) -> None:
        if event.kind == "step_finished" and event.step == "email":
            shop.email_may_return.set()

    try:
        result = shop.flow(shop.slow_email, timeout=0.3).run("alice", executor="thread", on_event=on_event)
    finally:
        shop.email_may_return.set()

    assert result.status is FlowStatus.FAILED
    assert result.failed_stage == "email"
    email = result.steps["email"]
    assert email.status is StepStatus.TIMED_OUT
    assert isinstance(email.error, StepTimeoutError)
    # The abandoned attempt returned within the wait: its value is kept and undone.
    assert shop.emails_sent == ["alice"]
    assert email.late_value == "email to alice"
    assert email.value is None
    assert result.still_running == ()
    assert result.compensated == ("email", "charge", "reserve")
    assert shop.undone == [
        ("email", "email to alice"),
        ("charge", "charge of alice"),
        ("reserve", "reservation for alice"),
    ]
    assert result.not_compensated == ()
    assert all(result.steps[name].compensation.status == "compensated" for name in result.compensated)  # type: ignore[union-attr]
    assert result.to_dict()["steps"]["email"]["late_value"] == "email to alice"
    # The timeout's note shows the user's line that was stuck, not flowpool's internals.
    assert "in slow_email" in "\n".join(getattr(email.error, "__notes__", []))


@pytest.mark.timeout(60)
def test_saga_reports_an_email_still_running_after_the_wait() -> None:
    shop = _Shop()
    try:
        result = shop.flow(shop.slow_email, timeout=0.3).run("carol", executor="thread")
        assert shop.emails_sent == []
    finally:
        shop.email_may_return.set()

    assert result.status is FlowStatus.FAILED
    email = result.steps["email"]
    assert email.status is StepStatus.TIMED_OUT
    assert email.late_value is None
    # Nothing to undo yet, so the email is not compensated, but the result says it may
    # still happen instead of staying silent.
    assert result.still_running == ("email",)
    assert result.not_compensated == ()
    assert email.compensation is None
    assert result.compensated == ("charge", "reserve")
    assert shop.undone == [("charge", "charge of carol"), ("reserve", "reservation for carol")]
    assert result.to_dict()["still_running"] == ["email"]
    # ...and it does: the abandoned attempt sends the email once released.
    assert shop.email_returned.wait(timeout=10)
    assert shop.emails_sent == ["carol"]


@pytest.mark.timeout(60)
def test_saga_with_an_optional_email_that_fails_keeps_the_charge() -> None:
    shop = _Shop()
    result = shop.flow(shop.failing_email, optional=True).run("bob", executor="thread")

    assert result.status is FlowStatus.COMPLETED
    assert result.ok
    assert result.failed_stage is None
    email = result.steps["email"]
    assert email.status is StepStatus.FAILED
    assert isinstance(email.error, ConnectionRefusedError)
    assert result.steps["charge"].status is StepStatus.COMPLETED
    assert result.values["charge"] == "charge of bob"
    assert result.compensated == ()
    assert shop.undone == []
    assert result.steps["charge"].compensation is None
