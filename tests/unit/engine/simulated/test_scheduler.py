"""The simulated engine's scheduler (deployments/engine/simulated/scheduler.py) against known
cases: cache hits across turns, batching within max_num_seqs and the token budget, step
times, preemption and priority."""

from __future__ import annotations

import pytest

from deployments.engine.simulated.scheduler import Scheduler, SimRequest
from tests.support.simulated import sim_profile


def _run(scheduler: Scheduler, limit: int = 1000) -> list:
    steps = []
    while scheduler.has_work and len(steps) < limit:
        steps.append(scheduler.step())
    return steps


def test_a_second_turn_hits_the_first_turns_blocks():
    scheduler = Scheduler(sim_profile())
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
    scheduler = Scheduler(sim_profile(max_num_seqs=3, max_num_batched_tokens=20))
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
    scheduler = Scheduler(sim_profile())
    for i in range(4):
        scheduler.add(SimRequest(f"r{i}", list(range(i * 100, i * 100 + 7)), max_tokens=3))
    scheduler.step()  # four prefills
    decode = scheduler.step()  # four decodes, each with 8 tokens of context
    assert decode.seconds == pytest.approx((10 + 4 * 2.0 + 1000 * 32 / 1000) / 1000)


def test_a_chunked_prefill_costs_its_tokens_attention_as_one_whole_prefill_would():
    profile = sim_profile(step_ms=0.0, prefill_ms_per_token=0.0, prefill_ms_per_1k_context=1000.0,
                       max_num_batched_tokens=6)
    scheduler = Scheduler(profile)
    scheduler.add(SimRequest("r", list(range(10)), max_tokens=1))
    chunks = [scheduler.step().seconds, scheduler.step().seconds]
    # positions 0..5, then 6..9: each token attends to every token before it
    assert chunks == [pytest.approx(sum(range(6)) / 1000), pytest.approx(sum(range(6, 10)) / 1000)]
    assert sum(chunks) == pytest.approx(profile.prefill_seconds(10))


def test_out_of_blocks_preempts_the_newest_and_it_finishes_later():
    scheduler = Scheduler(sim_profile(kv_cache_blocks=6, max_num_batched_tokens=64))
    a = SimRequest("a", list(range(8)), max_tokens=12)
    b = SimRequest("b", list(range(100, 108)), max_tokens=12)
    scheduler.add(a)
    scheduler.add(b)
    steps = _run(scheduler)
    assert sum(s.stats.num_preempted_reqs for s in steps) >= 1
    assert a.finished and b.finished and a.generated == 12 and b.generated == 12
    assert scheduler.pool.free_blocks == 6


def test_priority_policy_admits_the_interactive_request_first():
    scheduler = Scheduler(sim_profile(max_num_seqs=1), priority_policy=True)
    scheduler.add(SimRequest("batch", [1, 2, 3], max_tokens=1, priority=1))
    scheduler.add(SimRequest("chat", [4, 5, 6], max_tokens=1, priority=0))
    assert [r.request_id for r in scheduler.step().produced] == ["chat"]


def test_a_request_that_cannot_fit_is_refused_and_abort_frees_its_blocks():
    scheduler = Scheduler(sim_profile(kv_cache_blocks=4))
    with pytest.raises(ValueError, match="KV blocks"):
        scheduler.add(SimRequest("big", list(range(16)), max_tokens=4))
    scheduler.add(SimRequest("ok", list(range(8)), max_tokens=4))
    scheduler.step()
    assert scheduler.abort("ok") and scheduler.pool.free_blocks == 4 and not scheduler.has_work
