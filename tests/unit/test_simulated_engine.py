"""The simulated engine against known cases: vLLM's block hashes, cache hits, eviction
order, batching within max_num_seqs and the token budget, preemption, and the async engine."""

from __future__ import annotations

import asyncio
import time

import pytest

from deployments.config.engine_profile import EngineProfile, load_profile
from deployments.engine.simulated.block_cache import BlockPool, block_hashes
from deployments.engine.simulated.engine import SamplingValues, SimulatedEngine
from deployments.engine.simulated.scheduler import Scheduler, SimRequest

BS = 4


def _profile(**changes) -> EngineProfile:
    values = dict(name="test", source="assumed", block_size=BS, kv_cache_blocks=64, max_num_seqs=8,
                  max_num_batched_tokens=64, max_model_len=1024, step_ms=10.0, prefill_ms_per_token=1.0,
                  decode_ms_per_seq=2.0, decode_ms_per_1k_context=1000.0)
    values.update(changes)
    return EngineProfile(**values)


def _run(scheduler: Scheduler, limit: int = 1000) -> list:
    steps = []
    while scheduler.has_work and len(steps) < limit:
        steps.append(scheduler.step())
    return steps


def test_block_hashes_are_vllms():
    from vllm.utils.hashing import sha256
    from vllm.v1.core import kv_cache_utils

    kv_cache_utils.init_none_hash(sha256)
    tokens = list(range(100, 111))  # two full blocks of 4 and a partial one
    expected, parent = [], None
    for begin in (0, 4):
        parent = kv_cache_utils.hash_block_tokens(sha256, parent, tokens[begin:begin + 4], ("lora", "a"))
        expected.append(bytes(parent))
    assert block_hashes(tokens, BS, ("lora", "a")) == expected
    # extending from the second block gives the same chain
    assert block_hashes(tokens, BS, ("lora", "a"), start=1, parent=expected[0]) == expected[1:]
    assert block_hashes(tokens, BS) != expected


def test_lookup_stops_at_the_first_miss_and_keeps_the_last_token_computed():
    pool = BlockPool(8)
    tokens = list(range(12))
    hashes = block_hashes(tokens, BS)
    blocks = pool.allocate(3)
    pool.cache_full(blocks, hashes)
    pool.free(blocks)
    # 12 tokens: at most (12 - 1) // 4 = 2 blocks may hit, though all 3 are cached
    assert pool.computed_blocks(hashes, 12, BS) == blocks[:2]
    assert (pool.queries, pool.hits) == (12, 8)
    other = block_hashes([0, 1, 2, 3, 9, 9, 9, 9, 8], BS)
    assert pool.computed_blocks(other, 9, BS) == blocks[:1]


def test_eviction_takes_the_least_recently_freed_and_a_request_tail_first():
    pool = BlockPool(4)
    a = pool.allocate(2)
    pool.cache_full(a, block_hashes(list(range(8)), BS))
    b = pool.allocate(2)
    pool.cache_full(b, block_hashes(list(range(50, 58)), BS))
    pool.free(a)  # a's tail block is queued before its head
    pool.free(b)
    assert pool.allocate(1) == [a[1]]
    assert not pool.cached(block_hashes(list(range(8)), BS)[1])
    assert pool.cached(block_hashes(list(range(8)), BS)[0])
    assert pool.allocate(1) == [a[0]]
    assert pool.evictions == 2


def test_a_hit_block_in_use_is_not_evicted_and_an_unfilled_block_is_reused_first():
    pool = BlockPool(3)
    a = pool.allocate(2)
    hashes = block_hashes(list(range(8)), BS)
    pool.cache_full(a[:1], hashes[:1])  # a[1] never filled
    pool.free(a)
    assert pool.allocate(1) == [a[1]]  # the unhashed one, though freed after a[0]
    hit = pool.computed_blocks(hashes, 8, BS)
    pool.touch(hit)
    assert pool.free_blocks == 1
    assert pool.allocate(1) != hit


def test_a_second_turn_hits_the_first_turns_blocks():
    scheduler = Scheduler(_profile())
    first = SimRequest("t1", list(range(10)), max_tokens=3)
    scheduler.add(first)
    _run(scheduler)
    # the next turn repeats the first turn's prompt and reply, then adds to it
    second = SimRequest("t2", first.tokens[:12] + [7, 7, 7], max_tokens=1)
    scheduler.add(second)
    steps = _run(scheduler)
    assert second.num_cached == 12  # three whole blocks of the 15-token prompt
    assert steps[0].stats.prefix_hits == 12 and steps[0].stats.prefix_queries == 15
    assert steps[0].stats.prompt_tokens_computed == 3


