"""The shared placement table (deployments/routing/placement_table.py), alone and with
routers that share it, and with LoRA adapters: it keeps each adapter where it is loaded
and spreads a busy one."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from deployments.routing.placement_table import PlacementTable
from deployments.routing.prefix_policy import PrefixPolicy
from tests.support.routing import POOL, idle, policy, pool_loads, replicas, still, turns

# --- the shared placement table --------------------------------------------------------


def test_the_placement_table_places_by_load_then_recent_placements_and_remembers():
    table = PlacementTable(max_entries=1000, clock=still)
    ids = replicas(3)
    assert table.resolve(1, {"replica-00": 5, "replica-01": 2, "replica-02": 9}) == ("replica-01", True)
    assert table.resolve(1, idle(ids)) == ("replica-01", False), "a known conversation stays put"
    # Equal loads: the replicas given fewer conversations lately first, so idle replicas fill evenly.
    homes = Counter(table.resolve(key, idle(ids))[0] for key in range(2, 32))
    assert sorted(homes.values()) == [10, 10, 10] and table.held("replica-01") == 11
    # Its replica left: placed again among the live ones.
    replica, placed = table.resolve(1, idle([ids[0], ids[2]]))
    assert placed and replica != "replica-01"
    table.assign(1, "replica-02")
    assert table.resolve(1, idle(ids)) == ("replica-02", False)
    with pytest.raises(ValueError):
        table.resolve(1, {})


def test_conversations_that_ended_long_ago_do_not_send_every_new_one_to_a_new_replica():
    """A replica replaced after it served many conversations: its successor starts with
    none. Counting every conversation ever held would send all new ones to the newcomer
    (the e2e suite saw 8 of 8); counting recent ones spreads them at once."""
    now = [0.0]
    table = PlacementTable(memory_s=60, clock=lambda: now[0])
    for key in range(200):
        table.resolve(key, {"old": 0})
    now[0] = 600.0  # ten minutes later a replacement joins
    split = Counter(table.resolve(1000 + key, {"old": 0, "new": 0})[0] for key in range(8))
    assert split == {"old": 4, "new": 4}, split
    assert table.held("old") == 204 and 4 < table.recent("old") < 5


def test_a_burst_that_saw_one_replica_a_request_lighter_still_spreads():
    """Eight new conversations at once, all looked up with the same snapshot of the loads,
    in which replica b runs one request more (or one long stream keeps it a request ahead
    while conversations come one after another): by current load alone all eight went to
    a. Counting what the table just placed spreads them."""
    table = PlacementTable(clock=still)
    burst = Counter(table.resolve(key, {"a": 0, "b": 1})[0] for key in range(8))
    assert burst["a"] >= 4 and burst["b"] >= 3, burst  # 5 / 3 evens out the request b had
    table = PlacementTable(clock=still)
    one_by_one = Counter(table.resolve(100 + key, {"a": 0, "b": 1})[0] for key in range(8))
    assert one_by_one["a"] >= 4 and one_by_one["b"] >= 3, one_by_one
    # A real imbalance still decides: a replica 20 requests behind gets the next ones.
    table = PlacementTable(clock=still)
    assert Counter(table.resolve(200 + key, {"a": 0, "b": 20})[0] for key in range(8)) == {"a": 8}


def test_the_placement_table_stays_under_its_cap_and_its_counts_stay_true():
    table = PlacementTable(max_entries=50)
    ids = replicas(4)
    rng = random.Random(5)
    for key in range(500):
        table.resolve(key, {i: rng.randint(0, 3) for i in ids})
        if key % 7 == 0:
            table.assign(rng.randrange(key + 1), rng.choice(ids))
    assert len(table) == 50
    assert sum(table.held(i) for i in ids) == 50
    assert table.resolve(499, idle(ids))[1] is False and table.resolve(0, idle(ids))[1] is True


def shared_serve(p: PrefixPolicy, table: PlacementTable, request: Any, loads: dict[str, int]) -> str:
    """Route like PolicyReplicaChooser with a shared table: ask it only when needed."""
    keys = p.keys(request)
    key = p.placement_key(request, loads, keys)
    decision = p.choose(request, loads, keys, table.resolve(key, loads) if key is not None else None)
    p.record(decision.keys, decision.replica, decision.label)
    if decision.publish:
        table.assign(decision.key, decision.replica)
    return decision.replica


def test_routers_sharing_the_placement_table_agree_and_spread_new_conversations_evenly():
    """Four router replicas; every turn lands on one at random. With the shared table each
    conversation stays on one replica, and conversations spread by load, not by chance."""
    ids = replicas(2)
    table = PlacementTable(clock=still)
    routers = [policy() for _ in range(4)]
    rng = random.Random(11)
    homes: dict[int, set[str]] = {}
    pending_turns = {c: turns(c, 4) for c in range(24)}
    while pending_turns:
        c = rng.choice(list(pending_turns))
        request = pending_turns[c].pop(0)
        if not pending_turns[c]:
            del pending_turns[c]
        loads = {i: rng.randint(0, 1) for i in ids}  # noisy, well inside the load guard
        homes.setdefault(c, set()).add(shared_serve(rng.choice(routers), table, request, loads))
    assert all(len(h) == 1 for h in homes.values()), "every conversation's turns reached one replica"
    split = Counter(next(iter(h)) for h in homes.values())
    assert max(split.values()) <= 14, split  # rendezvous alone: 17/7 in a benchmark run


def test_a_hot_system_prompt_splits_evenly_across_idle_replicas_with_the_table():
    ids = replicas(2)
    table = PlacementTable(clock=still)
    a, b = policy(), policy()
    split = Counter(shared_serve((a, b)[u % 2], table, turns(u, 1)[0], idle(ids)) for u in range(24))
    assert sorted(split.values()) == [12, 12]


def test_a_conversation_the_table_placed_spills_and_the_table_follows():
    ids = replicas(2)
    table = PlacementTable(clock=still)
    a, b = policy(max_load_gap=2), policy(max_load_gap=2)
    first, second, third = turns(0, 3)
    home = shared_serve(a, table, first, idle(ids))
    other = next(i for i in ids if i != home)
    moved = shared_serve(b, table, second, {home: 20, other: 0})
    assert moved == other and b.counts["spilled"] == 1
    # A third router replica that never saw it asks the table: it went where the spill took it.
    assert shared_serve(policy(), table, third, idle(ids)) == other


def test_a_placement_made_without_the_table_is_published_so_the_others_agree():
    """The table was slow or not yet reachable: the router placed the conversation by
    rendezvous, and tells the table afterwards, so another router replica finds it."""
    ids = replicas(4)
    table = PlacementTable(clock=still)
    first, second = turns(0, 2)
    a = policy()
    decision = a.choose(first, idle(ids))  # no `placed`: the table did not answer
    assert decision.publish and decision.key is not None
    table.assign(decision.key, decision.replica)
    assert shared_serve(policy(), table, second, {**idle(ids), decision.replica: 1}) == decision.replica
    confirmed = a.choose(first, idle(ids), placed=(decision.replica, False))
    assert not confirmed.publish


# --- LoRA adapters ---------------------------------------------------------------------


def test_an_adapter_stays_where_it_is_loaded_until_the_load_guard_says_no():
    table = PlacementTable(adapter_slots=2, load_gap=4, load_factor=1.5)
    first, placed = table.resolve(None, pool_loads(), "sql")
    assert placed and table.has_adapter(first, "sql") and len(table) == 0  # no conversation pinned
    others = [r for r in POOL if r != first]
    assert table.resolve(None, pool_loads(**{first: 4}), "sql")[0] == first  # busier, within the guard: it stays
    spread, _ = table.resolve(None, pool_loads(**{first: 5}), "sql")
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
        assert table.resolve(key, pool_loads(r2=2), "sql") == ("r2", True)
    assert table.resolve(3, pool_loads(r2=30), "sql") == ("r2", False)  # a known conversation stays
    assert table.resolve(100, pool_loads(r2=30), "sql")[0] != "r2"  # past the guard: elsewhere
    assert table.resolve(101, pool_loads(r2=30)) [0] != "r2"  # the base model: by expected load


def test_a_replica_that_left_takes_its_adapters_with_it():
    table = PlacementTable(adapter_slots=2)
    table.touch_adapter("gone", "sql")
    target, _ = table.resolve(None, pool_loads(), "sql")
    assert target in POOL and not table.has_adapter("gone", "sql")
