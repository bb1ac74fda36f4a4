"""EngineStats (deployments/engine/stats.py): vLLM's scheduler statistics folded into per-replica totals."""

from __future__ import annotations

from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, PrefixCacheStats, SchedulerStats

from deployments.core.engine_snapshot import EngineSnapshot
from deployments.engine.stats import EngineStats


def _step(queries: int, hits: int, running: int, waiting: int, usage: float) -> SchedulerStats:
    return SchedulerStats(num_running_reqs=running, num_waiting_reqs=waiting, kv_cache_usage=usage,
                          prefix_cache_stats=PrefixCacheStats(requests=1, queries=queries, hits=hits))


def test_counters_add_up_and_gauges_take_the_latest_step():
    stats = EngineStats()
    iteration = IterationStats()
    iteration.num_generation_tokens = 3
    iteration.prompt_token_stats.computed = 40
    stats.record(_step(100, 60, running=2, waiting=1, usage=0.25), iteration)
    stats.record(_step(50, 50, running=1, waiting=0, usage=0.5), None)
    stats.record(None, None)
    snap = stats.snapshot()
    assert snap.prefix_cache_queries == 150 and snap.prefix_cache_hits == 110
    assert snap.generation_tokens == 3 and snap.prompt_tokens_computed == 40
    assert (snap.running, snap.waiting, snap.kv_cache_usage) == (1, 0, 0.5)
    assert EngineSnapshot.from_wire(snap.to_wire()) == snap, "the wire form reads back as it was written"


def test_the_logger_factory_makes_a_vllm_stat_logger_that_records_here():
    stats = EngineStats()
    factory = stats.logger_factory()
    recorder = factory(None, 0)  # vLLM calls a per-engine factory with (vllm_config, engine_index)
    assert isinstance(recorder, StatLoggerBase)
    recorder.record(_step(8, 8, 1, 0, 0.1), None, None, 0)
    recorder.log_engine_initialized()
    assert stats.snapshot().prefix_cache_hits == 8
