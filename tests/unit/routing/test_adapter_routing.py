"""LoRA adapters in routing: the placement table keeps each adapter where it is loaded and
spreads a busy one; the prefix policy salts prefixes by adapter and asks the table."""

from __future__ import annotations

from deployments.config.routing import RoutingConfig
from deployments.core.generation import GenerationRequest
from deployments.routing.placement_table import PlacementTable
from deployments.routing.prefix_keys import prefix_keys
from deployments.routing.prefix_policy import PrefixPolicy

REPLICAS = ("r0", "r1", "r2")


def _loads(**loads: int) -> dict[str, int]:
    return {r: loads.get(r, 0) for r in REPLICAS}


def test_an_adapter_stays_where_it_is_loaded_until_the_load_guard_says_no():
    table = PlacementTable(adapter_slots=2, load_gap=4, load_factor=1.5)
    first, placed = table.resolve(None, _loads(), "sql")
    assert placed and table.has_adapter(first, "sql") and len(table) == 0  # no conversation pinned
    others = [r for r in REPLICAS if r != first]
    assert table.resolve(None, _loads(**{first: 4}), "sql")[0] == first  # busier, within the guard: it stays
    spread, _ = table.resolve(None, _loads(**{first: 5}), "sql")
    assert spread in others and table.has_adapter(spread, "sql")  # past the guard: a second replica loads it
    # then both hold it, and the less busy of the two takes it
    third = next(r for r in others if r != spread)
    assert table.resolve(None, {first: 5, spread: 1, third: 0}, "sql")[0] == spread


def test_the_table_forgets_an_adapter_as_vllm_would_evict_it():
    table = PlacementTable(adapter_slots=2)
    for adapter in ("a", "b", "c"):
        table.touch_adapter("r0", adapter)
    assert not table.has_adapter("r0", "a") and table.has_adapter("r0", "b") and table.has_adapter("r0", "c")
    table.touch_adapter("r0", "b")  # used again: "c" is now the least recent
    table.touch_adapter("r0", "d")
    assert table.has_adapter("r0", "b") and not table.has_adapter("r0", "c")


def test_a_new_conversation_goes_where_its_adapter_is_however_many_conversations_went_there():
    """Placed-lately conversations weigh on the choice among holders, not against holding:
    single-request conversations would otherwise spread every adapter everywhere."""
    table = PlacementTable(adapter_slots=4)
    table.touch_adapter("r2", "sql")
    for key in range(20):  # twenty conversations of the adapter placed on r2 just now
        assert table.resolve(key, _loads(r2=2), "sql") == ("r2", True)
    assert table.resolve(3, _loads(r2=30), "sql") == ("r2", False)  # a known conversation stays
    assert table.resolve(100, _loads(r2=30), "sql")[0] != "r2"  # past the guard: elsewhere
    assert table.resolve(101, _loads(r2=30)) [0] != "r2"  # the base model: by expected load


def test_a_replica_that_left_takes_its_adapters_with_it():
    table = PlacementTable(adapter_slots=2)
    table.touch_adapter("gone", "sql")
    target, _ = table.resolve(None, _loads(), "sql")
    assert target in REPLICAS and not table.has_adapter("gone", "sql")


def _request(adapter: str | None, prompt: str = "x" * 600) -> GenerationRequest:
    return GenerationRequest(request_id="r", prompt=prompt, adapter=adapter)


def test_prefix_keys_are_salted_by_adapter_as_vllms_cache_is():
    base, sql, chat = (prefix_keys(_request(a), 256, 64, 1).hashes for a in (None, "sql", "chat"))
    assert len(base) == len(sql) == len(chat) == 3
    assert not set(base) & set(sql) and not set(sql) & set(chat)
    assert prefix_keys(_request("sql"), 256, 64, 1).hashes == sql


def test_the_policy_asks_the_table_for_an_adapter_request_with_no_conversation():
    policy = PrefixPolicy(RoutingConfig(policy="prefix"))
    loads = _loads()
    short = _request("sql", "hi")  # shorter than a block: no anchor, no conversation
    assert policy.placement_query(short, loads) == (None, "sql")
    assert policy.placement_query(_request(None, "hi"), loads) is None  # the base model: nothing to ask
    decision = policy.choose(short, loads, placed=("r1", True))
    assert (decision.replica, decision.label) == ("r1", "adapter")
    # without an answer (the table slow or down) every router agrees by rendezvous on the adapter
    assert len({PrefixPolicy(RoutingConfig(policy="prefix")).choose(short, loads).replica for _ in range(5)}) == 1
    # past the load guard it goes to the least loaded
    assert policy.choose(short, _loads(r1=20, r0=1, r2=1), placed=("r1", True)).label == "new"
