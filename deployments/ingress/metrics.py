"""Prometheus metrics of one router replica, served on ``GET /metrics``.

Each router replica counts what passed through it, in a registry of its own (so two
replicas in one process never share counters). Scrape every router replica, or sum
over them, for the whole service. Everything here is updated once per request or
once per stream, never per token. The ``glm_serve_engine_*`` series are different:
every router replica shows every engine replica's vLLM counters, as Serve last
collected them (take ``max by (replica)`` across router replicas, not a sum);
deploy/grafana/glm-serve.json queries both kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from deployments.core.engine_snapshot import AdapterCounts, EngineSnapshot
from deployments.routing.live_choosers import decision_counts, engine_replica_stats, lookup_counts
from deployments.routing.placement_service import LOOKUP_RESULTS

# Latency buckets from a few ms (TTFT at low load) to minutes (long generations).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Inter-token latency: a GPU engine's ~10-50 ms to a loaded CPU engine's ~1 s.
_ITL_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)


class _Series:
    """One series in the router replica's own registry (``GET /metrics``) and, when
    exported, the same through Ray's metrics agent (:mod:`ray.serve.metrics`, which tags
    it with the application, deployment and replica): ``labels(...)``, ``inc``, ``dec``,
    ``set`` and ``observe`` act on both."""

    __slots__ = ("_local", "_ray", "_labelnames", "_tags", "_value")

    def __init__(self, local: Any, exported: Any, labelnames: tuple[str, ...] = (),
                 tags: dict[str, str] | None = None) -> None:
        self._local, self._ray, self._labelnames, self._tags = local, exported, labelnames, tags
        self._value = 0.0  # a gauge's value: Ray's gauges can only be set

    def labels(self, *values: str) -> _Series:
        tags = dict(zip(self._labelnames, values, strict=True)) if self._ray is not None else None
        return _Series(self._local.labels(*values), self._ray, tags=tags)

    def inc(self, amount: float = 1) -> None:
        self._local.inc(amount)
        if self._ray is not None:
            if hasattr(self._ray, "set"):
                self._value += amount
                self._ray.set(self._value, self._tags)
            elif amount > 0:  # Ray's counters refuse 0
                self._ray.inc(amount, self._tags)

    def dec(self, amount: float = 1) -> None:
        self.inc(-amount)

    def set(self, value: float) -> None:
        self._local.set(value)
        if self._ray is not None:
            self._value = value
            self._ray.set(value, self._tags)

    def observe(self, value: float) -> None:
        self._local.observe(value)
        if self._ray is not None:
            self._ray.observe(value, self._tags)


class IngressMetrics:
    """The counters and histograms the router keeps. ``export``: also through Ray's metrics
    agent, as ``ray_glm_serve_*`` (``router.export_ray_metrics``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, export: bool = False) -> None:
        self.registry = CollectorRegistry()
        self._export = export
        self.requests = self._series(Counter, "glm_serve_requests", "HTTP requests by endpoint and status code.",
                                     ("endpoint", "status"))
        self.in_flight = self._series(Gauge, "glm_serve_requests_in_flight", "Generation requests being served now.")
        self.admitted = self._series(
            Gauge, "glm_serve_requests_admitted",
            "Generation requests counted against router.max_in_flight_requests.")
        self.gate_bypassed = self._series(
            Counter, "glm_serve_requests_bypassing_gate",
            "Generation and /tokenize requests that reached the router without glm-serve's gate in Serve's proxy.")
        self.prompt_tokens = self._series(Counter, "glm_serve_prompt_tokens", "Prompt tokens of finished requests.")
        self.completion_tokens = self._series(
            Counter, "glm_serve_completion_tokens", "Generated tokens of finished requests.")
        self.ttft = self._series(Histogram, "glm_serve_time_to_first_token_seconds",
                                 "Request arrival to first streamed token.", buckets=_BUCKETS)
        self.time_per_output_token = self._series(
            Histogram, "glm_serve_time_per_output_token_seconds",
            "A finished stream's mean time between tokens after the first (inter-token latency).",
            buckets=_ITL_BUCKETS)
        self.latency = self._series(Histogram, "glm_serve_request_latency_seconds",
                                    "Request arrival to last byte, by endpoint.", ("endpoint",), buckets=_BUCKETS)

        self.tenant_requests = self._series(
            Counter, "glm_serve_tenant_requests", "Generation and /tokenize requests by tenant and status code.",
            ("tenant", "status"))
        self.tenant_tokens = self._series(
            Counter, "glm_serve_tenant_tokens", "Tokens of finished requests by tenant and kind (prompt, completion, "
            "cached: prompt tokens found in the prefix cache).", ("tenant", "kind"))
        self.tenant_quota_fallbacks = self._series(
            Counter, "glm_serve_tenant_quota_fallbacks",
            "Requests of limited tenants admitted on this router replica's own share of the limits, because the "
            "shared ledger (a Ray actor) did not answer within 1 s.")
        self.tenants_file_stale = self._series(
            Gauge, "glm_serve_tenants_file_stale",
            "1 while the tenants file on disk does not validate or cannot be read, and the last valid version "
            "stays in force; else 0.")
        self.tenant_rate_limited = self._series(
            Counter, "glm_serve_tenant_rate_limited",
            "Requests refused with 429 by tenant and limit (requests, tokens, concurrent).", ("tenant", "limit"))

        self.adapter_requests = self._series(
            Counter, "glm_serve_adapter_requests", "Generation requests that named a LoRA adapter, by adapter and "
            "status code.", ("adapter", "status"))
        self.adapter_tokens = self._series(
            Counter, "glm_serve_adapter_tokens", "Tokens of finished requests by LoRA adapter and kind (prompt, "
            "completion).", ("adapter", "kind"))

        self.registry.register(_RoutingDecisions())
        self.registry.register(_EngineReplicas())
        # The request router counts its decisions on Serve's routing loop; they reach Ray's
        # metrics agent from here, by difference, when a request ends (export_routing).
        self._routing_exported: dict[tuple[str, str], int] = {}
        self._routing_counters: dict[str, Any] = {}
        if export:
            from ray.serve import metrics as serve_metrics

            self._routing_counters = {
                "decision": serve_metrics.Counter(
                    _DECISIONS[0], _DECISIONS[1], tag_keys=("decision",)),
                "result": serve_metrics.Counter(_LOOKUPS[0], _LOOKUPS[1], tag_keys=("result",)),
            }

    def export_routing(self) -> None:
        """Bring the routing series exported through Ray's metrics agent
        (``ray_glm_serve_routing_decisions_total``, ``..._placement_lookups_total``) up to the
        totals ``/metrics`` shows. Cheap (two dicts of four numbers); a no-op without export."""
        if not self._routing_counters:
            return
        for tag, totals in (("decision", decision_counts()), ("result", placement_lookup_counts())):
            counter = self._routing_counters[tag]
            for value, total in totals.items():
                delta = total - self._routing_exported.get((tag, value), 0)
                if delta > 0:
                    counter.inc(delta, {tag: value})
                    self._routing_exported[tag, value] = total

    def count_tenant(self, tenant: str, status: int, prompt: int, completion: int, cached: int,
                     error_code: str | None) -> None:
        """A finished request of ``tenant``: labelled by its name (a bounded set, from the
        tenants file), never by its key."""
        self.tenant_requests.labels(tenant, str(status)).inc()
        for kind, count in (("prompt", prompt), ("completion", completion), ("cached", cached)):
            if count:
                self.tenant_tokens.labels(tenant, kind).inc(count)
        if status == 429 and error_code and error_code.startswith("rate_limit:"):
            self.tenant_rate_limited.labels(tenant, error_code.partition(":")[2]).inc()

    def count_adapter(self, adapter: str, status: int, prompt: int, completion: int) -> None:
        """A finished request of ``adapter``: a name the catalog found (a bounded set: the
        configured adapters and the folders of adapters_dir), never an unknown one."""
        self.adapter_requests.labels(adapter, str(status)).inc()
        for kind, count in (("prompt", prompt), ("completion", completion)):
            if count:
                self.adapter_tokens.labels(adapter, kind).inc(count)

    def _series(self, kind: type, name: str, help_text: str, labelnames: tuple[str, ...] = (),
                buckets: tuple[float, ...] | None = None) -> _Series:
        extra = {"buckets": buckets} if buckets is not None else {}
        local = kind(name, help_text, list(labelnames), registry=self.registry, **extra)
        exported = None
        if self._export:
            from ray.serve import metrics as serve_metrics

            if kind is Histogram:
                exported = serve_metrics.Histogram(name, help_text, boundaries=list(buckets or ()),
                                                   tag_keys=labelnames or None)
            else:
                ray_kind = serve_metrics.Counter if kind is Counter else serve_metrics.Gauge
                exported = ray_kind(name, help_text, tag_keys=labelnames or None)
        return _Series(local, exported, labelnames)

    def render(self) -> bytes:
        """Prometheus text exposition of everything above."""
        return generate_latest(self.registry)


