"""benchmarks/harness/chat_sessions.py: the routing benchmarks' workloads and their statistics."""

from __future__ import annotations

from benchmarks.harness import chat_sessions
from benchmarks.harness.chat_sessions import Shape, TurnRecord, kv_blocks, summarize

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
    assert s["ttft_p50_s"] == 1.25, "the median of 0.2, 1.0, 1.5 and 2.0 s (the failed turn has none)"


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
