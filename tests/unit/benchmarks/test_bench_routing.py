"""benchmarks/bench_routing.py: its configs, variants, targets and pooled rounds."""

from __future__ import annotations

import pytest

from benchmarks.bench_routing import check_targets, parse_variant, pool, routing_config
from benchmarks.harness.chat_sessions import TurnRecord


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


def test_a_variant_names_a_policy_and_routing_fields_checked_by_the_config_model():
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
    # Each round alone is balanced (one request on each replica); laid over each other
    # they would look like two on r1 while r2 idles.
    first = [TurnRecord("a", 0, sent_s=0.0, e2e_s=2.0, replica="r1", completion_tokens=4),
             TurnRecord("b", 0, sent_s=0.0, e2e_s=2.0, replica="r2", completion_tokens=4)]
    second = [TurnRecord("a", 0, sent_s=0.0, e2e_s=2.0, replica="r1", completion_tokens=4),
              TurnRecord("b", 0, sent_s=0.0, e2e_s=2.0, replica="r2", completion_tokens=4)]
    pooled = pool([(first, 2.0), (second, 2.0)], conversations=False)
    assert pooled["in_flight_gap"] == 0.0 and pooled["wall_s"] == 4.0 and pooled["output_tok_s"] == 4.0
    assert pooled["requests"] == 4 and second[0].sent_s == 0.0, "the rounds' own records are not changed"