def test_batching_respects_max_num_seqs_and_the_token_budget():
    scheduler = Scheduler(_profile(max_num_seqs=3, max_num_batched_tokens=20))
    requests = [SimRequest(f"r{i}", [i] * 8 + list(range(i * 10, i * 10 + 4)), max_tokens=5) for i in range(5)]
    for request in requests:
        scheduler.add(request)
    first = scheduler.step()
    # 12-token prompts, budget 20: one whole prompt and 8 tokens of the next (chunked prefill)
    assert [r.request_id for r in scheduler.running] == ["r0", "r1"]
    assert first.produced == [requests[0]] and requests[1].computed == 8
    assert first.seconds == pytest.approx((10 + 20 * 1.0) / 1000)
    scheduler.step()
    assert len(scheduler.running) == 3  # never more than max_num_seqs
    steps = _run(scheduler)
    assert all(r.finished and r.generated == 5 for r in requests)
    assert max(s.stats.num_running_reqs for s in steps) == 3


def test_decode_step_time_grows_with_batch_and_context():
    scheduler = Scheduler(_profile())
    for i in range(4):
        scheduler.add(SimRequest(f"r{i}", list(range(i * 100, i * 100 + 7)), max_tokens=3))
    scheduler.step()  # four prefills
    decode = scheduler.step()  # four decodes, each with 8 tokens of context
    assert decode.seconds == pytest.approx((10 + 4 * 2.0 + 1000 * 32 / 1000) / 1000)


def test_a_chunked_prefill_costs_its_tokens_attention_as_one_whole_prefill_would():
    profile = _profile(step_ms=0.0, prefill_ms_per_token=0.0, prefill_ms_per_1k_context=1000.0,
                       max_num_batched_tokens=6)
    scheduler = Scheduler(profile)
    scheduler.add(SimRequest("r", list(range(10)), max_tokens=1))
    chunks = [scheduler.step().seconds, scheduler.step().seconds]
    # positions 0..5, then 6..9: each token attends to every token before it
    assert chunks == [pytest.approx(sum(range(6)) / 1000), pytest.approx(sum(range(6, 10)) / 1000)]
    assert sum(chunks) == pytest.approx(profile.prefill_seconds(10))


def test_out_of_blocks_preempts_the_newest_and_it_finishes_later():
    scheduler = Scheduler(_profile(kv_cache_blocks=6, max_num_batched_tokens=64))
    a = SimRequest("a", list(range(8)), max_tokens=12)
    b = SimRequest("b", list(range(100, 108)), max_tokens=12)
    scheduler.add(a)
    scheduler.add(b)
    steps = _run(scheduler)
    assert sum(s.stats.num_preempted_reqs for s in steps) >= 1
    assert a.finished and b.finished and a.generated == 12 and b.generated == 12
    assert scheduler.pool.free_blocks == 6


def test_priority_policy_admits_the_interactive_request_first():
    scheduler = Scheduler(_profile(max_num_seqs=1), priority_policy=True)
    scheduler.add(SimRequest("batch", [1, 2, 3], max_tokens=1, priority=1))
    scheduler.add(SimRequest("chat", [4, 5, 6], max_tokens=1, priority=0))
    assert [r.request_id for r in scheduler.step().produced] == ["chat"]


def test_a_request_that_cannot_fit_is_refused_and_abort_frees_its_blocks():
    scheduler = Scheduler(_profile(kv_cache_blocks=4))
    with pytest.raises(ValueError, match="KV blocks"):
        scheduler.add(SimRequest("big", list(range(16)), max_tokens=4))
    scheduler.add(SimRequest("ok", list(range(8)), max_tokens=4))
    scheduler.step()
    assert scheduler.abort("ok") and scheduler.pool.free_blocks == 4 and not scheduler.has_work


def test_a_scaled_profile_takes_that_many_times_as_long_for_every_kind_of_step():
    profile = load_profile("cpu-smollm2-135m")
    slow = profile.scaled(3.0)
    for args in ((0, 1, 0), (500, 0, 0, 500 * 499 / 2), (0, 8, 8000)):
        assert slow.step_seconds(*args) == pytest.approx(3.0 * profile.step_seconds(*args))


def test_shipped_profiles_load():
    for name in ("cpu-smollm2-135m", "gpu-h100-glm4-9b"):
        profile = load_profile(name)
        assert profile.step_seconds(0, 1, 0) > 0
    with pytest.raises(ValueError, match="shipped"):
        load_profile("no-such-profile")


def test_async_engine_streams_deltas_and_reports_stats():
    recorded = []
    profile = _profile(step_ms=5.0, prefill_ms_per_token=0.0, decode_ms_per_seq=0.0, decode_ms_per_1k_context=0.0)

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
    profile = _profile(step_ms=1.0)

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
