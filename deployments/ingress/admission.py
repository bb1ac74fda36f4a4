"""Admission and accounting of one router replica: the cap on generation requests in
flight, the share of it batch tenants may fill, and the one place a request is counted,
its tenant's units settled, and its line logged when it ends."""

from __future__ import annotations

import time

from deployments.core.errors import overloaded
from deployments.ingress import access_log
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.metrics import IngressMetrics
from deployments.openai_api.routes import ADMITTED_ROUTES, GENERATION_ROUTES
from deployments.tenants.quota_service import TenantQuotas

QUIET_ROUTES = frozenset({"/health", "/metrics"})
"""Probes and scrapes that succeed are counted but not logged: they come every few seconds."""


class Admission:
    """Counts the generation requests this replica serves now against ``cap``
    (``router.max_in_flight_requests``; None: no cap), and closes each request's record."""

    def __init__(self, cap: int | None, metrics: IngressMetrics, quotas: TenantQuotas | None = None,
                 batch_share: float = 1.0) -> None:
        self.cap = cap
        self.batch_cap = None if cap is None else max(1, int(cap * batch_share))
        """Past this many in flight, batch tenants' requests are refused (interactive ones are not)."""
        self.generating = 0
        self.quotas = quotas
        self._metrics = metrics
        access_log.setup()

    def admit(self, record: RequestRecord) -> None:
        """Refuse a generation request at once, before its body is read, when this replica
        already serves ``cap`` (a batch tenant's, ``batch_cap``): under a burst the cheapest
        answer is the one that does no work. The place is released in :meth:`finish`."""
        cap = self.batch_cap if record.batch else self.cap
        if cap is not None and self.generating >= cap:
            raise overloaded()
        self.generating += 1
        self._metrics.admitted.set(self.generating)
        record.admitted = True

    def finish(self, record: RequestRecord) -> None:
        """The one place a request is counted and logged, when it ends.

        Its end has one owner at a time: :meth:`IngressDeployment.__call__
        <deployments.ingress.deployment.IngressDeployment.__call__>` until it returns a
        stream, then the stream's relay (:func:`deployments.ingress.engine_calls.stream`),
        which ends it when the stream does, or when its body is dropped unread. The guard
        below only makes a second call harmless; no path relies on it."""
        if record.finished:
            return
        record.finished = True
        metrics = self._metrics
        if record.admitted:
            self.generating -= 1
            metrics.admitted.set(self.generating)
        if record.ticket is not None and self.quotas is not None:
            # Refused here after its tenant's limits let it in: the request is not the tenant's to pay.
            self.quotas.finish(record.ticket, record.prompt_tokens + record.completion_tokens,
                               refund_request=not record.admitted)
        duration_s = time.perf_counter() - record.start
        metrics.requests.labels(record.route, str(record.status)).inc()
        metrics.latency.labels(record.route).observe(duration_s)
        if record.status == 200 and record.ttft_s is not None and record.completion_tokens > 1:
            # A stream's mean inter-token latency, once per stream, never per token.
            metrics.time_per_output_token.observe((duration_s - record.ttft_s) / (record.completion_tokens - 1))
        metrics.prompt_tokens.inc(record.prompt_tokens)
        metrics.completion_tokens.inc(record.completion_tokens)
        if record.tenant is not None and record.route in ADMITTED_ROUTES:
            metrics.count_tenant(record.tenant, record.status, record.prompt_tokens, record.completion_tokens,
                                 record.cached_tokens, record.error_code)
        if record.adapter is not None and record.route in GENERATION_ROUTES:
            metrics.count_adapter(record.adapter, record.status, record.prompt_tokens, record.completion_tokens)
        if record.route in GENERATION_ROUTES:
            metrics.export_routing()
        if record.status != 200 or record.route not in QUIET_ROUTES:
            access_log.logger.info(record.line())
