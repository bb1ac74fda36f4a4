"""The router's view of the proxy gate (deployments/ingress/gate_watch.py)."""

from __future__ import annotations

import logging

from deployments.ingress.gate_watch import ProxyGateWatch
from deployments.ingress.metrics import IngressMetrics


def test_requests_without_the_gates_mark_are_counted_shown_and_warned_once(caplog):
    metrics = IngressMetrics()
    watch = ProxyGateWatch(metrics)
    assert watch.state() == {"status": "unknown", "through": 0, "bypassed": 0}
    watch.saw("1")
    assert watch.state()["status"] == "active"
    with caplog.at_level(logging.WARNING, logger="glm_serve.router"):
        watch.saw(None)
        watch.saw(None)
    assert watch.state() == {"status": "absent", "through": 1, "bypassed": 2}
    warnings = [r for r in caplog.records if "without glm-serve's proxy gate" in r.getMessage()]
    assert len(warnings) == 1, "one warning, not one per request"
    assert b"glm_serve_requests_bypassing_gate_total 2.0" in metrics.render()
