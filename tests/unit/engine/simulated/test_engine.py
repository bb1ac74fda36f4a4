"""The simulated async engine (deployments/engine/simulated/engine.py): deltas, stats and aborts."""

from __future__ import annotations

import asyncio
import time

from deployments.engine.simulated.engine import SamplingValues, SimulatedEngine
from deployments.engine.simulated.scheduler import Scheduler
from tests.support.simulated import sim_profile


def test_async_engine_streams_deltas_and_reports_stats():
    recorded = []
    profile = sim_profile(step_ms=5.0, prefill_ms_per_token=0.0, decode_ms_per_seq=0.0, decode_ms_per_1k_context=0.0)

    async def main():
        engine = SimulatedEngine(profile, Scheduler(profile), time_scale=2.0, max_model_len=1024, output_token=9,
                                 stat_loggers=[lambda s, i: recorded.append((s, i))])
        start = time.monotonic()
        outputs = [o async for o in engine.generate({"prompt_token_ids": [1, 2, 3, 4, 5]},
                                                     SamplingValues(max_tokens=4, n=2, logprobs=0), "x")]
        elapsed = time.monotonic() - start
        engine.shutdown()
        return outputs, elapsed

    outputs, elapsed = asyncio.run(main())
    assert sum(len(o.outputs[0].token_ids) for o in outputs) == 4
    assert [c.index for c in outputs[0].outputs] == [0, 1]
    assert outputs[-1].outputs[0].finish_reason == "length"
    assert outputs[0].outputs[0].logprobs[0][9].rank == 1
    assert elapsed >= 4 * 0.010  # four steps of 5 ms, times 2
    assert sum(i.num_generation_tokens for _, i in recorded) == 4


def test_async_engine_aborts_a_request_its_consumer_leaves():
    profile = sim_profile(step_ms=1.0)

    async def main():
        scheduler = Scheduler(profile)
        engine = SimulatedEngine(profile, scheduler, time_scale=1.0, max_model_len=1024, output_token=9,
                                 stat_loggers=[])
        stream = engine.generate({"prompt_token_ids": [1, 2, 3]}, SamplingValues(max_tokens=200), "y")
        await anext(stream)
        await stream.aclose()
        engine.shutdown()
        return scheduler

    scheduler = asyncio.run(main())
    assert not scheduler.has_work and scheduler.pool.free_blocks == 64
