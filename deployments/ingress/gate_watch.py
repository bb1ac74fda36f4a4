"""Whether generation requests reach this router replica through glm-serve's gate in
Serve's proxy (:mod:`deployments.proxy_gate`).

The gate is installed per node, through an environment variable read when Ray starts
(docs/operations.md lists the ways); an app deployed with ``serve deploy`` to a cluster
started without it runs without the gate, and nothing else would say so. The gate marks
each request it passes with :data:`~deployments.proxy_gate.GATE_HEADER` (replacing any
copy a client sent); this watch counts the generation requests that came without the
mark, shows the state in ``/health``, counts them in ``/metrics``
(``glm_serve_requests_bypassing_gate_total``) and warns in the router's log.
"""

from __future__ import annotations

import logging
import time

from deployments.ingress.metrics import IngressMetrics

logger = logging.getLogger("glm_serve.router")

WARN_EVERY_S = 300.0
"""Least time between two warnings of requests that bypassed the gate."""


class ProxyGateWatch:
    """Counts generation requests with and without the gate's mark."""

    def __init__(self, metrics: IngressMetrics) -> None:
        self._metrics = metrics
        self.through = 0
        self.bypassed = 0
        self.last_through: bool | None = None
        self._warned_at = float("-inf")

    def saw(self, mark: str | None) -> None:
        """A generation request arrived; ``mark``: the gate's header, if it has one."""
        self.last_through = bool(mark)
        if mark:
            self.through += 1
            return
        self.bypassed += 1
        self._metrics.gate_bypassed.inc()
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            logger.warning(
                "%d generation request(s) reached this router without glm-serve's proxy gate: Serve's proxy on "
                "their node runs without it (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH="
                "deployments.proxy_gate.middlewares was not set where `ray start` ran), so overload there is "
                "refused by the routers alone and stalled clients are not cut (docs/operations.md)", self.bypassed)

    def state(self) -> dict[str, object]:
        """For ``/health``: ``active`` (the last generation request came through the gate),
        ``absent`` (it did not), or ``unknown`` (none yet), with the counts."""
        status = "unknown" if self.last_through is None else "active" if self.last_through else "absent"
        return {"status": status, "through": self.through, "bypassed": self.bypassed}
