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

from dataclasses import replace
from typing import Any

from deployments.core.engine_snapshot import EngineSnapshot
from deployments.engine.vllm_private import ray_prometheus_stat_logger, stat_logger_base


class EngineStats:
    """Running totals of vLLM's scheduler statistics, folded in after every engine step into
    an :class:`~deployments.core.engine_snapshot.EngineSnapshot` (one step's new snapshot
    every few tens of milliseconds: cheap, and the snapshot type is the one field list)."""

    def __init__(self) -> None:
        self._snapshot = EngineSnapshot()

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        """Fold one engine step's ``SchedulerStats`` / ``IterationStats`` (either may be None)
        into the totals. Read by attribute, so a field vLLM renames counts as zero
        instead of breaking the engine's output loop."""
        s = self._snapshot
        changes: dict[str, Any] = {}
        if scheduler_stats is not None:
            changes.update(running=getattr(scheduler_stats, "num_running_reqs", 0),
                           waiting=getattr(scheduler_stats, "num_waiting_reqs", 0),
                           kv_cache_usage=getattr(scheduler_stats, "kv_cache_usage", 0.0))
            prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
            if prefix is not None:
                changes.update(prefix_cache_queries=s.prefix_cache_queries + getattr(prefix, "queries", 0),
                               prefix_cache_hits=s.prefix_cache_hits + getattr(prefix, "hits", 0))
        if iteration_stats is not None:
            prompt = getattr(iteration_stats, "prompt_token_stats", None)
            changes.update(
                generation_tokens=s.generation_tokens + getattr(iteration_stats, "num_generation_tokens", 0),
                preemptions=s.preemptions + getattr(iteration_stats, "num_preempted_reqs", 0),
                prompt_tokens_computed=s.prompt_tokens_computed + (getattr(prompt, "computed", 0) if prompt is not None else 0))
        if changes:
            self._snapshot = replace(s, **changes)  # a misspelt field is a TypeError here

    def snapshot(self) -> EngineSnapshot:
        """The totals now."""
        return self._snapshot

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
