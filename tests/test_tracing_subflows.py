"""OpenTelemetry spans of a subflow (SPEC §13, §14): its stages nest under the attempt of
the step that runs it, so a child's steps sit in the parent's trace where they ran."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from test_tracing import exporter, no_provider, parent_id  # noqa: F401 - the fixtures

from flowpool import Flow


@pytest.mark.timeout(60)
def test_a_subflow_s_stages_and_attempts_nest_under_its_attempt_span(exporter) -> None:  # noqa: F811
    child = Flow("order").step("charge", lambda ctx: 1)
    result = Flow("shop").step("sub", child).run()
    assert result.ok
    spans = exporter.get_finished_spans()
    by_kind: dict[str, list] = {}
    for span in spans:
        by_kind.setdefault(span.name, []).append(span)
    (run_span,) = [s for s in spans if s.attributes.get("flowpool.run_id") and s.parent is None]
    attempts = {s.attributes.get("flowpool.step"): s for s in spans if "flowpool.attempt" in (s.attributes or {})}
    sub_attempt, charge_attempt = attempts["sub"], attempts["charge"]
    stages = {s.attributes.get("flowpool.step"): s for s in spans if s not in attempts.values() and s is not run_span}
    # sub's stage under the run; charge's stage under sub's attempt; charge's attempt under its stage
    assert parent_id(stages["sub"]) == run_span.context.span_id
    assert parent_id(sub_attempt) == stages["sub"].context.span_id
    assert parent_id(stages["charge"]) == sub_attempt.context.span_id
    assert parent_id(charge_attempt) == stages["charge"].context.span_id
    assert len({s.context.trace_id for s in spans}) == 1
