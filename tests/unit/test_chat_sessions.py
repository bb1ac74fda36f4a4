"""The routing benchmark's workloads and statistics (benchmarks/chat_sessions.py)."""

from __future__ import annotations

import pytest

from benchmarks import chat_sessions
from benchmarks.bench_routing import check_targets, routing_config
from benchmarks.chat_sessions import Shape, TurnRecord, kv_blocks, summarize

SHAPE = Shape(users=4, turns=3, system_tokens=40, context_tokens=30, question_tokens=6, answer_tokens=4,
              think_mean_s=1.0, hot_users=6)


def words_sizer(text: str, tokens: int) -> str:
    """A stand-in tokenizer: one word, one token."""
    return " ".join(text.split()[:tokens])


def test_workloads_are_seeded_and_sized():
    for workload in chat_sessions.WORKLOADS:
        a = chat_sessions.build(workload, SHAPE, words_sizer, seed=3)
        assert a == chat_sessions.build(workload, SHAPE, words_sizer, seed=3)
        assert a != chat_sessions.build(workload, SHAPE, words_sizer, seed=4)
    multi = chat_sessions.build("multi-turn", SHAPE, words_sizer)
    assert len(multi) == 4 and all(len(u.turns) == 3 and u.carry for u in multi)
    assert len({u.system for u in multi}) == 1 and len(multi[0].system.split()) == 40
    assert len(multi[0].turns[0].user_text.split()) == 30 and len(multi[0].turns[1].user_text.split()) == 6
    assert all(t.think_s >= 0 for u in multi for t in u.turns)


def test_unique_requests_share_no_prefix_and_keep_the_multi_turn_timing():
    multi = chat_sessions.build("multi-turn", SHAPE, words_sizer)
    uniq = chat_sessions.build("unique", SHAPE, words_sizer)
    assert [[t.think_s for t in u.turns] for u in uniq] == [[t.think_s for t in u.turns] for u in multi]
    firsts = [(t.system or "").split()[:3] for u in uniq for t in u.turns]
    assert len({tuple(f) for f in firsts}) == len(firsts), "every request opens with its own text"
    assert not any(u.carry for u in uniq)
    # Turn t is as long as the multi-turn conversation's own part at turn t.
    assert [len(t.user_text.split()) for t in uniq[0].turns] == [30, 40, 50]


def test_hot_system_users_ask_once_behind_one_system_prompt():
    hot = chat_sessions.build("hot-system", SHAPE, words_sizer)
    assert len(hot) == 6 and all(len(u.turns) == 1 for u in hot)
    assert len({u.system for u in hot}) == 1


def test_kv_blocks_hold_two_conversations_but_not_all_of_them():
    shape = Shape()
    blocks = kv_blocks(shape, 128)
    assert 2 * shape.conversation_tokens() <= blocks * 128 < shape.all_conversations_tokens()
    assert 2 * blocks * 128 >= shape.all_conversations_tokens(), "two replicas together hold every conversation"


def test_summary_counts_hits_shares_and_turns_that_stayed():
    records = [
        TurnRecord("a", 0, ttft_s=2.0, prompt_tokens=100, cached_tokens=0, completion_tokens=4, replica="r1"),
        TurnRecord("a", 1, ttft_s=0.2, prompt_tokens=120, cached_tokens=100, completion_tokens=4, replica="r1"),
        TurnRecord("a", 2, ttft_s=1.5, prompt_tokens=140, cached_tokens=0, completion_tokens=4, replica="r2"),
        TurnRecord("b", 0, ttft_s=1.0, prompt_tokens=100, cached_tokens=0, completion_tokens=4, replica="r2"),
        TurnRecord("b", 1, error="HTTP 503: busy", replica="r2"),
    ]
    s = summarize(records, wall_s=4.0)
    assert s["requests"] == 5 and s["errors"] == 1 and s["error_samples"] == ["HTTP 503: busy"]
    assert s["output_tok_s"] == 4.0
    assert s["cache_hit_rate"] == round(100 / 460, 4)
    assert s["replica_requests"] == {"r1": 2, "r2": 2} and s["replica_balance"] == 1.0
    assert s["same_replica_as_previous_turn"] == 0.5, "a: r1->r1 stayed, r1->r2 moved; b's failed turn not counted"
    assert s["ttft_p50_s"] in (1.0, 1.5)


def _row(ttft, tok_s, same=None, balance=1.0, errors=0):
    return {"ttft_p50_s": ttft, "output_tok_s": tok_s, "same_replica_as_previous_turn": same,
            "replica_balance": balance, "replica_requests": {}, "errors": errors}


