"""What one engine replica's vLLM scheduler reports: load, KV cache, prefix-cache hits.

vLLM hands its scheduler statistics to stat loggers (its documented extension point,
``AsyncLLM.from_engine_args(stat_loggers=...)``) after every engine step.
:class:`EngineStats` keeps running totals of them. The engine deployment returns
:meth:`EngineStats.snapshot` from Serve's ``record_routing_stats`` hook; Serve's
controller polls that hook every ``engine.routing.stats_period_s`` and hands the result
to every router replica's request router, where ``/metrics`` reads it
(:func:`deployments.routing.live_choosers.engine_replica_stats`). Nothing is sent per request or per token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from deployments.engine.vllm_private import ray_prometheus_stat_logger, stat_logger_base


@dataclass(slots=True)
class EngineStats:
    """Counters since the engine started, and the scheduler's latest state."""

    prefix_cache_queries: int = 0
    """Prompt tokens looked up in the prefix cache."""
    prefix_cache_hits: int = 0
    """Of those, tokens found there (no prefill spent on them)."""
    prompt_tokens_computed: int = 0
    """Prompt tokens the engine had to prefill."""
    generation_tokens: int = 0
    preemptions: int = 0
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    """Fraction of the KV cache's blocks in use, 0 to 1."""

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        """Fold one engine step's ``SchedulerStats`` / ``IterationStats`` (either may be None)
        into the totals. Read by attribute, so a field vLLM renames counts as zero
        instead of breaking the engine's output loop."""
        if scheduler_stats is not None:
            self.running = getattr(scheduler_stats, "num_running_reqs", 0)
            self.waiting = getattr(scheduler_stats, "num_waiting_reqs", 0)
            self.kv_cache_usage = getattr(scheduler_stats, "kv_cache_usage", 0.0)
            prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
            if prefix is not None:
                self.prefix_cache_queries += getattr(prefix, "queries", 0)
                self.prefix_cache_hits += getattr(prefix, "hits", 0)
        if iteration_stats is not None:
            self.generation_tokens += getattr(iteration_stats, "num_generation_tokens", 0)
            self.preemptions += getattr(iteration_stats, "num_preempted_reqs", 0)
            prompt = getattr(iteration_stats, "prompt_token_stats", None)
            self.prompt_tokens_computed += getattr(prompt, "computed", 0) if prompt is not None else 0

    def snapshot(self) -> dict[str, Any]:
        """The totals as a plain dict (what crosses Ray to the routers)."""
        return asdict(self)

    def logger_factory(self) -> Any:
        """A vLLM ``StatLoggerFactory`` whose loggers record into this object."""
        stats = self

        class _Recorder(stat_logger_base()):  # type: ignore[misc]
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                       engine_idx: int = 0) -> None:
                stats.record(scheduler_stats, iteration_stats)

            def log_engine_initialized(self) -> None:
                pass

        return _Recorder


def ray_stat_logger() -> Any:
    """vLLM's own Prometheus metrics, recorded through Ray's metrics agent instead of a
    per-process registry (``RayPrometheusStatLogger``, as Ray Serve LLM attaches it): they
    appear on each node's metrics export as ``ray_vllm_*``, tagged ``ReplicaId`` with the
    engine replica's id."""
    return ray_prometheus_stat_logger()
