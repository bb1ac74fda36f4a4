"""Prometheus metrics of one router replica, served on ``GET /metrics``.

Each router replica counts what passed through it, in a registry of its own (so two
replicas in one process never share counters). Scrape every router replica, or sum
over them, for the whole service. Everything here is updated once per request or
once per stream, never per token.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from deployments.routing import process_decision_counts

# Latency buckets from a few ms (TTFT at low load) to minutes (long generations).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RouterMetrics:
    """The counters and histograms the router keeps."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "glm_serve_requests", "HTTP requests by endpoint and status code.",
            ["endpoint", "status"], registry=self.registry,
        )
        self.in_flight = Gauge(
            "glm_serve_requests_in_flight", "Generation requests being served now.", registry=self.registry,
        )
        self.admitted = Gauge(
            "glm_serve_requests_admitted", "Generation requests counted against router.max_in_flight_requests.",
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "glm_serve_prompt_tokens", "Prompt tokens of finished requests.", registry=self.registry,
        )
        self.completion_tokens = Counter(
            "glm_serve_completion_tokens", "Generated tokens of finished requests.", registry=self.registry,
        )
        self.ttft = Histogram(
            "glm_serve_time_to_first_token_seconds", "Request arrival to first streamed token.",
            buckets=_BUCKETS, registry=self.registry,
        )
        self.latency = Histogram(
            "glm_serve_request_latency_seconds", "Request arrival to last byte, by endpoint.",
            ["endpoint"], buckets=_BUCKETS, registry=self.registry,
        )

        self.registry.register(_RoutingDecisions())

    def render(self) -> bytes:
        """Prometheus text exposition of everything above."""
        return generate_latest(self.registry)


class _RoutingDecisions:
    """How the prefix request router (which runs in this process, inside the handle to the
    engine deployment) placed requests: affinity, spilled on load, new, hint."""

    def collect(self):
        family = CounterMetricFamily("glm_serve_routing_decisions", "Engine replica choices of the prefix router.",
                                     labels=["decision"])
        for label, count in sorted(process_decision_counts().items()):
            family.add_metric([label], count)
        yield family
