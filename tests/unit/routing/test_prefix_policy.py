"""The prefix policy (deployments/routing/prefix_policy.py) as pure logic, and its cost.
Its keys: test_prefix_keys.py."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from deployments.config.routing import RoutingConfig
from deployments.core.generation import GenerationRequest
from deployments.routing.prefix_policy import PrefixPolicy
from tests.support.routing import (
    SYSTEM,
    Hinted,
    adapter_request,
    chat,
    idle,
    policy,
    pool_loads,
    replicas,
    serve,
    turns,
)

# --- affinity --------------------------------------------------------------------------


def test_a_next_turn_goes_where_the_previous_turn_was_served():
    p = policy()
    ids = replicas(8)
    first, second, third = turns(1, 3)
    decision = p.choose(first, idle(ids))
    assert decision.label == "new" and decision.anchor_blocks == 2
    # Serve it somewhere rendezvous would not pick (as after a spill): the table must win.
    elsewhere = next(r for r in ids if r != decision.replica)
    p.record(decision.keys, elsewhere, "spilled")
    follow = p.choose(second, idle(ids))
    assert (follow.replica, follow.label, follow.matched_blocks) == (elsewhere, "affinity", 2)
    p.record(follow.keys, follow.replica, follow.label)
    assert p.choose(third, idle(ids)).matched_blocks == 4


def test_a_shared_system_prompt_spreads_new_conversations():
    """200 users behind one long system prompt, two replicas, no load signal (light
    traffic): a longest-prefix policy would send them all to whoever served the system
    prompt first."""
    p = policy()
    ids = replicas(2)
    first_turn = {}
    for c in range(200):
        request = turns(c, 1)[0]
        decision = p.choose(request, idle(ids))
        assert decision.label == "new"
        p.record(decision.keys, decision.replica, decision.label)
        first_turn[c] = decision.replica
    count = Counter(first_turn.values())
    assert len(count) == 2 and max(count.values()) <= 1.5 * min(count.values()), count
    for c in range(200):
        decision = p.choose(turns(c, 2)[1], idle(ids))
        assert (decision.replica, decision.label) == (first_turn[c], "affinity")


@pytest.mark.parametrize("greeting", [None, "Hello! How can I help?"], ids=["sampled-reply", "same-reply"])
def test_a_popular_opener_becomes_shared_and_stops_pinning(greeting):
    """Everybody opens with the same 'hi' (and, greedy, maybe gets the same reply): once
    more than shared_fanout conversations went through that prefix, conversations are
    anchored at their next user message instead."""
    p = policy(shared_fanout=4)
    ids = replicas(4)
    second_turn = {}
    for c in range(60):
        first, second, _ = turns(c, 3, opener="hi", greeting=greeting)
        serve(p, first, idle(ids))
        second_turn[c] = serve(p, second, idle(ids))
    late = Counter(second_turn[c] for c in range(10, 60))
    assert len(late) == 4 and max(late.values()) <= 25, late
    for c in (0, 30, 59):  # every conversation stays where its second turn went
        decision = p.choose(turns(c, 3, opener="hi", greeting=greeting)[2], idle(ids))
        assert (decision.replica, decision.label) == (second_turn[c], "affinity")
    fresh = p.choose(turns(999, 1, opener="hi")[0], {"replica-00": 3, "replica-01": 0, "replica-02": 5,
                                                     "replica-03": 2})
    assert (fresh.replica, fresh.label, fresh.anchor_blocks) == ("replica-01", "new", 0)


def test_one_conversation_going_on_is_not_a_shared_prefix():
    """Turns, regenerations (the same prompt again) and a tool loop after one user
    message are one conversation: its anchor never becomes shared."""
    p = policy(shared_fanout=2)
    ids = replicas(4)
    requests = turns(1, 8)
    home = serve(p, requests[0], idle(ids))
    for request in requests[1:]:
        for _ in range(3):
            assert serve(p, request, idle(ids)) == home
    tool_loop = [*requests[0].messages]
    for k in range(6):
        tool_loop += [{"role": "assistant", "content": None, "tool_calls": [{"id": str(k)}]},
                      {"role": "tool", "content": f"result {k}", "tool_call_id": str(k)}]
        decision = p.choose(chat(tool_loop), idle(ids))
        assert (decision.replica, decision.label, decision.anchor_blocks) == (home, "affinity", 2)
        p.record(decision.keys, decision.replica, decision.label)


# --- load guard ------------------------------------------------------------------------


def test_the_load_guard_skips_an_overloaded_affine_replica_only():
    p = policy(max_load_gap=8, max_load_factor=1.5)
    ids = replicas(4)
    first, second = turns(1, 2)
    home = serve(p, first, idle(ids))
    others = [r for r in ids if r != home]

    def loads(home_load: int, least: int) -> dict[str, int]:
        return {home: home_load, others[0]: least, others[1]: least + 3, others[2]: least + 50}

    assert p.choose(second, loads(8, 0)).replica == home, "a gap of 8 is within max_load_gap"
    assert p.choose(second, loads(109, 100)).replica == home, "9 over 100 is within the factor"
    spill = p.choose(second, loads(9, 0))
    assert (spill.replica, spill.label) == (others[0], "spilled")
    spill = p.choose(second, loads(151, 100))
    assert (spill.replica, spill.label) == (others[0], "spilled")

    # After a spill the prefix has two holders: the next turn prefers the most recent one.
    p.record(spill.keys, spill.replica, spill.label)
    third = turns(1, 3)[2]
    assert p.choose(third, idle(ids)).replica == others[0]
    overloaded = {**idle(ids), others[0]: 40, others[2]: 10}
    next_best = p.choose(third, overloaded)
    assert (next_best.replica, next_best.label) == (home, "spilled"), "next-best holder before least loaded"


def test_a_new_conversation_avoids_an_overloaded_rendezvous_target():
    p = policy()
    ids = replicas(4)
    request = turns(5, 1)[0]
    target = p.choose(request, idle(ids)).replica
    loads = {**dict.fromkeys(ids, 2), target: 30}
    decision = p.choose(request, loads)
    assert decision.replica != target and decision.label == "new"


# --- memory and replica churn ----------------------------------------------------------


def test_the_table_stays_under_its_cap_and_forgets_the_oldest():
    p = policy(max_entries=64)
    ids = replicas(4)
    for c in range(500):
        for request in turns(c, 3):
            serve(p, request, idle(ids))
        assert len(p) <= 64
    assert p.holders(p.keys(turns(499, 3)[2])), "the newest conversation is known"
    assert not p.holders(p.keys(turns(0, 3)[2])), "the oldest was evicted"


def test_replicas_that_leave_are_forgotten_and_new_ones_learned():
    p = policy()
    ids = replicas(4)
    home = {c: serve(p, turns(c, 1)[0], idle(ids)) for c in range(200)}
    assert set(home.values()) == set(ids)

    p.remove_replica("replica-01")
    assert all("replica-01" not in holders for c in range(200)
               for _, holders in p.holders(p.keys(turns(c, 1)[0])))
    live = [r for r in ids if r != "replica-01"]
    for c in range(200):
        decision = p.choose(turns(c, 2)[1], idle(live))
        if home[c] == "replica-01":
            assert decision.replica in live and decision.label == "affinity"  # rendezvous over the rest
        else:
            assert (decision.replica, decision.matched_blocks) == (home[c], 2)

    grown = [*live, "replica-04"]
    p.set_replicas(grown)
    kept = sum(p.choose(turns(c, 2)[1], idle(grown)).replica == home[c] for c in range(200) if home[c] != "replica-01")
    assert kept == sum(1 for c in range(200) if home[c] != "replica-01"), "learned conversations stay put"
    newcomers = Counter(serve(p, turns(c, 1)[0], idle(grown)) for c in range(1000, 1200))
    assert newcomers["replica-04"] >= 20, newcomers


# --- completions -----------------------------------------------------------------------


def test_completion_string_prompts_match_by_chunks():
    p = policy(chars_per_block=256)
    ids = replicas(8)
    document = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(40))[:1000]
    first = GenerationRequest(request_id="a", prompt=document)
    decision = p.choose(first, idle(ids))
    elsewhere = next(r for r in ids if r != decision.replica)
    p.record(decision.keys, elsewhere)
    longer = GenerationRequest(request_id="b", prompt=document + " and the completion, then more text" * 20)
    follow = p.choose(longer, idle(ids))
    assert (follow.replica, follow.matched_blocks) == (elsewhere, 3), "1000 chars: 3 whole chunks"
    assert p.choose(first, idle(ids)).matched_blocks == 4, "an identical prompt matches its partial chunk too"

    template = "Q: what is 2+2?\nA: 4\n" * 30  # a shared few-shot head over 2 whole chunks
    spread = Counter(serve(p, GenerationRequest(request_id=str(i), prompt=template + f"Q: what is {i}+{i}?\nA:" * 20),
                           idle(ids)) for i in range(200))
    assert len(spread) == 8 and max(spread.values()) <= 60, spread


def test_token_id_prompts_match_by_chunks():
    p = policy(tokens_per_block=64)
    ids = replicas(8)
    tokens = list(range(1000, 1300))  # 300 ids: 4 whole chunks and a partial one
    decision = p.choose(GenerationRequest(request_id="a", prompt=tokens), idle(ids))
    assert len(decision.keys.hashes) == 5 and decision.keys.partial_tail
    elsewhere = next(r for r in ids if r != decision.replica)
    p.record(decision.keys, elsewhere)
    follow = p.choose(GenerationRequest(request_id="b", prompt=tokens + list(range(50))), idle(ids))
    assert (follow.replica, follow.matched_blocks) == (elsewhere, 4)
    as_text = p.keys(GenerationRequest(request_id="c", prompt="".join(map(chr, tokens))))
    assert as_text.hashes[0] != decision.keys.hashes[0]


def test_empty_prompts_have_no_affinity_and_go_to_the_least_loaded():
    p = policy()
    loads = {"replica-00": 3, "replica-01": 0, "replica-02": 5}
    empties = [chat([]), GenerationRequest(request_id="p", prompt=""), GenerationRequest(request_id="i", prompt=[]),
               GenerationRequest(request_id="n"), chat([{"role": "system", "content": SYSTEM}])]
    for request in empties:
        decision = p.choose(request, loads)
        assert (decision.replica, decision.label, decision.anchor_blocks) == ("replica-01", "new", 0)
        p.record(decision.keys, decision.replica, decision.label)
    assert len(p) == 0
    with pytest.raises(ValueError):
        p.choose(chat([]), {})


# --- agreement and hints ---------------------------------------------------------------


def test_independent_routers_agree_on_a_conversation():
    """Two router replicas, no shared state, each seeing its own (noisy, within the gap)
    loads and only the turns it routed itself."""
    ids = replicas(8)
    routers = [policy(), PrefixPolicy(RoutingConfig(policy="prefix"), rng=random.Random(99))]
    noise = random.Random(3)
    same = total = 0
    for c in range(200):
        for request in turns(c, 4):
            picks = [r.choose(request, {i: noise.randint(0, 4) for i in ids}) for r in routers]
            same += picks[0].replica == picks[1].replica
            total += 1
            which = noise.randrange(2)
            routers[which].record(picks[which].keys, picks[which].replica, picks[which].label)
    assert same / total >= 0.9, f"{same}/{total}"


def test_a_session_hint_is_sticky_and_agreed():
    ids = replicas(8)
    a, b = policy(), policy()
    placed = {}
    for s in range(100):
        session = f"session-{s}"
        for k in range(3):  # unrelated content every time: only the hint ties them
            request = Hinted(messages=[{"role": "user", "content": f"{s}-{k}"}], session_id=session)
            da, db = a.choose(request, idle(ids)), b.choose(request, idle(ids))
            assert da.label == "hint" and da.replica == db.replica
            assert placed.setdefault(session, da.replica) == da.replica
    assert len(set(placed.values())) == 8
    request = Hinted(messages=[{"role": "user", "content": "x"}], session_id="session-1")
    busy = {**idle(ids), placed["session-1"]: 50}
    assert a.choose(request, busy).label == "spilled"


# --- cost ------------------------------------------------------------------------------


def test_choose_is_well_under_a_millisecond_with_64_replicas_and_a_full_table():
    cap = 100_000
    p = policy(max_entries=cap)
    ids = replicas(64)
    system = [{"role": "system", "content": SYSTEM}]
    for c in range(cap + 5_000):  # fill past the cap: one record per first turn
        messages = system + [{"role": "user", "content": f"user {c} asks about order {c * 7919}"}]
        p.record(p.keys(chat(messages)), ids[c % 64])
    assert len(p) == cap

    rng = random.Random(11)
    requests = []
    for i in range(2_000):
        c = rng.randrange(cap + 5_000) if i % 2 else 10**9 + i  # half known conversations, half new
        messages = system + [{"role": "user", "content": f"user {c} asks about order {c * 7919}"}]
        for k in range(rng.randrange(0, 5)):
            messages += [{"role": "assistant", "content": f"reply {k} " * 40}, {"role": "user", "content": f"more {k}"}]
        requests.append((c, chat(messages), {r: rng.randint(0, 8) for r in ids}))

    # CPU time of this thread: the cost of the code, not of this machine's other tenants
    # (with the CPUs oversubscribed, wall time includes whole preemptions; printed too).
    cpu_ns, wall_ns, record_ns = [], [], []
    known = matched = 0
    for c, request, request_loads in requests:
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        decision = p.choose(request, request_loads)  # hashing the request included
        cpu_ns.append(time.thread_time_ns() - cpu)
        wall_ns.append(time.perf_counter_ns() - wall)
        if c < cap:
            known += 1
            matched += decision.matched_blocks >= 2
        cpu = time.thread_time_ns()
        p.record(decision.keys, decision.replica, decision.label)
        record_ns.append(time.thread_time_ns() - cpu)

    def pct(samples: list[int], q: float) -> float:
        return sorted(samples)[int(len(samples) * q)] / 1e3

    print(f"\nchoose cpu p50 {pct(cpu_ns, 0.5):.1f} us p99 {pct(cpu_ns, 0.99):.1f} us max {pct(cpu_ns, 0.9999):.1f} us;"
          f" wall p50 {pct(wall_ns, 0.5):.1f} us p99 {pct(wall_ns, 0.99):.1f} us;"
          f" record cpu p50 {pct(record_ns, 0.5):.1f} us p99 {pct(record_ns, 0.99):.1f} us;"
          f" entries {len(p)}; decisions {p.counts}")
    assert pct(cpu_ns, 0.99) < 1000, "choose p99 must stay well under 1 ms"
    assert pct(wall_ns, 0.5) < 1000
    assert pct(record_ns, 0.99) < 1000
    assert len(p) <= cap
    assert matched >= 0.85 * known, f"{matched} of {known} known conversations matched"

    start = time.perf_counter()
    p.remove_replica("replica-05")
    print(f"remove_replica over a full table: {(time.perf_counter() - start) * 1e3:.1f} ms")


# --- LoRA adapters ---------------------------------------------------------------------


def test_the_policy_asks_the_table_for_an_adapter_request_with_no_conversation():
    policy = PrefixPolicy(RoutingConfig(policy="prefix"))
    loads = pool_loads()
    short = adapter_request("sql", "hi")  # shorter than a block: no anchor, no conversation
    assert policy.placement_query(short, loads) == (None, "sql")
    assert policy.placement_query(adapter_request(None, "hi"), loads) is None  # the base model: nothing to ask
    decision = policy.choose(short, loads, placed=("r1", True))
    assert (decision.replica, decision.label) == ("r1", "adapter")
    # without an answer (the table slow or down) every router agrees by rendezvous on the adapter
    assert len({PrefixPolicy(RoutingConfig(policy="prefix")).choose(short, loads).replica for _ in range(5)}) == 1
    # past the load guard it goes to the least loaded
    assert policy.choose(short, pool_loads(r1=20, r0=1, r2=1), placed=("r1", True)).label == "new"
