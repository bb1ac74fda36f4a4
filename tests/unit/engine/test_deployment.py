"""The engine deployment's pure logic (deployments/engine/deployment.py): the stall rule."""

from __future__ import annotations

from deployments.engine.deployment import stalled


def test_only_an_engine_with_work_and_no_output_is_stalled():
    assert stalled(in_flight=3, quiet_s=121, timeout_s=120)
    assert not stalled(in_flight=3, quiet_s=5, timeout_s=120), "busy and producing"
    assert not stalled(in_flight=0, quiet_s=10_000, timeout_s=120), "idle"
