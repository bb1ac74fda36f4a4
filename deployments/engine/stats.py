"""What one engine replica's vLLM scheduler reports: load, KV cache, prefix-cache hits.

vLLM hands its scheduler statistics to stat loggers (its documented extension point,
``AsyncLLM.from_engine_args(stat_loggers=...)``) after every engine step.
:class:`EngineStats` keeps running totals of them. The engine deployment returns
:meth:`EngineStats.snapshot` (an :class:`~deployments.core.engine_snapshot.EngineSnapshot`)
from Serve's ``record_routing_stats`` hook; Serve's controller polls that hook every
``engine.routing.stats_period_s`` and hands the result to every ingress replica's request
router, where ``/metrics`` reads it
(:func:`deployments.routing.live_choosers.engine_replica_stats`). Nothing is sent per
request or per token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from deployments.core.engine_snapshot import EngineSnapshot
from deployments.engine.vllm_private import ray_prometheus_stat_logger, stat_logger_base


@dataclass(slots=True)
class EngineStats:
    """Running totals of vLLM's scheduler statistics, folded in after every engine step;
    the fields are :class:`~deployments.core.engine_snapshot.EngineSnapshot`'s counters."""

    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prompt_tokens_computed: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0

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

    def snapshot(self) -> EngineSnapshot:
        """The totals now (a field missing from the snapshot is a TypeError here)."""
        return EngineSnapshot(**asdict(self))

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