def test_targets_are_judged_on_the_policies_ratios():
    results = {
        "multi-turn": {"pow2": _row(2.0, 10, 0.5), "prefix": _row(0.8, 14, 0.95)},
        "unique": {"pow2": _row(3.0, 8), "prefix": _row(3.3, 8)},
        "hot-system": {"pow2": _row(0.5, 20), "prefix": _row(0.5, 20, balance=1.2, errors=1)},
    }
    verdict = {name: ok for name, ok, _ in check_targets(results)}
    assert verdict["multi-turn: prefix TTFT p50 <= 0.5x pow2"]
    assert verdict["multi-turn: prefix tokens/s >= 1.3x pow2"]
    assert verdict["multi-turn, 2 router replicas: next turn on the same engine replica >= 90 %"]
    assert not verdict["unique: prefix TTFT p50 at most 5 % above pow2's"]
    assert verdict["unique: prefix tokens/s at most 5 % below pow2's"]
    assert verdict["hot system prompt: no replica serves > 1.5x the other"]
    assert not verdict["hot-system/prefix: no failed requests"]
    # The unique control guards against a cost: faster passes, and says so.
    results["unique"] = {"pow2": _row(3.0, 8), "prefix": _row(2.4, 7.5)}
    values = {name: (ok, value) for name, ok, value in check_targets(results)}
    assert values["unique: prefix TTFT p50 at most 5 % above pow2's"] == (True, "0.800x (better)")
    assert values["unique: prefix tokens/s at most 5 % below pow2's"] == (False, "0.938x (worse)")


def test_the_benchmarked_configs_differ_only_in_policy_and_are_valid():
    import yaml

    base = yaml.safe_load(open("config/serve-cpu.yaml"))
    pow2, prefix = (routing_config(base, p, blocks=40, routers=2) for p in ("pow2", "prefix"))
    args = prefix["applications"][0]["args"]
    assert args["engine"]["routing"]["policy"] == "prefix" and args["engine"]["num_replicas"] == 2
    assert args["model"]["engine_kwargs"]["num_gpu_blocks_override"] == 40
    assert args["model"]["cpu"]["threads_bind"] == ["0", "1"] and args["model"]["enable_prefix_caching"] is True
    pow2["applications"][0]["args"]["engine"]["routing"]["policy"] = "prefix"
    assert pow2 == prefix
    assert base["applications"][0]["args"]["engine"].get("routing") is None, "the base config is not changed"
    with pytest.raises(ValueError):
        routing_config(base, "round-robin", blocks=40, routers=2)


def test_in_flight_gap_is_the_time_averaged_difference_between_replicas():
    # 0-2 s: r1 runs 2, r2 runs 0 (gap 2); 2-4 s: one each (gap 0); 4-6 s: nothing runs
    # (not counted); 6-8 s: r2 runs 1 (gap 1). Mean over the 6 busy seconds: (4 + 0 + 2) / 6.
    records = [
        TurnRecord("a", 0, sent_s=0.0, e2e_s=4.0, replica="r1"),
        TurnRecord("b", 0, sent_s=0.0, e2e_s=2.0, replica="r1"),
        TurnRecord("c", 0, sent_s=2.0, e2e_s=2.0, replica="r2"),
        TurnRecord("d", 0, sent_s=6.0, e2e_s=2.0, replica="r2"),
        TurnRecord("e", 0, sent_s=0.0, e2e_s=9.0, replica="r2", error="HTTP 503"),
    ]
    assert chat_sessions.in_flight_gap(records) == 1.0
    assert summarize(records, wall_s=8.0)["in_flight_gap"] == 1.0
    assert chat_sessions.in_flight_gap(records[:2]) is None, "one replica: no gap to speak of"


def test_a_variant_names_a_policy_and_routing_fields_checked_by_the_config_model():
    from benchmarks.bench_routing import parse_variant

    assert parse_variant("pow2") == ("pow2", {})
    assert parse_variant("prefix:placement_memory_s=5,directory=false") == (
        "prefix", {"placement_memory_s": 5, "directory": False})
    with pytest.raises(ValueError, match="placement_memory"):
        parse_variant("prefix:placement_memory=5")
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_variant("prefix:directory")
    base = {"applications": [{"args": {"model": {"model": "m"}, "engine": {"routing": {"max_load_gap": 3}}}}]}
    args = routing_config(base, "prefix", 40, 2, {"placement_memory_s": 5})["applications"][0]["args"]
    assert args["engine"]["routing"] == {"max_load_gap": 3, "placement_memory_s": 5, "policy": "prefix"}


def test_pooled_rounds_run_one_after_the_other():
    from benchmarks.bench_routing import pool

    # Each round alone is balanced (one request on each replica); laid over each other
    # they would look like two on r1 while r2 idles.
    first = [TurnRecord("a", 0, sent_s=0.0, e2e_s=2.0, replica="r1", completion_tokens=4),
             TurnRecord("b", 0, sent_s=0.0, e2e_s=2.0, replica="r2", completion_tokens=4)]
    second = [TurnRecord("a", 0, sent_s=0.0, e2e_s=2.0, replica="r1", completion_tokens=4),
              TurnRecord("b", 0, sent_s=0.0, e2e_s=2.0, replica="r2", completion_tokens=4)]
    pooled = pool([(first, 2.0), (second, 2.0)], conversations=False)
    assert pooled["in_flight_gap"] == 0.0 and pooled["wall_s"] == 4.0 and pooled["output_tok_s"] == 4.0
    assert pooled["requests"] == 4 and second[0].sent_s == 0.0, "the rounds' own records are not changed"