_DECISIONS = ("glm_serve_routing_decisions", "Engine replica choices of the prefix router.")
_LOOKUPS = ("glm_serve_routing_placement_lookups",
            "Lookups of the prefix router in the shared placement table: hit (known conversation), placed "
            "(placed now), timeout or unavailable (placed by rendezvous hashing instead).")


def placement_lookup_counts() -> dict[str, int]:
    """The placement-table lookups of the request routers in this process, by outcome."""
    return lookup_counts(LOOKUP_RESULTS)


class _RoutingDecisions:
    """How the prefix request router (which runs in this process, inside the handle to the
    engine deployment) placed requests: affinity, spilled on load, new, hint; and how its
    lookups in the shared placement table went."""

    def collect(self):
        for (name, help_text), label, totals in ((_DECISIONS, "decision", decision_counts()),
                                                 (_LOOKUPS, "result", placement_lookup_counts())):
            family = CounterMetricFamily(name, help_text, labels=[label])
            for value, count in sorted(totals.items()):
                family.add_metric([value], count)
            yield family


# (name, help, kind, the value of one replica's snapshot): vLLM's own scheduler counters.
_ENGINE_SERIES: tuple[tuple[str, str, str, Callable[[EngineSnapshot], float]], ...] = (
    ("glm_serve_engine_prefix_cache_queries", "Prompt tokens looked up in the engine's prefix cache.",
     "counter", lambda s: s.prefix_cache_queries),
    ("glm_serve_engine_prefix_cache_hits", "Prompt tokens found in the engine's prefix cache.",
     "counter", lambda s: s.prefix_cache_hits),
    ("glm_serve_engine_prompt_tokens_computed", "Prompt tokens the engine prefilled.",
     "counter", lambda s: s.prompt_tokens_computed),
    ("glm_serve_engine_generation_tokens", "Tokens the engine generated.", "counter", lambda s: s.generation_tokens),
    ("glm_serve_engine_preemptions", "Requests the engine preempted (KV cache full).", "counter",
     lambda s: s.preemptions),
    ("glm_serve_engine_requests_running", "Requests in the engine's running batch.", "gauge", lambda s: s.running),
    ("glm_serve_engine_requests_waiting", "Requests waiting in the engine's scheduler.", "gauge", lambda s: s.waiting),
    ("glm_serve_engine_kv_cache_usage", "Fraction of the engine's KV cache in use (0-1).", "gauge",
     lambda s: s.kv_cache_usage),
)


