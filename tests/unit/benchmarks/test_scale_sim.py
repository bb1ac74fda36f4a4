"""benchmarks/harness/scale_sim.py: the discrete-event simulator, the real routing policies over
simulated engines, seeded."""

from __future__ import annotations

from benchmarks.harness.scale_sim import (
    GENERATION_PROMPT,
    ScaleSim,
    Workload,
    run,
    token_id,
    tokenize,
    tokenize_message,
)
from deployments.config.engine_profile import load_profile

SMALL = Workload(users=48, system_prompts=2, system_words=300, user_words=60, reply_tokens=16, turns=4,
                 think_s=1.0, duration_s=30.0, warmup_s=10.0)


def test_a_reply_sent_back_as_history_tokenizes_to_the_engines_own_tokens():
    reply = {"role": "assistant", "content": " ".join(["the"] * 5)}
    assert tokenize_message(reply)[3:8] == [token_id("the")] * 5
    assert tokenize([reply])[-len(GENERATION_PROMPT):] == GENERATION_PROMPT


def test_prefix_routing_hits_the_cache_more_than_pow2_on_the_same_seeded_users():
    profile = load_profile("gpu-h100-glm4-9b")
    pow2 = run(profile, 4, 2, "pow2", SMALL, seed=3)
    prefix = run(profile, 4, 2, "prefix", SMALL, seed=3)
    assert pow2.requests > 100 and prefix.requests > 100
    assert prefix.hit_rate > pow2.hit_rate + 0.1
    assert prefix.placement_calls > 0 and pow2.placement_calls == 0  # the real policy asked the real table
    assert prefix.peak_to_mean_load < 2.0


def test_the_same_seed_gives_the_same_run():
    profile = load_profile("cpu-smollm2-135m")
    for policy in ("prefix", "pow2"):
        first, again = (run(profile, 3, 2, policy, SMALL, seed=5) for _ in range(2))
        assert (first.tokens_per_s, first.hit_rate, first.ttft_p90_s) == (again.tokens_per_s, again.hit_rate,
                                                                           again.ttft_p90_s)


def test_each_router_replica_has_its_own_policy_and_all_share_one_table():
    sim = ScaleSim(load_profile("gpu-h100-glm4-9b"), 4, 3, "prefix", SMALL)
    assert len({id(r) for r in sim.routers}) == 3 and sim.table is not None
    result = sim.run()
    assert sum(sum(r.counts.values()) for r in sim.routers) >= result.requests
    assert all(sum(r.counts.values()) > 0 for r in sim.routers)