class _EngineReplicas:
    """Each engine replica's vLLM statistics, labelled by replica, as Serve last collected
    them (every ``engine.routing.stats_period_s``; deployments/core/engine_snapshot.py). Every
    ingress replica sees every engine replica, so one scrape of one ingress covers them all."""

    def collect(self):
        stats = engine_replica_stats()
        for name, help_text, kind, value in _ENGINE_SERIES:
            family_cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_cls(name, help_text, labels=["replica"])
            for replica, snapshot in sorted(stats.items()):
                family.add_metric([replica], value(snapshot))
            yield family
        yield from _adapter_families(stats)


# (name, help, the value of one adapter's counts).
_ADAPTER_SERIES: tuple[tuple[str, str, Callable[[AdapterCounts], float]], ...] = (
    ("glm_serve_engine_adapter_loads", "LoRA adapters loaded into the engine (vLLM's add_lora of one not loaded).",
     lambda c: c.loads),
    ("glm_serve_engine_adapter_load_seconds", "Time spent loading LoRA adapters.", lambda c: c.load_seconds),
    ("glm_serve_engine_adapter_evictions", "LoRA adapters the engine dropped to make room (max_cpu_loras).",
     lambda c: c.evictions),
)


def _adapter_families(stats: dict[str, EngineSnapshot]):
    """Each engine replica's LoRA loads, load time and evictions by adapter, and how many it
    holds now (deployments/engine/adapters.py)."""
    for name, help_text, value in _ADAPTER_SERIES:
        family = CounterMetricFamily(name, help_text, labels=["replica", "adapter"])
        for replica, snapshot in sorted(stats.items()):
            for adapter, counts in sorted(snapshot.adapter_counts.items()):
                family.add_metric([replica, adapter], value(counts))
        yield family
    loaded = GaugeMetricFamily("glm_serve_engine_adapters_loaded", "LoRA adapters the engine holds now.",
                               labels=["replica"])
    for replica, snapshot in sorted(stats.items()):
        loaded.add_metric([replica], len(snapshot.adapters))
    yield loaded
